// destroy-dispatch as deployed: the real process (its index.ts, serving the function as its container does) over HTTP,
// with real Redis and a real event sink as K_SINK. Binary and structured CloudEvents, duplicates, malformed
// events (400 naming the field, nothing written) and Redis being unreachable (503, so the Broker redelivers).
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { CloudEvent, HTTP } from 'cloudevents';
import { EventType, sendersOf, sourceOf } from '../core/contract/events.ts';
import { freePort, startRedis, type RedisProcess } from '../../tests/support/redis-harness.ts';
import { startFunctionProcess, type FunctionProcess } from '../activity-score/function-process-test-support.ts';
import { TOPOLOGIES } from '../../tests/support/redis.ts';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { startHarness, type Harness } from './destroy-dispatch-test-support.ts';

let seq = 0;
// An event as its sender sends it: session-reaper's own types from the workload that sends them.
function cloudEvent(type: string, data: object, id?: string): CloudEvent<object> {
  seq += 1;
  const ours = sendersOf(type)[0];
  const source = ours !== undefined && ours !== 'inference-pipeline' && ours !== 'operator' ? sourceOf(ours) : '/tests/http';
  return new CloudEvent({ specversion: '1.0', id: id ?? `http-${process.pid}-${seq}`, source, type, time: new Date().toISOString(), datacontenttype: 'application/json', data });
}

async function send(url: string, ce: CloudEvent<object>, mode: 'binary' | 'structured'): Promise<{ status: number; body: string }> {
  const message = mode === 'binary' ? HTTP.binary(ce) : HTTP.structured(ce);
  const res = await fetch(url, { method: 'POST', headers: message.headers as Record<string, string>, body: message.body as string });
  return { status: res.status, body: await res.text() };
}

for (const topology of TOPOLOGIES) {
  describe(`destroy-dispatch over HTTP on ${topology} Redis`, () => {
    let h: Harness;
    let fn: FunctionProcess;
    before(async () => {
      h = await startHarness(topology);
      fn = await startFunctionProcess('destroy-dispatch', { ...h.env, LOG_LEVEL: 'silent' });
    });
    after(async () => {
      await fn.stop();
      await h.close();
    });

    test('a binary session.closed and a structured gpu.released destroy a session; their duplicates change nothing', async () => {
      h.setNow(Date.now());
      const inc = await h.open('http-1');
      const closed = cloudEvent(EventType.SessionClosed, { sessionId: 'http-1' });
      assert.equal((await send(fn.url, closed, 'binary')).status, 204);
      assert.equal((await send(fn.url, closed, 'structured')).status, 204, 'the same event again, structured');
      const requests = h.emitted(EventType.GpuReleaseRequested, 'http-1');
      assert.ok(requests.length >= 1);
      assert.deepEqual(new Set(requests.map((e) => e.event.id)), new Set([`http-1/${inc}/release/1`]));
      assert.equal(requests[0]!.event.source, '/session-reaper/destroy-dispatch');

      const { token } = requests[0]!.event.data as { token: string };
      const released = cloudEvent(EventType.GpuReleased, { sessionId: 'http-1', incarnation: inc, node: 'gpu-node-a', freedBytes: 1000, token });
      assert.equal((await send(fn.url, released, 'structured')).status, 204);
      assert.equal((await send(fn.url, released, 'binary')).status, 204);
      const destroyed = h.emitted(EventType.SessionDestroyed, 'http-1');
      assert.equal(destroyed.length, 1);
      assert.equal(destroyed[0]!.event.id, `http-1/${inc}/destroyed`);
      assert.equal((await h.deps.store.inspect('http-1'))?.state, 'destroyed');
    });

    test('asked for a reply (Prefer: reply), a claim answers 200 with its gpu.release.requested, sent nowhere else; its redelivery answers the same event again', async () => {
      h.setNow(Date.now());
      const inc = await h.open('http-reply-1');
      const closed = cloudEvent(EventType.SessionClosed, { sessionId: 'http-reply-1' });
      const ask = async () => {
        const message = HTTP.binary(closed);
        const res = await fetch(fn.url, { method: 'POST', headers: { ...(message.headers as Record<string, string>), prefer: 'reply' }, body: message.body as string });
        return { res, body: await res.text() };
      };
      const first = await ask();
      assert.equal(first.res.status, 200, first.body);
      const reply = HTTP.toEvent({ headers: Object.fromEntries(first.res.headers), body: first.body }) as CloudEvent<{ sessionId: string; token: string }>;
      assert.equal(reply.type, EventType.GpuReleaseRequested);
      assert.equal(reply.id, `http-reply-1/${inc}/release/1`);
      assert.equal(reply.source, '/session-reaper/destroy-dispatch');
      assert.equal(reply.data?.sessionId, 'http-reply-1');
      assert.equal(h.emitted(EventType.GpuReleaseRequested, 'http-reply-1').length, 0, 'a reply is not also emitted');
      // The answer was lost: the Broker redelivers, and the same request (same id and token) is answered again.
      const again = await ask();
      assert.equal(again.res.status, 200, again.body);
      const replayed = HTTP.toEvent({ headers: Object.fromEntries(again.res.headers), body: again.body }) as CloudEvent<{ token: string }>;
      assert.equal(replayed.id, reply.id);
      assert.equal(replayed.data?.token, reply.data?.token);
      // Without the preference the event is emitted as before, and the answer is empty.
      assert.equal((await send(fn.url, closed, 'binary')).status, 204);
      assert.deepEqual(h.emitted(EventType.GpuReleaseRequested, 'http-reply-1').map((e) => e.event.id), [reply.id]);
    });

    test('inference.completed with release=false is acknowledged (204) and changes nothing', async () => {
      await h.open('http-2');
      assert.equal((await send(fn.url, cloudEvent(EventType.InferenceCompleted, { sessionId: 'http-2', requestId: 'r1', release: false }), 'binary')).status, 204);
      assert.equal((await h.deps.store.inspect('http-2'))?.state, 'active');
    });

    test('malformed events are answered 400 naming the field, and nothing is written or emitted', async () => {
      await h.open('http-3');
      const before = h.sink.events.length;
      const cases: [CloudEvent<object>, string][] = [
        [cloudEvent(EventType.SessionClosed, { sessionId: 'http/3' }), 'data.sessionId'],
        [cloudEvent(EventType.GpuReleased, { sessionId: 'http-3', incarnation: 1, node: 'gpu-node-a', token: 'q3Zp0c8Wm1tYb6Nf2LxR-A' }), 'data.freedBytes'],
        [cloudEvent(EventType.SessionExpired, { sessionId: 'http-3', incarnation: 0, deadline: '2026-11-21T06:45:04.123Z', detectedAt: '2026-11-21T06:45:04.131Z', lagMs: 8 }), 'data.incarnation'],
        [cloudEvent(EventType.SessionHeartbeat, { sessionId: 'http-3' }), 'ce.type'],
      ];
      for (const [ce, field] of cases) {
        for (const mode of ['binary', 'structured'] as const) {
          const res = await send(fn.url, ce, mode);
          assert.equal(res.status, 400, `${mode} ${field}: ${res.body}`);
          assert.equal((JSON.parse(res.body) as { field: string }).field, field);
        }
      }
      const notJson = await fetch(fn.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'ce-specversion': '1.0', 'ce-id': 'bad-json', 'ce-source': '/tests/http', 'ce-type': EventType.SessionClosed },
        body: '{"sessionId": ',
      });
      assert.equal(notJson.status, 400);
      assert.equal(h.sink.events.length, before);
      const view = await h.deps.store.inspect('http-3');
      assert.equal(view?.state, 'active');
    });
  });
}

