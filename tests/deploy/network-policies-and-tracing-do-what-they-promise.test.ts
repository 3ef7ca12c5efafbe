// The NetworkPolicies, evaluated as Kubernetes evaluates them, admit the flows the system needs (Knative's data
// planes to the functions, the Redis clients to Redis, every workload to the collector, the collector's tiers to
// each other) and refuse a few that must never happen; and the tracing pipeline keeps what it promises, at the rate
// it is sized for. Each check is also shown to fail.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KEEPS_EVERY_ERROR_TRACE, OVERLAYS, checkTracing, quantityBytes, renderOverlay, withChange } from './deployment-checks.ts';
import { checkNetworkPolicies, networkAllows, selectorMatches } from './mesh-checks.ts';
import type { Manifest } from './manifest-schemas.ts';

const rendered = new Map(OVERLAYS.map((o) => [o, renderOverlay(o)]));
const prod = rendered.get('prod') ?? [];
const dev = rendered.get('dev') ?? [];

function without(ms: readonly Manifest[], kind: string, name: string): Manifest[] {
  return ms.filter((m) => !(m.doc.kind === kind && (m.doc.metadata as { name?: string }).name === name));
}

// Generated ConfigMaps carry a content hash in their names.
function generated(prefix: string): string {
  const name = prod.map((m) => (m.doc.metadata as { name?: string }).name ?? '').find((n) => n.startsWith(`${prefix}-`));
  assert.ok(name, `ConfigMap ${prefix} is rendered`);
  return name;
}

const redis = { namespace: 'session-reaper', labels: { 'app.kubernetes.io/name': 'redis' } };

