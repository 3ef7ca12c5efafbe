// Demote before destroy through session-reaper, on a real inference engine: the whole stack with the reference
// llama.cpp engine (runtimes/llama-engine: real KV caches on a generated tiny model) registered as runtime `llama`,
// and demotes on (DEMOTE_QUIET_MS). Sessions are opened through the Broker, real completions fill their KV, and the
// pipeline reports their users' activity. Once two of them have been quiet past their predicted return, the idle
// checker demotes them: the engine's own memory reading drops by exactly the freedBytes the gpu.demoted events
// report, the ledger counts the offloaded bytes apart, and a session without activity context is untouched. Then one
// user is back: its KV is restored and its next turn continues on the restored cache. The other is closed while
// demoted: its release frees no more GPU KV, drops the kept copy, and the ledger's offloaded bytes return to zero.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CloudEvent } from 'cloudevents';
import { auditLedger } from '../../functions/core/ledger.ts';
import { complete, get, skipWithoutEngine, tokensHeld, usedBytes } from '../../runtimes/llama-engine/engine-test-support.ts';
import { startEventSink, type ReceivedEvent } from '../support/event-sink.ts';
import { sendAsPipeline, stackStore, startStack, type Stack } from '../support/stack.ts';

const source = '/tests/stack/llama-demote';
let sent = 0;

async function send(stack: Stack, type: string, data: Record<string, unknown>): Promise<void> {
  const event = new CloudEvent({ id: `${source}/${process.pid}/${++sent}`, source, type: `dev.sessionreaper.${type}`, time: new Date().toISOString(), datacontenttype: 'application/json', data });
  assert.equal(await sendAsPipeline(stack, event), 202);
}

const about = (type: string, sessionId: string) => (e: ReceivedEvent) => e.event.type === `dev.sessionreaper.${type}` && (e.event.data as { sessionId: string }).sessionId === sessionId;
const dataOf = (e: ReceivedEvent) => e.event.data as Record<string, number | string>;

