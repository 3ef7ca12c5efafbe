// The ingress answers like Knative's Broker: 202 to any valid CloudEvent in binary, structured or batched mode
// (the envelope is validated, never the data), 400 to anything that is not a CloudEvent, 413 to what is too large.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { startLocalBroker, type LocalBroker } from './broker.ts';
import { eventOf, post, sendBatch, sendBinary, sendStructured, tempStoreDir } from './test-support.ts';

const CLOSED = 'dev.sessionreaper.session.closed';
const MAX_EVENT = 4096;
const MAX_BATCH = 16_384;

let sink: EventSink;
let broker: LocalBroker;

before(async () => {
  sink = await startEventSink();
  broker = await startLocalBroker({
    subscribers: { 'destroy-dispatch': sink.url },
    deadLetterDir: tempStoreDir('ingress'),
    maxEventBytes: MAX_EVENT,
    maxBatchBytes: MAX_BATCH,
  });
});

after(async () => {
  await broker.stop({ graceMs: 0 });
  await sink.close();
});

test('GET /healthz answers 200', async () => {
  const res = await fetch(new URL('/healthz', broker.url));
  assert.equal(res.status, 200);
});

test('binary, structured and batched events are accepted with 202 and delivered', async () => {
  const binary = eventOf(CLOSED);
  const structured = eventOf(CLOSED);
  const batch = [eventOf(CLOSED), eventOf(CLOSED), eventOf(CLOSED)];
  assert.equal((await sendBinary(broker.url, binary)).status, 202);
  assert.equal((await sendStructured(broker.url, structured)).status, 202);
  assert.equal((await sendBatch(broker.url, batch)).status, 202);
  for (const sent of [binary, structured, ...batch]) {
    const got = await sink.waitForEvent((e) => e.event.id === sent.id);
    assert.deepEqual(got.event.data, sent.data);
    assert.equal(got.headers['ce-id'], sent.id, 'delivered in binary mode whatever the mode it arrived in');
  }
});

test('an event whose data breaks the contract is still accepted: only the envelope is checked', async () => {
  const res = await post(broker.url, { 'ce-specversion': '1.0', 'ce-id': 'bad-data-1', 'ce-source': '/tests', 'ce-type': CLOSED, 'content-type': 'application/json' }, '{"sessionId": 42, "unknown": true}');
  assert.equal(res.status, 202);
  const got = await sink.waitForEvent((e) => e.event.id === 'bad-data-1');
  assert.equal(got.body, '{"sessionId": 42, "unknown": true}');
});

test('what is not a CloudEvent is answered 400 and delivered nowhere', async () => {
  const before = sink.requests.length;
  const cases: Array<[string, Record<string, string>, string]> = [
    ['plain JSON, no ce- headers', { 'content-type': 'application/json' }, '{"sessionId":"x"}'],
    ['binary without ce-id', { 'ce-specversion': '1.0', 'ce-source': '/t', 'ce-type': CLOSED }, '{}'],
    ['binary without ce-type', { 'ce-specversion': '1.0', 'ce-id': 'x', 'ce-source': '/t' }, '{}'],
    ['binary with specversion 0.1', { 'ce-specversion': '0.1', 'ce-id': 'x', 'ce-source': '/t', 'ce-type': CLOSED }, '{}'],
    ['structured without source', { 'content-type': 'application/cloudevents+json' }, JSON.stringify({ specversion: '1.0', id: 'x', type: CLOSED })],
    ['structured that is not JSON', { 'content-type': 'application/cloudevents+json' }, '{"specversion": '],
    ['structured array', { 'content-type': 'application/cloudevents+json' }, '[]'],
    ['structured with a bad time', { 'content-type': 'application/cloudevents+json' }, JSON.stringify({ specversion: '1.0', id: 'x', source: '/t', type: CLOSED, time: 'yesterday' })],
    ['structured with a bad extension name', { 'content-type': 'application/cloudevents+json' }, JSON.stringify({ specversion: '1.0', id: 'x', source: '/t', type: CLOSED, 'Bad-Name': 'v' })],
    ['batch that is not an array', { 'content-type': 'application/cloudevents-batch+json' }, JSON.stringify({ specversion: '1.0' })],
    ['empty batch', { 'content-type': 'application/cloudevents-batch+json' }, '[]'],
    ['batch with one invalid event', { 'content-type': 'application/cloudevents-batch+json' }, JSON.stringify([eventOf(CLOSED).toJSON(), { specversion: '1.0', id: 'y' }])],
  ];
  for (const [what, headers, body] of cases) {
    const res = await post(broker.url, headers, body);
    assert.equal(res.status, 400, `${what}: ${res.text}`);
    assert.match(res.text, /"error":"[^"]+/, `${what} says why`);
  }
  const time = await post(broker.url, { 'content-type': 'application/cloudevents+json' }, JSON.stringify({ specversion: '1.0', id: 'x', source: '/t', type: CLOSED, time: 'yesterday' }));
  assert.match(time.text, /time must match format/, 'the reason names the attribute');
  const stats = broker.stats();
  assert.ok(stats.rejected >= cases.length);
  await broker.idle();
  assert.equal(sink.requests.length, before, 'a refused request delivers nothing, not even the valid half of a batch');
});

test('an oversized event or batch is answered 413 and delivered nowhere', async () => {
  const before = sink.requests.length;
  const big = eventOf(CLOSED).cloneWith({ data: { sessionId: 'big', pad: 'x'.repeat(MAX_EVENT) } });
  assert.equal((await sendBinary(broker.url, big)).status, 413, 'binary');
  assert.equal((await sendStructured(broker.url, big)).status, 413, 'structured');
  // Under the request limit as a whole, but one event in it is over the per-event limit.
  const padded = eventOf(CLOSED).cloneWith({ data: { sessionId: 'big', pad: 'x'.repeat(MAX_EVENT - 200) } });
  const withOneBig = [eventOf(CLOSED), padded.cloneWith({ data: { sessionId: 'big', pad: 'x'.repeat(MAX_EVENT + 10) } })];
  assert.equal((await sendBatch(broker.url, withOneBig)).status, 413, 'one event of a batch too large');
  const manyMedium = Array.from({ length: 6 }, () => eventOf(CLOSED).cloneWith({ data: { sessionId: 'm', pad: 'x'.repeat(3000) } }));
  assert.equal((await sendBatch(broker.url, manyMedium)).status, 413, 'batch as a whole too large');
  // An event just under the limit passes: the limit is the event's, not a smaller one.
  assert.equal((await sendBinary(broker.url, padded)).status, 202, 'an event under the limit');
  await broker.idle();
  assert.equal(sink.requests.length, before + 1);
});

test('the broker keeps the most recent keepReceived events, oldest first', async () => {
  const small = await startLocalBroker({ subscribers: { 'destroy-dispatch': sink.url }, deadLetterDir: tempStoreDir('recent'), keepReceived: 3 });
  try {
    const sent = Array.from({ length: 7 }, () => eventOf(CLOSED));
    for (const [i, ev] of sent.entries()) {
      assert.equal((await sendBinary(small.url, ev)).status, 202);
      const expected = sent.slice(Math.max(0, i - 2), i + 1).map((e) => e.id);
      assert.deepEqual(small.received.map((e) => e.attributes.id), expected, `after ${i + 1} events`);
    }
  } finally {
    await small.stop({ graceMs: 0 });
  }
});
