// Cross-checks over a rendered overlay that no schema can express: every reference resolves, every function has
// its Service, Triggers, AuthorizationPolicy and Sidecar, the deadline engine and the idle checker run as
// long-running Broker sources, every setting a workload is given is one its process reads (by the functions' own
// settings schemas) and parses, the mesh's timeouts agree with the functions' own configuration, head and tail
// sampling agree, and every image skaffold builds is deployed. Each check returns the problems it found, one
// sentence each; an empty list means the overlay is consistent.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { TObject } from '@sinclair/typebox';
import { ActivityScoreSettingsSchema, readActivityScoreSettings } from '../../functions/activity-score/settings.ts';
import { ConfigSchema, loadConfig, loadMetricsSettings, MetricsSettingsSchema, readSettings, type Config } from '../../functions/core/config.ts';
import { EventType, OWN_SOURCE_PREFIX, WORKLOADS, catalogue, sourceOf, typesSentBy, type Sender, type Workload } from '../../functions/core/contract/events.ts';
import { SENDER_ANNOTATION, admittingPolicy, senderPoliciesOf } from '../../tools/local-broker/event-policies.ts';
import { redeliveryWindowMs, type DataPlane } from '../../tools/local-broker/triggers.ts';
import { otlpTracesConfigured, samplerFromEnv } from '../../functions/core/telemetry.ts';
import { DestroyDispatchSettingsSchema } from '../../functions/destroy-dispatch/definition.ts';
import { defaultLeaseMs } from '../../functions/destroy-dispatch/storm-guard.ts';
import { GpuReleaseSettingsSchema, readGpuReleaseSettings, type GpuReleaseSettings } from '../../functions/gpu-release/handle.ts';
import { EngineSettingsSchema, readEngineSettings } from '../../functions/heartbeat-timeout/engine-settings.ts';
import { readRuntimeCallSettings, RuntimeCallSettingsSchema } from '../../functions/core/runtime-call-settings.ts';
import { readSimSettings, SimSettingsSchema } from '../../runtimes/sim-gpu-runtime/server.ts';
import { describe, parseManifests, show, type Json, type Manifest } from './manifest-schemas.ts';

/** The repository root (this file is tests/deploy/deployment-checks.ts). */
export const REPO_ROOT = path.resolve(import.meta.dirname, '..', '..');

/** The namespace every overlay deploys into. */
export const NAMESPACE = 'session-reaper';

/** The kustomize overlays a user deploys. */
export const OVERLAYS = ['dev', 'prod', 'prod-memorystore'] as const;

/** The policy of knative/components/direct-heartbeats: producers that may post heartbeats past the Broker. */
export const DIRECT_PRODUCERS_POLICY = 'heartbeat-timeout-direct-producers';

/** The four functions; one name is their framework target, Knative Service, image, account and OTEL_SERVICE_NAME. */
export const FUNCTIONS = ['heartbeat-timeout', 'activity-score', 'destroy-dispatch', 'gpu-release'] as const;
export type FunctionName = (typeof FUNCTIONS)[number];

/** The event types a function consumes, as the contract's catalogue says: one Trigger each, no more, no fewer. */
export function consumedEventTypes(fn: FunctionName): string[] {
  return catalogue.filter((e) => (e.consumers as readonly string[]).includes(fn)).map((e) => e.type);
}

/** Calls one core-tier delivery may make, each bounded by CORE_TIMEOUT_MS: Redis round trips and 3 emit attempts. */
export const CORE_CALLS_PER_DELIVERY = 6;

/** The images built from functions/Dockerfile: the four functions and the simulated GPU runtime (runtimes/sim-gpu-runtime). */
export const FUNCTION_IMAGES: readonly string[] = [...FUNCTIONS, 'sim-gpu-runtime'];

/** The long-running second entry points of two functions: Deployments with a SinkBinding, not Knative Services. */
export const LONG_RUNNING = {
  'deadline-engine': { image: 'heartbeat-timeout', entry: 'functions/heartbeat-timeout/engine.ts', serviceName: 'deadline-engine' },
  // The checker's code names its core 'activity-score' (functions/activity-score/idle-checker-main.ts).
  'idle-checker': { image: 'activity-score', entry: 'functions/activity-score/idle-checker-main.ts', serviceName: 'activity-score' },
} as const satisfies Record<string, { image: FunctionName; entry: string; serviceName: string }>;
export type LongRunningName = keyof typeof LONG_RUNNING;

// The standard OpenTelemetry variables these processes read: the ones functions/core/telemetry.ts reads itself,
// the OTLP/HTTP trace and metric exporters', and the resource detector's (the metrics reader settings are
// MetricsSettingsSchema's, functions/core/config.ts). No logs are exported, and sdk-trace 3 no longer reads the
// OTEL_BSP_* variables, so those would be read by nothing.
const OTLP_SETTINGS = ['ENDPOINT', 'HEADERS', 'TIMEOUT', 'COMPRESSION', 'CERTIFICATE', 'CLIENT_CERTIFICATE', 'CLIENT_KEY'];
const OTEL_SETTINGS = [
  'OTEL_SDK_DISABLED',
  'OTEL_SERVICE_NAME',
  'OTEL_RESOURCE_ATTRIBUTES',
  'OTEL_TRACES_SAMPLER',
  'OTEL_TRACES_SAMPLER_ARG',
  'OTEL_TRACES_EXPORTER',
  ...OTLP_SETTINGS.flatMap((s) => [`OTEL_EXPORTER_OTLP_${s}`, `OTEL_EXPORTER_OTLP_TRACES_${s}`, `OTEL_EXPORTER_OTLP_METRICS_${s}`]),
];
// What Node itself reads, and the port a function's server (functions/framework/serve.ts) listens on.
const NODE_SETTINGS = ['NODE_EXTRA_CA_CERTS', 'NODE_OPTIONS', 'NODE_ENV'];
const FRAMEWORK_SETTINGS = ['PORT'];

/** What one entry point reads from its environment: the settings schemas (names and rules) and the standard names. */
export interface EntryPointSettings {
  schemas: readonly TObject[];
  standard: readonly string[];
  /** Parses the environment the way the process does at start; throws (a ConfigError) on a bad value. */
  read: (env: Record<string, string>) => unknown;
}

function coreEntry(own: readonly TObject[], read: (env: Record<string, string>) => unknown, standard: readonly string[]): EntryPointSettings {
  return {
    schemas: [ConfigSchema, MetricsSettingsSchema, ...own],
    standard: [...OTEL_SETTINGS, ...NODE_SETTINGS, ...standard],
    read: (env) => {
      loadConfig(env);
      loadMetricsSettings(env);
      samplerFromEnv(env);
      otlpTracesConfigured(env);
      return read(env);
    },
  };
}

/** Each process the images run, by its entry module, with the settings it reads (from the functions' own schemas). */
export const ENTRY_POINTS: Record<string, EntryPointSettings> = {
  'functions/heartbeat-timeout/index.ts': coreEntry([], () => undefined, FRAMEWORK_SETTINGS),
  // The engine's reconciler reads its own settings and calls runtimes with gpu-release's.
  'functions/heartbeat-timeout/engine.ts': coreEntry([EngineSettingsSchema, RuntimeCallSettingsSchema], (env) => [readEngineSettings(env), readRuntimeCallSettings(env)], ['PORT']),
  'functions/activity-score/index.ts': coreEntry([ActivityScoreSettingsSchema], readActivityScoreSettings, FRAMEWORK_SETTINGS),
  'functions/activity-score/idle-checker-main.ts': coreEntry([ActivityScoreSettingsSchema], readActivityScoreSettings, ['PORT']),
  'functions/destroy-dispatch/index.ts': coreEntry([DestroyDispatchSettingsSchema], (env) => readSettings(DestroyDispatchSettingsSchema, env), FRAMEWORK_SETTINGS),
  'functions/gpu-release/index.ts': coreEntry([GpuReleaseSettingsSchema], readGpuReleaseSettings, FRAMEWORK_SETTINGS),
  'runtimes/sim-gpu-runtime/index.ts': { schemas: [SimSettingsSchema], standard: NODE_SETTINGS, read: readSimSettings },
};

/** An object of a manifest. */
export type Obj = Record<string, Json>;

/** The value as an object, or an empty one: manifests are read leniently, the schema checks say what is malformed. */
export function obj(v: Json | undefined): Obj {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? v : {};
}

/** The value as an array, or an empty one. */
export function arr(v: Json | undefined): Json[] {
  return Array.isArray(v) ? v : [];
}

/** The value if it is a string. */
export function str(v: Json | undefined): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

/** Reads a value at a dotted path (`spec.template.spec`); numeric segments index arrays. */
export function at(v: Json | undefined, dotted: string): Json | undefined {
  let cur: Json | undefined = v;
  for (const key of dotted.split('.')) {
    if (cur === null || cur === undefined || typeof cur !== 'object') return undefined;
    cur = Array.isArray(cur) ? cur[Number(key)] : cur[key];
  }
  return cur;
}

/** Renders a kustomization directory with Debian's kubectl (its embedded kustomize). */
export function renderKustomization(dir: string): Manifest[] {
  const text = execFileSync('kubectl', ['kustomize', dir], { encoding: 'utf8', cwd: REPO_ROOT, maxBuffer: 64 * 1024 * 1024 });
  return parseManifests(text, path.relative(REPO_ROOT, path.resolve(REPO_ROOT, dir)));
}

