// Every session script against real Redis, on a single server and on a 3-master cluster, with every return code.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { auditLedger } from '../ledger.ts';
import { MAX_GPU_BYTES } from '../contract/events.ts';
import { SessionStore, UnreadableRecordError, drawReleaseToken, migrationMember, type LivenessResult } from '../session-store.ts';
import { Scripts } from './scripts.ts';
import { TOPOLOGIES } from '../../../tests/support/redis.ts';
import { fp, openAt, openOut, placementA, placementB, recordOf, testCore, type TestCore } from '../../../tests/support/core.ts';

const T0 = 1_800_000_000_000;

/** Drives a claimed destroy through every stage, as destroy-dispatch does. */
async function destroyFully(core: TestCore, id: string, inc: number, at: number): Promise<void> {
  const token = drawReleaseToken();
  assert.equal((await core.store.advance(id, inc, 'gpu_release_requested', at, { attempt: 1, token })).code, 'ADVANCED');
  assert.equal((await core.store.recordRelease(id, inc, 1000, at + 1, 'gpu-node-a', token)).code, 'RELEASED');
  assert.equal((await core.store.purge(id, inc, at + 2)).code, 'PURGED');
  assert.equal((await core.store.complete(id, inc, at + 3)).code, 'COMPLETED');
}

/** Opens a session at `now` (as openAt) and answers it, failing the test unless it was OPENED. */
async function openedAt(core: TestCore, id: string, now: number): Promise<{ incarnation: number }> {
  const r = await openAt(core, id, now);
  if (r.code !== 'OPENED') return assert.fail(`${id} answered ${r.code}, not OPENED`);
  return r;
}

/** A user's activity on a session at `at` (its context at `version` so far), as activity-score records it. */
async function activityAt(core: TestCore, id: string, at: number, version: number): Promise<void> {
  await core.store.recordActivity({ sessionId: id, fingerprint: fp(), liveFrom: at, now: at, expectedVersion: version, lastActivityAt: at, context: {} });
}

