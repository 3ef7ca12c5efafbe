// The local Broker's routing table, read from the same Knative manifests that are deployed (knative/base): the
// Broker's delivery spec, and each Trigger's filter, subscriber and delivery spec. Semantics follow Knative's
// Broker specification: a Trigger's `delivery`, when set, replaces the Broker's as a whole (so the heartbeat
// Trigger, which sets one without a dead-letter sink, drops what it cannot deliver, as its manifest says).
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';

/** Where the deployed manifests of the Broker and its Triggers live. */
export const DEFAULT_MANIFESTS_DIR = fileURLToPath(new URL('../../knative/base', import.meta.url));

/** The Broker's name in the manifests. */
export const DEFAULT_BROKER_NAME = 'default';

/** A Knative delivery spec, decoded: how hard one Trigger tries before giving up on an event. */
export interface DeliverySpec {
  /** Retries after the first attempt (attempts = retry + 1). */
  retry: number;
  backoffPolicy: 'exponential' | 'linear';
  /** The backoff unit, ms: how long retry n waits depends on the data plane (backoffMs). */
  backoffDelayMs: number;
  /** Per-attempt timeout, ms; undefined: none beyond the broker's default. */
  timeoutMs: number | undefined;
  /** Whether events that finally fail are kept in the dead-letter store (a deadLetterSink is set). */
  deadLetter: boolean;
}

/** One attribute condition of a Trigger, in the shape of Knative's `filters` dialects (`filter.attributes` is `exact`). */
export type FilterExpression =
  | { exact: Record<string, string> }
  | { prefix: Record<string, string> }
  | { suffix: Record<string, string> }
  | { all: FilterExpression[] }
  | { any: FilterExpression[] }
  | { not: FilterExpression };

/** A Trigger as the local Broker routes with it. */
export interface Route {
  /** The Trigger's metadata.name. */
  name: string;
  /** Every condition must hold for an event to be delivered here; empty: every event. */
  filters: FilterExpression[];
  /** The subscriber's local URL; undefined when it could not be resolved (the Trigger is then not ready). */
  url: string | undefined;
  /** Why the subscriber could not be resolved, when it could not. */
  unresolved?: string;
  /** The effective delivery spec: the Trigger's own, else the Broker's. */
  delivery: DeliverySpec;
}

/** The routing table: the Broker's default delivery and its Triggers. */
export interface RoutingTable {
  broker: string;
  delivery: DeliverySpec;
  routes: Route[];
}

/** Where the manifests come from and how subscribers map to local URLs. */
export interface RoutingOptions {
  /** A directory of manifests (*.yaml, *.yml; not recursive). Default: knative/base. */
  manifestsDir?: string;
  /** Manifests as YAML text (e.g. `kubectl kustomize knative/overlays/dev`); wins over manifestsDir. */
  manifests?: string;
  /** Broker name the Triggers must name. Default 'default'. */
  broker?: string;
  /**
   * Local URLs of subscribers, keyed by a subscriber ref's name (a Knative Service: 'heartbeat-timeout'), by a
   * Trigger's name (wins over the ref), or by a subscriber `uri` as written in the manifest.
   */
  subscribers: Readonly<Record<string, string>>;
  /** Replaces every delivery spec's backoff and timeout (tests: milliseconds instead of seconds). */
  deliveryOverride?: Partial<DeliverySpec>;
}

/** A manifest the local Broker cannot route with; the message names the object and field. */
export class ManifestError extends Error {
  override name = 'ManifestError';
}

const DEFAULT_DELIVERY: DeliverySpec = { retry: 0, backoffPolicy: 'exponential', backoffDelayMs: 0, timeoutMs: undefined, deadLetter: false };

