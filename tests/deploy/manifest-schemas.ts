// Validates Kubernetes manifests offline against the upstream schemas in tests/deploy/upstream/schemas, the way an
// API server with strict field validation (kubectl's default) would: unknown fields are errors, except under
// x-kubernetes-preserve-unknown-fields, and x-kubernetes-int-or-string accepts either. Where a CRD stubs out an
// embedded Kubernetes type with preserve-unknown-fields (Knative's pod spec behind feature flags, ContainerSource's
// template, JobSink's Job), that subtree is validated against the Kubernetes definition instead, so a typo there
// is caught too. CEL rules (x-kubernetes-validations) are not evaluated; they are counted (celRulesSkipped).
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import ajvFormats from 'ajv-formats';
import { parseAllDocuments } from 'yaml';

/** A JSON-ish value as parsed from YAML. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** One parsed manifest document and where it came from. */
export interface Manifest {
  /** File or rendering the document came from, for messages. */
  source: string;
  doc: Record<string, Json>;
}

/** One finding: which document, where in it, and what is wrong. */
export interface ManifestIssue {
  source: string;
  /** `Kind/name` of the document. */
  object: string;
  /** JSON pointer into the document. */
  path: string;
  message: string;
}

type SchemaNode = Record<string, unknown>;

// Which upstream directory holds the CRDs of an API group (matched on the group's suffix).
const CRD_DIRS: [string, string][] = [
  ['serving.knative.dev', 'knative-serving'],
  ['internal.knative.dev', 'knative-serving'],
  ['knative.dev', 'knative-eventing'],
  ['istio.io', 'istio'],
  ['gateway.networking.k8s.io', 'gateway-api'],
];

const K8S_SCHEMA_ID = 'kubernetes-definitions';
const OBJECT_META_REF = `${K8S_SCHEMA_ID}#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta`;

// Preserve-unknown subtrees of CRDs that are really a Kubernetes type, by `group/Kind` and dotted path.
const EMBEDDED_KUBERNETES_TYPES: Record<string, Record<string, string>> = {
  'serving.knative.dev/Service': { 'spec.template.spec': 'io.k8s.api.core.v1.PodSpec', 'spec.template.metadata': 'io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta' },
  'serving.knative.dev/Configuration': { 'spec.template.spec': 'io.k8s.api.core.v1.PodSpec', 'spec.template.metadata': 'io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta' },
  'serving.knative.dev/Revision': { spec: 'io.k8s.api.core.v1.PodSpec' },
  'sources.knative.dev/ContainerSource': { 'spec.template': 'io.k8s.api.core.v1.PodTemplateSpec' },
  'sinks.knative.dev/JobSink': { 'spec.job': 'io.k8s.api.batch.v1.Job' },
};

/**
 * The upstream projects' schemas and sample manifests, copied verbatim into the repository (provenance in
 * schemas/SOURCES.md, checksums in schemas/SHA256SUMS), so a fresh clone validates offline with nothing beside it.
 */
export function upstreamDir(repoRoot: string): string {
  return path.join(repoRoot, 'tests', 'deploy', 'upstream');
}

/** The upstream CRD and JSON schemas. */
export function upstreamSchemasDir(repoRoot: string): string {
  return path.join(upstreamDir(repoRoot), 'schemas');
}

/** Parses every YAML document of a text into manifests; empty documents are skipped, syntax errors thrown. */
export function parseManifests(text: string, source: string): Manifest[] {
  const out: Manifest[] = [];
  for (const d of parseAllDocuments(text)) {
    if (d.errors.length > 0) throw new Error(`${source}: ${d.errors.map((e) => e.message).join('; ')}`);
    const value = d.toJS() as Json;
    if (value === null || value === undefined) continue;
    if (typeof value !== 'object' || Array.isArray(value)) throw new Error(`${source}: a document is not a mapping`);
    out.push({ source, doc: value });
  }
  return out;
}

/** A value as text for messages: strings as they are, anything else as JSON. */
export function show(v: unknown): string {
  return typeof v === 'string' ? v : (JSON.stringify(v) ?? 'undefined');
}

/** `Kind/name` of a manifest, for messages. */
export function describe(m: Manifest): string {
  const meta = m.doc.metadata;
  const name = meta !== null && typeof meta === 'object' && !Array.isArray(meta) && typeof meta.name === 'string' ? meta.name : '?';
  return `${show(m.doc.kind)}/${name}`;
}

