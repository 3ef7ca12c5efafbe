// Awaiting a condition instead of sleeping a fixed time: what every system test does while real processes catch up.
import { setTimeout as sleep } from 'node:timers/promises';

/** Resolves with the first truthy value `probe` gives, asking every `everyMs`; fails naming `what` after `timeoutMs`. */
export async function until<V>(what: string, probe: () => V | undefined | false | Promise<V | undefined | false>, timeoutMs = 30_000, everyMs = 25): Promise<V> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}