test('a quiet session on a real llama.cpp engine is demoted off the GPU, then restored with its cache or destroyed from its kept copy', { skip: skipWithoutEngine, timeout: 240_000 }, async () => {
  const outside = await startEventSink();
  // Idle verdicts stay far away (the default grace is a minute, liveness windows 90 s): only demotes happen here.
  const stack = await startStack({ engine: 'llama', forward: outside.url, env: { DEMOTE_QUIET_MS: '4000' }, engineEnv: { ENGINE_SEQUENCES: '4', ENGINE_CONTEXT_TOKENS: '128' } });
  const { redis, store } = await stackStore(stack);
  try {
    const engine = stack.engineUrl!;
    const [back, leaves, untouched] = ['dm-back', 'dm-leaves', 'dm-untouched'].map((id) => `${id}-${process.pid}`) as [string, string, string];
    for (const sessionId of [back, leaves, untouched]) {
      await send(stack, 'session.opened', { sessionId, heartbeatIntervalMs: 30_000, placement: { node: 'cpu-node', runtimeUrl: engine, gpuBytes: 65_536 } });
    }
    await stack.broker.idle(30_000);
    const incarnation = new Map<string, number>();
    for (const sessionId of [back, leaves, untouched]) {
      const view = await store.inspect(sessionId);
      assert.equal(view?.state, 'active');
      incarnation.set(sessionId, view.incarnation);
      const turn = await complete(engine, sessionId, view.incarnation, `a first question from ${sessionId}`, 6);
      assert.equal(turn.status, 200, JSON.stringify(turn.body));
    }
    // The users of two sessions type and send a message; the third reports no activity, so nothing predicts its
    // rhythm and it is never demoted.
    for (const sessionId of [back, leaves]) {
      await send(stack, 'session.activity', { sessionId, kind: 'input' });
      await send(stack, 'session.activity', { sessionId, kind: 'message', text: 'a first question' });
      // The model's answer is done (until then the KV is in use, and no demote is asked).
      await send(stack, 'inference.completed', { sessionId, requestId: `${sessionId}-1`, release: false });
    }
    const held = new Map(await Promise.all([back, leaves, untouched].map(async (id) => [id, await tokensHeld(engine, id)] as const)));
    const before = await usedBytes(engine);

    const [demotedBack, demotedLeaves] = await Promise.all([back, leaves].map((id) => outside.waitForEvent(about('gpu.demoted', id), { timeoutMs: 60_000 })));
    const freed = Number(dataOf(demotedBack!).freedBytes) + Number(dataOf(demotedLeaves!).freedBytes);
    const offloaded = Number(dataOf(demotedBack!).offloadedBytes) + Number(dataOf(demotedLeaves!).offloadedBytes);
    assert.ok(freed > 0 && offloaded > 0, 'the demotes freed GPU KV and kept a copy');
    assert.equal(before - (await usedBytes(engine)), freed, "the engine's own reading dropped by exactly the freedBytes gpu.demoted reported");
    for (const id of [back, leaves]) {
      const view = (await get(engine, `/v1/sessions/${id}`)).body;
      assert.deepEqual([view.state, view.tokens], ['demoted', held.get(id)], `${id} is kept off the GPU whole`);
      assert.equal((await store.inspect(id))?.offload, 'demoted');
    }
    assert.equal(await tokensHeld(engine, untouched), held.get(untouched), 'a session with no activity context keeps its KV');
    let audit = await auditLedger(redis, store.keys);
    assert.deepEqual([audit.totals.offloadedBytes, audit.totals.demotes, audit.totals.demoteFreedBytes, audit.totals.releases], [offloaded, 2, freed, 0]);

    // The user is back: the activity asks for the KV back, and the next turn continues on it.
    const beforeRestore = await usedBytes(engine);
    await send(stack, 'session.activity', { sessionId: back, kind: 'input' });
    const restored = await outside.waitForEvent(about('gpu.restored', back), { timeoutMs: 60_000 });
    assert.equal(Number(dataOf(restored).restoredBytes), Number(dataOf(demotedBack!).freedBytes), 'restore brought back what demote freed');
    assert.equal((await usedBytes(engine)) - beforeRestore, Number(dataOf(restored).restoredBytes), "the engine's reading rose by exactly restoredBytes");
    assert.equal(await tokensHeld(engine, back), held.get(back), 'the same cells are back');
    const next = await complete(engine, back, incarnation.get(back)!, [50, 51], 4);
    assert.equal(next.status, 200, JSON.stringify(next.body));
    assert.equal(next.body.contextTokens, held.get(back)! + 2 + 3, 'the turn appended to the restored cache, not to an empty one');

    // The pipeline reports the model's answer; then the user is quiet again: demoted a second time, a new request the
    // engine must not answer from the first one's stored reply.
    const beforeSecond = await usedBytes(engine);
    await send(stack, 'session.activity', { sessionId: back, kind: 'output' });
    const second = await outside.waitForEvent((e) => about('gpu.demoted', back)(e) && dataOf(e).token !== dataOf(demotedBack!).token, { timeoutMs: 60_000 });
    assert.equal(beforeSecond - (await usedBytes(engine)), Number(dataOf(second).freedBytes), 'the second demote freed what the engine lost');
    assert.ok(Number(dataOf(second).freedBytes) > Number(dataOf(demotedBack!).freedBytes), 'and it held the new turn too');
    assert.deepEqual([(await get(engine, `/v1/sessions/${back}`)).body.state, (await get(engine, `/v1/sessions/${back}`)).body.tokens], ['demoted', held.get(back)! + 5]);

    // The other user left for good: closing the demoted session frees no more GPU KV and drops the kept copy.
    await send(stack, 'session.closed', { sessionId: leaves });
    const released = await outside.waitForEvent(about('gpu.released', leaves), { timeoutMs: 60_000 });
    assert.equal(dataOf(released).freedBytes, 0, 'its GPU KV was freed by the demote already');
    await outside.waitForEvent(about('session.destroyed', leaves), { timeoutMs: 60_000 });
    assert.equal((await get(engine, `/v1/sessions/${leaves}`)).status, 404, 'the engine holds nothing of it, not even the copy');
    audit = await auditLedger(redis, store.keys);
    assert.equal(audit.balanced, true, audit.problems.join('; '));
    assert.deepEqual([audit.totals.offloadedBytes, audit.totals.restores, audit.totals.releases], [Number(dataOf(second).offloadedBytes), 1, 1], 'only the second demote\'s copy is counted');
    assert.equal(await tokensHeld(engine, untouched), held.get(untouched), 'and the untouched session still holds its KV');
  } finally {
    redis.disconnect();
    await stack.stop();
    await outside.close();
  }
});
