// What skaffold itself does to the manifests and the verify Job, re-enacted from its source so the deploy tests can
// check the outcome rather than the configuration: which `metadata` blocks get its per-run labels (so no pod template
// changes on every run), and which container `skaffold verify` actually runs (so the smoke test has its environment).
// Each check returns the problems it found, one sentence each.
import type { Json, Manifest } from './manifest-schemas.ts';
import { describe } from './manifest-schemas.ts';
import { at, obj, type Obj } from './deployment-checks.ts';
import { SERVICE_ACCOUNT_DIR, SMOKE_VARIABLES } from './smoke.ts';

function strings(v: Json | undefined): string[] {
  return Array.isArray(v) ? v.filter((s): s is string => typeof s === 'string') : [];
}

/** The label skaffold sets to a new UUID on every run (pkg/skaffold/deploy/label/labeller.go, RunIDLabel). */
export const RUN_ID_LABEL = 'skaffold.dev/run-id';

/** The labels one `skaffold run` adds (labeller.go, DefaultLabeller.Labels with addSkaffoldLabels, the default). */
export function skaffoldRunLabels(runId: string): Record<string, string> {
  return { 'app.kubernetes.io/managed-by': 'skaffold', [RUN_ID_LABEL]: runId };
}

/** Per group/kind (`Kind` or `Kind.group`), the label paths of a skaffold ResourceFilter. */
export type LabelRules = { allow: Map<string, string[]>; deny: Map<string, string[]> };

// skaffold's defaults for the kinds that carry pod templates (pkg/skaffold/kubernetes/manifest/visitor.go,
// TransformAllowlist and TransformDenylist): labels ".*" means every `metadata` at any depth.
const DEFAULT_ALLOW = ['Pod', 'Service', 'DaemonSet.apps', 'Deployment.apps', 'ReplicaSet.apps', 'StatefulSet.apps', 'CronJob.batch', 'Job.batch', 'Service.serving.knative.dev'];
const DEFAULT_DENY: [string, string[]][] = [
  ['StatefulSet.apps', ['.spec.volumeClaimTemplates.metadata.labels']],
  ['Job.batch', ['.spec.template.metadata.labels']],
];

/**
 * The label rules skaffold applies for a config (one profile applied): the defaults, then each `resourceSelector`
 * entry replacing its kind's, an `allow` also dropping the kind's deny entry and a `deny` its allow entry
 * (pkg/skaffold/render/renderer/util/util.go, ConsolidateTransformConfiguration; ConvertJSONPathIndex drops `.*`
 * inside a path).
 */
export function skaffoldLabelRules(effective: Obj): LabelRules {
  const allow = new Map<string, string[]>(DEFAULT_ALLOW.map((gk) => [gk, ['.*']]));
  const deny = new Map<string, string[]>(DEFAULT_DENY);
  const convert = (paths: string[]) => paths.map((p) => (p === '.*' ? p : p.replaceAll('.*', '')));
  const selector = obj(effective.resourceSelector);
  for (const rf of (Array.isArray(selector.allow) ? selector.allow : []).map(obj)) {
    const gk = typeof rf.groupKind === 'string' ? rf.groupKind : '';
    allow.set(gk, convert(strings(rf.labels)));
    deny.delete(gk);
  }
  for (const rf of (Array.isArray(selector.deny) ? selector.deny : []).map(obj)) {
    const gk = typeof rf.groupKind === 'string' ? rf.groupKind : '';
    deny.set(gk, convert(strings(rf.labels)));
    allow.delete(gk);
  }
  return { allow, deny };
}

function groupKindOf(doc: Obj): string {
  const apiVersion = typeof doc.apiVersion === 'string' ? doc.apiVersion : '';
  const kind = typeof doc.kind === 'string' ? doc.kind : '';
  const group = apiVersion.includes('/') ? apiVersion.split('/')[0] : '';
  return group ? `${kind}.${group}` : kind;
}

