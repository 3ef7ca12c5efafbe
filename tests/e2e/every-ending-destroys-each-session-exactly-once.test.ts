// End to end: the four functions, the deadline engine, the simulated GPU runtime and the local Broker, each a real
// process, driven through every ending — closed, expired, idle, completed, a hold respected, a session reopened
// after its destruction — with runtime faults (errors, then the runtime down so breakers open, then recovering).
// At the end every session incarnation was destroyed exactly once and every registered GPU byte released once.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { auditLedger } from '../../functions/core/ledger.ts';
import type { RedisClient } from '../../functions/core/redis/connect.ts';
import type { SessionStore } from '../../functions/core/session-store.ts';
import type { EventSink } from '../support/event-sink.ts';
import { until } from '../support/until.ts';
import { type DrivenStack, missingEntryFiles, type PipelineDriver, type Stack, startDrivenStack } from '../support/stack.ts';

const T = 'dev.sessionreaper.';
const GPU_BYTES = 1 << 20;
const missing = missingEntryFiles();


describe('the whole system, end to end', { skip: missing.length ? `entry points missing: ${missing.join(', ')}` : false }, () => {
  let stack: Stack;
  let sink: EventSink;
  let redis: RedisClient;
  let store: SessionStore;
  let driven: DrivenStack | undefined;

  before(async () => {
    driven = await startDrivenStack({
      logLevel: 'warn',
      env: {
        DEADLINE_POLL_MS: '20', DESTROY_STALL_MS: '3000', IDLE_POLL_MS: '100', LOAD_EVAL_MS: '1000',
        // A tenant whose sessions go idle quickly, so the idle ending takes a second rather than minutes.
        TENANT_POLICIES: JSON.stringify({ 'e2e-fast': { threshold: 0.95, graceMs: 500 } }), LOAD_POLICY: JSON.stringify({ minGraceMs: 0 }), RELEASE_RETRIES: '1', BREAKER_RESET_TIMEOUT_MS: '500', BREAKER_VOLUME_THRESHOLD: '2' },
      deliveryOverride: { retry: 40, backoffPolicy: 'linear', backoffDelayMs: 50 },
    }, '/e2e/pipeline');
    ({ stack, sink, redis, store, pipeline } = driven);
  });

  after(() => driven?.stop());

  // The pipeline: `send(type, data, tenant)` (a session opened with a tenant belongs to it), and `open(id)` with the
  // runtime's allocation under the new incarnation.
  let pipeline: PipelineDriver;
  const send: PipelineDriver['send'] = (type, data, tenant) => pipeline.send(type, data, tenant);
  const open = (sessionId: string, extra: Record<string, unknown> = {}): Promise<number> => pipeline.open(sessionId, GPU_BYTES, extra);

  const destroyedEvent = (sessionId: string, incarnation: number) =>
    sink.waitForEvent(({ event: e }) => e.type === `${T}session.destroyed` && (e.data as { sessionId: string }).sessionId === sessionId && (e.data as { incarnation: number }).incarnation === incarnation, { timeoutMs: 30_000 }).then((r) => r.event);

  test('a closed session is destroyed', async () => {
    const inc = await open('e2e-closed');
    await send('session.heartbeat', { sessionId: 'e2e-closed' });
    await send('session.closed', { sessionId: 'e2e-closed', reason: 'user left' });
    const ev = await destroyedEvent('e2e-closed', inc);
    const data = ev.data as { cause: string; timeline: { stage: string }[] };
    assert.equal(data.cause, 'closed');
    assert.deepEqual(data.timeline.map((t) => t.stage), ['claimed', 'gpu_release_requested', 'gpu_released', 'state_purged', 'completed']);
  });

  test('a session whose heartbeats stop expires and is destroyed', async () => {
    const inc = await open('e2e-expired', { heartbeatIntervalMs: 200, missedBeats: 2 });
    const ev = await destroyedEvent('e2e-expired', inc);
    assert.equal((ev.data as { cause: string }).cause, 'expired');
    const expired = sink.events.find(({ event: e }) => e.type === `${T}session.expired` && (e.data as { sessionId: string }).sessionId === 'e2e-expired');
    assert.ok(expired, 'session.expired was emitted');
  });

  test('a hold is respected, then the session expires once it ends', async () => {
    const inc = await open('e2e-held', { heartbeatIntervalMs: 200, missedBeats: 2 });
    const heldAt = Date.now();
    await send('session.hold', { sessionId: 'e2e-held', durationMs: 2500, reason: 'long tool call' });
    const ev = await destroyedEvent('e2e-held', inc);
    const claimedAt = Date.parse((ev.data as { timeline: { at: string }[] }).timeline[0]!.at);
    assert.ok(claimedAt >= heldAt + 2000, `not reclaimed during the hold (claimed ${claimedAt - heldAt} ms after it was granted)`);
    assert.equal((ev.data as { cause: string }).cause, 'expired');
  });

  test('a session whose activity dies down goes idle and is destroyed', async () => {
    const inc = await open('e2e-idle', { tenant: 'e2e-fast' });
    await send('session.activity', { sessionId: 'e2e-idle', kind: 'message', text: 'hello there' }, 'e2e-fast');
    const ev = await destroyedEvent('e2e-idle', inc);
    assert.equal((ev.data as { cause: string }).cause, 'idle');
  });

  test('an inference completed with release is destroyed, one without is not', async () => {
    const kept = await open('e2e-kept');
    const inc = await open('e2e-completed');
    await send('inference.completed', { sessionId: 'e2e-kept', requestId: 'r-1', release: false });
    await send('inference.completed', { sessionId: 'e2e-completed', requestId: 'r-2', release: true });
    const ev = await destroyedEvent('e2e-completed', inc);
    assert.equal((ev.data as { cause: string }).cause, 'completed');
    assert.equal((await store.inspect('e2e-kept'))?.incarnation, kept);
    await send('session.closed', { sessionId: 'e2e-kept' });
    await destroyedEvent('e2e-kept', kept);
  });

  test('a session reopened after its destruction gets a new incarnation and is destroyed again', async () => {
    const first = await open('e2e-reopened');
    await send('session.closed', { sessionId: 'e2e-reopened' });
    await destroyedEvent('e2e-reopened', first);
    const second = await open('e2e-reopened');
    assert.ok(second > first, 'a newer incarnation');
    await send('session.heartbeat', { sessionId: 'e2e-reopened' });
    assert.equal((await store.inspect('e2e-reopened'))?.state, 'active', 'a late event never revives the old one, nor kills the new');
    await send('session.closed', { sessionId: 'e2e-reopened' });
    await destroyedEvent('e2e-reopened', second);
  });

  test('runtime faults — errors, then the runtime down and breakers open — delay releases but lose none', async () => {
    const setFaults = (faults: Record<string, unknown>) =>
      fetch(`${stack.runtimeUrl}/sim/faults`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify(faults) });
    assert.ok((await setFaults({ errorRate: 0.5 })).ok);
    const ids = Array.from({ length: 6 }, (_, i) => `e2e-faulty-${i}`);
    const incs = await Promise.all(ids.map((id) => open(id)));
    await Promise.all(ids.slice(0, 3).map((id) => send('session.closed', { sessionId: id })));
    await Promise.all(ids.slice(0, 3).map((id, i) => destroyedEvent(id, incs[i]!)));
    assert.ok((await setFaults({ errorRate: 0, down: true })).ok);
    await Promise.all(ids.slice(3).map((id) => send('session.closed', { sessionId: id })));
    await until('a release failure to be reported', () => Promise.resolve(sink.events.some(({ event: e }) => e.type === `${T}gpu.release.failed`)));
    assert.ok((await setFaults({ down: false })).ok);
    await Promise.all(ids.slice(3).map((id, i) => destroyedEvent(id, incs[i + 3]!)));
  });

  test('every incarnation was destroyed exactly once and every GPU byte released once', async () => {
    const destroyed = new Map<string, Set<string>>();
    for (const { event: e } of sink.events.filter((x) => x.event.type === `${T}session.destroyed`)) {
      const d = e.data as { sessionId: string; incarnation: number };
      const key = `${d.sessionId}:${d.incarnation}`;
      destroyed.set(key, (destroyed.get(key) ?? new Set()).add(e.id));
    }
    const expected = [...pipeline.opened].flatMap(([id, incs]) => incs.map((inc) => `${id}:${inc}`));
    assert.deepEqual([...destroyed.keys()].sort(), expected.sort(), 'each incarnation destroyed');
    for (const [key, ids] of destroyed) assert.equal(ids.size, 1, `${key} destroyed once (one destroy event id)`);

    const stats = (await (await fetch(`${stack.runtimeUrl}/sim/stats`)).json()) as { releases: Record<string, number>; totalAllocated: number; totalFreed: number; usedBytes: number };
    for (const key of expected) assert.equal(stats.releases[key], 1, `${key} freed exactly once on the runtime`);
    assert.equal(stats.totalFreed, stats.totalAllocated);
    assert.equal(stats.usedBytes, 0);

    const audit = await auditLedger(redis, store.keys);
    assert.deepEqual(audit.problems, []);
    assert.equal(audit.totals.heldBytes, 0, 'nothing held');
    assert.equal(audit.totals.registeredBytes, expected.length * GPU_BYTES);
    assert.equal(audit.totals.releasedBytes, audit.totals.registeredBytes);
    assert.equal(audit.totals.releases, audit.totals.allocations);
    assert.equal((await stack.broker.deadLetters.list()).length, 0, 'no dead letters');
  });
});
