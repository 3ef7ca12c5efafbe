// What the rendered manifests do with an event Knative gives up on: where every Trigger's dead letters go, that the
// receiver there keeps them on a persistent volume within a byte cap the volume can hold, that no Job or pod is made
// per event, and that the mesh and the network let the component that sends dead letters in that overlay reach the
// receiver and nobody else. Each check returns the problems it found, one sentence each; an empty list means the
// overlay keeps its dead letters as docs/deploy.md ("Dead letters") says.
import { readDeadLetterSettings } from '../../functions/dead-letters/settings.ts';
import { BROKER_CLASS_ANNOTATION, NAMESPACE, at, effectiveDelivery, environmentOf, ofKind, quantityBytes, obj, arr, str, type Obj } from './deployment-checks.ts';
import { authorize, networkAllows, selectorMatches, type Peer } from './mesh-checks.ts';
import { describe, show, type Json, type Manifest } from './manifest-schemas.ts';
import { parse as parseYaml } from 'yaml';


const nameOf = (m: Manifest): string => str(at(m.doc, 'metadata.name')) ?? '';
const namespaceOf = (m: Manifest): string => str(at(m.doc, 'metadata.namespace')) ?? NAMESPACE;

/** The image of the dead-letter receiver (functions/dead-letters; skaffold.yaml builds it). */
export const RECEIVER_IMAGE = 'dead-letters';

/** The annotation a Trigger carries when it deliberately has no dead-letter sink (heartbeats). */
export const DROP_ANNOTATION = 'sessionreaper.dev/dead-letters';

/**
 * Room a volume needs beyond the store's cap, as a fraction of the volume: ext4 reserves 5 % of its blocks for root
 * (mke2fs(8), `-m`, default 5 %: https://manpages.ubuntu.com/manpages/trusty/en/man8/mkfs.ext4.8.html), and the
 * receiver runs as user 1000, so it never gets them; the inode tables take about 1.6 % (a 256-byte inode per 16 KiB,
 * mke2fs.conf's defaults) and the journal up to 64 MiB on a volume of a few GiB. 15 % covers the three.
 */
export const VOLUME_HEADROOM_FRACTION = 0.15;

/** The identity that POSTs dead letters for a Broker, from its class and channel (istio/base/dead-letters.yaml cites each). */
export const DEAD_LETTER_SENDER = {
  // knative/eventing config/channels/in-memory-channel/deployments/dispatcher.yaml: serviceAccountName imc-dispatcher.
  InMemoryChannel: 'cluster.local/ns/knative-eventing/sa/imc-dispatcher',
  // eventing-kafka-broker data-plane/config/channel/500-dispatcher.yaml: knative-kafka-channel-data-plane.
  KafkaChannel: 'cluster.local/ns/knative-eventing/sa/knative-kafka-channel-data-plane',
  // eventing-kafka-broker data-plane/config/broker/500-dispatcher.yaml: knative-kafka-broker-data-plane.
  Kafka: 'cluster.local/ns/knative-eventing/sa/knative-kafka-broker-data-plane',
} as const;

function find(ms: readonly Manifest[], kind: string, name: string, group?: string): Manifest | undefined {
  return ofKind(ms, kind, group).find((m) => nameOf(m) === name && namespaceOf(m) === NAMESPACE);
}

/** Who sends a Broker's dead letters: its class's data plane, or for the MT Broker its channel's dispatcher. */
export function deadLetterSenderOf(ms: readonly Manifest[], broker: Manifest): string {
  const cls = str(obj(at(broker.doc, 'metadata.annotations'))[BROKER_CLASS_ANNOTATION]) ?? 'MTChannelBasedBroker';
  if (cls === 'Kafka') return DEAD_LETTER_SENDER.Kafka;
  if (cls !== 'MTChannelBasedBroker') return `unknown sender of Broker class ${cls}`;
  // The MT Broker's channel: its config ConfigMap's channel-template-spec (Eventing's default is the InMemoryChannel).
  const config = obj(at(broker.doc, 'spec.config'));
  const cm = config.kind === 'ConfigMap' ? find(ms, 'ConfigMap', str(config.name) ?? '', '') : undefined;
  const template = obj(parseYaml(str(obj(at(cm?.doc, 'data'))['channel-template-spec']) ?? '{}') as Json);
  const kind = str(template.kind) ?? 'InMemoryChannel';
  return kind in DEAD_LETTER_SENDER ? DEAD_LETTER_SENDER[kind as keyof typeof DEAD_LETTER_SENDER] : `unknown sender of channel ${kind}`;
}