const DURATION = /^P(?:(\d+(?:\.\d+)?)W)?(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$/;

/** Parses an ISO 8601 duration of weeks, days, hours, minutes and seconds (PT0.2S, PT10S, P1DT2H) into ms. */
export function parseIsoDuration(text: string): number {
  const m = DURATION.exec(text.trim());
  if (!m || text.trim() === 'P' || text.trim().endsWith('T')) throw new ManifestError(`${JSON.stringify(text)} is not an ISO 8601 duration such as PT0.2S`);
  const [, w = '0', d = '0', h = '0', min = '0', s = '0'] = m;
  const ms = (((Number(w) * 7 + Number(d)) * 24 + Number(h)) * 60 + Number(min)) * 60_000 + Number(s) * 1000;
  return Math.round(ms);
}

/**
 * The Knative data plane that dispatches a Trigger's events. The two number their retries differently, so the same
 * delivery spec waits twice as long on one as on the other:
 * - 'eventing': knative/eventing's dispatcher (pkg/kncloudevents: the in-memory channel's, and the MT Broker over
 *   it). RetryConfigFromDeliverySpec (pkg/kncloudevents/retries.go) builds Backoff(attemptNum) = delay x 2^attemptNum
 *   (exponential) or delay x attemptNum (linear), and hashicorp/go-retryablehttp's Client.Do (client.go) calls it
 *   with its 0-based loop index `i` after attempt i+1 fails: retry k waits delay x 2^(k-1), or delay x (k-1), so a
 *   linear first retry does not wait at all. Retry-After is honoured (the larger of it and the backoff, 429 and 503
 *   only) only when the delivery sets retryAfterMax, the alpha `delivery-retryafter` feature (generateBackoffFn in
 *   pkg/kncloudevents); no manifest here sets it, so the backoff alone decides.
 * - 'eventing-kafka-broker': knative-extensions/eventing-kafka-broker's dispatcher (KafkaChannel subscriptions and
 *   the Kafka Broker's Triggers). WebClientCloudEventSender.computeRetryPolicy (data-plane/dispatcher, impl/http) is
 *   called with retryCounter + 1: retry k waits delay x 2^k, or delay x k.
 */
export type DataPlane = 'eventing' | 'eventing-kafka-broker';

/** The wait before retry number `retry` (1-based) on a data plane, as its dispatcher computes it: no jitter. */
export function backoffMs(spec: Pick<DeliverySpec, 'backoffPolicy' | 'backoffDelayMs'>, retry: number, plane: DataPlane = 'eventing'): number {
  const n = plane === 'eventing' ? retry - 1 : retry;
  return spec.backoffPolicy === 'linear' ? spec.backoffDelayMs * n : spec.backoffDelayMs * 2 ** n;
}

/** Every wait of a delivery spec, before retry 1, 2, ... `retry`, ms. */
export function backoffScheduleMs(spec: Pick<DeliverySpec, 'retry' | 'backoffPolicy' | 'backoffDelayMs'>, plane: DataPlane = 'eventing'): number[] {
  return Array.from({ length: spec.retry }, (_, i) => backoffMs(spec, i + 1, plane));
}

/**
 * The longest one event may keep being redelivered to a Trigger's subscriber, from the first attempt to giving up:
 * every attempt running to its timeout (none: 0) plus every wait between attempts.
 */
export function redeliveryWindowMs(spec: Pick<DeliverySpec, 'retry' | 'backoffPolicy' | 'backoffDelayMs'> & { timeoutMs?: number | undefined }, plane: DataPlane = 'eventing'): number {
  return (spec.retry + 1) * (spec.timeoutMs ?? 0) + backoffScheduleMs(spec, plane).reduce((a, b) => a + b, 0);
}

/**
 * Whether a subscriber's HTTP answer is retried: 404 (a pod still becoming ready), 408, 409, 429 and every 5xx, in
 * both data planes (knative/eventing SelectiveRetry in pkg/kncloudevents/retries.go; eventing-kafka-broker
 * WebClientCloudEventSender.isRetryableStatusCode, after the Knative eventing data-plane spec). Everything else that
 * is not 2xx, 3xx included, is final.
 */
export function isRetryableStatus(status: number): boolean {
  return status >= 500 || status === 404 || status === 408 || status === 409 || status === 429;
}

/** A manifest document, or an object within one. */
export type Obj = Record<string, unknown>;
export const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
/** Whether a document is a Knative Eventing resource of this kind. */
export const isEventingKind = (d: Obj, kind: string): boolean => d.kind === kind && typeof d.apiVersion === 'string' && d.apiVersion.startsWith('eventing.knative.dev/');
/** A document's metadata.name, when it has one. */
export const nameOf = (d: Obj): string | undefined => (isObj(d.metadata) && typeof d.metadata.name === 'string' ? d.metadata.name : undefined);

function parseDelivery(raw: unknown, where: string): DeliverySpec {
  if (!isObj(raw)) throw new ManifestError(`${where}.delivery must be an object`);
  const retry = raw.retry ?? 0;
  if (typeof retry !== 'number' || !Number.isInteger(retry) || retry < 0) throw new ManifestError(`${where}.delivery.retry must be a non-negative integer`);
  const policy = raw.backoffPolicy ?? 'exponential';
  if (policy !== 'exponential' && policy !== 'linear') throw new ManifestError(`${where}.delivery.backoffPolicy must be exponential or linear`);
  const delay = raw.backoffDelay;
  if (delay !== undefined && typeof delay !== 'string') throw new ManifestError(`${where}.delivery.backoffDelay must be an ISO 8601 duration`);
  const timeout = raw.timeout;
  if (timeout !== undefined && typeof timeout !== 'string') throw new ManifestError(`${where}.delivery.timeout must be an ISO 8601 duration`);
  return {
    retry,
    backoffPolicy: policy,
    backoffDelayMs: delay === undefined ? 0 : parseIsoDuration(delay),
    timeoutMs: timeout === undefined ? undefined : parseIsoDuration(timeout),
    // Any sink at all (the dead-letter receiver in base, or a uri) is the local on-disk store.
    deadLetter: raw.deadLetterSink !== undefined && raw.deadLetterSink !== null,
  };
}

function stringMap(raw: unknown, where: string): Record<string, string> {
  if (!isObj(raw)) throw new ManifestError(`${where} must be a map of attribute names to values`);
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(raw)) {
    if (typeof v !== 'string') throw new ManifestError(`${where}.${k} must be a string`);
    out[k] = v;
  }
  return out;
}

