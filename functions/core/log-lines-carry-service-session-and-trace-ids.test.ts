import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { context, ROOT_CONTEXT, trace } from '@opentelemetry/api';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace';
import { createLogger, logContext, withLogContext } from './log.ts';
import { initTelemetry, type Telemetry } from './telemetry.ts';

function capture(service = 'log-test', level = 'debug') {
  const lines: string[] = [];
  const logger = createLogger({ service, level, destination: { write: (line: string) => void lines.push(line) } });
  const records = () => lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  return { logger, lines, records };
}

let telemetry: Telemetry;
before(() => {
  telemetry = initTelemetry({ serviceName: 'log-test', env: {}, exporter: new InMemorySpanExporter() });
});
after(async () => {
  await telemetry.shutdown();
});

test('every line is one JSON object naming the service, a textual level and an ISO time', () => {
  const { logger, lines, records } = capture('session-reaper-test');
  logger.info({ answer: 42 }, 'hello');
  logger.debug('quiet');
  logger.trace('below the level');
  assert.equal(lines.length, 2);
  const [first] = records();
  assert.equal(first?.service, 'session-reaper-test');
  assert.equal(first?.level, 'info');
  assert.equal(first?.msg, 'hello');
  assert.equal(first?.answer, 42);
  assert.ok(!Number.isNaN(Date.parse(String(first?.time))), 'time is an ISO timestamp');
});

test('lines logged inside a span carry that span’s trace id and span id, lines outside carry none', () => {
  const { logger, records } = capture();
  logger.info('before');
  const ids = telemetry.tracer.startActiveSpan('work', (span) => {
    logger.info('inside');
    span.end();
    return span.spanContext();
  });
  logger.info('after');
  const [before, inside, afterLine] = records();
  assert.equal(before?.trace_id, undefined);
  assert.equal(inside?.trace_id, ids.traceId);
  assert.equal(inside?.span_id, ids.spanId);
  assert.equal(inside?.trace_flags, '01');
  assert.equal(afterLine?.trace_id, undefined);
});

test('a session child logger carries session, incarnation and event ids on every line', () => {
  const { logger, records } = capture();
  const log = withLogContext(logger, { sessionId: 's-1', incarnation: 3, eventId: 'e-1', eventType: 'session.ended' });
  log.info('one');
  log.child({ step: 'destroy' }).warn('two');
  for (const r of records()) {
    assert.equal(r.sessionId, 's-1');
    assert.equal(r.incarnation, 3);
    assert.equal(r.eventId, 'e-1');
    assert.equal(r.eventType, 'session.ended');
  }
});

test('logContext leaves out unknown ids and binds trace ids under the OpenTelemetry names', () => {
  assert.deepEqual(logContext({ sessionId: 's-2' }), { sessionId: 's-2' });
  assert.deepEqual(logContext({ traceId: 'a'.repeat(32), spanId: 'b'.repeat(16), incarnation: 0 }), {
    incarnation: 0,
    trace_id: 'a'.repeat(32),
    span_id: 'b'.repeat(16),
  });
});

test('a trace id bound to a logger is not written a second time when a span is active', () => {
  const { logger, lines, records } = capture();
  const bound = withLogContext(logger, { sessionId: 's-3', traceId: 'c'.repeat(32) });
  telemetry.tracer.startActiveSpan('work', (span) => {
    bound.info('inside');
    span.end();
  });
  assert.equal(lines[0]?.match(/"trace_id"/g)?.length, 1);
  assert.equal(records()[0]?.trace_id, 'c'.repeat(32));
});

test('errors are logged under err with their type, message and stack', () => {
  const { logger, records } = capture();
  const cause = new Error('redis went away');
  logger.error({ err: new TypeError('bad thing', { cause }) }, 'failed');
  const err = records()[0]?.err as Record<string, unknown>;
  assert.equal(err.type, 'TypeError');
  assert.match(String(err.message), /bad thing/);
  assert.match(String(err.stack), /TypeError: bad thing/);
});

test('no trace ids are added when the active span context is invalid', () => {
  const { logger, records } = capture();
  const invalid = trace.setSpanContext(ROOT_CONTEXT, { traceId: '0'.repeat(32), spanId: '0'.repeat(16), traceFlags: 0 });
  context.with(invalid, () => logger.info('x'));
  assert.equal(records()[0]?.trace_id, undefined);
});