/** Renders one of the overlays in knative/overlays. */
export function renderOverlay(name: string): Manifest[] {
  return renderKustomization(path.join('knative', 'overlays', name));
}

/** A manifest's metadata.name ('' when it has none). */
export function nameOf(m: Manifest): string {
  return str(at(m.doc, 'metadata.name')) ?? '';
}

function namespaceOf(m: Manifest): string {
  return str(at(m.doc, 'metadata.namespace')) ?? '';
}

function groupOf(m: Manifest): string {
  const apiVersion = str(m.doc.apiVersion) ?? '';
  return apiVersion.includes('/') ? (apiVersion.split('/')[0] ?? '') : '';
}

/** The manifests of one kind (and API group; '' is the core group). */
export function ofKind(ms: readonly Manifest[], kind: string, group?: string): Manifest[] {
  return ms.filter((m) => m.doc.kind === kind && (group === undefined || groupOf(m) === group));
}

function find(ms: readonly Manifest[], kind: string, group: string, name: string, namespace = NAMESPACE): Manifest | undefined {
  return ofKind(ms, kind, group).find((m) => nameOf(m) === name && (namespaceOf(m) || NAMESPACE) === namespace);
}

/** Parses a Go duration as Istio writes them (`1s`, `500ms`, `1m30s`) into milliseconds. */
export function parseGoDuration(text: string): number {
  const units: Record<string, number> = { h: 3_600_000, m: 60_000, s: 1000, ms: 1, us: 0.001, µs: 0.001, ns: 0.000001 };
  const parts = [...text.matchAll(/(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)/g)];
  if (parts.length === 0 || parts.map((p) => p[0]).join('') !== text) throw new Error(`"${text}" is not a duration`);
  return parts.reduce((sum, p) => sum + Number(p[1]) * (units[p[2] ?? ''] ?? NaN), 0);
}

/** Parses an ISO 8601 duration as Knative's delivery spec takes them (`PT10S`, `PT0.2S`, `PT1M`) into milliseconds. */
export function parseIsoDuration(text: string): number {
  const m = /^P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$/.exec(text);
  if (!m || text === 'P' || text.endsWith('T')) throw new Error(`"${text}" is not an ISO 8601 duration`);
  const [, d, h, min, s] = m;
  return Math.round(((Number(d ?? 0) * 24 + Number(h ?? 0)) * 60 + Number(min ?? 0)) * 60_000 + Number(s ?? 0) * 1000);
}

/** A Knative delivery spec, as far as timing goes. */
export interface Delivery {
  retry: number;
  backoffPolicy: 'exponential' | 'linear';
  backoffDelayMs: number;
  timeoutMs?: number;
  deadLetterSink?: Obj;
  /** Set: Knative honours Retry-After up to this long (the alpha delivery-retryafter feature). */
  retryAfterMax?: string;
}

function readDelivery(v: Json | undefined): Delivery | undefined {
  const d = obj(v);
  if (Object.keys(d).length === 0) return undefined;
  return {
    retry: typeof d.retry === 'number' ? d.retry : 0,
    backoffPolicy: d.backoffPolicy === 'linear' ? 'linear' : 'exponential',
    backoffDelayMs: typeof d.backoffDelay === 'string' ? parseIsoDuration(d.backoffDelay) : 0,
    ...(typeof d.timeout === 'string' ? { timeoutMs: parseIsoDuration(d.timeout) } : {}),
    ...(d.deadLetterSink !== undefined ? { deadLetterSink: obj(d.deadLetterSink) } : {}),
    ...(typeof d.retryAfterMax === 'string' ? { retryAfterMax: d.retryAfterMax } : {}),
  };
}

/** The class annotation that picks a Broker's implementation (knative/eventing, pkg/apis/eventing). */
export const BROKER_CLASS_ANNOTATION = 'eventing.knative.dev/broker.class';

/**
 * Which dispatcher delivers a Trigger's events, from its rendered Broker: the Kafka Broker class and an
 * MTChannelBasedBroker over a KafkaChannel are dispatched by eventing-kafka-broker's data plane, anything else (the
 * in-memory channel) by knative/eventing's. They wait differently between retries (tools/local-broker/triggers.ts).
 */
export function dataPlaneOf(ms: readonly Manifest[], trigger: Manifest): DataPlane {
  const broker = find(ms, 'Broker', 'eventing.knative.dev', str(at(trigger.doc, 'spec.broker')) ?? '', namespaceOf(trigger) || NAMESPACE);
  if (!broker) return 'eventing';
  if (obj(at(broker.doc, 'metadata.annotations'))[BROKER_CLASS_ANNOTATION] === 'Kafka') return 'eventing-kafka-broker';
  const config = obj(at(broker.doc, 'spec.config'));
  const cm = config.kind === 'ConfigMap' ? find(ms, 'ConfigMap', '', str(config.name) ?? '', str(config.namespace) ?? (namespaceOf(broker) || NAMESPACE)) : undefined;
  const template = obj(parseYaml(str(obj(at(cm?.doc, 'data'))['channel-template-spec']) ?? '{}') as Json);
  return template.kind === 'KafkaChannel' ? 'eventing-kafka-broker' : 'eventing';
}

/** How long a Trigger may keep redelivering one event, with its effective delivery and its Broker's data plane. */
export function triggerWindowMs(ms: readonly Manifest[], trigger: Manifest): number {
  const d = effectiveDelivery(ms, trigger);
  return d ? redeliveryWindowMs(d, dataPlaneOf(ms, trigger)) : 0;
}

/** The delivery that applies to a Trigger: its own, else its Broker's. */
export function effectiveDelivery(ms: readonly Manifest[], trigger: Manifest): Delivery | undefined {
  const own = readDelivery(at(trigger.doc, 'spec.delivery'));
  if (own) return own;
  const broker = find(ms, 'Broker', 'eventing.knative.dev', str(at(trigger.doc, 'spec.broker')) ?? '', namespaceOf(trigger) || NAMESPACE);
  return broker ? readDelivery(at(broker.doc, 'spec.delivery')) : undefined;
}

// Does a destination (ref or uri) name something that exists? In-namespace refs and cluster-local URIs must be
// rendered here; refs to other namespaces and other hosts are the user's.
function checkDestination(ms: readonly Manifest[], owner: Manifest, field: string, dest: Obj): string[] {
  const ref = obj(dest.ref);
  const uri = str(dest.uri);
  if (Object.keys(ref).length > 0) {
    const apiVersion = str(ref.apiVersion) ?? '';
    const group = apiVersion.includes('/') ? (apiVersion.split('/')[0] ?? '') : '';
    const namespace = str(ref.namespace) ?? (namespaceOf(owner) || NAMESPACE);
    if (namespace !== NAMESPACE) return [];
    return find(ms, str(ref.kind) ?? '', group, str(ref.name) ?? '', namespace) ? [] : [`${describe(owner)} ${field} names ${show(ref.kind)}/${show(ref.name)}, which is not deployed`];
  }
  if (uri !== undefined) {
    let url: URL;
    try {
      url = new URL(uri);
    } catch {
      return [`${describe(owner)} ${field} "${uri}" is not a URL`];
    }
    const local = new RegExp(`^([a-z0-9-]+)\\.${NAMESPACE}\\.svc\\.cluster\\.local$`).exec(url.hostname);
    if (local && !find(ms, 'Service', '', local[1] ?? '') && !find(ms, 'Service', 'serving.knative.dev', local[1] ?? '')) {
      return [`${describe(owner)} ${field} "${uri}" names Service ${local[1]}, which is not deployed`];
    }
    return [];
  }
  return [`${describe(owner)} ${field} has neither ref nor uri`];
}

/** Every Trigger's Broker, subscriber and dead-letter sink, every Broker's sink and every SinkBinding's ends exist. */
export function checkReferences(ms: readonly Manifest[]): string[] {
  const problems: string[] = [];
  for (const t of ofKind(ms, 'Trigger', 'eventing.knative.dev')) {
    const broker = str(at(t.doc, 'spec.broker')) ?? '';
    if (!find(ms, 'Broker', 'eventing.knative.dev', broker, namespaceOf(t) || NAMESPACE)) problems.push(`${describe(t)} uses Broker ${broker}, which is not deployed`);
    problems.push(...checkDestination(ms, t, 'subscriber', obj(at(t.doc, 'spec.subscriber'))));
    const dls = at(t.doc, 'spec.delivery.deadLetterSink');
    if (dls !== undefined) problems.push(...checkDestination(ms, t, 'deadLetterSink', obj(dls)));
  }
  for (const b of ofKind(ms, 'Broker', 'eventing.knative.dev')) {
    const dls = at(b.doc, 'spec.delivery.deadLetterSink');
    if (dls !== undefined) problems.push(...checkDestination(ms, b, 'deadLetterSink', obj(dls)));
    const config = obj(at(b.doc, 'spec.config'));
    if (config.kind === 'ConfigMap' && !find(ms, 'ConfigMap', '', str(config.name) ?? '')) problems.push(`${describe(b)} config names ConfigMap ${show(config.name)}, which is not deployed`);
  }
  for (const sb of ofKind(ms, 'SinkBinding', 'sources.knative.dev')) {
    problems.push(...checkDestination(ms, sb, 'sink', obj(at(sb.doc, 'spec.sink'))));
    const subject = obj(at(sb.doc, 'spec.subject'));
    const group = (str(subject.apiVersion) ?? '').split('/').length === 2 ? (str(subject.apiVersion) ?? '').split('/')[0] ?? '' : '';
    if (!find(ms, str(subject.kind) ?? '', group, str(subject.name) ?? '')) problems.push(`${describe(sb)} subject ${show(subject.kind)}/${show(subject.name)} is not deployed`);
  }
  return problems;
}

