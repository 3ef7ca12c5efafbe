import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { CloudEvent, HTTP } from 'cloudevents';
import { EventType } from '../core/contract/events.ts';
import { drawReleaseToken } from '../core/session-store.ts';
import { startSimRuntime, type SimRuntime } from '../../runtimes/sim-gpu-runtime/server.ts';
import { coreEnv, pendingRelease, testCore, type TestCore } from '../../tests/support/core.ts';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { freePort } from '../../tests/support/redis-harness.ts';
import { runtimesEnv } from '../../tests/support/runtimes.ts';
import { postEvent, postRaw, startFunctionProcess, type FunctionProcess } from '../activity-score/function-process-test-support.ts';

const GiB = 1024 ** 3;

describe('gpu-release answers the Broker over HTTP', () => {
  let sim: SimRuntime;
  let sink: EventSink;
  let fn: FunctionProcess;
  let core: TestCore;

  before(async () => {
    [sim, sink, core] = await Promise.all([startSimRuntime({ seed: 21 }), startEventSink(), testCore('single', { buckets: 32 })]);
    fn = await startFunctionProcess('gpu-release', coreEnv(core, 'single', {
      ...runtimesEnv({ name: 'sim', url: sim.url }), K_SINK: sink.url, LOG_LEVEL: 'silent', RELEASE_RETRIES: '0', BREAKER_VOLUME_THRESHOLD: '1000',
    }));
  });
  after(async () => {
    await fn.stop();
    await core.close();
    await Promise.all([sim.stop(), sink.close()]);
  });

  const placement = () => ({ node: 'gpu-node-h', runtimeUrl: sim.url, gpuBytes: GiB });

  const pending = (sessionId: string) => pendingRelease(core.store, sessionId, placement());

  const request = (sessionId: string, incarnation: number, token: string) => ({ sessionId, incarnation, attempt: 1, token, placement: placement() });
  const OURS = '/session-reaper/destroy-dispatch';

  for (const mode of ['binary', 'structured'] as const) {
    it(`releases on a ${mode} event, answers 204, and a duplicate changes nothing`, async () => {
      const sessionId = `http-${mode}`;
      const { incarnation, token } = await pending(sessionId);
      sim.allocate(sessionId, incarnation, GiB);
      const event = { type: EventType.GpuReleaseRequested, source: OURS, id: `${sessionId}/${incarnation}/release/1`, data: request(sessionId, incarnation, token) };
      assert.equal((await postEvent(fn.url, mode, event)).status, 204, fn.output());
      assert.equal((await postEvent(fn.url, mode, event)).status, 204);
      const released = sink.events.filter((e) => e.event.subject === sessionId);
      assert.equal(released.length, 2);
      assert.ok(released.every((e) => e.event.id === `${sessionId}/${incarnation}/released/1` && e.event.type === EventType.GpuReleased));
      assert.deepEqual(released[0]?.event.data, { sessionId, incarnation, node: 'gpu-node-h', freedBytes: GiB, token });
      assert.equal(sim.stats().releases[`${sessionId}:${incarnation}`], 1);
    });
  }

  it('answers 503 with a retryable gpu.release.failed while the runtime is down', async () => {
    const { incarnation, token } = await pending('http-down');
    sim.allocate('http-down', incarnation, GiB);
    sim.setFaults({ down: true });
    try {
      const res = await postEvent(fn.url, 'binary', { type: EventType.GpuReleaseRequested, source: OURS, id: 'http-down/1/release/1', data: request('http-down', incarnation, token) });
      assert.equal(res.status, 503);
    } finally {
      sim.setFaults({ down: false });
    }
    const failed = sink.events.filter((e) => e.event.subject === 'http-down');
    assert.deepEqual(failed.map((e) => [e.event.type, (e.event.data as { retryable: boolean }).retryable]), [[EventType.GpuReleaseFailed, true]]);
    assert.ok(sim.session('http-down'), 'still held');
  });

  it('asked for a reply, answers 200 with its gpu.released, but sends a refusal for good on its own (a redelivery could not report it again)', async () => {
    const ask = async (sessionId: string, incarnation: number, token: string) => {
      const ce = new CloudEvent({ specversion: '1.0', type: EventType.GpuReleaseRequested, source: OURS, id: `${sessionId}/${incarnation}/release/1`, datacontenttype: 'application/json', data: request(sessionId, incarnation, token) });
      const message = HTTP.binary(ce);
      const res = await fetch(fn.url, { method: 'POST', headers: { ...(message.headers as Record<string, string>), prefer: 'reply' }, body: message.body as string });
      return { res, body: await res.text() };
    };
    const ok = await pending('http-reply-ok');
    sim.allocate('http-reply-ok', ok.incarnation, GiB);
    const confirmed = await ask('http-reply-ok', ok.incarnation, ok.token);
    assert.equal(confirmed.res.status, 200, confirmed.body);
    const reply = HTTP.toEvent({ headers: Object.fromEntries(confirmed.res.headers), body: confirmed.body }) as CloudEvent<unknown>;
    assert.equal(reply.type, EventType.GpuReleased);
    assert.equal(reply.id, `http-reply-ok/${ok.incarnation}/released/1`);
    assert.equal(sink.events.filter((e) => e.event.subject === 'http-reply-ok').length, 0, 'the confirmation rode in the answer');

    const refused = await pending('http-reply-refused');
    sim.allocate('http-reply-refused', refused.incarnation, GiB);
    sim.queueFaults(400);
    const answer = await ask('http-reply-refused', refused.incarnation, refused.token);
    assert.equal(answer.res.status, 204, answer.body);
    const failed = sink.events.filter((e) => e.event.subject === 'http-reply-refused');
    assert.deepEqual(failed.map((e) => [e.event.type, (e.event.data as { retryable: boolean }).retryable]), [[EventType.GpuReleaseFailed, false]]);
  });

  it('answers 400 naming the field for a malformed event, and calls no runtime', async () => {
    const before = sim.stats().received;
    const missing = await postEvent(fn.url, 'structured', { type: EventType.GpuReleaseRequested, source: OURS, id: 'bad-1', data: { sessionId: 'bad', incarnation: 1, attempt: 1 } });
    assert.equal(missing.status, 400);
    assert.deepEqual(missing.body, { error: 'MISSING_FIELD', field: 'data.placement', reason: 'is required' });
    const notJson = await postRaw(fn.url, { 'content-type': 'application/json', 'ce-specversion': '1.0', 'ce-id': 'x', 'ce-source': '/t', 'ce-type': EventType.GpuReleaseRequested }, '{');
    assert.equal(notJson.status, 400);
    const wrongType = await postEvent(fn.url, 'binary', { type: EventType.SessionClosed, id: 'bad-2', data: { sessionId: 'bad' } });
    assert.equal(wrongType.status, 400);
    assert.equal((wrongType.body as { field: string }).field, 'ce.type');
    assert.equal(sim.stats().received, before);
    assert.equal(sink.events.filter((e) => e.event.subject === 'bad').length, 0);
  });

  it('answers 503 when Redis is unreachable, so the Broker redelivers', async () => {
    const down = await startFunctionProcess('gpu-release', {
      REDIS_URL: `redis://127.0.0.1:${await freePort()}`, REDIS_CLUSTER_NODES: '', K_SINK: sink.url, LOG_LEVEL: 'silent', ...runtimesEnv({ name: 'sim', url: sim.url }),
    });
    try {
      sim.allocate('http-no-redis', 1, GiB);
      const res = await postEvent(down.url, 'binary', { type: EventType.GpuReleaseRequested, source: OURS, id: 'nr/1', data: request('http-no-redis', 1, drawReleaseToken()) });
      assert.equal(res.status, 503);
      assert.deepEqual(res.body, { error: 'UNAVAILABLE', reason: 'a dependency is unavailable; retry later' }, 'nothing of the fault itself is answered');
      // Readiness stays: the pod still serves (every event answered 503); only the deep check reports Redis.
      assert.equal((await fetch(`${down.url}healthz`)).status, 200);
      assert.equal((await fetch(`${down.url}healthz?deep=1`)).status, 503);
    } finally {
      await down.stop();
    }
  });
});
