// Delivery follows the effective delivery spec: retryable failures (5xx, 404, 408, 409, 429, timeouts, refused
// connections) are retried with the spec's backoff; what still fails, or fails with a non-retryable 4xx at once,
// is written to the on-disk dead-letter store with the reason, can be listed, read and replayed, and leaves the
// store once a replay is delivered. A Trigger whose delivery has no dead-letter sink drops what it cannot deliver.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { freePort } from '../../tests/support/redis-harness.ts';
import { startLocalBroker, type LocalBroker } from './broker.ts';
import { eventOf, eventually, sendBinary, tempStoreDir } from './test-support.ts';

const BACKOFF_MS = 10;

// A subscriber that records when each attempt arrived and answers from a per-event-id script.
interface Attempt {
  id: string;
  at: number;
}
let server: Server;
let subscriberUrl: string;
const attempts: Attempt[] = [];
const scripts = new Map<string, Array<number | 'hang'>>();

before(async () => {
  server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const id = String(req.headers['ce-id']);
      attempts.push({ id, at: performance.now() });
      const next = scripts.get(id)?.shift() ?? 200;
      if (next === 'hang') return; // answered never: the attempt times out
      res.writeHead(next, { 'content-type': 'text/plain' }).end(next >= 300 ? `scripted failure ${next} for ${id}` : '');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  subscriberUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
});

