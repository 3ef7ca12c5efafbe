// The alert and recording rules are valid Prometheus rules (promtool check rules), every alert's unit tests pass
// (promtool test rules), every alert has a firing test, a summary and a runbook section, and every metric a rule
// reads is in the catalogue or recorded by another rule.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { parse } from 'yaml';
import { havePromtool } from '../support/metrics.ts';
import { catalogueMetricOf, selectedNames } from '../support/promql.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const RULES_DIR = join(ROOT, 'infra', 'observability', 'rules');
const RULES = join(RULES_DIR, 'session-reaper.rules.yaml');
const RULE_TESTS = join(RULES_DIR, 'session-reaper.rules.test.yaml');

interface Rule { alert?: string; record?: string; expr: string; for?: string; labels?: Record<string, string>; annotations?: Record<string, string> }
const groups = (parse(readFileSync(RULES, 'utf8')) as { groups: { name: string; rules: Rule[] }[] }).groups;
const rules = groups.flatMap((g) => g.rules);
const alerts = rules.filter((r): r is Rule & { alert: string } => r.alert !== undefined);

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens. */
const anchorOf = (heading: string) => heading.trim().toLowerCase().replace(/[^a-z0-9 -]/g, '').replace(/ /g, '-');

test('promtool checks the rules and passes every alert unit test', (t) => {
  if (!havePromtool()) {
    t.skip('promtool is not installed: apt-get install prometheus (Debian) to run the alert unit tests; CI installs it');
    return;
  }
  const check = spawnSync('promtool', ['check', 'rules', RULES], { encoding: 'utf8' });
  assert.equal(check.status, 0, `${check.stdout}${check.stderr}`);
  const unit = spawnSync('promtool', ['test', 'rules', RULE_TESTS], { encoding: 'utf8', cwd: RULES_DIR });
  assert.equal(unit.status, 0, `${unit.stdout}${unit.stderr}`);
});

test('every alert has a unit test in which it fires, and one in which it stays quiet', () => {
  const doc = parse(readFileSync(RULE_TESTS, 'utf8')) as { tests: { alert_rule_test?: { alertname: string; exp_alerts: unknown[] }[] }[] };
  const cases = doc.tests.flatMap((g) => g.alert_rule_test ?? []);
  for (const a of alerts) {
    assert.ok(cases.some((c) => c.alertname === a.alert && c.exp_alerts.length > 0), `${a.alert} is tested firing`);
    assert.ok(cases.some((c) => c.alertname === a.alert && c.exp_alerts.length === 0), `${a.alert} is tested quiet`);
  }
});

test('every alert has a severity, a summary, a dashboard and a runbook section that exists', () => {
  const runbook = readFileSync(join(ROOT, 'docs', 'runbook.md'), 'utf8');
  const anchors = new Set([...runbook.matchAll(/^#{2,3} (.+)$/gm)].map((m) => anchorOf(m[1]!)));
  for (const a of alerts) {
    assert.match(a.labels?.severity ?? '', /^(page|ticket|warning)$/, `${a.alert} severity`);
    assert.ok((a.annotations?.summary ?? '').length > 20, `${a.alert} has a summary`);
    assert.match(a.annotations?.dashboard ?? '', /^\/d\/sessionreaper-[a-z-]+$/, `${a.alert} links a dashboard`);
    const url = a.annotations?.runbook_url ?? '';
    assert.match(url, /^docs\/runbook\.md#/, `${a.alert} links the runbook`);
    assert.ok(anchors.has(url.split('#')[1]!), `docs/runbook.md has the section ${url}`);
  }
});

test('every rule parses as PromQL and reads only catalogue metrics or recorded ones', () => {
  const recorded = new Set(rules.flatMap((r) => (r.record === undefined ? [] : [r.record])));
  for (const r of rules) {
    const names = selectedNames(r.expr);
    assert.ok(names.length > 0, `${r.alert ?? r.record} selects a metric`);
    for (const name of names) assert.ok(recorded.has(name) || catalogueMetricOf(name) !== undefined, `${r.alert ?? r.record} reads ${name}, which is in no catalogue`);
  }
});