/**
 * Which field of the block at `navpath` (reached by key `key`) takes the labels, if any: skaffold's allowByNavpath
 * (pkg/skaffold/kubernetes/manifest/labels.go). A deny path names a block that never takes them; ".*" allows every
 * `metadata`; any other allow path names one block and the field in it.
 */
function labelField(rules: LabelRules, gk: string, navpath: string, key: string): string | undefined {
  for (const denied of rules.deny.get(gk) ?? []) {
    if (denied === '.*') return undefined;
    const dot = denied.lastIndexOf('.');
    if (dot === -1) break;
    if (navpath === denied.slice(0, dot)) return undefined;
  }
  for (const allowed of rules.allow.get(gk) ?? []) {
    if (allowed === '.*') return key === 'metadata' ? 'labels' : undefined;
    const dot = allowed.lastIndexOf('.');
    if (dot === -1) continue;
    if (navpath === allowed.slice(0, dot)) return allowed.slice(dot + 1);
  }
  return undefined;
}

/**
 * The manifests as skaffold deploys them with `labels` added (ManifestList.SetLabels with the labelsSetter): every
 * field of a kind in the allowlist is visited, recursing into maps and lists (a list keeps its path), and a block
 * that takes labels gets those it lacks (existing labels are never overwritten) and is not descended into.
 */
export function withSkaffoldLabels(ms: readonly Manifest[], rules: LabelRules, labels: Record<string, string>): Manifest[] {
  return ms.map((m) => {
    const gk = groupKindOf(m.doc);
    if (!rules.allow.has(gk)) return m;
    const doc = structuredClone(m.doc);
    const visitFields = (navpath: string, value: Json | undefined): void => {
      if (Array.isArray(value)) value.forEach((v) => visitFields(navpath, v));
      else if (value !== null && typeof value === 'object') for (const [k, v] of Object.entries(value)) visit(`${navpath}.${k}`, k, v);
    };
    const visit = (navpath: string, key: string, value: Json): void => {
      const field = labelField(rules, gk, navpath, key);
      if (field === undefined) return visitFields(navpath, value);
      if (value === null || typeof value !== 'object' || Array.isArray(value)) return visitFields(navpath, value);
      const existing = value[field];
      if (existing === undefined) value[field] = { ...labels };
      else if (existing !== null && typeof existing === 'object' && !Array.isArray(existing)) for (const [k, v] of Object.entries(labels)) existing[k] ??= v;
    };
    visitFields('', doc);
    return { source: m.source, doc };
  });
}

/** Every pod template of a manifest, with where it is: Deployments, StatefulSets, Knative Services, Jobs, CronJobs, a JobSink's Job. */
export function podTemplates(m: Manifest): { where: string; template: Obj }[] {
  const found: { where: string; template: Obj }[] = [];
  for (const path of ['spec.template', 'spec.jobTemplate.spec.template', 'spec.job.spec.template']) {
    const t = at(m.doc, path);
    if (t !== undefined && obj(t).spec !== undefined) found.push({ where: `${describe(m)} ${path}`, template: obj(t) });
  }
  return found;
}

/**
 * No pod template takes a label that differs between runs, once skaffold's labelling rules for the profile are
 * applied: two runs label the manifests with different run ids, and any pod template that differs between them
 * would be a new Knative revision or a rollout on every deploy.
 */
export function checkNoPerRunLabels(ms: readonly Manifest[], rules: LabelRules): string[] {
  const first = withSkaffoldLabels(ms, rules, skaffoldRunLabels('run-1'));
  const second = withSkaffoldLabels(ms, rules, skaffoldRunLabels('run-2'));
  const problems: string[] = [];
  first.forEach((m, i) => {
    const other = second[i];
    if (!other) return;
    const a = podTemplates(m);
    const b = podTemplates(other);
    a.forEach((t, j) => {
      if (JSON.stringify(t.template) !== JSON.stringify(b[j]?.template)) {
        const labels = obj(at(t.template, 'metadata.labels'));
        problems.push(`${t.where} changes on every skaffold run (its labels get ${RUN_ID_LABEL}=${typeof labels[RUN_ID_LABEL] === 'string' ? labels[RUN_ID_LABEL] : '?'})`);
      }
    });
  });
  return problems;
}

