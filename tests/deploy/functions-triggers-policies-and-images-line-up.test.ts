// Cross-checks no schema can make: every Trigger's subscriber and sink exist, every function has its Service,
// Triggers, AuthorizationPolicy and Sidecar, settings are ones the code reads, every image skaffold builds is
// deployed, gpu-release lands on the Terraform GPU pool, and the install notes name the versions checked against.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { parse as parseYaml } from 'yaml';
import {
  OVERLAYS,
  REPO_ROOT,
  applySkaffoldProfile,
  checkFunctionsComplete,
  checkGpuScheduling,
  checkReferences,
  checkSettings,
  checkSkaffoldImages,
  renderKustomization,
  renderOverlay,
  skaffoldPlan,
  withChange,
  type GpuPool,
} from './deployment-checks.ts';
import { describe as describeManifest, parseManifests, type Json, type Manifest } from './manifest-schemas.ts';

const rendered = new Map(OVERLAYS.map((o) => [o, renderOverlay(o)]));
const skaffold = parseYaml(readFileSync(path.join(REPO_ROOT, 'skaffold.yaml'), 'utf8')) as Record<string, Json>;
const smokeJob = parseManifests(readFileSync(path.join(REPO_ROOT, 'tests', 'deploy', 'smoke-job.yaml'), 'utf8'), 'smoke-job.yaml');
const terraform = JSON.parse(readFileSync(path.join(REPO_ROOT, 'infra', 'terraform', 'gke-gpu-node-pool', 'scheduling.tf.json'), 'utf8')) as {
  locals: { gpu_node_labels: GpuPool['labels']; gpu_node_taints: GpuPool['taints']; gke_added_gpu_taints: GpuPool['taints'] };
};
const gpuPool: GpuPool = { labels: terraform.locals.gpu_node_labels, taints: [...terraform.locals.gpu_node_taints, ...terraform.locals.gke_added_gpu_taints] };

function overlay(name: (typeof OVERLAYS)[number]): Manifest[] {
  return rendered.get(name) ?? [];
}