function templateOf(m: Manifest): Obj {
  return obj(at(m.doc, 'spec.template'));
}

function firstContainer(m: Manifest): Obj {
  return obj(arr(at(templateOf(m), 'spec.containers'))[0]);
}

function selectsLabels(policy: Manifest, key: string, value: string): boolean {
  return obj(at(policy.doc, 'spec.selector.matchLabels'))[key] === value;
}

/** The identity that delivers Trigger events to subscribers, by Broker class (the class annotation's value). */
export const BROKER_DATA_PLANE: Readonly<Record<string, string>> = {
  // knative/eventing: the MT Broker's filter (Deployment mt-broker-filter, ServiceAccount mt-broker-filter).
  MTChannelBasedBroker: 'cluster.local/ns/knative-eventing/sa/mt-broker-filter',
  // knative-extensions/eventing-kafka-broker data-plane/config/broker/500-dispatcher.yaml: serviceAccountName
  // knative-kafka-broker-data-plane (the dispatcher POSTs to subscribers).
  Kafka: 'cluster.local/ns/knative-eventing/sa/knative-kafka-broker-data-plane',
};

/** A Broker's class: its class annotation, or without one Eventing's default (config-br-defaults), MTChannelBasedBroker as installed. */
export function brokerClassOf(broker: Manifest): string {
  return str(obj(at(broker.doc, 'metadata.annotations'))[BROKER_CLASS_ANNOTATION]) ?? 'MTChannelBasedBroker';
}

/** The Service each Broker class's data plane receives events on; a Broker is addressed at /<namespace>/<name> there. */
export const BROKER_INGRESS_HOST: Readonly<Record<string, string>> = {
  // knative/eventing: the MT Broker's ingress (Deployment mt-broker-ingress behind the Service broker-ingress).
  MTChannelBasedBroker: 'broker-ingress.knative-eventing.svc.cluster.local',
  // knative-extensions/eventing-kafka-broker control-plane/pkg/reconciler/broker/broker.go: the address is
  // network.GetServiceHostname(Env.IngressName, DataPlaneNamespace) with receiver.Address (path /<namespace>/<name>);
  // Env.IngressName is kafka-broker-ingress, the Service of data-plane/config/broker/500-receiver.yaml.
  Kafka: 'kafka-broker-ingress.knative-eventing.svc.cluster.local',
};

/** The URL a Broker receives events on, by its class; undefined for a class whose ingress is not known here. */
export function brokerIngressUrl(broker: Manifest, scheme: 'http' | 'https'): string | undefined {
  const host = BROKER_INGRESS_HOST[brokerClassOf(broker)];
  return host === undefined ? undefined : `${scheme}://${host}/${namespaceOf(broker) || NAMESPACE}/${nameOf(broker)}`;
}

/** Knative Serving's activator, which forwards requests to a revision that has no ready pod (its principal). */
export const ACTIVATOR = 'cluster.local/ns/knative-serving/sa/activator';

/** Every principal that may deliver events to a function: each rendered Broker's data plane (by class), and the activator. */
export function eventDeliverers(ms: readonly Manifest[]): string[] {
  const out = new Set<string>();
  for (const b of ofKind(ms, 'Broker', 'eventing.knative.dev')) {
    const cls = brokerClassOf(b);
    out.add(BROKER_DATA_PLANE[cls] ?? `unknown data plane of Broker class ${cls}`);
  }
  out.add(ACTIVATOR);
  return [...out];
}

/** Each function has its Knative Service (wired for Istio), its Triggers, an ALLOW policy and an egress Sidecar. */
export function checkFunctionsComplete(ms: readonly Manifest[]): string[] {
  const problems: string[] = [];
  const contractTypes = new Set<string>(Object.values(EventType));
  for (const t of ofKind(ms, 'Trigger', 'eventing.knative.dev')) {
    const type = str(at(t.doc, 'spec.filter.attributes.type'));
    if (type === undefined || !contractTypes.has(type)) problems.push(`${describe(t)} filters on type ${show(type)}, which the event contract does not define`);
  }
  for (const fn of FUNCTIONS) {
    const svc = find(ms, 'Service', 'serving.knative.dev', fn);
    if (!svc) {
      problems.push(`function ${fn} has no Knative Service`);
      continue;
    }
    const tmpl = templateOf(svc);
    const labels = obj(at(tmpl, 'metadata.labels'));
    const annotations = obj(at(tmpl, 'metadata.annotations'));
    const container = firstContainer(svc);
    if (labels['sidecar.istio.io/inject'] !== 'true') problems.push(`${fn}'s pods do not ask for an Istio sidecar`);
    const proxyConfig = str(annotations['proxy.istio.io/config']);
    if (proxyConfig === undefined || obj(parseYaml(proxyConfig) as Json).holdApplicationUntilProxyStarts !== true) problems.push(`${fn} does not hold the application until the proxy starts`);
    if (str(container.image) !== fn) problems.push(`${fn}'s container image is ${show(container.image)}, not ${fn}`);
    const otelName = arr(container.env).map(obj).find((e) => e.name === 'OTEL_SERVICE_NAME');
    if (otelName?.value !== fn) problems.push(`${fn}'s OTEL_SERVICE_NAME is not ${fn}`);
    if (str(at(tmpl, 'spec.serviceAccountName')) !== fn || !find(ms, 'ServiceAccount', '', fn)) problems.push(`${fn} does not run as its own ServiceAccount ${fn}`);
    if (str(at(container, 'readinessProbe.httpGet.path')) !== '/healthz') problems.push(`${fn} has no readiness probe on /healthz`);
    if (at(container, 'resources.requests') === undefined || at(container, 'resources.limits.memory') === undefined) problems.push(`${fn} lacks resource requests or a memory limit`);
    if (annotations['autoscaling.knative.dev/min-scale'] === undefined) problems.push(`${fn} does not say its min-scale`);

    const triggers = ofKind(ms, 'Trigger', 'eventing.knative.dev').filter((t) => str(at(t.doc, 'spec.subscriber.ref.name')) === fn && str(at(t.doc, 'spec.subscriber.ref.kind')) === 'Service');
    const routed = triggers.map((t) => str(at(t.doc, 'spec.filter.attributes.type')) ?? '').sort();
    const expected = consumedEventTypes(fn).sort();
    if (JSON.stringify(routed) !== JSON.stringify(expected)) problems.push(`${fn} receives [${routed.join(', ')}] but consumes [${expected.join(', ')}]`);

    const allow = ofKind(ms, 'AuthorizationPolicy', 'security.istio.io').filter((p) => selectsLabels(p, 'serving.knative.dev/service', fn) && (str(at(p.doc, 'spec.action')) ?? 'ALLOW') === 'ALLOW');
    // heartbeat-timeout alone may also admit direct producers, through the direct-heartbeats component's policy,
    // and only for POSTs to its one path.
    const direct = allow.filter((p) => fn === 'heartbeat-timeout' && nameOf(p) === DIRECT_PRODUCERS_POLICY);
    for (const p of direct) {
      const ops = arr(at(p.doc, 'spec.rules')).flatMap((r) => arr(obj(r).to).map((t) => obj(at(obj(t), 'operation'))));
      if (ops.length === 0 || ops.some((o) => JSON.stringify(o.methods) !== '["POST"]' || JSON.stringify(o.paths) !== '["/"]')) {
        problems.push(`${DIRECT_PRODUCERS_POLICY} admits more than POST /`);
      }
    }
    // Whoever delivers its events is named (the Broker class's data plane, and the activator, which proxies while the
    // revision has no ready pod), and nobody else; tests/deploy/mesh-checks.ts evaluates what Istio then decides.
    const principals = allow.filter((p) => !direct.includes(p)).flatMap((p) => arr(at(p.doc, 'spec.rules')).flatMap((r) => arr(obj(r).from).flatMap((f) => arr(at(obj(f), 'source.principals')))));
    const deliverers = eventDeliverers(ms);
    for (const d of deliverers) if (!principals.includes(d)) problems.push(`${fn} has no AuthorizationPolicy admitting ${d}, which delivers its events`);
    const foreign = principals.filter((p) => typeof p !== 'string' || !deliverers.includes(p));
    if (foreign.length > 0) problems.push(`${fn} also admits ${foreign.map(show).join(', ')}`);
    if (!ofKind(ms, 'Sidecar', 'networking.istio.io').some((s) => obj(at(s.doc, 'spec.workloadSelector.labels'))['serving.knative.dev/service'] === fn)) problems.push(`${fn} has no Sidecar limiting its egress`);
  }
  const denyAll = ofKind(ms, 'AuthorizationPolicy', 'security.istio.io').some((p) => nameOf(p) === 'deny-by-default' && Object.keys(obj(p.doc.spec)).length === 0);
  if (!denyAll) problems.push('the namespace has no deny-by-default AuthorizationPolicy');
  const strict = ofKind(ms, 'PeerAuthentication', 'security.istio.io').some((p) => at(p.doc, 'spec.selector') === undefined && at(p.doc, 'spec.mtls.mode') === 'STRICT');
  if (!strict) problems.push('the namespace has no STRICT PeerAuthentication');
  return problems;
}