/** The verify test cases of a config (one profile applied). */
function verifyCases(effective: Obj): Obj[] {
  return (Array.isArray(effective.verify) ? effective.verify : []).map(obj);
}

/**
 * The container `skaffold verify` runs for a test case whose Job comes from a manifest: the verify container itself,
 * in place of the manifest's (pkg/skaffold/verify/k8sjob/verify.go, createJobFromManifestPath), so only its name,
 * image, command, args and env; the host's environment is appended after (appendOSEnvIntoJob), and is nothing a
 * deploy may count on.
 */
export function verifyContainerRun(testCase: Obj): Obj {
  const c = obj(testCase.container);
  const run: Obj = {};
  for (const k of ['name', 'image', 'command', 'args', 'env']) if (c[k] !== undefined) run[k] = c[k];
  return run;
}

/**
 * Each verify test case whose Job runs the smoke test: the container skaffold runs sets every variable
 * tests/deploy/smoke.ts requires, runs `node tests/deploy/smoke.ts`, and a token file it names lies where the pod
 * really has one (only the pod's own ServiceAccount credentials reach a replaced container, and only when the Job's
 * pod automounts them).
 */
export function checkVerifyEnvironment(effective: Obj, jobs: ReadonlyMap<string, readonly Manifest[]>): string[] {
  const problems: string[] = [];
  for (const tc of verifyCases(effective)) {
    const name = typeof tc.name === 'string' ? tc.name : '?';
    const path = at(tc, 'executionMode.kubernetesCluster.jobManifestPath');
    const job = typeof path === 'string' ? jobs.get(path)?.find((m) => m.doc.kind === 'Job') : undefined;
    if (!job) {
      problems.push(`verify ${name} has no Job manifest to run in`);
      continue;
    }
    const run = verifyContainerRun(tc);
    const command = [...strings(run.command), ...strings(run.args)];
    if (JSON.stringify(command) !== JSON.stringify(['node', 'tests/deploy/smoke.ts'])) problems.push(`verify ${name} runs ${JSON.stringify(command)}, not node tests/deploy/smoke.ts`);
    const env = new Map((Array.isArray(run.env) ? run.env : []).map(obj).map((e) => [typeof e.name === 'string' ? e.name : '', e.value]));
    for (const v of SMOKE_VARIABLES.required) if (typeof env.get(v) !== 'string') problems.push(`verify ${name}'s container does not set ${v}, which tests/deploy/smoke.ts reads`);
    for (const v of env.keys()) {
      const known = [...SMOKE_VARIABLES.required, ...SMOKE_VARIABLES.optional, 'NODE_EXTRA_CA_CERTS', 'NODE_OPTIONS'] as string[];
      if (!known.includes(v)) problems.push(`verify ${name}'s container sets ${v}, which tests/deploy/smoke.ts does not read`);
    }
    const automount = at(job.doc, 'spec.template.spec.automountServiceAccountToken') === true;
    const files = [env.get('SMOKE_TOKEN_FILE'), env.get('NODE_EXTRA_CA_CERTS')].filter((f): f is string => typeof f === 'string');
    if (env.has('SMOKE_TOKEN_AUDIENCE')) files.push(`${SERVICE_ACCOUNT_DIR}/token`);
    for (const f of files) {
      if (!f.startsWith(`${SERVICE_ACCOUNT_DIR}/`)) problems.push(`verify ${name} reads ${f}, but skaffold drops the Job's volumeMounts: nothing mounts it`);
      else if (!automount) problems.push(`verify ${name} reads ${f}, but ${describe(job)}'s pod does not automount its ServiceAccount credentials`);
    }
  }
  return problems;
}