void describe('functions, triggers, policies and images line up', () => {
  for (const o of OVERLAYS) {
    void it(`${o}: every reference resolves`, () => assert.deepEqual(checkReferences(overlay(o)), []));
    void it(`${o}: every function has its Service, Triggers, AuthorizationPolicy and Sidecar`, () => assert.deepEqual(checkFunctionsComplete(overlay(o)), []));
    void it(`${o}: every setting is one the code reads, and the core ones parse`, () => assert.deepEqual(checkSettings(overlay(o)), []));
  }

  for (const profile of ['dev', 'prod', 'prod-memorystore']) {
    void it(`skaffold profile ${profile} deploys every image it builds`, () => {
      const plan = skaffoldPlan(applySkaffoldProfile(skaffold, profile));
      assert.equal(plan.kustomizePaths.length, 1);
      const manifests = plan.kustomizePaths.flatMap((p) => renderKustomization(p));
      assert.deepEqual(checkSkaffoldImages(plan, manifests, profile === 'dev' ? smokeJob : []), []);
    });
  }

  void it('skaffold deploys nothing without a profile: the overlay is always chosen explicitly', () => {
    assert.deepEqual(skaffoldPlan(applySkaffoldProfile(skaffold, undefined)).kustomizePaths, []);
  });

  for (const o of ['prod', 'prod-memorystore'] as const) {
    void it(`${o}: gpu-release selects and tolerates the Terraform GPU node pool`, () => assert.deepEqual(checkGpuScheduling(overlay(o), gpuPool), []));
  }

  void it('the install notes name the Knative, Istio and Gateway API versions the schemas come from', () => {
    const sources = readFileSync(path.resolve(REPO_ROOT, '..', 'shared', 'upstream', 'schemas', 'SOURCES.md'), 'utf8');
    const notes = readFileSync(path.join(REPO_ROOT, 'infra', 'README.md'), 'utf8');
    const patterns: [string, RegExp][] = [
      ['Knative Serving', /`knative-serving\/\*\.yaml` \| knative\/serving \| tag `knative-(v[\d.]+)`/],
      ['Knative Eventing', /`knative-eventing\/\*\.yaml` \| knative\/eventing \| tag `knative-(v[\d.]+)`/],
      ['Istio', /`istio\/crd-all\.gen\.yaml` \| istio\/istio \| tag `([\d.]+)`/],
      ['Gateway API', /gateway-api-crd-(v[\d.]+)-/],
    ];
    for (const [label, pattern] of patterns) {
      const version = pattern.exec(sources)?.[1];
      assert.ok(version, `SOURCES.md names a ${label} version`);
      assert.match(notes, new RegExp(`${label} ${version.replace(/\./g, '\\.')}`), `infra/README.md names ${label} ${version}`);
    }
  });

  // The checks must be able to fail.
  void it('notices a Trigger whose subscriber is not deployed', () => {
    const ms = withChange(overlay('prod'), 'Trigger', 'gpu-release-gpu-release-requested', '/spec/subscriber/ref/name', 'gpu-releas');
    assert.match(checkReferences(ms).join('\n'), /names Service\/gpu-releas, which is not deployed/);
  });

  void it('notices a missing dead-letter sink', () => {
    const ms = overlay('prod').filter((m) => m.doc.kind !== 'JobSink');
    assert.match(checkReferences(ms).join('\n'), /Broker\/default deadLetterSink names JobSink\/dead-letters/);
  });

  void it('notices a function that lost a Trigger', () => {
    const ms = overlay('prod').filter((m) => describeManifest(m) !== 'Trigger/destroy-dispatch-destroy-resume');
    assert.match(checkFunctionsComplete(ms).join('\n'), /destroy-dispatch receives .* but consumes .*destroy\.resume/);
  });

  void it('notices a function without its AuthorizationPolicy, or one admitting more than the Broker', () => {
    const without = overlay('prod').filter((m) => describeManifest(m) !== 'AuthorizationPolicy/activity-score');
    assert.match(checkFunctionsComplete(without).join('\n'), /activity-score has no AuthorizationPolicy/);
    const wider = withChange(overlay('prod'), 'AuthorizationPolicy', 'gpu-release', '/spec/rules/0/from/0/source/principals/-', 'cluster.local/ns/default/sa/default');
    assert.match(checkFunctionsComplete(wider).join('\n'), /gpu-release also admits cluster\.local\/ns\/default\/sa\/default/);
  });

  void it('notices a setting no code reads and one that does not parse', () => {
    const typo = withChange(overlay('prod'), 'ConfigMap', 'session-reaper-config', '/data/CORE_TIMEOUT', '1000');
    const ms = withChange(typo, 'ConfigMap', 'session-reaper-config', '/data/INDEX_BUCKETS', 'many');
    const problems = checkSettings(ms).join('\n');
    assert.match(problems, /sets CORE_TIMEOUT, which no code reads/);
    assert.match(problems, /INDEX_BUCKETS="many" is invalid/);
  });

  void it('notices an image skaffold builds but nothing deploys, and one deployed but never built', () => {
    const plan = skaffoldPlan(applySkaffoldProfile(skaffold, 'prod'));
    const ms = withChange(overlay('prod'), 'Service', 'activity-score', '/spec/template/spec/containers/0/image', 'activity-scorer');
    const problems = checkSkaffoldImages(plan, ms, []).join('\n');
    assert.match(problems, /skaffold builds activity-score, but nothing deploys/);
    assert.match(problems, /run image activity-scorer, which skaffold does not build/);
  });

  void it('notices gpu-release missing a toleration for the GPU pool', () => {
    const ms = withChange(overlay('prod'), 'Service', 'gpu-release', '/spec/template/spec/tolerations', [{ key: 'sessionreaper.dev/node-pool', operator: 'Equal', value: 'gpu', effect: 'NoSchedule' }]);
    assert.match(checkGpuScheduling(ms, gpuPool).join('\n'), /does not tolerate the GPU pool's taint nvidia\.com\/gpu/);
  });
});
