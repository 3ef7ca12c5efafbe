// index.ts runs the local Broker as a process configured by its environment (PORT, BROKER_SUBSCRIBERS,
// BROKER_DEAD_LETTER_DIR, ...): it routes to the subscribers it is given, and on SIGTERM it persists what it
// could not deliver within its grace period and exits 0. A bad setting stops it at start, naming the variable.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { startEventSink } from '../../tests/support/event-sink.ts';
import { freePort } from '../../tests/support/redis-harness.ts';
import { eventOf, eventually, sendBinary, tempStoreDir, runBrokerProcess } from './test-support.ts';


test('the broker process routes by its environment and persists pending deliveries on SIGTERM', { timeout: 60_000 }, async () => {
  const sink = await startEventSink();
  const port = await freePort();
  const dir = tempStoreDir('process');
  const broker = runBrokerProcess({
    PORT: String(port),
    BROKER_SUBSCRIBERS: JSON.stringify({ 'destroy-dispatch': sink.url }),
    BROKER_DEAD_LETTER_DIR: dir,
    BROKER_STOP_GRACE_MS: '200',
  });
  try {
    const url = `http://127.0.0.1:${port}/`;
    await eventually(async () => (await fetch(new URL('/healthz', url)).then((r) => r.status, () => 0)) === 200, 'the broker process to be healthy', 30_000);
    const delivered = eventOf('dev.sessionreaper.session.closed');
    assert.equal((await sendBinary(url, delivered)).status, 202);
    await sink.waitForEvent((e) => e.event.id === delivered.id);

    // The manifest's backoff (seconds) keeps this one waiting for its retry when SIGTERM comes.
    sink.failNext(1, 503);
    const kept = eventOf('dev.sessionreaper.session.closed');
    assert.equal((await sendBinary(url, kept)).status, 202);
    await eventually(() => sink.requests.length === 2, 'the failed attempt');
    broker.proc.kill('SIGTERM');
    assert.equal(await broker.exited, 0, broker.output());
    assert.ok(existsSync(join(dir, '.pending-deliveries.json')), 'the pending delivery is on disk');
  } finally {
    broker.proc.kill('SIGKILL');
    await sink.close();
  }
});

test('a bad setting stops the broker process at start, naming the variable', { timeout: 60_000 }, async () => {
  const broker = runBrokerProcess({ PORT: '0', BROKER_SUBSCRIBERS: '["not", "a map"]', LOG_LEVEL: 'info' });
  assert.equal(await broker.exited, 1);
  assert.match(broker.output(), /BROKER_SUBSCRIBERS is invalid/);
});

test('a chaos setting out of range stops the broker process at start, naming the variable', { timeout: 60_000 }, async () => {
  const broker = runBrokerProcess({ PORT: '0', BROKER_DEAD_LETTER_DIR: tempStoreDir('process-chaos'), BROKER_CHAOS_DUPLICATE: '2', LOG_LEVEL: 'info' });
  assert.equal(await broker.exited, 1);
  assert.match(broker.output(), /BROKER_CHAOS_DUPLICATE/);
});
