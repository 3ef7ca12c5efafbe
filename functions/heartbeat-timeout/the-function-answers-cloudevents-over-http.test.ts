// heartbeat-timeout as deployed: the real functions-framework process, real Redis (single and cluster), CloudEvents
// sent over HTTP in binary, structured and batched mode; malformed events answered 400 naming the field with nothing
// written, and an unreachable Redis answered 503 so the Broker redelivers.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EventType } from '../core/contract/events.ts';
import { testCore, type TestCore } from '../../tests/support/core.ts';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { freePort } from '../../tests/support/redis-harness.ts';
import { TOPOLOGIES, testRedisEnv } from '../../tests/support/redis.ts';
import { runtimesEnv } from '../../tests/support/runtimes.ts';
import { inboundEvent, postBatch, postEvent, startHeartbeatFunction, type RunningProcess } from './heartbeat-test-support.ts';

const PLACEMENT = { node: 'gpu-node-a', runtimeUrl: 'http://runtime-a.test:8000', gpuBytes: 1000 };

for (const topology of TOPOLOGIES) {
  describe(`heartbeat-timeout over HTTP on ${topology} Redis`, () => {
    let sink: EventSink;
    let core: TestCore;
    let fn: RunningProcess;

    before(async () => {
      sink = await startEventSink();
      core = await testCore(topology, { buckets: 32 });
      fn = await startHeartbeatFunction({ ...testRedisEnv(topology), ...runtimesEnv(), REDIS_KEY_PREFIX: core.prefix, INDEX_BUCKETS: '32', K_SINK: sink.url, LOG_LEVEL: 'silent' });
    });
    after(async () => {
      await fn.stop();
      await core.close();
      await sink.close();
    });

    test('its health endpoint answers ready, and its deep check reaches Redis', async () => {
      assert.equal((await fetch(`${fn.url}healthz`)).status, 200);
      const deep = await fetch(`${fn.url}healthz?deep=1`);
      assert.equal(deep.status, 200);
      assert.deepEqual(await deep.json(), { status: 'ok', function: 'heartbeat-timeout', redis: 'ok' });
    });

    test('a binary session.opened is answered 204 and opens the session', async () => {
      const ev = inboundEvent(EventType.SessionOpened, { sessionId: 'http-1', placement: PLACEMENT, heartbeatIntervalMs: 1000, missedBeats: 3 });
      assert.equal((await postEvent(fn.url, ev, 'binary')).status, 204);
      const view = await core.store.inspect('http-1');
      assert.equal(view?.state, 'active');
      assert.equal(view?.windowMs, 3000);
    });

    test('a structured session.heartbeat is answered 204 and moves the deadline out', async () => {
      const openedAt = Date.now() - 2000;
      await postEvent(fn.url, inboundEvent(EventType.SessionOpened, { sessionId: 'http-2', placement: PLACEMENT, heartbeatIntervalMs: 1000, missedBeats: 3 }, { time: new Date(openedAt).toISOString() }), 'binary');
      const before = (await core.store.inspect('http-2'))?.deadline;
      const beatAt = Date.now();
      assert.equal((await postEvent(fn.url, inboundEvent(EventType.SessionHeartbeat, { sessionId: 'http-2', seq: 1 }, { time: new Date(beatAt).toISOString() }), 'structured')).status, 204);
      const afterBeat = (await core.store.inspect('http-2'))?.deadline;
      assert.equal(before, openedAt + 3000);
      assert.equal(afterBeat, beatAt + 3000);
    });

    test('a structured session.hold is answered 204 and holds the session', async () => {
      await postEvent(fn.url, inboundEvent(EventType.SessionOpened, { sessionId: 'http-3', placement: PLACEMENT }), 'structured');
      const at = Date.now();
      assert.equal((await postEvent(fn.url, inboundEvent(EventType.SessionHold, { sessionId: 'http-3', durationMs: 600_000, reason: 'tool call' }), 'binary')).status, 204);
      assert.ok(((await core.store.inspect('http-3'))?.holdUntil ?? 0) >= at + 600_000);
    });

    test('a duplicate session.opened is answered 204 and changes nothing', async () => {
      const ev = inboundEvent(EventType.SessionOpened, { sessionId: 'http-4', placement: PLACEMENT });
      assert.equal((await postEvent(fn.url, ev, 'binary')).status, 204);
      const first = await core.store.inspect('http-4');
      assert.equal((await postEvent(fn.url, ev, 'structured')).status, 204);
      const second = await core.store.inspect('http-4');
      assert.deepEqual(second, first);
    });

    test('a malformed session.opened is answered 400 naming the field, and nothing is written', async () => {
      const ev = inboundEvent(EventType.SessionOpened, { sessionId: 'http-bad', placement: { node: 'gpu-node-a', runtimeUrl: 'ftp://nope' } });
      for (const mode of ['binary', 'structured'] as const) {
        const res = await postEvent(fn.url, ev, mode);
        assert.equal(res.status, 400);
        assert.equal((res.body as { field?: string }).field, 'data.placement.runtimeUrl');
      }
      assert.equal(await core.store.inspect('http-bad'), null);
      assert.equal(await core.store.activeCount(), (await Promise.all(['http-1', 'http-2', 'http-3', 'http-4'].map((id) => core.store.inspect(id)))).filter((v) => v?.state === 'active').length);
    });

    test('a batch (batched content mode) is answered 204 once every event in it is applied', async () => {
      const ids = ['http-b1', 'http-b2', 'http-b3'];
      const openedAt = Date.now() - 2000;
      const opened = ids.map((sessionId) => inboundEvent(EventType.SessionOpened, { sessionId, placement: PLACEMENT, heartbeatIntervalMs: 1000, missedBeats: 3 }, { time: new Date(openedAt).toISOString() }));
      const openedRes = await postBatch(fn.url, opened);
      assert.equal(openedRes.status, 204, JSON.stringify(openedRes.body));
      const beatAt = Date.now();
      const beats = ids.map((sessionId) => inboundEvent(EventType.SessionHeartbeat, { sessionId, seq: 1 }, { time: new Date(beatAt).toISOString() }));
      const hold = inboundEvent(EventType.SessionHold, { sessionId: 'http-b3', durationMs: 60_000, reason: 'tool call' });
      assert.equal((await postBatch(fn.url, [...beats, hold])).status, 204);
      const views = await Promise.all(ids.map((id) => core.store.inspect(id)));
      assert.deepEqual(views.map((v) => v?.deadline), [beatAt + 3000, beatAt + 3000, Math.max(beatAt + 3000, views[2]?.holdUntil ?? 0)]);
      assert.ok((views[2]?.holdUntil ?? 0) >= beatAt + 60_000);
    });

    test('a batch holding one malformed event is answered 400 naming it, and none of the batch is applied', async () => {
      await postEvent(fn.url, inboundEvent(EventType.SessionOpened, { sessionId: 'http-b4', placement: PLACEMENT }), 'binary');
      const before = await core.store.inspect('http-b4');
      const batch = [inboundEvent(EventType.SessionHeartbeat, { sessionId: 'http-b4', seq: 9 }), inboundEvent(EventType.SessionHeartbeat, { sessionId: 'not valid' })];
      const res = await postBatch(fn.url, batch);
      assert.equal(res.status, 400);
      assert.equal((res.body as { field?: string }).field, 'batch[1].data.sessionId');
      assert.deepEqual(await core.store.inspect('http-b4'), before);
      for (const body of ['[]', '{"specversion":"1.0"}', '[42]']) {
        const r = await fetch(fn.url, { method: 'POST', headers: { 'content-type': 'application/cloudevents-batch+json' }, body });
        assert.equal(r.status, 400, body);
      }
    });

    test('an event type this function does not consume is answered 400 naming ce.type', async () => {
      const res = await postEvent(fn.url, inboundEvent(EventType.SessionClosed, { sessionId: 'http-5' }), 'binary');
      assert.equal(res.status, 400);
      assert.equal((res.body as { field?: string }).field, 'ce.type');
    });
  });

  describe(`heartbeat-timeout over HTTP with ${topology} Redis unreachable`, () => {
    let sink: EventSink;
    let fn: RunningProcess;

    before(async () => {
      sink = await startEventSink();
      const closed = `127.0.0.1:${await freePort()}`;
      const redis: Record<string, string> = topology === 'single' ? { REDIS_URL: `redis://${closed}`, REDIS_CLUSTER_NODES: '' } : { REDIS_CLUSTER_NODES: closed };
      fn = await startHeartbeatFunction({ ...redis, ...runtimesEnv(), K_SINK: sink.url, LOG_LEVEL: 'silent' });
    });
    after(async () => {
      await fn.stop();
      await sink.close();
    });

    test('a valid heartbeat is answered 503 so the Broker redelivers it', async () => {
      const res = await postEvent(fn.url, inboundEvent(EventType.SessionHeartbeat, { sessionId: 'down-1' }), 'binary');
      assert.equal(res.status, 503);
    });

    test('a valid batch is answered 503 so its sender resends it', async () => {
      assert.equal((await postBatch(fn.url, [inboundEvent(EventType.SessionHeartbeat, { sessionId: 'down-3' })])).status, 503);
    });

    test('a malformed event is still answered 400: it is never worth redelivering', async () => {
      const res = await postEvent(fn.url, inboundEvent(EventType.SessionHeartbeat, { sessionId: 'down 2' }), 'structured');
      assert.equal(res.status, 400);
      assert.equal((res.body as { field?: string }).field, 'data.sessionId');
    });

    // Readiness says whether this process serves, not whether Redis answers: a probe on Redis would turn every pod
    // of every function unready together in a blip, and Knative would route through its activator.
    test('stays ready through the outage; only the deep check reports it', async () => {
      const ready = await fetch(`${fn.url}healthz`);
      assert.equal(ready.status, 200);
      assert.deepEqual(await ready.json(), { status: 'ok', function: 'heartbeat-timeout' });
      const deep = await fetch(`${fn.url}healthz?deep=1`);
      assert.equal(deep.status, 503);
      assert.deepEqual(await deep.json(), { status: 'unavailable', function: 'heartbeat-timeout', redis: 'unreachable' });
    });
  });
}
