// How the rendered Broker and Triggers will dispatch over Kafka: in order per partition (one slow delivery blocks
// every event behind it in its partition) or unordered (each delivery on its own, up to a bound of records in
// flight). Evaluated as eventing-kafka-broker decides it, from the Broker's class, its channel template and each
// Trigger's annotation. Each check returns the problems it found, one sentence each; empty means no Trigger can be
// blocked by one slow delivery.
import { parse as parseYaml } from 'yaml';
import { at, brokerClassOf, NAMESPACE, ofKind, obj, str, nameOf } from './deployment-checks.ts';
import { describe, show, type Json, type Manifest } from './manifest-schemas.ts';

/**
 * The Trigger annotation the Kafka Broker's Trigger reconciler reads (knative-extensions/eventing-kafka-broker
 * control-plane/pkg/reconciler/trigger/v2/triggerv2.go, deliveryOrderAnnotation; values `ordered` and `unordered`,
 * compared lower-cased by deliveryOrderingFromString, anything else an error that keeps the Trigger from being Ready).
 */
export const DELIVERY_ORDER_ANNOTATION = 'kafka.eventing.knative.dev/delivery.order';

/**
 * Where an overlay states how many records the Kafka Broker's unordered consumer keeps in flight per Trigger consumer:
 * the dispatcher's max.poll.records (data-plane/dispatcher/.../impl/consumer/UnorderedConsumerVerticle.java stops
 * polling once that many are in flight), which lives in the cluster's config-kafka-broker-data-plane, not here.
 */
export const IN_FLIGHT_ANNOTATION = 'sessionreaper.dev/max-in-flight-per-trigger-consumer';

function namespaceOf(m: Manifest): string {
  return str(at(m.doc, 'metadata.namespace')) ?? NAMESPACE;
}

function brokerOf(ms: readonly Manifest[], trigger: Manifest): Manifest | undefined {
  const name = str(at(trigger.doc, 'spec.broker')) ?? '';
  return ofKind(ms, 'Broker', 'eventing.knative.dev').find((b) => nameOf(b) === name && namespaceOf(b) === namespaceOf(trigger));
}

// The channel kind an MTChannelBasedBroker creates, from the channel-template-spec of its config ConfigMap.
function channelKindOf(ms: readonly Manifest[], broker: Manifest): string | undefined {
  const config = obj(at(broker.doc, 'spec.config'));
  if (config.kind !== 'ConfigMap') return undefined;
  const ns = str(config.namespace) ?? namespaceOf(broker);
  const cm = ofKind(ms, 'ConfigMap', '').find((c) => nameOf(c) === str(config.name) && namespaceOf(c) === ns);
  const template = str(obj(at(cm?.doc, 'data'))['channel-template-spec']);
  return template === undefined ? undefined : str(obj(parseYaml(template) as Json).kind);
}

/** How a Trigger's events are dispatched: in order per partition, unordered, or by a data plane that keeps no order. */
export type DeliveryOrder = 'ordered' | 'unordered' | 'not-kafka' | 'invalid';

/**
 * The order a Trigger is delivered in, as eventing-kafka-broker decides it:
 * - Kafka Broker class: the Trigger's annotation; absent, the reconciler's default (unordered in the docs and in
 *   control-plane/pkg/reconciler/trigger/v2/triggerv2.go, but ordered in the earlier ReconcilerV2 of
 *   control-plane/pkg/reconciler/trigger/triggerv2.go): reported as `ordered`, the unsafe reading;
 * - MTChannelBasedBroker over a KafkaChannel: always ordered. The Broker subscribes each Trigger to its channel, and
 *   the KafkaChannel reconciler gives every subscription DefaultDeliveryOrder = Ordered (control-plane/pkg/reconciler/
 *   channel/v2/channelv2.go, channel/channel.go), with nothing on the Trigger that can change it;
 * - anything else (the in-memory channel): no Kafka partition to block.
 */
export function deliveryOrderOf(ms: readonly Manifest[], trigger: Manifest): DeliveryOrder {
  const broker = brokerOf(ms, trigger);
  if (!broker) return 'not-kafka';
  const cls = brokerClassOf(broker);
  if (cls === 'Kafka') {
    const v = str(obj(at(trigger.doc, 'metadata.annotations'))[DELIVERY_ORDER_ANNOTATION])?.toLowerCase();
    if (v === undefined || v === 'ordered') return 'ordered';
    return v === 'unordered' ? 'unordered' : 'invalid';
  }
  if (cls === 'MTChannelBasedBroker' && channelKindOf(ms, broker) === 'KafkaChannel') return 'ordered';
  return 'not-kafka';
}

/**
 * No Trigger is delivered in order over Kafka, where one slow delivery (a gpu-release waiting on a runtime) would
 * hold back every event behind it in its partition: every Trigger of a Kafka-class Broker is annotated `unordered`
 * explicitly, and no Trigger rides an MTChannelBasedBroker over a KafkaChannel. Every Kafka-class Broker states the
 * in-flight bound its unordered consumers were sized for (IN_FLIGHT_ANNOTATION, a positive whole number).
 */
export function checkKafkaDeliveryOrder(ms: readonly Manifest[]): string[] {
  const problems: string[] = [];
  for (const t of ofKind(ms, 'Trigger', 'eventing.knative.dev')) {
    const broker = brokerOf(ms, t);
    const order = deliveryOrderOf(ms, t);
    const annotation = obj(at(t.doc, 'metadata.annotations'))[DELIVERY_ORDER_ANNOTATION];
    if (!broker || order === 'not-kafka' || order === 'unordered') continue;
    if (order === 'invalid') {
      problems.push(`${describe(t)} sets ${DELIVERY_ORDER_ANNOTATION}=${show(annotation)}, which the Kafka Trigger reconciler refuses (ordered or unordered): the Trigger never becomes Ready`);
    } else if (brokerClassOf(broker) === 'Kafka') {
      problems.push(
        annotation === undefined
          ? `${describe(t)} does not set ${DELIVERY_ORDER_ANNOTATION}: unordered is only the current default (an earlier Trigger reconciler delivers in order); set unordered explicitly`
          : `${describe(t)} is delivered in order per partition: one slow delivery blocks every event behind it in its partition`,
      );
    } else {
      problems.push(`${describe(t)} is delivered in order per partition by its Broker's KafkaChannel (every channel subscription is ordered): one slow delivery blocks its partition; use the Kafka Broker class`);
    }
  }
  for (const b of ofKind(ms, 'Broker', 'eventing.knative.dev').filter((x) => brokerClassOf(x) === 'Kafka')) {
    if (inFlightBound(b) === undefined) {
      const stated = obj(at(b.doc, 'metadata.annotations'))[IN_FLIGHT_ANNOTATION];
      problems.push(`${describe(b)} does not state its unordered consumers' in-flight bound (${IN_FLIGHT_ANNOTATION}: the dispatcher's max.poll.records, a positive whole number), has ${show(stated)}`);
    }
  }
  return problems;
}

/** The most deliveries one Trigger consumer of a Kafka-class Broker keeps in flight, as the overlay states it. */
export function inFlightBound(broker: Manifest): number | undefined {
  const bound = str(obj(at(broker.doc, 'metadata.annotations'))[IN_FLIGHT_ANNOTATION]);
  return bound !== undefined && /^[1-9][0-9]*$/.test(bound) ? Number(bound) : undefined;
}
