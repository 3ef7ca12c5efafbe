// The chaos run kills the Broker process with SIGKILL and starts it again on the same port and store: every event it
// answered 202 to must still reach its subscriber. Here the subscriber is down while the first Broker runs (so every
// delivery is still pending when it is killed), comes up after the restart, and must get all of them.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { test } from 'node:test';
import { freePort } from '../../tests/support/redis-harness.ts';
import { eventOf, eventually, sendBatch, sendBinary, tempStoreDir, runBrokerProcess } from './test-support.ts';


async function healthy(url: string): Promise<void> {
  await eventually(async () => (await fetch(new URL('/healthz', url)).then((r) => r.status, () => 0)) === 200, 'the broker process to be healthy', 30_000);
}

test('every event accepted before a SIGKILL is delivered by the Broker restarted on the same store', { timeout: 120_000 }, async () => {
  const [port, subscriberPort] = [await freePort(), await freePort()];
  const env = {
    PORT: String(port),
    BROKER_SUBSCRIBERS: JSON.stringify({ 'destroy-dispatch': `http://127.0.0.1:${subscriberPort}/` }),
    BROKER_DEAD_LETTER_DIR: tempStoreDir('sigkill'),
  };
  const url = `http://127.0.0.1:${port}/`;
  const received = new Map<string, number>();
  const subscriber = createServer((req, res) => {
    const id = req.headers['ce-id'];
    req.resume();
    req.on('end', () => {
      if (typeof id === 'string') received.set(id, (received.get(id) ?? 0) + 1);
      res.writeHead(202).end();
    });
  });
  const first = runBrokerProcess(env);
  let second: ReturnType<typeof runBrokerProcess> | undefined;
  try {
    await healthy(url);
    const sent = Array.from({ length: 40 }, () => eventOf('dev.sessionreaper.session.closed'));
    for (const ev of sent.slice(0, 20)) assert.equal((await sendBinary(url, ev)).status, 202);
    assert.equal((await sendBatch(url, sent.slice(20))).status, 202);
    first.proc.kill('SIGKILL');
    await first.exited;

    await new Promise<void>((listening) => subscriber.listen(subscriberPort, '127.0.0.1', () => listening()));
    second = runBrokerProcess(env);
    await healthy(url);
    await eventually(() => sent.every((ev) => received.has(ev.id)), `all ${sent.length} events at the subscriber (got ${received.size})`, 60_000);
    const stats = (await (await fetch(new URL('/admin/stats', url))).json()) as { recovered: number; deadLetters: number };
    assert.equal(stats.recovered, sent.length, 'the restarted broker found every delivery unfinished in its journal');
    assert.equal(stats.deadLetters, 0);
    second.proc.kill('SIGTERM');
    await second.exited;
  } finally {
    first.proc.kill('SIGKILL');
    second?.proc.kill('SIGKILL');
    subscriber.closeAllConnections();
    await new Promise<void>((closed) => subscriber.close(() => closed()));
  }
});
