// The status page's reading of the Prometheus text format and the figures it works out of it: every sample of a real
// exposition (the catalogue's, serialized by exporter-prometheus) read back with its labels and value, escapes and
// special values included; bucket shares and quantiles as PromQL reads them; every alert of the deployed rule file
// listed, and said to be unevaluated when no Prometheus runs.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { MeterProvider } from '@opentelemetry/sdk-metrics';
import { createInstruments } from '../../functions/core/metrics.ts';
import { samples as referenceSamples, TextReader } from '../../tests/support/metrics.ts';
import { ExpositionError, parseExposition } from './exposition.ts';
import { alertsOfRuleFile, alertsView, figuresOf, histogram, quantile, RULES_FILE, shareWithin, type Scrape } from './status-figures.ts';
import { renderStatusPage } from './status-page.ts';
import { CATALOGUE } from '../../functions/core/metrics.ts';

describe('reading the text exposition', () => {
  test('every sample of an exposition the catalogue serializes is read back with its labels and value', async () => {
    const reader = new TextReader();
    const provider = new MeterProvider({ readers: [reader] });
    const m = createInstruments(provider.getMeter('t'), ['sim']);
    m.destroys.add(3, 'closed', 'destroyed');
    m.destroyDuration.record(0.004, 'closed');
    m.destroyDuration.record(0.5, 'closed');
    m.stormGuardQueueWait.record(0);
    const text = await reader.text();
    const read = parseExposition(text);
    // tests/support/metrics.ts's reader of the same text, which the e2e metrics test trusts, agrees sample by sample.
    assert.deepEqual(read.map((s) => ({ ...s, labels: { ...s.labels } })), referenceSamples(text));
    assert.equal(read.find((s) => s.name === 'sessionreaper_destroys_total' && s.labels.cause === 'closed' && s.labels.outcome === 'destroyed')?.value, 3);
    const h = histogram([{ process: 'p', url: '', samples: read }], CATALOGUE.destroyDuration);
    assert.equal(h.count, 2);
    assert.equal(h.buckets.at(-1)?.le, Infinity);
    await provider.shutdown();
  });

  test('escapes in label values, +Inf, NaN, timestamps and comments are read as the format says', () => {
    const read = parseExposition([
      '# HELP x_total a help line with "quotes"',
      '# TYPE x_total counter',
      'x_total{path="a\\\\b",quote="say \\"hi\\"",nl="1\\n2"} 7 1712345678000',
      'y_bucket{le="+Inf"} +Inf',
      'z NaN',
      '  w{a="1",} -3.5e-3  ',
      '',
    ].join('\n'));
    assert.deepEqual(read[0], { name: 'x_total', labels: { path: 'a\\b', quote: 'say "hi"', nl: '1\n2' }, value: 7 });
    assert.equal(read[1]!.value, Infinity);
    assert.ok(Number.isNaN(read[2]!.value));
    assert.deepEqual(read[3], { name: 'w', labels: { a: '1' }, value: -0.0035 });
  });

  test('a line that is no sample is refused, naming it', () => {
    assert.throws(() => parseExposition('<html>'), ExpositionError);
    assert.throws(() => parseExposition('x{a="1"'), /unterminated|expected/);
    assert.throws(() => parseExposition('x 12abc'), /not a sample value/);
  });
});

describe('the figures of the page', () => {
  const scrape = (process: string, text: string): Scrape => ({ process, url: `http://127.0.0.1/${process}`, samples: parseExposition(text) });
  const engine = scrape('deadline-engine', [
    'sessionreaper_sessions{state="active"} 5', 'sessionreaper_sessions{state="destroying"} 1', 'sessionreaper_sessions{state="release_failed"} 0',
    'sessionreaper_gpu_held_bytes 1024', 'sessionreaper_storm_guard_queue_depth 2',
    'sessionreaper_detection_lag_seconds_bucket{le="0.005"} 90', 'sessionreaper_detection_lag_seconds_bucket{le="0.01"} 99',
    'sessionreaper_detection_lag_seconds_bucket{le="0.05"} 100', 'sessionreaper_detection_lag_seconds_bucket{le="+Inf"} 100',
    'sessionreaper_detection_lag_seconds_count 100', 'sessionreaper_detection_lag_seconds_sum 0.4',
  ].join('\n'));
  const dispatch = (n: number) => scrape(`destroy-dispatch-${n}`, [
    'sessionreaper_destroys_total{cause="closed",outcome="destroyed"} 4', 'sessionreaper_destroys_total{cause="expired",outcome="destroyed"} 1',
    'sessionreaper_destroys_total{cause="closed",outcome="gave_up"} 1',
  ].join('\n'));
  const broker = scrape('local-broker', 'sessionreaper_dead_letters_total{type="session.closed",reason="http_5xx"} 2');

  test('counters are summed over processes, shared-state gauges taken once, histograms read at their target edge', () => {
    const f = figuresOf([engine, dispatch(1), dispatch(2), broker, { process: 'gpu-release', url: 'x', samples: [], error: 'ECONNREFUSED' }], 1000);
    assert.equal(f.sessions?.get('active'), 5);
    assert.equal(f.destroys.get('closed'), 8, 'two destroy-dispatch replicas, 4 each');
    assert.equal(f.destroys.get('expired'), 2);
    assert.equal(f.destroysGaveUp, 2);
    assert.equal(f.gpu.held, 1024);
    assert.equal(f.queueDepth, 2);
    assert.equal(f.deadLetters, 2);
    const lag = f.latencies.find((l) => l.title === 'detection lag')!;
    assert.equal(lag.count, 100);
    assert.equal(lag.withinTarget, 0.99);
    assert.deepEqual(f.scrapes.filter((s) => !s.ok).map((s) => s.process), ['gpu-release']);
  });

  test('quantiles are interpolated within their bucket as histogram_quantile does', () => {
    const h = histogram([engine], CATALOGUE.detectionLag);
    assert.equal(quantile(h, 0.5), 0.005 * (50 / 90));
    assert.ok(Math.abs(quantile(h, 0.99)! - 0.01) < 1e-12);
    assert.equal(shareWithin(h, 0.01), 0.99);
    assert.equal(quantile(histogram([], CATALOGUE.detectionLag), 0.5), undefined, 'no observations, no quantile');
  });

  test('without a Prometheus every alert of the deployed rule file is listed as not evaluated, with how to get it evaluated', async () => {
    const inFile = [...readFileSync(RULES_FILE, 'utf8').matchAll(/^\s*- alert: (\S+)/gm)].map((m) => m[1]);
    const listed = alertsOfRuleFile();
    assert.deepEqual(listed.map((a) => a.name), inFile);
    assert.ok(listed.every((a) => a.runbook.startsWith('docs/runbook.md#') && a.summary !== '' && a.severity !== ''));
    const view = await alertsView(undefined);
    assert.equal(view.evaluated, false);
    assert.match(view.note!, /npm start -- --prometheus/);
    assert.ok(view.alerts.every((a) => a.state === 'not evaluated'));
    const html = renderStatusPage({ figures: figuresOf([engine], 1000), history: [], alerts: view, restarts: {}, refreshS: 5 });
    for (const name of inFile) assert.match(html, new RegExp(`data-alert="${name}" data-state="not evaluated"`));
  });

  test('a Prometheus that does not answer is said so, and the alerts are still listed', async () => {
    const view = await alertsView('http://127.0.0.1:1', RULES_FILE, 1000);
    assert.equal(view.evaluated, false);
    assert.match(view.note!, /did not answer/);
    assert.equal(view.alerts.length, alertsOfRuleFile().length);
  });
});
