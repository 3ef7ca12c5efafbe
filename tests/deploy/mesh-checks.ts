// Behavioural checks of the mesh and the network over a rendered overlay: what Istio and Kubernetes will DO with the
// manifests, evaluated as they evaluate them, not only what numbers they hold. Who may POST to a function (Istio's
// AuthorizationPolicy evaluation, for every principal that can deliver to it and for those that must not), which
// VirtualServices each Sidecar actually selects (Istio's Sidecar import rules), how long the mesh could black-hole a
// GPU runtime compared with the app's breaker, and which flows the NetworkPolicies admit. Each check returns the
// problems it found, one sentence each; an empty list means the overlay behaves as intended.
import { readRuntimeCallSettings } from '../../functions/core/runtime-call-settings.ts';
import { ACTIVATOR, BROKER_DATA_PLANE, BROKER_INGRESS_HOST, DIRECT_PRODUCERS_POLICY, FUNCTIONS, LONG_RUNNING, NAMESPACE, at, brokerClassOf, environmentOf, eventDeliverers, ofKind, parseGoDuration, obj, arr, str, nameOf, type Obj } from './deployment-checks.ts';
import { describe, type Json, type Manifest } from './manifest-schemas.ts';

function strs(v: Json | undefined): string[] {
  return arr(v).filter((x): x is string => typeof x === 'string');
}

function namespaceOf(m: Manifest): string {
  return str(at(m.doc, 'metadata.namespace')) ?? NAMESPACE;
}

function podLabels(m: Manifest): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const [k, v] of Object.entries(obj(at(m.doc, 'spec.template.metadata.labels')))) if (typeof v === 'string') labels[k] = v;
  // Knative labels every revision pod with its Service's name (serving.knative.dev/service).
  if (m.doc.kind === 'Service' && str(m.doc.apiVersion)?.startsWith('serving.knative.dev/')) labels['serving.knative.dev/service'] = nameOf(m);
  return labels;
}

function find(ms: readonly Manifest[], kind: string, name: string): Manifest | undefined {
  return ms.find((m) => m.doc.kind === kind && nameOf(m) === name);
}

// ---------------------------------------------------------------------------------------------------------------
// Istio authorization, as istiod's RBAC filter decides it (istio.io/latest/docs/reference/config/security/
// authorization-policy/: "If there are any DENY policies that match the request, deny the request. If there are no
// ALLOW policies for the workload, allow the request. If any of the ALLOW policies match the request, allow the
// request. Deny the request."). A policy applies to a workload when it lives in the workload's namespace, or in the
// root namespace (istio-system), and its selector (absent: every workload) matches the pod's labels. CUSTOM and
// AUDIT policies are not used here and make the evaluation refuse.

/** Istio's root namespace, where a policy without a selector applies to the whole mesh. */
export const ROOT_NAMESPACE = 'istio-system';

/** One request as the server-side sidecar sees it. */
export interface MeshRequest {
  principal: string;
  method: string;
  path: string;
  port: number;
}

function namespaceOfPrincipal(principal: string): string {
  return /^[^/]+\/ns\/([^/]+)\/sa\//.exec(principal)?.[1] ?? '';
}

// Istio string matching: exact, `*` alone, a prefix `abc*` or a suffix `*abc`.
function istioMatch(pattern: string, value: string): boolean {
  if (pattern === '*') return value !== '';
  if (pattern.endsWith('*')) return value.startsWith(pattern.slice(0, -1));
  if (pattern.startsWith('*')) return value.endsWith(pattern.slice(1));
  return pattern === value;
}

// Paths also take the templates `{*}` (one segment) and `{**}` (the rest).
function pathMatch(pattern: string, value: string): boolean {
  if (!pattern.includes('{')) return istioMatch(pattern, value);
  const re = pattern.split('/').map((seg) => (seg === '{*}' ? '[^/]+' : seg === '{**}' ? '.*' : seg.replace(/[.*+?^$()|[\]\\]/g, '\\$&'))).join('/');
  return new RegExp(`^${re}$`).test(value);
}

function anyOf(patterns: string[] | undefined, value: string, match: (p: string, v: string) => boolean = istioMatch): boolean | undefined {
  return patterns === undefined ? undefined : patterns.some((p) => match(p, value));
}

