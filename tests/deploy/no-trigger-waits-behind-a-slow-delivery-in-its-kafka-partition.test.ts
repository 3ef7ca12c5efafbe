// Prod runs the Kafka Broker with every Trigger unordered, so one slow delivery (a gpu-release waiting on its runtime)
// never holds back the events behind it in a Kafka partition; the overlay states how many deliveries each Trigger
// consumer keeps in flight; and everything that names the Broker's ingress or data plane (K_SINK, the Sidecar
// imports, the core-tier VirtualService, the function policies, the NetworkPolicies) follows the Broker's class.
// Each check is also shown to fail.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BROKER_CLASS_ANNOTATION, OVERLAYS, checkSettings, dataPlaneOf, eventDeliverers, ofKind, renderOverlay, withChange } from './deployment-checks.ts';
import { DELIVERY_ORDER_ANNOTATION, IN_FLIGHT_ANNOTATION, checkKafkaDeliveryOrder, deliveryOrderOf, inFlightBound } from './kafka-delivery-checks.ts';
import { checkDeliveryAdmission, checkNetworkPolicies, checkVirtualServiceAttachment } from './mesh-checks.ts';
import type { Json, Manifest } from './manifest-schemas.ts';

const rendered = new Map(OVERLAYS.map((o) => [o, renderOverlay(o)]));
const prod = rendered.get('prod') ?? [];
const dev = rendered.get('dev') ?? [];
const KAFKA_INGRESS = 'kafka-broker-ingress.knative-eventing.svc.cluster.local';
const CLASS = `/metadata/annotations/${BROKER_CLASS_ANNOTATION.replace('/', '~1')}`;
const ORDER = `/metadata/annotations/${DELIVERY_ORDER_ANNOTATION.replace('/', '~1')}`;

function name(m: Manifest): string {
  return (m.doc.metadata as { name?: string }).name ?? '';
}

function broker(ms: readonly Manifest[]): Manifest {
  const b = ofKind(ms, 'Broker', 'eventing.knative.dev')[0];
  assert.ok(b, 'a Broker is rendered');
  return b;
}

// A copy where one Trigger's annotations are replaced wholesale.
function withAnnotations(ms: readonly Manifest[], trigger: string, annotations: Record<string, Json>): Manifest[] {
  return withChange(ms, 'Trigger', trigger, '/metadata/annotations', annotations);
}

