// The chaos harness's Redis restart: with a data directory the stack's private redis-server runs with appendonly
// yes, and Redis writes the append-only file before it answers, so a SIGKILL and a restart on the same port lose
// no acknowledged write. The processes' clients reconnect by themselves, and the session goes on to its destroy.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { CloudEvent } from 'cloudevents';
import { startEventSink } from '../support/event-sink.ts';
import { sendAsPipeline, stackStore, startStack, type Stack } from '../support/stack.ts';

async function send(stack: Stack, ev: CloudEvent<unknown>): Promise<void> {
  assert.equal(await sendAsPipeline(stack, ev), 202);
}

test('a private redis-server killed with SIGKILL and restarted keeps an open session, which is then destroyed', { timeout: 180_000 }, async () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'sr-redis-restart-'));
  const outside = await startEventSink();
  const stack = await startStack({ redisDataDir: dataDir, forward: outside.url, deliveryOverride: { backoffDelayMs: 100 }, env: { DEADLINE_POLL_MS: '50' } });
  try {
    const sessionId = `redis-restart-${process.pid}`;
    const source = '/tests/stack/redis-restart';
    await send(stack, new CloudEvent({ id: `${sessionId}-opened`, source, type: 'dev.sessionreaper.session.opened', datacontenttype: 'application/json', data: { sessionId, placement: { node: 'sim-node', runtimeUrl: stack.runtimeUrl, gpuBytes: 2048 } } }));
    await stack.broker.idle(30_000);
    const before = stack.pids()['redis-server'];

    await stack.restartRedis('SIGKILL');
    assert.notEqual(stack.pids()['redis-server'], before, 'a new redis-server runs');
    const { redis, store } = await stackStore(stack);
    try {
      assert.notEqual(await store.inspect(sessionId), null, 'the session opened before the kill is still there');
    } finally {
      redis.disconnect();
    }

    await send(stack, new CloudEvent({ id: `${sessionId}-closed`, source, type: 'dev.sessionreaper.session.closed', datacontenttype: 'application/json', data: { sessionId } }));
    const destroyed = await outside.waitForEvent((e) => e.event.type === 'dev.sessionreaper.session.destroyed', { timeoutMs: 60_000 });
    assert.equal((destroyed.event.data as { sessionId: string; gpuBytes?: number }).sessionId, sessionId);
    // Nothing died on the way while the functions' clients reconnected (the Broker retries what failed meanwhile).
    await stack.broker.idle(30_000);
    assert.deepEqual(await stack.broker.deadLetters.list(), []);
  } finally {
    await stack.stop();
    await outside.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
});
