// Every overlay renders with `kubectl kustomize` and every document in it is accepted by the upstream Knative,
// Istio and Kubernetes schemas under strict field validation; skaffold.yaml and the smoke-test Job likewise.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { OVERLAYS, REPO_ROOT, renderOverlay } from './deployment-checks.ts';
import { SchemaRegistry, formatIssues, parseManifests, upstreamDir, upstreamSchemasDir } from './manifest-schemas.ts';

const registry = new SchemaRegistry(upstreamSchemasDir(REPO_ROOT));

void describe('every overlay renders and matches the upstream schemas', () => {
  for (const overlay of OVERLAYS) {
    void it(`knative/overlays/${overlay}`, () => {
      const manifests = renderOverlay(overlay);
      assert.ok(manifests.length > 30, `${overlay} rendered only ${manifests.length} documents`);
      const issues = manifests.flatMap((m) => registry.validate(m));
      assert.deepEqual(issues, [], formatIssues(issues));
    });
  }

  void it('skaffold.yaml uses the newest config version and matches its schema', () => {
    const [config] = parseManifests(readFileSync(path.join(REPO_ROOT, 'skaffold.yaml'), 'utf8'), 'skaffold.yaml');
    assert.ok(config);
    assert.equal(config.doc.apiVersion, `skaffold/${registry.newestSkaffoldVersion()}`);
    const issues = registry.validateSkaffold(config);
    assert.deepEqual(issues, [], formatIssues(issues));
  });

  void it('the smoke-test Job skaffold verify runs matches the Kubernetes schema', () => {
    const manifests = parseManifests(readFileSync(path.join(REPO_ROOT, 'tests', 'deploy', 'smoke-job.yaml'), 'utf8'), 'smoke-job.yaml');
    const issues = manifests.flatMap((m) => registry.validate(m));
    assert.deepEqual(issues, [], formatIssues(issues));
  });

  // The copies are the upstream files as published: a hand edit would let a manifest pass a schema no cluster has.
  void it('the upstream schema copies match their recorded checksums', () => {
    const dir = upstreamSchemasDir(REPO_ROOT);
    const sums = readFileSync(path.join(dir, 'SHA256SUMS'), 'utf8').trim().split('\n').map((line) => line.split(/\s+/) as [string, string]);
    assert.ok(sums.length > 40, `only ${sums.length} checksums`);
    const wrong = sums.filter(([sum, file]) => createHash('sha256').update(readFileSync(path.join(dir, file))).digest('hex') !== sum).map(([, file]) => file);
    assert.deepEqual(wrong, []);
  });

  // The validator is not stricter than the API servers: the upstream projects' own samples pass it.
  void it('accepts the upstream projects’ sample manifests', () => {
    const samples = path.join(upstreamDir(REPO_ROOT), 'samples');
    const files: string[] = [];
    const walk = (dir: string) => {
      for (const entry of readdirSync(dir)) {
        const p = path.join(dir, entry);
        if (statSync(p).isDirectory()) walk(p);
        else if (p.endsWith('.yaml') && !entry.includes('kustomization') && !entry.startsWith('skaffold')) files.push(p);
      }
    };
    walk(samples);
    assert.ok(files.length > 10);
    const issues = files.flatMap((f) => parseManifests(readFileSync(f, 'utf8'), path.relative(samples, f)).flatMap((m) => registry.validate(m)));
    assert.deepEqual(issues, [], formatIssues(issues));
  });
});
