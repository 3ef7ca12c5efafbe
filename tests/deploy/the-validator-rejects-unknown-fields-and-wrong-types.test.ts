// A validator that cannot fail proves nothing: each hand-broken manifest (fixtures/broken, defect marked
// `# BROKEN`, expected finding `# EXPECT:`) and each mutation of a real rendered document must be rejected,
// with the finding pointing at the defect.
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { REPO_ROOT, renderOverlay, setPointer, withChange } from './deployment-checks.ts';
import { SchemaRegistry, describe as describeManifest, formatIssues, parseManifests, upstreamSchemasDir, type Json } from './manifest-schemas.ts';

const registry = new SchemaRegistry(upstreamSchemasDir(REPO_ROOT));
const brokenDir = path.join(REPO_ROOT, 'tests', 'deploy', 'fixtures', 'broken');

interface Mutation {
  what: string;
  kind: string;
  name: string;
  /** The JSON pointer set to `value`, which the finding must name. */
  path: string;
  value: Json;
}

const MUTATIONS: Mutation[] = [
  { what: 'an unknown field in a Knative pod spec', kind: 'Service', name: 'gpu-release', path: '/spec/template/spec/priorityClass', value: 'x' },
  { what: 'a wrong type for containerConcurrency', kind: 'Service', name: 'destroy-dispatch', path: '/spec/template/spec/containerConcurrency', value: '16' },
  { what: 'a typo in a toleration (open in the CRD)', kind: 'Service', name: 'gpu-release', path: '/spec/template/spec/tolerations', value: [{ key: 'example.com/dedicated', operater: 'Exists' }] },
  { what: 'a non-string annotation', kind: 'Service', name: 'heartbeat-timeout', path: '/spec/template/metadata/annotations/autoscaling.knative.dev~1min-scale', value: 2 },
  { what: 'a typo in the probe', kind: 'Service', name: 'activity-score', path: '/spec/template/spec/containers/0/readinessProbe/httpGet/paths', value: '/' },
  { what: 'an unknown metadata field', kind: 'Trigger', name: 'gpu-release-gpu-release-requested', path: '/metadata/label', value: {} },
  { what: 'a wrong type in a delivery spec', kind: 'Broker', name: 'default', path: '/spec/delivery/retry', value: 'six' },
  { what: "a typo in the dead-letter receiver's claim template", kind: 'StatefulSet', name: 'dead-letters', path: '/spec/volumeClaimTemplates/0/spec/accessMode', value: ['ReadWriteOnce'] },
  { what: 'a numeric Istio timeout', kind: 'VirtualService', name: 'gpu-runtime', path: '/spec/http/0/timeout', value: 5 },
  { what: 'an unknown AuthorizationPolicy source field', kind: 'AuthorizationPolicy', name: 'gpu-release', path: '/spec/rules/0/from/0/source/principal', value: ['x'] },
  { what: 'an unknown DestinationRule pool field', kind: 'DestinationRule', name: 'gpu-runtimes', path: '/spec/trafficPolicy/connectionPool/http/maxRequests', value: 1 },
  { what: 'an unknown Deployment field', kind: 'Deployment', name: 'deadline-engine', path: '/spec/replica', value: 3 },
  { what: 'a wrong PeerAuthentication mode', kind: 'PeerAuthentication', name: 'default', path: '/spec/mtls/mode', value: 'STRICTER' },
];

void describe('the validator rejects unknown fields and wrong types', () => {
  const fixtures = readdirSync(brokenDir).filter((f) => f.endsWith('.yaml'));

  void it('has broken fixtures to run on', () => assert.ok(fixtures.length >= 5));

  for (const file of fixtures) {
    void it(`rejects fixtures/broken/${file}`, () => {
      const text = readFileSync(path.join(brokenDir, file), 'utf8');
      assert.match(text, /# BROKEN/, 'a broken fixture marks its defect');
      const expected = /^# EXPECT: (.+)$/m.exec(text)?.[1];
      assert.ok(expected, 'a broken fixture names the finding it expects');
      const issues = parseManifests(text, file).flatMap((m) => (m.doc.kind === 'Config' ? registry.validateSkaffold(m) : registry.validate(m)));
      assert.ok(issues.length > 0, `${file} was accepted`);
      assert.ok(
        issues.some((i) => i.message.includes(expected)),
        `expected "${expected}", got:\n${formatIssues(issues)}`,
      );
    });
  }

  const rendered = renderOverlay('prod');
  for (const m of MUTATIONS) {
    void it(`rejects ${m.what}`, () => {
      const original = rendered.find((r) => r.doc.kind === m.kind && describeManifest(r) === `${m.kind}/${m.name}`);
      assert.ok(original, `${m.kind}/${m.name} is rendered`);
      assert.deepEqual(registry.validate(original), [], 'the unmutated document is valid');
      const copy = withChange([original], m.kind, m.name, m.path, m.value)[0];
      assert.ok(copy);
      const issues = registry.validate(copy);
      assert.ok(
        // At the changed value or inside it (a mutation may add a whole subtree, e.g. a toleration list).
        issues.some((i) => i.path === m.path || i.path.startsWith(`${m.path}/`)),
        `expected a finding at ${m.path}, got:\n${formatIssues(issues)}`,
      );
    });
  }

  void it('rejects a skaffold.yaml with an unknown field in a profile', () => {
    const [config] = parseManifests(readFileSync(path.join(REPO_ROOT, 'skaffold.yaml'), 'utf8'), 'skaffold.yaml');
    assert.ok(config);
    const doc = structuredClone(config.doc);
    setPointer(doc, '/profiles/0/deploy', { kubectl: { hook: {} } });
    const issues = registry.validateSkaffold({ source: 'mutated', doc });
    assert.ok(issues.length > 0, 'the mutated skaffold.yaml was accepted');
  });
});
