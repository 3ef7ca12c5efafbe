// The deadline engine against real Redis (single and cluster) and a real event sink: every session whose deadline
// passes is expired exactly once, however many engines race; a session that keeps its heartbeats or holds is not;
// what was overdue before the engine started is caught up on; and the engine's own process runs as deployed.
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { EventType } from '../core/contract/events.ts';
import { createCore, type Core } from '../core/function-host.ts';
import { placementA, testCore, fp, type TestCore } from '../../tests/support/core.ts';
import { startEventSink, type EventSink, type ReceivedEvent } from '../../tests/support/event-sink.ts';
import { TOPOLOGIES, testRedisEnv } from '../../tests/support/redis.ts';
import { DeadlineEngine } from './deadline-engine.ts';
import { startDeadlineEngine } from './heartbeat-test-support.ts';

const BUCKETS = 8;
const WAIT = { timeoutMs: 20_000 };

interface ExpiredData {
  sessionId: string;
  incarnation: number;
  deadline: string;
  detectedAt: string;
  lagMs: number;
}

/** Resolves once every session of `ids` has expired at least once (the sink re-checks on every event it accepts). */
function allExpired(sink: EventSink, ids: readonly string[]): Promise<unknown> {
  const wanted = new Set(ids);
  return sink.waitForEvent(() => new Set(expiredOf(sink).map((e) => e.event.subject).filter((s) => s !== undefined && wanted.has(s))).size === wanted.size, WAIT);
}

/** The distinct session.expired event ids of a session: delivery is at least once (an emission whose answer timed
 *  out is retried with the same id, and the Broker deduplicates on it), so "exactly once" means one id. */
const expiryIdsOf = (sink: EventSink, sessionId: string): string[] => [...new Set(expiredOf(sink, sessionId).map((e) => e.event.id))];

const expiredOf = (sink: EventSink, sessionId?: string): ReceivedEvent[] =>
  sink.events.filter((e) => e.event.type === EventType.SessionExpired && (sessionId === undefined || e.event.subject === sessionId));

