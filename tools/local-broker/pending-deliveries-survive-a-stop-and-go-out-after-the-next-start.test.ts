// Stopping loses nothing: deliveries that finish within the grace period are delivered; the rest (waiting for a
// retry, or cut off mid-attempt) are written to the pending-deliveries file, and the next broker started on the
// same store delivers them, keeping the attempts already spent.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { startEventSink } from '../../tests/support/event-sink.ts';
import { startLocalBroker } from './broker.ts';
import { eventOf, eventually, sendBinary, tempStoreDir } from './test-support.ts';

const CLOSED = 'dev.sessionreaper.session.closed';

test('deliveries waiting for a retry or hanging at stop are persisted and delivered by the next broker', async () => {
  const sink = await startEventSink();
  const dir = tempStoreDir('pending');
  const pendingFile = join(dir, '.pending-deliveries.json');
  try {
    // A long backoff keeps the failed one waiting for its retry; a hanging subscriber keeps the other in flight.
    const first = await startLocalBroker({ subscribers: { 'destroy-dispatch': sink.url }, deadLetterDir: dir, deliveryOverride: { backoffDelayMs: 60_000 } });
    sink.failNext(1, 503);
    sink.hangNext(1);
    const waiting = eventOf(CLOSED);
    const hanging = eventOf(CLOSED);
    assert.equal((await sendBinary(first.url, waiting)).status, 202);
    await eventually(() => sink.requests.length === 1, 'the first attempt');
    assert.equal((await sendBinary(first.url, hanging)).status, 202);
    await eventually(() => sink.requests.length === 2, 'the hanging attempt');
    assert.equal(first.stats().pending, 2);

    const report = await first.stop({ graceMs: 100 });
    assert.equal(report.persisted, 2);
    assert.ok(existsSync(pendingFile), 'the pending deliveries are on disk');
    const saved = JSON.parse(readFileSync(pendingFile, 'utf8')) as { deliveries: Array<{ target: string; attempts: number; event: { attributes: { id: string } } }> };
    const byId = new Map(saved.deliveries.map((d) => [d.event.attributes.id, d]));
    assert.equal(byId.get(waiting.id)?.attempts, 1, 'the failed attempt is remembered');
    assert.equal(byId.get(hanging.id)?.attempts, 0, 'an attempt cut off by stop is not counted');
    assert.equal(byId.get(waiting.id)?.target, 'destroy-dispatch-session-closed');
    // The stopped broker's ingress is gone.
    await assert.rejects(fetch(first.url, { method: 'POST' }));

    const second = await startLocalBroker({ subscribers: { 'destroy-dispatch': sink.url }, deadLetterDir: dir, deliveryOverride: { backoffDelayMs: 5 } });
    try {
      await second.idle();
      const delivered = sink.events.map((e) => e.event.id).sort();
      assert.deepEqual(delivered, [waiting.id, hanging.id].sort());
      assert.equal(second.stats().delivered, 2);
      assert.ok(!existsSync(pendingFile), 'the file is removed once everything in it is delivered');
      assert.deepEqual(await second.deadLetters.list(), []);
    } finally {
      await second.stop();
    }
  } finally {
    await sink.close();
  }
});

test('deliveries that finish within the grace period are delivered and nothing is persisted', async () => {
  const sink = await startEventSink();
  const dir = tempStoreDir('grace');
  try {
    const broker = await startLocalBroker({ subscribers: { 'destroy-dispatch': sink.url }, deadLetterDir: dir, deliveryOverride: { backoffDelayMs: 50 } });
    sink.failNext(1, 503);
    const ev = eventOf(CLOSED);
    assert.equal((await sendBinary(broker.url, ev)).status, 202);
    await eventually(() => sink.requests.length === 1, 'the first attempt');
    const report = await broker.stop({ graceMs: 10_000 });
    assert.equal(report.persisted, 0);
    assert.deepEqual(sink.events.map((e) => e.event.id), [ev.id]);
    assert.ok(!existsSync(join(dir, '.pending-deliveries.json')));
  } finally {
    await sink.close();
  }
});

test('a stopping broker answers 503 to events that still reach it, so their senders retry elsewhere or later', async () => {
  const sink = await startEventSink();
  try {
    const broker = await startLocalBroker({ subscribers: { 'destroy-dispatch': sink.url }, deadLetterDir: tempStoreDir('closing'), deliveryOverride: { backoffDelayMs: 60_000 } });
    sink.failNext(1, 503);
    // One keep-alive connection, opened before stop, stays usable while the grace period runs.
    assert.equal((await sendBinary(broker.url, eventOf(CLOSED))).status, 202);
    const stopping = broker.stop({ graceMs: 300 });
    const late = await sendBinary(broker.url, eventOf(CLOSED)).catch(() => ({ status: 0, text: '' }));
    assert.ok(late.status === 503 || late.status === 0, `refused (503) or not connected, got ${late.status}`);
    assert.equal((await stopping).persisted, 1);
  } finally {
    await sink.close();
  }
});
