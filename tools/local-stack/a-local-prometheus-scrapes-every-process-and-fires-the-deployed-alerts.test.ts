// `npm start -- --prometheus`: the flag is checked, the local Prometheus scrapes each process it is given and loads
// the deployed rule file, and an alert fires on what it scraped (a process serving a ledger violation here); it
// stops on request and dies with its parent.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { parse } from 'yaml';
import { until } from '../../tests/support/until.ts';
import { parseStartFlags, UsageError } from './flags.ts';
import { prometheusConfig, prometheusInstalled, RULES_FILE, startLocalPrometheus } from './local-prometheus.ts';
import { freePort } from './redis-server.ts';

test('--prometheus takes port 9090 unless --prometheus-port says otherwise, and the port needs the flag', () => {
  assert.equal(parseStartFlags([]).prometheusPort, undefined);
  assert.equal(parseStartFlags(['--prometheus']).prometheusPort, 9090);
  assert.equal(parseStartFlags(['--prometheus', '--prometheus-port', '0']).prometheusPort, 0);
  assert.throws(() => parseStartFlags(['--prometheus-port', '9091']), UsageError);
  assert.throws(() => parseStartFlags(['--prometheus', '--prometheus-port', 'x']), UsageError);
});

test('the configuration scrapes each process as its own job and loads the deployed rules', () => {
  const config = parse(prometheusConfig({ 'deadline-engine': 'http://127.0.0.1:4001/metrics', 'gpu-release': 'http://127.0.0.1:4002/metrics' })) as {
    rule_files: string[]; scrape_configs: { job_name: string; metrics_path: string; static_configs: { targets: string[] }[] }[];
  };
  assert.deepEqual(config.rule_files, [RULES_FILE]);
  assert.deepEqual(config.scrape_configs.map((j) => [j.job_name, j.metrics_path, j.static_configs[0]!.targets]), [
    ['deadline-engine', '/metrics', ['127.0.0.1:4001']],
    ['gpu-release', '/metrics', ['127.0.0.1:4002']],
  ]);
});

test('a local Prometheus scrapes a process and fires the ledger alert on its violation', { skip: prometheusInstalled() ? false : 'prometheus is not installed (apt-get install prometheus)' }, async (t) => {
  const exposition = '# TYPE sessionreaper_ledger_violations gauge\nsessionreaper_ledger_violations 1\n# TYPE sessionreaper_deadline_engine_rounds_total counter\nsessionreaper_deadline_engine_rounds_total 42\n';
  const server = createServer((req, res) => res.writeHead(req.url === '/metrics' ? 200 : 404, { 'content-type': 'text/plain; version=0.0.4' }).end(exposition));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => server.close());
  const dir = mkdtempSync(join(tmpdir(), 'sr-prometheus-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const prometheus = await startLocalPrometheus({
    dir, host: '127.0.0.1', port: await freePort(), metricsUrls: { 'deadline-engine': `http://127.0.0.1:${(server.address() as AddressInfo).port}/metrics` }, readyTimeoutMs: 60_000,
  });
  t.after(() => prometheus.stop());
  const api = async <T>(path: string): Promise<T> => ((await (await fetch(`${prometheus.url}${path}`)).json()) as { data: T }).data;
  const groups = await api<{ groups: { name: string }[] }>('/api/v1/rules');
  assert.deepEqual(groups.groups.map((g) => g.name).sort(), ['sessionreaper.alerts', 'sessionreaper.recording'], 'the deployed rule file is loaded');
  await until('the ledger alert to fire', async () => {
    const { alerts } = await api<{ alerts: { labels: { alertname: string }; state: string }[] }>('/api/v1/alerts');
    return alerts.some((a) => a.labels.alertname === 'SessionReaperLedgerViolation' && a.state === 'firing');
  }, 90_000, 250);
  await prometheus.stop();
  assert.equal(await fetch(`${prometheus.url}/-/ready`).then(() => 'up', () => 'down'), 'down', 'stopped');
});
