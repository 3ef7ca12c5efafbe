// The session scripts keep where a session lives inside its engine (a llama-server slot, an SGLang session id) for
// the release that frees it, move it with a migration, and book an estimated freed figure apart in the ledger
// (estimated:<node>, estimatedBytes:<node>), on a single Redis and on a cluster.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { auditLedger } from '../ledger.ts';
import { decodeEngineAddress, drawReleaseToken, encodeEngineAddress } from '../session-store.ts';
import { TOPOLOGIES } from '../../../tests/support/redis.ts';
import { pendingRelease, placementA, testCore, type TestCore } from '../../../tests/support/core.ts';

test('an engine address survives its encoding', () => {
  for (const a of [{}, { slot: 0 }, { slot: 12, engineSessionId: 'eng:1.x' }, { engineSessionId: 'e' }]) {
    assert.deepEqual(decodeEngineAddress(encodeEngineAddress(a)), a);
  }
});

for (const topology of TOPOLOGIES) {
  describe(`engine addresses and estimated frees on ${topology} Redis`, () => {
    let core: TestCore;
    before(async () => {
      core = await testCore(topology);
    });
    after(async () => {
      await core.close();
    });

    test('the release call names the slot the session was opened in', async () => {
      const { incarnation, token } = await pendingRelease(core.store, 'slot-1', { ...placementA, slot: 3 });
      const call = await core.store.beginReleaseCall('slot-1', incarnation, token, Date.now(), 10_000);
      assert.equal(call.code, 'CALL');
      assert.deepEqual(call.code === 'CALL' && call.address, { slot: 3 });
    });

    test('a live session opened again in another slot has moved: the old slot is released under the migration', async () => {
      const now = Date.now();
      const first = await core.store.open({ sessionId: 'slot-2', fingerprint: 'o1', now, liveFrom: now, windowMs: 60_000, placement: { ...placementA, slot: 0 } });
      const same = await core.store.open({ sessionId: 'slot-2', fingerprint: 'o2', now: now + 1, liveFrom: now + 1, windowMs: 60_000, placement: { ...placementA, slot: 0 } });
      assert.equal(same.code, 'REFRESHED');
      const moved = await core.store.open({ sessionId: 'slot-2', fingerprint: 'o3', now: now + 2, liveFrom: now + 2, windowMs: 60_000, placement: { ...placementA, slot: 1 } });
      assert.equal(moved.code, 'MIGRATED');
      if (moved.code !== 'MIGRATED') return;
      const old = await core.store.beginReleaseCall('slot-2', first.incarnation, moved.previous.token, now + 3, 10_000);
      assert.deepEqual(old.code === 'CALL' && { kind: old.kind, address: old.address }, { kind: 'migration', address: { slot: 0 } });
    });

    test('an estimated free is booked like any other and counted apart; its stored answer keeps the mark', async () => {
      const before = (await auditLedger(core.redis, core.keys)).totals;
      const { incarnation, token } = await pendingRelease(core.store, 'est-1', { ...placementA, engineSessionId: 'sg-1' });
      const call = await core.store.beginReleaseCall('est-1', incarnation, token, Date.now(), 10_000);
      assert.deepEqual(call.code === 'CALL' && call.address, { engineSessionId: 'sg-1' });
      assert.equal(await core.store.settleReleaseCall('est-1', incarnation, token, { answered: 700, estimated: true }), true);
      const again = await core.store.beginReleaseCall('est-1', incarnation, token, Date.now(), 10_000);
      assert.deepEqual(again, { code: 'ANSWERED', freedBytes: 700, node: placementA.node, estimated: true });
      assert.equal((await core.store.recordRelease('est-1', incarnation, 700, Date.now(), placementA.node, token, true)).code, 'RELEASED');
      const exact = await pendingRelease(core.store, 'est-2', placementA);
      assert.equal((await core.store.recordRelease('est-2', exact.incarnation, 1000, Date.now(), placementA.node, exact.token)).code, 'RELEASED');
      const audit = await auditLedger(core.redis, core.keys);
      assert.equal(audit.balanced, true, audit.problems.join('; '));
      assert.equal((audit.totals.estimatedReleases ?? 0) - (before.estimatedReleases ?? 0), 1);
      assert.equal((audit.totals.estimatedFreedBytes ?? 0) - (before.estimatedFreedBytes ?? 0), 700);
      assert.equal(audit.totals.releases - before.releases, 2);
      assert.equal(audit.totals.confirmedFreedBytes - before.confirmedFreedBytes, 1700);
      // A duplicate estimated answer books nothing.
      assert.equal((await core.store.recordRelease('est-1', incarnation, 700, Date.now(), placementA.node, drawReleaseToken(), true)).code, 'TOKEN_MISMATCH');
      assert.equal((await auditLedger(core.redis, core.keys)).totals.estimatedReleases, audit.totals.estimatedReleases);
    });
  });
}
