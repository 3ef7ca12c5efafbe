// The trace an event belongs to survives the Broker hop: its traceparent/tracestate extension is delivered as
// both the ce- attribute and the W3C headers, and an event that came with only W3C headers gets them as its
// extension. With `forward`, every event of a type the system emits also goes to an outside sink.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { startLocalBroker, type LocalBroker } from './broker.ts';
import { eventOf, sendBatch, sendBinary, sendStructured, tempStoreDir } from './test-support.ts';

const TRACEPARENT = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
const OTHER_TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';

let sink: EventSink;
let outside: EventSink;
let broker: LocalBroker;
const seen: string[] = [];

before(async () => {
  sink = await startEventSink();
  outside = await startEventSink();
  broker = await startLocalBroker({
    subscribers: { 'destroy-dispatch': sink.url, 'heartbeat-timeout': sink.url },
    deadLetterDir: tempStoreDir('trace'),
    forward: outside.url,
    onEvent: (ev) => seen.push(String(ev.attributes.id)),
  });
});

after(async () => {
  await broker.stop({ graceMs: 0 });
  await sink.close();
  await outside.close();
});

test('an event\'s traceparent and tracestate extensions reach the subscriber as attributes and W3C headers', async () => {
  const binary = eventOf('dev.sessionreaper.session.closed', { traceparent: TRACEPARENT, tracestate: 'vendor=1' });
  const structured = eventOf('dev.sessionreaper.session.closed', { traceparent: TRACEPARENT, tracestate: 'vendor=2' });
  // The event's own context wins over the hop's headers (it is the producer's, the header only the transport's).
  assert.equal((await sendBinary(broker.url, binary, { traceparent: OTHER_TRACEPARENT })).status, 202);
  assert.equal((await sendStructured(broker.url, structured)).status, 202);
  for (const [ev, state] of [[binary, 'vendor=1'], [structured, 'vendor=2']] as const) {
    const got = await sink.waitForEvent((e) => e.event.id === ev.id);
    assert.equal(got.headers['ce-traceparent'], TRACEPARENT);
    assert.equal(got.headers.traceparent, TRACEPARENT);
    assert.equal(got.headers['ce-tracestate'], state);
    assert.equal(got.headers.tracestate, state);
  }
});

test('an event with only W3C trace headers carries them on as its extension', async () => {
  const ev = eventOf('dev.sessionreaper.session.closed');
  assert.equal((await sendBinary(broker.url, ev, { traceparent: TRACEPARENT, tracestate: 'hop=1' })).status, 202);
  const batch = [eventOf('dev.sessionreaper.session.closed'), eventOf('dev.sessionreaper.session.closed')];
  const res = await fetch(broker.url, {
    method: 'POST',
    headers: { 'content-type': 'application/cloudevents-batch+json', traceparent: OTHER_TRACEPARENT },
    body: JSON.stringify(batch.map((e) => e.toJSON())),
  });
  assert.equal(res.status, 202);
  const got = await sink.waitForEvent((e) => e.event.id === ev.id);
  assert.equal(got.event['traceparent'], TRACEPARENT);
  assert.equal(got.event['tracestate'], 'hop=1');
  assert.equal(got.headers.traceparent, TRACEPARENT);
  for (const b of batch) {
    const inBatch = await sink.waitForEvent((e) => e.event.id === b.id);
    assert.equal(inBatch.event['traceparent'], OTHER_TRACEPARENT);
  }
  // A malformed header is not adopted.
  const junk = eventOf('dev.sessionreaper.session.closed');
  assert.equal((await sendBinary(broker.url, junk, { traceparent: 'not-a-trace' })).status, 202);
  const noTrace = await sink.waitForEvent((e) => e.event.id === junk.id);
  assert.equal(noTrace.event['traceparent'], undefined);
});

test('forward delivers every event the system emits to the outside sink, and nothing it only consumes', async () => {
  const emitted = ['dev.sessionreaper.session.destroyed', 'dev.sessionreaper.session.expired', 'dev.sessionreaper.gpu.release.requested', 'dev.sessionreaper.destroy.resume'].map((t) =>
    eventOf(t, { traceparent: TRACEPARENT }),
  );
  const inbound = [eventOf('dev.sessionreaper.session.heartbeat'), eventOf('dev.sessionreaper.session.closed')];
  assert.equal((await sendBatch(broker.url, [...emitted, ...inbound])).status, 202);
  await broker.idle();
  const forwarded = outside.events.filter((e) => [...emitted, ...inbound].some((x) => x.id === e.event.id));
  assert.deepEqual(forwarded.map((e) => e.event.id).sort(), emitted.map((e) => e.id).sort());
  for (const e of forwarded) {
    assert.equal(e.headers['ce-specversion'], '1.0', 'as binary CloudEvents');
    assert.equal(e.headers.traceparent, TRACEPARENT);
  }
  // session.destroyed has no function Trigger here (the pipeline's is unmapped), yet it is forwarded.
  assert.equal(sink.events.some((e) => e.event.id === emitted[0]!.id), false);
  assert.ok(broker.stats().routes.forward!.delivered >= emitted.length);
  assert.ok(emitted.every((e) => seen.includes(e.id)), 'onEvent saw every accepted event');
});
