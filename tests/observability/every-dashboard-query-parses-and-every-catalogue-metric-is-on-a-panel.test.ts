// The dashboards are generated from code and checked in as JSON: the files are what the code writes, every query
// parses as PromQL, names only catalogue metrics (or recording rules), every catalogue metric is on some panel, and
// every alert's dashboard link names a dashboard that exists.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { parse } from 'yaml';
import { CATALOGUE, type MetricSpec } from '../../functions/core/metrics.ts';
import { buildDashboard, DASHBOARDS, queriesOf } from '../../tools/dashboards/dashboards.ts';
import { DASHBOARD_DIR, staleDashboardFiles } from '../../tools/dashboards/write-dashboards.ts';
import { catalogueMetricOf, selectedNames } from '../support/promql.ts';

const RULES = join(import.meta.dirname, '..', '..', 'infra', 'observability', 'rules', 'session-reaper.rules.yaml');
const rules = (parse(readFileSync(RULES, 'utf8')) as { groups: { rules: { record?: string; alert?: string; annotations?: Record<string, string> }[] }[] }).groups.flatMap((g) => g.rules);
const recorded = new Set(rules.flatMap((r) => (r.record === undefined ? [] : [r.record])));

// Grafana's macros are not PromQL: each stands for a duration when the query runs.
const asPromQL = (expr: string) => expr.replaceAll('$__rate_interval', '5m').replaceAll('$__interval', '1m');

test('the checked-in dashboards are exactly what `npm run dashboards` writes', async () => {
  assert.deepEqual(await staleDashboardFiles(), []);
});

test('every query of every dashboard parses and names only catalogue metrics or recording rules', () => {
  for (const spec of DASHBOARDS) {
    const model = JSON.parse(readFileSync(join(DASHBOARD_DIR, `${spec.uid}.json`), 'utf8')) as unknown;
    const queries = queriesOf(model);
    assert.ok(queries.length > 0, `${spec.uid} has queries`);
    for (const { panel, expr } of queries) {
      const names = selectedNames(asPromQL(expr));
      assert.ok(names.length > 0, `${spec.uid} / ${panel} selects a metric`);
      for (const name of names) assert.ok(recorded.has(name) || catalogueMetricOf(name) !== undefined, `${spec.uid} / ${panel} reads ${name}, which is in no catalogue`);
    }
  }
});

test('every catalogue metric is shown on some panel', () => {
  const shown = new Set(DASHBOARDS.flatMap((d) => queriesOf(buildDashboard(d))).flatMap((q) => selectedNames(asPromQL(q.expr))).map((n) => catalogueMetricOf(n)?.name));
  const missing = (Object.values(CATALOGUE) as MetricSpec[]).filter((s) => !shown.has(s.name)).map((s) => s.name);
  assert.deepEqual(missing, []);
});

test("every alert's dashboard link names a dashboard that exists", () => {
  const uids = new Set(DASHBOARDS.map((d) => d.uid));
  for (const a of rules.filter((r) => r.alert !== undefined)) {
    assert.ok(uids.has((a.annotations?.dashboard ?? '').replace('/d/', '')), `${a.alert} links ${a.annotations?.dashboard}`);
  }
});

test('the parser refuses what is not PromQL, so the checks above can fail', () => {
  assert.throws(() => selectedNames('sum(rate(x[5m])'), /does not parse/);
  assert.equal(catalogueMetricOf('sessionreaper_no_such_metric'), undefined);
  assert.equal(catalogueMetricOf('sessionreaper_detection_lag_seconds_bucket')?.name, 'sessionreaper_detection_lag_seconds');
});

test("the README's Metrics section lists every catalogue metric and every alert", () => {
  const readme = readFileSync(join(import.meta.dirname, '..', '..', 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## Metrics'), readme.indexOf('## Chaos run'));
  for (const s of Object.values(CATALOGUE) as MetricSpec[]) assert.ok(section.includes(`\`${s.name}\``), `the README describes ${s.name}`);
  for (const a of rules.filter((r) => r.alert !== undefined)) {
    assert.ok(section.includes(`\`${a.alert!}\``) || section.includes(`\`${a.alert!.replace(/Slow$/, '')}\``), `the README lists ${a.alert}`);
  }
});