/** The environment one workload's container gets from the shared ConfigMap and its own literal env entries. */
export function environmentOf(ms: readonly Manifest[], workload: Manifest): Record<string, string> {
  const container = firstContainer(workload);
  const env: Record<string, string> = {};
  for (const from of arr(container.envFrom).map(obj)) {
    const cm = find(ms, 'ConfigMap', '', str(at(from, 'configMapRef.name')) ?? '', namespaceOf(workload) || NAMESPACE);
    for (const [k, v] of Object.entries(obj(cm?.doc.data))) if (typeof v === 'string') env[k] = v;
  }
  for (const e of arr(container.env).map(obj)) if (typeof e.name === 'string' && typeof e.value === 'string') env[e.name] = e.value;
  return env;
}

/** The workloads that run function code: Knative Services and Deployments whose container runs a function image. */
export function functionWorkloads(ms: readonly Manifest[]): Manifest[] {
  return [...ofKind(ms, 'Service', 'serving.knative.dev'), ...ofKind(ms, 'Deployment', 'apps')].filter((w) => FUNCTION_IMAGES.includes(str(firstContainer(w).image) ?? ''));
}

/** The entry module a workload's container runs: its image's default (the function's index.ts, which serves it;
 *  functions/Dockerfile) or `node <module>`; a string that names neither is returned as the command line. */
export function entryPointOf(workload: Manifest): string {
  const container = firstContainer(workload);
  const command = arr(container.command).map((c) => str(c) ?? '');
  const args = arr(container.args).map((a) => str(a) ?? '');
  if (command.length === 0 && args.length === 0) return `functions/${str(container.image) ?? ''}/index.ts`;
  if (command.length === 1 && command[0] === 'node' && args.length === 1) return args[0] ?? '';
  return [...command, ...args].join(' ');
}

/** The image and entry module of every workload (anything with a pod template) in a rendering. */
export function entryPoints(ms: readonly Manifest[]): { image: string; entry: string }[] {
  return ms.filter((m) => arr(at(templateOf(m), 'spec.containers')).length > 0).map((m) => ({ image: str(firstContainer(m).image) ?? '', entry: entryPointOf(m) }));
}

function redisClients(ms: readonly Manifest[]): Manifest[] {
  return functionWorkloads(ms).filter((w) => ENTRY_POINTS[entryPointOf(w)]?.schemas.includes(ConfigSchema));
}

function settingNames(ms: readonly Manifest[], w: Manifest): { names: string[]; problems: string[] } {
  const container = firstContainer(w);
  const names: string[] = [];
  const problems: string[] = [];
  for (const from of arr(container.envFrom).map(obj)) {
    const cmName = str(at(from, 'configMapRef.name'));
    if (cmName === undefined) continue;
    const cm = find(ms, 'ConfigMap', '', cmName, namespaceOf(w) || NAMESPACE);
    if (!cm) problems.push(`${describe(w)} takes its environment from ConfigMap ${cmName}, which is not deployed`);
    names.push(...Object.keys(obj(cm?.doc.data)));
  }
  names.push(...arr(container.env).map((e) => str(obj(e).name) ?? ''));
  return { names: [...new Set(names)], problems };
}

/**
 * Every variable a function workload is given is one its process reads: a property of the settings schemas its
 * entry point reads (core ConfigSchema, the function's own), a standard OpenTelemetry, Node or framework variable;
 * and every value parses as the process parses it at start.
 */
export function checkSettings(ms: readonly Manifest[]): string[] {
  const problems: string[] = [];
  const broker = ofKind(ms, 'Broker', 'eventing.knative.dev')[0];
  for (const w of functionWorkloads(ms)) {
    const entry = entryPointOf(w);
    const settings = ENTRY_POINTS[entry];
    if (!settings) {
      problems.push(`${describe(w)} runs ${entry}, which is none of the functions' entry points`);
      continue;
    }
    const known = new Set([...settings.schemas.flatMap((schema) => Object.keys(schema.properties)), ...settings.standard]);
    const { names, problems: missing } = settingNames(ms, w);
    problems.push(...missing);
    for (const n of names) if (!known.has(n)) problems.push(`${describe(w)} sets ${n}, which no code ${entry} runs reads`);
    const env = environmentOf(ms, w);
    try {
      settings.read(env);
    } catch (err) {
      problems.push(`${describe(w)}: ${(err as Error).message}`);
    }
    const sink = env.K_SINK;
    // The Broker ingress's address, by the Broker's class (BROKER_INGRESS_HOST): https under Knative transport
    // encryption (prod), http where the mesh's mutual TLS alone covers the hop (dev).
    if (w.doc.kind === 'Service' && broker) {
      const https = brokerIngressUrl(broker, 'https');
      if (https === undefined) problems.push(`${describe(broker)} has class ${brokerClassOf(broker)}, whose ingress address is not known here`);
      else if (sink !== https && sink !== brokerIngressUrl(broker, 'http')) problems.push(`${describe(w)}'s K_SINK ${show(sink)} is not the ${brokerClassOf(broker)} Broker's ingress (${https})`);
    }
  }
  // The idle checker re-judges what activity-score scored: one scoring policy for both.
  const scorers = functionWorkloads(ms).filter((w) => ENTRY_POINTS[entryPointOf(w)]?.schemas.includes(ActivityScoreSettingsSchema));
  const policies = scorers.map((w) => {
    try {
      return JSON.stringify(readActivityScoreSettings(environmentOf(ms, w)));
    } catch {
      return undefined;
    }
  });
  if (new Set(policies).size > 1) problems.push(`${scorers.map(describe).join(' and ')} read different activity-score settings`);
  return problems;
}

function configOf(ms: readonly Manifest[], fn: FunctionName): { cfg: Config; env: Record<string, string>; svc: Manifest } | undefined {
  const svc = find(ms, 'Service', 'serving.knative.dev', fn);
  if (!svc) return undefined;
  const env = environmentOf(ms, svc);
  return { cfg: loadConfig(env), env, svc };
}

function podLabelsOf(m: Manifest): Obj {
  return obj(at(templateOf(m), 'metadata.labels'));
}

function selectsPod(selector: Obj, podLabels: Obj): boolean {
  const entries = Object.entries(selector);
  return entries.length > 0 && entries.every(([k, v]) => podLabels[k] === v);
}

/**
 * The deadline engine and the idle checker: each a Deployment of at least 2 replicas running its entry point in its
 * function's image, bound to the Broker by a SinkBinding, wired for Istio, probed on /healthz, with resources, its
 * own ServiceAccount, its egress limited by a Sidecar, no ALLOW policy (it serves nothing to the mesh) and a
 * PodDisruptionBudget.
 */
export function checkLongRunning(ms: readonly Manifest[]): string[] {
  const problems: string[] = [];
  for (const [name, spec] of Object.entries(LONG_RUNNING)) {
    const d = find(ms, 'Deployment', 'apps', name);
    if (!d) {
      problems.push(`${name} has no Deployment`);
      continue;
    }
    const replicas = at(d.doc, 'spec.replicas');
    if (typeof replicas !== 'number' || replicas < 2) problems.push(`${name} runs ${show(replicas)} replicas, fewer than 2`);
    const tmpl = templateOf(d);
    const labels = podLabelsOf(d);
    const container = firstContainer(d);
    if (str(container.image) !== spec.image) problems.push(`${name}'s container image is ${show(container.image)}, not ${spec.image}`);
    const entry = entryPointOf(d);
    if (entry !== spec.entry) problems.push(`${name} runs ${show(entry)}, not node ${spec.entry}`);
    if (!existsSync(path.join(REPO_ROOT, spec.entry))) problems.push(`${name}'s entry point ${spec.entry} does not exist`);
    if (labels['sidecar.istio.io/inject'] !== 'true') problems.push(`${name}'s pods do not ask for an Istio sidecar`);
    const proxyConfig = str(obj(at(tmpl, 'metadata.annotations'))['proxy.istio.io/config']);
    if (proxyConfig === undefined || obj(parseYaml(proxyConfig) as Json).holdApplicationUntilProxyStarts !== true) problems.push(`${name} does not hold the application until the proxy starts`);
    const env = arr(container.env).map(obj);
    if (env.find((e) => e.name === 'OTEL_SERVICE_NAME')?.value !== spec.serviceName) problems.push(`${name}'s OTEL_SERVICE_NAME is not ${spec.serviceName}, the name its code gives its core`);
    if (str(at(tmpl, 'spec.serviceAccountName')) !== name || !find(ms, 'ServiceAccount', '', name)) problems.push(`${name} does not run as its own ServiceAccount ${name}`);
    if (at(container, 'resources.requests') === undefined || at(container, 'resources.limits.memory') === undefined) problems.push(`${name} lacks resource requests or a memory limit`);
    // The probe reaches the port the process listens on: PORT (8080 when unset).
    const probePort = at(container, 'readinessProbe.httpGet.port');
    const ports = arr(container.ports).map(obj);
    const probed = typeof probePort === 'number' ? probePort : ports.find((p) => p.name === probePort)?.containerPort;
    const listening = Number(str(env.find((e) => e.name === 'PORT')?.value) ?? 8080);
    if (str(at(container, 'readinessProbe.httpGet.path')) !== '/healthz') problems.push(`${name} has no readiness probe on /healthz`);
    else if (probed !== listening) problems.push(`${name}'s readiness probe calls port ${show(probed ?? probePort)}, but it listens on ${listening}`);

    const bindings = ofKind(ms, 'SinkBinding', 'sources.knative.dev').filter((b) => str(at(b.doc, 'spec.subject.kind')) === 'Deployment' && str(at(b.doc, 'spec.subject.name')) === name);
    if (!bindings.some((b) => str(at(b.doc, 'spec.sink.ref.kind')) === 'Broker')) problems.push(`${name} has no SinkBinding to the Broker, so it has no K_SINK`);
    if (!ofKind(ms, 'Sidecar', 'networking.istio.io').some((s) => selectsPod(obj(at(s.doc, 'spec.workloadSelector.labels')), labels))) problems.push(`${name} has no Sidecar limiting its egress`);
    const admitting = ofKind(ms, 'AuthorizationPolicy', 'security.istio.io').filter((p) => (str(at(p.doc, 'spec.action')) ?? 'ALLOW') === 'ALLOW' && selectsPod(obj(at(p.doc, 'spec.selector.matchLabels')), labels));
    if (admitting.length > 0) problems.push(`${name} serves nothing to the mesh, yet ${admitting.map(describe).join(', ')} admits callers`);
    if (!ofKind(ms, 'PodDisruptionBudget', 'policy').some((p) => selectsPod(obj(at(p.doc, 'spec.selector.matchLabels')), labels))) problems.push(`${name} has no PodDisruptionBudget`);
  }
  return problems;
}

