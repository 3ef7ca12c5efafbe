// What the mesh will do with the rendered manifests, evaluated as Istio evaluates them: every principal that can
// deliver an event to a function (the Broker class's data plane and Knative's activator) gets through, nobody else
// does; every Sidecar selects the VirtualServices that bound its calls (1 s / 5 s, no mesh retries); and the mesh
// never sets a GPU runtime aside for longer than the app's breaker would. Each check is also shown to fail.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ACTIVATOR, OVERLAYS, checkFunctionsComplete, renderKustomization, renderOverlay, withChange, withEnv } from './deployment-checks.ts';
import {
  authorize,
  checkDeliveryAdmission,
  checkRuntimeEjection,
  checkVirtualServiceAttachment,
  hostsMatch,
  selectedVirtualServices,
  worstEjectionMs,
} from './mesh-checks.ts';
import type { Manifest } from './manifest-schemas.ts';

const rendered = new Map(OVERLAYS.map((o) => [o, renderOverlay(o)]));
const prod = rendered.get('prod') ?? [];
const KAFKA_DATA_PLANE = 'cluster.local/ns/knative-eventing/sa/knative-kafka-broker-data-plane';
const heartbeatPod = { 'app.kubernetes.io/name': 'heartbeat-timeout', 'serving.knative.dev/service': 'heartbeat-timeout' };

function sidecar(ms: readonly Manifest[], name: string): Manifest {
  const s = ms.find((m) => m.doc.kind === 'Sidecar' && (m.doc.metadata as { name?: string }).name === name);
  assert.ok(s, `Sidecar ${name} is rendered`);
  return s;
}

