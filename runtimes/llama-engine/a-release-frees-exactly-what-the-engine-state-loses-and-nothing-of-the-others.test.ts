import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { complete, release, startTestEngine, skipWithoutEngine, tokensHeld, usedBytes, get, post, type TestEngine } from './engine-test-support.ts';

// Per occupied KV cell, llama_state_get_size counts the K and V rows of every layer plus 12 bytes of cell metadata
// (position, sequence-id count, one sequence id), and a stream that empties drops its per-layer headers
// (ggml-org/llama.cpp src/llama-kv-cache.cpp state_write_meta / state_write_data). So an erase of n cells frees at
// least n × kvBytesPerToken and at most n × (kvBytesPerToken + 12) plus a small fixed header.
const CELL_METADATA_BYTES = 12;
const STREAM_HEADER_BYTES_MAX = 128;

describe('a release frees exactly what the engine state loses and nothing of the others', { skip: skipWithoutEngine }, () => {
  let t: TestEngine;
  before(async () => {
    t = await startTestEngine(4, 128);
  });
  after(async () => {
    await t?.stop();
  });

  it('lowers the engine reading by exactly the reported freedBytes, which is the released session KV', async () => {
    const url = t.server.url;
    assert.equal((await complete(url, 'rel-a', 1, 'the first session', 4)).status, 200);
    assert.equal((await complete(url, 'rel-b', 1, [10, 11, 12, 13, 14, 15, 16, 17, 18, 19], 6)).status, 200);
    assert.equal((await complete(url, 'rel-c', 1, 'third', 2)).status, 200);
    const heldA = await tokensHeld(url, 'rel-a');
    const heldB = await tokensHeld(url, 'rel-b');
    const heldC = await tokensHeld(url, 'rel-c');
    assert.ok(heldB >= 10 + 5, `b holds its prompt and generated tokens (${heldB})`);

    const beforeRelease = await usedBytes(url);
    const r = await release(url, 'rel-b', 1);
    assert.equal(r.status, 200);
    const freed = r.body.freedBytes as number;
    assert.equal(beforeRelease - (await usedBytes(url)), freed, "the engine's own reading dropped by exactly freedBytes");
    const kv = t.engine.kvBytesPerToken;
    assert.ok(freed >= heldB * kv, `freed ${freed} covers b's ${heldB} cells of ${kv} bytes`);
    assert.ok(freed <= heldB * (kv + CELL_METADATA_BYTES) + STREAM_HEADER_BYTES_MAX, `freed ${freed} is no more than b's cells`);

    assert.equal((await get(url, '/v1/sessions/rel-b')).status, 404);
    assert.equal(await tokensHeld(url, 'rel-a'), heldA, "a's KV is untouched");
    assert.equal(await tokensHeld(url, 'rel-c'), heldC, "c's KV is untouched");
    const more = await complete(url, 'rel-a', 1, ' continues', 3);
    assert.equal(more.status, 200);
    assert.ok((more.body.contextTokens as number) > heldA, 'a continues from where it was, on top of its cache');
  });

  it('replays the stored 200 for a repeated key without erasing anything again', async () => {
    const url = t.server.url;
    await complete(url, 'rel-d', 2, 'replay me', 2);
    const first = await release(url, 'rel-d', 2);
    const reading = await usedBytes(url);
    const again = await release(url, 'rel-d', 2);
    assert.deepEqual([again.status, again.body], [200, first.body]);
    assert.equal(again.headers.get('idempotent-replayed'), 'true');
    assert.equal(first.headers.get('idempotent-replayed'), null);
    assert.equal(await usedBytes(url), reading);
  });

  it('answers 404 for what it does not hold, 409 for an older incarnation, 400 for a wrong key, freeing nothing', async () => {
    const url = t.server.url;
    await complete(url, 'rel-e', 5, 'held', 1);
    const reading = await usedBytes(url);
    const older = await release(url, 'rel-e', 4);
    assert.deepEqual([older.status, older.body.code, older.body.heldIncarnation], [409, 'incarnation_superseded', 5]);
    const newer = await release(url, 'rel-e', 6);
    assert.deepEqual([newer.status, newer.body.code], [404, 'session_not_found']);
    assert.deepEqual([(await release(url, 'nobody', 1)).body.code], ['session_not_found']);
    const wrongKey = await release(url, 'rel-e', 5, 'rel-e:4');
    assert.deepEqual([wrongKey.status, wrongKey.body.code], [400, 'idempotency_key_mismatch']);
    const noKey = await post(url, '/v1/sessions/rel-e/release', { incarnation: 5 });
    assert.deepEqual([noKey.status, noKey.body.code], [400, 'idempotency_key_required']);
    assert.equal(await usedBytes(url), reading, 'none of these changed the KV cache');
    assert.equal((await release(url, 'rel-e', 5)).status, 200);
  });

  it('gives a newer incarnation a fresh cache and refuses work for an older one', async () => {
    const url = t.server.url;
    await complete(url, 'rel-f', 1, 'old incarnation', 2);
    const fresh = await complete(url, 'rel-f', 2, 'new', 1);
    assert.equal(fresh.body.contextTokens, 3, 'the restarted session starts from an empty cache');
    const stale = await complete(url, 'rel-f', 1, 'late', 1);
    assert.deepEqual([stale.status, stale.body.code], [409, 'incarnation_superseded']);
  });

  it('refuses a session beyond its sequences or its cells with 507 and keeps the others', async () => {
    const url = t.server.url;
    const full = await complete(url, 'rel-g', 1, new Array<number>(t.engine.contextTokens).fill(5), 1);
    assert.deepEqual([full.status, full.body.code], [507, 'insufficient_memory']);
    const listed = (await get(url, '/v1/sessions')).body.sessions as { sessionId: string; state: string }[];
    assert.ok(!listed.some((s) => s.sessionId === 'rel-g'), 'a refused session holds nothing');
  });
});
