import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { EventType } from '../core/contract/events.ts';
import { freePort } from '../../tests/support/redis-harness.ts';
import { TOPOLOGIES } from '../../tests/support/redis.ts';
import { harness, type Harness } from './activity-score-test-support.ts';
import { postEvent, postRaw, startFunctionProcess, type FunctionProcess } from './function-process-test-support.ts';

for (const topology of TOPOLOGIES) {
  describe(`activity-score answers the Broker over HTTP (${topology})`, () => {
    let h: Harness;
    let fn: FunctionProcess;
    before(async () => {
      h = await harness(topology);
      h.clock.now = Date.now();
      fn = await startFunctionProcess('activity-score', h.env);
    });
    after(async () => {
      await fn.stop();
      await h.close();
    });

    const version = async (sessionId: string) => (await h.context(sessionId)).version;

    for (const mode of ['binary', 'structured'] as const) {
      it(`scores ${mode} events, answers 204, and a duplicate changes nothing`, async () => {
        const sessionId = `http-${mode}`;
        await h.open(sessionId);
        const message = { type: EventType.SessionActivity, id: `${sessionId}-1`, time: new Date().toISOString(), data: { sessionId, kind: 'message', text: 'how do I deploy this?' } };
        assert.equal((await postEvent(fn.url, mode, message)).status, 204, fn.output());
        assert.equal(await version(sessionId), 1);
        assert.equal((await postEvent(fn.url, mode, message)).status, 204);
        assert.equal(await version(sessionId), 1, 'a duplicate is not applied twice');
        const done = { type: EventType.InferenceCompleted, id: `${sessionId}-2`, data: { sessionId, requestId: 'r1', release: false } };
        assert.equal((await postEvent(fn.url, mode, done)).status, 204);
        assert.equal(await version(sessionId), 2);
        const { ctx } = await h.context(sessionId);
        assert.ok(ctx?.lastSketch, 'the message text was kept for the semantic signal');
        assert.ok((await h.deps.idleIndex.scheduledAt(sessionId)) !== undefined, 'its idle check is scheduled');
      });
    }

    it('answers 400 naming the field for a malformed event, and writes nothing', async () => {
      await h.open('http-bad');
      const res = await postEvent(fn.url, 'binary', { type: EventType.SessionActivity, id: 'bad-1', data: { sessionId: 'http-bad', kind: 'typing' } });
      assert.equal(res.status, 400);
      assert.deepEqual({ ...(res.body as object), reason: undefined }, { error: 'INVALID_FIELD', field: 'data.kind', reason: undefined });
      const structured = await postEvent(fn.url, 'structured', { type: EventType.SessionActivity, id: 'bad-2', data: { sessionId: 'http-bad', kind: 'input', embedding: [] } });
      assert.equal(structured.status, 400);
      assert.equal((structured.body as { field: string }).field, 'data.embedding');
      const notJson = await postRaw(fn.url, { 'content-type': 'application/cloudevents+json' }, '{"specversion":');
      assert.equal(notJson.status, 400);
      assert.equal(await version('http-bad'), 0);
      assert.equal(await h.deps.idleIndex.scheduledAt('http-bad'), undefined);
    });

    it('acknowledges activity of a session it does not know, writing nothing', async () => {
      const res = await postEvent(fn.url, 'binary', { type: EventType.SessionActivity, id: 'ghost-1', data: { sessionId: 'http-ghost', kind: 'input' } });
      assert.equal(res.status, 204);
      assert.equal(await version('http-ghost'), 0);
    });

    it('answers 503 when Redis is unreachable, so the Broker redelivers', async () => {
      const down = await startFunctionProcess('activity-score', { ...h.env, REDIS_URL: `redis://127.0.0.1:${await freePort()}`, REDIS_CLUSTER_NODES: '' });
      try {
        const res = await postEvent(down.url, 'binary', { type: EventType.SessionActivity, id: 'nr-1', data: { sessionId: 'http-binary', kind: 'input' } });
        assert.equal(res.status, 503);
      } finally {
        await down.stop();
      }
    });
  });
}
