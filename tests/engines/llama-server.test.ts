// The llamacpp adapter against a REAL llama-server (opt-in: building one takes ~7 minutes on 2 cores, see the
// README). Run with
//   LLAMA_SERVER_BIN=/path/to/llama-server LLAMA_SERVER_MODEL=/path/to/model.gguf \
//   LLAMA_SERVER_BYTES_PER_TOKEN=<the model's KV bytes per token> \
//   npx node --test --test-timeout=300000 tests/engines/llama-server.test.ts
// Without LLAMA_SERVER_BIN and LLAMA_SERVER_MODEL every test is skipped, saying so. What it proves, on the real
// server: a completion pinned with id_slot fills that slot; a release erases that slot only, and reports n_erased x
// bytesPerToken; a second release answers 0 (already released); a demote saves then erases, and a restore brings the
// same number of tokens back; a slot id past the slot count is refused before the server could wrap it; a server
// without --slot-save-path answers 501, a typed refusal.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { engineClientFor } from '../../functions/core/runtime-adapters/engine-test-support.ts';
import type { EngineClient } from '../../functions/core/runtime-adapters/index.ts';
import { RuntimeReleaseError } from '../../functions/core/runtime-client.ts';
import { diesWithParent } from '../../tools/local-stack/parent-death.ts';

const BIN = process.env.LLAMA_SERVER_BIN;
const MODEL = process.env.LLAMA_SERVER_MODEL;
const BYTES_PER_TOKEN = Number(process.env.LLAMA_SERVER_BYTES_PER_TOKEN ?? '1');
const skip = BIN === undefined || MODEL === undefined ? 'set LLAMA_SERVER_BIN and LLAMA_SERVER_MODEL to run against a real llama-server (see the README)' : false;

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as { port: number };
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

async function startServer(slotSavePath: string | undefined): Promise<{ url: string; child: ChildProcess }> {
  const port = await freePort();
  const args = ['-m', MODEL!, '--host', '127.0.0.1', '--port', String(port), '--parallel', '2', '-c', '512', ...(slotSavePath ? ['--slot-save-path', slotSavePath] : [])];
  const child = spawn(...diesWithParent(BIN!, args), { stdio: 'ignore' });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 600; i++) {
    // Exited (a wrong binary or model: setpriv reports it by its exit, not as a spawn error).
    if (child.exitCode !== null) throw new Error(`llama-server exited with ${child.exitCode} before it was healthy`);
    const ok = await fetch(`${url}/health`).then((r) => r.ok, () => false);
    if (ok) return { url, child };
    await sleep(100);
  }
  child.kill('SIGKILL');
  throw new Error('llama-server did not become healthy in 60 s');
}

async function complete(url: string, slot: number, prompt: string): Promise<void> {
  const r = await fetch(`${url}/completion`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt, id_slot: slot, cache_prompt: true, n_predict: 4 }) });
  assert.equal(r.status, 200);
  await r.text();
}

async function slotTokens(url: string): Promise<number[]> {
  const slots = (await (await fetch(`${url}/slots`)).json()) as { id: number; n_prompt_tokens?: number }[];
  return slots.sort((a, b) => a.id - b.id).map((s) => s.n_prompt_tokens ?? 0);
}

describe('the llamacpp adapter against a real llama-server', { skip }, () => {
  let dir: string;
  let server: { url: string; child: ChildProcess };
  let client: EngineClient;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'llama-slots-'));
    server = await startServer(dir);
    client = engineClientFor(server.url, { kind: 'llamacpp', slots: 2, bytesPerToken: BYTES_PER_TOKEN, slotSavePath: true });
  });
  after(() => {
    client?.shutdown();
    server?.child.kill('SIGTERM');
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('releases one slot exactly, leaves the other, and a second release frees 0', async () => {
    await complete(server.url, 0, 'one two three four five six seven eight');
    await complete(server.url, 1, 'alpha beta gamma');
    const [held0, held1] = await slotTokens(server.url);
    assert.ok(held0! > 0 && held1! > 0, 'both slots hold tokens');
    const r = await client.release(server.url, 'real-1', 1, undefined, { slot: 0 });
    assert.equal(r.freedBytes, held0! * BYTES_PER_TOKEN);
    const [after0, after1] = await slotTokens(server.url);
    assert.deepEqual([after0, after1], [0, held1]);
    const again = await client.release(server.url, 'real-1', 1, undefined, { slot: 0 });
    assert.deepEqual({ outcome: again.outcome, freedBytes: again.freedBytes }, { outcome: 'gone', freedBytes: 0 });
  });

  it('demotes to a file and restores the same tokens', async () => {
    await complete(server.url, 1, 'the quick brown fox jumps over the lazy dog');
    const [, held] = await slotTokens(server.url);
    const d = await client.demote(server.url, 'real-2', 2, undefined, { slot: 1 });
    assert.ok(d.offloadedBytes > 0);
    assert.equal(d.freedBytes, held! * BYTES_PER_TOKEN);
    assert.equal((await slotTokens(server.url))[1], 0);
    await client.restore(server.url, 'real-2', 2, undefined, { slot: 1 });
    assert.equal((await slotTokens(server.url))[1], held);
  });

  it('refuses a slot the server would wrap around', async () => {
    await assert.rejects(client.release(server.url, 'real-3', 3, undefined, { slot: 2 }), (err: unknown) => err instanceof RuntimeReleaseError && err.reason === 'slot_out_of_range');
  });
});

describe('a real llama-server without --slot-save-path', { skip }, () => {
  it('answers 501, a typed refusal', async () => {
    const server = await startServer(undefined);
    const client = engineClientFor(server.url, { kind: 'llamacpp', slots: 2, bytesPerToken: BYTES_PER_TOKEN, slotSavePath: true });
    try {
      await assert.rejects(client.release(server.url, 'real-4', 4, undefined, { slot: 0 }), (err: unknown) => err instanceof RuntimeReleaseError && err.reason === 'unsupported' && err.status === 501);
    } finally {
      client.shutdown();
      server.child.kill('SIGTERM');
    }
  });
});