function isNode(v: unknown): v is SchemaNode {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

interface Shadow {
  /** Schema object of the Kubernetes definition at this point. */
  node: SchemaNode;
  /** `$ref` that reaches it from anywhere. */
  ref: string;
}

/** Schemas of every kind the project deploys, compiled on first use. */
export class SchemaRegistry {
  /** CEL rules seen in the schemas used so far and not evaluated. */
  celRulesSkipped = 0;
  private readonly ajv: Ajv;
  private readonly crds = new Map<string, SchemaNode>();
  private readonly kubernetesKinds = new Map<string, string>();
  private readonly k8sDefinitions: Record<string, SchemaNode>;
  private readonly compiled = new Map<string, ValidateFunction>();
  private readonly skaffoldDir: string;
  private readonly schemasDir: string;
  private readonly loadedDirs = new Set<string>();

  constructor(schemasDir: string) {
    this.skaffoldDir = path.join(schemasDir, 'skaffold');
    this.ajv = new Ajv({ strict: false, allErrors: true, logger: false, validateSchema: false });
    ajvFormats.default(this.ajv);
    // Kubernetes' OpenAPI formats. int32/int64 bound integers; the others are not checked by the API server.
    this.ajv.addFormat('int32', { type: 'number', validate: (n: number) => Number.isInteger(n) && n >= -(2 ** 31) && n < 2 ** 31 });
    this.ajv.addFormat('int64', { type: 'number', validate: (n: number) => Number.isSafeInteger(n) });
    for (const lenient of ['double', 'float', 'byte', 'int-or-string', 'quantity', 'duration', 'string', 'date']) this.ajv.addFormat(lenient, true);

    const k8s = JSON.parse(readFileSync(path.join(schemasDir, 'kubernetes', 'v1.32.2-standalone-strict-_definitions.json'), 'utf8')) as {
      definitions: Record<string, SchemaNode>;
    };
    this.k8sDefinitions = k8s.definitions;
    this.ajv.addSchema({ $id: K8S_SCHEMA_ID, definitions: k8s.definitions });
    for (const [name, def] of Object.entries(k8s.definitions)) {
      const gvks = def['x-kubernetes-group-version-kind'];
      if (!Array.isArray(gvks)) continue;
      for (const g of gvks as { group: string; version: string; kind: string }[]) {
        this.kubernetesKinds.set(`${g.group === '' ? '' : `${g.group}/`}${g.version}/${g.kind}`, name);
      }
    }
    this.schemasDir = schemasDir;
  }

  // CRD files are large (Istio's alone is ~1 MB of YAML): each directory is parsed only when a group needs it.
  private loadCrdsFor(group: string): void {
    const dir = CRD_DIRS.find(([suffix]) => group === suffix || group.endsWith(`.${suffix}`))?.[1];
    if (!dir || this.loadedDirs.has(dir)) return;
    this.loadedDirs.add(dir);
    for (const file of readdirSync(path.join(this.schemasDir, dir)).filter((f) => f.endsWith('.yaml'))) {
      const text = readFileSync(path.join(this.schemasDir, dir, file), 'utf8');
      // A few upstream files are git symlinks stored as their target path, not YAML mappings: skip those.
      if (!/^\s*(#.*\n\s*)*(apiVersion|kind|---)/m.test(text)) continue;
      for (const m of parseManifests(text, file)) {
        if (m.doc.kind !== 'CustomResourceDefinition') continue;
        const spec = m.doc.spec as { group: string; names: { kind: string }; versions: { name: string; served: boolean; schema?: { openAPIV3Schema: SchemaNode } }[] };
        for (const v of spec.versions) {
          if (v.served && v.schema) this.crds.set(`${spec.group}/${v.name}/${spec.names.kind}`, v.schema.openAPIV3Schema);
        }
      }
    }
  }

  /** Whether a schema exists for this apiVersion and kind. */
  knows(apiVersion: string, kind: string): boolean {
    this.loadCrdsFor(apiVersion.split('/')[0] ?? '');
    return this.crds.has(`${apiVersion}/${kind}`) || this.kubernetesKinds.has(`${apiVersion}/${kind}`);
  }

  /** Validates one manifest; no issues means the API server would accept its fields and types. */
  validate(m: Manifest): ManifestIssue[] {
    const { apiVersion, kind } = m.doc;
    if (typeof apiVersion !== 'string' || typeof kind !== 'string') {
      return [{ source: m.source, object: describe(m), path: '', message: 'apiVersion and kind must be strings' }];
    }
    const validate = this.validatorFor(apiVersion, kind);
    if (!validate) {
      return [{ source: m.source, object: describe(m), path: '', message: `no upstream schema for ${apiVersion} ${kind}` }];
    }
    return validate(m.doc) ? [] : toIssues(m, validate.errors ?? []);
  }

  /** Validates a skaffold.yaml document against the schema of the config version it names. */
  validateSkaffold(m: Manifest): ManifestIssue[] {
    const apiVersion = m.doc.apiVersion;
    const version = typeof apiVersion === 'string' ? apiVersion.replace(/^skaffold\//, '') : '';
    const key = `skaffold/${version}`;
    let validate = this.compiled.get(key);
    if (!validate) {
      let schema: SchemaNode;
      try {
        schema = JSON.parse(readFileSync(path.join(this.skaffoldDir, `${version}.json`), 'utf8')) as SchemaNode;
      } catch {
        return [{ source: m.source, object: 'skaffold', path: '/apiVersion', message: `no skaffold schema for ${show(apiVersion)}` }];
      }
      delete schema.$schema;
      validate = this.ajv.compile(schema);
      this.compiled.set(key, validate);
    }
    return validate(m.doc) ? [] : toIssues(m, validate.errors ?? []);
  }

  /** The newest skaffold config version among the upstream schemas (v4beta14 sorts after v4beta9). */
  newestSkaffoldVersion(): string {
    const rank = (v: string) => {
      const [, major, stage, n] = /^v(\d+)(alpha|beta)?(\d+)?$/.exec(v) ?? [];
      return Number(major) * 1e6 + (stage === undefined ? 9e5 : stage === 'beta' ? 5e5 : 0) + Number(n ?? 0);
    };
    const versions = readdirSync(this.skaffoldDir)
      .filter((f) => f.endsWith('.json'))
      .map((f) => f.slice(0, -5));
    return versions.sort((a, b) => rank(a) - rank(b)).at(-1) ?? '';
  }

  private validatorFor(apiVersion: string, kind: string): ValidateFunction | undefined {
    const key = `${apiVersion}/${kind}`;
    const cached = this.compiled.get(key);
    if (cached) return cached;
    let schema: SchemaNode | undefined;
    const k8sName = this.kubernetesKinds.get(key);
    if (k8sName) {
      schema = { $ref: `${K8S_SCHEMA_ID}#/definitions/${k8sName}` };
    } else {
      const group = apiVersion.split('/')[0] ?? '';
      this.loadCrdsFor(group);
      const crd = this.crds.get(key);
      if (!crd) return undefined;
      schema = this.convertRoot(crd, EMBEDDED_KUBERNETES_TYPES[`${group}/${kind}`] ?? {});
    }
    const validate = this.ajv.compile(schema);
    this.compiled.set(key, validate);
    return validate;
  }

  // Every custom resource also has apiVersion, kind and metadata, which the API server checks as ObjectMeta.
  private convertRoot(crd: SchemaNode, embedded: Record<string, string>): SchemaNode {
    const root = this.convert(crd, '', embedded, undefined);
    const properties = (root.properties as Record<string, SchemaNode> | undefined) ?? {};
    root.properties = { ...properties, apiVersion: { type: 'string' }, kind: { type: 'string' }, metadata: { $ref: OBJECT_META_REF } };
    root.required = [...new Set([...((root.required as string[] | undefined) ?? []), 'apiVersion', 'kind', 'metadata'])];
    return root;
  }

  private shadowFor(def: string): Shadow {
    const node = this.k8sDefinitions[def];
    if (!node) throw new Error(`no Kubernetes definition ${def}`);
    return { node, ref: `${K8S_SCHEMA_ID}#/definitions/${def}` };
  }

  private resolveShadow(node: unknown, ref: string): Shadow | undefined {
    if (!isNode(node)) return undefined;
    const target = node.$ref;
    if (typeof target === 'string') {
      const def = target.replace('#/definitions/', '');
      return this.k8sDefinitions[def] ? this.shadowFor(def) : undefined;
    }
    return { node, ref };
  }

  private shadowChild(shadow: Shadow | undefined, step: 'properties' | 'items' | 'additionalProperties', key?: string): Shadow | undefined {
    if (!shadow) return undefined;
    const container = shadow.node[step];
    if (step === 'properties') {
      if (!isNode(container) || key === undefined) return undefined;
      return this.resolveShadow(container[key], `${shadow.ref}/properties/${key.replace(/~/g, '~0').replace(/\//g, '~1')}`);
    }
    return this.resolveShadow(container, `${shadow.ref}/${step}`);
  }

  // Turns a structural CRD schema into a JSON schema with Kubernetes' pruning made strict.
  private convert(node: SchemaNode, at: string, embedded: Record<string, string>, shadow: Shadow | undefined): SchemaNode {
    const embeddedDef = embedded[at];
    if (embeddedDef) shadow = this.shadowFor(embeddedDef);
    const validations = node['x-kubernetes-validations'];
    if (Array.isArray(validations)) this.celRulesSkipped += validations.length;

    if (node['x-kubernetes-preserve-unknown-fields'] === true && shadow) return { $ref: shadow.ref };

    const out: SchemaNode = {};
    for (const k of ['enum', 'format', 'pattern', 'minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum', 'minLength', 'maxLength', 'minItems', 'maxItems', 'minProperties', 'maxProperties', 'required', 'uniqueItems', 'multipleOf']) {
      if (node[k] !== undefined) out[k] = node[k];
    }
    if (node['x-kubernetes-int-or-string'] === true) {
      out.anyOf = [{ type: 'integer' }, { type: 'string' }];
    } else if (typeof node.type === 'string') {
      out.type = node.nullable === true ? [node.type, 'null'] : node.type;
    }
    for (const combinator of ['oneOf', 'anyOf', 'allOf'] as const) {
      const branches = node[combinator];
      if (Array.isArray(branches)) {
        const converted = (branches as SchemaNode[]).map((b) => this.convertConstraint(b));
        out[combinator] = combinator === 'anyOf' && out.anyOf ? [...(out.anyOf as SchemaNode[]), ...converted] : converted;
      }
    }
    if (isNode(node.not)) out.not = this.convertConstraint(node.not);

    const properties = isNode(node.properties) ? (node.properties as Record<string, SchemaNode>) : undefined;
    if (properties) {
      const props: Record<string, SchemaNode> = {};
      for (const [k, child] of Object.entries(properties)) props[k] = this.convert(child, at === '' ? k : `${at}.${k}`, embedded, this.shadowChild(shadow, 'properties', k));
      if (node['x-kubernetes-embedded-resource'] === true) {
        props.apiVersion ??= { type: 'string' };
        props.kind ??= { type: 'string' };
        props.metadata ??= { $ref: OBJECT_META_REF };
      }
      out.properties = props;
    }
    if (isNode(node.items)) out.items = this.convert(node.items, `${at}[]`, embedded, this.shadowChild(shadow, 'items'));
    if (isNode(node.additionalProperties)) {
      out.additionalProperties = this.convert(node.additionalProperties, `${at}{}`, embedded, this.shadowChild(shadow, 'additionalProperties'));
    } else if (node.type === 'object' && node['x-kubernetes-preserve-unknown-fields'] !== true && node.additionalProperties !== true) {
      // Structural schemas prune what they do not declare; strict field validation turns that into an error.
      out.additionalProperties = false;
    }
    return out;
  }

  // Branches of oneOf/anyOf/not in a structural schema only constrain (required, enums); they add no fields.
  private convertConstraint(node: SchemaNode): SchemaNode {
    const out: SchemaNode = {};
    for (const [k, v] of Object.entries(node)) {
      if (k === 'properties' && isNode(v)) {
        out.properties = Object.fromEntries(Object.entries(v).map(([pk, pv]) => [pk, isNode(pv) ? this.convertConstraint(pv) : pv]));
      } else if ((k === 'anyOf' || k === 'oneOf' || k === 'allOf') && Array.isArray(v)) {
        out[k] = (v as SchemaNode[]).map((b) => this.convertConstraint(b));
      } else if ((k === 'not' || k === 'items') && isNode(v)) {
        out[k] = this.convertConstraint(v);
      } else if (!k.startsWith('x-kubernetes-') && k !== 'description') {
        out[k] = v;
      }
    }
    return out;
  }
}

function toIssues(m: Manifest, errors: ErrorObject[]): ManifestIssue[] {
  const seen = new Set<string>();
  const issues: ManifestIssue[] = [];
  for (const e of errors) {
    const params = e.params as Record<string, unknown>;
    const extra = typeof params.additionalProperty === 'string' ? ` (unknown field "${params.additionalProperty}")` : '';
    const where = typeof params.additionalProperty === 'string' ? `${e.instancePath}/${params.additionalProperty}` : e.instancePath;
    const message = `${e.message ?? 'invalid'}${extra}`;
    const key = `${where} ${message}`;
    if (seen.has(key)) continue;
    seen.add(key);
    issues.push({ source: m.source, object: describe(m), path: where, message });
  }
  return issues;
}

/** One line per issue, for assertion messages. */
export function formatIssues(issues: readonly ManifestIssue[]): string {
  return issues.map((i) => `${i.source}: ${i.object} ${i.path || '/'}: ${i.message}`).join('\n');
}
