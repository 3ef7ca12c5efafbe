import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace';
import { CloudEvent } from 'cloudevents';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { createEmitter, EventRejectedError, type Emitter, type EmitterOptions } from './emit.ts';
import { TransientError } from './errors.ts';
import { createLogger } from './log.ts';
import { initTelemetry, type Telemetry } from './telemetry.ts';

const exporter = new InMemorySpanExporter();
let telemetry: Telemetry;
let sink: EventSink;
let emitters: Emitter[];
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
  emitters = [];
  logLines = [];
});
afterEach(async () => {
  for (const e of emitters) e.shutdown();
  await sink.close();
});

function emitterWith(opts: Partial<EmitterOptions> = {}): Emitter {
  const logger = createLogger({ service: 'emit-test', level: 'debug', destination: { write: (l: string) => void logLines.push(JSON.parse(l) as Record<string, unknown>) } });
  const emitter = createEmitter({ sink: sink.url, timeoutMs: 2000, retryBaseDelayMs: 5, logger, ...opts });
  emitters.push(emitter);
  return emitter;
}

const event = () => new CloudEvent<unknown>({ type: 'dev.session-reaper.test', source: '/test', subject: 'sess-1', data: { n: 1 } });

test('the emitter retries a 503 and then succeeds, resending the same event', async () => {
  sink.failNext(2, 503);
  const ce = event();
  await emitterWith().emit(ce);
  assert.equal(sink.requests.length, 3);
  assert.deepEqual(sink.requests.map((r) => r.status), [503, 503, 202]);
  assert.deepEqual(new Set(sink.requests.map((r) => r.headers['ce-id'])), new Set([ce.id]));
  assert.equal(sink.events.length, 1);
  await telemetry.forceFlush();
  const producer = exporter.getFinishedSpans().find((s) => s.kind === SpanKind.PRODUCER);
  assert.equal(producer?.events.filter((e) => e.name === 'retry').length, 2);
  assert.equal(producer?.status.code, SpanStatusCode.OK);
});

test('a 429 from the Broker is retried like a 5xx', async () => {
  sink.failNext(1, 429);
  await emitterWith().emit(event());
  assert.deepEqual(sink.requests.map((r) => r.status), [429, 202]);
});

test('the emitter gives up with a TransientError once the retry budget is spent', async () => {
  sink.failNext(10, 503);
  const ce = event();
  await assert.rejects(emitterWith({ retries: 2 }).emit(ce), (err: unknown) => {
    assert.ok(err instanceof TransientError);
    assert.equal(err.status, 503);
    assert.match(err.message, new RegExp(`${ce.id}.*3 attempts`));
    return true;
  });
  assert.equal(sink.requests.length, 3);
  assert.equal(sink.events.length, 0);
  await telemetry.forceFlush();
  const producer = exporter.getFinishedSpans().find((s) => s.kind === SpanKind.PRODUCER);
  assert.equal(producer?.status.code, SpanStatusCode.ERROR);
  assert.ok(logLines.some((l) => l.level === 'warn' && l.eventId === ce.id));
});

test('a sink that never answers gives a TransientError after about timeoutMs × attempts', async () => {
  sink.hangNext(3);
  const timeoutMs = 100;
  const started = performance.now();
  await assert.rejects(emitterWith({ timeoutMs, retries: 2 }).emit(event()), (err: unknown) => {
    assert.ok(err instanceof TransientError);
    assert.match(err.message, /no answer within 100 ms/);
    return true;
  });
  const elapsed = performance.now() - started;
  assert.equal(sink.requests.length, 3);
  // Loose bounds on purpose (a loaded machine only makes it slower): each attempt waited its timeout, and
  // the whole emission did not wait for anything else.
  assert.ok(elapsed >= 3 * timeoutMs * 0.9, `took ${elapsed} ms`);
  assert.ok(elapsed < 10_000, `took ${elapsed} ms`);
});

test('the breaker opens after repeated failures and then short-circuits without calling the sink', async () => {
  sink.failNext(10, 503);
  const emitter = emitterWith({ retries: 0, breaker: { volumeThreshold: 2, errorThresholdPercentage: 50, resetTimeoutMs: 60_000 } });
  await assert.rejects(emitter.emit(event()), TransientError);
  assert.equal(emitter.breakerState(), 'closed', 'one failure is below the volume threshold');
  await assert.rejects(emitter.emit(event()), TransientError);
  assert.equal(emitter.breakerState(), 'open');
  assert.ok(logLines.some((l) => l.breaker === 'open' && l.level === 'warn'));

  await assert.rejects(emitter.emit(event()), (err: unknown) => err instanceof TransientError && /breaker is open/.test(err.message));
  assert.equal(sink.requests.length, 2, 'the open breaker did not call the sink');
});

test('refusals of our own events (4xx) are not retried and do not open the breaker', async () => {
  sink.failNext(3, 422);
  const emitter = emitterWith({ breaker: { volumeThreshold: 2, errorThresholdPercentage: 50, resetTimeoutMs: 60_000 } });
  for (let i = 0; i < 3; i++) await assert.rejects(emitter.emit(event()), EventRejectedError);
  assert.equal(emitter.breakerState(), 'closed');
  assert.equal(sink.requests.length, 3);
});

test('after resetTimeout the breaker lets one emission through and closes when it succeeds', async () => {
  sink.failNext(2, 503);
  const emitter = emitterWith({ retries: 0, breaker: { volumeThreshold: 2, errorThresholdPercentage: 50, resetTimeoutMs: 50 } });
  await assert.rejects(emitter.emit(event()), TransientError);
  await assert.rejects(emitter.emit(event()), TransientError);
  assert.equal(emitter.breakerState(), 'open');
  const deadline = performance.now() + 10_000;
  while (emitter.breakerState() !== 'half-open') {
    assert.ok(performance.now() < deadline, 'the breaker never went half-open');
    await sleep(20);
  }
  await emitter.emit(event());
  assert.equal(emitter.breakerState(), 'closed');
  assert.equal(sink.events.length, 1);
  assert.deepEqual(logLines.filter((l) => l.breaker !== undefined).map((l) => l.breaker), ['open', 'half-open', 'closed']);
});

test('after shutdown every emission fails with a TransientError', async () => {
  const emitter = emitterWith();
  emitter.shutdown();
  await assert.rejects(emitter.emit(event()), (err: unknown) => err instanceof TransientError && /shut down/.test(err.message));
  assert.equal(sink.requests.length, 0);
});
