// The llamacpp adapter against a server that reproduces llama-server's documented slot API (ggml-org/llama.cpp
// tools/server/README.md, tools/server/server-context.cpp; older examples/server/server.cpp):
// - erase answers {id_slot, n_erased} with n_erased the slot's cached token count, and a second erase answers 0;
// - save/restore answer {id_slot, filename, n_saved, n_written} / {id_slot, filename, n_restored, n_read};
// - without --slot-save-path every slot action, erase included, answers 501 (ERROR_TYPE_NOT_SUPPORTED, "This server
//   does not support slots action. Start it with `--slot-save-path`") before the id is read;
// - an out-of-range slot id wraps around (get_slot_by_id: id_slot % slots.size());
// - /props has total_slots; /slots lists {id, n_ctx, is_processing, id_task, n_prompt_tokens} (newer servers).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { rejection } from '../../gpu-release/runtime-client-test-support.ts';
import { demoteFilename, type EngineClient } from './index.ts';
import { engineClientFor, startFakeEngine, type FakeAnswer, type FakeEngine, type SeenRequest } from './engine-test-support.ts';

const BYTES_PER_TOKEN = 2 * 2 * 2 * 64 * 2; // 2 (K and V) x 2 layers x 2 KV heads x head dim 64 x f16
const N_CTX = 256;

function llamaServer(opts: { slots: number; slotSavePath: boolean }) {
  const tokens = new Array<number>(opts.slots).fill(0);
  const files = new Map<string, number>();
  const ran = new Set<number>();
  const route = (req: SeenRequest): FakeAnswer => {
    if (req.method === 'GET' && req.path === '/props') return { status: 200, json: { total_slots: opts.slots, default_generation_settings: { n_ctx: N_CTX } } };
    if (req.method === 'GET' && req.path === '/slots') {
      return { status: 200, json: tokens.map((n, id) => ({ id, n_ctx: N_CTX, is_processing: false, ...(ran.has(id) ? { id_task: id + 100, n_prompt_tokens: n } : {}) })) };
    }
    const m = /^\/slots\/([^/]+)$/.exec(req.path);
    if (req.method === 'POST' && m) {
      // The slot-save-path check comes first, for every action.
      if (!opts.slotSavePath) return { status: 501, json: { error: { code: 501, message: 'This server does not support slots action. Start it with `--slot-save-path`', type: 'not_supported_error' } } };
      if (!/^\d+$/.test(m[1]!)) return { status: 400, json: { error: { code: 400, message: 'Invalid slot ID', type: 'invalid_request_error' } } };
      const id = Number(m[1]) % opts.slots; // the wrap-around
      const filename = (req.body as { filename?: string } | undefined)?.filename ?? '';
      switch (req.query.get('action')) {
        case 'erase': {
          const n = tokens[id]!;
          tokens[id] = 0;
          return { status: 200, json: { id_slot: id, n_erased: n } };
        }
        case 'save':
          files.set(filename, tokens[id]!);
          return { status: 200, json: { id_slot: id, filename, n_saved: tokens[id], n_written: tokens[id]! * BYTES_PER_TOKEN + 24, timings: { save_ms: 1 } } };
        case 'restore': {
          const n = files.get(filename);
          if (n === undefined) return { status: 400, json: { error: { code: 400, message: 'Invalid filename', type: 'invalid_request_error' } } };
          tokens[id] = n;
          return { status: 200, json: { id_slot: id, filename, n_restored: n, n_read: n * BYTES_PER_TOKEN + 24, timings: { restore_ms: 1 } } };
        }
        default:
          return { status: 400, json: { error: { code: 400, message: 'Invalid action', type: 'invalid_request_error' } } };
      }
    }
    return { status: 404, json: { error: { code: 404, message: 'File Not Found', type: 'not_found_error' } } };
  };
  const fill = (slot: number, n: number) => {
    tokens[slot] = n;
    ran.add(slot);
  };
  return { route, tokens, files, fill };
}

const slotActions = (engine: FakeEngine) => engine.requests.filter((r) => r.path.startsWith('/slots/'));

