// What the rendered manifests do when a pod goes away, and how their containers run: every function and long-running
// part keeps a ready pod through a voluntary disruption (a node drain) and through a rollout; the long-running parts
// are restarted when wedged and never because Redis is down; the latency-critical engine is never CPU-throttled; and
// every third-party image is pinned, so a deploy runs what was tested. Each check returns the problems it found.
import { FUNCTIONS, LONG_RUNNING, at, ofKind, obj, type Obj } from './deployment-checks.ts';
import { describe, show, type Json, type Manifest } from './manifest-schemas.ts';

function named(ms: readonly Manifest[], kind: string, name: string): Manifest | undefined {
  return ms.find((m) => m.doc.kind === kind && at(m.doc, 'metadata.name') === name);
}

function selects(selector: Obj, labels: Obj): boolean {
  const entries = Object.entries(selector);
  return entries.length > 0 && entries.every(([k, v]) => labels[k] === v);
}

/** A count or percentage of `total` (an IntOrString), rounded as the disruption controller rounds it: up. */
function countOf(v: Json | undefined, total: number): number | undefined {
  if (typeof v === 'number') return v;
  if (typeof v === 'string' && /^\d+%$/.test(v)) return Math.ceil((Number(v.slice(0, -1)) / 100) * total);
  return undefined;
}

/**
 * The fewest pods left ready while the PodDisruptionBudgets selecting `labels` allow one more eviction, with
 * `replicas` pods all ready (Kubernetes' disruption controller: minAvailable, or replicas − maxUnavailable, pods must
 * stay healthy); undefined when no budget selects them, and `blocked` when the budget allows no eviction at all
 * (a drain would then hang).
 */
function afterEviction(ms: readonly Manifest[], labels: Obj, replicas: number): { left: number; blocked: boolean } | undefined {
  const budgets = ofKind(ms, 'PodDisruptionBudget', 'policy').filter((p) => selects(obj(at(p.doc, 'spec.selector.matchLabels')), labels));
  if (budgets.length === 0) return undefined;
  let mustStay = 0;
  for (const b of budgets) {
    const min = countOf(at(b.doc, 'spec.minAvailable'), replicas);
    const maxUnavailable = countOf(at(b.doc, 'spec.maxUnavailable'), replicas);
    mustStay = Math.max(mustStay, min ?? (maxUnavailable !== undefined ? replicas - maxUnavailable : replicas));
  }
  // A drain evicts every pod on its node as the budget allows: down to mustStay, if they all share the node.
  return { left: mustStay, blocked: mustStay >= replicas };
}

/**
 * Every function and long-running part can lose one pod without dropping below one ready replica: at least two
 * replicas (a function's min-scale; Knative keeps that many ready, knative/serving's KPA), a PodDisruptionBudget that
 * lets a drain evict one of them and keeps one ready, and for a Deployment a rollout that never takes the ready count
 * below one (maxUnavailable, default 25 % rounded down, against the replicas). A Knative Service's rollout keeps the old
 * revision serving until the new one is ready, so it needs no setting. `exemptReplicas` (the dev overlay: one node)
 * skips the replica counts and what depends on them.
 */
export function checkOneReadyThroughDisruption(ms: readonly Manifest[], opts: { exemptReplicas?: boolean } = {}): string[] {
  const problems: string[] = [];
  const workloads: { what: string; replicas: number | undefined; podLabels: Obj; deployment?: Manifest }[] = [];
  for (const fn of FUNCTIONS) {
    const svc = named(ms, 'Service', fn);
    if (!svc) continue;
    const min = Number(obj(at(svc.doc, 'spec.template.metadata.annotations'))['autoscaling.knative.dev/min-scale'] ?? 0);
    // Knative puts serving.knative.dev/service on every pod of the Service (knative/serving
    // pkg/reconciler/revision/resources/meta.go, makeLabels), beside the template's own labels.
    workloads.push({ what: `function ${fn}`, replicas: Number.isInteger(min) ? min : undefined, podLabels: { ...obj(at(svc.doc, 'spec.template.metadata.labels')), 'serving.knative.dev/service': fn } });
  }
  for (const name of Object.keys(LONG_RUNNING)) {
    const d = named(ms, 'Deployment', name);
    if (!d) continue;
    const replicas = at(d.doc, 'spec.replicas');
    workloads.push({ what: `Deployment ${name}`, replicas: typeof replicas === 'number' ? replicas : 1, podLabels: obj(at(d.doc, 'spec.template.metadata.labels')), deployment: d });
  }
  for (const w of workloads) {
    if (opts.exemptReplicas !== true && (w.replicas === undefined || w.replicas < 2)) {
      problems.push(`${w.what} runs ${show(w.replicas)} replica(s): losing one leaves none ready`);
      continue;
    }
    const replicas = Math.max(w.replicas ?? 1, 1);
    const eviction = afterEviction(ms, w.podLabels, replicas);
    if (!eviction) problems.push(`${w.what} has no PodDisruptionBudget: a drain may evict all its pods at once`);
    else if (opts.exemptReplicas !== true && eviction.blocked) problems.push(`${w.what}'s PodDisruptionBudget allows no eviction of its ${replicas} pods: a drain would hang`);
    else if (opts.exemptReplicas !== true && eviction.left < 1) problems.push(`${w.what} keeps ${eviction.left} ready pods through a drain`);
    if (w.deployment) {
      const strategy = obj(at(w.deployment.doc, 'spec.strategy'));
      if (strategy.type === 'Recreate') problems.push(`${w.what} is recreated on every rollout: all its pods stop together`);
      const maxUnavailable = at(strategy, 'rollingUpdate.maxUnavailable') ?? '25%';
      const down = typeof maxUnavailable === 'string' && maxUnavailable.endsWith('%') ? Math.floor((Number(maxUnavailable.slice(0, -1)) / 100) * replicas) : Number(maxUnavailable);
      if (opts.exemptReplicas !== true && replicas - down < 1) problems.push(`${w.what}'s rollout may stop ${down} of its ${replicas} pods at once`);
    }
  }
  return problems;
}

