// The reconciler, driven pass by pass (runOnce at chosen instants) against real Redis (single and cluster), the real
// simulated runtime over HTTP and a real event sink: an allocation the runtime holds for no session is released once
// it stayed unowned for RECONCILE_GRACE_MS, exactly once, booked and announced; a live or ending session's allocation
// is never touched; one whose session.opened arrives during the grace is kept; a runtime without a listing is skipped.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EventType } from '../core/contract/events.ts';
import { createCore, type Core } from '../core/function-host.ts';
import { startSimRuntime, type SimRuntime } from '../../runtimes/sim-gpu-runtime/server.ts';
import { coreEnv, fp, openOut, testCore, type TestCore } from '../../tests/support/core.ts';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { TOPOLOGIES } from '../../tests/support/redis.ts';
import { runtimesEnv } from '../../tests/support/runtimes.ts';
import { createEngineReconciler, type EngineReconciler } from './engine-reconciler.ts';

const GiB = 1024 ** 3;
const GRACE_MS = 5000;

for (const topology of TOPOLOGIES) {
  describe(`the reconciler on ${topology} Redis`, () => {
    let sink: EventSink;
    let core: TestCore;
    let sim: SimRuntime;
    let unlisted: SimRuntime;
    let engineCore: Core;
    let reconciling: EngineReconciler;

    before(async () => {
      [sink, core, sim, unlisted] = await Promise.all([startEventSink(), testCore(topology), startSimRuntime({ seed: 21 }), startSimRuntime({ seed: 22, listing: false })]);
      const env = {
        ...coreEnv(core, topology, { K_SINK: sink.url, LOG_LEVEL: 'silent' }),
        ...runtimesEnv({ name: 'sim', url: sim.url }, { name: 'sim-unlisted', url: unlisted.url }),
        RECONCILE_INTERVAL_MS: '1000',
        RECONCILE_GRACE_MS: String(GRACE_MS),
      };
      engineCore = createCore({ name: 'deadline-engine', env });
      const built = createEngineReconciler(engineCore, env);
      assert.ok(built, 'the reconciler is on');
      reconciling = built;
    });
    after(async () => {
      await reconciling.reconciler.stop();
      reconciling.runtime.shutdown();
      await engineCore.close();
      await Promise.all([core.close(), sink.close(), sim.stop(), unlisted.stop()]);
    });

    const orphanEvents = (sessionId: string) => sink.events.filter((e) => e.event.type === EventType.GpuOrphanReleased && e.event.subject === sessionId);
    const open = (sessionId: string, now: number) =>
      core.store.open({ sessionId, fingerprint: fp(), now, liveFrom: now, windowMs: 600_000, placement: { node: 'gpu-node-a', runtimeUrl: sim.url, gpuBytes: GiB } });

    test('an allocation no session owns is released after the grace, exactly once, booked and announced', async () => {
      const t = Date.now();
      sim.allocate('lost-1', 7, 2 * GiB);

      const first = await reconciling.reconciler.runOnce(t);
      assert.ok(first.waiting >= 1, 'seen unowned, within the grace');
      assert.equal((await reconciling.reconciler.runOnce(t + GRACE_MS - 1)).released, 0, 'not before the grace is over');
      assert.ok(sim.session('lost-1'), 'still held during the grace');

      const due = await reconciling.reconciler.runOnce(t + GRACE_MS);
      assert.equal(due.released, 1);
      assert.equal(due.freedBytes, 2 * GiB);
      assert.equal(sim.session('lost-1'), undefined, 'the runtime freed it');
      assert.equal((await reconciling.reconciler.runOnce(t + 3 * GRACE_MS)).released, 0, 'nothing left to release');
      assert.equal(sim.stats().releases['lost-1:7'], 1, 'freed exactly once');

      const events = orphanEvents('lost-1');
      assert.equal(events.length, 1);
      assert.equal(events[0]!.event.source, '/session-reaper/deadline-engine');
      assert.equal(events[0]!.event.id, 'lost-1/7/orphan/sim');
      assert.deepEqual(events[0]!.event.data, {
        sessionId: 'lost-1', incarnation: 7, runtime: 'sim', freedBytes: 2 * GiB,
        firstSeenAt: new Date(t).toISOString(), releasedAt: new Date(t + GRACE_MS).toISOString(),
      });
      const ledger = await core.redis.hgetall(core.keys.session('lost-1').ledger);
      assert.equal(ledger['orphans:sim'], '1');
      assert.equal(ledger['orphanBytes:sim'], String(2 * GiB));
    });

    test("a live session's allocation and one being destroyed are never released", async () => {
      const t = Date.now();
      const live = await open('live-1', t);
      sim.allocate('live-1', live.incarnation, GiB);
      const ending = await open('ending-1', t);
      sim.allocate('ending-1', ending.incarnation, GiB);
      assert.equal((await core.store.claimDestroy({ sessionId: 'ending-1', fingerprint: fp(), cause: 'closed', now: t })).code, 'CLAIMED');

      for (const at of [t, t + GRACE_MS, t + 10 * GRACE_MS]) await reconciling.reconciler.runOnce(at);
      assert.deepEqual(sim.session('live-1'), { sessionId: 'live-1', incarnation: live.incarnation, bytes: GiB });
      assert.deepEqual(sim.session('ending-1'), { sessionId: 'ending-1', incarnation: ending.incarnation, bytes: GiB });
      assert.equal(sim.stats().releases[`live-1:${live.incarnation}`], undefined);
      assert.equal(sim.stats().releases[`ending-1:${ending.incarnation}`], undefined);
      assert.deepEqual([...orphanEvents('live-1'), ...orphanEvents('ending-1')], []);
    });

    test('an allocation whose session.opened arrives during the grace is kept', async () => {
      const t = Date.now();
      // The runtime holds the incarnation Redis hands out; the record is set aside before the first pass, as if
      // its session.opened had not arrived yet, and put back within the grace, as that late opened would write it.
      const opened = await open('late-1', t);
      sim.allocate('late-1', opened.incarnation, GiB);
      const recordKey = await openOut(core, 'late-1');
      const record = await core.redis.hgetall(recordKey);
      await core.redis.del(recordKey);

      const before = await reconciling.reconciler.runOnce(t);
      assert.ok(before.waiting >= 1, 'seen unowned');
      await core.redis.hset(recordKey, record);

      for (const at of [t + GRACE_MS, t + 10 * GRACE_MS]) await reconciling.reconciler.runOnce(at);
      assert.deepEqual(sim.session('late-1'), { sessionId: 'late-1', incarnation: opened.incarnation, bytes: GiB });
      assert.equal(sim.stats().releases[`late-1:${opened.incarnation}`], undefined);
      assert.deepEqual(orphanEvents('late-1'), []);
      // An owned allocation is not looked at again (one read per page), so its old sighting is left to expire.
      const ttl = await core.redis.pttl(core.keys.orphanSighting('sim', 'late-1', opened.incarnation));
      assert.ok(ttl > 0 && ttl <= GRACE_MS + 3 * 1000, `the sighting expires (pttl ${ttl})`);
    });

    test('a runtime without a listing is not reconciled, and its memory is left alone', async () => {
      const t = Date.now();
      unlisted.allocate('unlisted-1', 1, GiB);
      const asked = unlisted.stats().received;
      const report = await reconciling.reconciler.runOnce(t + 100 * GRACE_MS);
      assert.equal(report.unsupported, 1);
      assert.ok(unlisted.session('unlisted-1'));
      assert.equal(unlisted.stats().received, asked + 1, 'asked for its listing only');
      assert.deepEqual(unlisted.stats().releases, {});
    });
  });
}