describe('destroy-dispatch over HTTP when Redis is unreachable', () => {
  let sink: EventSink;
  before(async () => {
    sink = await startEventSink();
  });
  after(async () => {
    await sink.close();
  });

  test('answers 503 (the Broker redelivers) while Redis is down, and succeeds once it is back', async () => {
    const redis: RedisProcess = await startRedis();
    const env = { REDIS_URL: redis.url, REDIS_CLUSTER_NODES: '', REDIS_KEY_PREFIX: 'down', K_SINK: sink.url, LOG_LEVEL: 'silent', CORE_TIMEOUT_MS: '500' };
    const fn = await startFunctionProcess('destroy-dispatch', env);
    try {
      const closed = cloudEvent(EventType.SessionClosed, { sessionId: 'down-1' });
      assert.equal((await send(fn.url, closed, 'binary')).status, 204, 'an unknown session is acknowledged while Redis is up');

      await redis.stop();
      const res = await send(fn.url, closed, 'binary');
      assert.equal(res.status, 503, res.body);
      // Readiness stays (a Redis blip must not make every pod unready at once); the deep check says why events fail.
      assert.equal((await fetch(`${fn.url}healthz`)).status, 200);
      assert.equal((await fetch(`${fn.url}healthz?deep=1`)).status, 503);

      await redis.start();
      let status = 0;
      for (let i = 0; i < 100 && status !== 204; i++) {
        status = (await send(fn.url, closed, 'structured')).status;
        if (status !== 204) await sleep(100);
      }
      assert.equal(status, 204, 'the redelivery succeeds once Redis is back');
    } finally {
      await fn.stop();
      await redis.stop();
    }
  });

  test('answers 503 when Redis was never reachable', async () => {
    const env = { REDIS_URL: `redis://127.0.0.1:${await freePort()}`, REDIS_CLUSTER_NODES: '', K_SINK: sink.url, LOG_LEVEL: 'silent', CORE_TIMEOUT_MS: '200' };
    const fn = await startFunctionProcess('destroy-dispatch', env);
    try {
      const res = await send(fn.url, cloudEvent(EventType.SessionDestroyRequested, { sessionId: 'down-2' }), 'structured');
      assert.equal(res.status, 503, res.body);
      assert.equal(sink.events.length, 0);
    } finally {
      await fn.stop();
    }
  });
});
