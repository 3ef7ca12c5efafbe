import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { complete, get, post, release, startTestEngine, skipWithoutEngine, tokensHeld, usedBytes, type TestEngine } from './engine-test-support.ts';

function demote(url: string, id: string, incarnation: number, key?: string) {
  return post(url, `/v1/sessions/${id}/demote`, { incarnation }, key === undefined ? {} : { 'idempotency-key': key });
}

function restore(url: string, id: string, incarnation: number, key?: string) {
  return post(url, `/v1/sessions/${id}/restore`, { incarnation }, key === undefined ? {} : { 'idempotency-key': key });
}

describe('a demoted session is restored with its cache, or released from its file', { skip: skipWithoutEngine }, () => {
  let t: TestEngine;
  before(async () => {
    t = await startTestEngine(4, 128);
  });
  after(async () => {
    await t?.stop();
  });

  it('demote frees its KV as measured, restore brings the same cells back, and the session continues on them', async () => {
    const url = t.server.url;
    // Twins: the same prompt in two sessions. Greedy decoding from the same cache must continue the same way, so the
    // demoted-and-restored twin generating what the untouched one generates shows its cache came back, not only its count.
    const prompt = [40, 41, 42, 43, 44, 45, 46, 47];
    await complete(url, 'dm-a', 1, prompt, 5);
    await complete(url, 'dm-twin', 1, prompt, 5);
    const heldA = await tokensHeld(url, 'dm-a');
    const heldTwin = await tokensHeld(url, 'dm-twin');

    const beforeDemote = await usedBytes(url);
    const d = await demote(url, 'dm-a', 1, 'dm-a:1:demote:1');
    assert.equal(d.status, 200);
    const freed = d.body.freedBytes as number;
    assert.ok(freed >= heldA * t.engine.kvBytesPerToken, `demote freed ${freed}, a's cells`);
    assert.equal(beforeDemote - (await usedBytes(url)), freed, "the engine's reading dropped by exactly freedBytes");
    assert.ok((d.body.offloadedBytes as number) >= freed - 128, `the file (${String(d.body.offloadedBytes)} bytes) holds the cells`);
    assert.equal((await readdir(t.stateDir)).length, 1, 'the KV went to one file');
    const demoted = (await get(url, '/v1/sessions/dm-a')).body;
    assert.deepEqual([demoted.state, demoted.tokens, demoted.offloadedBytes], ['demoted', heldA, d.body.offloadedBytes]);
    assert.equal((await get(url, '/v1/memory')).body.sessions, 1, 'only the twin holds KV now');
    assert.equal(await tokensHeld(url, 'dm-twin'), heldTwin, "the twin's KV is untouched");

    const replay = await demote(url, 'dm-a', 1, 'dm-a:1:demote:1');
    assert.deepEqual([replay.status, replay.body, replay.headers.get('idempotent-replayed')], [200, d.body, 'true']);
    assert.equal((await demote(url, 'dm-a', 1)).body.code, 'already_demoted');
    assert.equal((await complete(url, 'dm-a', 1, [1], 1)).body.code, 'session_demoted', 'no turn runs on a demoted session');

    const beforeRestore = await usedBytes(url);
    const r = await restore(url, 'dm-a', 1);
    assert.equal(r.status, 200);
    assert.equal(r.body.restoredBytes, freed, 'restore brought back exactly the bytes demote freed');
    assert.equal((await usedBytes(url)) - beforeRestore, freed);
    assert.equal(await tokensHeld(url, 'dm-a'), heldA, 'its token count is back');
    assert.deepEqual(await readdir(t.stateDir), [], 'the file is dropped once restored');
    assert.equal((await restore(url, 'dm-a', 1)).body.code, 'not_demoted');

    const nextA = await complete(url, 'dm-a', 1, [50, 51], 4);
    const nextTwin = await complete(url, 'dm-twin', 1, [50, 51], 4);
    assert.equal(nextA.status, 200);
    assert.equal(nextA.body.contextTokens, heldA + 2 + 3, 'the turn appended to the restored cache');
    assert.deepEqual(nextA.body.tokens, nextTwin.body.tokens, 'the restored cache continues exactly as the untouched twin');
  });

  it('demote then release frees no more KV and drops the offloaded copy', async () => {
    const url = t.server.url;
    await complete(url, 'dm-b', 3, 'to be demoted and then closed', 3);
    const d = await demote(url, 'dm-b', 3);
    const reading = await usedBytes(url);
    const r = await release(url, 'dm-b', 3);
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, { freedBytes: 0, offloadedBytes: d.body.offloadedBytes }, 'the KV was freed by demote; release drops the file');
    assert.equal(await usedBytes(url), reading);
    assert.deepEqual(await readdir(t.stateDir), []);
    assert.equal((await get(url, '/v1/sessions/dm-b')).status, 404);
    assert.equal((await restore(url, 'dm-b', 3)).body.code, 'session_not_found');
  });

  it('keeps incarnation fencing and key rules for demote and restore', async () => {
    const url = t.server.url;
    await complete(url, 'dm-c', 7, 'fenced', 1);
    assert.deepEqual([(await demote(url, 'dm-c', 6)).body.code, (await demote(url, 'dm-c', 8)).body.code], ['incarnation_superseded', 'session_not_found']);
    const badKey = await demote(url, 'dm-c', 7, 'dm-c:6:demote');
    assert.deepEqual([badKey.status, badKey.body.code], [400, 'idempotency_key_mismatch']);
    assert.equal((await get(url, '/v1/sessions/dm-c')).body.state, 'resident', 'refused demotes changed nothing');
  });
});