for (const topology of TOPOLOGIES) {
  describe(`session scripts on ${topology} Redis`, () => {
    let core: TestCore;
    before(async () => {
      core = await testCore(topology);
    });
    after(async () => {
      await core.close();
    });

    describe('openSession', () => {
      test('opens a new session with an incarnation and a deadline one window away', async () => {
        const r = await openAt(core, 'open-1', T0);
        assert.equal(r.code, 'OPENED');
        assert.ok(r.code === 'OPENED' && r.incarnation >= 1 && r.deadline === T0 + 1000);
        const view = await core.store.inspect('open-1');
        assert.equal(view?.state, 'active');
        assert.deepEqual(view?.placement, placementA);
      });

      test('treats the same event twice as a duplicate', async () => {
        const f = fp();
        await openAt(core, 'open-2', T0, placementA, f);
        assert.equal((await openAt(core, 'open-2', T0 + 10, placementA, f)).code, 'DUPLICATE');
      });

      test('refreshes a live session opened again at the same placement, never moving its deadline earlier', async () => {
        await openAt(core, 'open-3', T0 + 500);
        const r = await core.store.open({ sessionId: 'open-3', fingerprint: fp(), now: T0 + 600, liveFrom: T0, windowMs: 1000, placement: placementA });
        assert.deepEqual(r.code === 'REFRESHED' && r.deadline, T0 + 1500);
      });

      test('migrates a session to a new placement under a new incarnation and leaves the old allocation pending', async () => {
        const first = await openAt(core, 'open-4', T0);
        const r = await openAt(core, 'open-4', T0 + 100, placementB);
        assert.equal(r.code, 'MIGRATED');
        if (r.code !== 'MIGRATED' || first.code !== 'OPENED') return;
        assert.ok(r.incarnation > first.incarnation);
        assert.deepEqual({ ...r.previous, token: typeof r.previous.token }, { incarnation: first.incarnation, placement: placementA, token: 'string' });
        const inflight = await core.store.destroysInFlight();
        assert.ok(inflight.some((m) => m.member === migrationMember('open-4', first.incarnation)));
        assert.equal((await core.store.recordRelease('open-4', first.incarnation, 1000, T0 + 199, 'gpu-node-a', drawReleaseToken())).code, 'TOKEN_MISMATCH', 'another token books nothing');
        assert.equal((await core.store.recordRelease('open-4', first.incarnation, 1000, T0 + 200, 'gpu-node-a', r.previous.token)).code, 'MIGRATION_RELEASED');
        assert.equal((await core.store.recordRelease('open-4', first.incarnation, 1000, T0 + 201, 'gpu-node-a', r.previous.token)).code, 'STALE');
      });

      test('refuses to move a live session back to a placement set by an older opened', async () => {
        await openAt(core, 'open-5', T0 + 1000, placementA);
        const r = await core.store.open({ sessionId: 'open-5', fingerprint: fp(), now: T0 + 2000, liveFrom: T0, windowMs: 1000, placement: placementB });
        assert.equal(r.code, 'STALE');
        assert.deepEqual((await core.store.inspect('open-5'))?.placement, placementA);
      });

      test('keeps the open time as an offset from the incarnation, and still reads a record that keeps it whole', async () => {
        const first = await openAt(core, 'open-od', T0 + 1000, placementA);
        assert.equal(first.code, 'OPENED');
        const inc = (await core.store.inspect('open-od'))!.incarnation;
        const fields = async () => { const r = await recordOf(core, 'open-od'); return [r.o ?? null, r.od ?? null]; };
        assert.deepEqual(await fields(), [null, String(T0 + 1000 - inc)]);
        assert.equal((await core.store.inspect('open-od'))?.openedAt, T0 + 1000);
        // A record as the scripts wrote it before `od`: the open time itself, as `o`.
        const key = await openOut(core, 'open-od');
        await core.redis.hdel(key, 'od');
        await core.redis.hset(key, 'o', String(T0 + 1000));
        assert.equal((await core.store.inspect('open-od'))?.openedAt, T0 + 1000);
        const older = await core.store.open({ sessionId: 'open-od', fingerprint: fp(), now: T0 + 2000, liveFrom: T0 + 999, windowMs: 1000, placement: placementB });
        assert.equal(older.code, 'STALE', 'an older opened never moves it back, whichever way its open time is kept');
        const moved = await core.store.open({ sessionId: 'open-od', fingerprint: fp(), now: T0 + 2000, liveFrom: T0 + 1500, windowMs: 1000, placement: placementB });
        assert.equal(moved.code, 'MIGRATED');
        assert.deepEqual(await fields(), [null, String(T0 + 1500 - moved.incarnation)], 'a migration rewrites it as an offset');
        assert.equal((await core.store.inspect('open-od'))?.openedAt, T0 + 1500);
        const back = await core.store.open({ sessionId: 'open-od', fingerprint: fp(), now: T0 + 2100, liveFrom: T0 + 1400, windowMs: 1000, placement: placementA });
        assert.equal(back.code, 'STALE');
      });

      test('answers BUSY while the previous incarnation is being destroyed', async () => {
        await openAt(core, 'open-6', T0);
        await core.store.claimDestroy({ sessionId: 'open-6', fingerprint: fp(), cause: 'closed', now: T0 + 1 });
        assert.equal((await openAt(core, 'open-6', T0 + 2)).code, 'BUSY');
      });

      test('reopens a destroyed id under a newer incarnation, but never for an event older than the destroy', async () => {
        const first = await openAt(core, 'open-7', T0);
        assert.equal(first.code, 'OPENED');
        if (first.code !== 'OPENED') return;
        await core.store.claimDestroy({ sessionId: 'open-7', fingerprint: fp(), cause: 'closed', now: T0 + 10 });
        await destroyFully(core, 'open-7', first.incarnation, T0 + 11);
        assert.equal((await openAt(core, 'open-7', T0 + 5)).code, 'STALE');
        const again = await openAt(core, 'open-7', T0 + 50);
        assert.equal(again.code, 'REOPENED');
        assert.ok(again.code === 'REOPENED' && again.incarnation > first.incarnation && again.previousIncarnation === first.incarnation);
      });
    });

    describe('heartbeat', () => {
      test('moves the deadline forward and never back', async () => {
        await openAt(core, 'hb-1', T0);
        assert.deepEqual(await core.store.heartbeat('hb-1', T0 + 400, T0 + 400), { code: 'REFRESHED', incarnation: (await core.store.inspect('hb-1'))!.incarnation, deadline: T0 + 1400 });
        const older = await core.store.heartbeat('hb-1', T0 + 100, T0 + 500);
        assert.equal(older.code === 'REFRESHED' && older.deadline, T0 + 1400);
      });

      test('caps the live-from time at now, so a producer clock ahead of ours cannot extend a session', async () => {
        await openAt(core, 'hb-2', T0);
        const r = await core.store.heartbeat('hb-2', T0 + 60_000, T0 + 10);
        assert.equal(r.code === 'REFRESHED' && r.deadline, T0 + 1010);
      });

      test('reports UNKNOWN for a session never opened and ENDED for one being destroyed', async () => {
        assert.deepEqual(await core.store.heartbeat('hb-none', T0, T0), { code: 'UNKNOWN' });
        // Indexed without a record here: on Cluster a resharding moved it, so the heartbeat is refused with
        // TRYAGAIN (retried by the client, else answered 5xx), never dropped as UNKNOWN. On a single Redis it is a
        // stray entry (nothing moves records there): UNKNOWN, and the other heartbeats of the call are applied.
        await core.redis.zadd(core.keys.session('hb-moved').deadlines, T0 + 1000, 'hb-moved');
        await openAt(core, 'hb-beside', T0);
        assert.notEqual(core.keys.bucketOf('hb-beside'), core.keys.bucketOf('hb-moved'), 'the two ids are in different buckets');
        const call = core.store.heartbeatMany([{ sessionId: 'hb-beside', liveFrom: T0 + 10 }, { sessionId: 'hb-moved', liveFrom: T0 }], T0 + 10);
        if (topology === 'cluster') await assert.rejects(call, /TRYAGAIN/);
        else assert.deepEqual((await call).map((r) => r.code), ['REFRESHED', 'UNKNOWN']);
        await core.redis.zrem(core.keys.session('hb-moved').deadlines, 'hb-moved');
        await openAt(core, 'hb-3', T0);
        await core.store.claimDestroy({ sessionId: 'hb-3', fingerprint: fp(), cause: 'closed', now: T0 + 1 });
        const r = await core.store.heartbeat('hb-3', T0 + 2, T0 + 2);
        assert.equal(r.code, 'ENDED');
        assert.equal(r.code === 'ENDED' && r.state, 'destroying');
      });

      test('answers every heartbeat of one call in order, whatever each session is, with tenants or without', async () => {
        // Ids of one bucket, so that all of them travel in one script call.
        const bucket = core.keys.bucketOf('mix-0');
        const ids: string[] = [];
        for (let n = 0; ids.length < 7; n++) if (core.keys.bucketOf(`mix-${n}`) === bucket) ids.push(`mix-${n}`);
        const [moved, stays, unknown, destroying, destroyed, owned, twice] = ids as [string, string, string, string, string, string, string];
        for (const id of [moved, stays, destroying, destroyed, twice]) await openAt(core, id, T0);
        await core.store.open({ sessionId: owned, fingerprint: fp(), now: T0, liveFrom: T0, windowMs: 1000, placement: placementA, tenant: 'acme' });
        const inc = async (id: string) => (await core.store.inspect(id))!.incarnation;
        await core.store.claimDestroy({ sessionId: destroying, fingerprint: fp(), cause: 'closed', now: T0 + 1 });
        const destroyedInc = await inc(destroyed);
        await core.store.claimDestroy({ sessionId: destroyed, fingerprint: fp(), cause: 'closed', now: T0 + 1 });
        await destroyFully(core, destroyed, destroyedInc, T0 + 2);
        // stays: a heartbeat older than its deadline's, so ZADD GT leaves it and the call reads back what it left.
        await core.store.heartbeat(stays, T0 + 900, T0 + 900);
        const batch = [
          { sessionId: moved, liveFrom: T0 + 500 },
          { sessionId: stays, liveFrom: T0 + 100 },
          { sessionId: unknown, liveFrom: T0 + 500 },
          { sessionId: destroying, liveFrom: T0 + 500 },
          { sessionId: destroyed, liveFrom: T0 + 500 },
          { sessionId: owned, liveFrom: T0 + 500 },
          { sessionId: twice, liveFrom: T0 + 700 },
          { sessionId: twice, liveFrom: T0 + 300 },
          { sessionId: moved, liveFrom: T0 + 60_000 },
        ];
        const expected = async (ownedAs: 'REFRESHED' | 'NOT_OWNER', movedTo: number) => [
          { code: 'REFRESHED', incarnation: await inc(moved), deadline: movedTo },
          { code: 'REFRESHED', incarnation: await inc(stays), deadline: T0 + 1900 },
          { code: 'UNKNOWN' },
          { code: 'ENDED', incarnation: await inc(destroying), state: 'destroying' },
          { code: 'ENDED', incarnation: destroyedInc, state: 'destroyed' },
          ownedAs === 'NOT_OWNER' ? { code: 'NOT_OWNER', incarnation: await inc(owned) } : { code: 'REFRESHED', incarnation: await inc(owned), deadline: T0 + 1500 },
          // Named twice: both are answered the deadline the later-moving one left.
          { code: 'REFRESHED', incarnation: await inc(twice), deadline: T0 + 1700 },
          { code: 'REFRESHED', incarnation: await inc(twice), deadline: T0 + 1700 },
          // A live-from ahead of now counts as now.
          { code: 'REFRESHED', incarnation: await inc(moved), deadline: movedTo },
        ];
        // Without tenants, the owned session refuses; ...
        assert.deepEqual(await core.store.heartbeatMany(batch, T0 + 1000), await expected('NOT_OWNER', T0 + 2000));
        assert.equal((await core.store.inspect(owned))?.deadline, T0 + 1000, 'a refused heartbeat moves nothing');
        // ... with its tenant named (and none by the others), it is refreshed and the others answer as before.
        const withTenant = batch.map((h) => (h.sessionId === owned ? { ...h, tenant: 'acme' } : h));
        assert.deepEqual(await core.store.heartbeatMany(withTenant, T0 + 1000), await expected('REFRESHED', T0 + 2000));
      });

      test('sends the heartbeats of every bucket in one call on a single Redis and one call per bucket on a cluster', async () => {
        // Its own prefix, so the buckets' heartbeat marks start unset, and a store that counts its script calls.
        const own = await testCore(topology);
        try {
          const calls: string[] = [];
          const scripts = await Scripts.register(own.redis, undefined, { record: (_seconds, script) => calls.push(script) });
          const store = new SessionStore(own.redis, own.keys, scripts, { tombstoneTtlMs: 60_000 });
          const ids = Array.from({ length: 300 }, (_, n) => `spread-${n}`);
          for (const id of ids) await openAt(own, id, T0);
          await own.store.open({ sessionId: 'spread-owned', fingerprint: fp(), now: T0, liveFrom: T0, windowMs: 1000, placement: placementA, tenant: 'acme' });
          const few = ids.slice(0, 40);
          const buckets = (list: string[]) => new Set(list.map((id) => own.keys.bucketOf(id))).size;
          assert.equal(buckets(few), own.keys.buckets, 'the ids spread over every bucket');
          const heartbeatCalls = () => calls.splice(0).filter((c) => c === 'heartbeat').length;

          // A delivered batch: each answered its own deadline, in order, and every bucket's heartbeats are heard.
          const batch = await store.heartbeatMany(few.map((sessionId, n) => ({ sessionId, liveFrom: T0 + n })), T0 + 100);
          assert.deepEqual(batch.map((r) => r.code === 'REFRESHED' && r.deadline), few.map((_, n) => T0 + n + 1000));
          assert.equal(heartbeatCalls(), topology === 'cluster' ? own.keys.buckets : 1);
          for (const b of own.keys.allBuckets()) assert.equal(await own.redis.hget(b.watch, 'hb'), String(T0 + 100), `bucket ${b.bucket} heard`);

          // Heartbeats of one event-loop turn, one of them naming the owner's tenant and one another tenant.
          const turn = await Promise.all([
            ...few.map((id, n) => store.heartbeat(id, T0 + 200 + n, T0 + 300)),
            store.heartbeat('spread-owned', T0 + 250, T0 + 300, 'acme'),
            store.heartbeat('spread-owned', T0 + 260, T0 + 300, 'other'),
          ]);
          const owned = (await own.store.inspect('spread-owned'))!.incarnation;
          assert.deepEqual(turn.slice(0, few.length).map((r) => r.code === 'REFRESHED' && r.deadline), few.map((_, n) => T0 + 1200 + n));
          assert.deepEqual(turn.slice(few.length), [{ code: 'REFRESHED', incarnation: owned, deadline: T0 + 1250 }, { code: 'NOT_OWNER', incarnation: owned }]);
          assert.equal(heartbeatCalls(), topology === 'cluster' ? buckets([...few, 'spread-owned']) : 1);

          // More than one call holds (256 heartbeats): split, still answered in order.
          const all = await store.heartbeatMany(ids.map((sessionId, n) => ({ sessionId, liveFrom: T0 + 400 + n })), T0 + 800);
          assert.deepEqual(all.map((r) => r.code === 'REFRESHED' && r.deadline), ids.map((_, n) => T0 + 1400 + n));
          assert.equal(heartbeatCalls(), topology === 'cluster' ? own.keys.buckets : 2);
        } finally {
          await own.close();
        }
      });

      test('a record it cannot read fails its own heartbeat only, and the others of the call are applied', async () => {
        const ids = ['unreadable-a', 'unreadable-b', 'unreadable-c'];
        if (topology === 'single') assert.equal(new Set(ids.map((id) => core.keys.bucketOf(id))).size, 3, 'three buckets, so one call carries them');
        for (const id of ids) await openAt(core, id, T0);
        await core.redis.hdel(await openOut(core, 'unreadable-b'), 'w');
        const [a, b, c] = await Promise.allSettled(ids.map((id) => core.store.heartbeat(id, T0 + 500, T0 + 500))) as [
          PromiseSettledResult<LivenessResult>, PromiseSettledResult<LivenessResult>, PromiseSettledResult<LivenessResult>,
        ];
        const deadline = (r: PromiseSettledResult<LivenessResult>) => r.status === 'fulfilled' && r.value.code === 'REFRESHED' && r.value.deadline;
        assert.equal(deadline(a), T0 + 1500);
        assert.ok(b.status === 'rejected' && b.reason instanceof UnreadableRecordError && /unreadable-b/.test(String(b.reason)), String(b.status));
        assert.equal(deadline(c), T0 + 1500);
        assert.equal((await core.store.inspect('unreadable-b'))?.deadline, T0 + 1000, 'the unreadable one is left as it was');
        // A delivered batch is answered whole: refused, its readable heartbeats applied (a redelivery re-applies them: max()).
        await assert.rejects(core.store.heartbeatMany(ids.map((sessionId) => ({ sessionId, liveFrom: T0 + 700 })), T0 + 700), UnreadableRecordError);
        assert.equal((await core.store.inspect('unreadable-c'))?.deadline, T0 + 1700);
      });

      test('a call larger than its caller ever sends moves every deadline, and a short call is refused whole by name', async () => {
        // heartbeatMany sends at most 256 heartbeats a call, but the script holds for any group: 5,000 sessions of one
        // bucket (Lua's unpack() fails past a few thousand values, so its ZADD goes in pieces), half of them quiet
        // records and half records of their own.
        const scripts = await Scripts.register(core.redis);
        const bucket = core.keys.bucketOf('big-0');
        const ids: string[] = [];
        for (let n = 0; ids.length < 5000; n++) if (core.keys.bucketOf(`big-${n}`) === bucket) ids.push(`big-${n}`);
        for (let i = 0; i < ids.length; i += 500) await Promise.all(ids.slice(i, i + 500).map((id) => openAt(core, id, T0)));
        for (const id of ids.slice(0, 2500)) await openOut(core, id);
        const b = core.keys.bucket(bucket);
        const run = (args: string[]) => scripts.run('heartbeat', [b.deadlines, b.watch, b.quiet], [String(T0 + 500), topology === 'cluster' ? '1' : '0', ...args]);
        const reply = (await run([core.keys.sessionRecordPrefix(bucket), ids.join(' '), ids.map(() => '0').join(' '), '1'])) as number[];
        assert.equal(reply.length, 2 * ids.length);
        assert.deepEqual(new Set(reply.filter((_, i) => i % 2 === 1)), new Set([T0 + 1500]), 'every deadline answered moved');
        const scores = await core.redis.zmscore(b.deadlines, ...ids);
        assert.deepEqual(new Set(scores), new Set([String(T0 + 1500)]), 'every deadline moved');
        // The same again (nothing moves: the scores are read back in pieces too) answers the same.
        assert.deepEqual(await run([core.keys.sessionRecordPrefix(bucket), ids.join(' '), ids.map(() => '100').join(' '), '']), reply);
        // A group's arguments missing: the script's own refusal, not a Lua error, and nothing written.
        await assert.rejects(run([core.keys.sessionRecordPrefix(bucket), ids[0]!]), /ERR heartbeat: 4 arguments for 1 groups, expected at least 6/);
        assert.equal(await core.redis.zscore(b.deadlines, ids[0]!), String(T0 + 1500));
      });

      test('asks a bucket to note its heartbeats heard at most once in 50 ms, and at once when the clock went back', async () => {
        // Its own prefix, so the bucket's marks start unset; one session, so each call carries one bucket.
        const own = await testCore(topology);
        try {
          await openAt(own, 'mark-1', T0);
          const watch = own.keys.session('mark-1').watch;
          const beat = (at: number) => own.store.heartbeatMany([{ sessionId: 'mark-1', liveFrom: at }], at);
          await beat(T0 + 100);
          assert.equal(await own.redis.hget(watch, 'hb'), String(T0 + 100));
          // Marks gone (as if never written): a call 20 ms later does not ask, so none is written ...
          await own.redis.del(watch);
          await beat(T0 + 120);
          assert.equal(await own.redis.hget(watch, 'hb'), null, 'not asked within 50 ms of the last ask');
          // ... and the first call 50 ms after the last ask does.
          await beat(T0 + 150);
          assert.equal(await own.redis.hget(watch, 'hb'), String(T0 + 150));
          // A clock that went back asks at once (the script never moves the marks back).
          await own.redis.del(watch);
          await beat(T0 + 140);
          assert.equal(await own.redis.hget(watch, 'hb'), String(T0 + 140));
          // A call that failed wrote no mark, so the next call asks again at once: the failure is a record of the same
          // bucket that Redis cannot read as a hash.
          let bad = 0;
          while (own.keys.bucketOf(`mark-bad-${bad}`) !== own.keys.bucketOf('mark-1')) bad++;
          await own.redis.set(own.keys.session(`mark-bad-${bad}`).session, 'not a hash');
          await own.redis.del(watch);
          await assert.rejects(own.store.heartbeatMany([{ sessionId: 'mark-1', liveFrom: T0 + 300 }, { sessionId: `mark-bad-${bad}`, liveFrom: T0 + 300 }], T0 + 300));
          assert.equal(await own.redis.hget(watch, 'hb'), null);
          await beat(T0 + 310);
          assert.equal(await own.redis.hget(watch, 'hb'), String(T0 + 310), 'asked again after the failed call');
        } finally {
          await own.close();
        }
      });

      test('refuses a session id that could not travel in a batch, without spoiling the others', async () => {
        await openAt(core, 'hb-ok', T0);
        const [bad, good] = await Promise.allSettled([core.store.heartbeat('hb bad', T0, T0), core.store.heartbeat('hb-ok', T0 + 10, T0 + 10)]);
        assert.equal(bad.status, 'rejected');
        assert.deepEqual(good.status === 'fulfilled' && good.value.code, 'REFRESHED');
        await assert.rejects(core.store.heartbeatMany([{ sessionId: '', liveFrom: T0 }], T0), TypeError);
      });
    });

    describe('grantHold', () => {
      test('postpones the deadline to the end of the hold, once per event', async () => {
        await openAt(core, 'hold-1', T0);
        const f = fp();
        const r = await core.store.hold('hold-1', f, T0 + 100, 5000);
        assert.equal(r.code, 'HELD');
        assert.ok(r.code === 'HELD' && r.holdUntil === T0 + 5100 && r.deadline === T0 + 5100);
        assert.equal((await core.store.hold('hold-1', f, T0 + 900, 5000)).code, 'DUPLICATE');
        const shorter = await core.store.hold('hold-1', fp(), T0 + 200, 10);
        assert.equal(shorter.code === 'HELD' && shorter.holdUntil, T0 + 5100);
      });

      test('reports UNKNOWN and ENDED like a heartbeat', async () => {
        assert.equal((await core.store.hold('hold-none', fp(), T0, 10)).code, 'UNKNOWN');
        await openAt(core, 'hold-2', T0);
        await core.store.claimDestroy({ sessionId: 'hold-2', fingerprint: fp(), cause: 'forced', now: T0 });
        assert.equal((await core.store.hold('hold-2', fp(), T0, 10)).code, 'ENDED');
      });
    });

    describe('recordActivity', () => {
      test('stores the context with compare-and-set and refreshes liveness', async () => {
        await openAt(core, 'act-1', T0);
        const base = { sessionId: 'act-1', liveFrom: T0 + 300, now: T0 + 300, lastActivityAt: T0 + 300, context: { x: '1' } };
        const r = await core.store.recordActivity({ ...base, fingerprint: fp(), expectedVersion: 0 });
        assert.equal(r.code, 'APPLIED');
        assert.ok(r.code === 'APPLIED' && r.version === 1 && r.deadline === T0 + 1300);
        assert.equal((await core.store.recordActivity({ ...base, fingerprint: fp(), expectedVersion: 0 })).code, 'CONFLICT');
        const f = fp();
        assert.equal((await core.store.recordActivity({ ...base, fingerprint: f, expectedVersion: 1 })).code, 'APPLIED');
        assert.equal((await core.store.recordActivity({ ...base, fingerprint: f, expectedVersion: 2 })).code, 'DUPLICATE');
        const ctx = await core.store.readContext('act-1');
        assert.equal(ctx.version, 2);
        assert.equal(ctx.fields.x, '1');
        assert.equal(ctx.fields.la, String(T0 + 300));
      });

      test('reports UNKNOWN and ENDED', async () => {
        const base = { fingerprint: fp(), liveFrom: T0, now: T0, expectedVersion: 0, lastActivityAt: T0, context: {} };
        assert.equal((await core.store.recordActivity({ ...base, sessionId: 'act-none' })).code, 'UNKNOWN');
        await openAt(core, 'act-2', T0);
        await core.store.claimDestroy({ sessionId: 'act-2', fingerprint: fp(), cause: 'closed', now: T0 });
        assert.equal((await core.store.recordActivity({ ...base, sessionId: 'act-2' })).code, 'ENDED');
      });
    });

    describe('claimDestroy', () => {
      test('lets the first trigger win and records later ones as extra causes', async () => {
        await openAt(core, 'claim-1', T0);
        const f = fp();
        const first = await core.store.claimDestroy({ sessionId: 'claim-1', fingerprint: f, cause: 'closed', now: T0 + 1 });
        assert.equal(first.code, 'CLAIMED');
        assert.deepEqual(first.code === 'CLAIMED' && first.placement, placementA);
        const again = await core.store.claimDestroy({ sessionId: 'claim-1', fingerprint: f, cause: 'closed', now: T0 + 2 });
        assert.equal(again.code, 'DUPLICATE');
        const later = await core.store.claimDestroy({ sessionId: 'claim-1', fingerprint: fp(), cause: 'completed', now: T0 + 3 });
        assert.equal(later.code, 'ALREADY');
        // Each answer to go on with carries the placement and GPU bytes, read in the same script call.
        for (const r of [again, later]) assert.deepEqual('placement' in r && r.placement, placementA);
        const view = await core.store.inspect('claim-1');
        assert.equal(view?.cause, 'closed');
        assert.deepEqual(view?.extraCauses, ['completed']);
        assert.equal(view?.deadline, undefined, 'a claimed session leaves the deadline index');
      });

      test('never touches a newer incarnation for a trigger naming an older one', async () => {
        const r = await openedAt(core, 'claim-2', T0);
        const stale = await core.store.claimDestroy({ sessionId: 'claim-2', fingerprint: fp(), incarnation: r.incarnation + 1000, cause: 'expired', now: T0 });
        assert.equal(stale.code, 'STALE');
        assert.equal((await core.store.inspect('claim-2'))?.state, 'active');
      });

      test('refuses an idle verdict reached before later activity or before a hold ended', async () => {
        const r = await openedAt(core, 'claim-3', T0);
        await activityAt(core, 'claim-3', T0 + 500, 0);
        // Each verdict as the idle checker records it before emitting it (recordIdleVerdict), so only REVIVED refuses.
        const idle = async (id: string, now: number, idleSince: number) => {
          assert.equal(await core.store.recordIdleVerdict('claim-3', r.incarnation, id, idleSince), 'RECORDED');
          return (await core.store.claimDestroy({ sessionId: 'claim-3', fingerprint: fp(), cause: 'idle', now, idleVerdict: id })).code;
        };
        assert.equal(await idle('v1', T0 + 600, T0 + 100), 'REVIVED');
        await core.store.hold('claim-3', fp(), T0 + 600, 10_000);
        assert.equal(await idle('v2', T0 + 700, T0 + 650), 'REVIVED');
        // Delivered once the hold is over, the verdict is still older than the hold's end: the session's quiet is timed
        // from there (activity-score's heldQuietMs), so it is refused, not claimed as the tool returns.
        assert.equal(await idle('v3', T0 + 20_000, T0 + 650), 'REVIVED');
        assert.equal(await idle('v4', T0 + 20_000, T0 + 15_000), 'CLAIMED');
      });

      test('applies only the idle verdict recorded for the session, which only an active incarnation with a context takes', async () => {
        const r = await openedAt(core, 'claim-v', T0);
        assert.equal(await core.store.recordIdleVerdict('claim-v', r.incarnation, 'v1', T0 + 4_000), 'UNKNOWN', 'no activity context: nothing was judged');
        assert.equal(await core.store.recordIdleVerdict('no-such-session', 1, 'v1', T0 + 4_000), 'UNKNOWN');
        await activityAt(core, 'claim-v', T0 + 10, 0);
        assert.equal(await core.store.recordIdleVerdict('claim-v', r.incarnation + 1, 'v1', T0 + 4_000), 'ENDED', 'another incarnation');
        for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, -1, 1e300]) {
          await assert.rejects(core.store.recordIdleVerdict('claim-v', r.incarnation, 'v1', bad), /not a time in ms/, `verdict time ${bad}`);
        }
        // A field holding a time that is no number (only a hand-written one could) verifies nothing.
        await core.redis.hset(core.keys.session('claim-v').context, 'iv', 'vn nan vi inf');
        assert.deepEqual(await core.store.claimDestroy({ sessionId: 'claim-v', fingerprint: fp(), cause: 'idle', now: T0 + 5_000, idleVerdict: 'vn' }), { code: 'UNVERIFIED', incarnation: r.incarnation });
        assert.deepEqual(await core.store.claimDestroy({ sessionId: 'claim-v', fingerprint: fp(), cause: 'idle', now: T0 + 5_000, idleVerdict: 'vi' }), { code: 'UNVERIFIED', incarnation: r.incarnation });
        await core.redis.hdel(core.keys.session('claim-v').context, 'iv');
        const claim = (idleVerdict?: string) => core.store.claimDestroy({ sessionId: 'claim-v', fingerprint: fp(), cause: 'idle', now: T0 + 5_000, idleVerdict });
        assert.deepEqual(await claim(), { code: 'UNVERIFIED', incarnation: r.incarnation }, 'none recorded, none named');
        assert.deepEqual(await claim('v1'), { code: 'UNVERIFIED', incarnation: r.incarnation }, 'none recorded');
        assert.equal(await core.store.recordIdleVerdict('claim-v', r.incarnation, 'v2', T0 + 4_000), 'RECORDED');
        assert.deepEqual(await claim('v1'), { code: 'UNVERIFIED', incarnation: r.incarnation }, 'another verdict recorded');
        assert.deepEqual(await claim(), { code: 'UNVERIFIED', incarnation: r.incarnation });
        assert.equal((await core.store.inspect('claim-v'))?.state, 'active', 'nothing changed');
        assert.equal((await claim('v2')).code, 'CLAIMED');
        assert.equal(await core.store.recordIdleVerdict('claim-v', r.incarnation, 'v3', T0 + 6_000), 'ENDED', 'destroying');
        // On a destroy in progress an unrecorded verdict still changes nothing; the stall watchdog's resume of the idle
        // destroy, which names no verdict, goes on with it.
        assert.deepEqual(await claim('v9'), { code: 'UNVERIFIED', incarnation: r.incarnation });
        const resumed = await core.store.claimDestroy({ sessionId: 'claim-v', fingerprint: fp(), incarnation: r.incarnation, cause: 'idle', now: T0 + 9_000, resume: true });
        assert.equal(resumed.code, 'ALREADY');
        assert.equal((await core.store.inspect('claim-v'))?.cause, 'idle');
      });

      test('once a destroy purged the verdicts with the context, a redelivered verdict answers ALREADY, not UNVERIFIED', async () => {
        const r = await openedAt(core, 'claim-p', T0);
        await activityAt(core, 'claim-p', T0 + 10, 0);
        assert.equal(await core.store.recordIdleVerdict('claim-p', r.incarnation, 'p1', T0 + 100), 'RECORDED');
        assert.equal(await core.store.recordIdleVerdict('claim-p', r.incarnation, 'p2', T0 + 200), 'RECORDED');
        const idle = (id: string) => core.store.claimDestroy({ sessionId: 'claim-p', fingerprint: fp(), cause: 'idle', now: T0 + 300, idleVerdict: id });
        assert.equal((await idle('p2')).code, 'CLAIMED');
        const token = drawReleaseToken();
        assert.equal((await core.store.advance('claim-p', r.incarnation, 'gpu_release_requested', T0 + 301, { attempt: 1, token })).code, 'ADVANCED');
        assert.equal((await idle('forged')).code, 'UNVERIFIED', 'before the purge the verdicts are there to check');
        assert.equal((await core.store.recordRelease('claim-p', r.incarnation, 1000, T0 + 302, 'gpu-node-a', token)).code, 'RELEASED');
        assert.equal((await core.store.purge('claim-p', r.incarnation, T0 + 303)).code, 'PURGED');
        // p1, recorded and still on its way: the destroy it would have started is past the point a cause could change.
        assert.equal((await idle('p1')).code, 'ALREADY');
        assert.equal((await core.store.inspect('claim-p'))?.cause, 'idle');
      });

      test('a recorded verdict outdated since becomes no cause of a later destroy; the same id re-recorded takes the newer time', async () => {
        const r = await openedAt(core, 'claim-o', T0);
        await activityAt(core, 'claim-o', T0 + 10, 0);
        assert.equal(await core.store.recordIdleVerdict('claim-o', r.incarnation, 'old', T0 + 100), 'RECORDED');
        await activityAt(core, 'claim-o', T0 + 200, 1);
        assert.equal((await core.store.claimDestroy({ sessionId: 'claim-o', fingerprint: fp(), cause: 'closed', now: T0 + 300, causeAt: T0 + 300 })).code, 'CLAIMED');
        // Replayed after the close claimed the destroy, with its early time: outdated, so neither the cause nor an extra one.
        assert.equal((await core.store.claimDestroy({ sessionId: 'claim-o', fingerprint: fp(), cause: 'idle', now: T0 + 400, idleVerdict: 'old' })).code, 'ALREADY');
        const view = await core.store.inspect('claim-o');
        assert.equal(view?.cause, 'closed');
        assert.deepEqual(view?.extraCauses ?? [], []);

        const s2 = await openedAt(core, 'claim-n', T0);
        await activityAt(core, 'claim-n', T0 + 10, 0);
        assert.equal(await core.store.recordIdleVerdict('claim-n', s2.incarnation, 'same', T0 + 100), 'RECORDED');
        await activityAt(core, 'claim-n', T0 + 150, 1);
        // The checker judged it idle again at T0 + 500 (same idle moment, same id): that judgement stands.
        assert.equal(await core.store.recordIdleVerdict('claim-n', s2.incarnation, 'same', T0 + 500), 'RECORDED');
        assert.equal((await core.store.claimDestroy({ sessionId: 'claim-n', fingerprint: fp(), cause: 'idle', now: T0 + 600, idleVerdict: 'same' })).code, 'CLAIMED');
      });

      test('judges a recorded verdict at the time recorded with it, and keeps the last four', async () => {
        const r = await openedAt(core, 'claim-w', T0);
        await activityAt(core, 'claim-w', T0 + 10, 0);
        for (const [id, at] of [['w1', T0 + 100], ['w2', T0 + 200], ['w3', T0 + 300], ['w4', T0 + 400], ['w5', T0 + 500]] as const) {
          assert.equal(await core.store.recordIdleVerdict('claim-w', r.incarnation, id, at), 'RECORDED');
        }
        // Activity after w4's moment and before w5's: a replay of w4 (whatever time its event says) is outdated.
        await activityAt(core, 'claim-w', T0 + 450, 1);
        const claim = (idleVerdict: string) => core.store.claimDestroy({ sessionId: 'claim-w', fingerprint: fp(), cause: 'idle', now: T0 + 9_000, causeAt: T0 + 9_000, idleVerdict });
        assert.equal((await claim('w1')).code, 'UNVERIFIED', 'the oldest of five is no longer kept');
        assert.equal((await claim('w4')).code, 'REVIVED');
        const claimed = await claim('w2');
        assert.equal(claimed.code, 'REVIVED', 'w2 is kept, and outdated too');
        assert.equal((await claim('w5')).code, 'CLAIMED');
        assert.equal((await core.store.inspect('claim-w'))?.cause, 'idle');
      });

      test('dedups a claim apart from other effects of the same event (inference.completed is scored and ends the session)', async () => {
        await openAt(core, 'claim-6', T0);
        const f = fp();
        const scored = await core.store.recordActivity({ sessionId: 'claim-6', fingerprint: f, liveFrom: T0 + 1, now: T0 + 1, expectedVersion: 0, lastActivityAt: T0 + 1, context: {} });
        assert.equal(scored.code, 'APPLIED');
        assert.equal((await core.store.claimDestroy({ sessionId: 'claim-6', fingerprint: f, cause: 'completed', now: T0 + 2 })).code, 'CLAIMED');
        assert.equal((await core.store.claimDestroy({ sessionId: 'claim-6', fingerprint: f, cause: 'completed', now: T0 + 3 })).code, 'DUPLICATE');
      });

      test('never ends a reopened incarnation for a trigger sent before the reopen', async () => {
        const first = await openAt(core, 'claim-5', T0);
        if (first.code !== 'OPENED') return assert.fail(first.code);
        await core.store.claimDestroy({ sessionId: 'claim-5', fingerprint: fp(), cause: 'closed', now: T0 + 1 });
        await destroyFully(core, 'claim-5', first.incarnation, T0 + 2);
        await openAt(core, 'claim-5', T0 + 100);
        const late = await core.store.claimDestroy({ sessionId: 'claim-5', fingerprint: fp(), cause: 'closed', now: T0 + 200, sentAt: T0 + 50 });
        assert.equal(late.code, 'STALE');
        assert.equal((await core.store.inspect('claim-5'))?.state, 'active');
        const current = await core.store.claimDestroy({ sessionId: 'claim-5', fingerprint: fp(), cause: 'closed', now: T0 + 300, sentAt: T0 + 250 });
        assert.equal(current.code, 'CLAIMED');
      });

      test('reports UNKNOWN for an unknown id and ENDED for a tombstone', async () => {
        assert.equal((await core.store.claimDestroy({ sessionId: 'claim-none', fingerprint: fp(), cause: 'closed', now: T0 })).code, 'UNKNOWN');
        const r = await openAt(core, 'claim-4', T0);
        if (r.code !== 'OPENED') return assert.fail(r.code);
        await core.store.claimDestroy({ sessionId: 'claim-4', fingerprint: fp(), cause: 'closed', now: T0 });
        await destroyFully(core, 'claim-4', r.incarnation, T0 + 1);
        assert.equal((await core.store.claimDestroy({ sessionId: 'claim-4', fingerprint: fp(), cause: 'closed', now: T0 + 9 })).code, 'ENDED');
      });
    });

    describe('claimDue', () => {
      // Long before T0, so no other test's session in the same bucket is due.
      const T1 = T0 - 1_000_000_000;
      /** `count` fresh ids that all live in one bucket. */
      const idsInOneBucket = (stem: string, count: number): { bucket: number; ids: string[] } => {
        const bucket = core.keys.bucketOf(`${stem}-0`);
        const ids: string[] = [];
        for (let i = 0; ids.length < count; i++) if (core.keys.bucketOf(`${stem}-${i}`) === bucket) ids.push(`${stem}-${i}`);
        return { bucket, ids };
      };
      // Without the outage rule's settings nothing is deferred, held or recorded (tests of the rule: the-outage-rule…).
      const NO_RULE = { deferred: 0, holdFrom: null, blind: null };
      /** A claim's answer without the bucket's heartbeat marks (the outage rule's input, tested with the rule). */
      const claimDue = async (...args: Parameters<typeof core.store.claimDue>) => {
        const { heard: _heard, ...rest } = await core.store.claimDue(...args);
        return rest;
      };
      const incarnationOf = (r: Awaited<ReturnType<typeof openAt>>): number => (r.code === 'OPENED' ? r.incarnation : Number.NaN);

      test('claims every due session of a bucket once, in deadline order, and answers the next deadline', async () => {
        const { bucket, ids } = idsInOneBucket('due', 4);
        const [late, early, beating, closed] = ids as [string, string, string, string];
        const lateOpen = await openAt(core, late, T1 + 10);
        const earlyOpen = await openAt(core, early, T1);
        await openAt(core, beating, T1);
        await openAt(core, closed, T1);
        await core.store.heartbeat(beating, T1 + 900, T1 + 900);
        assert.equal((await core.store.claimDestroy({ sessionId: closed, fingerprint: fp(), cause: 'closed', now: T1 + 5 })).code, 'CLAIMED');
        assert.deepEqual(await claimDue(bucket, T1 + 999, 10), { claimed: [], skipped: 0, unresolved: [], head: T1 + 1000, ...NO_RULE });
        assert.deepEqual(await claimDue(bucket, T1 + 1010, 10), {
          claimed: [
            { sessionId: early, incarnation: incarnationOf(earlyOpen), deadline: T1 + 1000 },
            { sessionId: late, incarnation: incarnationOf(lateOpen), deadline: T1 + 1010 },
          ],
          skipped: 0,
          unresolved: [],
          head: T1 + 1900,
          ...NO_RULE,
        });
        // Another replica racing for the same bucket finds nothing left to claim.
        assert.deepEqual(await claimDue(bucket, T1 + 1010, 10), { claimed: [], skipped: 0, unresolved: [], head: T1 + 1900, ...NO_RULE });
        assert.equal((await core.store.inspect(early))?.cause, 'expired');
        assert.equal((await core.store.inspect(beating))?.state, 'active');
        assert.equal((await core.store.inspect(closed))?.cause, 'closed');
        assert.ok((await core.store.stalledMembers(bucket, T1 + 1010, 100)).includes(early), 'a claimed session is watched for stalls');
      });

      test('takes at most the limit, and leaves an entry without a record to a claim with declared keys', async () => {
        const { bucket, ids } = idsInOneBucket('due-limit', 3);
        const [first, second, stray] = ids as [string, string, string];
        await openAt(core, first, T1 - 2000);
        await openAt(core, second, T1 - 1999);
        const deadlines = core.keys.bucket(bucket).deadlines;
        await core.redis.zadd(deadlines, T1 - 3000, stray);
        // No record where the script looked: on Cluster it may be a resharding's moved record, so it is not removed.
        assert.deepEqual(await claimDue(bucket, T1 - 500, 1), { claimed: [], skipped: 0, unresolved: [stray], head: T1 - 3000, ...NO_RULE });
        assert.equal(Number(await core.redis.zscore(deadlines, stray)), T1 - 3000);
        assert.deepEqual(await core.store.claimExpired(stray, T1 - 500), { code: 'GONE' });
        assert.equal(await core.redis.zscore(deadlines, stray), null);
        assert.deepEqual((await core.store.claimDue(bucket, T1 - 500, 1)).claimed.map((c) => c.sessionId), [first]);
        assert.deepEqual((await core.store.claimDue(bucket, T1 - 500, 1)).claimed.map((c) => c.sessionId), [second]);
      });

      test('removes the entry of a session that ended without leaving the index', async () => {
        const { bucket, ids } = idsInOneBucket('due-ended', 1);
        const [ended] = ids as [string];
        await openAt(core, ended, T1 - 5000);
        // A record no longer active while still indexed (only a bug or an operator could leave one).
        await core.redis.hset(await openOut(core, ended), 's', 'X');
        const r = await core.store.claimDue(bucket, T1 - 3500, 10);
        assert.deepEqual({ skipped: r.skipped, unresolved: r.unresolved, claimed: r.claimed }, { skipped: 1, unresolved: [], claimed: [] });
        assert.equal(await core.redis.zscore(core.keys.bucket(bucket).deadlines, ended), null);
      });
    });

    describe('claimExpired', () => {
      test('claims a due session once, and never one whose deadline moved', async () => {
        const r = await openAt(core, 'exp-1', T0);
        await openAt(core, 'exp-2', T0);
        await core.store.heartbeat('exp-2', T0 + 900, T0 + 900);
        assert.deepEqual(await core.store.claimExpired('exp-1', T0 + 999), { code: 'NOT_DUE', deadline: T0 + 1000 });
        assert.deepEqual(await core.store.claimExpired('exp-1', T0 + 1000), { code: 'CLAIMED', incarnation: r.incarnation, deadline: T0 + 1000 });
        assert.deepEqual(await core.store.claimExpired('exp-1', T0 + 1001), { code: 'GONE' });
        assert.equal((await core.store.claimExpired('exp-2', T0 + 1000)).code, 'NOT_DUE');
        assert.equal((await core.store.inspect('exp-1'))?.cause, 'expired');
      });

      test('removes a stray index entry whose session is not active', async () => {
        const b = core.keys.session('exp-stray');
        await core.redis.zadd(b.deadlines, T0, 'exp-stray');
        assert.deepEqual(await core.store.claimExpired('exp-stray', T0 + 1), { code: 'GONE' });
        assert.equal(await core.redis.zscore(b.deadlines, 'exp-stray'), null);
      });
    });

    describe('advanceStage, recordRelease, purgeSession, completeDestroy', () => {
      test('walk a destroy forward only, once, and leave a tombstone with the whole timeline', async () => {
        const r = await openAt(core, 'stage-1', T0);
        if (r.code !== 'OPENED') return assert.fail(r.code);
        const inc = r.incarnation;
        await core.store.claimDestroy({ sessionId: 'stage-1', fingerprint: fp(), cause: 'closed', now: T0 + 1 });
        assert.deepEqual(await core.store.purge('stage-1', inc, T0 + 2), { code: 'NOT_READY', stage: 'claimed' });
        const [first, second] = [drawReleaseToken(), drawReleaseToken()];
        assert.deepEqual(await core.store.recordRelease('stage-1', inc, 900, T0 + 2, 'gpu-node-a', first), { code: 'NOT_REQUESTED', stage: 'claimed' }, 'no answer before a request');
        assert.deepEqual(await core.store.advance('stage-1', inc, 'gpu_release_requested', T0 + 2, { attempt: 1, token: first }), { code: 'ADVANCED', stage: 'gpu_release_requested' });
        assert.deepEqual(await core.store.advance('stage-1', inc, 'gpu_release_requested', T0 + 3, { attempt: 2, token: second }), { code: 'REISSUED', attempt: 2 });
        assert.deepEqual(await core.store.releaseAttempt('stage-1', inc), { attempt: 2, token: second });
        assert.deepEqual(await core.store.advance('stage-1', inc, 'claimed', T0 + 3), { code: 'ALREADY', stage: 'gpu_release_requested' });
        assert.deepEqual(await core.store.advance('stage-1', inc + 1, 'gpu_released', T0 + 3), { code: 'STALE', incarnation: inc });
        assert.deepEqual(await core.store.complete('stage-1', inc, T0 + 3), { code: 'NOT_READY', stage: 'gpu_release_requested' });
        assert.deepEqual(await core.store.recordRelease('stage-1', inc, 900, T0 + 4, 'gpu-node-a', first), { code: 'TOKEN_MISMATCH' }, 'the superseded attempt\'s answer books nothing');
        assert.deepEqual(await core.store.recordRelease('stage-1', inc, 900, T0 + 4, 'gpu-node-a', second), { code: 'RELEASED', node: 'gpu-node-a', registeredBytes: 1000 });
        assert.deepEqual(await core.store.recordRelease('stage-1', inc, 900, T0 + 5, 'gpu-node-a', second), { code: 'DUPLICATE', stage: 'gpu_released' });
        assert.deepEqual(await core.store.recordRelease('stage-1', inc, 900, T0 + 5, 'gpu-node-a', first), { code: 'TOKEN_MISMATCH' });
        assert.deepEqual(await core.store.purge('stage-1', inc, T0 + 6), { code: 'PURGED' });
        assert.deepEqual(await core.store.purge('stage-1', inc, T0 + 6), { code: 'ALREADY', stage: 'state_purged' });
        assert.deepEqual(await core.store.complete('stage-1', inc, T0 + 7), { code: 'COMPLETED' });
        assert.deepEqual(await core.store.complete('stage-1', inc, T0 + 8), { code: 'ALREADY', stage: 'completed' });
        const view = await core.store.inspect('stage-1');
        assert.equal(view?.state, 'destroyed');
        assert.deepEqual(view?.timeline.map((e) => e.stage), ['claimed', 'gpu_release_requested', 'gpu_released', 'state_purged', 'completed']);
        assert.equal(view?.confirmedFreedBytes, 900);
        assert.ok((view?.tombstoneTtlMs ?? 0) > 0, 'the tombstone expires');
        assert.deepEqual(await core.store.advance('stage-1', inc, 'completed', T0 + 9), { code: 'NOT_DESTROYING', state: 'destroyed' });
      });

      test('report UNKNOWN and NOT_DESTROYING where there is nothing to advance', async () => {
        assert.deepEqual(await core.store.advance('stage-none', 1, 'gpu_released', T0), { code: 'UNKNOWN' });
        assert.deepEqual(await core.store.purge('stage-none', 1, T0), { code: 'UNKNOWN' });
        assert.deepEqual(await core.store.complete('stage-none', 1, T0), { code: 'UNKNOWN' });
        assert.deepEqual(await core.store.recordRelease('stage-none', 1, 0, T0, 'gpu-node-z', drawReleaseToken()), { code: 'UNKNOWN' });
        const r = await openAt(core, 'stage-2', T0);
        if (r.code !== 'OPENED') return assert.fail(r.code);
        assert.deepEqual(await core.store.advance('stage-2', r.incarnation, 'gpu_released', T0), { code: 'NOT_DESTROYING', state: 'active' });
        assert.deepEqual(await core.store.purge('stage-2', r.incarnation, T0), { code: 'NOT_DESTROYING', state: 'active' });
        assert.deepEqual(await core.store.complete('stage-2', r.incarnation, T0), { code: 'NOT_DESTROYING', state: 'active' });
        assert.deepEqual(await core.store.recordRelease('stage-2', r.incarnation, 0, T0, 'gpu-node-a', drawReleaseToken()), { code: 'NOT_DESTROYING' });
        assert.deepEqual(await core.store.recordRelease('stage-2', r.incarnation + 7, 0, T0, 'gpu-node-a', drawReleaseToken()), { code: 'STALE', incarnation: r.incarnation });
        assert.deepEqual(await core.store.purge('stage-2', r.incarnation + 7, T0), { code: 'STALE', incarnation: r.incarnation });
        assert.deepEqual(await core.store.complete('stage-2', r.incarnation + 7, T0), { code: 'STALE', incarnation: r.incarnation });
      });
    });

    describe('claimStalled', () => {
      test('hands a stalled destroy to one caller and not again before another stall', async () => {
        const r = await openAt(core, 'stall-1', T0);
        if (r.code !== 'OPENED') return assert.fail(r.code);
        await core.store.claimDestroy({ sessionId: 'stall-1', fingerprint: fp(), cause: 'closed', now: T0 });
        assert.deepEqual(await core.store.claimStalled('stall-1', T0 + 500, 1000), { code: 'NOT_STALLED' });
        const stalled = await core.store.claimStalled('stall-1', T0 + 1000, 1000);
        assert.deepEqual(stalled, { code: 'STALLED', sessionId: 'stall-1', incarnation: r.incarnation, stage: 'claimed', cause: 'closed', placement: placementA, attempt: 0 });
        assert.deepEqual(await core.store.claimStalled('stall-1', T0 + 1001, 1000), { code: 'NOT_STALLED' });
        assert.deepEqual(await core.store.claimStalled('stall-missing', T0 + 5000, 1000), { code: 'GONE' });
      });

      test('hands out a stalled migration release and drops stray entries', async () => {
        const first = await openAt(core, 'stall-2', T0);
        const moved = await openAt(core, 'stall-2', T0 + 1, placementB);
        if (moved.code !== 'MIGRATED') return assert.fail(moved.code);
        const member = migrationMember('stall-2', first.incarnation);
        assert.deepEqual(await core.store.claimStalled(member, T0 + 5000, 1000), {
          code: 'MIGRATION', sessionId: 'stall-2', incarnation: first.incarnation, placement: placementA, token: moved.previous.token,
        });
        await core.redis.zadd(core.keys.session('stall-2').destroying, T0, 'stall-2');
        assert.deepEqual(await core.store.claimStalled('stall-2', T0 + 5000, 1000), { code: 'GONE' }, 'an active session is not a stalled destroy');
      });

      test('a session whose id looks like a migration entry is resumed as the session it is', async () => {
        for (const id of ['m:x:1', 'm:stall-3:2']) {
          const r = await openAt(core, id, T0);
          if (r.code !== 'OPENED') return assert.fail(r.code);
          await core.store.claimDestroy({ sessionId: id, fingerprint: fp(), cause: 'closed', now: T0 });
          const stalled = await core.store.claimStalled(id, T0 + 1000, 1000);
          assert.equal(stalled.code, 'STALLED', `${id} is a stalled destroy`);
          assert.ok(stalled.code === 'STALLED' && stalled.sessionId === id && stalled.incarnation === r.incarnation);
        }
      });
    });

    describe('releaseTarget', () => {
      test('names the stored runtime only for the release pending under the given token', async () => {
        const r = await openAt(core, 'target-1', T0);
        if (r.code !== 'OPENED') return assert.fail(r.code);
        const inc = r.incarnation;
        const token = drawReleaseToken();
        assert.deepEqual(await core.store.releaseTarget('target-1', inc, token), { code: 'NOT_PENDING', why: 'live' });
        await core.store.claimDestroy({ sessionId: 'target-1', fingerprint: fp(), cause: 'closed', now: T0 });
        assert.deepEqual(await core.store.releaseTarget('target-1', inc, token), { code: 'NOT_PENDING', why: 'not_requested' });
        await core.store.advance('target-1', inc, 'gpu_release_requested', T0 + 1, { attempt: 1, token });
        assert.deepEqual(await core.store.releaseTarget('target-1', inc, drawReleaseToken()), { code: 'NOT_PENDING', why: 'token_mismatch' });
        assert.deepEqual(await core.store.releaseTarget('target-1', inc + 1, token), { code: 'NOT_PENDING', why: 'stale' });
        assert.deepEqual(await core.store.releaseTarget('target-1', inc, token), { code: 'PENDING', kind: 'destroy', node: placementA.node, runtimeUrl: placementA.runtimeUrl, attempt: 1 });
        await core.store.recordRelease('target-1', inc, 1000, T0 + 2, placementA.node, token);
        assert.deepEqual(await core.store.releaseTarget('target-1', inc, token), { code: 'NOT_PENDING', why: 'released' });
        assert.deepEqual(await core.store.releaseTarget('target-none', 1, token), { code: 'NOT_PENDING', why: 'unknown' });

        const first = await openAt(core, 'target-2', T0);
        const moved = await openAt(core, 'target-2', T0 + 1, placementB);
        if (moved.code !== 'MIGRATED') return assert.fail(moved.code);
        assert.deepEqual(await core.store.releaseTarget('target-2', first.incarnation, moved.previous.token), {
          code: 'PENDING', kind: 'migration', node: placementA.node, runtimeUrl: placementA.runtimeUrl, attempt: 0,
        });
        assert.deepEqual(await core.store.releaseTarget('target-2', first.incarnation, token), { code: 'NOT_PENDING', why: 'token_mismatch' });
      });
    });

    describe('ownership', () => {
      test('a session opened by a tenant is moved, refreshed, beaten, held, scored and closed only by events naming it', async () => {
        const open = (tenant: string | undefined, placement = placementA) =>
          core.store.open({ sessionId: 'owned-1', fingerprint: fp(), now: T0, liveFrom: T0, windowMs: 1000, placement, tenant });
        const r = await open('acme');
        if (r.code !== 'OPENED') return assert.fail(r.code);
        const inc = r.incarnation;
        assert.deepEqual(await open('umbrella', placementB), { code: 'NOT_OWNER', incarnation: inc }, 'no migration by another tenant');
        assert.deepEqual(await open(undefined, placementB), { code: 'NOT_OWNER', incarnation: inc }, 'nor by an opened that names none');
        assert.deepEqual((await core.store.inspect('owned-1'))?.placement, placementA);
        assert.deepEqual(await core.store.heartbeatMany([{ sessionId: 'owned-1', liveFrom: T0 + 500, tenant: 'umbrella' }, { sessionId: 'owned-1', liveFrom: T0 + 500 }], T0 + 500),
          [{ code: 'NOT_OWNER', incarnation: inc }, { code: 'NOT_OWNER', incarnation: inc }]);
        assert.equal((await core.store.heartbeat('owned-1', T0 + 500, T0 + 500, 'acme')).code, 'REFRESHED');
        assert.deepEqual(await core.store.hold('owned-1', fp(), T0, 60_000, 'umbrella'), { code: 'NOT_OWNER', incarnation: inc });
        const activity = { sessionId: 'owned-1', liveFrom: T0, now: T0, expectedVersion: 0, lastActivityAt: T0, context: {} };
        assert.deepEqual(await core.store.recordActivity({ ...activity, fingerprint: fp(), tenant: 'umbrella' }), { code: 'NOT_OWNER', incarnation: inc });
        assert.deepEqual(await core.store.claimDestroy({ sessionId: 'owned-1', fingerprint: fp(), cause: 'closed', now: T0, owner: 'umbrella' }), { code: 'NOT_OWNER', incarnation: inc });
        assert.deepEqual(await core.store.claimDestroy({ sessionId: 'owned-1', fingerprint: fp(), cause: 'closed', now: T0, owner: '' }), { code: 'NOT_OWNER', incarnation: inc });
        assert.equal((await core.store.inspect('owned-1'))?.state, 'active', 'nothing a foreign event did changed the session');
        assert.equal((await core.store.claimDestroy({ sessionId: 'owned-1', fingerprint: fp(), cause: 'forced', now: T0 })).code, 'CLAIMED', 'an operator may end any session');
      });
    });

    test('a session at every bound the contract allows goes through every script whole', async () => {
      // 4 TiB (MAX_GPU_BYTES) registered and released many times over: the ledger's 64-bit counters never overflow
      // inside a script, which would leave it half applied.
      for (let i = 0; i < 50; i++) {
        const id = `bound-${i}`;
        const r = await core.store.open({ sessionId: id, fingerprint: fp(), now: T0, liveFrom: T0, windowMs: 86_400_000 * 100, placement: { ...placementA, gpuBytes: MAX_GPU_BYTES } });
        if (r.code !== 'OPENED') return assert.fail(r.code);
        assert.equal((await core.store.hold(id, fp(), T0, 7 * 24 * 3600 * 1000)).code, 'HELD');
        await core.store.claimDestroy({ sessionId: id, fingerprint: fp(), cause: 'closed', now: T0 });
        const token = drawReleaseToken();
        await core.store.advance(id, r.incarnation, 'gpu_release_requested', T0, { attempt: Number.MAX_SAFE_INTEGER, token });
        assert.equal((await core.store.recordRelease(id, r.incarnation, MAX_GPU_BYTES, T0, placementA.node, token)).code, 'RELEASED');
      }
      const audit = await auditLedger(core.redis, core.keys);
      assert.deepEqual(audit.problems, []);
    });

    test('the ledger balances: registered = released + held, per node', async () => {
      const audit = await auditLedger(core.redis, core.keys);
      assert.deepEqual(audit.problems, []);
      assert.ok(audit.balanced);
      const a = audit.nodes.find((n) => n.node === 'gpu-node-a');
      assert.ok(a && a.registeredBytes > 0 && a.releasedBytes > 0 && a.heldBytes > 0);
    });
  });
}