function field(o: Obj, key: string): string[] | undefined {
  return o[key] === undefined ? undefined : strs(o[key]);
}

const KNOWN_SOURCE = new Set(['principals', 'notPrincipals', 'namespaces', 'notNamespaces']);
const KNOWN_OPERATION = new Set(['methods', 'notMethods', 'paths', 'notPaths', 'ports', 'notPorts']);

// Every field present must match (and every not-field must not); an absent field matches anything.
function sourceMatches(source: Obj, req: MeshRequest): boolean {
  for (const k of Object.keys(source)) if (!KNOWN_SOURCE.has(k)) throw new Error(`the evaluation does not model source.${k}`);
  const ns = namespaceOfPrincipal(req.principal);
  const checks = [
    anyOf(field(source, 'principals'), req.principal),
    invert(anyOf(field(source, 'notPrincipals'), req.principal)),
    anyOf(field(source, 'namespaces'), ns),
    invert(anyOf(field(source, 'notNamespaces'), ns)),
  ];
  return checks.every((c) => c !== false);
}

function operationMatches(op: Obj, req: MeshRequest): boolean {
  for (const k of Object.keys(op)) if (!KNOWN_OPERATION.has(k)) throw new Error(`the evaluation does not model operation.${k}`);
  const port = String(req.port);
  const checks = [
    anyOf(field(op, 'methods'), req.method),
    invert(anyOf(field(op, 'notMethods'), req.method)),
    anyOf(field(op, 'paths'), req.path, pathMatch),
    invert(anyOf(field(op, 'notPaths'), req.path, pathMatch)),
    anyOf(field(op, 'ports'), port),
    invert(anyOf(field(op, 'notPorts'), port)),
  ];
  return checks.every((c) => c !== false);
}

function invert(v: boolean | undefined): boolean | undefined {
  return v === undefined ? undefined : !v;
}

// A rule matches when one of its `from` entries and one of its `to` entries match (an absent list matches all).
function ruleMatches(rule: Obj, req: MeshRequest): boolean {
  if (rule.when !== undefined) throw new Error('the evaluation does not model `when` conditions');
  const from = arr(rule.from).map((f) => obj(obj(f).source));
  const to = arr(rule.to).map((t) => obj(obj(t).operation));
  return (from.length === 0 || from.some((s) => sourceMatches(s, req))) && (to.length === 0 || to.some((o) => operationMatches(o, req)));
}

function policyApplies(policy: Manifest, podNamespace: string, labels: Record<string, string>): boolean {
  const ns = namespaceOf(policy);
  if (ns !== podNamespace && ns !== ROOT_NAMESPACE) return false;
  const selector = obj(at(policy.doc, 'spec.selector.matchLabels'));
  return Object.entries(selector).every(([k, v]) => labels[k] === v);
}

/** Istio's decision for a request to a pod with these labels in this namespace, and the policies that decided it. */
export function authorize(ms: readonly Manifest[], podNamespace: string, labels: Record<string, string>, req: MeshRequest): { allowed: boolean; by: string[] } {
  const applicable = ofKind(ms, 'AuthorizationPolicy', 'security.istio.io').filter((p) => policyApplies(p, podNamespace, labels));
  const actionOf = (p: Manifest) => str(at(p.doc, 'spec.action')) ?? 'ALLOW';
  for (const p of applicable) if (!['ALLOW', 'DENY'].includes(actionOf(p))) throw new Error(`${describe(p)}: the evaluation does not model action ${actionOf(p)}`);
  const rules = (p: Manifest) => arr(at(p.doc, 'spec.rules')).map(obj);
  const denying = applicable.filter((p) => actionOf(p) === 'DENY' && rules(p).some((r) => ruleMatches(r, req)));
  if (denying.length > 0) return { allowed: false, by: denying.map(nameOf) };
  const allows = applicable.filter((p) => actionOf(p) === 'ALLOW');
  if (allows.length === 0) return { allowed: true, by: [] };
  // An ALLOW policy without rules (deny-by-default's `spec: {}`) matches nothing, but still makes ALLOW apply.
  const allowing = allows.filter((p) => rules(p).some((r) => ruleMatches(r, req)));
  return { allowed: allowing.length > 0, by: (allowing.length > 0 ? allowing : allows).map(nameOf) };
}

