// Quiet records (lua/includes/quiet.lua): a session that holds only what its open wrote is one field of its bucket's
// quiet hash. Heartbeats leave it there; anything else opens it out to a hash of its own with the same fields; every
// reader (scripts, inspect, the reconciler) sees the same session either way; and a store that does not pack
// (SESSION_RECORD_PACKING=false, an upgrade) works on the same keys beside one that does.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { SessionStore, drawReleaseToken, type Placement } from '../session-store.ts';
import { OrphanStore } from '../orphan-store.ts';
import { Scripts } from './scripts.ts';
import { TOPOLOGIES } from '../../../tests/support/redis.ts';
import { fp, placementA, recordOf, testCore, type TestCore } from '../../../tests/support/core.ts';

const T0 = 1_800_000_000_000;
const engine: Placement = { ...placementA, slot: 3, engineSessionId: 'eng-7' };

for (const topology of TOPOLOGIES) {
  describe(`quiet records on ${topology} Redis`, () => {
    let core: TestCore;
    let unpacking: SessionStore;
    before(async () => {
      core = await testCore(topology);
      unpacking = new SessionStore(core.redis, core.keys, await Scripts.register(core.redis), { tombstoneTtlMs: 60_000, quietRecords: false });
    });
    after(async () => {
      await core.close();
    });

    // Where a record is expected: quiet, or a hash of its own.
    const expect = (quiet: boolean) => (quiet ? { own: false, quiet: true } : { own: true, quiet: false });
    const where = async (id: string) => {
      const k = core.keys.session(id);
      return { own: await core.redis.exists(k.session) === 1, quiet: await core.redis.hexists(k.quiet, id) === 1 };
    };
    const open = (store: SessionStore, id: string, at: number, extra: { tenant?: string; model?: string; placement?: Placement } = {}) =>
      store.open({ sessionId: id, fingerprint: fp(), now: at, liveFrom: at, windowMs: 1000, placement: extra.placement ?? engine, tenant: extra.tenant, model: extra.model });

    test('an opened session is quiet, reads whole, and heartbeats move its deadline without opening it out', async () => {
      const opened = await open(core.store, 'q-1', T0, { tenant: 'team a', model: 'llama 3 8B' });
      assert.equal(opened.code, 'OPENED');
      assert.deepEqual(await where('q-1'), expect(true));
      const view = (await core.store.inspect('q-1'))!;
      assert.deepEqual(
        { state: view.state, inc: view.incarnation, tenant: view.tenant, model: view.model, openedAt: view.openedAt, windowMs: view.windowMs, placement: view.placement, deadline: view.deadline },
        { state: 'active', inc: opened.code === 'OPENED' && opened.incarnation, tenant: 'team a', model: 'llama 3 8B', openedAt: T0, windowMs: 1000, placement: engine, deadline: T0 + 1000 },
      );
      const beat = await core.store.heartbeat('q-1', T0 + 500, T0 + 500, 'team a');
      assert.deepEqual(beat, { code: 'REFRESHED', incarnation: view.incarnation, deadline: T0 + 1500 });
      assert.equal((await core.store.heartbeat('q-1', T0 + 600, T0 + 600, 'team b')).code, 'NOT_OWNER');
      assert.equal((await core.store.heartbeat('q-1', T0 + 600, T0 + 600, 'team')).code, 'NOT_OWNER', 'a part of its tenant is not its tenant');
      assert.equal((await core.store.heartbeat('q-1', T0 + 600, T0 + 600)).code, 'NOT_OWNER', 'no tenant named is not its tenant');
      assert.deepEqual(await where('q-1'), expect(true));
      assert.equal((await core.store.inspect('q-1'))?.deadline, T0 + 1500);
    });

    test('an activity opens it out to a hash of its own holding the same fields, and it stays there', async () => {
      await open(core.store, 'q-2', T0, { tenant: 't', model: 'm' });
      const quiet = await recordOf(core, 'q-2');
      const r = await core.store.recordActivity({ sessionId: 'q-2', fingerprint: fp(), liveFrom: T0 + 100, now: T0 + 100, expectedVersion: 0, lastActivityAt: T0 + 100, context: {}, tenant: 't' });
      assert.equal(r.code, 'APPLIED');
      assert.deepEqual(await where('q-2'), expect(false));
      const { r: ring, ...own } = await recordOf(core, 'q-2');
      assert.ok(ring, 'the activity is remembered in the record');
      assert.deepEqual(own, quiet, 'the script unpacked what the reader unpacks');
      assert.equal((await core.store.heartbeat('q-2', T0 + 900, T0 + 900, 't')).code, 'REFRESHED');
      assert.deepEqual(await where('q-2'), expect(false));
    });

    test('the deadline engine claims a quiet session that fell due, and a close ends one', async () => {
      const bucketOf = (id: string) => core.keys.bucketOf(id);
      await open(core.store, 'q-3', T0);
      const claimed = await core.store.claimDue(bucketOf('q-3'), T0 + 1000, 1000);
      assert.ok(claimed.claimed.some((c) => c.sessionId === 'q-3'), JSON.stringify(claimed));
      assert.deepEqual(await where('q-3'), expect(false));
      assert.equal((await core.store.inspect('q-3'))?.state, 'destroying');
      await open(core.store, 'q-4', T0);
      assert.equal((await core.store.claimDestroy({ sessionId: 'q-4', fingerprint: fp(), cause: 'closed', now: T0 + 10 })).code, 'CLAIMED');
      assert.equal((await core.store.inspect('q-4'))?.state, 'destroying');
    });

    test('the reconciler counts a quiet session as the owner of its allocation, and only at its incarnation', async () => {
      const opened = await open(core.store, 'q-5', T0);
      assert.equal(opened.code, 'OPENED');
      const inc = opened.code === 'OPENED' ? opened.incarnation : 0;
      const orphans = new OrphanStore(core.redis, core.keys, await Scripts.register(core.redis));
      assert.deepEqual(await orphans.owned([{ sessionId: 'q-5', incarnation: inc }, { sessionId: 'q-5', incarnation: inc - 1 }]), [true, false]);
      const sighting = await orphans.sight('sim', { sessionId: 'q-5', incarnation: inc }, T0, { graceMs: 0, ttlMs: 60_000, claimMs: 60_000 });
      assert.equal(sighting.code, 'OWNED');
    });

    test('an open again, a migration and a reopen after the destroy leave it quiet when nothing more is held', async () => {
      assert.equal((await open(core.store, 'q-6', T0)).code, 'OPENED');
      assert.equal((await open(core.store, 'q-6', T0 + 100)).code, 'REFRESHED');
      assert.deepEqual(await where('q-6'), expect(true));
      const moved = await open(core.store, 'q-6', T0 + 200, { placement: { ...engine, slot: 4 } });
      if (moved.code !== 'MIGRATED') return assert.fail(moved.code);
      assert.deepEqual(await where('q-6'), expect(true));
      assert.deepEqual((await core.store.inspect('q-6'))?.placement, { ...engine, slot: 4 });
      assert.equal((await core.store.claimDestroy({ sessionId: 'q-6', fingerprint: fp(), cause: 'closed', now: T0 + 300 })).code, 'CLAIMED');
      const token = drawReleaseToken();
      assert.equal((await core.store.advance('q-6', moved.incarnation, 'gpu_release_requested', T0 + 301, { attempt: 1, token })).code, 'ADVANCED');
      assert.equal((await core.store.recordRelease('q-6', moved.incarnation, 1000, T0 + 302, engine.node, token)).code, 'RELEASED');
      assert.equal((await core.store.purge('q-6', moved.incarnation, T0 + 303)).code, 'PURGED');
      assert.equal((await core.store.complete('q-6', moved.incarnation, T0 + 304)).code, 'COMPLETED');
      assert.deepEqual(await where('q-6'), expect(false), 'a tombstone is a hash of its own, with its TTL');
      const again = await open(core.store, 'q-6', T0 + 400);
      assert.equal(again.code, 'REOPENED');
      assert.deepEqual(await where('q-6'), expect(true));
      assert.equal((await recordOf(core, 'q-6')).ro, String(T0 + 400), 'when it was reopened travels with it');
      assert.equal((await core.store.inspect('q-6'))?.state, 'active');
    });

    test('a value holding the separator keeps its record a hash of its own', async () => {
      await open(core.store, 'q-7', T0, { model: 'odd\x1fmodel' });
      assert.deepEqual(await where('q-7'), expect(false));
      assert.equal((await core.store.inspect('q-7'))?.model, 'odd\x1fmodel');
    });

    test('a record key that exists wins over a stale quiet field, which never overwrites it', async () => {
      const opened = await open(core.store, 'q-10', T0);
      if (opened.code !== 'OPENED') return assert.fail(opened.code);
      // As a replica of a version before quiet records would leave it: a newer incarnation in a record of its own.
      const k = core.keys.session('q-10');
      const newer = { ...(await recordOf(core, 'q-10')), i: String(opened.incarnation + 1) };
      await core.redis.hset(k.session, newer);
      assert.equal((await core.store.inspect('q-10'))?.incarnation, opened.incarnation + 1);
      const claimed = await core.store.claimDestroy({ sessionId: 'q-10', fingerprint: fp(), cause: 'closed', now: T0 + 10 });
      assert.ok(claimed.code === 'CLAIMED' && claimed.incarnation === opened.incarnation + 1, JSON.stringify(claimed));
      assert.equal((await core.redis.hgetall(k.session)).i, String(opened.incarnation + 1), 'the claim did not unpack the stale field over it');
      assert.equal(await core.redis.hexists(k.quiet, 'q-10'), 0, 'and dropped it, so it cannot come back once the tombstone expires');
    });

    test('a store that does not pack and one that does work on each other\'s sessions', async () => {
      await open(unpacking, 'q-8', T0);
      assert.deepEqual(await where('q-8'), expect(false));
      assert.equal((await core.store.heartbeat('q-8', T0 + 500, T0 + 500)).code, 'REFRESHED');
      await open(core.store, 'q-9', T0);
      assert.deepEqual(await where('q-9'), expect(true));
      const mixed = await unpacking.heartbeatMany([{ sessionId: 'q-8', liveFrom: T0 + 700 }, { sessionId: 'q-9', liveFrom: T0 + 700 }], T0 + 700);
      assert.deepEqual(mixed.map((r) => r.code === 'REFRESHED' && r.deadline), [T0 + 1700, T0 + 1700]);
      assert.equal((await unpacking.open({ sessionId: 'q-9', fingerprint: fp(), now: T0 + 800, liveFrom: T0 + 800, windowMs: 1000, placement: engine })).code, 'REFRESHED');
      assert.deepEqual(await where('q-9'), expect(false), 'opened out by the store that does not pack, and left so');
      assert.equal((await unpacking.claimDestroy({ sessionId: 'q-8', fingerprint: fp(), cause: 'closed', now: T0 + 900 })).code, 'CLAIMED');
    });

    // Last: it opens out every quiet record of the suite's keys.
    test('openOutQuiet (sessionctl unpack) opens every quiet record out with the same fields', async () => {
      await open(core.store, 'q-11', T0, { tenant: 'x', model: 'y' });
      const quiet = await recordOf(core, 'q-11');
      assert.ok((await core.store.quietCount()) > 0);
      const results = await Promise.all(core.keys.allBuckets().map((b) => core.store.openOutQuiet(b.bucket)));
      assert.ok(results.every((r) => r.left === 0), JSON.stringify(results));
      assert.equal(await core.store.quietCount(), 0);
      assert.deepEqual(await where('q-11'), expect(false));
      assert.deepEqual(await core.redis.hgetall(core.keys.session('q-11').session), quiet);
      assert.equal((await core.store.heartbeat('q-11', T0 + 100, T0 + 100, 'x')).code, 'REFRESHED');
    });
  });
}