// Dead letters (where every Trigger's go, and what the receiver does with them) are checked in dead-letter-checks.ts.

/** Every workload labelled a Redis client runs as an identity the in-cluster Redis admits (when that Redis is deployed). */
export function checkRedisAccess(ms: readonly Manifest[]): string[] {
  const policy = find(ms, 'AuthorizationPolicy', 'security.istio.io', 'redis');
  if (!policy) return [];
  const principals = new Set(arr(at(policy.doc, 'spec.rules')).flatMap((r) => arr(obj(r).from).flatMap((f) => arr(at(obj(f), 'source.principals')))));
  const problems: string[] = [];
  for (const w of [...ofKind(ms, 'Service', 'serving.knative.dev'), ...ofKind(ms, 'Deployment', 'apps')]) {
    if (obj(at(w.doc, 'metadata.labels'))['sessionreaper.dev/redis-client'] !== 'true') continue;
    const principal = `cluster.local/ns/${namespaceOf(w) || NAMESPACE}/sa/${str(at(templateOf(w), 'spec.serviceAccountName')) ?? 'default'}`;
    if (!principals.has(principal)) problems.push(`${describe(w)} is a Redis client, but Redis does not admit ${principal}`);
  }
  return problems;
}

/** The longest one delivery to gpu-release may take: each attempt's timeout, each wait between attempts, the core calls. */
export function releaseBudgetMs(cfg: Pick<Config, 'RUNTIME_TIMEOUT_MS' | 'CORE_TIMEOUT_MS'>, release: Pick<GpuReleaseSettings, 'RELEASE_RETRIES' | 'RELEASE_MAX_BACKOFF_MS'>): number {
  return (release.RELEASE_RETRIES + 1) * cfg.RUNTIME_TIMEOUT_MS + release.RELEASE_RETRIES * release.RELEASE_MAX_BACKOFF_MS + CORE_CALLS_PER_DELIVERY * cfg.CORE_TIMEOUT_MS;
}

function triggersOf(ms: readonly Manifest[], fn: FunctionName): Manifest[] {
  return ofKind(ms, 'Trigger', 'eventing.knative.dev').filter((t) => str(at(t.doc, 'spec.subscriber.ref.name')) === fn && str(at(t.doc, 'spec.subscriber.ref.kind')) === 'Service');
}

/**
 * The timeout tiers: mesh routes carry the functions' own per-attempt timeouts, deliveries cover whole budgets, and
 * what waits on the Broker outlasts its redelivery windows as Knative really schedules them: the release slot lease
 * and the stall watchdog the gpu-release Trigger's, the reconciler's grace session.opened's, tombstones every one.
 */
export function checkTimeouts(ms: readonly Manifest[]): string[] {
  const problems: string[] = [];
  const gpu = configOf(ms, 'gpu-release');
  if (!gpu) return ['gpu-release is not deployed'];
  const core = gpu.cfg.CORE_TIMEOUT_MS;
  const tiers: Record<string, number> = { core, runtime: gpu.cfg.RUNTIME_TIMEOUT_MS };
  for (const fn of FUNCTIONS) {
    const c = configOf(ms, fn);
    if (c && (c.cfg.CORE_TIMEOUT_MS !== core || c.cfg.RUNTIME_TIMEOUT_MS !== gpu.cfg.RUNTIME_TIMEOUT_MS)) problems.push(`${fn}'s timeouts differ from gpu-release's`);
  }

  // Mesh side: per attempt, same number as the app, and no mesh retries on top of the app's.
  const tierOf = (m: Manifest) => str(obj(at(m.doc, 'metadata.labels'))['sessionreaper.dev/timeout-tier']) ?? '';
  const tiered = (kind: string) => ofKind(ms, kind, 'networking.istio.io').filter((m) => tierOf(m) !== '');
  const seen = new Set<string>();
  for (const vs of tiered('VirtualService')) {
    const limit = tiers[tierOf(vs)];
    seen.add(`VirtualService:${tierOf(vs)}`);
    if (limit === undefined) {
      problems.push(`${describe(vs)} names an unknown timeout tier "${tierOf(vs)}"`);
      continue;
    }
    for (const [i, route] of arr(at(vs.doc, 'spec.http')).map(obj).entries()) {
      const timeout = str(route.timeout);
      if (timeout === undefined || parseGoDuration(timeout) !== limit) problems.push(`${describe(vs)} route ${i} times out after ${show(timeout)}, but the ${tierOf(vs)} tier's timeout is ${limit} ms`);
      if (at(route, 'retries.attempts') !== 0) problems.push(`${describe(vs)} route ${i} lets the mesh retry, on top of the app's own retries`);
    }
  }
  for (const dr of tiered('DestinationRule')) {
    const limit = tiers[tierOf(dr)];
    seen.add(`DestinationRule:${tierOf(dr)}`);
    const connect = str(at(dr.doc, 'spec.trafficPolicy.connectionPool.tcp.connectTimeout'));
    if (limit === undefined || connect === undefined || parseGoDuration(connect) > limit) problems.push(`${describe(dr)} connect timeout ${show(connect)} exceeds its tier's ${show(limit)} ms`);
  }
  for (const needed of ['VirtualService:core', 'VirtualService:runtime', 'DestinationRule:core', 'DestinationRule:runtime']) if (!seen.has(needed)) problems.push(`no ${needed.replace(':', ' for the ')} tier`);

  // Delivery side: one delivery must fit the whole budget of the function it calls. gpu-release's budget comes
  // from its own settings (functions/gpu-release/handle.ts) as the process reads them: every attempt's timeout,
  // every wait between attempts (each at most RELEASE_MAX_BACKOFF_MS, Retry-After included) and its core calls.
  let release: GpuReleaseSettings;
  try {
    release = readGpuReleaseSettings(gpu.env);
  } catch (err) {
    return [...problems, `gpu-release: ${(err as Error).message}`];
  }
  const releaseBudget = releaseBudgetMs(gpu.cfg, release);
  // destroy-dispatch holds a node's release slot for as long as gpu-release may still be trying: it must count the
  // same retries, and its lease must outlast that budget, or a slot frees itself while its release is in flight.
  const dispatch = configOf(ms, 'destroy-dispatch');
  if (dispatch) {
    try {
      const dd = readSettings(DestroyDispatchSettingsSchema, dispatch.env);
      if (dd.RELEASE_RETRIES !== release.RELEASE_RETRIES) problems.push(`destroy-dispatch counts RELEASE_RETRIES=${dd.RELEASE_RETRIES}, gpu-release makes ${release.RELEASE_RETRIES}`);
      const lease = dd.RELEASE_SLOT_LEASE_MS || defaultLeaseMs(dispatch.cfg.RUNTIME_TIMEOUT_MS, dd.RELEASE_RETRIES);
      if (lease < releaseBudget) problems.push(`destroy-dispatch's release slot lease (${lease} ms) ends inside gpu-release's budget of ${releaseBudget} ms`);
      // The slot is held for the whole release, Broker redeliveries included: a lease that ends first frees the slot
      // while the Broker still retries the release, and lets a further release onto the node.
      for (const t of triggersOf(ms, 'gpu-release')) {
        const window = triggerWindowMs(ms, t);
        if (lease < window) problems.push(`destroy-dispatch's release slot lease (${lease} ms) ends inside ${describe(t)}'s redelivery window of ${window} ms`);
      }
    } catch (err) {
      problems.push(`destroy-dispatch: ${(err as Error).message}`);
    }
  }
  for (const t of ofKind(ms, 'Trigger', 'eventing.knative.dev')) {
    const fn = FUNCTIONS.find((f) => f === str(at(t.doc, 'spec.subscriber.ref.name')));
    if (!fn) continue;
    const d = effectiveDelivery(ms, t);
    if (d?.timeoutMs === undefined) {
      problems.push(`${describe(t)} has no delivery timeout`);
      continue;
    }
    const budget = fn === 'gpu-release' ? releaseBudget : CORE_CALLS_PER_DELIVERY * gpu.cfg.CORE_TIMEOUT_MS;
    if (d.timeoutMs < budget) problems.push(`${describe(t)} gives up after ${d.timeoutMs} ms, inside ${fn}'s budget of ${budget} ms`);
    const svc = find(ms, 'Service', 'serving.knative.dev', fn);
    const revisionTimeout = at(svc?.doc, 'spec.template.spec.timeoutSeconds');
    if (typeof revisionTimeout !== 'number' || revisionTimeout * 1000 < d.timeoutMs) problems.push(`${fn}'s revision timeout (${show(revisionTimeout)} s) would cut ${describe(t)}'s ${d.timeoutMs} ms delivery`);
    // The watchdog must not re-request a release the Broker is still redelivering (knative's real schedule).
    const window = triggerWindowMs(ms, t);
    if (fn === 'gpu-release' && gpu.cfg.DESTROY_STALL_MS <= window) problems.push(`DESTROY_STALL_MS (${gpu.cfg.DESTROY_STALL_MS}) would resume destroys whose release ${describe(t)} is still redelivering (window ${window} ms)`);
  }
  for (const t of ofKind(ms, 'Trigger', 'eventing.knative.dev')) {
    const d = effectiveDelivery(ms, t);
    // The windows assume no Retry-After stretches a wait (it is honoured only when retryAfterMax is set).
    if (d?.retryAfterMax !== undefined) problems.push(`${describe(t)} honours Retry-After (retryAfterMax ${d.retryAfterMax}): its redelivery window is no longer the backoff schedule's`);
    const window = triggerWindowMs(ms, t);
    if (gpu.cfg.TOMBSTONE_TTL_MS <= window) problems.push(`TOMBSTONE_TTL_MS (${gpu.cfg.TOMBSTONE_TTL_MS}) does not outlast ${describe(t)}'s redelivery window (${window} ms)`);
  }
  // The reconciler frees memory no session owns after RECONCILE_GRACE_MS: a session.opened still being redelivered
  // must not find its memory released.
  const engine = find(ms, 'Deployment', 'apps', 'deadline-engine');
  if (engine) {
    try {
      const grace = readEngineSettings(environmentOf(ms, engine)).RECONCILE_GRACE_MS;
      for (const t of ofKind(ms, 'Trigger', 'eventing.knative.dev').filter((x) => str(at(x.doc, 'spec.filter.attributes.type')) === EventType.SessionOpened)) {
        const window = triggerWindowMs(ms, t);
        if (grace <= window) problems.push(`RECONCILE_GRACE_MS (${grace}) ends inside ${describe(t)}'s redelivery window (${window} ms): a late session.opened would find its memory released`);
      }
    } catch (err) {
      problems.push(`deadline-engine: ${(err as Error).message}`);
    }
  }
  for (const w of redisClients(ms)) {
    const probeTimeout = at(firstContainer(w), 'readinessProbe.timeoutSeconds');
    if (typeof probeTimeout !== 'number' || probeTimeout * 1000 <= core) problems.push(`${nameOf(w)}'s readiness probe gives up before /healthz's Redis ping (CORE_TIMEOUT_MS) can`);
  }
  return problems;
}