/**
 * The long-running parts are restarted when wedged, never because Redis is down: a liveness probe on /livez (the
 * worker's loop, functions/core/process-lifecycle.ts) on the health port, and neither probe on the deep check
 * (`?deep=1`, which pings Redis).
 */
export function checkProbes(ms: readonly Manifest[]): string[] {
  const problems: string[] = [];
  for (const w of [...FUNCTIONS.map((fn) => named(ms, 'Service', fn)), ...Object.keys(LONG_RUNNING).map((n) => named(ms, 'Deployment', n))]) {
    if (!w) continue;
    const container = obj((at(w.doc, 'spec.template.spec.containers') as Json[] | undefined)?.[0]);
    for (const probe of ['readinessProbe', 'livenessProbe', 'startupProbe']) {
      const path = at(container, `${probe}.httpGet.path`);
      if (typeof path === 'string' && /[?&]deep=/.test(path)) problems.push(`${describe(w)}'s ${probe} calls ${path}, which fails whenever Redis does`);
    }
    if (w.doc.kind !== 'Deployment') continue;
    const live = obj(container.livenessProbe);
    if (at(live, 'httpGet.path') !== '/livez') problems.push(`${describe(w)} has no liveness probe on /livez: a wedged loop is never restarted`);
    else if (at(live, 'httpGet.port') !== at(container, 'readinessProbe.httpGet.port')) problems.push(`${describe(w)}'s liveness probe calls another port than its health endpoint's`);
  }
  return problems;
}

/** The latency-critical parts: heartbeats and deadlines. */
export const LATENCY_CRITICAL = [
  { kind: 'Service', name: 'heartbeat-timeout' },
  { kind: 'Deployment', name: 'deadline-engine' },
] as const;

/**
 * The latency-critical parts are never CPU-throttled: no CPU limit (a CFS quota stalls a busy container for the rest
 * of each period even on an idle node), but a CPU request (their share, and what the scheduler places) and a memory
 * limit.
 */
export function checkLatencyCriticalResources(ms: readonly Manifest[]): string[] {
  const problems: string[] = [];
  for (const { kind, name } of LATENCY_CRITICAL) {
    const w = named(ms, kind, name);
    if (!w) continue;
    const resources = obj(obj((at(w.doc, 'spec.template.spec.containers') as Json[] | undefined)?.[0]).resources);
    if (at(resources, 'limits.cpu') !== undefined) problems.push(`${describe(w)} has a CPU limit (${show(at(resources, 'limits.cpu'))}): the kernel throttles it under load`);
    if (at(resources, 'requests.cpu') === undefined) problems.push(`${describe(w)} requests no CPU`);
    if (at(resources, 'limits.memory') === undefined) problems.push(`${describe(w)} has no memory limit`);
  }
  return problems;
}

/**
 * Whether an image reference names one exact build: a digest, or a tag with a full version (x.y.z, suffixes such as
 * -slim allowed). A bare name or a floating tag (7.4, latest, 24-slim) can change under an unchanged manifest.
 */
export function isPinned(image: string): boolean {
  if (/@sha256:[0-9a-f]{64}$/.test(image)) return true;
  const tag = /:([^/:@]+)$/.exec(image)?.[1];
  return tag !== undefined && /^v?\d+\.\d+\.\d+([-.+][\w.-]+)?$/.test(tag);
}

/**
 * Every third-party image (one that carries a registry or a tag: skaffold's own images are bare names, replaced with
 * built tags) is pinned. `skip` names images another part of the repository is replacing.
 */
export function checkPinnedImages(images: ReadonlyMap<string, readonly string[]>, skip: (image: string) => boolean = () => false): string[] {
  const problems: string[] = [];
  for (const [image, where] of images) {
    if (!/[/:.]/.test(image) || skip(image)) continue;
    if (!isPinned(image)) problems.push(`${where.join(', ')} run ${image}, which is not pinned to a version or digest`);
  }
  return problems;
}