function podLabelsOf(workload: Manifest): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const [k, v] of Object.entries(obj(at(workload.doc, 'spec.template.metadata.labels')))) if (typeof v === 'string') labels[k] = v;
  return labels;
}

function containerOf(workload: Manifest): Obj {
  return obj(arr(at(workload.doc, 'spec.template.spec.containers'))[0]);
}

/** The dead-letter receivers: StatefulSets running the receiver's image. */
export function receivers(ms: readonly Manifest[]): Manifest[] {
  return ofKind(ms, 'StatefulSet', 'apps').filter((s) => str(containerOf(s).image) === RECEIVER_IMAGE);
}

// Where a dead-letter sink leads: the receiver whose pods a v1 Service (by ref, or by its cluster-local URL) selects
// on the port the receiver listens on. Knative resolves a v1 Service ref to http://<name>.<ns>.svc.cluster.local/
// (knative/pkg resolver/addressable_resolver.go), i.e. the Service's port 80.
function receiverBehind(ms: readonly Manifest[], sink: Obj): { receiver?: Manifest; why?: string } {
  const ref = obj(sink.ref);
  let serviceName: string | undefined;
  let port = 80;
  if (Object.keys(ref).length > 0) {
    if (ref.apiVersion !== 'v1' || ref.kind !== 'Service') return { why: `it names ${show(ref.kind)}/${show(ref.name)}, not the receiver's Service` };
    if ((str(ref.namespace) ?? NAMESPACE) !== NAMESPACE) return { why: `it names a Service in ${show(ref.namespace)}` };
    serviceName = str(ref.name);
  } else if (str(sink.uri) !== undefined) {
    let url: URL;
    try {
      url = new URL(str(sink.uri)!);
    } catch {
      return { why: `${show(sink.uri)} is not a URL` };
    }
    const m = new RegExp(`^([a-z0-9-]+)\\.${NAMESPACE}\\.svc(?:\\.cluster\\.local)?$`).exec(url.hostname);
    if (!m) return { why: `${url.href} is not a Service of ${NAMESPACE}` };
    serviceName = m[1];
    port = url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port);
  } else {
    return { why: 'it has neither ref nor uri' };
  }
  const svc = find(ms, 'Service', serviceName ?? '', '');
  if (!svc) return { why: `Service ${show(serviceName)} is not deployed` };
  const svcPort = arr(at(svc.doc, 'spec.ports')).map(obj).find((p) => p.port === port);
  if (!svcPort) return { why: `Service ${show(serviceName)} has no port ${port}` };
  const selector = obj(at(svc.doc, 'spec.selector'));
  const receiver = receivers(ms).find((r) => Object.keys(selector).length > 0 && selectorMatches({ matchLabels: selector }, podLabelsOf(r)));
  if (!receiver) return { why: `Service ${show(serviceName)} selects no dead-letter receiver` };
  const target = svcPort.targetPort ?? svcPort.port;
  const containerPorts = arr(containerOf(receiver).ports).map(obj);
  const listening = containerPorts.find((p) => p.name === target || p.containerPort === target);
  if (!listening) return { why: `Service ${show(serviceName)} sends port ${port} to ${show(target)}, where ${describe(receiver)} does not listen` };
  return { receiver };
}

/**
 * Every Trigger's effective dead-letter sink (its own delivery spec, else its Broker's), and every Broker's, is the
 * dead-letter receiver, except a Trigger annotated `sessionreaper.dev/dead-letters: drop` (heartbeats, superseded by
 * the next one), which must then have none.
 */
