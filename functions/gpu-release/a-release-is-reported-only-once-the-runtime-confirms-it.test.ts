import { after, before, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { CloudEvent, HTTP } from 'cloudevents';
import { EventType, type GpuReleaseRequested } from '../core/contract/events.ts';
import { parseInbound } from '../core/contract/parse.ts';
import { TransientError } from '../core/errors.ts';
import { createCore, type Core, type CoreDeps } from '../core/function-host.ts';
import { drawReleaseToken } from '../core/session-store.ts';
import { startSimRuntime, type SimRuntime } from '../../runtimes/sim-gpu-runtime/server.ts';
import { pendingRelease } from '../../tests/support/core.ts';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { dropPrefix, testRedisEnv, uniquePrefix } from '../../tests/support/redis.ts';
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

/** A destroy of a session placed at `placement`, waiting for its release under a fresh token (as destroy-dispatch leaves it). */
describe('a GPU release is reported only once the runtime confirms it', () => {
  let sim: SimRuntime;
  // A runtime of its own for the breaker test, so its breaker counts only that test's calls.
  let flakySim: SimRuntime;
  let sink: EventSink;
  let core: Core;
  let deps: CoreDeps & GpuReleaseDeps;
  const prefix = uniquePrefix();

  before(async () => {
    [sim, flakySim, sink] = await Promise.all([startSimRuntime({ seed: 11 }), startSimRuntime({ seed: 12 }), startEventSink()]);
    // The release to make is read from Redis (what the session was opened with), never taken from the event.
    core = createCore({
      name: 'gpu-release',
      env: {
        ...testRedisEnv('single'), REDIS_KEY_PREFIX: prefix, K_SINK: sink.url, LOG_LEVEL: 'silent', RUNTIME_TIMEOUT_MS: '2000',
        RUNTIMES: JSON.stringify([{ name: 'sim', url: sim.url }, { name: 'flaky', url: flakySim.url }]), OUTBOUND_ALLOWED_CIDRS: '127.0.0.0/8',
      },
    });
    await core.ready();
    const settings = readGpuReleaseSettings({
      RELEASE_RETRIES: '1', RELEASE_BASE_BACKOFF_MS: '5', RELEASE_MAX_BACKOFF_MS: '20',
      BREAKER_VOLUME_THRESHOLD: '2', BREAKER_ERROR_THRESHOLD_PERCENTAGE: '50', BREAKER_RESET_TIMEOUT_MS: '500', BREAKER_ROLLING_WINDOW_MS: '10000',
    });
    deps = Object.assign(Object.create(core.deps) as CoreDeps, createGpuReleaseDeps(core, settings));
  });
  after(async () => {
    deps.runtime.shutdown();
    await dropPrefix(core.deps.redis, prefix);
    await core.close();
    await Promise.all([sim.stop(), flakySim.stop(), sink.close()]);
  });
  beforeEach(() => sim.setFaults({ down: false }));

  const placement = () => ({ node: 'gpu-node-a', runtimeUrl: sim.url, gpuBytes: 2 * GiB });
  const eventsOf = (sessionId: string) => sink.events.filter((e) => e.event.subject === sessionId);

  it('emits gpu.released with the bytes the runtime freed, once, even when the request is redelivered', async () => {
    const { incarnation, token } = await pendingRelease(deps.store, 'rel-1', placement());
    sim.allocate('rel-1', incarnation, 2 * GiB);
    const ev = requested({ sessionId: 'rel-1', incarnation, placement: placement(), attempt: 1, token, reason: 'destroy' });
    await handle(ev, deps);
    await handle(ev, deps);
    const events = eventsOf('rel-1');
    assert.equal(events.length, 2);
    for (const { event } of events) {
      assert.equal(event.type, EventType.GpuReleased);
      assert.equal(event.id, `rel-1/${incarnation}/released/1`);
      assert.deepEqual(event.data, { sessionId: 'rel-1', incarnation, node: 'gpu-node-a', freedBytes: 2 * GiB, token });
    }
    assert.equal(sim.stats().releases[`rel-1:${incarnation}`], 1, 'the runtime freed the memory once');
    const sent = sim.requestLog().filter((r) => r.rawPath.endsWith('/rel-1/release'));
    assert.equal(sent.length, 1, 'the redelivery reported the stored answer and called nothing');
    assert.equal(sent[0]?.idempotencyKey, `rel-1:${incarnation}`);
    assert.equal(sent[0]?.traceparent?.split('-')[1], TRACEPARENT.split('-')[1], 'the runtime call joins the event trace');
  });

  it('calls the runtime once for an attempt however many deliveries of it arrive at once', async () => {
    const { incarnation, token } = await pendingRelease(deps.store, 'rel-dup', placement());
    sim.allocate('rel-dup', incarnation, 2 * GiB);
    const ev = requested({ sessionId: 'rel-dup', incarnation, placement: placement(), attempt: 1, token, reason: 'destroy' });
    // The deliveries that find the call in flight are redelivered later (503), rather than acknowledged and lost.
    const outcomes = await Promise.allSettled([handle(ev, deps), handle(ev, deps), handle(ev, deps), handle(ev, deps)]);
    assert.equal(outcomes.filter((o) => o.status === 'fulfilled').length, 1);
    for (const o of outcomes) if (o.status === 'rejected') assert.ok(o.reason instanceof TransientError, String(o.reason));
    await handle(ev, deps);
    assert.equal(sim.requestLog().filter((r) => r.rawPath.endsWith('/rel-dup/release')).length, 1, 'one runtime call for the attempt');
    const released = eventsOf('rel-dup');
    assert.ok(released.length >= 1 && released.every((e) => e.event.type === EventType.GpuReleased && e.event.id === `rel-dup/${incarnation}/released/1`));
  });

  it('lets the redelivery call again after a transient failure, and nothing after a refusal for good', async () => {
    const transient = await pendingRelease(deps.store, 'rel-flaky', placement());
    sim.allocate('rel-flaky', transient.incarnation, GiB);
    sim.queueFaults(503, 503);
    const ev = requested({ sessionId: 'rel-flaky', incarnation: transient.incarnation, placement: placement(), attempt: 1, token: transient.token });
    await failure(handle(ev, deps));
    await handle(ev, deps);
    const calls = () => sim.requestLog().filter((r) => r.rawPath.endsWith('/rel-flaky/release')).length;
    assert.equal(calls(), 3, 'two failed attempts of the first delivery, one call of the redelivery');
    assert.equal(sim.session('rel-flaky'), undefined);

    const refused = await pendingRelease(deps.store, 'rel-refused', placement());
    sim.allocate('rel-refused', refused.incarnation, GiB);
    sim.queueFaults(400);
    const again = requested({ sessionId: 'rel-refused', incarnation: refused.incarnation, placement: placement(), attempt: 1, token: refused.token });
    await handle(again, deps);
    await handle(again, deps);
    assert.equal(sim.requestLog().filter((r) => r.rawPath.endsWith('/rel-refused/release')).length, 1, 'a refused attempt is not called again');
  });

  it('reports 404 (gone) and 409 (superseded) as released with 0 bytes, leaving a newer incarnation alone', async () => {
    const gone = await pendingRelease(deps.store, 'never-there', placement());
    await handle(requested({ sessionId: 'never-there', incarnation: gone.incarnation, placement: placement(), attempt: 1, token: gone.token }), deps);
    // A session that moved to another node of the same runtime, which now holds its newer incarnation.
    const first = await deps.store.open({ sessionId: 'moved-on', fingerprint: 'open-a', now: Date.now(), liveFrom: Date.now(), windowMs: 60_000, placement: placement() });
    const moved = await deps.store.open({ sessionId: 'moved-on', fingerprint: 'open-b', now: Date.now(), liveFrom: Date.now(), windowMs: 60_000, placement: { ...placement(), node: 'gpu-node-b' } });
    if (first.code !== 'OPENED' || moved.code !== 'MIGRATED') return assert.fail(`${first.code} ${moved.code}`);
    sim.allocate('moved-on', moved.incarnation, GiB);
    await handle(requested({ sessionId: 'moved-on', incarnation: first.incarnation, placement: placement(), attempt: 2, token: moved.previous.token, reason: 'migration' }), deps);
    assert.deepEqual(eventsOf('never-there').map((e) => [e.event.type, e.event.data]), [[EventType.GpuReleased, { sessionId: 'never-there', incarnation: gone.incarnation, node: 'gpu-node-a', freedBytes: 0, token: gone.token }]]);
    assert.deepEqual(eventsOf('moved-on').map((e) => [e.event.type, e.event.data]), [[EventType.GpuReleased, { sessionId: 'moved-on', incarnation: first.incarnation, node: 'gpu-node-a', freedBytes: 0, token: moved.previous.token }]]);
    assert.deepEqual(sim.session('moved-on'), { sessionId: 'moved-on', incarnation: moved.incarnation, bytes: GiB });
  });

  it('a permanent refusal emits gpu.release.failed (not retryable, saying nothing the runtime sent) and acknowledges', async () => {
    const { incarnation, token } = await pendingRelease(deps.store, 'refused', placement());
    sim.allocate('refused', incarnation, GiB);
    sim.queueFaults(400);
    await handle(requested({ sessionId: 'refused', incarnation, placement: placement(), attempt: 1, token }), deps);
    const [failed, ...rest] = eventsOf('refused');
    assert.equal(rest.length, 0);
    assert.equal(failed?.event.type, EventType.GpuReleaseFailed);
    assert.equal(failed?.event.id, `refused/${incarnation}/failed/1/http_status`);
    assert.deepEqual(failed?.event.data, { sessionId: 'refused', incarnation, node: 'gpu-node-a', error: 'the runtime answered HTTP 400', retryable: false, token });
    assert.ok(sim.session('refused'), 'nothing was released');
  });

  it('calls nothing for a request that names no pending release, or another runtime than the session was opened with', async () => {
    const decoy = flakySim;
    const decoyCalls = decoy.stats().received;
    const { incarnation, token } = await pendingRelease(deps.store, 'stored-only', placement());
    sim.allocate('stored-only', incarnation, GiB);
    const before = sim.stats().received;
    await handle(requested({ sessionId: 'stored-only', incarnation, placement: placement(), attempt: 1, token: drawReleaseToken() }), deps);
    assert.equal(sim.stats().received, before, 'a token of no pending release calls nothing');
    await handle(requested({ sessionId: 'stored-only', incarnation, placement: { ...placement(), runtimeUrl: decoy.url }, attempt: 1, token }), deps);
    assert.equal(decoy.stats().received, decoyCalls, 'the runtime the event names is never called');
    assert.equal(sim.stats().releases[`stored-only:${incarnation}`], 1, 'the one the session was opened with is');
  });

  it('a retryable failure emits gpu.release.failed (retryable) and throws for redelivery; the open breaker spares the runtime; it recovers', async () => {
    const sim = flakySim;
    const placement = () => ({ node: 'gpu-node-a', runtimeUrl: sim.url, gpuBytes: GiB });
    const { incarnation, token } = await pendingRelease(deps.store, 'flaky', placement());
    sim.allocate('flaky', incarnation, GiB);
    sim.setFaults({ down: true });
    const before = sim.stats().received;
    const first = await failure(handle(requested({ sessionId: 'flaky', incarnation, placement: placement(), attempt: 1, token }), deps));
    assert.match(first.message, /not confirmed/);
    assert.equal(sim.stats().received - before, 2, 'one attempt and one retry');
    assert.equal(deps.runtime.breakerState(sim.url), 'open', 'two failures out of two opened the breaker');

    const reached = sim.stats().received;
    await failure(handle(requested({ sessionId: 'flaky', incarnation, placement: placement(), attempt: 1, token }, 'redelivered'), deps));
    assert.equal(sim.stats().received, reached, 'an open breaker refuses without calling the runtime');

    const failures = eventsOf('flaky');
    assert.ok(failures.length >= 2);
    for (const { event } of failures) {
      assert.equal(event.type, EventType.GpuReleaseFailed);
      assert.equal((event.data as { retryable: boolean }).retryable, true);
      assert.equal(event.id, `flaky/${incarnation}/failed/1/breaker_open`);
    }
    assert.ok(sim.session('flaky'), 'no release was reported or made');

    sim.setFaults({ down: false });
    // After the reset timeout the breaker lets a trial call through.
    for (let i = 0; i < 200 && deps.runtime.breakerState(sim.url) === 'open'; i++) await sleep(25);
    await handle(requested({ sessionId: 'flaky', incarnation, placement: placement(), attempt: 1, token }, 'redelivered-later'), deps);
    const released = eventsOf('flaky').filter((e) => e.event.type === EventType.GpuReleased);
    assert.deepEqual(released.map((e) => e.event.data), [{ sessionId: 'flaky', incarnation, node: 'gpu-node-a', freedBytes: GiB, token }]);
    assert.equal(deps.runtime.breakerState(sim.url), 'closed');
  });
});
