// The ingress port also serves the JSON admin API sessionctl uses: counters, and the dead-letter store to list,
// read and replay. Unknown ids and resources are 404, and admin paths are never mistaken for CloudEvents.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { startLocalBroker, type BrokerStats, type LocalBroker } from './broker.ts';
import type { DeadLetter } from '../../functions/core/dead-letter-store.ts';
import { eventOf, sendBinary, tempStoreDir } from './test-support.ts';

// A subscriber that refuses every event with 400 (never retried) until told to accept.
let accepting = false;
let server: Server;
let broker: LocalBroker;

before(async () => {
  server = createServer((req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(accepting ? 200 : 400, { 'content-type': 'text/plain' }).end(accepting ? '' : 'refused by the test'));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const subscriberUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  broker = await startLocalBroker({
    subscribers: { 'destroy-dispatch': subscriberUrl },
    deadLetterDir: tempStoreDir('admin'),
    deliveryOverride: { backoffDelayMs: 5, timeoutMs: 1000 },
  });
});

after(async () => {
  await broker.stop({ graceMs: 0 });
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

async function call(method: 'GET' | 'POST', path: string): Promise<{ status: number; body: unknown }> {
  const res = await fetch(new URL(path, broker.url), { method });
  return { status: res.status, body: await res.json() };
}

test('the admin API lists, shows and replays dead letters, and its stats count them', async () => {
  const ev = eventOf('dev.sessionreaper.session.closed');
  assert.equal((await sendBinary(broker.url, ev)).status, 202);
  await broker.idle();

  const list = await call('GET', '/admin/dead-letters');
  assert.equal(list.status, 200);
  const entries = (list.body as { deadLetters: DeadLetter[] }).deadLetters;
  assert.equal(entries.length, 1);
  const [entry] = entries;
  assert.ok(entry);
  assert.equal(entry.event.attributes.id, ev.id);
  assert.equal(entry.reason.status, 400);

  const shown = await call('GET', `/admin/dead-letters/${entry.id}`);
  assert.equal(shown.status, 200);
  assert.deepEqual(shown.body, entry);

  const stats = await call('GET', '/admin/stats');
  assert.equal(stats.status, 200);
  const counters = stats.body as BrokerStats & { deadLetters: number };
  assert.equal(counters.received, 1);
  assert.equal(counters.deadLettered, 1);
  assert.equal(counters.deadLetters, 1);
  assert.equal(counters.pending, 0);

  accepting = true;
  const replayed = await call('POST', `/admin/dead-letters/${entry.id}/replay`);
  assert.equal(replayed.status, 200);
  assert.deepEqual(replayed.body, { outcome: 'delivered', id: entry.id, attempts: 1 });
  assert.deepEqual((await call('GET', '/admin/dead-letters')).body, { deadLetters: [] });
  assert.equal(((await call('GET', '/admin/stats')).body as { deadLetters: number }).deadLetters, 0);
  assert.equal(broker.stats().received, 1, 'admin calls are not counted as events');
});

test('unknown dead letters and admin resources are answered 404, and a path-like id never reaches the disk', async () => {
  for (const [method, path] of [
    ['GET', '/admin/dead-letters/20260101T000000000Z-0123abcd'],
    ['POST', '/admin/dead-letters/20260101T000000000Z-0123abcd/replay'],
    ['GET', '/admin/dead-letters/..%2F..%2Fetc%2Fpasswd'],
    ['POST', '/admin/dead-letters/..%2Fx/replay'],
    ['GET', '/admin/nothing-here'],
    ['DELETE', '/admin/dead-letters'],
  ] as const) {
    const res = await fetch(new URL(path, broker.url), { method });
    assert.equal(res.status, 404, `${method} ${path}`);
    assert.match(((await res.json()) as { error?: string; outcome?: string }).error ?? 'not-found', /no |not-found/);
  }
});