/** The sampling tier's configuration, as the collector merges its files (sampler.yaml, then sampling.yaml). */
export function samplerConfig(ms: readonly Manifest[]): Obj {
  return collectorConfigOf(ms, 'otel-sampler-config', ['sampler.yaml', 'sampling.yaml']);
}

function collectorConfigOf(ms: readonly Manifest[], configMap: string, files: readonly string[]): Obj {
  const cm = ofKind(ms, 'ConfigMap', '').find((m) => nameOf(m) === configMap || nameOf(m).startsWith(`${configMap}-`));
  const merged: Obj = {};
  const merge = (target: Obj, source: Obj) => {
    for (const [k, v] of Object.entries(source)) {
      const cur = target[k];
      if (v !== null && typeof v === 'object' && !Array.isArray(v) && cur !== null && typeof cur === 'object' && !Array.isArray(cur)) merge(cur, v);
      else target[k] = structuredClone(v);
    }
  };
  for (const f of files) merge(merged, obj(parseYaml(str(obj(at(cm?.doc, 'data'))[f]) ?? '{}') as Json));
  return merged;
}

/** Bytes in a Kubernetes memory quantity (`512Mi`, `1Gi`, `1536Mi`, `2G`, a plain number). */
export function quantityBytes(q: string): number {
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(q);
  if (!m) throw new Error(`"${q}" is not a memory quantity`);
  const unit: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, k: 1e3, M: 1e6, G: 1e9, T: 1e12 };
  return Number(m[1]) * (m[2] === undefined ? 1 : (unit[m[2]] ?? NaN));
}

/** The annotation by which the sampling tier promises to keep every error trace (the prod overlay sets it). */
export const KEEPS_EVERY_ERROR_TRACE = 'sessionreaper.dev/keeps-every-error-trace';

// A function sampler that records a span whatever its parent decided (so no error hides under an unsampled parent).
function recordsEveryTrace(env: Record<string, string>): boolean {
  return env.OTEL_TRACES_SAMPLER === 'always_on' || (env.OTEL_TRACES_SAMPLER === 'traceidratio' && Number(env.OTEL_TRACES_SAMPLER_ARG) === 1);
}

/**
 * What the tracing pipeline keeps is what the manifests promise. Always: the mesh's head sampling and the functions'
 * agree (parent-based functions by the same ratio; functions that record every trace only with 100 % in the mesh);
 * nothing is sampled twice; the first tier routes every span by trace id to the sampling tier's headless Service
 * through a bounded queue, behind a memory limiter; and the sampling tier is sized for the traces/s it declares
 * (replicas x num_traces / decision_wait, and num_traces x the assumed bytes per trace within the memory limiter's
 * soft limit), deciding only after gpu-release's longest delivery. Where the sampling tier claims to keep every
 * error trace (KEEPS_EVERY_ERROR_TRACE), every trace must reach it: 100 % in the mesh, functions that record
 * every trace even under a parent marked unsampled (parent-based sampling would never record those errors), and a
 * policy keeping status ERROR.
 */
export function checkTracing(ms: readonly Manifest[]): string[] {
  const problems: string[] = [];
  const telemetry = ofKind(ms, 'Telemetry', 'telemetry.istio.io')[0];
  const head = at(telemetry?.doc, 'spec.tracing.0.randomSamplingPercentage');
  if (typeof head !== 'number') return ['no Telemetry resource sets a head sampling percentage'];
  const sampler = find(ms, 'Deployment', 'apps', 'otel-sampler');
  if (!sampler) return ['the tail-sampling tier otel-sampler is not deployed'];
  const annotations = obj(at(sampler.doc, 'metadata.annotations'));
  const claimsErrors = annotations[KEEPS_EVERY_ERROR_TRACE] === 'true';
  const parentBased: string[] = [];
  for (const w of redisClients(ms)) {
    const env = environmentOf(ms, w);
    if (env.OTEL_TRACES_SAMPLER === 'parentbased_traceidratio') {
      parentBased.push(describe(w));
      if (Math.abs(Number(env.OTEL_TRACES_SAMPLER_ARG) * 100 - head) > 1e-9) problems.push(`${describe(w)} samples ${show(env.OTEL_TRACES_SAMPLER_ARG)}, the mesh ${head} %`);
    } else if (recordsEveryTrace(env)) {
      if (head !== 100) problems.push(`${describe(w)} records every trace, but the mesh samples ${head} %: traces would arrive without their sidecar spans`);
    } else {
      problems.push(`${describe(w)} samples with ${show(env.OTEL_TRACES_SAMPLER)}, neither parent-based by the mesh's ratio nor every trace`);
    }
  }
  const config = samplerConfig(ms);
  const tailSampling = obj(at(config, 'processors.tail_sampling'));
  const policies = arr(tailSampling.policies).map(obj);
  const keepsErrors = policies.some((p) => p.type === 'status_code' && arr(at(p, 'status_code.status_codes')).includes('ERROR'));
  const tail = at(policies.find((p) => p.type === 'probabilistic'), 'probabilistic.sampling_percentage');
  if (typeof tail !== 'number') problems.push('the sampling tier has no probabilistic policy for the remaining traces');
  else if (head < 100 && tail !== 100) problems.push(`traces are sampled twice: ${head} % at the head, then ${tail} % at the tail`);
  if (claimsErrors) {
    if (!keepsErrors) problems.push('the sampling tier claims to keep every error trace but has no status ERROR policy');
    if (head !== 100) problems.push(`the sampling tier claims to keep every error trace, but the mesh samples only ${head} % at the head`);
    for (const w of parentBased) problems.push(`${w} samples parent-based: an error under a parent marked unsampled is never recorded, yet the sampling tier claims to keep every error trace`);
  }

  // Capacity of the sampling tier: each replica holds at most num_traces for decision_wait.
  const replicas = at(sampler.doc, 'spec.replicas');
  const numTraces = tailSampling.num_traces;
  const waitText = str(tailSampling.decision_wait);
  const design = Number(str(annotations['sessionreaper.dev/design-traces-per-second']));
  const bytesPerTrace = Number(str(annotations['sessionreaper.dev/assumed-bytes-per-trace']));
  if (typeof replicas !== 'number' || typeof numTraces !== 'number' || waitText === undefined || !(design > 0) || !(bytesPerTrace > 0)) {
    problems.push('the sampling tier does not state replicas, num_traces, decision_wait, its design traces/s and its assumed bytes per trace');
  } else {
    const waitS = parseGoDuration(waitText) / 1000;
    const capacity = (replicas * numTraces) / waitS;
    if (capacity < design) problems.push(`the sampling tier holds ${Math.floor(capacity)} new traces/s (${replicas} x ${numTraces} / ${waitS} s), less than its design rate of ${design}: traces would be evicted undecided, errors included`);
    const limit = str(at(obj(arr(at(sampler.doc, 'spec.template.spec.containers'))[0]), 'resources.limits.memory'));
    const limiter = obj(at(config, 'processors.memory_limiter'));
    const softPercent = Number(limiter.limit_percentage ?? 0) - Number(limiter.spike_limit_percentage ?? 0);
    if (limit === undefined || !(softPercent > 0)) problems.push('the sampling tier has no memory limit or memory limiter');
    else {
      const soft = (quantityBytes(limit) * softPercent) / 100;
      if (numTraces * bytesPerTrace > soft) problems.push(`the sampling tier's ${numTraces} traces of ${bytesPerTrace} bytes exceed its memory limiter's soft limit of ${Math.floor(soft / 2 ** 20)} MiB`);
    }
    const gpu = configOf(ms, 'gpu-release');
    if (gpu) {
      try {
        const budget = releaseBudgetMs(gpu.cfg, readGpuReleaseSettings(gpu.env));
        if (waitS * 1000 <= budget) problems.push(`the sampling tier decides after ${waitS} s, before gpu-release's longest delivery (${budget} ms) has ended its trace`);
      } catch {
        // checkTimeouts reports gpu-release's unreadable settings.
      }
    }
  }
  for (const [name, processors] of [['otel-sampler', at(config, 'service.pipelines.traces.processors')], ['otel-collector', at(collectorConfigOf(ms, 'otel-collector-config', ['collector.yaml']), 'service.pipelines.traces.processors')]] as const) {
    if (arr(processors)[0] !== 'memory_limiter') problems.push(`${name}'s traces pipeline does not start with the memory limiter`);
  }

  // The first tier: by trace id, to every sampler replica (a headless Service selecting the sampler's pods), queued boundedly.
  const first = collectorConfigOf(ms, 'otel-collector-config', ['collector.yaml']);
  const lb = obj(at(first, 'exporters.loadbalancing'));
  if (!arr(at(first, 'service.pipelines.traces.exporters')).includes('loadbalancing')) problems.push('the first collector tier does not export through the loadbalancing exporter');
  if ((str(lb.routing_key) ?? 'traceID') !== 'traceID') problems.push(`the first collector tier routes by ${show(lb.routing_key)}, not by trace id: a trace's spans would meet in different samplers`);
  const hostname = str(at(lb, 'resolver.dns.hostname')) ?? '';
  const svcName = new RegExp(`^([a-z0-9-]+)\\.${NAMESPACE}\\.svc\\.cluster\\.local$`).exec(hostname)?.[1];
  const svc = svcName === undefined ? undefined : find(ms, 'Service', '', svcName);
  const samplerLabels = obj(at(sampler.doc, 'spec.template.metadata.labels'));
  if (!svc || at(svc.doc, 'spec.clusterIP') !== 'None' || !selectsPod(obj(at(svc.doc, 'spec.selector')), samplerLabels)) {
    problems.push(`the first collector tier resolves ${show(hostname)}, which is not a headless Service of the sampling tier's pods`);
  }
  const queue = obj(at(lb, 'protocol.otlp.sending_queue'));
  if (queue.enabled !== true || typeof queue.queue_size !== 'number') problems.push('the first collector tier has no bounded sending queue to the samplers');
  return problems;
}