describe('placements', () => {
  let core: TestCore;
  before(async () => {
    core = await testCore('single', { buckets: 1 });
  });
  after(async () => {
    await core.close();
  });

  test('a placement is forgotten with the last allocation naming it, so nodes that come and go leave nothing behind', async () => {
    const placementsKey = core.keys.bucket(0).placements;
    // Three sessions on a node of their own each, one of them migrated to a fourth node.
    const nodes = ['churn-1', 'churn-2', 'churn-3'].map((node) => ({ ...placementA, node }));
    const incs: number[] = [];
    for (const [i, placement] of nodes.entries()) {
      const r = await openAt(core, `churn-${i}`, T0, placement);
      assert.equal(r.code, 'OPENED');
      if (r.code === 'OPENED') incs.push(r.incarnation);
    }
    const moved = await openAt(core, 'churn-0', T0 + 10, { ...placementA, node: 'churn-4' });
    assert.equal(moved.code, 'MIGRATED');
    // A second session on churn-2 keeps it while the first goes.
    const sharing = await openAt(core, 'churn-2b', T0, nodes[1]);
    assert.equal(sharing.code, 'OPENED');
    assert.equal(Object.keys(await core.redis.hgetall(placementsKey)).filter((f) => f.startsWith('id:')).length, 4);

    if (moved.code !== 'MIGRATED') return;
    assert.equal((await core.store.recordRelease('churn-0', moved.previous.incarnation, 1000, T0 + 20, 'churn-1', moved.previous.token)).code, 'MIGRATION_RELEASED');
    for (const [id, inc] of [['churn-0', moved.incarnation], ['churn-1', incs[1]!], ['churn-2', incs[2]!]] as const) {
      assert.equal((await core.store.claimDestroy({ sessionId: id, fingerprint: fp(), cause: 'closed', now: T0 + 30 })).code, 'CLAIMED');
      await destroyFully(core, id, inc, T0 + 40);
    }
    const left = await core.redis.hgetall(placementsKey);
    assert.deepEqual(Object.keys(left).filter((f) => f.startsWith('id:')).map((f) => (JSON.parse(left[f]!) as [string, string])[0]), ['churn-2'], 'only the placement still in use');
    assert.deepEqual((await core.store.inspect('churn-2b'))?.placement, nodes[1]);
    assert.equal((await core.store.inspect('churn-2'))?.placement, undefined, "a tombstone's forgotten placement is not shown");
    // A placement interned before counting began (an upgrade) is never forgotten: its allocations were not counted.
    const legacy = await openAt(core, 'churn-legacy', T0 + 45, { ...placementA, node: 'churn-legacy' });
    assert.equal(legacy.code, 'OPENED');
    const legacyPid = (await recordOf(core, 'churn-legacy')).p!;
    await core.redis.hdel(placementsKey, `n:${legacyPid}`);
    if (legacy.code === 'OPENED') {
      assert.equal((await core.store.claimDestroy({ sessionId: 'churn-legacy', fingerprint: fp(), cause: 'closed', now: T0 + 46 })).code, 'CLAIMED');
      await destroyFully(core, 'churn-legacy', legacy.incarnation, T0 + 47);
    }
    assert.ok(await core.redis.hexists(placementsKey, `id:${legacyPid}`), 'kept');
    // A session opened again on a forgotten node interns it afresh.
    assert.equal((await openAt(core, 'churn-5', T0 + 50, nodes[0])).code, 'OPENED');
    assert.deepEqual((await core.store.inspect('churn-5'))?.placement, nodes[0]);
  });
});