void describe('network policies and tracing do what they promise', () => {
  for (const o of OVERLAYS) {
    const ms = rendered.get(o) ?? [];
    void it(`${o}: the NetworkPolicies admit every needed flow and refuse the forbidden ones`, () => assert.deepEqual(checkNetworkPolicies(ms), []));
  }

  void it('evaluates selectors and policies as Kubernetes does', () => {
    assert.ok(selectorMatches({ matchExpressions: [{ key: 'a', operator: 'In', values: ['x'] }] }, { a: 'x' }));
    assert.ok(!selectorMatches({ matchExpressions: [{ key: 'a', operator: 'Exists' }] }, {}));
    assert.ok(selectorMatches({}, { anything: 'at all' }));
    const gpu = { namespace: 'session-reaper', labels: { 'app.kubernetes.io/name': 'gpu-release' } };
    assert.equal(networkAllows(prod, gpu, redis, 6379), true);
    assert.equal(networkAllows(prod, gpu, redis, 6380), false);
    assert.equal(networkAllows(prod, { namespace: 'default', labels: { 'app.kubernetes.io/name': 'gpu-release' } }, redis, 6379), false);
    // A namespace no policy covers accepts everything.
    assert.equal(networkAllows(prod, gpu, { namespace: 'inference', labels: {} }, 8000), true);
  });

  void it('notices a namespace left open: no default deny', () => {
    const ms = without(prod, 'NetworkPolicy', 'default-deny-ingress');
    assert.match(checkNetworkPolicies(ms).join('\n'), /session-reaper has no default-deny ingress NetworkPolicy/);
  });

  void it('notices the activator or the Broker cut off from the functions', () => {
    const ms = withChange(prod, 'NetworkPolicy', 'knative-services-from-knative', '/spec/ingress/0/from/0/namespaceSelector/matchExpressions/0/values', ['knative-eventing']);
    const problems = checkNetworkPolicies(ms).join('\n');
    assert.match(problems, /NetworkPolicies refuse the activator to heartbeat-timeout \(port 8012\)/);
    const noH2c = withChange(prod, 'NetworkPolicy', 'knative-services-from-knative', '/spec/ingress/0/ports', [{ port: 8012, protocol: 'TCP' }]);
    assert.match(checkNetworkPolicies(noH2c).join('\n'), /refuse the Broker's data plane to gpu-release \(port 8013\)/);
  });

  void it('notices Redis opened to another namespace, or closed to a client', () => {
    const open = withChange(prod, 'NetworkPolicy', 'redis', '/spec/ingress/0/from/0', { namespaceSelector: {} });
    assert.match(checkNetworkPolicies(open).join('\n'), /NetworkPolicies admit another namespace to Redis \(port 6379\)/);
    const closed = withChange(prod, 'NetworkPolicy', 'redis', '/spec/ingress/0/from/0/podSelector/matchExpressions/0/values', ['heartbeat-timeout']);
    assert.match(checkNetworkPolicies(closed).join('\n'), /NetworkPolicies refuse idle-checker to Redis \(port 6379\)/);
  });

  void it('notices the collector tiers cut off, and dev’s simulator unreachable', () => {
    const ms = withChange(prod, 'NetworkPolicy', 'otel-sampler', '/spec/ingress/0/from/0/podSelector/matchLabels/app.kubernetes.io~1name', 'nobody');
    assert.match(checkNetworkPolicies(ms).join('\n'), /refuse the collector to its sampling tier \(port 4317\)/);
    const sim = without(dev, 'NetworkPolicy', 'sim-gpu-runtime');
    assert.match(checkNetworkPolicies(sim).join('\n'), /refuse gpu-release to the simulated runtime \(port 8080\)/);
    assert.match(checkNetworkPolicies(without(dev, 'NetworkPolicy', 'jaeger')).join('\n'), /refuse the sampling tier to Jaeger \(port 4317\)/);
  });

  void it('reads memory quantities', () => {
    assert.equal(quantityBytes('1536Mi'), 1536 * 2 ** 20);
    assert.equal(quantityBytes('1Gi'), 2 ** 30);
    assert.equal(quantityBytes('2G'), 2e9);
    assert.throws(() => quantityBytes('lots'));
  });

  void it('prod records every trace and promises every error trace, up to its sampling tier’s design rate', () => {
    const sampler = prod.find((m) => m.doc.kind === 'Deployment' && (m.doc.metadata as { name?: string }).name === 'otel-sampler');
    assert.equal((sampler?.doc.metadata as { annotations?: Record<string, string> }).annotations?.[KEEPS_EVERY_ERROR_TRACE], 'true');
    assert.deepEqual(checkTracing(prod), []);
  });

  void it('notices a sampling tier too small for its design rate, or too big for its memory', () => {
    const fewer = withChange(prod, 'Deployment', 'otel-sampler', '/spec/replicas', 3);
    assert.match(checkTracing(fewer).join('\n'), /holds 8571 new traces\/s \(3 x 100000 \/ 35 s\), less than its design rate of 10000/);
    const bigger = withChange(prod, 'Deployment', 'otel-sampler', '/metadata/annotations/sessionreaper.dev~1assumed-bytes-per-trace', '16384');
    assert.match(checkTracing(bigger).join('\n'), /100000 traces of 16384 bytes exceed its memory limiter's soft limit of 921 MiB/);
    const hasty = withChange(prod, 'ConfigMap', generated('otel-sampler-config'), '/data/sampling.yaml', 'processors:\n  tail_sampling:\n    decision_wait: 20s\n    num_traces: 100000\n    policies:\n      - { name: e, type: status_code, status_code: { status_codes: [ERROR] } }\n      - { name: r, type: probabilistic, probabilistic: { sampling_percentage: 10 } }\n');
    assert.match(checkTracing(hasty).join('\n'), /decides after 20 s, before gpu-release's longest delivery \(29000 ms\)/);
  });

  void it('notices a promise of every error trace that the pipeline cannot keep', () => {
    const noErrors = withChange(prod, 'ConfigMap', generated('otel-sampler-config'), '/data/sampling.yaml', 'processors:\n  tail_sampling:\n    decision_wait: 35s\n    num_traces: 100000\n    policies:\n      - { name: r, type: probabilistic, probabilistic: { sampling_percentage: 10 } }\n');
    assert.match(checkTracing(noErrors).join('\n'), /claims to keep every error trace but has no status ERROR policy/);
    const headSampled = withChange(
      withChange(prod, 'Telemetry', 'tracing', '/spec/tracing/0/randomSamplingPercentage', 10),
      'ConfigMap',
      'session-reaper-config',
      '/data/OTEL_TRACES_SAMPLER',
      'parentbased_traceidratio',
    );
    assert.match(checkTracing(headSampled).join('\n'), /claims to keep every error trace, but the mesh samples only 10 % at the head/);
  });

  void it('notices a first tier that does not route by trace id to every sampler', () => {
    const byService = withChange(prod, 'ConfigMap', generated('otel-collector-config'), '/data/collector.yaml', 'exporters:\n  loadbalancing:\n    routing_key: service\n    protocol: { otlp: { sending_queue: { enabled: true, queue_size: 10 } } }\n    resolver: { dns: { hostname: otel-sampler.session-reaper.svc.cluster.local } }\nprocessors: { memory_limiter: {} }\nservice: { pipelines: { traces: { processors: [memory_limiter], exporters: [loadbalancing] } } }\n');
    assert.match(checkTracing(byService).join('\n'), /routes by service, not by trace id/);
    const virtualIp = withChange(prod, 'Service', 'otel-sampler', '/spec/clusterIP', '10.0.0.9');
    assert.match(checkTracing(virtualIp).join('\n'), /resolves otel-sampler\.session-reaper\.svc\.cluster\.local, which is not a headless Service/);
    const unbounded = withChange(prod, 'ConfigMap', generated('otel-collector-config'), '/data/collector.yaml', 'exporters:\n  loadbalancing:\n    protocol: { otlp: {} }\n    resolver: { dns: { hostname: otel-sampler.session-reaper.svc.cluster.local } }\nservice: { pipelines: { traces: { processors: [], exporters: [loadbalancing] } } }\n');
    const problems = checkTracing(unbounded).join('\n');
    assert.match(problems, /no bounded sending queue to the samplers/);
    assert.match(problems, /otel-collector's traces pipeline does not start with the memory limiter/);
  });
});