/** Parses one filter expression of the SubscriptionsAPI dialects (Trigger `filters`, EventPolicy `filters`). */
export function parseFilterExpression(raw: unknown, where: string): FilterExpression {
  if (!isObj(raw)) throw new ManifestError(`${where} must be an object`);
  const keys = Object.keys(raw);
  if (keys.length !== 1) throw new ManifestError(`${where} must have exactly one dialect (exact, prefix, suffix, all, any, not)`);
  const [key] = keys as [string];
  const value = raw[key];
  switch (key) {
    case 'exact':
    case 'prefix':
    case 'suffix':
      return { [key]: stringMap(value, `${where}.${key}`) } as FilterExpression;
    case 'all':
    case 'any':
      if (!Array.isArray(value)) throw new ManifestError(`${where}.${key} must be a list`);
      return { [key]: value.map((v, i) => parseFilterExpression(v, `${where}.${key}[${i}]`)) } as FilterExpression;
    case 'not':
      return { not: parseFilterExpression(value, `${where}.not`) };
    default:
      throw new ManifestError(`${where}: the ${key} dialect is not supported by the local Broker`);
  }
}

// Knative: `filters` (the newer dialects) wins over `filter.attributes`; an attribute whose value is '' matches any.
function parseFilters(spec: Obj, where: string): FilterExpression[] {
  if (Array.isArray(spec.filters) && spec.filters.length > 0) {
    return spec.filters.map((f, i) => parseFilterExpression(f, `${where}.filters[${i}]`));
  }
  if (spec.filter === undefined || spec.filter === null) return [];
  if (!isObj(spec.filter)) throw new ManifestError(`${where}.filter must be an object`);
  if (spec.filter.attributes === undefined) return [];
  const exact = Object.fromEntries(Object.entries(stringMap(spec.filter.attributes, `${where}.filter.attributes`)).filter(([, v]) => v !== ''));
  return Object.keys(exact).length === 0 ? [] : [{ exact }];
}

// Names that resolve only inside a cluster cannot be reached from a laptop; such a subscriber must be mapped.
function clusterLocal(uri: string): boolean {
  try {
    const host = new URL(uri).hostname;
    return host.endsWith('.svc.cluster.local') || host.endsWith('.svc') || (!host.includes('.') && host !== 'localhost');
  } catch {
    return true;
  }
}

function joinUri(base: string, path: string): string {
  return `${base.replace(/\/+$/, '')}/${path.replace(/^\/+/, '')}`;
}

function resolveSubscriber(name: string, raw: unknown, subscribers: Readonly<Record<string, string>>, where: string): { url?: string; unresolved?: string } {
  if (!isObj(raw)) throw new ManifestError(`${where}.subscriber must be an object`);
  const byTrigger = subscribers[name];
  if (byTrigger !== undefined) return { url: byTrigger };
  const ref = raw.ref;
  const uri = typeof raw.uri === 'string' ? raw.uri : undefined;
  if (ref !== undefined) {
    if (!isObj(ref) || typeof ref.name !== 'string') throw new ManifestError(`${where}.subscriber.ref.name must be a string`);
    const base = subscribers[ref.name];
    if (base === undefined) return { unresolved: `no local URL for ${typeof ref.kind === 'string' ? ref.kind : 'ref'} ${ref.name}` };
    // Knative: with both a ref and a uri, the uri is a path relative to the ref's address.
    return { url: uri === undefined ? base : joinUri(base, uri) };
  }
  if (uri === undefined) throw new ManifestError(`${where}.subscriber needs a ref or a uri`);
  const mapped = subscribers[uri];
  if (mapped !== undefined) return { url: mapped };
  if (clusterLocal(uri)) return { unresolved: `${uri} is only reachable inside a cluster; map it in subscribers` };
  return { url: uri };
}