void describe('no Trigger waits behind a slow delivery in its Kafka partition', () => {
  for (const o of OVERLAYS) {
    void it(`${o}: no Trigger is delivered in order over Kafka, and a Kafka Broker states its in-flight bound`, () => assert.deepEqual(checkKafkaDeliveryOrder(rendered.get(o) ?? []), []));
  }

  void it('prod and prod-memorystore run the Kafka Broker, every Trigger unordered, 500 in flight per Trigger consumer', () => {
    for (const o of ['prod', 'prod-memorystore'] as const) {
      const ms = rendered.get(o) ?? [];
      const b = broker(ms);
      assert.equal((b.doc.metadata as { annotations: Record<string, string> }).annotations[BROKER_CLASS_ANNOTATION], 'Kafka', `${o}'s Broker class`);
      assert.equal(inFlightBound(b), 500);
      const triggers = ofKind(ms, 'Trigger', 'eventing.knative.dev');
      assert.equal(triggers.length, 17);
      for (const t of triggers) {
        assert.equal(deliveryOrderOf(ms, t), 'unordered', `${o}: ${name(t)}`);
        // Kafka's dispatcher, with its retry schedule (tools/local-broker/triggers.ts).
        assert.equal(dataPlaneOf(ms, t), 'eventing-kafka-broker');
      }
      // The MT Broker's channel template is gone: nothing is left to edit expecting an effect.
      assert.equal(ms.some((m) => m.doc.kind === 'ConfigMap' && name(m) === 'session-reaper-broker-channel'), false);
      assert.deepEqual(eventDeliverers(ms).sort(), ['cluster.local/ns/knative-eventing/sa/knative-kafka-broker-data-plane', 'cluster.local/ns/knative-serving/sa/activator']);
    }
    // dev keeps the MT Broker over the in-memory channel: no partition to block.
    for (const t of ofKind(dev, 'Trigger', 'eventing.knative.dev')) assert.equal(deliveryOrderOf(dev, t), 'not-kafka');
  });

  void it('notices a Trigger of the Kafka Broker left to the default, set to ordered, or set to a value the reconciler refuses', () => {
    const defaulted = withAnnotations(prod, 'gpu-release-gpu-release-requested', {});
    assert.match(checkKafkaDeliveryOrder(defaulted).join('\n'), /Trigger\/gpu-release-gpu-release-requested does not set kafka\.eventing\.knative\.dev\/delivery\.order: unordered is only the current default/);
    const ordered = withChange(prod, 'Trigger', 'gpu-release-gpu-release-requested', ORDER, 'ordered');
    assert.equal(deliveryOrderOf(ordered, ofKind(ordered, 'Trigger').find((t) => name(t) === 'gpu-release-gpu-release-requested')!), 'ordered');
    assert.match(checkKafkaDeliveryOrder(ordered).join('\n'), /gpu-release-gpu-release-requested is delivered in order per partition: one slow delivery blocks every event behind it/);
    const invalid = withChange(prod, 'Trigger', 'heartbeat-timeout-session-heartbeat', ORDER, 'parallel');
    assert.match(checkKafkaDeliveryOrder(invalid).join('\n'), /heartbeat-timeout-session-heartbeat sets kafka\.eventing\.knative\.dev\/delivery\.order=parallel, which the Kafka Trigger reconciler refuses/);
    // The reconciler lower-cases the value (deliveryOrderingFromString), so this one is fine.
    assert.deepEqual(checkKafkaDeliveryOrder(withChange(prod, 'Trigger', 'heartbeat-timeout-session-heartbeat', ORDER, 'Unordered')), []);
  });

  void it('notices a Kafka Broker that does not state its in-flight bound', () => {
    const annotations = { ...(broker(prod).doc.metadata as { annotations: Record<string, string> }).annotations };
    delete annotations[IN_FLIGHT_ANNOTATION];
    assert.match(checkKafkaDeliveryOrder(withChange(prod, 'Broker', 'default', '/metadata/annotations', annotations)).join('\n'), /Broker\/default does not state its unordered consumers' in-flight bound/);
    const zero = withChange(prod, 'Broker', 'default', `/metadata/annotations/${IN_FLIGHT_ANNOTATION.replace('/', '~1')}`, '0');
    assert.match(checkKafkaDeliveryOrder(zero).join('\n'), /a positive whole number\), has 0$/m);
  });

  void it('reports ordered delivery for an MT Broker over a KafkaChannel, whatever its Triggers say', () => {
    const kafkaChannel = 'apiVersion: messaging.knative.dev/v1beta1\nkind: KafkaChannel\nspec:\n  numPartitions: 12\n  replicationFactor: 3\n';
    const ms = withChange(dev, 'ConfigMap', 'session-reaper-broker-channel', '/data/channel-template-spec', kafkaChannel);
    const problems = checkKafkaDeliveryOrder(ms);
    assert.equal(problems.length, ofKind(dev, 'Trigger', 'eventing.knative.dev').length);
    assert.match(problems.join('\n'), /Trigger\/gpu-release-gpu-release-requested is delivered in order per partition by its Broker's KafkaChannel/);
    // The Kafka Broker's annotation does nothing on a channel subscription.
    const annotated = withChange(ms, 'Trigger', 'gpu-release-gpu-release-requested', '/metadata/annotations', { [DELIVERY_ORDER_ANNOTATION]: 'unordered' });
    assert.match(checkKafkaDeliveryOrder(annotated).join('\n'), /gpu-release-gpu-release-requested is delivered in order per partition by its Broker's KafkaChannel/);
  });

  void it('derives the functions\' K_SINK from the Broker class', () => {
    const mtSink = withChange(prod, 'ConfigMap', 'session-reaper-config', '/data/K_SINK', 'https://broker-ingress.knative-eventing.svc.cluster.local/session-reaper/default');
    assert.match(checkSettings(mtSink).join('\n'), /Service\/gpu-release's K_SINK https:\/\/broker-ingress\.knative-eventing\.svc\.cluster\.local\/session-reaper\/default is not the Kafka Broker's ingress \(https:\/\/kafka-broker-ingress/);
    // dev's MT Broker: its own ingress is right, the Kafka one is not.
    const devKafkaSink = withChange(dev, 'ConfigMap', 'session-reaper-config', '/data/K_SINK', `http://${KAFKA_INGRESS}/session-reaper/default`);
    assert.match(checkSettings(devKafkaSink).join('\n'), /is not the MTChannelBasedBroker Broker's ingress/);
    assert.match(checkSettings(withChange(prod, 'Broker', 'default', CLASS, 'SomethingElse')).join('\n'), /has class SomethingElse, whose ingress address is not known here/);
  });

  void it('derives the Sidecar imports and the core-tier route from the Broker class', () => {
    // The VirtualService left on the MT ingress bounds a host nobody calls.
    const mtRoute = withChange(prod, 'VirtualService', 'broker-ingress', '/spec/hosts', ['broker-ingress.knative-eventing.svc.cluster.local']);
    assert.match(checkVirtualServiceAttachment(mtRoute).join('\n'), /no core-tier VirtualService covers the Kafka Broker's ingress kafka-broker-ingress\.knative-eventing\.svc\.cluster\.local/);
    // A Sidecar still importing the MT ingress's Service: REGISTRY_ONLY refuses the emit.
    const mtImport = withChange(prod, 'Sidecar', 'destroy-dispatch', '/spec/egress/0/hosts/2', 'knative-eventing/broker-ingress.knative-eventing.svc.cluster.local');
    assert.match(checkVirtualServiceAttachment(mtImport).join('\n'), /Sidecar\/destroy-dispatch does not import the Kafka Broker's ingress/);
    // And the other way round: the prod mesh under an MT Broker.
    const mt = withChange(prod, 'Broker', 'default', CLASS, 'MTChannelBasedBroker');
    assert.match(checkVirtualServiceAttachment(mt).join('\n'), /Sidecar\/heartbeat-timeout does not import the MTChannelBasedBroker Broker's ingress broker-ingress\.knative-eventing/);
    assert.match(checkDeliveryAdmission(mt).join('\n'), /heartbeat-timeout refuses a POST from cluster\.local\/ns\/knative-eventing\/sa\/mt-broker-filter/);
  });

  void it('derives the data plane the NetworkPolicies must admit from the Broker class', () => {
    // A policy that admits only the MT Broker's filter pods from knative-eventing refuses the Kafka dispatcher.
    const filterOnly = withChange(prod, 'NetworkPolicy', 'knative-services-from-knative', '/spec/ingress/0/from', [
      { namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'knative-eventing' } }, podSelector: { matchLabels: { 'eventing.knative.dev/brokerRole': 'filter' } } },
      { namespaceSelector: { matchExpressions: [{ key: 'kubernetes.io/metadata.name', operator: 'In', values: ['knative-serving', 'istio-system'] }] } },
    ]);
    assert.match(checkNetworkPolicies(filterOnly).join('\n'), /NetworkPolicies refuse the Broker's data plane to gpu-release \(port 8012\)/);
    assert.deepEqual(checkNetworkPolicies(withChange(filterOnly, 'Broker', 'default', CLASS, 'MTChannelBasedBroker')), []);
  });
});