describe('a llama-server slot is erased, saved and restored, and never wrapped', () => {
  const server = llamaServer({ slots: 2, slotSavePath: true });
  let engine: FakeEngine;
  let client: EngineClient;
  before(async () => {
    engine = await startFakeEngine(server.route);
    client = engineClientFor(engine.url, { kind: 'llamacpp', slots: 2, bytesPerToken: BYTES_PER_TOKEN, slotSavePath: true });
  });
  after(async () => {
    client.shutdown();
    await engine.close();
  });

  it('a release erases only its slot and reports n_erased x bytesPerToken as exact', async () => {
    server.fill(0, 40);
    server.fill(1, 7);
    const r = await client.release(engine.url, 'chat-1', 11, undefined, { slot: 0 });
    assert.deepEqual({ outcome: r.outcome, freedBytes: r.freedBytes, exact: r.exact }, { outcome: 'released', freedBytes: 40 * BYTES_PER_TOKEN, exact: true });
    assert.deepEqual(server.tokens, [0, 7], 'the other slot is untouched');
  });

  it('a second erase answers 0: already released, 0 bytes, no error', async () => {
    const r = await client.release(engine.url, 'chat-1', 11, undefined, { slot: 0 });
    assert.deepEqual({ outcome: r.outcome, freedBytes: r.freedBytes }, { outcome: 'gone', freedBytes: 0 });
  });

  it('a slot at or past the slot count is refused before anything is sent, where the server would wrap it onto slot 1', async () => {
    server.fill(1, 7);
    const sent = slotActions(engine).length;
    const err = await rejection(client.release(engine.url, 'chat-9', 12, undefined, { slot: 3 }));
    assert.equal(err.reason, 'slot_out_of_range');
    assert.equal(err.retryable, false);
    assert.equal(slotActions(engine).length, sent, 'no slot action reached the server');
    assert.equal(server.tokens[1], 7, 'slot 3 % 2 = 1 was not erased');
  });

  it('a release whose placement names no slot is refused as invalid', async () => {
    assert.equal((await rejection(client.release(engine.url, 'chat-2', 13))).reason, 'invalid_request');
  });

  it('demote saves the slot to a file named after the session, then erases it; restore brings the tokens back', async () => {
    server.fill(1, 30);
    const d = await client.demote(engine.url, 'chat:7.x', 14, undefined, { slot: 1 });
    assert.deepEqual({ offloaded: d.offloadedBytes, freed: d.freedBytes, exact: d.exact }, { offloaded: 30 * BYTES_PER_TOKEN + 24, freed: 30 * BYTES_PER_TOKEN, exact: true });
    assert.equal(server.tokens[1], 0);
    const saves = slotActions(engine).filter((r) => r.query.get('action') === 'save');
    assert.deepEqual(saves.at(-1)?.body, { filename: demoteFilename('chat:7.x', 14) });
    const restored = await client.restore(engine.url, 'chat:7.x', 14, undefined, { slot: 1 });
    assert.equal(restored.restoredBytes, 30 * BYTES_PER_TOKEN + 24);
    assert.equal(server.tokens[1], 30);
  });

  it('memory is the slots\' context capacity and their cached tokens, in bytes', async () => {
    server.fill(0, 5);
    server.fill(1, 9);
    const m = await client.memory(engine.url);
    assert.deepEqual(m, { totalBytes: 2 * N_CTX * BYTES_PER_TOKEN, usedBytes: 14 * BYTES_PER_TOKEN, sessions: 2 });
  });

  it('a llamacpp runtime cannot list sessions for the reconciler: slots carry no session id', async () => {
    assert.deepEqual(await client.listSessions(engine.url), { unsupported: true, status: 501 });
    assert.equal(client.capabilities(engine.url).list, false);
  });
});

describe('a llama-server without --slot-save-path', () => {
  it('answers 501, which is a typed refusal sent once, not a retry storm', async () => {
    const server = llamaServer({ slots: 2, slotSavePath: false });
    const engine = await startFakeEngine(server.route);
    // Registered as if it had the flag: the server's own 501 must still be understood.
    const client = engineClientFor(engine.url, { kind: 'llamacpp', slots: 2, bytesPerToken: BYTES_PER_TOKEN, slotSavePath: true });
    try {
      server.fill(0, 3);
      const err = await rejection(client.release(engine.url, 'chat-3', 15, undefined, { slot: 0 }));
      assert.deepEqual({ reason: err.reason, retryable: err.retryable, status: err.status }, { reason: 'unsupported', retryable: false, status: 501 });
      assert.equal(slotActions(engine).length, 1, 'one attempt, no retries');
    } finally {
      client.shutdown();
      await engine.close();
    }
  });

  it('registered without slotSavePath, is never sent a slot action at all', async () => {
    const server = llamaServer({ slots: 2, slotSavePath: false });
    const engine = await startFakeEngine(server.route);
    const client = engineClientFor(engine.url, { kind: 'llamacpp', slots: 2, bytesPerToken: BYTES_PER_TOKEN });
    try {
      assert.equal((await rejection(client.release(engine.url, 'chat-3', 15, undefined, { slot: 0 }))).reason, 'unsupported');
      assert.equal(engine.requests.length, 0);
    } finally {
      client.shutdown();
      await engine.close();
    }
  });
});

describe('a llama-server with fewer slots than registered', () => {
  it('bounds slot ids by the count it reports in /props, so a registered id it would wrap is refused', async () => {
    const server = llamaServer({ slots: 2, slotSavePath: true });
    const engine = await startFakeEngine(server.route);
    const client = engineClientFor(engine.url, { kind: 'llamacpp', slots: 4, bytesPerToken: BYTES_PER_TOKEN, slotSavePath: true });
    try {
      server.fill(0, 6);
      assert.equal((await rejection(client.release(engine.url, 'chat-4', 16, undefined, { slot: 2 }))).reason, 'slot_out_of_range');
      assert.equal(server.tokens[0], 6, 'slot 2 % 2 = 0 kept its tokens');
    } finally {
      client.shutdown();
      await engine.close();
    }
  });
});

describe('the file a demoted session is saved to', () => {
  it('holds only safe characters and differs for ids that differ', () => {
    assert.match(demoteFilename('a/../b:c', 7), /^[A-Za-z0-9_-]+\.bin$/);
    assert.notEqual(demoteFilename('a.b', 1), demoteFilename('a_b', 1));
    assert.notEqual(demoteFilename('a', 1), demoteFilename('a', 2));
  });
});
