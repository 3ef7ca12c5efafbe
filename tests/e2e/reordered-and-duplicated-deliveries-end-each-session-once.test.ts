// End to end with a Broker as untidy as a real one: every delivery sent twice (often concurrently), and the pipeline's
// events arriving in another order than they were sent. A close delivered before its open still ends that open, under
// its own cause; copies of the ends of one session reach the runtime once; a close sent before the deadline but
// processed after it is reported as a close.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { CloudEvent, HTTP } from 'cloudevents';
import { auditLedger } from '../../functions/core/ledger.ts';
import type { RedisClient } from '../../functions/core/redis/connect.ts';
import type { SessionStore } from '../../functions/core/session-store.ts';
import { startEventSink, type EventSink } from '../support/event-sink.ts';
import { until } from '../support/until.ts';
import { missingEntryFiles, stackStore, startStack, type Stack } from '../support/stack.ts';

const T = 'dev.sessionreaper.';
const GPU_BYTES = 1 << 20;
const missing = missingEntryFiles();


describe('deliveries duplicated and out of order', { skip: missing.length ? `entry points missing: ${missing.join(', ')}` : false }, () => {
  let stack: Stack;
  let sink: EventSink;
  let redis: RedisClient;
  let store: SessionStore;

  before(async () => {
    sink = await startEventSink();
    stack = await startStack({
      forward: sink.url,
      logLevel: 'warn',
      env: { DEADLINE_POLL_MS: '20', DESTROY_STALL_MS: '3000', BREAKER_RESET_TIMEOUT_MS: '500' },
      deliveryOverride: { retry: 40, backoffPolicy: 'linear', backoffDelayMs: 50 },
      brokerChaos: { duplicate: 1, seed: 7 },
    });
    ({ redis, store } = await stackStore(stack));
  });

  after(async () => {
    redis?.disconnect();
    await stack?.stop();
    await sink?.close();
  });

  async function send(type: string, data: Record<string, unknown>, at = new Date(), id: string = randomUUID()): Promise<void> {
    const ce = new CloudEvent({ type: T + type, source: '/e2e/pipeline', id, time: at.toISOString(), data, datacontenttype: 'application/json' });
    const { headers, body } = HTTP.binary(ce);
    const res = await fetch(stack.brokerUrl, {
      method: 'POST', headers: { ...(headers as Record<string, string>), authorization: `Bearer ${stack.tokens['inference-pipeline']}` }, body: body as string,
    });
    assert.equal(res.status, 202, `${type} accepted by the Broker`);
  }

  const opened = (sessionId: string, extra: Record<string, unknown> = {}) => ({
    sessionId, placement: { node: 'gpu-node-1', runtimeUrl: stack.runtimeUrl, gpuBytes: GPU_BYTES }, heartbeatIntervalMs: 60_000, ...extra,
  });
  const destroyed = (sessionId: string) => sink.events.filter(({ event: e }) => e.type === `${T}session.destroyed` && (e.data as { sessionId: string }).sessionId === sessionId);
  const destroyedOnce = (sessionId: string) =>
    sink.waitForEvent(({ event: e }) => e.type === `${T}session.destroyed` && (e.data as { sessionId: string }).sessionId === sessionId, { timeoutMs: 30_000 }).then((r) => r.event.data as { cause: string; incarnation: number; extraCauses?: string[] });

  test('a close delivered before its open ends that open at once, as a close', async () => {
    const openedAt = new Date();
    await send('session.closed', { sessionId: 'e2e-early-close' }, new Date(openedAt.getTime() + 10));
    // The close found no session; the open, sent before it, arrives now.
    await until('the close to be kept for its open', async () => (await redis.exists(store.keys.session('e2e-early-close').endMarker)) === 1);
    await send('session.opened', opened('e2e-early-close'), openedAt);
    const data = await destroyedOnce('e2e-early-close');
    assert.equal(data.cause, 'closed');
    const ledger = await auditLedger(redis, store.keys);
    assert.ok(ledger.balanced, ledger.problems.join('; '));
  });

  test('every copy of every end of a session reaches the runtime once', async () => {
    await send('session.opened', opened('e2e-many-ends'));
    const view = await until('opened', async () => {
      const v = await store.inspect('e2e-many-ends');
      return v?.state === 'active' ? v : undefined;
    });
    const res = await fetch(`${stack.runtimeUrl}/v1/sessions/e2e-many-ends/allocate`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ incarnation: view.incarnation, bytes: GPU_BYTES }),
    });
    assert.equal(res.status, 201);
    // Three copies of one close (the pipeline retried it), a second close and a completed with release, at once; the
    // Broker sends each of them twice.
    const closeId = randomUUID();
    await Promise.all([
      send('session.closed', { sessionId: 'e2e-many-ends' }, new Date(), closeId),
      send('session.closed', { sessionId: 'e2e-many-ends' }, new Date(), closeId),
      send('session.closed', { sessionId: 'e2e-many-ends' }, new Date(), closeId),
      send('session.closed', { sessionId: 'e2e-many-ends' }),
      send('inference.completed', { sessionId: 'e2e-many-ends', requestId: 'r-last', release: true }),
    ]);
    await destroyedOnce('e2e-many-ends');
    const stats = (await (await fetch(`${stack.runtimeUrl}/sim/stats`)).json()) as { releases: Record<string, number>; replays: number };
    assert.equal(stats.releases[`e2e-many-ends:${view.incarnation}`], 1, 'freed once');
    assert.equal(stats.replays, 0, 'and called once: no second call replayed the first');
    await until('every copy delivered', () => Promise.resolve(stack.broker.stats().pending === 0 && stack.broker.stats().inFlight === 0));
    assert.equal(new Set(destroyed('e2e-many-ends').map((e) => e.event.id)).size, 1, 'one session.destroyed (its copies share the id)');
  });

  test('a close sent before the deadline but delivered after the expiry is the cause', async () => {
    const faults = (errorRate: number) =>
      fetch(`${stack.runtimeUrl}/sim/faults`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ errorRate }) });
    // The runtime refuses every release for now, so the expiry's destroy waits at its release for the late close.
    assert.equal((await faults(1)).status, 200);
    try {
      const sentAt = new Date();
      await send('session.opened', opened('e2e-late-close', { heartbeatIntervalMs: 200, missedBeats: 1 }), sentAt);
      await until('expired', async () => (await store.inspect('e2e-late-close'))?.cause === 'expired');
      await send('session.closed', { sessionId: 'e2e-late-close' }, new Date(sentAt.getTime() + 50));
      await until('the close to take the expiry\'s place', async () => (await store.inspect('e2e-late-close'))?.cause === 'closed');
    } finally {
      await faults(0);
    }
    const data = await destroyedOnce('e2e-late-close');
    assert.deepEqual([data.cause, data.extraCauses], ['closed', ['expired']]);
  });
});
