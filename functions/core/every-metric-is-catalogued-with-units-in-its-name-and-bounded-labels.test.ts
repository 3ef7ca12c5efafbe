// The metric catalogue follows Prometheus conventions, labels nothing unbounded, puts bucket edges on the targets,
// and what one process records comes out as an exposition promtool accepts.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadMetricsSettings } from './config.ts';
import { initMetrics } from './metrics-provider.ts';
import { CATALOGUE, DESTROY_TARGET_SECONDS, DETECTION_TARGET_SECONDS, RECLAIM_TARGET_SECONDS, RUNTIME, SCRIPT_NAMES, type MetricSpec } from './metrics.ts';
import { loadScriptSources } from './redis/scripts.ts';
import { havePromtool, promtoolCheckMetrics, sumOf, TextReader } from '../../tests/support/metrics.ts';

const specs: MetricSpec[] = Object.values(CATALOGUE);

test('names carry the prefix, their unit and _total on counters, and no name is used twice', () => {
  assert.equal(new Set(specs.map((s) => s.name)).size, specs.length);
  for (const s of specs) {
    assert.match(s.name, /^sessionreaper_[a-z0-9_]+$/, s.name);
    assert.equal(s.name.endsWith('_total'), s.type === 'counter', `${s.name}: counters and only counters end in _total`);
    if (s.unit === 'seconds') assert.match(s.name, /_seconds(_total)?$/, s.name);
    if (s.unit === 'bytes') assert.match(s.name, /_bytes(_total)?$/, s.name);
    assert.ok(s.help.length > 20, `${s.name} has help`);
    assert.ok(s.recordedBy.length > 0, `${s.name} says who records it`);
  }
});

test('no label is a session id, tenant, node or URL, and each takes its values from a closed list', () => {
  for (const s of specs) {
    for (const [label, values] of Object.entries(s.labels)) {
      assert.ok(!/session|tenant|node|url|endpoint|host|id$/i.test(label), `${s.name} labels ${label}`);
      assert.ok(values === RUNTIME || (Array.isArray(values) && values.length > 0 && values.length <= 40), `${s.name}{${label}} is bounded`);
    }
  }
});

test('latency histograms have an edge exactly on their target', () => {
  assert.ok(CATALOGUE.detectionLag.buckets.includes(DETECTION_TARGET_SECONDS));
  assert.ok(CATALOGUE.destroyDuration.buckets.includes(DESTROY_TARGET_SECONDS));
  assert.ok(CATALOGUE.reclaimLatency.buckets.includes(RECLAIM_TARGET_SECONDS));
  for (const s of specs.filter((x) => x.type === 'histogram')) {
    const b = s.buckets ?? [];
    assert.ok(b.length > 3 && b.every((v, i) => i === 0 || v > b[i - 1]!), `${s.name} has increasing edges`);
  }
});

test('the metrics settings are the standard variables, checked naming the variable', () => {
  assert.deepEqual([...loadMetricsSettings({}).readers], ['otlp']);
  assert.deepEqual([...loadMetricsSettings({ OTEL_METRICS_EXPORTER: 'otlp, prometheus' }).readers].sort(), ['otlp', 'prometheus']);
  assert.equal(loadMetricsSettings({ OTEL_METRICS_EXPORTER: 'none' }).readers.size, 0);
  assert.equal(loadMetricsSettings({ OTEL_METRIC_EXPORT_INTERVAL: '5000' }).OTEL_METRIC_EXPORT_INTERVAL, 5000);
  assert.throws(() => loadMetricsSettings({ OTEL_METRICS_EXPORTER: 'statsd' }), /OTEL_METRICS_EXPORTER/);
  assert.throws(() => loadMetricsSettings({ OTEL_METRICS_EXPORTER: 'none,otlp' }), /OTEL_METRICS_EXPORTER/);
  assert.throws(() => loadMetricsSettings({ OTEL_METRIC_EXPORT_INTERVAL: 'soon' }), /OTEL_METRIC_EXPORT_INTERVAL/);
});

test('what a process records is exposed under the catalogue names, each process its own series, and promtool accepts it', async (t) => {
  const reader = new TextReader();
  const metrics = initMetrics({ serviceName: 'destroy-dispatch', runtimes: ['sim'], reader, env: {} });
  t.after(() => metrics.shutdown());
  const m = metrics.instruments;
  const closedOk = m.eventsProcessed.cell('session.closed', '2xx');
  closedOk.add();
  closedOk.add();
  m.eventsProcessed.add(1, 'not.a.type', '4xx');
  m.destroys.add(3, 'closed', 'destroyed');
  m.destroyDuration.record(0.012, 'closed');
  m.destroyDuration.record(0.4, 'closed');
  const gpuReader = new TextReader();
  const gpu = initMetrics({ serviceName: 'gpu-release', runtimes: ['sim'], reader: gpuReader, env: {} });
  t.after(() => gpu.shutdown());
  gpu.instruments.releaseRequests.add(1, 'sim', 'released');
  gpu.instruments.releaseRequests.add(1, 'http://10.0.0.1:8081', 'released');
  const gpuText = await gpuReader.text();
  assert.equal(sumOf(gpuText, 'sessionreaper_gpu_release_requests_total', { runtime: 'sim' }), 1);
  assert.equal(sumOf(gpuText, 'sessionreaper_gpu_release_requests_total', { runtime: 'other' }), 1, 'a URL never becomes a label value');
  assert.doesNotMatch(gpuText, /10\.0\.0\.1/);

  const text = await reader.text();
  assert.equal(sumOf(text, 'sessionreaper_events_processed_total', { type: 'session.closed', outcome: '2xx' }), 2);
  assert.equal(sumOf(text, 'sessionreaper_events_processed_total', { type: 'other', outcome: '4xx' }), 1, 'an unknown type is recorded as other');
  assert.equal(sumOf(text, 'sessionreaper_destroys_total', { cause: 'closed', outcome: 'destroyed' }), 3);
  assert.equal(sumOf(text, 'sessionreaper_destroy_duration_seconds_bucket', { cause: 'closed', le: '0.018' }), 1);
  assert.equal(sumOf(text, 'sessionreaper_destroy_duration_seconds_count', { cause: 'closed' }), 2);
  assert.match(text, /service_instance_id="[0-9a-f-]{36}"/);
  assert.doesNotMatch(text, /sessionreaper_expiries_total/, 'a counter only the deadline engine moves is not reported by destroy-dispatch');

  if (!havePromtool()) {
    t.diagnostic('promtool is not installed (apt-get install prometheus): the exposition was not linted');
    return;
  }
  for (const exposition of [text, gpuText]) {
    const check = promtoolCheckMetrics(exposition);
    assert.equal(check.status, 0, check.output);
  }
});

test('the script label lists exactly the Lua scripts there are', () => {
  assert.deepEqual([...SCRIPT_NAMES].sort(), loadScriptSources().map((s) => s.name).sort());
});
