// The two timeout tiers, read from both sides: the functions' configuration (functions/core/config.ts and
// gpu-release's and destroy-dispatch's own settings schemas applied to the rendered ConfigMaps and env) and the mesh
// (Istio routes and pools) and Broker (delivery specs). Mesh routes time out per attempt exactly where the app does
// and never retry on top of it; a delivery covers the whole budget of the function it calls; destroy-dispatch's
// release slots outlast gpu-release's retries; tombstones outlast redelivery; head and tail sampling agree.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  OVERLAYS,
  checkTimeouts,
  checkTracing,
  effectiveSamplingPercent,
  parseGoDuration,
  parseIsoDuration,
  dataPlaneOf,
  ofKind,
  releaseBudgetMs,
  renderOverlay,
  withChange,
  triggerWindowMs,
  withEnv,
} from './deployment-checks.ts';
import { redeliveryWindowMs } from '../../tools/local-broker/triggers.ts';
import type { Json, Manifest } from './manifest-schemas.ts';

const prod = renderOverlay('prod');

function mutated(kind: string, name: string, pointer: string, value: Json): Manifest[] {
  return withChange(prod, kind, name, pointer, value);
}

void describe('mesh timeouts agree with the functions’ configuration', () => {
  for (const o of OVERLAYS) {
    const ms = renderOverlay(o);
    void it(`${o}: mesh, Broker and function timeouts agree`, () => assert.deepEqual(checkTimeouts(ms), []));
    void it(`${o}: head and tail sampling agree, and the tracing pipeline keeps what it promises`, () => assert.deepEqual(checkTracing(ms), []));
  }

  void it('prod keeps 10 % of traces overall, sampling only at the tail', () => assert.equal(effectiveSamplingPercent(prod), 10));

  void it('reads Istio and Knative durations', () => {
    assert.equal(parseGoDuration('5s'), 5000);
    assert.equal(parseGoDuration('1m30s'), 90_000);
    assert.equal(parseGoDuration('250ms'), 250);
    assert.throws(() => parseGoDuration('5'));
    assert.equal(parseIsoDuration('PT30S'), 30_000);
    assert.equal(parseIsoDuration('PT0.2S'), 200);
    assert.equal(parseIsoDuration('PT1M'), 60_000);
    assert.throws(() => parseIsoDuration('30s'));
  });

  void it('computes the redelivery window with Knative’s schedule, the same code the local Broker waits by', () => {
    // knative/eventing: 3 retries from 100 ms wait 100, 200 and 400 ms (delay x 2^(k-1)), plus 4 attempts of 1 s;
    // linear waits 0 and 100 ms (delay x (k-1)). eventing-kafka-broker waits 200, 400, 800 (delay x 2^k).
    assert.equal(redeliveryWindowMs({ retry: 3, backoffPolicy: 'exponential', backoffDelayMs: 100, timeoutMs: 1000 }, 'eventing'), 4700);
    assert.equal(redeliveryWindowMs({ retry: 2, backoffPolicy: 'linear', backoffDelayMs: 100, timeoutMs: 1000 }, 'eventing'), 3100);
    assert.equal(redeliveryWindowMs({ retry: 3, backoffPolicy: 'exponential', backoffDelayMs: 100, timeoutMs: 1000 }, 'eventing-kafka-broker'), 5400);
  });

  void it('knows which dispatcher delivers each overlay’s Triggers, and the gpu-release window it gives', () => {
    const dev = renderOverlay('dev');
    const devRelease = ofKind(dev, 'Trigger', 'eventing.knative.dev').find((t) => t.doc.metadata !== undefined && (t.doc.metadata as { name?: string }).name === 'gpu-release-gpu-release-requested')!;
    const prodRelease = ofKind(prod, 'Trigger', 'eventing.knative.dev').find((t) => (t.doc.metadata as { name?: string }).name === 'gpu-release-gpu-release-requested')!;
    assert.equal(dataPlaneOf(dev, devRelease), 'eventing');
    assert.equal(dataPlaneOf(prod, prodRelease), 'eventing-kafka-broker');
    // 3 attempts of 30 s, then waits of 1 + 2 s (dev) or 2 + 4 s (prod).
    assert.equal(triggerWindowMs(dev, devRelease), 93_000);
    assert.equal(triggerWindowMs(prod, prodRelease), 96_000);
  });

  // The checks must be able to fail.
  void it('notices a runtime route whose timeout differs from RUNTIME_TIMEOUT_MS', () => {
    const ms = mutated('VirtualService', 'gpu-runtime', '/spec/http/0/timeout', '4s');
    assert.match(checkTimeouts(ms).join('\n'), /VirtualService\/gpu-runtime route 0 times out after 4s, but the runtime tier's timeout is 5000 ms/);
  });

  void it('notices mesh retries stacked on the app’s', () => {
    const ms = mutated('VirtualService', 'broker-ingress', '/spec/http/0/retries/attempts', 2);
    assert.match(checkTimeouts(ms).join('\n'), /broker-ingress route 0 lets the mesh retry/);
  });

  void it('notices CORE_TIMEOUT_MS changed without the mesh', () => {
    const ms = mutated('ConfigMap', 'session-reaper-config', '/data/CORE_TIMEOUT_MS', '500');
    const problems = checkTimeouts(ms).join('\n');
    assert.match(problems, /broker-ingress route 0 times out after 1s, but the core tier's timeout is 500 ms/);
    assert.match(problems, /DestinationRule\/redis connect timeout 1s exceeds its tier's 500 ms/);
  });

  void it('notices a gpu-release delivery shorter than its retry budget', () => {
    const ms = mutated('Trigger', 'gpu-release-gpu-release-requested', '/spec/delivery/timeout', 'PT20S');
    assert.match(checkTimeouts(ms).join('\n'), /gives up after 20000 ms, inside gpu-release's budget of 29000 ms/);
  });

  void it('computes gpu-release’s budget from its retries, attempt timeout, backoff cap and core calls', () => {
    // 4 attempts of 5 s, 3 waits of at most 1 s, 6 core calls of 1 s.
    assert.equal(releaseBudgetMs({ RUNTIME_TIMEOUT_MS: 5000, CORE_TIMEOUT_MS: 1000 }, { RELEASE_RETRIES: 3, RELEASE_MAX_BACKOFF_MS: 1000 }), 29_000);
  });

  void it('notices more retries than the delivery timeout allows', () => {
    const ms = mutated('ConfigMap', 'release-retries', '/data/RELEASE_RETRIES', '5');
    assert.match(checkTimeouts(ms).join('\n'), /inside gpu-release's budget of 41000 ms/);
  });

  void it('notices a longer backoff cap than the delivery timeout allows, read with gpu-release’s own defaults', () => {
    const longer = withEnv(prod, 'Service', 'gpu-release', 'RELEASE_MAX_BACKOFF_MS', '4000');
    assert.match(checkTimeouts(longer).join('\n'), /inside gpu-release's budget of 38000 ms/);
    // Empty (unset, to readSettings), the cap is the code's default (1000 ms), not a number the check assumes.
    assert.deepEqual(checkTimeouts(withEnv(prod, 'Service', 'gpu-release', 'RELEASE_MAX_BACKOFF_MS', '')), []);
    const invalid = withEnv(prod, 'Service', 'gpu-release', 'RELEASE_MAX_BACKOFF_MS', '0');
    assert.match(checkTimeouts(invalid).join('\n'), /gpu-release: RELEASE_MAX_BACKOFF_MS="0" is invalid/);
  });

  void it('notices destroy-dispatch and gpu-release counting different retries', () => {
    const ms = withEnv(prod, 'Service', 'gpu-release', 'RELEASE_RETRIES', '2');
    assert.match(checkTimeouts(ms).join('\n'), /destroy-dispatch counts RELEASE_RETRIES=3, gpu-release makes 2/);
  });

  void it('notices a release slot lease shorter than gpu-release’s budget', () => {
    const ms = withEnv(prod, 'Service', 'destroy-dispatch', 'RELEASE_SLOT_LEASE_MS', '20000');
    assert.match(checkTimeouts(ms).join('\n'), /destroy-dispatch's release slot lease \(20000 ms\) ends inside gpu-release's budget of 29000 ms/);
  });

  void it('notices the idle checker’s probe giving up before its Redis ping can', () => {
    const ms = mutated('Deployment', 'idle-checker', '/spec/template/spec/containers/0/readinessProbe/timeoutSeconds', 1);
    assert.match(checkTimeouts(ms).join('\n'), /idle-checker's readiness probe gives up before/);
  });

  void it('notices a revision timeout that would cut a delivery', () => {
    const ms = mutated('Service', 'destroy-dispatch', '/spec/template/spec/timeoutSeconds', 5);
    assert.match(checkTimeouts(ms).join('\n'), /destroy-dispatch's revision timeout \(5 s\) would cut/);
  });

  void it('notices a release slot lease that ends inside the gpu-release Trigger’s redelivery window', () => {
    // 60 s outlasts one delivery's budget (29 s) but not the Broker's two redeliveries.
    const ms = withEnv(prod, 'Service', 'destroy-dispatch', 'RELEASE_SLOT_LEASE_MS', '60000');
    assert.match(checkTimeouts(ms).join('\n'), /release slot lease \(60000 ms\) ends inside Trigger\/gpu-release-gpu-release-requested's redelivery window of 96000 ms/);
  });

  void it('notices a stall watchdog that would re-request a release the Broker is still redelivering', () => {
    // 45 s outlasts one delivery (30 s) but not the redelivery window: the old setting.
    const ms = mutated('ConfigMap', 'session-reaper-config', '/data/DESTROY_STALL_MS', '45000');
    assert.match(checkTimeouts(ms).join('\n'), /DESTROY_STALL_MS \(45000\) would resume destroys whose release Trigger\/gpu-release-gpu-release-requested is still redelivering \(window 96000 ms\)/);
    // More Broker retries stretch the window past the watchdog too.
    const retried = mutated('Trigger', 'gpu-release-gpu-release-requested', '/spec/delivery/retry', 3);
    assert.match(checkTimeouts(retried).join('\n'), /DESTROY_STALL_MS \(120000\) would resume destroys .* \(window 134000 ms\)/);
  });

  void it('notices a reconciler grace shorter than a late session.opened', () => {
    const ms = withEnv(prod, 'Deployment', 'deadline-engine', 'RECONCILE_GRACE_MS', '100000');
    assert.match(checkTimeouts(ms).join('\n'), /RECONCILE_GRACE_MS \(100000\) ends inside Trigger\/heartbeat-timeout-session-opened's redelivery window \(120400 ms\)/);
  });

  void it('notices a delivery that honours Retry-After, which the windows do not count', () => {
    const ms = mutated('Trigger', 'gpu-release-gpu-release-requested', '/spec/delivery/retryAfterMax', 'PT60S');
    assert.match(checkTimeouts(ms).join('\n'), /gpu-release-gpu-release-requested honours Retry-After/);
  });

  void it('notices tombstones that expire before redelivery ends', () => {
    const ms = mutated('ConfigMap', 'session-reaper-config', '/data/TOMBSTONE_TTL_MS', '60000');
    assert.match(checkTimeouts(ms).join('\n'), /TOMBSTONE_TTL_MS \(60000\) does not outlast/);
  });

  void it('notices head and tail sampling that disagree', () => {
    const ms = mutated('Telemetry', 'tracing', '/spec/tracing/0/randomSamplingPercentage', 10);
    const problems = checkTracing(ms).join('\n');
    assert.match(problems, /records every trace, but the mesh samples 10 %/);
    assert.match(problems, /sampled twice: 10 % at the head, then 10 % at the tail/);
    const parentBased = mutated('ConfigMap', 'session-reaper-config', '/data/OTEL_TRACES_SAMPLER', 'parentbased_traceidratio');
    const dev = withChange(renderOverlay('dev'), 'ConfigMap', 'session-reaper-config', '/data/OTEL_TRACES_SAMPLER_ARG', '0.1');
    assert.match(checkTracing(parentBased).join('\n'), /samples parent-based: an error under a parent marked unsampled is never recorded/);
    assert.match(checkTracing(dev).join('\n'), /samples 0\.1, the mesh 100 %/);
  });
});