describe('incarnations', () => {
  let core: TestCore;
  before(async () => {
    core = await testCore('single', { buckets: 1 });
  });
  after(async () => {
    await core.close();
  });

  test('stay unique when Redis loses its data: the counter starts again from the clock, above every one handed out', async () => {
    const handedOut: number[] = [];
    for (const id of ['lost-1', 'lost-2', 'lost-3']) {
      const r = await openAt(core, id, T0);
      assert.equal(r.code, 'OPENED');
      if (r.code === 'OPENED') handedOut.push(r.incarnation);
    }
    assert.deepEqual(handedOut, [...handedOut].sort((a, b) => a - b));
    assert.equal(new Set(handedOut).size, 3);
    const [seconds] = await core.redis.time();
    assert.ok(handedOut[0]! >= (Number(seconds) - 5) * 1000, 'never below the clock');
    // A Redis that lost its data comes back later than the counter ran ahead of the clock (one per ms at most here).
    for (;;) {
      const [s, us] = await core.redis.time();
      if (Number(s) * 1000 + Math.floor(Number(us) / 1000) > Math.max(...handedOut)) break;
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    // Everything of the bucket is gone, as after a crash before the last fsync or a failover to an empty replica.
    const b = core.keys.bucket(0);
    await core.redis.del(b.meta, b.deadlines, b.placements, b.ledger, b.quiet, ...['lost-1', 'lost-2', 'lost-3'].map((id) => core.keys.session(id).session));
    const again = await openAt(core, 'lost-1', T0);
    assert.ok(again.code === 'OPENED' && again.incarnation > Math.max(...handedOut), `${again.code === 'OPENED' ? again.incarnation : again.code} is newer than ${Math.max(...handedOut)}`);
  });
});
