// Metrics reach Prometheus in every overlay: the functions and long-running parts push OTLP to the collector (the
// shared config names it and the otlp reader), the dead-letter receiver too, the collector's first tier has a metrics
// pipeline behind its memory limiter that remote-writes where its environment says, and the alert rules and
// dashboards ship byte for byte as tests/observability checked them.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { parse } from 'yaml';
import { loadMetricsSettings } from '../../functions/core/config.ts';
import { arr, at, nameOf, obj, ofKind, renderOverlay, str } from './deployment-checks.ts';

const OBSERVABILITY = join(import.meta.dirname, '..', '..', 'infra', 'observability');
const COLLECTOR = 'http://otel-collector.session-reaper.svc.cluster.local:4318';

for (const overlay of ['dev', 'prod']) {
  describe(`metrics in the ${overlay} overlay`, () => {
    const ms = renderOverlay(overlay);
    const configMap = (name: string) => ofKind(ms, 'ConfigMap', '').find((m) => nameOf(m) === name || nameOf(m).startsWith(`${name}-`));
    const data = (name: string) => obj(at(configMap(name)?.doc, 'data'));

    test('the functions and long-running parts push OTLP metrics to the collector', () => {
      const env = Object.fromEntries(Object.entries(data('session-reaper-config')).map(([k, v]) => [k, str(v) ?? '']));
      assert.equal(env.OTEL_EXPORTER_OTLP_ENDPOINT, COLLECTOR);
      assert.ok(loadMetricsSettings(env).readers.has('otlp'), 'OTEL_METRICS_EXPORTER names otlp');
      assert.ok(loadMetricsSettings(env).OTEL_METRIC_EXPORT_INTERVAL <= 30_000, 'several exports fit in the alerts\' shortest window');
    });

    test('the dead-letter receiver pushes its counter too', () => {
      const receiver = ofKind(ms, 'StatefulSet').find((m) => nameOf(m) === 'dead-letters');
      const vars = arr(at(receiver?.doc, 'spec.template.spec.containers.0.env')).map(obj);
      assert.equal(str(vars.find((v) => v.name === 'OTEL_EXPORTER_OTLP_METRICS_ENDPOINT')?.value), `${COLLECTOR}/v1/metrics`);
    });

    test("the collector's first tier has a metrics pipeline, memory-limited, remote-writing where its environment says", () => {
      const config = parse(str(data('otel-collector-config')['collector.yaml']) ?? '') as Record<string, unknown>;
      const pipeline = obj(at(config as never, 'service.pipelines.metrics'));
      assert.deepEqual(arr(pipeline.receivers), ['otlp']);
      assert.equal(arr(pipeline.processors)[0], 'memory_limiter');
      assert.deepEqual(arr(pipeline.exporters), ['prometheusremotewrite']);
      const endpoint = str(at(config as never, 'exporters.prometheusremotewrite.endpoint')) ?? '';
      const variable = /^\$\{env:([A-Z_]+)\}$/.exec(endpoint)?.[1];
      assert.ok(variable, `the remote-write endpoint comes from the environment: ${endpoint}`);
      assert.match(str(data('otel-collector-env')[variable]) ?? '', /^https?:\/\/.+\/api\/v1\/write$/);
      const collector = ofKind(ms, 'Deployment').find((m) => nameOf(m) === 'otel-collector');
      const envFrom = arr(at(collector?.doc, 'spec.template.spec.containers.0.envFrom')).map((e) => str(at(e, 'configMapRef.name')) ?? '');
      assert.ok(envFrom.some((n) => n.startsWith('otel-collector-env')), 'the first tier reads otel-collector-env');
    });

    test('the alert rules and dashboards ship exactly as tested', () => {
      assert.equal(data('session-reaper-alert-rules')['session-reaper.rules.yaml'], readFileSync(join(OBSERVABILITY, 'rules', 'session-reaper.rules.yaml'), 'utf8'));
      const dashboards = data('session-reaper-dashboards');
      for (const uid of ['overview', 'slos', 'ledger', 'runtimes', 'storm-guard'].map((d) => `sessionreaper-${d}`)) {
        assert.equal(dashboards[`${uid}.json`], readFileSync(join(OBSERVABILITY, 'dashboards', `${uid}.json`), 'utf8'), uid);
      }
    });
  });
}