/** Reads every manifest document of a directory (non-recursive) or of a YAML text. */
export function readManifests(opts: Pick<RoutingOptions, 'manifestsDir' | 'manifests'>): Obj[] {
  const texts: Array<{ text: string; file: string }> = [];
  if (opts.manifests !== undefined) {
    texts.push({ text: opts.manifests, file: '<manifests>' });
  } else {
    const dir = opts.manifestsDir ?? DEFAULT_MANIFESTS_DIR;
    for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      if (entry.isFile() && /\.ya?ml$/.test(entry.name)) texts.push({ text: readFileSync(join(dir, entry.name), 'utf8'), file: join(dir, entry.name) });
    }
  }
  const out: Obj[] = [];
  for (const { text, file } of texts) {
    for (const doc of parseAllDocuments(text)) {
      if (doc.errors.length > 0) throw new ManifestError(`${file}: ${doc.errors[0]?.message ?? 'invalid YAML'}`);
      const value: unknown = doc.toJS();
      if (isObj(value)) out.push(value);
    }
  }
  return out;
}

function applyOverride(spec: DeliverySpec, override: Partial<DeliverySpec> | undefined): DeliverySpec {
  return override ? { ...spec, ...override } : spec;
}

/** Builds the routing table from the manifests: the Broker's delivery and one route per Trigger of that Broker. */
export function loadRoutingTable(opts: RoutingOptions): RoutingTable {
  return routingTableOf(readManifests(opts), opts);
}

/** The routing table of manifest documents already read (readManifests). */
export function routingTableOf(docs: readonly Obj[], opts: Omit<RoutingOptions, 'manifestsDir' | 'manifests'>): RoutingTable {
  const brokerName = opts.broker ?? DEFAULT_BROKER_NAME;
  const broker = docs.find((d) => isEventingKind(d, 'Broker') && nameOf(d) === brokerName);
  if (!broker) throw new ManifestError(`no Broker named ${brokerName} in the manifests`);
  const brokerSpec = isObj(broker.spec) ? broker.spec : {};
  const brokerDelivery = applyOverride(
    brokerSpec.delivery === undefined ? DEFAULT_DELIVERY : parseDelivery(brokerSpec.delivery, `Broker ${brokerName}.spec`),
    opts.deliveryOverride,
  );
  const routes: Route[] = [];
  for (const doc of docs) {
    if (!isEventingKind(doc, 'Trigger')) continue;
    const name = nameOf(doc);
    const where = `Trigger ${name ?? '<unnamed>'}.spec`;
    if (name === undefined) throw new ManifestError('a Trigger has no metadata.name');
    if (!isObj(doc.spec)) throw new ManifestError(`${where} is missing`);
    if (doc.spec.broker !== brokerName) continue;
    const delivery = doc.spec.delivery === undefined ? brokerDelivery : applyOverride(parseDelivery(doc.spec.delivery, where), opts.deliveryOverride);
    const { url, unresolved } = resolveSubscriber(name, doc.spec.subscriber, opts.subscribers, where);
    routes.push({ name, filters: parseFilters(doc.spec, where), url, ...(unresolved === undefined ? {} : { unresolved }), delivery });
  }
  return { broker: brokerName, delivery: brokerDelivery, routes };
}

/** An event's attributes as filters see them: every value as a string. */
export type AttributeView = Readonly<Record<string, string | number | boolean>>;

function holds(expr: FilterExpression, attrs: AttributeView): boolean {
  const value = (k: string): string | undefined => (attrs[k] === undefined ? undefined : String(attrs[k]));
  if ('exact' in expr) return Object.entries(expr.exact).every(([k, v]) => value(k) === v);
  if ('prefix' in expr) return Object.entries(expr.prefix).every(([k, v]) => value(k)?.startsWith(v) === true);
  if ('suffix' in expr) return Object.entries(expr.suffix).every(([k, v]) => value(k)?.endsWith(v) === true);
  if ('all' in expr) return expr.all.every((e) => holds(e, attrs));
  if ('any' in expr) return expr.any.some((e) => holds(e, attrs));
  return !holds(expr.not, attrs);
}

/** True when an event with these attributes passes every filter (no filters: every event). */
export function filtersHold(filters: readonly FilterExpression[], attrs: AttributeView): boolean {
  return filters.every((f) => holds(f, attrs));
}

/** True when an event with these attributes passes the route's filters (a route without filters takes all). */
export function matches(route: Pick<Route, 'filters'>, attrs: AttributeView): boolean {
  return filtersHold(route.filters, attrs);
}
