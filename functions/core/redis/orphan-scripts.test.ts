// The reconciler's scripts (heldSessionOwners, sightOrphan, settleOrphan) against real Redis, on a single server and
// on a 3-master cluster, with every return code.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { OrphanStore } from '../orphan-store.ts';
import { Scripts } from './scripts.ts';
import { TOPOLOGIES } from '../../../tests/support/redis.ts';
import { fp, openAt, placementB, testCore, type TestCore } from '../../../tests/support/core.ts';

const T0 = 1_800_000_000_000;
const TIMES = { graceMs: 1000, ttlMs: 10_000, claimMs: 500 };

for (const topology of TOPOLOGIES) {
  describe(`orphan scripts on ${topology} Redis`, () => {
    let core: TestCore;
    let orphans: OrphanStore;
    before(async () => {
      core = await testCore(topology);
      orphans = new OrphanStore(core.redis, core.keys, await Scripts.register(core.redis));
    });
    after(async () => {
      await core.close();
    });

    test('heldSessionOwners owns an active or destroying incarnation and a pending migration, nothing else', async () => {
      const live = await openAt(core, 'own-live', T0);
      const ending = await openAt(core, 'own-ending', T0);
      await core.store.claimDestroy({ sessionId: 'own-ending', fingerprint: fp(), cause: 'closed', now: T0 });
      const moved = await openAt(core, 'own-moved', T0);
      await openAt(core, 'own-moved', T0 + 1, placementB);
      const held = [
        { sessionId: 'own-live', incarnation: live.incarnation },
        { sessionId: 'own-live', incarnation: live.incarnation + 1000 },
        { sessionId: 'own-ending', incarnation: ending.incarnation },
        { sessionId: 'own-moved', incarnation: moved.incarnation },
        { sessionId: 'own-nobody', incarnation: 1 },
      ];
      assert.deepEqual(await orphans.owned(held), [true, false, true, true, false]);
    });

    test('sightOrphan waits out the grace, then claims once, and lets a lapsed claim be retaken', async () => {
      const held = { sessionId: 'sight-1', incarnation: 4 };
      assert.deepEqual(await orphans.sight('rt', held, T0, TIMES), { code: 'WAITING', firstSeen: T0 });
      assert.deepEqual(await orphans.sight('rt', held, T0 + 999, TIMES), { code: 'WAITING', firstSeen: T0 });
      assert.deepEqual(await orphans.sight('rt', held, T0 + 1000, TIMES), { code: 'DUE', firstSeen: T0, claimedAt: T0 + 1000 });
      assert.deepEqual(await orphans.sight('rt', held, T0 + 1001, TIMES), { code: 'CLAIMED', claimedAt: T0 + 1000 });
      assert.deepEqual(await orphans.sight('rt', held, T0 + 1500, TIMES), { code: 'DUE', firstSeen: T0, claimedAt: T0 + 1500 });
      const ttl = await core.redis.pttl(core.keys.orphanSighting('rt', held.sessionId, held.incarnation));
      assert.ok(ttl > 0 && ttl <= TIMES.ttlMs, 'a sighting expires unless seen again');
    });

    test('sightOrphan drops the sighting of an allocation that gained an owner', async () => {
      const opened = await openAt(core, 'sight-late', T0);
      const other = { sessionId: 'sight-late', incarnation: opened.incarnation + 1 };
      assert.equal((await orphans.sight('rt', other, T0, TIMES)).code, 'WAITING');
      const held = { sessionId: 'sight-late', incarnation: opened.incarnation };
      assert.deepEqual(await orphans.sight('rt', held, T0 + 5000, TIMES), { code: 'OWNED' });
      assert.equal(await core.redis.exists(core.keys.orphanSighting('rt', held.sessionId, held.incarnation)), 0);
    });

    test('settleOrphan books a claimed release once, forgets a gone one, and lifts the claim of a failed one', async () => {
      const held = { sessionId: 'settle-1', incarnation: 2 };
      await orphans.sight('rt-a', held, T0, TIMES);
      const due = await orphans.sight('rt-a', held, T0 + 1000, TIMES);
      assert.equal(due.code, 'DUE');
      assert.deepEqual(await orphans.settle('rt-a', held, T0 + 999, 'released', 77), { code: 'NOT_CLAIMED' }, 'another claim');
      assert.deepEqual(await orphans.settle('rt-a', held, T0 + 1000, 'failed', 0), { code: 'RETRY' });
      assert.deepEqual(await orphans.sight('rt-a', held, T0 + 1001, TIMES), { code: 'DUE', firstSeen: T0, claimedAt: T0 + 1001 });
      assert.deepEqual(await orphans.settle('rt-a', held, T0 + 1001, 'released', 77), { code: 'BOOKED', firstSeen: T0 });
      assert.deepEqual(await orphans.settle('rt-a', held, T0 + 1001, 'released', 77), { code: 'NOT_CLAIMED' }, 'booked once');
      const ledger = await core.redis.hgetall(core.keys.session(held.sessionId).ledger);
      assert.equal(ledger['orphans:rt-a'], '1');
      assert.equal(ledger['orphanBytes:rt-a'], '77');

      const gone = { sessionId: 'settle-2', incarnation: 1 };
      await orphans.sight('rt-a', gone, T0, TIMES);
      assert.equal((await orphans.sight('rt-a', gone, T0 + 1000, TIMES)).code, 'DUE');
      assert.deepEqual(await orphans.settle('rt-a', gone, T0 + 1000, 'gone', 0), { code: 'FORGOTTEN' });
      assert.equal(await core.redis.exists(core.keys.orphanSighting('rt-a', gone.sessionId, gone.incarnation)), 0);
    });
  });
}
