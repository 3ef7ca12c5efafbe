// Cross-checks no schema can make: every Trigger's subscriber and sink exist, every function has its Service,
// Triggers, AuthorizationPolicy and Sidecar, the deadline engine and the idle checker run as they must, settings are
// ones the processes read (by the functions' own settings schemas) with values they accept, every image skaffold
// builds is deployed and holds what its entry points import, gpu-release lands on the Terraform GPU pool, each sender
// may send exactly what the catalogue names, and the install notes name the versions checked against.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { parse as parseYaml } from 'yaml';
import {
  DIRECT_PRODUCERS_POLICY,
  OVERLAYS,
  REPO_ROOT,
  applySkaffoldProfile,
  checkFunctionsComplete,
  checkGpuScheduling,
  checkLongRunning,
  checkRedisAccess,
  checkReferences,
  checkSenderPolicies,
  checkSettings,
  checkSkaffoldImages,
  entryPoints,
  obj,
  renderKustomization,
  renderOverlay,
  skaffoldPlan,
  withChange,
  withEnv,
  type GpuPool,
} from './deployment-checks.ts';
import { EventType } from '../../functions/core/contract/events.ts';
import { admittingPolicy, senderPoliciesOf } from '../../tools/local-broker/event-policies.ts';
import { checkImageContents, imageUses } from './image-contents.ts';
import { SchemaRegistry, describe as describeManifest, formatIssues, parseManifests, upstreamSchemasDir, type Json, type Manifest } from './manifest-schemas.ts';

const rendered = new Map(OVERLAYS.map((o) => [o, renderOverlay(o)]));
const skaffold = parseYaml(readFileSync(path.join(REPO_ROOT, 'skaffold.yaml'), 'utf8')) as Record<string, Json>;
const dockerfile = { path: 'functions/Dockerfile', text: readFileSync(path.join(REPO_ROOT, 'functions', 'Dockerfile'), 'utf8') };
const smokeJob = parseManifests(readFileSync(path.join(REPO_ROOT, 'tests', 'deploy', 'smoke-job.yaml'), 'utf8'), 'smoke-job.yaml');
const terraform = JSON.parse(readFileSync(path.join(REPO_ROOT, 'infra', 'terraform', 'gke-gpu-node-pool', 'scheduling.tf.json'), 'utf8')) as {
  locals: { gpu_node_labels: GpuPool['labels']; gpu_node_taints: GpuPool['taints']; gke_added_gpu_taints: GpuPool['taints'] };
};
const gpuPool: GpuPool = { labels: terraform.locals.gpu_node_labels, taints: [...terraform.locals.gpu_node_taints, ...terraform.locals.gke_added_gpu_taints] };

function overlay(name: (typeof OVERLAYS)[number]): Manifest[] {
  return rendered.get(name) ?? [];
}

const schemas = new SchemaRegistry(upstreamSchemasDir(REPO_ROOT));