/** The effective head x tail sampling of an overlay, in percent, for traces with no decision from a caller. */
export function effectiveSamplingPercent(ms: readonly Manifest[]): number {
  const head = at(ofKind(ms, 'Telemetry', 'telemetry.istio.io')[0]?.doc, 'spec.tracing.0.randomSamplingPercentage');
  const policies = arr(at(samplerConfig(ms), 'processors.tail_sampling.policies')).map(obj);
  const tail = at(policies.find((p) => p.type === 'probabilistic'), 'probabilistic.sampling_percentage');
  return typeof head === 'number' && typeof tail === 'number' ? (head * tail) / 100 : NaN;
}

/** Terraform's node labels and taints for the GPU pool (scheduling.tf.json). */
export interface GpuPool {
  labels: Record<string, string>;
  taints: { key: string; value: string; effect: string }[];
}

/**
 * gpu-release stays off the GPU node pool: it calls the runtimes through their Service, so a GPU node buys it no
 * latency, and a pod there would keep GPU nodes up and turn its own scale-ups into GPU scale-ups. So it neither
 * selects a label only the GPU pool's nodes carry (nodeSelector or required node affinity) nor tolerates a taint
 * they carry (Kubernetes: a toleration matches a taint by key, effect when given, and value unless the operator is
 * Exists; an empty key with Exists matches every taint).
 */
export function checkGpuScheduling(ms: readonly Manifest[], pool: GpuPool): string[] {
  const svc = find(ms, 'Service', 'serving.knative.dev', 'gpu-release');
  if (!svc) return ['gpu-release is not deployed'];
  const problems: string[] = [];
  const spec = obj(at(svc.doc, 'spec.template.spec'));
  for (const [k, v] of Object.entries(obj(spec.nodeSelector))) if (pool.labels[k] === v) problems.push(`gpu-release selects ${k}=${show(v)}, which only the GPU pool's nodes carry`);
  const terms = arr(at(spec, 'affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms')).map(obj);
  for (const e of terms.flatMap((t) => arr(t.matchExpressions).map(obj))) {
    const key = str(e.key) ?? '';
    if (key in pool.labels && (e.operator === 'Exists' || (e.operator === 'In' && arr(e.values).includes(pool.labels[key] ?? '')))) problems.push(`gpu-release requires nodes with ${key}, which only the GPU pool's nodes carry`);
  }
  const tolerations = arr(spec.tolerations).map(obj);
  const effects: Record<string, string> = { NO_SCHEDULE: 'NoSchedule', PREFER_NO_SCHEDULE: 'PreferNoSchedule', NO_EXECUTE: 'NoExecute' };
  for (const taint of pool.taints) {
    const effect = effects[taint.effect] ?? taint.effect;
    const tolerated = tolerations.some(
      (t) => (t.key === undefined || t.key === '' ? t.operator === 'Exists' : t.key === taint.key) && (t.effect === undefined || t.effect === '' || t.effect === effect) && (t.operator === 'Exists' || ((t.operator ?? 'Equal') === 'Equal' && t.value === taint.value)),
    );
    if (tolerated) problems.push(`gpu-release tolerates the GPU pool's taint ${taint.key}=${taint.value}:${effect}`);
  }
  return problems;
}

/** Every image a workload runs, with where it is. */
export function imagesIn(ms: readonly Manifest[]): Map<string, string[]> {
  const images = new Map<string, string[]>();
  const walk = (v: Json | undefined, where: string, inContainers: boolean) => {
    if (Array.isArray(v)) v.forEach((x) => walk(x, where, inContainers));
    else if (v !== null && typeof v === 'object') {
      for (const [k, child] of Object.entries(v)) {
        if (inContainers && k === 'image' && typeof child === 'string') images.set(child, [...(images.get(child) ?? []), where]);
        walk(child, where, k === 'containers' || k === 'initContainers' || (inContainers && Array.isArray(child)));
      }
    }
  };
  for (const m of ms) walk(m.doc, describe(m), false);
  return images;
}

/** A skaffold config with one profile applied as skaffold applies it: fields replaced, then JSON patches. */
export function applySkaffoldProfile(config: Obj, profileName: string | undefined): Obj {
  const base = structuredClone(config);
  delete base.profiles;
  if (profileName === undefined) return base;
  const profile = arr(config.profiles).map(obj).find((p) => p.name === profileName);
  if (!profile) throw new Error(`skaffold has no profile ${profileName}`);
  const overlay = (target: Obj, source: Obj) => {
    for (const [k, v] of Object.entries(source)) {
      const current = target[k];
      if (v !== null && typeof v === 'object' && !Array.isArray(v) && current !== null && typeof current === 'object' && !Array.isArray(current)) overlay(current, v);
      else target[k] = structuredClone(v);
    }
  };
  for (const [k, v] of Object.entries(profile)) {
    if (k === 'name' || k === 'activation' || k === 'patches' || k === 'requiresAllActivations') continue;
    overlay(base, { [k]: v });
  }
  for (const p of arr(profile.patches).map(obj)) {
    const segments = (str(p.path) ?? '').split('/').slice(1).map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
    const last = segments.pop() ?? '';
    let parent: Json | undefined = base;
    for (const s of segments) parent = Array.isArray(parent) ? parent[Number(s)] : obj(parent)[s];
    if (Array.isArray(parent)) {
      const index = last === '-' ? parent.length : Number(last);
      if (p.op === 'add') parent.splice(index, 0, structuredClone(p.value ?? null));
      else if (p.op === 'replace') parent[index] = structuredClone(p.value ?? null);
      else if (p.op === 'remove') parent.splice(index, 1);
    } else if (parent !== null && typeof parent === 'object') {
      if (p.op === 'remove') delete parent[last];
      else parent[last] = structuredClone(p.value ?? null);
    } else {
      throw new Error(`skaffold profile ${profileName} patches ${show(p.path)}, which does not exist`);
    }
  }
  return base;
}

