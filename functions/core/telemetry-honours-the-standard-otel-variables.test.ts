import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace';
import { ConfigError } from './config.ts';
import { initTelemetry, otlpTracesConfigured, traceHeadersForActiveContext, withEventSpan, type Telemetry } from './telemetry.ts';

const UPSTREAM_TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const sampledEvent = { id: 'e', type: 't', source: '/s', traceparent: `00-${UPSTREAM_TRACE}-00f067aa0ba902b7-01` };
const rootEvent = { id: 'e', type: 't', source: '/s' };

let active: Telemetry | undefined;
afterEach(async () => {
  await active?.shutdown();
  active = undefined;
  delete process.env.OTEL_RESOURCE_ATTRIBUTES;
});

function init(env: NodeJS.ProcessEnv) {
  const exporter = new InMemorySpanExporter();
  active = initTelemetry({ serviceName: 'from-code', env, exporter });
  return { telemetry: active, exporter };
}

async function handle(telemetry: Telemetry, ev: typeof rootEvent) {
  const headers = await withEventSpan(telemetry.tracer, 'handle', ev, {}, () => Promise.resolve(traceHeadersForActiveContext()));
  await telemetry.forceFlush();
  return headers;
}

test('OTEL_SERVICE_NAME overrides the service name the code gives', async () => {
  const { telemetry, exporter } = init({ OTEL_SERVICE_NAME: 'from-env' });
  assert.equal(telemetry.serviceName, 'from-env');
  await handle(telemetry, rootEvent);
  assert.equal(exporter.getFinishedSpans()[0]?.resource.attributes['service.name'], 'from-env');
});

test('OTEL_RESOURCE_ATTRIBUTES adds resource attributes, and its service.name beats the code’s but not OTEL_SERVICE_NAME', async () => {
  process.env.OTEL_RESOURCE_ATTRIBUTES = 'deployment.environment.name=test,service.name=from-attributes';
  const first = init({});
  assert.equal(first.telemetry.serviceName, 'from-attributes');
  await handle(first.telemetry, rootEvent);
  const resource = first.exporter.getFinishedSpans()[0]?.resource.attributes;
  assert.equal(resource?.['deployment.environment.name'], 'test');
  assert.equal(resource?.['service.name'], 'from-attributes');
  await first.telemetry.shutdown();

  const second = init({ OTEL_SERVICE_NAME: 'from-env' });
  assert.equal(second.telemetry.serviceName, 'from-env');
});

test('OTEL_TRACES_SAMPLER=always_off records nothing, yet the incoming trace id still reaches follow-on events', async () => {
  const { telemetry, exporter } = init({ OTEL_TRACES_SAMPLER: 'always_off' });
  const headers = await handle(telemetry, sampledEvent);
  await telemetry.forceFlush();
  assert.equal(exporter.getFinishedSpans().length, 0);
  assert.match(headers.traceparent ?? '', new RegExp(`^00-${UPSTREAM_TRACE}-[0-9a-f]{16}-00$`));
});

