import assert from 'node:assert/strict';
import { after, before, beforeEach, test } from 'node:test';
import { SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace';
import {
  ATTR_SESSION_ID,
  contextFromEvent,
  initTelemetry,
  traceHeadersForActiveContext,
  withEventSpan,
  type Telemetry,
} from './telemetry.ts';

const UPSTREAM_TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const UPSTREAM_SPAN = '00f067aa0ba902b7';
const incoming = {
  id: 'evt-1',
  type: 'dev.session-reaper.session.ended',
  source: '/gateway',
  subject: 'sess-42',
  specversion: '1.0',
  traceparent: `00-${UPSTREAM_TRACE}-${UPSTREAM_SPAN}-01`,
  tracestate: 'vendor=opaque',
};

const exporter = new InMemorySpanExporter();
let telemetry: Telemetry;
before(() => {
  telemetry = initTelemetry({ serviceName: 'telemetry-test', env: {}, exporter });
});
after(async () => {
  await telemetry.shutdown();
});
beforeEach(() => exporter.reset());

async function finished() {
  await telemetry.forceFlush();
  return exporter.getFinishedSpans();
}

test('initialising telemetry twice in one process returns the first setup', () => {
  assert.equal(initTelemetry({ serviceName: 'another-name', env: {} }), telemetry);
  assert.equal(telemetry.serviceName, 'telemetry-test');
  assert.equal(telemetry.exporting, true);
});

test('a consumer span parented by an incoming event’s traceparent has the same trace id', async () => {
  const result = await withEventSpan(telemetry.tracer, 'handle session.ended', incoming, { [ATTR_SESSION_ID]: 'sess-42' }, (span) => {
    assert.equal(trace.getActiveSpan(), span, 'the consumer span is active inside the handler');
    return Promise.resolve('done');
  });
  assert.equal(result, 'done');
  const [span] = await finished();
  assert.ok(span);
  assert.equal(span.name, 'handle session.ended');
  assert.equal(span.kind, SpanKind.CONSUMER);
  assert.equal(span.spanContext().traceId, UPSTREAM_TRACE);
  assert.equal(span.parentSpanContext?.spanId, UPSTREAM_SPAN);
  assert.equal(span.parentSpanContext?.isRemote, true);
  assert.equal(span.attributes['cloudevents.event_id'], 'evt-1');
  assert.equal(span.attributes['cloudevents.event_type'], 'dev.session-reaper.session.ended');
  assert.equal(span.attributes['cloudevents.event_source'], '/gateway');
  assert.equal(span.attributes['cloudevents.event_subject'], 'sess-42');
  assert.equal(span.attributes['messaging.operation.type'], 'process');
  assert.equal(span.attributes['session.id'], 'sess-42');
  assert.equal(span.resource.attributes['service.name'], 'telemetry-test');
  assert.equal(span.instrumentationScope.name, 'session-reaper');
});

test('inside the consumer span the context to put on follow-on events continues the same trace and tracestate', async () => {
  const { headers, spanId } = await withEventSpan(telemetry.tracer, 'handle', incoming, {}, (span) =>
    Promise.resolve({ headers: traceHeadersForActiveContext(), spanId: span.spanContext().spanId }),
  );
  assert.equal(headers.traceparent, `00-${UPSTREAM_TRACE}-${spanId}-01`);
  assert.equal(headers.tracestate, 'vendor=opaque');
});

test('a throw inside the consumer span is recorded as an exception with ERROR status, and rethrown', async () => {
  await assert.rejects(
    withEventSpan(telemetry.tracer, 'handle', incoming, {}, () => Promise.reject(new RangeError('redis down'))),
    RangeError,
  );
  const [span] = await finished();
  assert.equal(span?.status.code, SpanStatusCode.ERROR);
  assert.equal(span?.status.message, 'redis down');
  const exception = span?.events.find((e) => e.name === 'exception');
  assert.equal(exception?.attributes?.['exception.type'], 'RangeError');
  assert.equal(span?.ended, true);
});

test('an event without a traceparent starts a new trace, even when another span is active', async () => {
  const { traceparent: _tp, tracestate: _ts, ...untraced } = incoming;
  await telemetry.tracer.startActiveSpan('unrelated', async (outer) => {
    await withEventSpan(telemetry.tracer, 'handle', untraced, {}, () => Promise.resolve());
    outer.end();
  });
  const spans = await finished();
  const handled = spans.find((s) => s.name === 'handle');
  const outer = spans.find((s) => s.name === 'unrelated');
  assert.ok(handled && outer);
  assert.equal(handled.parentSpanContext, undefined);
  assert.notEqual(handled.spanContext().traceId, outer.spanContext().traceId);
  assert.notEqual(handled.spanContext().traceId, UPSTREAM_TRACE);
});

test('contextFromEvent yields no span context for a malformed traceparent', () => {
  assert.equal(trace.getSpanContext(contextFromEvent({ traceparent: 'not-a-traceparent' })), undefined);
  assert.equal(trace.getSpanContext(contextFromEvent({})), undefined);
  const ctx = trace.getSpanContext(contextFromEvent(incoming));
  assert.equal(ctx?.traceId, UPSTREAM_TRACE);
  assert.equal(ctx?.traceState?.get('vendor'), 'opaque');
});

test('outside any span there is no trace context to put on events', () => {
  assert.deepEqual(traceHeadersForActiveContext(), {});
});