/** Principals that must never reach a function: our own workloads, the pipeline, the Broker ingress, strangers. */
function strangers(ms: readonly Manifest[], deliverers: readonly string[]): string[] {
  const own = [...FUNCTIONS, ...Object.keys(LONG_RUNNING), 'otel-collector', 'redis'].map((sa) => `cluster.local/ns/${NAMESPACE}/sa/${sa}`);
  const others = [
    'cluster.local/ns/inference/sa/inference-pipeline',
    'cluster.local/ns/knative-eventing/sa/mt-broker-ingress',
    'cluster.local/ns/knative-serving/sa/controller',
    'cluster.local/ns/default/sa/default',
    'cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account',
    ...Object.values(BROKER_DATA_PLANE),
  ];
  return [...own, ...others].filter((p) => !deliverers.includes(p));
}

/**
 * Every principal that can deliver an event to a function (the Broker class's data plane, Knative's activator) may
 * POST to it, and nobody else may: evaluated as Istio evaluates the rendered AuthorizationPolicies (DENY first, then
 * an ALLOW policy selecting the pod means default deny for it, and the namespace's deny-by-default). Knative's
 * system pods may GET /healthz; the activator may not GET anything else. The direct-heartbeats component's producer
 * may POST / to heartbeat-timeout when the component is rendered, and only there.
 */