test('parentbased_traceidratio with ratio 0 drops new traces but keeps those an upstream sampled', async () => {
  const { telemetry, exporter } = init({ OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0' });
  await handle(telemetry, rootEvent);
  await handle(telemetry, sampledEvent);
  await telemetry.forceFlush();
  const traceIds = exporter.getFinishedSpans().map((s) => s.spanContext().traceId);
  assert.deepEqual(traceIds, [UPSTREAM_TRACE]);
});

test('an unknown sampler or an out-of-range ratio stops start-up with an error naming the variable', () => {
  assert.throws(() => init({ OTEL_TRACES_SAMPLER: 'sometimes' }), (err: unknown) => err instanceof ConfigError && /OTEL_TRACES_SAMPLER=/.test(err.message));
  assert.throws(
    () => init({ OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '1.5' }),
    (err: unknown) => err instanceof ConfigError && /OTEL_TRACES_SAMPLER_ARG=/.test(err.message),
  );
  assert.equal(active, undefined, 'a rejected setting leaves nothing initialised');
  // and the next, valid, initialisation still works
  const { telemetry } = init({});
  assert.equal(telemetry.serviceName, 'from-code');
});

test('OTEL_SDK_DISABLED=true records and exports nothing but still passes an incoming trace context on', async () => {
  const { telemetry, exporter } = init({ OTEL_SDK_DISABLED: 'true' });
  assert.equal(telemetry.exporting, false);
  const headers = await handle(telemetry, sampledEvent);
  await telemetry.forceFlush();
  assert.equal(exporter.getFinishedSpans().length, 0);
  assert.equal(headers.traceparent, sampledEvent.traceparent);
});

test('without an OTLP endpoint nothing is exported, but spans are real so trace ids still propagate', async () => {
  active = initTelemetry({ serviceName: 'from-code', env: {} });
  assert.equal(active.exporting, false);
  const headers = await handle(active, rootEvent);
  assert.match(headers.traceparent ?? '', /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
  assert.doesNotMatch(headers.traceparent ?? '', /^00-0{32}/);
});

test('an OTLP endpoint turns exporting on, unless OTEL_TRACES_EXPORTER=none', () => {
  assert.equal(otlpTracesConfigured({}), false);
  assert.equal(otlpTracesConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' }), true);
  assert.equal(otlpTracesConfigured({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://collector:4318/v1/traces' }), true);
  assert.equal(otlpTracesConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_TRACES_EXPORTER: 'none' }), false);
  assert.throws(() => otlpTracesConfigured({ OTEL_TRACES_EXPORTER: 'zipkin' }), ConfigError);
  active = initTelemetry({ serviceName: 'from-code', env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9' } });
  assert.equal(active.exporting, true);
});

test('with nowhere to export, spans record nothing yet carry the same trace context the SDK would', async () => {
  const unsampledEvent = { ...sampledEvent, traceparent: `00-${UPSTREAM_TRACE}-00f067aa0ba902b7-00`, tracestate: 'vendor=1' };
  for (const [env, expectRoot] of [[{}, '01'], [{ OTEL_TRACES_SAMPLER: 'always_off' }, '00'], [{ OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0' }, '00']] as const) {
    active = initTelemetry({ serviceName: 'from-code', env });
    assert.equal(active.exporting, false);
    let recording: boolean | undefined;
    const continued = await withEventSpan(active.tracer, 'handle', sampledEvent, {}, (span) => {
      recording = span.isRecording();
      return Promise.resolve(traceHeadersForActiveContext());
    });
    assert.equal(recording, false);
    const [, traceId, spanId, flags] = (continued.traceparent ?? '').split('-');
    assert.equal(traceId, UPSTREAM_TRACE, JSON.stringify(env));
    assert.match(spanId ?? '', /^[0-9a-f]{16}$/);
    assert.notEqual(spanId, '00f067aa0ba902b7', 'a span of its own, not the parent');
    const sampledKept = env === undefined || !('OTEL_TRACES_SAMPLER' in env) || env.OTEL_TRACES_SAMPLER.startsWith('parentbased');
    assert.equal(flags, sampledKept ? '01' : '00', JSON.stringify(env));

    const unsampled = await withEventSpan(active.tracer, 'handle', unsampledEvent, {}, () => Promise.resolve(traceHeadersForActiveContext()));
    assert.match(unsampled.traceparent ?? '', new RegExp(`^00-${UPSTREAM_TRACE}-[0-9a-f]{16}-00$`));
    assert.equal(unsampled.tracestate, 'vendor=1');

    const root = await withEventSpan(active.tracer, 'handle', rootEvent, {}, () => Promise.resolve(traceHeadersForActiveContext()));
    assert.match(root.traceparent ?? '', new RegExp(`^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-${expectRoot}$`), JSON.stringify(env));
    await active.shutdown();
    active = undefined;
  }
});
