// session-reaper against a real inference engine: the whole stack with the reference llama.cpp engine
// (runtimes/llama-engine: real KV caches on a generated tiny model) registered as runtime `llama`. Sessions are opened
// through the Broker on the engine, real completions fill their KV, and one is closed: session-reaper's release reaches
// the engine, the engine's own memory reading drops by exactly the freedBytes session-reaper booked for it, and the
// other sessions' KV is untouched (their token counts stand, and a further turn continues on their cache).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CloudEvent } from 'cloudevents';
import { complete, skipWithoutEngine, tokensHeld, usedBytes } from '../../runtimes/llama-engine/engine-test-support.ts';
import { startEventSink } from '../support/event-sink.ts';
import { sendAsPipeline, stackStore, startStack, type Stack } from '../support/stack.ts';
import { until } from '../support/until.ts';

const source = '/tests/stack/llama-engine';

async function send(stack: Stack, type: string, id: string, data: Record<string, unknown>): Promise<void> {
  assert.equal(await sendAsPipeline(stack, new CloudEvent({ id, source, type: `dev.sessionreaper.${type}`, time: new Date().toISOString(), datacontenttype: 'application/json', data })), 202);
}

test('a session closed on a real llama.cpp engine frees exactly the KV it held there, and no other session loses any', { skip: skipWithoutEngine, timeout: 180_000 }, async () => {
  const outside = await startEventSink();
  const stack = await startStack({ engine: 'llama', forward: outside.url, engineEnv: { ENGINE_SEQUENCES: '4', ENGINE_CONTEXT_TOKENS: '128' } });
  const { redis, store } = await stackStore(stack);
  try {
    const engine = stack.engineUrl!;
    const ids = ['llama-a', 'llama-b', 'llama-c'].map((id) => `${id}-${process.pid}`);
    for (const sessionId of ids) {
      await send(stack, 'session.opened', `${sessionId}-opened`, {
        sessionId, heartbeatIntervalMs: 30_000, placement: { node: 'cpu-node', runtimeUrl: engine, gpuBytes: 65_536 },
      });
    }
    await stack.broker.idle(30_000);
    // The pipeline's turns, with the incarnation session-reaper gave each session: their KV fills in the engine.
    const incarnations = new Map<string, number>();
    for (const sessionId of ids) {
      const view = await store.inspect(sessionId);
      assert.equal(view?.state, 'active');
      incarnations.set(sessionId, view.incarnation);
      const turn = await complete(engine, sessionId, view.incarnation, `hello from ${sessionId}, tell me a story`, 8);
      assert.equal(turn.status, 200, JSON.stringify(turn.body));
    }
    const [closed, ...others] = ids as [string, ...string[]];
    const heldBefore = new Map(await Promise.all(others.map(async (id) => [id, await tokensHeld(engine, id)] as const)));
    const closedTokens = await tokensHeld(engine, closed);
    assert.ok(closedTokens > 0, 'the closed session held KV');
    const before = await usedBytes(engine);

    await send(stack, 'session.closed', `${closed}-closed`, { sessionId: closed });
    await outside.waitForEvent((e) => e.event.type === 'dev.sessionreaper.session.destroyed' && (e.event.data as { sessionId: string }).sessionId === closed, { timeoutMs: 60_000 });

    const after = await usedBytes(engine);
    const booked = await until('the release is booked', async () => (await store.inspect(closed))?.confirmedFreedBytes, 10_000);
    assert.ok(booked > 0, 'session-reaper booked the bytes the engine reported');
    assert.equal(before - after, booked, "the engine's own reading dropped by exactly the freedBytes session-reaper booked");
    for (const id of others) assert.equal(await tokensHeld(engine, id), heldBefore.get(id), `${id}'s KV is untouched`);
    // And the others go on from their cache.
    const next = await complete(engine, others[0]!, incarnations.get(others[0]!)!, ' and then?', 4);
    assert.equal(next.status, 200);
    assert.ok((next.body.contextTokens as number) > heldBefore.get(others[0]!)!, 'a further turn continues on top of the cache');
  } finally {
    redis.disconnect();
    await stack.stop();
    await outside.close();
  }
});
