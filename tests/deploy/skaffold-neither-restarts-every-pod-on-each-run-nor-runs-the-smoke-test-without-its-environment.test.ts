// skaffold's own transformations, re-enacted from its source (tests/deploy/skaffold-checks.ts): a `skaffold run` of any
// profile labels no pod template with its per-run id (so an unchanged deploy makes no new revision and rolls
// nothing), and the container `skaffold verify -p dev` really runs has every variable the smoke test reads.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { REPO_ROOT, applySkaffoldProfile, renderKustomization, skaffoldPlan, withChange } from './deployment-checks.ts';
import { RUN_ID_LABEL, checkNoPerRunLabels, checkVerifyEnvironment, skaffoldLabelRules, skaffoldRunLabels, withSkaffoldLabels } from './skaffold-checks.ts';
import { parseManifests, type Json, type Manifest } from './manifest-schemas.ts';

const skaffold = parseYaml(readFileSync(path.join(REPO_ROOT, 'skaffold.yaml'), 'utf8')) as Record<string, Json>;
const jobPath = 'tests/deploy/smoke-job.yaml';
const jobs = new Map([[jobPath, parseManifests(readFileSync(path.join(REPO_ROOT, jobPath), 'utf8'), jobPath)]]);
const PROFILES = ['dev', 'prod', 'prod-memorystore'];
const rendered = new Map(PROFILES.map((p) => [p, skaffoldPlan(applySkaffoldProfile(skaffold, p)).kustomizePaths.flatMap((k) => renderKustomization(k))]));

function manifestsOf(profile: string): Manifest[] {
  return rendered.get(profile) ?? [];
}

void describe('skaffold neither restarts every pod on each run nor runs the smoke test without its environment', () => {
  for (const profile of PROFILES) {
    void it(`${profile}: no pod template carries a per-run label`, () => {
      const rules = skaffoldLabelRules(applySkaffoldProfile(skaffold, profile));
      assert.deepEqual(checkNoPerRunLabels(manifestsOf(profile), rules), []);
    });
  }

  void it('skaffold still labels the objects themselves, so `kubectl get ksvc,deploy -L skaffold.dev/run-id` shows the last run', () => {
    const rules = skaffoldLabelRules(applySkaffoldProfile(skaffold, 'prod'));
    const labelled = withSkaffoldLabels(manifestsOf('prod'), rules, skaffoldRunLabels('run-1'));
    for (const [kind, name] of [['Service', 'gpu-release'], ['Deployment', 'deadline-engine'], ['StatefulSet', 'redis']]) {
      const m = labelled.find((x) => x.doc.kind === kind && (x.doc.metadata as { name?: string }).name === name);
      if (kind === 'StatefulSet' && !m) continue; // another helper may move Redis off a StatefulSet
      assert.equal((m?.doc.metadata as { labels?: Record<string, string> }).labels?.[RUN_ID_LABEL], 'run-1', `${kind}/${name}`);
    }
  });

  // The check must be able to fail: skaffold's defaults, and the resourceSelector this repo had, both label pod templates.
  void it('notices pod templates labelled per run under skaffold defaults or the old Knative selector', () => {
    const defaults = skaffoldLabelRules({});
    const problems = checkNoPerRunLabels(manifestsOf('prod'), defaults).join('\n');
    assert.match(problems, /Service\/gpu-release spec\.template changes on every skaffold run/);
    assert.match(problems, /Deployment\/deadline-engine spec\.template changes on every skaffold run/);
    const old = skaffoldLabelRules({ resourceSelector: { allow: [{ groupKind: 'Service.serving.knative.dev', image: ['.spec.template.spec.containers.*.image'], labels: ['.spec.template.metadata.labels'] }] } });
    assert.match(checkNoPerRunLabels(manifestsOf('prod'), old).join('\n'), /Service\/heartbeat-timeout spec\.template changes on every skaffold run \(its labels get skaffold\.dev\/run-id=run-1\)/);
  });

  void it('a deny entry would drop the kind from skaffold\'s allowlist, images included: the rules say so', () => {
    const rules = skaffoldLabelRules({ resourceSelector: { deny: [{ groupKind: 'Deployment.apps', labels: ['.spec.template.metadata.labels'] }] } });
    assert.equal(rules.allow.has('Deployment.apps'), false);
  });

  void it('dev: the container skaffold verify runs has every variable the smoke test reads', () => {
    assert.deepEqual(checkVerifyEnvironment(applySkaffoldProfile(skaffold, 'dev'), jobs), []);
  });

  void it('notices a verify container without a variable, or counting on the Job manifest\'s mounts', () => {
    const dev = applySkaffoldProfile(skaffold, 'dev');
    const without = structuredClone(dev);
    const container = ((without.verify as Json[])[0] as { container: { env: { name: string; value: string }[] } }).container;
    container.env = container.env.filter((e) => e.name !== 'BROKER_URL');
    assert.match(checkVerifyEnvironment(without, jobs).join('\n'), /does not set BROKER_URL, which tests\/deploy\/smoke\.ts reads/);

    const mounted = structuredClone(dev);
    ((mounted.verify as Json[])[0] as { container: { env: { name: string; value: string }[] } }).container.env.push({ name: 'SMOKE_TOKEN_FILE', value: '/var/run/secrets/session-reaper/broker/token' });
    assert.match(checkVerifyEnvironment(mounted, jobs).join('\n'), /reads \/var\/run\/secrets\/session-reaper\/broker\/token, but skaffold drops the Job's volumeMounts/);

    const noCredentials = new Map([[jobPath, withChange(jobs.get(jobPath) ?? [], 'Job', 'smoke-test', '/spec/template/spec/automountServiceAccountToken', false)]]);
    assert.match(checkVerifyEnvironment(dev, noCredentials).join('\n'), /Job\/smoke-test's pod does not automount its ServiceAccount credentials/);
  });
});