export function checkDeliveryAdmission(ms: readonly Manifest[]): string[] {
  const problems: string[] = [];
  const deliverers = eventDeliverers(ms);
  const direct = find(ms, 'AuthorizationPolicy', DIRECT_PRODUCERS_POLICY);
  const producers = direct ? arr(at(direct.doc, 'spec.rules')).flatMap((r) => arr(obj(r).from).flatMap((f) => strs(at(obj(f), 'source.principals')))) : [];
  for (const fn of FUNCTIONS) {
    const svc = ofKind(ms, 'Service', 'serving.knative.dev').find((s) => nameOf(s) === fn);
    if (!svc) continue;
    const labels = podLabels(svc);
    const ask = (principal: string, method: string, path: string) => authorize(ms, namespaceOf(svc), labels, { principal, method, path, port: 8012 });
    for (const p of deliverers) {
      const d = ask(p, 'POST', '/');
      if (!d.allowed) problems.push(`${fn} refuses a POST from ${p}, which delivers its events (${d.by.join(', ') || 'no policy'}): Istio answers 403 and Eventing does not retry it`);
    }
    for (const p of strangers(ms, deliverers)) {
      const d = ask(p, 'POST', '/');
      const expected = fn === 'heartbeat-timeout' && producers.includes(p);
      if (d.allowed !== expected) problems.push(`${fn} ${d.allowed ? 'admits' : 'refuses'} a POST from ${p}${d.allowed ? ` (${d.by.join(', ')})` : ''}`);
    }
    for (const p of producers) {
      const d = ask(p, 'POST', '/');
      if (d.allowed !== (fn === 'heartbeat-timeout')) problems.push(`${fn} ${d.allowed ? 'admits' : 'refuses'} the direct heartbeat producer ${p}`);
    }
    if (!ask('cluster.local/ns/knative-serving/sa/controller', 'GET', '/healthz').allowed) problems.push(`${fn} refuses Knative's GET /healthz from knative-serving`);
    if (ask(ACTIVATOR, 'GET', '/debug').allowed) problems.push(`${fn} admits more than POST from the activator (GET /debug)`);
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------------------------
// Sidecar scoping, as istiod computes it (istio/istio pilot/pkg/model/sidecar.go convertIstioListenerToWrapper and
// pilot/pkg/model/virtualservice.go SelectVirtualServices): an egress host `ns/host` is filed under `ns` (`.` is the
// Sidecar's own namespace; `~` imports nothing); a Service is imported from the key of its own namespace if that key
// exists, else from `*`; a VirtualService is selected when the key of ITS namespace (or `*`) holds a host matching
// one of its hosts, and only if it is exported to the Sidecar's namespace (exportTo: absent or `*` everyone, `.` its
// own namespace, else the names listed).

/** Istio's host matching: equal, or one side a wildcard (`*`, `*.suffix`) that covers the other. */
export function hostsMatch(a: string, b: string): boolean {
  if (a === b || a === '*' || b === '*') return true;
  const covers = (w: string, h: string) => w.startsWith('*.') && (h.endsWith(w.slice(1)) || (h.startsWith('*.') && h.slice(1).endsWith(w.slice(1))));
  return covers(a, b) || covers(b, a);
}

/** A Sidecar's egress imports by namespace, as istiod files them. */
export function sidecarImports(sidecar: Manifest): Map<string, string[]> {
  const byNamespace = new Map<string, string[]>();
  for (const listener of arr(at(sidecar.doc, 'spec.egress')).map(obj)) {
    for (const h of strs(listener.hosts)) {
      const slash = h.indexOf('/');
      if (slash < 0) continue;
      let ns = h.slice(0, slash);
      if (ns === '~') continue;
      if (ns === '.') ns = namespaceOf(sidecar);
      byNamespace.set(ns, [...(byNamespace.get(ns) ?? []), h.slice(slash + 1)]);
    }
  }
  return byNamespace;
}

function exportedTo(vs: Manifest, namespace: string): boolean {
  const exportTo = strs(at(vs.doc, 'spec.exportTo'));
  if (exportTo.length === 0 || exportTo.includes('*')) return true;
  return exportTo.some((e) => (e === '.' ? namespaceOf(vs) === namespace : e === namespace));
}

/** The VirtualServices a Sidecar selects for the mesh (its sidecars' outbound routes). */
export function selectedVirtualServices(ms: readonly Manifest[], sidecar: Manifest): Manifest[] {
  const imports = sidecarImports(sidecar);
  return ofKind(ms, 'VirtualService', 'networking.istio.io').filter((vs) => {
    const gateways = strs(at(vs.doc, 'spec.gateways'));
    if (gateways.length > 0 && !gateways.includes('mesh')) return false;
    if (!exportedTo(vs, namespaceOf(sidecar))) return false;
    const candidates = [...(imports.get(namespaceOf(vs)) ?? []), ...(imports.get('*') ?? [])];
    return strs(at(vs.doc, 'spec.hosts')).some((h) => candidates.some((c) => hostsMatch(h, c)));
  });
}

function serviceNamespaceOf(host: string): string | undefined {
  return /^[^.]+\.([^.]+)\.svc\.cluster\.local$/.exec(host)?.[1];
}

/** Whether a Sidecar imports the Service for a host (from its namespace's key, else from `*`). */
export function importsService(sidecar: Manifest, host: string): boolean {
  const imports = sidecarImports(sidecar);
  const ns = serviceNamespaceOf(host) ?? namespaceOf(sidecar);
  const candidates = imports.get(ns) ?? imports.get('*') ?? [];
  return candidates.some((c) => hostsMatch(host, c));
}

function tierOf(m: Manifest): string {
  return str(obj(at(m.doc, 'metadata.labels'))['sessionreaper.dev/timeout-tier']) ?? '';
}

/**
 * For every workload's Sidecar, every tier-labelled VirtualService for a host it calls is one it actually selects:
 * the core tier's (the Broker ingress) for every Sidecar not labelled sessionreaper.dev/sends-events=false; the runtime tier's for
 * the Sidecars labelled sessionreaper.dev/calls-gpu-runtimes; and any tier VirtualService for a host the Sidecar
 * imports. Each selected route sets a timeout and `retries.attempts: 0`, so Istio's default retry policy (2 retries)
 * never applies to those hosts. The host that matters is the rendered Broker's ingress, by its class
 * (BROKER_INGRESS_HOST): a core-tier VirtualService must cover it and every Sidecar must import its Service, or under
 * REGISTRY_ONLY every emit fails (and a route for the other class's ingress bounds nothing anyone calls).
 */
export function checkVirtualServiceAttachment(ms: readonly Manifest[]): string[] {
  const problems: string[] = [];
  const tiered = ofKind(ms, 'VirtualService', 'networking.istio.io').filter((vs) => tierOf(vs) !== '');
  const sidecars = ofKind(ms, 'Sidecar', 'networking.istio.io');
  if (sidecars.length === 0) return ['no Sidecar is rendered'];
  const ingresses = ofKind(ms, 'Broker', 'eventing.knative.dev').map((b) => ({ cls: brokerClassOf(b), host: BROKER_INGRESS_HOST[brokerClassOf(b)] }));
  for (const { cls, host } of ingresses) {
    if (host === undefined) {
      problems.push(`the Broker class ${cls} has no known ingress host`);
      continue;
    }
    const core = tiered.filter((vs) => tierOf(vs) === 'core' && strs(at(vs.doc, 'spec.hosts')).some((h) => hostsMatch(h, host)));
    if (core.length === 0) problems.push(`no core-tier VirtualService covers the ${cls} Broker's ingress ${host}: emits to it get Istio's default timeout and retries`);
    const senders = sidecars.filter((sc) => obj(at(sc.doc, 'metadata.labels'))['sessionreaper.dev/sends-events'] !== 'false');
    for (const sc of senders) if (!importsService(sc, host)) problems.push(`${describe(sc)} does not import the ${cls} Broker's ingress ${host}: under REGISTRY_ONLY every emit fails`);
  }
  for (const sc of sidecars) {
    const callsRuntimes = obj(at(sc.doc, 'metadata.labels'))['sessionreaper.dev/calls-gpu-runtimes'] === 'true';
    // A workload labelled as sending no events (the dead-letter receiver) need not import the Broker ingress.
    const sendsEvents = obj(at(sc.doc, 'metadata.labels'))['sessionreaper.dev/sends-events'] !== 'false';
    const selected = selectedVirtualServices(ms, sc);
    for (const vs of tiered) {
      const hosts = strs(at(vs.doc, 'spec.hosts'));
      const required = (tierOf(vs) === 'core' && sendsEvents) || (tierOf(vs) === 'runtime' && callsRuntimes) || hosts.some((h) => importsService(sc, h));
      if (!required) continue;
      if (!selected.includes(vs)) {
        problems.push(`${describe(sc)} calls ${hosts.join(', ')} but does not select ${describe(vs)}: its timeout and no-retry rule never apply there`);
        continue;
      }
      if (!hosts.some((h) => importsService(sc, h) || selected.some((v) => strs(at(v.doc, 'spec.hosts')).includes(h)))) problems.push(`${describe(sc)} does not import ${hosts.join(', ')}`);
    }
    // Every route a selected tier VirtualService gives this Sidecar forbids mesh retries and bounds the attempt.
    for (const vs of selected.filter((v) => tierOf(v) !== '')) {
      for (const [i, route] of arr(at(vs.doc, 'spec.http')).map(obj).entries()) {
        if (at(route, 'retries.attempts') !== 0) problems.push(`${describe(sc)} gets ${describe(vs)} route ${i}, which leaves Istio's default retries on`);
        if (str(route.timeout) === undefined) problems.push(`${describe(sc)} gets ${describe(vs)} route ${i}, which has no timeout`);
      }
    }
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------------------------
// Outlier detection against the app's breaker.

/** Envoy's max_ejection_time when unset (envoyproxy.io config.cluster.v3.OutlierDetection); Istio does not expose it. */
export const ENVOY_MAX_EJECTION_MS = 300_000;

/**
 * The longest the mesh could keep a single-endpoint runtime out of rotation: 0 without outlier detection or with
 * panic routing (minHealthPercent > 0: below it Envoy balances over every host, ejected ones included); otherwise an
 * ejection lasts baseEjectionTime x times ejected, capped at max_ejection_time (300 s, or the base if longer), and
 * Envoy ejects the one host whatever maxEjectionPercent says (assumed, as older Envoy always did).
 */
export function worstEjectionMs(dr: Manifest): number {
  const od = at(dr.doc, 'spec.trafficPolicy.outlierDetection');
  if (od === undefined) return 0;
  const minHealth = at(od, 'minHealthPercent');
  if (typeof minHealth === 'number' && minHealth > 0) return 0;
  const base = str(at(od, 'baseEjectionTime'));
  return Math.max(ENVOY_MAX_EJECTION_MS, base === undefined ? 30_000 : parseGoDuration(base));
}

/** Workloads that call the runtimes through a breaker: gpu-release and the deadline engine's reconciler. */
const BREAKER_CALLERS = [
  { kind: 'Service', name: 'gpu-release' },
  { kind: 'Deployment', name: 'deadline-engine' },
] as const;

/**
 * No DestinationRule for a runtime host can keep a runtime out of rotation longer than the app's breaker would
 * (BREAKER_RESET_TIMEOUT_MS of every breaker caller, as its process reads it): otherwise the breaker's trial call
 * after its reset meets a 503 from the mesh, not the runtime, and the runtime stays black-holed while healthy.
 */
export function checkRuntimeEjection(ms: readonly Manifest[]): string[] {
  const problems: string[] = [];
  const runtimeHosts = ofKind(ms, 'VirtualService', 'networking.istio.io').filter((v) => tierOf(v) === 'runtime').flatMap((v) => strs(at(v.doc, 'spec.hosts')));
  const rules = ofKind(ms, 'DestinationRule', 'networking.istio.io').filter((dr) => tierOf(dr) === 'runtime' || runtimeHosts.some((h) => hostsMatch(h, str(at(dr.doc, 'spec.host')) ?? '')));
  if (rules.length === 0) return ['no DestinationRule covers the runtime tier'];
  for (const c of BREAKER_CALLERS) {
    const w = find(ms, c.kind, c.name);
    if (!w) continue;
    let reset: number;
    try {
      reset = readRuntimeCallSettings(environmentOf(ms, w)).BREAKER_RESET_TIMEOUT_MS;
    } catch (err) {
      problems.push(`${describe(w)}: ${(err as Error).message}`);
      continue;
    }
    for (const dr of rules) {
      const worst = worstEjectionMs(dr);
      if (worst > reset) problems.push(`${describe(dr)} can eject a single-endpoint runtime for up to ${worst} ms, longer than ${c.name}'s breaker reset of ${reset} ms`);
    }
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------------------------
// Kubernetes NetworkPolicy, as the API defines it (kubernetes.io/docs/concepts/services-networking/network-policies/):
// a pod selected by no policy of type Ingress accepts everything; a selected pod accepts a connection only if some
// selecting policy's ingress rule admits its source and port. Namespaces are matched by their labels, and every
// namespace carries kubernetes.io/metadata.name (set by the API server since 1.22). The kubelet's probes come from
// the node, which the NetworkPolicy docs leave always allowed ("traffic to and from the node where a Pod is running
// is always allowed, regardless of the IP address of the Pod or the node"), so they are not modelled here.

/** One end of a flow: a pod's namespace and labels. */
export interface Peer {
  namespace: string;
  labels: Record<string, string>;
}

/** A label selector (matchLabels and matchExpressions) against a label set; an empty selector matches everything. */
export function selectorMatches(selector: Obj, labels: Record<string, string>): boolean {
  for (const [k, v] of Object.entries(obj(selector.matchLabels))) if (labels[k] !== v) return false;
  for (const e of arr(selector.matchExpressions).map(obj)) {
    const key = str(e.key) ?? '';
    const values = strs(e.values);
    const has = Object.hasOwn(labels, key);
    const ok =
      e.operator === 'In' ? has && values.includes(labels[key]!) : e.operator === 'NotIn' ? !has || !values.includes(labels[key]!) : e.operator === 'Exists' ? has : e.operator === 'DoesNotExist' ? !has : false;
    if (!ok) return false;
  }
  return true;
}

function peerMatches(rulePeer: Obj, policyNamespace: string, from: Peer): boolean {
  if (rulePeer.ipBlock !== undefined) return false; // pods are addressed by selectors here, never by IP
  const nsSel = rulePeer.namespaceSelector;
  const podSel = rulePeer.podSelector;
  const nsOk = nsSel === undefined ? from.namespace === policyNamespace : selectorMatches(obj(nsSel), { 'kubernetes.io/metadata.name': from.namespace });
  const podOk = podSel === undefined ? true : selectorMatches(obj(podSel), from.labels);
  return nsOk && podOk;
}

function portMatches(rulePorts: Json[] | undefined, port: number): boolean {
  if (rulePorts === undefined || rulePorts.length === 0) return true;
  return rulePorts.map(obj).some((p) => {
    if ((str(p.protocol) ?? 'TCP') !== 'TCP') return false;
    if (typeof p.port === 'string') throw new Error(`named port ${p.port} is not modelled: use numbers`);
    if (typeof p.port !== 'number') return p.port === undefined;
    const end = typeof p.endPort === 'number' ? p.endPort : p.port;
    return port >= p.port && port <= end;
  });
}

/** Whether the rendered NetworkPolicies let `from` open a TCP connection to `to` on `port`. */
export function networkAllows(ms: readonly Manifest[], from: Peer, to: Peer, port: number): boolean {
  const selecting = ofKind(ms, 'NetworkPolicy', 'networking.k8s.io').filter((p) => {
    if (namespaceOf(p) !== to.namespace) return false;
    const types = strs(at(p.doc, 'spec.policyTypes'));
    const ingress = types.length === 0 || types.includes('Ingress');
    return ingress && selectorMatches(obj(at(p.doc, 'spec.podSelector')), to.labels);
  });
  if (selecting.length === 0) return true;
  return selecting.some((p) =>
    arr(at(p.doc, 'spec.ingress'))
      .map(obj)
      .some((rule) => {
        const peers = rule.from === undefined ? undefined : arr(rule.from).map(obj);
        const fromOk = peers === undefined || peers.length === 0 || peers.some((peer) => peerMatches(peer, namespaceOf(p), from));
        return fromOk && portMatches(rule.ports === undefined ? undefined : arr(rule.ports), port);
      }),
  );
}

/**
 * The labels of the pods that deliver Trigger events, by Broker class: knative/eventing's MT Broker filter
 * (config/brokers/mt-channel-broker/deployments/broker-filter.yaml, eventing.knative.dev/brokerRole: filter) and
 * knative-extensions/eventing-kafka-broker's dispatcher (data-plane/config/broker/500-dispatcher.yaml,
 * app: kafka-broker-dispatcher).
 */
export const BROKER_DISPATCHER_POD_LABELS: Readonly<Record<string, Record<string, string>>> = {
  MTChannelBasedBroker: { 'eventing.knative.dev/brokerRole': 'filter' },
  Kafka: { app: 'kafka-broker-dispatcher' },
};

/** Queue-proxy's ports on every revision pod (knative/serving pkg/networking/constants.go). */
export const QUEUE_PROXY = { http: 8012, h2c: 8013, autoscalerMetrics: 9090 } as const;

function peerOf(m: Manifest): Peer {
  return { namespace: namespaceOf(m), labels: podLabels(m) };
}

function containerPorts(m: Manifest): number[] {
  return arr(at(m.doc, 'spec.template.spec.containers')).flatMap((c) => arr(obj(c).ports).map((p) => obj(p).containerPort)).filter((p): p is number => typeof p === 'number');
}

/**
 * The flows the system needs are admitted and a few that must not happen are refused: Knative's data planes
 * (knative-eventing, knative-serving) and the local gateway (istio-system) reach every Knative Service on queue-proxy's
 * ports, the autoscaler its metrics; every Redis client reaches Redis; every workload reaches the collector; the
 * collector's first tier reaches its sampling tier; and in dev the runtime callers reach the simulator and the
 * sampling tier Jaeger. Refused: any
 * other namespace to Redis, the functions or the collector; Knative's namespaces to Redis; the collector to Redis;
 * anyone to the deadline engine or the idle checker (they serve only the kubelet).
 */
export function checkNetworkPolicies(ms: readonly Manifest[]): string[] {
  const problems: string[] = [];
  const policies = ofKind(ms, 'NetworkPolicy', 'networking.k8s.io');
  const denyAll = policies.some((p) => namespaceOf(p) === NAMESPACE && Object.keys(obj(at(p.doc, 'spec.podSelector'))).length === 0 && arr(at(p.doc, 'spec.ingress')).length === 0);
  if (!denyAll) problems.push(`${NAMESPACE} has no default-deny ingress NetworkPolicy`);
  const ns = (name: string, labels: Record<string, string> = {}): Peer => ({ namespace: name, labels });
  const must = (from: Peer, to: Manifest | Peer, port: number, what: string) => {
    const target = 'doc' in to ? peerOf(to) : to;
    if (!networkAllows(ms, from, target, port)) problems.push(`NetworkPolicies refuse ${what} (port ${port})`);
  };
  const mustNot = (from: Peer, to: Manifest, port: number, what: string) => {
    if (networkAllows(ms, from, peerOf(to), port)) problems.push(`NetworkPolicies admit ${what} (port ${port})`);
  };
  const stranger = ns('default', { app: 'curl' });
  const knativeServices = ofKind(ms, 'Service', 'serving.knative.dev');
  // The pods that deliver Trigger events, by each rendered Broker's class.
  const dataPlanes = ofKind(ms, 'Broker', 'eventing.knative.dev').map((b) => ns('knative-eventing', BROKER_DISPATCHER_POD_LABELS[brokerClassOf(b)] ?? {}));
  for (const svc of knativeServices) {
    const fn = nameOf(svc);
    for (const port of [QUEUE_PROXY.http, QUEUE_PROXY.h2c]) {
      for (const dp of dataPlanes) must(dp, svc, port, `the Broker's data plane to ${fn}`);
      must(ns('knative-serving', { app: 'activator' }), svc, port, `the activator to ${fn}`);
      must(ns('istio-system', { istio: 'ingressgateway' }), svc, port, `the Knative local gateway to ${fn}`);
    }
    must(ns('knative-serving', { app: 'autoscaler' }), svc, QUEUE_PROXY.autoscalerMetrics, `the autoscaler's scrape of ${fn}`);
    mustNot(stranger, svc, QUEUE_PROXY.http, `another namespace to ${fn}`);
  }
  const redis = find(ms, 'StatefulSet', 'redis');
  const workloads = [...knativeServices, ...ofKind(ms, 'Deployment', 'apps'), ...ofKind(ms, 'StatefulSet', 'apps')];
  if (redis) {
    for (const w of workloads.filter((x) => obj(at(x.doc, 'metadata.labels'))['sessionreaper.dev/redis-client'] === 'true')) must(peerOf(w), redis, 6379, `${nameOf(w)} to Redis`);
    mustNot(stranger, redis, 6379, 'another namespace to Redis');
    for (const dp of dataPlanes) mustNot(dp, redis, 6379, 'knative-eventing to Redis');
    const collectorPod = find(ms, 'Deployment', 'otel-collector');
    if (collectorPod) mustNot(peerOf(collectorPod), redis, 6379, 'the collector to Redis');
  }
  const collector = find(ms, 'Deployment', 'otel-collector');
  if (!collector) problems.push('the collector is not deployed');
  else {
    for (const w of workloads.filter((x) => x !== collector)) for (const port of [4317, 4318]) must(peerOf(w), collector, port, `${nameOf(w)} to the collector`);
    mustNot(stranger, collector, 4317, 'another namespace to the collector');
    const sampler = find(ms, 'Deployment', 'otel-sampler');
    if (sampler) {
      must(peerOf(collector), sampler, 4317, 'the collector to its sampling tier');
      mustNot(stranger, sampler, 4317, 'another namespace to the sampling tier');
    }
  }
  for (const name of Object.keys(LONG_RUNNING)) {
    const d = find(ms, 'Deployment', name);
    if (!d) continue;
    for (const port of containerPorts(d)) {
      mustNot(ns('knative-serving', { app: 'activator' }), d, port, `knative-serving to ${name}`);
      mustNot(ns(NAMESPACE, { 'app.kubernetes.io/name': 'heartbeat-timeout' }), d, port, `heartbeat-timeout to ${name}`);
    }
  }
  const jaeger = find(ms, 'Deployment', 'jaeger');
  const exporter = find(ms, 'Deployment', 'otel-sampler');
  if (jaeger && exporter) must(peerOf(exporter), jaeger, 4317, 'the sampling tier to Jaeger');
  const sim = find(ms, 'Deployment', 'sim-gpu-runtime');
  if (sim) {
    const callers = ofKind(ms, 'Sidecar', 'networking.istio.io').filter((s) => obj(at(s.doc, 'metadata.labels'))['sessionreaper.dev/calls-gpu-runtimes'] === 'true');
    for (const sc of callers) {
      const selector = obj(at(sc.doc, 'spec.workloadSelector.labels'));
      const w = workloads.find((x) => Object.entries(selector).every(([k, v]) => podLabels(x)[k] === v));
      if (w) for (const port of containerPorts(sim)) must(peerOf(w), sim, port, `${nameOf(w)} to the simulated runtime`);
    }
  }
  return problems;
}