/** What one skaffold profile builds and deploys: images built, kustomize paths, verify images. */
export function skaffoldPlan(effective: Obj): { built: string[]; kustomizePaths: string[]; verifyImages: string[]; artifacts: Obj[] } {
  const artifacts = arr(at(effective, 'build.artifacts')).map(obj);
  return {
    artifacts,
    built: artifacts.map((a) => str(a.image) ?? ''),
    kustomizePaths: arr(at(effective, 'manifests.kustomize.paths')).map((p) => str(p) ?? ''),
    verifyImages: arr(effective.verify).map((v) => str(at(obj(v), 'container.image')) ?? ''),
  };
}

/** Every image the profile builds is deployed or verified with, and every unqualified image deployed is built. */
export function checkSkaffoldImages(plan: ReturnType<typeof skaffoldPlan>, rendered: readonly Manifest[], jobManifests: readonly Manifest[]): string[] {
  const problems: string[] = [];
  const deployed = imagesIn(rendered);
  const verified = new Set([...plan.verifyImages, ...imagesIn(jobManifests).keys()]);
  for (const image of plan.built) if (!deployed.has(image) && !verified.has(image)) problems.push(`skaffold builds ${image}, but nothing deploys or verifies with it`);
  // An image without a registry or tag can only be one skaffold builds; a typo there would never be pulled.
  for (const [image, where] of deployed) if (!/[/:.]/.test(image) && !plan.built.includes(image)) problems.push(`${where.join(', ')} run image ${image}, which skaffold does not build`);
  for (const image of plan.verifyImages) if (!plan.built.includes(image)) problems.push(`verify runs image ${image}, which skaffold does not build`);
  for (const a of plan.artifacts) {
    const fn = str(at(a, 'docker.buildArgs.FUNCTION'));
    if (fn !== undefined && fn !== str(a.image)) problems.push(`artifact ${show(a.image)} builds function ${fn}: one name everywhere`);
    const runtime = str(at(a, 'docker.buildArgs.RUNTIME'));
    if (runtime !== undefined && runtime !== str(a.image)) problems.push(`artifact ${show(a.image)} builds runtime ${runtime}: one name everywhere`);
  }
  return problems;
}

/** Sets (or, with `-` as the last step, appends) the value at a JSON pointer; used to make broken copies in tests. */
export function setPointer(doc: Json, pointer: string, value: Json): void {
  const steps = pointer.split('/').slice(1).map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
  const last = steps.pop();
  let cur: Json | undefined = doc;
  for (const s of steps) cur = Array.isArray(cur) ? cur[Number(s)] : obj(cur)[s];
  if (last === undefined || cur === null || typeof cur !== 'object') throw new Error(`nothing at ${pointer}`);
  if (Array.isArray(cur)) {
    if (last === '-') cur.push(value);
    else cur[Number(last)] = value;
  } else {
    cur[last] = value;
  }
}

/** A copy of the named document of a rendering with one value changed, the rest of the rendering shared. */
export function withChange(ms: readonly Manifest[], kind: string, name: string, pointer: string, value: Json): Manifest[] {
  return ms.map((m) => {
    if (m.doc.kind !== kind || str(at(m.doc, 'metadata.name')) !== name) return m;
    const doc = structuredClone(m.doc);
    setPointer(doc, pointer, value);
    return { source: m.source, doc };
  });
}

/** A copy of a rendering where one workload's container sets an environment variable (replacing an entry of that name). */
export function withEnv(ms: readonly Manifest[], kind: string, name: string, variable: string, value: string): Manifest[] {
  return ms.map((m) => {
    if (m.doc.kind !== kind || str(at(m.doc, 'metadata.name')) !== name) return m;
    const doc = structuredClone(m.doc);
    const container = obj(arr(at(obj(obj(doc.spec).template), 'spec.containers'))[0]);
    const env = arr(container.env).filter((e) => obj(e).name !== variable);
    container.env = [...env, { name: variable, value }];
    return { source: m.source, doc };
  });
}

/** The OIDC audience of the Broker the functions send to: what their projected tokens must be issued for. */
const BROKER_AUDIENCE = `eventing.knative.dev/broker/${NAMESPACE}/default`;

/** Where a sender's events claim to come from when it sends as itself: our workloads their own source, others theirs. */
function naturalSource(sender: Sender): string {
  return (WORKLOADS as readonly string[]).includes(sender) ? sourceOf(sender as Workload) : `/${sender}`;
}

/**
 * Who may send what, as the Broker would decide it from the rendered EventPolicies (the same evaluation the local
 * Broker applies: tools/local-broker/event-policies.ts): every contract type is admitted from exactly the
 * senders the catalogue names, as each sends it (its own source), and from nobody else; a workload cannot send
 * under another's source, nor the pipeline or an operator under one of ours. Each sending workload runs as the
 * ServiceAccount its policy names and presents a token of it for the Broker's audience.
 */
export function checkSenderPolicies(ms: readonly Manifest[]): string[] {
  const problems: string[] = [];
  const policies = senderPoliciesOf(ms.map((m) => m.doc as Record<string, unknown>), 'default');
  const senders: Sender[] = [...WORKLOADS, 'inference-pipeline', 'operator'];
  const subjectOf = new Map<Sender, string>();
  for (const sender of senders) {
    const own = policies.filter((p) => p.sender === sender);
    const sends = typesSentBy(sender).length > 0;
    if (!sends && own.length > 0) problems.push(`${sender} sends nothing, yet EventPolicy ${own[0]!.name} admits it`);
    if (sends && own.length !== 1) problems.push(`${sender} should have exactly one EventPolicy (annotated ${SENDER_ANNOTATION}), has ${own.length}`);
    const subject = own[0]?.subjects[0];
    if (subject !== undefined) subjectOf.set(sender, subject);
  }
  const probe = (subject: string, type: string, source: string) => admittingPolicy(policies, subject, { specversion: '1.0', id: 'probe', type, source }) !== undefined;
  for (const entry of catalogue) {
    for (const sender of senders) {
      const subject = subjectOf.get(sender);
      if (subject === undefined) continue;
      const expected = (entry.senders as readonly Sender[]).includes(sender);
      if (probe(subject, entry.type, naturalSource(sender)) !== expected) {
        problems.push(`${sender} (${subject}) ${expected ? 'may not send' : 'may send'} ${entry.type}, but the catalogue says ${expected ? 'it sends it' : 'it does not'}`);
      }
      if (!expected) continue;
      // The same type under a source that is not its own.
      const forged = (WORKLOADS as readonly string[]).includes(sender) ? WORKLOADS.filter((w) => w !== sender).map(sourceOf) : WORKLOADS.map(sourceOf);
      for (const source of [...forged, '/someone-else']) {
        if (source === naturalSource(sender)) continue;
        if ((WORKLOADS as readonly string[]).includes(sender) && probe(subject, entry.type, source)) problems.push(`${sender} may send ${entry.type} under the source ${source}`);
        if (!(WORKLOADS as readonly string[]).includes(sender) && source.startsWith(OWN_SOURCE_PREFIX) && probe(subject, entry.type, source)) {
          problems.push(`${sender} may send ${entry.type} under session-reaper's own source ${source}`);
        }
      }
    }
    if (probe('system:serviceaccount:elsewhere:anyone', entry.type, '/anyone')) problems.push(`an unnamed sender may send ${entry.type}`);
  }
  for (const t of ofKind(ms, 'Trigger', 'eventing.knative.dev')) {
    const type = str(at(t.doc, 'spec.filter.attributes.type')) ?? '';
    if (!senders.some((s) => subjectOf.has(s) && probe(subjectOf.get(s)!, type, naturalSource(s)))) problems.push(`${describe(t)} waits for ${type}, which no sender may send`);
  }
  // Each sending workload: its ServiceAccount is the subject its policy admits, and it sends with a token for the Broker.
  for (const w of ofKind(ms, 'Service', 'serving.knative.dev').concat(ofKind(ms, 'Deployment', 'apps'))) {
    const tmpl = templateOf(w);
    const sa = str(at(tmpl, 'spec.serviceAccountName')) ?? '';
    const workload = WORKLOADS.find((x) => x === sa);
    if (workload === undefined || typesSentBy(workload).length === 0) continue;
    if (subjectOf.get(workload) !== `system:serviceaccount:${namespaceOf(w) || NAMESPACE}:${sa}`) problems.push(`${describe(w)} runs as ${sa}, which its EventPolicy does not name`);
    const tokenFile = environmentOf(ms, w).SINK_TOKEN_FILE;
    const projected = arr(at(tmpl, 'spec.volumes')).map(obj).flatMap((v) => arr(at(v, 'projected.sources')).map((src) => ({ volume: str(v.name), token: obj(obj(src).serviceAccountToken) })))
      .filter((p) => Object.keys(p.token).length > 0);
    const mounts = arr(firstContainer(w).volumeMounts).map(obj);
    const presented = projected.some((p) => {
      const mount = mounts.find((m) => m.name === p.volume);
      return p.token.audience === BROKER_AUDIENCE && mount !== undefined && tokenFile === `${str(mount.mountPath) ?? ''}/${str(p.token.path) ?? ''}`;
    });
    if (!presented) problems.push(`${describe(w)} does not present a token of ${sa} for ${BROKER_AUDIENCE} (SINK_TOKEN_FILE on a projected serviceAccountToken)`);
  }
  if (subjectOf.has('operator') && !find(ms, 'ServiceAccount', '', 'session-reaper-operator')) problems.push('the operator\'s ServiceAccount session-reaper-operator is not deployed');
  return problems;
}