void describe('functions, triggers, policies and images line up', () => {
  for (const o of OVERLAYS) {
    void it(`${o}: every reference resolves`, () => assert.deepEqual(checkReferences(overlay(o)), []));
    void it(`${o}: every function has its Service, Triggers, AuthorizationPolicy and Sidecar`, () => assert.deepEqual(checkFunctionsComplete(overlay(o)), []));
    void it(`${o}: the deadline engine and the idle checker run as long-running Broker sources`, () => assert.deepEqual(checkLongRunning(overlay(o)), []));
    void it(`${o}: every setting is one its process reads, and every value parses`, () => assert.deepEqual(checkSettings(overlay(o)), []));
    void it(`${o}: Redis admits every workload that keeps session state`, () => assert.deepEqual(checkRedisAccess(overlay(o)), []));
  }

  for (const profile of ['dev', 'prod', 'prod-memorystore']) {
    void it(`skaffold profile ${profile} deploys every image it builds`, () => {
      const plan = skaffoldPlan(applySkaffoldProfile(skaffold, profile));
      assert.equal(plan.kustomizePaths.length, 1);
      const manifests = plan.kustomizePaths.flatMap((p) => renderKustomization(p));
      assert.deepEqual(checkSkaffoldImages(plan, manifests, profile === 'dev' ? smokeJob : []), []);
    });
    void it(`skaffold profile ${profile}: every image holds every module its entry points import`, () => {
      const plan = skaffoldPlan(applySkaffoldProfile(skaffold, profile));
      const manifests = [...plan.kustomizePaths.flatMap((p) => renderKustomization(p)), ...(profile === 'dev' ? smokeJob : [])];
      const uses = imageUses(plan.artifacts, 'functions/Dockerfile', entryPoints(manifests));
      assert.ok(uses.length >= 4 && uses.every((u) => u.entries.length > 0), 'every image has an entry point to follow');
      assert.deepEqual(checkImageContents(REPO_ROOT, dockerfile, uses), []);
    });
  }

  void it('skaffold deploys nothing without a profile: the overlay is always chosen explicitly', () => {
    assert.deepEqual(skaffoldPlan(applySkaffoldProfile(skaffold, undefined)).kustomizePaths, []);
  });

  for (const o of OVERLAYS) {
    void it(`${o}: gpu-release stays off the Terraform GPU node pool`, () => assert.deepEqual(checkGpuScheduling(overlay(o), gpuPool), []));
  }

  void it('notices gpu-release pinned to, or tolerating, the GPU node pool', () => {
    const pinned = withChange(overlay('prod'), 'Service', 'gpu-release', '/spec/template/spec/nodeSelector', { 'sessionreaper.dev/node-pool': 'gpu' });
    assert.match(checkGpuScheduling(pinned, gpuPool).join('\n'), /gpu-release selects sessionreaper\.dev\/node-pool=gpu, which only the GPU pool's nodes carry/);
    const tolerant = withChange(overlay('prod'), 'Service', 'gpu-release', '/spec/template/spec/tolerations', [{ key: 'nvidia.com/gpu', operator: 'Exists', effect: 'NoSchedule' }]);
    assert.match(checkGpuScheduling(tolerant, gpuPool).join('\n'), /gpu-release tolerates the GPU pool's taint nvidia\.com\/gpu=/);
    const everything = withChange(overlay('prod'), 'Service', 'gpu-release', '/spec/template/spec/tolerations', [{ operator: 'Exists' }]);
    assert.match(checkGpuScheduling(everything, gpuPool).join('\n'), /gpu-release tolerates the GPU pool's taint/);
  });

  void it('the install notes name the Knative, Istio and Gateway API versions the schemas come from', () => {
    const sources = readFileSync(path.join(upstreamSchemasDir(REPO_ROOT), 'SOURCES.md'), 'utf8');
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
    const ms = overlay('prod').filter((m) => !(m.doc.kind === 'Service' && m.doc.apiVersion === 'v1' && (m.doc.metadata as { name?: string }).name === 'dead-letters'));
    assert.match(checkReferences(ms).join('\n'), /Broker\/default deadLetterSink names Service\/dead-letters, which is not deployed/);
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

  void it('the direct-heartbeats component admits its producers to heartbeat-timeout alone, for POST / only', () => {
    const ms = renderKustomization('tests/deploy/fixtures/prod-with-direct-heartbeats');
    const issues = ms.flatMap((m) => schemas.validate(m));
    assert.deepEqual(issues, [], formatIssues(issues));
    assert.deepEqual(checkFunctionsComplete(ms), []);
    const policy = ms.find((m) => describeManifest(m) === `AuthorizationPolicy/${DIRECT_PRODUCERS_POLICY}`);
    assert.equal(policy?.doc.metadata && (policy.doc.metadata as { namespace?: string }).namespace, 'session-reaper');
    assert.deepEqual(policy?.doc.spec, {
      action: 'ALLOW',
      selector: { matchLabels: { 'serving.knative.dev/service': 'heartbeat-timeout' } },
      rules: [{ from: [{ source: { principals: ['cluster.local/ns/inference/sa/gateway'] } }], to: [{ operation: { methods: ['POST'], paths: ['/'] } }] }],
    });
    const wider = withChange(ms, 'AuthorizationPolicy', DIRECT_PRODUCERS_POLICY, '/spec/rules/0/to/0/operation/methods/-', 'GET');
    assert.match(checkFunctionsComplete(wider).join('\n'), /heartbeat-timeout-direct-producers admits more than POST \//);
    const elsewhere = withChange(ms, 'AuthorizationPolicy', DIRECT_PRODUCERS_POLICY, '/spec/selector/matchLabels/serving.knative.dev~1service', 'destroy-dispatch');
    assert.match(checkFunctionsComplete(elsewhere).join('\n'), /destroy-dispatch also admits cluster\.local\/ns\/inference\/sa\/gateway/);
  });

  void it('notices a setting no code reads and one that does not parse', () => {
    const typo = withChange(overlay('prod'), 'ConfigMap', 'session-reaper-config', '/data/CORE_TIMEOUT', '1000');
    const ms = withChange(typo, 'ConfigMap', 'session-reaper-config', '/data/INDEX_BUCKETS', 'many');
    const problems = checkSettings(ms).join('\n');
    assert.match(problems, /sets CORE_TIMEOUT, which no code .* reads/);
    assert.match(problems, /INDEX_BUCKETS="many" is invalid/);
  });

  // Each function's own settings schema decides what it reads: a name another function reads is no help.
  void it('notices a function setting misspelt, or given to a function that does not read it', () => {
    const breaker = withEnv(overlay('prod'), 'Service', 'gpu-release', 'BREAKER_ERROR_THRESHOLD', '50');
    assert.match(checkSettings(breaker).join('\n'), /Service\/gpu-release sets BREAKER_ERROR_THRESHOLD, which no code functions\/gpu-release\/index\.ts runs reads/);
    const elsewhere = withEnv(overlay('prod'), 'Service', 'destroy-dispatch', 'RELEASE_MAX_BACKOFF_MS', '1000');
    assert.match(checkSettings(elsewhere).join('\n'), /Service\/destroy-dispatch sets RELEASE_MAX_BACKOFF_MS, which no code/);
    const otel = withEnv(overlay('prod'), 'Deployment', 'idle-checker', 'OTEL_SERVICE_NAMES', 'x');
    assert.match(checkSettings(otel).join('\n'), /Deployment\/idle-checker sets OTEL_SERVICE_NAMES/);
    const sim = withEnv(overlay('dev'), 'Deployment', 'sim-gpu-runtime', 'SIM_ERROR_RATE', '2');
    assert.match(checkSettings(sim).join('\n'), /Deployment\/sim-gpu-runtime: SIM_ERROR_RATE="2" is invalid/);
  });

  void it('notices an activity-score setting the function rejects, and the idle checker scoring otherwise', () => {
    const bad = withChange(overlay('prod'), 'ConfigMap', 'activity-score-config', '/data/IDLE_GRACE_MS', '10');
    const problems = checkSettings(bad).join('\n');
    assert.match(problems, /Service\/activity-score: IDLE_GRACE_MS="10" is invalid/);
    assert.match(problems, /Deployment\/idle-checker: IDLE_GRACE_MS="10" is invalid/);
    const policy = withChange(overlay('prod'), 'ConfigMap', 'activity-score-config', '/data/TENANT_POLICIES', '{"acme": {"bogus": 1}}');
    assert.match(checkSettings(policy).join('\n'), /TENANT_POLICIES/);
    const apart = withEnv(overlay('prod'), 'Deployment', 'idle-checker', 'IDLE_GRACE_MS', '120000');
    assert.match(checkSettings(apart).join('\n'), /Service\/activity-score and Deployment\/idle-checker read different activity-score settings/);
  });

  void it('notices a workload running something that is no entry point', () => {
    const ms = withChange(overlay('prod'), 'Deployment', 'idle-checker', '/spec/template/spec/containers/0/args/0', 'functions/activity-score/idle-checker.ts');
    assert.match(checkSettings(ms).join('\n'), /Deployment\/idle-checker runs functions\/activity-score\/idle-checker\.ts, which is none of the functions' entry points/);
  });

  void it('requires the idle checker like the deadline engine', () => {
    const without = overlay('prod').filter((m) => describeManifest(m) !== 'Deployment/idle-checker');
    assert.match(checkLongRunning(without).join('\n'), /idle-checker has no Deployment/);
    const single = withChange(overlay('prod'), 'Deployment', 'idle-checker', '/spec/replicas', 1);
    assert.match(checkLongRunning(single).join('\n'), /idle-checker runs 1 replicas, fewer than 2/);
    const unbound = overlay('prod').filter((m) => describeManifest(m) !== 'SinkBinding/idle-checker');
    assert.match(checkLongRunning(unbound).join('\n'), /idle-checker has no SinkBinding to the Broker/);
    const engine = withChange(overlay('prod'), 'Deployment', 'deadline-engine', '/spec/template/spec/containers/0/args/0', 'functions/heartbeat-timeout/index.ts');
    assert.match(checkLongRunning(engine).join('\n'), /deadline-engine runs functions\/heartbeat-timeout\/index\.ts, not node functions\/heartbeat-timeout\/engine\.ts/);
  });

  void it('notices the idle checker misnamed in traces, unprobed, unlimited or reachable', () => {
    const named = withEnv(overlay('prod'), 'Deployment', 'idle-checker', 'OTEL_SERVICE_NAME', 'idle-checker');
    assert.match(checkLongRunning(named).join('\n'), /idle-checker's OTEL_SERVICE_NAME is not activity-score/);
    const port = withEnv(overlay('prod'), 'Deployment', 'idle-checker', 'PORT', '9090');
    assert.match(checkLongRunning(port).join('\n'), /idle-checker's readiness probe calls port 8080, but it listens on 9090/);
    const open = overlay('prod').filter((m) => describeManifest(m) !== 'Sidecar/idle-checker');
    assert.match(checkLongRunning(open).join('\n'), /idle-checker has no Sidecar limiting its egress/);
    const reachable = withChange(overlay('prod'), 'AuthorizationPolicy', 'activity-score', '/spec/selector/matchLabels', { 'app.kubernetes.io/name': 'idle-checker' });
    assert.match(checkLongRunning(reachable).join('\n'), /idle-checker serves nothing to the mesh, yet AuthorizationPolicy\/activity-score admits callers/);
  });

  void it('notices a Redis client that Redis does not admit', () => {
    const ms = withChange(overlay('prod'), 'AuthorizationPolicy', 'redis', '/spec/rules/0/from/0/source/principals', ['cluster.local/ns/session-reaper/sa/deadline-engine']);
    assert.match(checkRedisAccess(ms).join('\n'), /Deployment\/idle-checker is a Redis client, but Redis does not admit cluster\.local\/ns\/session-reaper\/sa\/idle-checker/);
  });

  void it('notices an image that lacks a module its entry point imports, or a package only installed for development', () => {
    const plan = skaffoldPlan(applySkaffoldProfile(skaffold, 'prod'));
    const uses = imageUses(plan.artifacts, 'functions/Dockerfile', entryPoints(overlay('prod')));
    const withoutCore = { path: dockerfile.path, text: dockerfile.text.replace(/^COPY functions\/core .*$/m, '') };
    assert.match(checkImageContents(REPO_ROOT, withoutCore, uses).join('\n'), /image activity-score: functions\/activity-score\/idle-checker-main\.ts imports functions\/core\/config\.ts, which the image does not hold/);
    const devOnly = checkImageContents(REPO_ROOT, dockerfile, [{ image: 'activity-score', target: 'function', buildArgs: { FUNCTION: 'activity-score' }, entries: ['tests/deploy/deployment-checks.ts'] }]).join('\n');
    assert.match(devOnly, /imports package yaml, which is not a production dependency/);
    assert.match(devOnly, /imports tests\/deploy\/manifest-schemas\.ts, which the image does not hold/);
  });

  void it('notices an image skaffold builds but nothing deploys, and one deployed but never built', () => {
    const plan = skaffoldPlan(applySkaffoldProfile(skaffold, 'prod'));
    const renamed = withChange(overlay('prod'), 'Service', 'activity-score', '/spec/template/spec/containers/0/image', 'activity-scorer');
    const ms = withChange(renamed, 'Deployment', 'idle-checker', '/spec/template/spec/containers/0/image', 'activity-scorer');
    const problems = checkSkaffoldImages(plan, ms, []).join('\n');
    assert.match(problems, /skaffold builds activity-score, but nothing deploys/);
    assert.match(problems, /run image activity-scorer, which skaffold does not build/);
  });

  // The simulator lives in runtimes/, not functions/: its image comes from the Dockerfile's runtime stage.
  void it('notices a runtime image that does not hold its runtime, or is built under another name', () => {
    const plan = skaffoldPlan(applySkaffoldProfile(skaffold, 'dev'));
    const uses = imageUses(plan.artifacts, 'functions/Dockerfile', entryPoints(overlay('dev'))).filter((u) => u.image === 'sim-gpu-runtime');
    assert.deepEqual(uses.map((u) => u.target), ['runtime']);
    const withoutRuntime = { path: dockerfile.path, text: dockerfile.text.replace(/^COPY runtimes\/.*$/m, '') };
    assert.match(checkImageContents(REPO_ROOT, withoutRuntime, uses).join('\n'), /image sim-gpu-runtime: runtimes\/sim-gpu-runtime\/index\.ts imports runtimes\/sim-gpu-runtime\/index\.ts, which the image does not hold/);
    const asFunction = uses.map((u) => ({ ...u, target: 'function', buildArgs: { FUNCTION: u.image } }));
    assert.match(checkImageContents(REPO_ROOT, dockerfile, asFunction).join('\n'), /image sim-gpu-runtime: runtimes\/sim-gpu-runtime\/index\.ts imports runtimes\/sim-gpu-runtime\/server\.ts, which the image does not hold/);
    const renamed = { ...plan, artifacts: plan.artifacts.map((a) => (a.image === 'sim-gpu-runtime' ? { ...a, docker: { ...obj(a.docker), buildArgs: { RUNTIME: 'simulator' } } } : a)) };
    assert.match(checkSkaffoldImages(renamed, overlay('dev'), smokeJob).join('\n'), /artifact sim-gpu-runtime builds runtime simulator: one name everywhere/);
  });

});

// Who may send what to the Broker, as the rendered EventPolicies decide it (Knative Eventing's sender authorization:
// an event is admitted when one policy names its sender's OIDC subject and its filters pass; knative/eventing
// pkg/auth/verifier.go). Evaluated for every contract type and every sender of every overlay, with the evaluation the
// local Broker of `npm start` applies, so both deploy and local runs enforce the catalogue's `senders`. (The policies'
// schemas are checked with every other document in every-overlay-renders-and-matches-the-upstream-schemas.)
void describe('each sender may send exactly what the catalogue names', () => {
  for (const o of OVERLAYS) {
    void it(`${o}: every type is admitted from its catalogue senders alone, each as itself, with its own token`, () => {
      assert.deepEqual(checkSenderPolicies(overlay(o)), []);
    });
  }

  void it('the pipeline cannot end a session as the system, nor an operator close one as the pipeline', () => {
    const policies = senderPoliciesOf(overlay('prod').map((m) => m.doc as Record<string, unknown>), 'default');
    const pipeline = 'system:serviceaccount:inference:inference-pipeline';
    const operator = 'system:serviceaccount:session-reaper:session-reaper-operator';
    const admits = (subject: string, type: string, source: string) => admittingPolicy(policies, subject, { specversion: '1.0', id: 'x', type, source }) !== undefined;
    assert.ok(admits(pipeline, EventType.SessionClosed, '/inference-pipeline'));
    for (const type of [EventType.SessionExpired, EventType.GpuReleased, EventType.DestroyResume, EventType.GpuReleaseRequested, EventType.SessionDestroyRequested]) {
      assert.ok(!admits(pipeline, type, '/inference-pipeline'), `the pipeline may not send ${type}`);
    }
    assert.ok(!admits(pipeline, EventType.SessionClosed, '/session-reaper/destroy-dispatch'), 'nor speak as session-reaper');
    assert.ok(admits(operator, EventType.SessionDestroyRequested, '/sessionctl'));
    assert.ok(!admits(operator, EventType.SessionClosed, '/sessionctl'));
    assert.ok(!admits('system:serviceaccount:session-reaper:gpu-release', EventType.GpuReleased, '/session-reaper/destroy-dispatch'), 'a workload speaks only as itself');
    assert.ok(!admits('system:serviceaccount:default:default', EventType.SessionHeartbeat, '/x'), 'nobody else sends anything');
  });

  // The check must be able to fail.
  void it('notices a sender admitted for more than the catalogue names, a source left open, and a token missing', () => {
    const wider = withChange(overlay('prod'), 'EventPolicy', 'sender-inference-pipeline', '/spec/filters/0/all/0/any/-', { exact: { type: EventType.GpuReleased } });
    assert.match(checkSenderPolicies(wider).join('\n'), /inference-pipeline .* may send dev\.sessionreaper\.gpu\.released, but the catalogue says it does not/);
    const unpinned = withChange(overlay('prod'), 'EventPolicy', 'sender-gpu-release', '/spec/filters/0/all/1', { prefix: { source: '/' } });
    assert.match(checkSenderPolicies(unpinned).join('\n'), /gpu-release may send dev\.sessionreaper\.gpu\.released under the source \/session-reaper\/destroy-dispatch/);
    const missing = overlay('prod').filter((m) => describeManifest(m) !== 'EventPolicy/sender-deadline-engine');
    assert.match(checkSenderPolicies(missing).join('\n'), /deadline-engine should have exactly one EventPolicy/);
    assert.match(checkSenderPolicies(missing).join('\n'), /Trigger\/destroy-dispatch-session-expired waits for dev\.sessionreaper\.session\.expired, which no sender may send/);
    const tokenless = withChange(overlay('prod'), 'Service', 'destroy-dispatch', '/spec/template/spec/volumes/0/projected/sources/0/serviceAccountToken/audience', 'kubernetes');
    assert.match(checkSenderPolicies(tokenless).join('\n'), /Service\/destroy-dispatch does not present a token of destroy-dispatch/);
  });
});
