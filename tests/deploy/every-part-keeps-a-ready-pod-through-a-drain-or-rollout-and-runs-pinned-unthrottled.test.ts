// What the rendered overlays do when a pod goes away and how their containers run (tests/deploy/availability-checks.ts):
// each function and long-running part keeps a ready pod through a node drain and a rollout, the long-running parts
// are restarted only when wedged, the latency-critical engine is never CPU-throttled, every third-party image is pinned.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { OVERLAYS, REPO_ROOT, imagesIn, renderOverlay, withChange } from './deployment-checks.ts';
import { checkLatencyCriticalResources, checkOneReadyThroughDisruption, checkPinnedImages, checkProbes, isPinned } from './availability-checks.ts';
import type { Manifest } from './manifest-schemas.ts';

const rendered = new Map(OVERLAYS.map((o) => [o, renderOverlay(o)]));
const overlay = (o: (typeof OVERLAYS)[number]): Manifest[] => rendered.get(o) ?? [];

// Images other parts of the repository own and are replacing or pinning (issue 12): the Redis image (infra/redis), the
// collector (infra/otel-collector) and the dead-letter sink's busybox (knative/base/dead-letters.yaml).

void describe('every part keeps a ready pod through a drain or rollout, and runs pinned and unthrottled', () => {
  for (const o of OVERLAYS) {
    // dev runs on one node: a second replica there survives no node loss, so dev keeps one of each (its overlay says
    // so) and only the budgets' presence is checked.
    void it(`${o}: every function and long-running part can lose one pod and keep one ready`, () =>
      assert.deepEqual(checkOneReadyThroughDisruption(overlay(o), { exemptReplicas: o === 'dev' }), []));
    void it(`${o}: the long-running parts are restarted when wedged, never because Redis is down`, () => assert.deepEqual(checkProbes(overlay(o)), []));
    void it(`${o}: heartbeats and deadlines run without CPU limits`, () => assert.deepEqual(checkLatencyCriticalResources(overlay(o)), []));
    void it(`${o}: every third-party image is pinned`, () => assert.deepEqual(checkPinnedImages(imagesIn(overlay(o))), []));
  }

  void it('the function images build on an exact Node release', () => {
    const dockerfile = readFileSync(path.join(REPO_ROOT, 'functions', 'Dockerfile'), 'utf8');
    const base = /^ARG NODE_IMAGE=(\S+)$/m.exec(dockerfile)?.[1] ?? '';
    assert.ok(isPinned(base), `NODE_IMAGE=${base}`);
  });

  void it('the replay command in docs/deploy.md runs a pinned curl', () => {
    const docs = readFileSync(path.join(REPO_ROOT, 'docs', 'deploy.md'), 'utf8');
    const images = [...docs.matchAll(/--image=(\S+)/g)].map((m) => m[1] ?? '');
    assert.ok(images.length > 0);
    for (const image of images) assert.ok(isPinned(image), image);
  });

  // The checks must be able to fail.
  void it('notices a function at one replica, a missing budget, a budget that blocks drains, and a rollout that stops all pods', () => {
    const single = withChange(overlay('prod'), 'Service', 'gpu-release', '/spec/template/metadata/annotations/autoscaling.knative.dev~1min-scale', '1');
    assert.match(checkOneReadyThroughDisruption(single).join('\n'), /function gpu-release runs 1 replica\(s\): losing one leaves none ready/);
    const unbudgeted = overlay('prod').filter((m) => !(m.doc.kind === 'PodDisruptionBudget' && (m.doc.metadata as { name?: string }).name === 'destroy-dispatch'));
    assert.match(checkOneReadyThroughDisruption(unbudgeted).join('\n'), /function destroy-dispatch has no PodDisruptionBudget/);
    const blocking = withChange(overlay('prod'), 'PodDisruptionBudget', 'activity-score', '/spec/maxUnavailable', 0);
    assert.match(checkOneReadyThroughDisruption(blocking).join('\n'), /function activity-score's PodDisruptionBudget allows no eviction of its 2 pods/);
    const all = withChange(overlay('prod'), 'PodDisruptionBudget', 'activity-score', '/spec/maxUnavailable', '100%');
    assert.match(checkOneReadyThroughDisruption(all).join('\n'), /function activity-score keeps 0 ready pods through a drain/);
    const rollout = withChange(overlay('prod'), 'Deployment', 'idle-checker', '/spec/strategy', { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 2, maxSurge: 0 } });
    assert.match(checkOneReadyThroughDisruption(rollout).join('\n'), /Deployment idle-checker's rollout may stop 2 of its 2 pods at once/);
    // In dev the replica count is exempt, the budget is not.
    const devUnbudgeted = overlay('dev').filter((m) => !(m.doc.kind === 'PodDisruptionBudget' && (m.doc.metadata as { name?: string }).name === 'gpu-release'));
    assert.match(checkOneReadyThroughDisruption(devUnbudgeted, { exemptReplicas: true }).join('\n'), /function gpu-release has no PodDisruptionBudget/);
  });

  void it('notices a long-running part without liveness, and a probe that asks Redis', () => {
    const unlive = withChange(overlay('prod'), 'Deployment', 'deadline-engine', '/spec/template/spec/containers/0/livenessProbe/httpGet/path', '/healthz');
    assert.match(checkProbes(unlive).join('\n'), /Deployment\/deadline-engine has no liveness probe on \/livez/);
    const deep = withChange(overlay('prod'), 'Service', 'heartbeat-timeout', '/spec/template/spec/containers/0/readinessProbe/httpGet/path', '/healthz?deep=1');
    assert.match(checkProbes(deep).join('\n'), /Service\/heartbeat-timeout's readinessProbe calls \/healthz\?deep=1, which fails whenever Redis does/);
  });

  void it('notices a CPU limit on the engine and an unpinned image', () => {
    const limited = withChange(overlay('prod'), 'Deployment', 'deadline-engine', '/spec/template/spec/containers/0/resources/limits/cpu', '500m');
    assert.match(checkLatencyCriticalResources(limited).join('\n'), /Deployment\/deadline-engine has a CPU limit \(500m\)/);
    const floating = withChange(overlay('dev'), 'Deployment', 'jaeger', '/spec/template/spec/containers/0/image', 'jaegertracing/jaeger:2');
    assert.match(checkPinnedImages(imagesIn(floating)).join('\n'), /run jaegertracing\/jaeger:2, which is not pinned/);
    assert.equal(isPinned('redis:7.4'), false);
    assert.equal(isPinned('node:24-slim'), false);
    assert.equal(isPinned('node:24.21.0-slim'), true);
    assert.equal(isPinned(`x/y@sha256:${'a'.repeat(64)}`), true);
  });
});