void describe('the mesh admits every deliverer and attaches every route', () => {
  for (const o of OVERLAYS) {
    const ms = rendered.get(o) ?? [];
    void it(`${o}: every principal that delivers to a function is admitted, and no other`, () => assert.deepEqual(checkDeliveryAdmission(ms), []));
    void it(`${o}: every Sidecar selects the VirtualServices of the hosts it calls, without mesh retries`, () => assert.deepEqual(checkVirtualServiceAttachment(ms), []));
    void it(`${o}: the mesh never ejects a runtime for longer than the breaker's reset`, () => assert.deepEqual(checkRuntimeEjection(ms), []));
  }

  void it('evaluates DENY before ALLOW, and an ALLOW policy as default deny for what it selects', () => {
    const post = { principal: ACTIVATOR, method: 'POST', path: '/', port: 8012 };
    assert.equal(authorize(prod, 'session-reaper', heartbeatPod, post).allowed, true);
    // Any workload of the namespace: deny-by-default (an ALLOW without rules) refuses what no other ALLOW admits.
    assert.deepEqual(authorize(prod, 'session-reaper', { 'app.kubernetes.io/name': 'nothing' }, post), { allowed: false, by: ['deny-by-default'] });
    // A mesh-wide DENY in the root namespace wins over the function's ALLOW.
    const denied = withChange(prod, 'AuthorizationPolicy', 'gpu-runtime-release-only-from-gpu-release', '/spec/selector/matchLabels', { 'serving.knative.dev/service': 'heartbeat-timeout' });
    const byDeny = withChange(denied, 'AuthorizationPolicy', 'gpu-runtime-release-only-from-gpu-release', '/spec/rules/0/to/0/operation/paths', ['/']);
    assert.deepEqual(authorize(byDeny, 'session-reaper', heartbeatPod, post), { allowed: false, by: ['gpu-runtime-release-only-from-gpu-release'] });
    // A policy in another namespace does not apply.
    assert.equal(authorize(prod, 'inference', heartbeatPod, post).allowed, true);
  });

  void it('notices a function that refuses the activator: the 403 Eventing never retries', () => {
    const ms = withChange(prod, 'AuthorizationPolicy', 'gpu-release', '/spec/rules/0/from/0/source/principals', ['cluster.local/ns/knative-eventing/sa/mt-broker-filter']);
    assert.match(checkDeliveryAdmission(ms).join('\n'), /gpu-release refuses a POST from cluster\.local\/ns\/knative-serving\/sa\/activator, which delivers its events/);
    assert.match(checkFunctionsComplete(ms).join('\n'), /gpu-release has no AuthorizationPolicy admitting cluster\.local\/ns\/knative-serving\/sa\/activator/);
  });

  void it('notices a function that admits a principal that does not deliver to it', () => {
    const ms = withChange(prod, 'AuthorizationPolicy', 'destroy-dispatch', '/spec/rules/0/from/0/source/principals/-', 'cluster.local/ns/session-reaper/sa/gpu-release');
    assert.match(checkDeliveryAdmission(ms).join('\n'), /destroy-dispatch admits a POST from cluster\.local\/ns\/session-reaper\/sa\/gpu-release \(destroy-dispatch\)/);
    const anyMethod = withChange(prod, 'AuthorizationPolicy', 'activity-score', '/spec/rules/0/to', []);
    assert.match(checkDeliveryAdmission(anyMethod).join('\n'), /activity-score admits more than POST from the activator/);
    const noHealth = withChange(prod, 'AuthorizationPolicy', 'activity-score', '/spec/rules/1/to/0/operation/paths', ['/metrics']);
    assert.match(checkDeliveryAdmission(noHealth).join('\n'), /activity-score refuses Knative's GET \/healthz/);
  });

  void it('derives the delivering data plane from the Broker class: each class needs its own principal admitted', () => {
    // prod runs the Kafka Broker (istio/components/kafka-broker admits its data plane); as an MT Broker it would not.
    const mt = withChange(prod, 'Broker', 'default', '/metadata/annotations/eventing.knative.dev~1broker.class', 'MTChannelBasedBroker');
    const problems = checkDeliveryAdmission(mt).join('\n');
    assert.match(problems, /heartbeat-timeout refuses a POST from cluster\.local\/ns\/knative-eventing\/sa\/mt-broker-filter/);
    // ... and now admits the Kafka data plane, whose principal no longer delivers anything.
    assert.match(problems, new RegExp(`heartbeat-timeout admits a POST from ${KAFKA_DATA_PLANE}`));
    // dev's MT Broker switched to Kafka, without the component: the reverse.
    const dev = rendered.get('dev') ?? [];
    const kafka = withChange(dev, 'Broker', 'default', '/metadata/annotations/eventing.knative.dev~1broker.class', 'Kafka');
    assert.match(checkDeliveryAdmission(kafka).join('\n'), new RegExp(`heartbeat-timeout refuses a POST from ${KAFKA_DATA_PLANE}`));
    // The component swaps the principal in every function policy.
    const fixed = ['heartbeat-timeout', 'activity-score', 'destroy-dispatch', 'gpu-release'].reduce(
      (ms, fn) => withChange(ms, 'AuthorizationPolicy', fn, '/spec/rules/0/from/0/source/principals/0', KAFKA_DATA_PLANE),
      kafka,
    );
    assert.deepEqual(checkDeliveryAdmission(fixed), []);
    const unknown = withChange(prod, 'Broker', 'default', '/metadata/annotations/eventing.knative.dev~1broker.class', 'SomethingElse');
    assert.match(checkDeliveryAdmission(unknown).join('\n'), /refuses a POST from unknown data plane of Broker class SomethingElse/);
  });

  void it('with direct-heartbeats, the producer reaches heartbeat-timeout alone, and the activator still delivers', () => {
    const ms = renderKustomization('tests/deploy/fixtures/prod-with-direct-heartbeats');
    assert.deepEqual(checkDeliveryAdmission(ms), []);
    const producer = { principal: 'cluster.local/ns/inference/sa/gateway', method: 'POST', path: '/', port: 8012 };
    assert.equal(authorize(ms, 'session-reaper', heartbeatPod, producer).allowed, true);
    assert.equal(authorize(ms, 'session-reaper', { 'serving.knative.dev/service': 'gpu-release' }, producer).allowed, false);
    const elsewhere = withChange(ms, 'AuthorizationPolicy', 'heartbeat-timeout-direct-producers', '/spec/selector/matchLabels/serving.knative.dev~1service', 'gpu-release');
    assert.match(checkDeliveryAdmission(elsewhere).join('\n'), /gpu-release admits the direct heartbeat producer/);
  });

  void it('models Istio host matching and Sidecar imports', () => {
    assert.ok(hostsMatch('gpu-runtime.inference.svc.cluster.local', '*.inference.svc.cluster.local'));
    assert.ok(hostsMatch('*.inference.svc.cluster.local', 'vllm-0.inference.svc.cluster.local'));
    assert.ok(hostsMatch('a.b', '*'));
    assert.ok(!hostsMatch('gpu-runtime.inference.svc.cluster.local', 'gpu-runtime.other.svc.cluster.local'));
    const names = (ms: Manifest[]) => ms.map((m) => (m.doc.metadata as { name?: string }).name).sort();
    assert.deepEqual(names(selectedVirtualServices(prod, sidecar(prod, 'gpu-release'))), ['broker-ingress', 'gpu-runtime']);
    assert.deepEqual(names(selectedVirtualServices(prod, sidecar(prod, 'destroy-dispatch'))), ['broker-ingress']);
  });

  void it('notices a Sidecar that imports the Broker ingress only from its own namespace (the VirtualService never attaches)', () => {
    // The import as it was: knative-eventing/... alone selects no VirtualService that lives in session-reaper.
    const ms = withChange(prod, 'Sidecar', 'heartbeat-timeout', '/spec/egress/0/hosts/4', 'istio-system/*');
    assert.match(checkVirtualServiceAttachment(ms).join('\n'), /Sidecar\/heartbeat-timeout calls kafka-broker-ingress\.knative-eventing\.svc\.cluster\.local but does not select VirtualService\/broker-ingress/);
    const runtime = withChange(prod, 'Sidecar', 'gpu-release', '/spec/egress/0/hosts/6', 'istio-system/*');
    assert.match(checkVirtualServiceAttachment(runtime).join('\n'), /Sidecar\/gpu-release calls gpu-runtime\.inference\.svc\.cluster\.local but does not select VirtualService\/gpu-runtime/);
  });

  void it('notices a VirtualService not exported to the callers, and one that leaves mesh retries on', () => {
    const hidden = withChange(prod, 'VirtualService', 'broker-ingress', '/spec/exportTo', ['knative-eventing']);
    assert.match(checkVirtualServiceAttachment(hidden).join('\n'), /does not select VirtualService\/broker-ingress/);
    const retrying = withChange(prod, 'VirtualService', 'gpu-runtime', '/spec/http/0/retries', { attempts: 2 });
    assert.match(checkVirtualServiceAttachment(retrying).join('\n'), /Sidecar\/gpu-release gets VirtualService\/gpu-runtime route 0, which leaves Istio's default retries on/);
    const dev = rendered.get('dev') ?? [];
    const devRuntime = withChange(dev, 'Sidecar', 'idle-checker', '/spec/egress/0/hosts/4', 'inference/*');
    assert.match(checkVirtualServiceAttachment(devRuntime).join('\n'), /Sidecar\/idle-checker calls sim-gpu-runtime\.session-reaper\.svc\.cluster\.local but does not select VirtualService\/gpu-runtime/);
  });

  void it('computes how long the mesh could black-hole a single-endpoint runtime', () => {
    const dr = (od: object | undefined): Manifest => ({ source: 't', doc: { kind: 'DestinationRule', spec: { trafficPolicy: od === undefined ? {} : { outlierDetection: od } } } as Manifest['doc'] });
    assert.equal(worstEjectionMs(dr(undefined)), 0);
    assert.equal(worstEjectionMs(dr({ consecutive5xxErrors: 5, baseEjectionTime: '30s', maxEjectionPercent: 50 })), 300_000);
    assert.equal(worstEjectionMs(dr({ baseEjectionTime: '10m' })), 600_000);
    // Panic routing: below minHealthPercent Envoy balances over every host, ejected ones included.
    assert.equal(worstEjectionMs(dr({ baseEjectionTime: '30s', minHealthPercent: 50 })), 0);
  });

  void it('notices outlier detection that outlasts the breaker, read with the app’s own settings', () => {
    const ejecting = withChange(prod, 'DestinationRule', 'gpu-runtimes', '/spec/trafficPolicy/outlierDetection', { consecutiveGatewayErrors: 5, interval: '10s', baseEjectionTime: '30s', maxEjectionPercent: 50 });
    const problems = checkRuntimeEjection(ejecting).join('\n');
    assert.match(problems, /DestinationRule\/gpu-runtimes can eject a single-endpoint runtime for up to 300000 ms, longer than gpu-release's breaker reset of 10000 ms/);
    assert.match(problems, /longer than deadline-engine's breaker reset of 10000 ms/);
    // A breaker that waits longer than Envoy could eject is fine; a setting the process would refuse is reported.
    const patient = ['Service/gpu-release', 'Deployment/deadline-engine'].reduce((ms, w) => {
      const [kind, name] = w.split('/') as [string, string];
      return withEnv(ms, kind, name, 'BREAKER_RESET_TIMEOUT_MS', '300000');
    }, ejecting);
    assert.deepEqual(checkRuntimeEjection(patient), []);
    assert.match(checkRuntimeEjection(withEnv(prod, 'Service', 'gpu-release', 'BREAKER_RESET_TIMEOUT_MS', '5')).join('\n'), /BREAKER_RESET_TIMEOUT_MS="5" is invalid/);
  });
});
