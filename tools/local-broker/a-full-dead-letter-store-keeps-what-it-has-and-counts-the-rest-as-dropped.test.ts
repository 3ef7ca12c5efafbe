// The local Broker's dead-letter store is bounded by bytes as the deployed receiver's is (functions/core/
// dead-letter-store.ts): a dead letter past the cap is not kept, nothing kept is evicted, and the event is logged whole
// and counted as dropped; a redelivered dead letter (same destination, source and id) is kept once; the admin API
// pages its list and deletes an entry.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { CloudEvent } from 'cloudevents';
import { startLocalBroker } from './broker.ts';
import { sendBinary, tempStoreDir } from './test-support.ts';

let server: Server;
let subscriberUrl: string;

before(async () => {
  // A subscriber that refuses everything with a final 400: each event is dead-lettered after one attempt.
  server = createServer((req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(400, { 'content-type': 'text/plain' }).end('refused'));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  subscriberUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
});

after(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

let seq = 0;
const bigEvent = () =>
  new CloudEvent({
    specversion: '1.0',
    id: `full-${process.pid}-${++seq}`,
    source: '/tests/local-broker',
    type: 'dev.sessionreaper.session.closed',
    datacontenttype: 'application/json',
    data: { sessionId: `s-${seq}`, pad: 'x'.repeat(300_000) },
  });

test('past its byte cap the dead-letter store keeps what it has and the rest is counted as dropped', { timeout: 60_000 }, async () => {
  const broker = await startLocalBroker({
    subscribers: { 'destroy-dispatch': subscriberUrl },
    deadLetterDir: tempStoreDir('full'),
    deadLetterMaxBytes: 1_048_576,
    maxEventBytes: 400_000,
    deliveryOverride: { backoffDelayMs: 5, timeoutMs: 1000 },
  });
  try {
    // ~400 KB each as stored (base64): two fit in 1 MiB, the third does not.
    for (let i = 0; i < 3; i++) assert.equal((await sendBinary(broker.url, bigEvent())).status, 202);
    await broker.idle();
    const stats = broker.stats();
    assert.equal(stats.deadLettered, 2);
    assert.equal(stats.dropped, 1);
    const kept = await broker.deadLetters.list();
    assert.equal(kept.length, 2);
    const { usedBytes, maxBytes } = broker.deadLetters.usage();
    assert.ok(usedBytes <= maxBytes, `${usedBytes} <= ${maxBytes}`);

    // The admin API answers in pages (two entries fit one: no `next`) and deletes an entry.
    const page = (await (await fetch(new URL('/admin/dead-letters', broker.url))).json()) as { deadLetters: unknown[]; next?: string };
    assert.equal(page.deadLetters.length, 2);
    assert.equal(page.next, undefined);
    const deleted = await fetch(new URL(`/admin/dead-letters/${kept[0]!.id}`, broker.url), { method: 'DELETE' });
    assert.equal(deleted.status, 200);
    assert.equal((await broker.deadLetters.list()).length, 1);
    // Room again: the next one is kept.
    assert.equal((await sendBinary(broker.url, bigEvent())).status, 202);
    await broker.idle();
    assert.equal((await broker.deadLetters.list()).length, 2);
  } finally {
    await broker.stop({ graceMs: 0 });
  }
});

test('the same event dead-lettered twice at the same destination is kept once', { timeout: 60_000 }, async () => {
  const broker = await startLocalBroker({
    subscribers: { 'destroy-dispatch': subscriberUrl },
    deadLetterDir: tempStoreDir('dedupe'),
    deliveryOverride: { backoffDelayMs: 5, timeoutMs: 1000 },
  });
  try {
    const ev = new CloudEvent({ specversion: '1.0', id: `dup-${process.pid}`, source: '/tests/local-broker', type: 'dev.sessionreaper.session.closed', data: { sessionId: 's-dup' } });
    // A sender that retries after a lost 202 sends the same event again.
    assert.equal((await sendBinary(broker.url, ev)).status, 202);
    assert.equal((await sendBinary(broker.url, ev)).status, 202);
    await broker.idle();
    assert.equal((await broker.deadLetters.list()).length, 1);
    assert.equal(broker.stats().deadLettered, 1);
  } finally {
    await broker.stop({ graceMs: 0 });
  }
});
