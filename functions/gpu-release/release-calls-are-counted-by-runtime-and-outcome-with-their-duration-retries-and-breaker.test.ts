// gpu-release's metrics: each release call counted once by registered runtime and outcome (a redelivery that
// reports the stored answer calls nothing and counts nothing), its duration, the attempts beyond the first, and the
// breaker's transitions and state, all labelled by the runtime's registered name, never its URL.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { CloudEvent, HTTP } from 'cloudevents';
import { EventType, type GpuReleaseRequested } from '../core/contract/events.ts';
import { parseInbound } from '../core/contract/parse.ts';
import { createCore, type Core, type CoreDeps } from '../core/function-host.ts';
import { startSimRuntime, type SimRuntime } from '../../runtimes/sim-gpu-runtime/server.ts';
import { pendingRelease } from '../../tests/support/core.ts';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { sumOf, TextReader } from '../../tests/support/metrics.ts';
import { dropPrefix, testRedisEnv, uniquePrefix } from '../../tests/support/redis.ts';
import { createGpuReleaseDeps, GPU_RELEASE_ACCEPTS, handle, readGpuReleaseSettings, type GpuReleaseDeps, type GpuReleaseEvent } from './handle.ts';

function requested(data: GpuReleaseRequested): GpuReleaseEvent {
  const ce = new CloudEvent({ specversion: '1.0', id: `${data.sessionId}/${data.incarnation}/release/${data.attempt}`, source: '/session-reaper/destroy-dispatch', type: EventType.GpuReleaseRequested, datacontenttype: 'application/json', data });
  const message = HTTP.binary(ce);
  return parseInbound({ headers: message.headers, body: message.body as string }, { maxBytes: 1 << 20, accept: GPU_RELEASE_ACCEPTS });
}

describe("gpu-release's metrics", () => {
  let sim: SimRuntime;
  let sink: EventSink;
  let core: Core;
  let deps: CoreDeps & GpuReleaseDeps;
  const reader = new TextReader();
  const prefix = uniquePrefix();

  before(async () => {
    [sim, sink] = await Promise.all([startSimRuntime({ seed: 21 }), startEventSink()]);
    core = createCore({
      name: 'gpu-release',
      metricReader: reader,
      env: {
        ...testRedisEnv('single'), REDIS_KEY_PREFIX: prefix, K_SINK: sink.url, LOG_LEVEL: 'silent', RUNTIME_TIMEOUT_MS: '2000',
        RUNTIMES: JSON.stringify([{ name: 'sim', url: sim.url }]), OUTBOUND_ALLOWED_CIDRS: '127.0.0.0/8',
      },
    });
    await core.ready();
    const settings = readGpuReleaseSettings({ RELEASE_RETRIES: '2', RELEASE_BASE_BACKOFF_MS: '1', RELEASE_MAX_BACKOFF_MS: '5', BREAKER_VOLUME_THRESHOLD: '2', BREAKER_RESET_TIMEOUT_MS: '60000' });
    deps = Object.assign(Object.create(core.deps) as CoreDeps, createGpuReleaseDeps(core, settings));
  });
  after(async () => {
    deps.runtime.shutdown();
    await dropPrefix(core.deps.redis, prefix);
    await core.close();
    await Promise.all([sim.stop(), sink.close()]);
  });

  const placement = () => ({ node: 'gpu-node-a', runtimeUrl: sim.url, gpuBytes: 1024 });

  it('counts a release once, however often its request is delivered, with the attempts it needed', async () => {
    const { incarnation, token } = await pendingRelease(deps.store, 'mr-1', placement());
    sim.allocate('mr-1', incarnation, 1024);
    sim.queueFaults(503);
    const ev = requested({ sessionId: 'mr-1', incarnation, placement: placement(), attempt: 1, token, reason: 'destroy' });
    await handle(ev, deps);
    await handle(ev, deps);
    const text = await reader.text();
    assert.equal(sumOf(text, 'sessionreaper_gpu_release_requests_total', { runtime: 'sim', outcome: 'released' }), 1);
    assert.equal(sumOf(text, 'sessionreaper_gpu_release_requests_total'), 1, 'the redelivery called nothing');
    assert.equal(sumOf(text, 'sessionreaper_gpu_release_retries_total', { runtime: 'sim' }), 1, 'one attempt beyond the first');
    assert.equal(sumOf(text, 'sessionreaper_gpu_release_duration_seconds_count', { runtime: 'sim', outcome: 'released' }), 1);
    assert.doesNotMatch(text, /127\.0\.0\.1/, 'no URL in any label');
  });

  it('counts calls to a runtime that is down as failures, breaker_open once its breaker opened, and reports the breaker open', async () => {
    sim.setFaults({ down: true });
    try {
      for (let i = 0; i < 4; i++) {
        const { incarnation, token } = await pendingRelease(deps.store, `mr-down-${i}`, placement());
        await handle(requested({ sessionId: `mr-down-${i}`, incarnation, placement: placement(), attempt: 1, token, reason: 'destroy' }), deps).catch(() => undefined);
      }
    } finally {
      sim.setFaults({ down: false });
    }
    const text = await reader.text();
    // The first call's own retries open the breaker (volume threshold 2), so it too ends refused by the breaker.
    const failed = sumOf(text, 'sessionreaper_gpu_release_requests_total', { runtime: 'sim', outcome: 'failed_retryable' });
    const refused = sumOf(text, 'sessionreaper_gpu_release_requests_total', { runtime: 'sim', outcome: 'breaker_open' });
    assert.equal(failed + refused, 4, 'each of the four calls counted once, as a failure');
    assert.ok(refused >= 3, 'the calls after the breaker opened were refused by it');
    assert.equal(sumOf(text, 'sessionreaper_breaker_transitions_total', { runtime: 'sim', to: 'open' }), 1);
    assert.equal(sumOf(text, 'sessionreaper_breaker_state', { runtime: 'sim', state: 'open' }), 1);
  });
});
