import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, test } from 'node:test';
import { SpanKind } from '@opentelemetry/api';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace';
import { CloudEvent } from 'cloudevents';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { ConfigError } from './config.ts';
import { createEmitter, EventRejectedError, type Emitter } from './emit.ts';
import { createLogger } from './log.ts';
import { initTelemetry, withEventSpan, type Telemetry } from './telemetry.ts';

const UPSTREAM_TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const incoming = {
  id: 'in-1',
  type: 'dev.session-reaper.session.ended',
  source: '/gateway',
  subject: 'sess-7',
  traceparent: `00-${UPSTREAM_TRACE}-00f067aa0ba902b7-01`,
};

function followOn(extra: Record<string, string> = {}) {
  return new CloudEvent<unknown>({
    type: 'dev.session-reaper.session.destroy-requested',
    source: '/session-reaper/reaper',
    subject: 'sess-7',
    data: { sessionId: 'sess-7', incarnation: 2 },
    ...extra,
  });
}

const exporter = new InMemorySpanExporter();
let telemetry: Telemetry;
let sink: EventSink;
let emitter: Emitter;
let logLines: Record<string, unknown>[];

before(() => {
  telemetry = initTelemetry({ serviceName: 'emit-test', env: {}, exporter });
});
after(async () => {
  await telemetry.shutdown();
});
beforeEach(async () => {
  exporter.reset();
  sink = await startEventSink();
  logLines = [];
  const logger = createLogger({ service: 'emit-test', level: 'debug', destination: { write: (l: string) => void logLines.push(JSON.parse(l) as Record<string, unknown>) } });
  emitter = createEmitter({ sink: sink.url, timeoutMs: 2000, logger });
});
afterEach(async () => {
  emitter.shutdown();
  await sink.close();
});

test('the sink sees a binary-mode CloudEvent: ce-id, ce-type, ce-source, ce-subject and traceparent headers, data as the body', async () => {
  const ce = followOn();
  await withEventSpan(telemetry.tracer, 'handle', incoming, {}, () => emitter.emit(ce));
  const [got] = await sink.waitForEvents(1);
  assert.ok(got);
  assert.equal(got.headers['ce-id'], ce.id);
  assert.equal(got.headers['ce-type'], 'dev.session-reaper.session.destroy-requested');
  assert.equal(got.headers['ce-source'], '/session-reaper/reaper');
  assert.equal(got.headers['ce-subject'], 'sess-7');
  assert.equal(got.headers['ce-specversion'], '1.0');
  assert.match(String(got.headers['content-type']), /^application\/json/);
  assert.match(String(got.headers['ce-traceparent']), /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
  assert.match(String(got.headers.traceparent), /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
  assert.deepEqual(JSON.parse(got.body), { sessionId: 'sess-7', incarnation: 2 });
  assert.deepEqual(got.event.data, { sessionId: 'sess-7', incarnation: 2 });
  assert.equal(sink.requests.length, 1);
});

test('an event emitted while handling another carries a traceparent of the same trace, from a PRODUCER span', async () => {
  await withEventSpan(telemetry.tracer, 'handle', incoming, {}, () => emitter.emit(followOn()));
  const [got] = await sink.waitForEvents(1);
  await telemetry.forceFlush();
  const spans = exporter.getFinishedSpans();
  const consumer = spans.find((s) => s.kind === SpanKind.CONSUMER);
  const producer = spans.find((s) => s.kind === SpanKind.PRODUCER);
  assert.ok(consumer && producer && got);
  assert.equal(got.event.traceparent, `00-${UPSTREAM_TRACE}-${producer.spanContext().spanId}-01`);
  assert.equal(got.headers.traceparent, got.event.traceparent);
  assert.equal(producer.spanContext().traceId, UPSTREAM_TRACE);
  assert.equal(producer.parentSpanContext?.spanId, consumer.spanContext().spanId);
  assert.equal(producer.name, 'send dev.session-reaper.session.destroy-requested');
  assert.equal(producer.attributes['cloudevents.event_id'], got.event.id);
  assert.equal(producer.attributes['messaging.operation.type'], 'send');
  assert.equal(producer.attributes['http.response.status_code'], 202);
});

test('an event that already has a traceparent keeps it; only the HTTP hop carries the producer span', async () => {
  const own = '00-11111111111111111111111111111111-2222222222222222-01';
  await withEventSpan(telemetry.tracer, 'handle', incoming, {}, () => emitter.emit(followOn({ traceparent: own })));
  const [got] = await sink.waitForEvents(1);
  assert.equal(got?.event.traceparent, own);
  assert.match(String(got?.headers.traceparent), new RegExp(`^00-${UPSTREAM_TRACE}-`));
});

test('emitAll delivers every event', async () => {
  const events = [followOn(), followOn(), followOn()];
  await emitAll(events);
  const got = await sink.waitForEvents(3);
  assert.deepEqual(new Set(got.map((g) => g.event.id)), new Set(events.map((e) => e.id)));

  async function emitAll(ces: CloudEvent<unknown>[]) {
    await emitter.emitAll(ces);
  }
});

test('a 4xx other than 429 is not retried: EventRejectedError, logged with the event id', async () => {
  sink.failNext(1, 400);
  const ce = followOn();
  await assert.rejects(emitter.emit(ce), (err: unknown) => err instanceof EventRejectedError && err.status === 400 && err.eventId === ce.id);
  assert.equal(sink.requests.length, 1);
  const line = logLines.find((l) => l.level === 'error');
  assert.equal(line?.eventId, ce.id);
  assert.equal((line?.err as { type?: string } | undefined)?.type, 'EventRejectedError');
  assert.equal(emitter.breakerState(), 'closed');
});

test('creating an emitter without K_SINK, or with one that is not a URL, fails at once and says why', () => {
  const logger = createLogger({ service: 'emit-test', level: 'silent' });
  assert.throws(() => createEmitter({ sink: '', timeoutMs: 100, logger }), (err: unknown) => err instanceof ConfigError && /K_SINK is not set/.test(err.message));
  assert.throws(() => createEmitter({ sink: 'broker.local', timeoutMs: 100, logger }), (err: unknown) => err instanceof ConfigError && /K_SINK=/.test(err.message));
});