export function checkDeadLetterRouting(ms: readonly Manifest[]): string[] {
  const problems: string[] = [];
  for (const t of ofKind(ms, 'Trigger', 'eventing.knative.dev')) {
    const sink = effectiveDelivery(ms, t)?.deadLetterSink;
    if (obj(at(t.doc, 'metadata.annotations'))[DROP_ANNOTATION] === 'drop') {
      if (sink !== undefined) problems.push(`${describe(t)} is annotated to drop its dead letters, yet has a dead-letter sink`);
      continue;
    }
    if (sink === undefined) {
      problems.push(`${describe(t)} has no dead-letter sink: its undeliverable events would be lost`);
      continue;
    }
    const { why } = receiverBehind(ms, sink);
    if (why) problems.push(`${describe(t)}'s dead letters do not reach the dead-letter receiver: ${why}`);
  }
  for (const b of ofKind(ms, 'Broker', 'eventing.knative.dev')) {
    const sink = at(b.doc, 'spec.delivery.deadLetterSink');
    const { why } = sink === undefined ? { why: 'it has none' } : receiverBehind(ms, obj(sink));
    if (why) problems.push(`${describe(b)}'s dead-letter sink is not the dead-letter receiver: ${why}`);
  }
  return problems;
}

/**
 * The receiver keeps what it is sent across restarts and within its volume: one replica (one writer), its store
 * directory on a volume from its volumeClaimTemplates (not an emptyDir, which a restart empties), the claim kept when
 * the StatefulSet is deleted or scaled, a byte cap its settings accept, and cap + headroom (VOLUME_HEADROOM_FRACTION of
 * the claim, and one largest event) no more than the claim.
 */
export function checkDeadLetterCapacity(ms: readonly Manifest[]): string[] {
  const all = receivers(ms);
  if (all.length === 0) return ['no dead-letter receiver is deployed'];
  const problems: string[] = [];
  for (const r of all) {
    const name = describe(r);
    if (at(r.doc, 'spec.replicas') !== 1) problems.push(`${name} runs ${show(at(r.doc, 'spec.replicas'))} replicas: its store has one writer on a ReadWriteOnce volume`);
    let settings: ReturnType<typeof readDeadLetterSettings>;
    try {
      settings = readDeadLetterSettings(environmentOf(ms, r));
    } catch (err) {
      problems.push(`${name}'s settings are refused at start: ${(err as Error).message}`);
      continue;
    }
    const container = containerOf(r);
    const mount = arr(container.volumeMounts).map(obj).find((v) => v.mountPath === settings.DEAD_LETTER_DIR);
    if (!mount) {
      problems.push(`${name} keeps dead letters in ${settings.DEAD_LETTER_DIR}, which no volume is mounted at: its container's disk, lost with the pod`);
      continue;
    }
    const claim = arr(at(r.doc, 'spec.volumeClaimTemplates')).map(obj).find((c) => at(c, 'metadata.name') === mount.name);
    if (!claim) {
      problems.push(`${name} mounts ${show(mount.name)} at ${settings.DEAD_LETTER_DIR}, which is no volumeClaimTemplate: a restart would lose the dead letters`);
      continue;
    }
    const retention = obj(at(r.doc, 'spec.persistentVolumeClaimRetentionPolicy'));
    for (const when of ['whenDeleted', 'whenScaled']) {
      if ((str(retention[when]) ?? 'Retain') !== 'Retain') problems.push(`${name} deletes its claim ${when}: the dead letters would go with it`);
    }
    const storage = str(at(claim, 'spec.resources.requests.storage'));
    const claimBytes = storage === undefined ? NaN : quantityBytes(storage);
    const needed = settings.DEAD_LETTER_MAX_BYTES + Math.ceil(VOLUME_HEADROOM_FRACTION * claimBytes) + settings.MAX_EVENT_BYTES;
    if (!(needed <= claimBytes)) {
      problems.push(
        `${name}'s DEAD_LETTER_MAX_BYTES=${settings.DEAD_LETTER_MAX_BYTES} with its headroom needs ${needed} bytes, more than its claim of ${show(storage)}: the disk fills before the cap answers 507`,
      );
    }
  }
  return problems;
}

/** No dead letter makes a Job or a pod: no JobSink, no quota of Jobs standing in for a bound, no Job reading a JobSink's event. */
export function checkNoPerEventJobs(ms: readonly Manifest[]): string[] {
  const problems: string[] = [];
  for (const m of ofKind(ms, 'JobSink', 'sinks.knative.dev')) problems.push(`${describe(m)} creates a Job and a pod per dead letter`);
  for (const q of ofKind(ms, 'ResourceQuota', '')) {
    if (Object.keys(obj(at(q.doc, 'spec.hard'))).some((k) => k.startsWith('count/jobs'))) problems.push(`${describe(q)} bounds Jobs: dead letters are bounded by bytes, not Jobs`);
  }
  for (const t of [...ofKind(ms, 'Trigger', 'eventing.knative.dev'), ...ofKind(ms, 'Broker', 'eventing.knative.dev')]) {
    const sink = effectiveDelivery(ms, t)?.deadLetterSink ?? obj(at(t.doc, 'spec.delivery.deadLetterSink'));
    if (str(at(sink, 'ref.kind')) === 'JobSink') problems.push(`${describe(t)} sends its dead letters to a JobSink`);
  }
  return [...new Set(problems)];
}

