// Shared by the runtime client's tests: a logger that keeps what it is given, a breaker-transition recorder, and
// a condition wait (so tests wait on what happened instead of sleeping for fixed times), and a failed-call helper.
import assert from 'node:assert/strict';
import { EventEmitter, once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { RuntimeReleaseError, type BreakerState, type RuntimeClientLogger, type RuntimeClientOptions } from '../core/runtime-client.ts';

/** One captured log call. */
export interface CapturedLog {
  level: 'warn' | 'info' | 'debug';
  obj: Record<string, unknown>;
  msg: string | undefined;
}

/** A RuntimeClientLogger that records every call, for assertions on what the client logged. */
export function capturingLogger(): RuntimeClientLogger & { entries: CapturedLog[] } {
  const entries: CapturedLog[] = [];
  const at = (level: CapturedLog['level']) => (obj: Record<string, unknown>, msg?: string) => {
    entries.push({ level, obj, msg });
  };
  return { entries, warn: at('warn'), info: at('info'), debug: at('debug') };
}

/** Records breaker transitions and lets a test await the next one of a given state. */
export function breakerRecorder(): { onBreakerStateChange: NonNullable<RuntimeClientOptions['onBreakerStateChange']>; states: BreakerState[]; next(state: BreakerState): Promise<void> } {
  const states: BreakerState[] = [];
  const emitter = new EventEmitter();
  return {
    states,
    onBreakerStateChange: ({ state }) => {
      states.push(state);
      emitter.emit(state);
    },
    async next(state) {
      await once(emitter, state, { signal: AbortSignal.timeout(30_000) });
    },
  };
}

/** Resolves once `check` returns true, polling briefly; fails after a generous limit meant only to stop a hung test. */
export async function waitFor(check: () => boolean, what: string, limitMs = 30_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** Client options for tests: generous timeouts (a loaded machine must not time out by accident) and a breaker that stays closed unless a test tightens it. */
export function testClientOptions(overrides: Partial<RuntimeClientOptions> = {}): RuntimeClientOptions {
  return {
    timeoutMs: 5000,
    retries: 3,
    baseBackoffMs: 5,
    maxBackoffMs: 20,
    breaker: { errorThresholdPercentage: 50, resetTimeoutMs: 500, volumeThreshold: 1000, rollingCountTimeoutMs: 10_000 },
    ...overrides,
  };
}

/** Awaits a call that must fail with a RuntimeReleaseError, and returns the error for further checks. */
export async function rejection(p: Promise<unknown>): Promise<RuntimeReleaseError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof RuntimeReleaseError, `expected RuntimeReleaseError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected the call to fail');
}
