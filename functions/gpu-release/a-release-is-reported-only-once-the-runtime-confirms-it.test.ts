import { after, before, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { CloudEvent, HTTP } from 'cloudevents';
import { EventType, type GpuReleaseRequested } from '../core/contract/events.ts';
import { parseInbound } from '../core/contract/parse.ts';
import { TransientError } from '../core/errors.ts';
import { createCore, type Core, type CoreDeps } from '../core/function-host.ts';
import { startSimRuntime, type SimRuntime } from '../sim-gpu-runtime/server.ts';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { createGpuReleaseDeps, GPU_RELEASE_ACCEPTS, handle, readGpuReleaseSettings, type GpuReleaseDeps, type GpuReleaseEvent } from './handle.ts';

const GiB = 1024 ** 3;
const TRACEPARENT = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';

function requested(data: GpuReleaseRequested, id = `${data.sessionId}/${data.incarnation}/release/${data.attempt}`): GpuReleaseEvent {
  const ce = new CloudEvent({ specversion: '1.0', id, source: '/session-reaper/destroy-dispatch', type: EventType.GpuReleaseRequested, datacontenttype: 'application/json', traceparent: TRACEPARENT, data });
  const message = HTTP.binary(ce);
  return parseInbound({ headers: message.headers, body: message.body as string }, { maxBytes: 1 << 20, accept: GPU_RELEASE_ACCEPTS });
}

async function failure(p: Promise<unknown>): Promise<TransientError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof TransientError, `expected TransientError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected the handler to throw');
}

describe('a GPU release is reported only once the runtime confirms it', () => {
  let sim: SimRuntime;
  let sink: EventSink;
  let core: Core;
  let deps: CoreDeps & GpuReleaseDeps;

  before(async () => {
    [sim, sink] = await Promise.all([startSimRuntime({ seed: 11 }), startEventSink()]);
    // REDIS_URL is never used: a release needs no Redis.
    core = createCore({ name: 'gpu-release', env: { K_SINK: sink.url, LOG_LEVEL: 'silent', RUNTIME_TIMEOUT_MS: '2000', REDIS_URL: 'redis://127.0.0.1:1' } });
    const settings = readGpuReleaseSettings({
      RELEASE_RETRIES: '1', RELEASE_BASE_BACKOFF_MS: '5', RELEASE_MAX_BACKOFF_MS: '20',
      BREAKER_VOLUME_THRESHOLD: '2', BREAKER_ERROR_THRESHOLD_PERCENTAGE: '50', BREAKER_RESET_TIMEOUT_MS: '500', BREAKER_ROLLING_WINDOW_MS: '10000',
    });
    deps = Object.assign(Object.create(core.deps) as CoreDeps, createGpuReleaseDeps(core, settings));
  });
  after(async () => {
    deps.runtime.shutdown();
    await core.close();
    await Promise.all([sim.stop(), sink.close()]);
  });
  beforeEach(() => sim.setFaults({ down: false }));

  const placement = () => ({ node: 'gpu-node-a', runtimeUrl: sim.url, gpuBytes: 2 * GiB });
  const eventsOf = (sessionId: string) => sink.events.filter((e) => e.event.subject === sessionId);

  it('emits gpu.released with the bytes the runtime freed, once, even when the request is redelivered', async () => {
    sim.allocate('rel-1', 3, 2 * GiB);
    const ev = requested({ sessionId: 'rel-1', incarnation: 3, placement: placement(), attempt: 1, reason: 'destroy' });
    await handle(ev, deps);
    await handle(ev, deps);
    const events = eventsOf('rel-1');
    assert.equal(events.length, 2);
    for (const { event } of events) {
      assert.equal(event.type, EventType.GpuReleased);
      assert.equal(event.id, 'rel-1/3/released');
      assert.deepEqual(event.data, { sessionId: 'rel-1', incarnation: 3, node: 'gpu-node-a', freedBytes: 2 * GiB });
    }
    assert.equal(sim.stats().releases['rel-1:3'], 1, 'the runtime freed the memory once; the redelivery was a replay');
    const sent = sim.requestLog().filter((r) => r.rawPath.endsWith('/rel-1/release'));
    assert.equal(sent[0]?.idempotencyKey, 'rel-1:3');
    assert.equal(sent[0]?.traceparent?.split('-')[1], TRACEPARENT.split('-')[1], 'the runtime call joins the event trace');
  });

  it('reports 404 (gone) and 409 (superseded) as released with 0 bytes, leaving a newer incarnation alone', async () => {
    await handle(requested({ sessionId: 'never-there', incarnation: 1, placement: placement(), attempt: 1 }), deps);
    sim.allocate('moved-on', 5, GiB);
    await handle(requested({ sessionId: 'moved-on', incarnation: 4, placement: placement(), attempt: 2, reason: 'migration' }), deps);
    assert.deepEqual(eventsOf('never-there').map((e) => [e.event.type, e.event.data]), [[EventType.GpuReleased, { sessionId: 'never-there', incarnation: 1, node: 'gpu-node-a', freedBytes: 0 }]]);
    assert.deepEqual(eventsOf('moved-on').map((e) => [e.event.type, e.event.data]), [[EventType.GpuReleased, { sessionId: 'moved-on', incarnation: 4, node: 'gpu-node-a', freedBytes: 0 }]]);
    assert.deepEqual(sim.session('moved-on'), { sessionId: 'moved-on', incarnation: 5, bytes: GiB });
  });

  it('a permanent refusal emits gpu.release.failed (not retryable) and acknowledges', async () => {
    sim.allocate('refused', 1, GiB);
    sim.queueFaults(400);
    await handle(requested({ sessionId: 'refused', incarnation: 1, placement: placement(), attempt: 1 }), deps);
    const [failed, ...rest] = eventsOf('refused');
    assert.equal(rest.length, 0);
    assert.equal(failed?.event.type, EventType.GpuReleaseFailed);
    assert.equal(failed?.event.id, 'refused/1/failed/1/http_status');
    assert.deepEqual({ ...(failed?.event.data as object), error: undefined }, { sessionId: 'refused', incarnation: 1, node: 'gpu-node-a', error: undefined, retryable: false });
    assert.match((failed?.event.data as { error: string }).error, /400/);
    assert.ok(sim.session('refused'), 'nothing was released');
  });

  it('a retryable failure emits gpu.release.failed (retryable) and throws for redelivery; the open breaker spares the runtime; it recovers', async (t) => {
    // A runtime of its own, so its breaker counts only this test's calls.
    const sim = await startSimRuntime({ seed: 12 });
    t.after(() => sim.stop());
    const placement = () => ({ node: 'gpu-node-a', runtimeUrl: sim.url, gpuBytes: GiB });
    sim.allocate('flaky', 2, GiB);
    sim.setFaults({ down: true });
    const before = sim.stats().received;
    const first = await failure(handle(requested({ sessionId: 'flaky', incarnation: 2, placement: placement(), attempt: 1 }), deps));
    assert.match(first.message, /not confirmed/);
    assert.equal(sim.stats().received - before, 2, 'one attempt and one retry');
    assert.equal(deps.runtime.breakerState(sim.url), 'open', 'two failures out of two opened the breaker');

    const reached = sim.stats().received;
    await failure(handle(requested({ sessionId: 'flaky', incarnation: 2, placement: placement(), attempt: 1 }, 'redelivered'), deps));
    assert.equal(sim.stats().received, reached, 'an open breaker refuses without calling the runtime');

    const failures = eventsOf('flaky');
    assert.ok(failures.length >= 2);
    for (const { event } of failures) {
      assert.equal(event.type, EventType.GpuReleaseFailed);
      assert.equal((event.data as { retryable: boolean }).retryable, true);
      assert.match(event.id, /^flaky\/2\/failed\/1\/breaker_open$/);
    }
    assert.ok(sim.session('flaky'), 'no release was reported or made');

    sim.setFaults({ down: false });
    // After the reset timeout the breaker lets a trial call through.
    for (let i = 0; i < 200 && deps.runtime.breakerState(sim.url) === 'open'; i++) await sleep(25);
    await handle(requested({ sessionId: 'flaky', incarnation: 2, placement: placement(), attempt: 1 }, 'redelivered-later'), deps);
    const released = eventsOf('flaky').filter((e) => e.event.type === EventType.GpuReleased);
    assert.deepEqual(released.map((e) => e.event.data), [{ sessionId: 'flaky', incarnation: 2, node: 'gpu-node-a', freedBytes: GiB }]);
    assert.equal(deps.runtime.breakerState(sim.url), 'closed');
  });
});