after(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

async function brokerFor(subscribers: Record<string, string>, label: string): Promise<LocalBroker> {
  return startLocalBroker({
    subscribers,
    deadLetterDir: tempStoreDir(label),
    deliveryOverride: { backoffDelayMs: BACKOFF_MS, timeoutMs: 300 },
  });
}

const attemptsOf = (id: string) => attempts.filter((a) => a.id === id);

test('retryable failures are retried with exponential backoff until delivered', async () => {
  const broker = await brokerFor({ 'destroy-dispatch': subscriberUrl }, 'retry');
  try {
    const ev = eventOf('dev.sessionreaper.session.closed');
    // 408 is retried as Knative retries it (SelectiveRetry), not taken as final.
    scripts.set(ev.id, [503, 429, 404, 408, 409, 'hang']);
    assert.equal((await sendBinary(broker.url, ev)).status, 202);
    await broker.idle();
    const seen = attemptsOf(ev.id);
    assert.equal(seen.length, 7, 'six failed attempts (the manifest allows 6 retries), then the one that got 200');
    // Exponential from the backoff unit as knative/eventing's dispatcher waits: retry n waits unit x 2^(n-1)
    // (lower bounds only: a loaded machine is slower; the exact schedule is the-retry-schedule-is-knatives...).
    for (let n = 1; n < seen.length; n++) {
      const gap = seen[n]!.at - seen[n - 1]!.at;
      assert.ok(gap >= BACKOFF_MS * 2 ** (n - 1) - 5, `retry ${n} waited ${gap.toFixed(0)} ms, at least ${BACKOFF_MS * 2 ** (n - 1)}`);
    }
    const stats = broker.stats();
    assert.equal(stats.delivered, 1);
    assert.equal(stats.retried, 6);
    assert.equal(stats.deadLettered, 0);
    assert.deepEqual(await broker.deadLetters.list(), []);
  } finally {
    await broker.stop({ graceMs: 0 });
  }
});

test('a delivery that keeps failing lands in the dead-letter store with the reason, and a replay delivers and removes it', async () => {
  const broker = await brokerFor({ 'destroy-dispatch': subscriberUrl }, 'dead');
  try {
    const ev = eventOf('dev.sessionreaper.session.expired');
    scripts.set(ev.id, Array.from({ length: 7 }, () => 503));
    assert.equal((await sendBinary(broker.url, ev)).status, 202);
    await broker.idle();
    assert.equal(attemptsOf(ev.id).length, 7, 'the manifest allows 6 retries after the first attempt');

    const [dl, ...rest] = await broker.deadLetters.list();
    assert.ok(dl, 'one dead letter');
    assert.equal(rest.length, 0);
    assert.equal(dl.trigger, 'destroy-dispatch-session-expired');
    assert.equal(dl.destination, subscriberUrl);
    assert.equal(dl.attempts, 7);
    assert.equal(dl.reason.status, 503);
    assert.equal(dl.reason.body, `scripted failure 503 for ${ev.id}`);
    assert.equal(dl.event.attributes.id, ev.id);
    assert.equal(Buffer.from(dl.event.data_base64 ?? '', 'base64').toString(), JSON.stringify(ev.data));
    // It is really on disk, as a JSON file anyone can read.
    const files = readdirSync(broker.deadLetters.dir).filter((f) => f.endsWith('.json'));
    assert.deepEqual(files, [`${dl.id}.json`]);
    assert.equal((JSON.parse(readFileSync(join(broker.deadLetters.dir, files[0]!), 'utf8')) as { id: string }).id, dl.id);
    assert.deepEqual(await broker.deadLetters.get(dl.id), dl);
    assert.equal(broker.stats().deadLettered, 1);

    // A replay that fails again keeps the entry, with the new reason and the attempts added up.
    scripts.set(ev.id, Array.from({ length: 7 }, () => 500));
    const failed = await broker.deadLetters.replay(dl.id);
    assert.equal(failed.outcome, 'failed');
    const kept = await broker.deadLetters.get(dl.id);
    assert.equal(kept?.replays, 1);
    assert.equal(kept?.attempts, 14);
    assert.equal(kept?.reason.status, 500);

    // The subscriber is healthy again: the replay is delivered and the entry leaves the store.
    const before = attemptsOf(ev.id).length;
    const replayed = await broker.deadLetters.replay(dl.id);
    assert.deepEqual(replayed, { outcome: 'delivered', id: dl.id, attempts: 1 });
    assert.equal(attemptsOf(ev.id).length, before + 1);
    assert.deepEqual(await broker.deadLetters.list(), []);
    assert.equal(await broker.deadLetters.get(dl.id), undefined);
    assert.deepEqual(await broker.deadLetters.replay(dl.id), { outcome: 'not-found', id: dl.id });
  } finally {
    await broker.stop({ graceMs: 0 });
  }
});

test('a non-retryable 400 goes to the dead-letter store after one attempt', async () => {
  const broker = await brokerFor({ 'destroy-dispatch': subscriberUrl }, 'refused');
  try {
    const ev = eventOf('dev.sessionreaper.session.idle');
    scripts.set(ev.id, [400]);
    assert.equal((await sendBinary(broker.url, ev)).status, 202);
    await broker.idle();
    assert.equal(attemptsOf(ev.id).length, 1, 'never retried');
    const [dl] = await broker.deadLetters.list();
    assert.equal(dl?.reason.status, 400);
    assert.equal(dl?.attempts, 1);
    assert.equal(broker.stats().retried, 0);
  } finally {
    await broker.stop({ graceMs: 0 });
  }
});

test('an unreachable subscriber is retried, then dead-lettered with the network error', async () => {
  const closedPort = await freePort();
  const broker = await brokerFor({ 'gpu-release': `http://127.0.0.1:${closedPort}/` }, 'unreachable');
  try {
    const ev = eventOf('dev.sessionreaper.gpu.release.requested');
    assert.equal((await sendBinary(broker.url, ev)).status, 202);
    await broker.idle();
    const [dl] = await broker.deadLetters.list();
    assert.equal(dl?.trigger, 'gpu-release-gpu-release-requested');
    assert.equal(dl?.attempts, 3, "the gpu-release Trigger's own 2 retries, not the Broker's 6");
    assert.equal(dl?.reason.status, undefined);
    assert.match(dl?.reason.error ?? '', /fetch failed|ECONNREFUSED/);
  } finally {
    await broker.stop({ graceMs: 0 });
  }
});

test('a heartbeat that cannot be delivered is dropped after its Trigger\'s four retries, not dead-lettered', async () => {
  const broker = await brokerFor({ 'heartbeat-timeout': subscriberUrl }, 'heartbeat');
  try {
    const ev = eventOf('dev.sessionreaper.session.heartbeat');
    scripts.set(ev.id, [503, 503, 503, 503, 503, 503]);
    assert.equal((await sendBinary(broker.url, ev)).status, 202);
    await broker.idle();
    assert.equal(attemptsOf(ev.id).length, 5);
    assert.deepEqual(await broker.deadLetters.list(), []);
    assert.equal(broker.stats().dropped, 1);
  } finally {
    await broker.stop({ graceMs: 0 });
  }
});

test('a dead letter outlives the broker and is replayed by the next one on the same store', async () => {
  const dir = tempStoreDir('restart');
  const ev = eventOf('dev.sessionreaper.session.closed');
  scripts.set(ev.id, [400]);
  const first = await startLocalBroker({ subscribers: { 'destroy-dispatch': subscriberUrl }, deadLetterDir: dir, deliveryOverride: { backoffDelayMs: 1 } });
  assert.equal((await sendBinary(first.url, ev)).status, 202);
  await first.idle();
  await first.stop();
  const second = await startLocalBroker({ subscribers: { 'destroy-dispatch': subscriberUrl }, deadLetterDir: dir, deliveryOverride: { backoffDelayMs: 1 } });
  try {
    const [dl] = await second.deadLetters.list();
    assert.ok(dl, 'the dead letter outlived the broker');
    assert.equal((await second.deadLetters.replay(dl.id)).outcome, 'delivered');
    await eventually(async () => (await second.deadLetters.list()).length === 0, 'the replayed entry to leave the store');
  } finally {
    await second.stop();
  }
});