/** Principals that must never send dead letters or read them: our workloads, the Broker's other parts, strangers. */
const STRANGERS = [
  'cluster.local/ns/session-reaper/sa/destroy-dispatch',
  'cluster.local/ns/session-reaper/sa/gpu-release',
  'cluster.local/ns/session-reaper/sa/deadline-engine',
  'cluster.local/ns/knative-eventing/sa/mt-broker-ingress',
  'cluster.local/ns/knative-eventing/sa/mt-broker-filter',
  'cluster.local/ns/knative-serving/sa/activator',
  'cluster.local/ns/inference/sa/inference-pipeline',
  'cluster.local/ns/default/sa/default',
];

/**
 * The component that sends each Broker's dead letters (deadLetterSenderOf) may POST them to the receiver, as Istio
 * evaluates the rendered AuthorizationPolicies and the NetworkPolicies admit the connection from knative-eventing;
 * nobody else may POST, and nobody in the mesh may reach the admin API (it is for port-forwards), not even the sender.
 */
export function checkDeadLetterAdmission(ms: readonly Manifest[]): string[] {
  const problems: string[] = [];
  const senders = ofKind(ms, 'Broker', 'eventing.knative.dev').map((b) => deadLetterSenderOf(ms, b));
  for (const r of receivers(ms)) {
    const labels = podLabelsOf(r);
    const port = Number(arr(containerOf(r).ports).map(obj).find((p) => typeof p.containerPort === 'number')?.containerPort ?? 8080);
    const ask = (principal: string, method: string, path: string) => authorize(ms, namespaceOf(r), labels, { principal, method, path, port });
    for (const sender of senders) {
      const d = ask(sender, 'POST', '/');
      if (!d.allowed) problems.push(`${describe(r)} refuses a POST from ${sender}, which sends this overlay's dead letters (${d.by.join(', ') || 'no policy'}): they would be lost`);
      for (const path of ['/admin/dead-letters', '/admin/stats']) {
        if (ask(sender, 'GET', path).allowed) problems.push(`${describe(r)} lets ${sender} GET ${path}: the admin API is for port-forwards only`);
      }
      if (ask(sender, 'POST', '/admin/dead-letters/x/replay').allowed) problems.push(`${describe(r)} lets ${sender} POST to its admin API`);
      const from: Peer = { namespace: /\/ns\/([^/]+)\//.exec(sender)?.[1] ?? '', labels: {} };
      if (!networkAllows(ms, from, { namespace: namespaceOf(r), labels }, port)) problems.push(`NetworkPolicies refuse ${sender}'s namespace to ${describe(r)} (port ${port})`);
    }
    for (const p of STRANGERS.filter((s) => !senders.includes(s))) {
      if (ask(p, 'POST', '/').allowed) problems.push(`${describe(r)} admits a POST from ${p}, which sends no dead letters`);
      if (ask(p, 'GET', '/admin/dead-letters').allowed) problems.push(`${describe(r)} lets ${p} read its dead letters`);
    }
    if (networkAllows(ms, { namespace: 'default', labels: { app: 'curl' } }, { namespace: namespaceOf(r), labels }, port)) {
      problems.push(`NetworkPolicies admit any namespace to ${describe(r)} (port ${port})`);
    }
    // It calls nothing, so its Sidecar lets it call nothing outside the mesh's registry.
    const sidecars = ofKind(ms, 'Sidecar', 'networking.istio.io').filter((s) => selectorMatches({ matchLabels: obj(at(s.doc, 'spec.workloadSelector.labels')) }, labels));
    if (sidecars.length === 0) problems.push(`${describe(r)} has no Sidecar limiting its egress`);
    for (const s of sidecars) if (str(at(s.doc, 'spec.outboundTrafficPolicy.mode')) !== 'REGISTRY_ONLY') problems.push(`${describe(s)} lets ${describe(r)} call outside the mesh`);
  }
  return problems;
}