for (const topology of TOPOLOGIES) {
  describe(`the deadline engine on ${topology} Redis`, () => {
    let sink: EventSink;
    let core: TestCore;
    const engineCores: Core[] = [];
    const engines: DeadlineEngine[] = [];

    const newEngine = (opts: { batchSize?: number; maxInFlightEmits?: number } = {}): DeadlineEngine => {
      const c = createCore({
        name: 'deadline-engine',
        env: { ...testRedisEnv(topology), REDIS_KEY_PREFIX: core.prefix, INDEX_BUCKETS: String(BUCKETS), K_SINK: sink.url, LOG_LEVEL: 'silent', DEADLINE_POLL_MS: '20', CORE_TIMEOUT_MS: '5000' },
      });
      engineCores.push(c);
      const engine = new DeadlineEngine({ deps: c.deps, ready: () => c.ready(), ...opts });
      engines.push(engine);
      return engine;
    };
    const open = (sessionId: string, windowMs: number, liveFrom = Date.now()) =>
      core.store.open({ sessionId, fingerprint: fp('open'), now: Date.now(), liveFrom, windowMs, placement: placementA });

    before(async () => {
      sink = await startEventSink();
      core = await testCore(topology, { buckets: BUCKETS });
    });
    afterEach(async () => {
      await Promise.all(engines.splice(0).map((e) => e.stop()));
      await Promise.all(engineCores.splice(0).map((c) => c.close()));
    });
    after(async () => {
      await core.close();
      await sink.close();
    });

    test('expires every dead session exactly once with two engines racing on the same keyspace', async () => {
      const ids = Array.from({ length: 60 }, (_, i) => `race-${i}`);
      // Deadlines spread over ~600 ms, so both engines wake for many of them.
      await Promise.all(ids.map((id, i) => open(id, 150 + i * 10)));
      newEngine().start();
      newEngine().start();
      await allExpired(sink, ids);
      await sleep(300); // time for any double emission to show up
      for (const id of ids) {
        const events = expiredOf(sink, id);
        assert.equal(expiryIdsOf(sink, id).length, 1, `${id} expired ${events.length} times`);
        const data = events[0]!.event.data as ExpiredData;
        assert.equal(events[0]!.event.id, `${id}/${data.incarnation}/expired`);
        assert.equal(events[0]!.event.source, '/session-reaper/deadline-engine');
        assert.equal(data.lagMs, Date.parse(data.detectedAt) - Date.parse(data.deadline));
        assert.ok(data.lagMs >= 0);
        assert.equal((await core.store.inspect(id))?.state, 'destroying');
      }
    });

    test('two engines racing in one pass at the same instant claim each due session once between them', async () => {
      const at = Date.now();
      const ids = Array.from({ length: 40 }, (_, i) => `pass-${i}`);
      await Promise.all(ids.map((id) => open(id, 200, at)));
      const [a, b] = [newEngine(), newEngine()];
      const [ra, rb] = await Promise.all([a.runOnce(at + 200), b.runOnce(at + 200)]);
      assert.equal(ra.expired + rb.expired, ids.length);
      assert.equal(ra.emitFailures + rb.emitFailures, 0);
      for (const id of ids) assert.equal(expiryIdsOf(sink, id).length, 1);
    });

    test('an index entry whose record the claim script cannot see is settled with declared keys, never emitted for', async () => {
      const at = Date.now();
      await open('beside-stray', 200, at);
      // An entry with no record: a stray here; on Cluster it could be a record a resharding moved already.
      await core.redis.zadd(core.keys.session('stray-1').deadlines, at + 100, 'stray-1');
      const report = await newEngine().runOnce(at + 200);
      // At least: a session an earlier test left due would be claimed in the same pass.
      assert.ok(report.expired >= 1 && report.skipped >= 1, JSON.stringify(report));
      assert.equal(await core.redis.zscore(core.keys.session('stray-1').deadlines, 'stray-1'), null);
      assert.equal(expiredOf(sink, 'stray-1').length, 0);
      assert.equal(expiryIdsOf(sink, 'beside-stray').length, 1);
    });

    test('never expires a session that kept heartbeating, while one that stopped expires', async () => {
      // The live one's window leaves ample slack for a slow loop on a loaded machine; it outlives the dead one's.
      await open('alive-1', 800);
      await open('dead-1', 300);
      newEngine().start();
      const until = Date.now() + 2000;
      while (Date.now() < until) {
        await core.store.heartbeat('alive-1', Date.now(), Date.now());
        await sleep(50);
      }
      await sink.waitForEvent((e) => e.event.subject === 'dead-1' && e.event.type === EventType.SessionExpired, WAIT);
      assert.equal(expiredOf(sink, 'alive-1').length, 0);
      assert.equal((await core.store.inspect('alive-1'))?.state, 'active');
    });

    test('catches up at start on sessions that were already overdue', async () => {
      const ids = Array.from({ length: 25 }, (_, i) => `overdue-${i}`);
      const past = Date.now() - 10_000;
      await Promise.all(ids.map((id) => open(id, 1000, past)));
      newEngine().start();
      await allExpired(sink, ids);
      for (const id of ids) {
        const data = expiredOf(sink, id)[0]!.event.data as ExpiredData;
        assert.equal(Date.parse(data.deadline), past + 1000);
        assert.ok(data.lagMs >= 9000);
      }
    });

    test('a mass expiry larger than a batch and than the emissions allowed in flight is emitted in full', async () => {
      const ids = Array.from({ length: 200 }, (_, i) => `mass-${i}`);
      const past = Date.now() - 5000;
      await Promise.all(ids.map((id) => open(id, 1000, past)));
      newEngine({ batchSize: 20, maxInFlightEmits: 8 }).start();
      await allExpired(sink, ids);
      for (const id of ids) assert.equal(expiryIdsOf(sink, id).length, 1, id);
    });

    test('a hold postpones expiry until the hold ends', async () => {
      await open('held-1', 200);
      await open('unheld-1', 200);
      const hold = await core.store.hold('held-1', fp('hold'), Date.now(), 1200);
      assert.equal(hold.code, 'HELD');
      const holdUntil = hold.code === 'HELD' ? hold.holdUntil : 0;
      newEngine().start();
      await sink.waitForEvent((e) => e.event.subject === 'unheld-1' && e.event.type === EventType.SessionExpired, WAIT);
      const held = await sink.waitForEvent((e) => e.event.subject === 'held-1' && e.event.type === EventType.SessionExpired, WAIT);
      const data = held.event.data as ExpiredData;
      assert.equal(Date.parse(data.deadline), holdUntil);
      assert.ok(Date.parse(data.detectedAt) >= holdUntil);
    });

    test('the engine process serves its health, expires sessions, and stops on SIGTERM', async () => {
      const proc = await startDeadlineEngine({ ...testRedisEnv(topology), REDIS_KEY_PREFIX: core.prefix, INDEX_BUCKETS: String(BUCKETS), K_SINK: sink.url, LOG_LEVEL: 'warn' });
      try {
        assert.equal((await fetch(`${proc.url}healthz`)).status, 200);
        assert.equal((await fetch(`${proc.url}healthz?deep=1`)).status, 200);
        // Live: its poll loop completes rounds (the liveness probe of knative/base/deadline-engine.yaml).
        const live = (await (await fetch(`${proc.url}livez`)).json()) as { status: string; rounds: number };
        assert.equal(live.status, 'ok');
        await open('proc-1', 200);
        await sink.waitForEvent((e) => e.event.subject === 'proc-1' && e.event.type === EventType.SessionExpired, WAIT);
      } finally {
        await proc.stop();
      }
      assert.equal(proc.child.exitCode, 0, proc.output());
    });
  });
}
