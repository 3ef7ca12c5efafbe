// Real Brokers deliver at least once, in no set order, after varying latency; the local Broker does so when asked
// (chaos), seeded so a run replays, and counts what it did. None of it loses or dead-letters an event.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { startEventSink } from '../../tests/support/event-sink.ts';
import { startLocalBroker } from './broker.ts';
import { createDeliveryChaos } from './delivery-chaos.ts';
import { eventOf, sendBatch, sendBinary, tempStoreDir } from './test-support.ts';

const CLOSED = 'dev.sessionreaper.session.closed';

function countById(ids: readonly string[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const id of ids) counts.set(id, (counts.get(id) ?? 0) + 1);
  return counts;
}

test('with duplicate 1 every event reaches its subscriber twice, and nothing is dead-lettered', { timeout: 60_000 }, async () => {
  const sink = await startEventSink();
  const broker = await startLocalBroker({ subscribers: { 'destroy-dispatch': sink.url }, deadLetterDir: tempStoreDir('duplicate'), chaos: { duplicate: 1, seed: 1 } });
  try {
    const sent = Array.from({ length: 10 }, () => eventOf(CLOSED));
    for (const ev of sent) assert.equal((await sendBinary(broker.url, ev)).status, 202);
    await sink.waitForEvents(20, { timeoutMs: 30_000 });
    await broker.idle();
    assert.deepEqual(countById(sink.events.map((e) => String(e.event.id))), new Map(sent.map((ev) => [ev.id, 2])));
    const stats = broker.stats();
    assert.equal(stats.duplicated, 10);
    assert.equal(stats.delivered, 20);
    assert.equal(stats.deadLettered + stats.dropped, 0);
    assert.deepEqual(await broker.deadLetters.list(), []);
  } finally {
    await broker.stop({ graceMs: 0 });
    await sink.close();
  }
});

test('with a reorder window a burst reaches its subscriber out of order, but whole', { timeout: 60_000 }, async () => {
  const sink = await startEventSink();
  const broker = await startLocalBroker({ subscribers: { 'destroy-dispatch': sink.url }, deadLetterDir: tempStoreDir('reorder'), chaos: { reorderMs: 100, seed: 7 } });
  try {
    // One batch: its events are accepted together, so they share one window however slow the machine is.
    const sent = Array.from({ length: 20 }, () => eventOf(CLOSED));
    assert.equal((await sendBatch(broker.url, sent)).status, 202);
    await sink.waitForEvents(20, { timeoutMs: 30_000 });
    await broker.idle();
    const got = sink.events.map((e) => String(e.event.id));
    assert.deepEqual([...got].sort(), sent.map((ev) => ev.id).sort(), 'every event arrived, once');
    assert.notDeepEqual(got, sent.map((ev) => ev.id), 'not in the order sent');
    const stats = broker.stats();
    assert.ok(stats.reordered > 0);
    assert.equal(stats.deadLettered + stats.dropped, 0);
  } finally {
    await broker.stop({ graceMs: 0 });
    await sink.close();
  }
});

test('duplicated, reordered and delayed together, every event still arrives and none is dead-lettered', { timeout: 60_000 }, async () => {
  const sink = await startEventSink();
  const broker = await startLocalBroker({
    subscribers: { 'destroy-dispatch': sink.url },
    deadLetterDir: tempStoreDir('chaos'),
    chaos: { duplicate: 0.5, reorderMs: 20, delayMs: 50, seed: 42 },
  });
  try {
    const sent = Array.from({ length: 30 }, () => eventOf(CLOSED));
    assert.equal((await sendBatch(broker.url, sent.slice(0, 15))).status, 202);
    for (const ev of sent.slice(15)) assert.equal((await sendBinary(broker.url, ev)).status, 202);
    await broker.idle(30_000);
    const stats = broker.stats();
    const counts = countById(sink.events.map((e) => String(e.event.id)));
    for (const ev of sent) assert.ok((counts.get(ev.id) ?? 0) >= 1, `${ev.id} arrived`);
    assert.equal(sink.events.length, sent.length + stats.duplicated, 'each duplicate arrived as one more delivery');
    assert.ok(stats.duplicated > 0 && stats.delayed > 0, JSON.stringify(stats));
    assert.equal(stats.deadLettered + stats.dropped, 0);
  } finally {
    await broker.stop({ graceMs: 0 });
    await sink.close();
  }
});

test('the same seed draws the same duplicates, and an option out of range is refused naming it', () => {
  const draws = (seed: number) => {
    const chaos = createDeliveryChaos({ duplicate: 0.3, seed }, new AbortController().signal);
    return Array.from({ length: 50 }, () => chaos.duplicates());
  };
  assert.deepEqual(draws(5), draws(5));
  assert.notDeepEqual(draws(5), draws(6));
  assert.throws(() => createDeliveryChaos({ duplicate: 1.5 }, new AbortController().signal), /chaos\.duplicate/);
  assert.throws(() => createDeliveryChaos({ reorderMs: -1 }, new AbortController().signal), /chaos\.reorderMs/);
});
