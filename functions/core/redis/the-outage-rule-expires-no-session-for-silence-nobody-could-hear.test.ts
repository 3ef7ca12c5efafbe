// The outage rule (lua/includes/blind.lua) in claim-due-4 and claim-expired-5, against real Redis, single and cluster:
// a span in which no engine watched a bucket, or in which none of its heartbeats could be heard, does not count
// towards any session's liveness window; a session due after it gets what was left of its window, counted from the
// span's end, and a session that died before it, or keeps silent after it, is still expired. Times are virtual: the
// scripts take `now` from the caller (the engine's clock), so a 10 s outage costs the test nothing.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { TOPOLOGIES } from '../../../tests/support/redis.ts';
import { fp, placementA, testCore, type TestCore } from '../../../tests/support/core.ts';
import type { OutageRule } from '../session-store.ts';

const T0 = 1_800_000_000_000;
const WINDOW = 3000;

/** `count` fresh ids of one bucket. */
function idsInOneBucket(core: TestCore, stem: string, count: number): { bucket: number; ids: string[] } {
  const bucket = core.keys.bucketOf(`${stem}-0`);
  const ids: string[] = [];
  for (let i = 0; ids.length < count; i++) if (core.keys.bucketOf(`${stem}-${i}`) === bucket) ids.push(`${stem}-${i}`);
  return { bucket, ids };
}

async function withCore(topology: (typeof TOPOLOGIES)[number], body: (core: TestCore) => Promise<void>): Promise<void> {
  // One core per test: the watch marks are per bucket, and each test runs its own clock.
  const core = await testCore(topology);
  try {
    await body(core);
  } finally {
    await core.close();
  }
}

const open = (core: TestCore, sessionId: string, at: number) =>
  core.store.open({ sessionId, fingerprint: fp('open'), now: at, liveFrom: at, windowMs: WINDOW, placement: placementA });
const beat = (core: TestCore, sessionId: string, at: number) => core.store.heartbeat(sessionId, at, at);
const claimedIds = (r: { claimed: { sessionId: string }[] }) => r.claimed.map((c) => c.sessionId);

for (const topology of TOPOLOGIES) {
  describe(`the outage rule on ${topology} Redis`, () => {
    const watched: OutageRule = { blindGapMs: 1000, ingestSilenceMs: 0, holdMaxMs: 600_000 };

    test('a span no engine watched does not count: the session gets the rest of its window after it', () =>
      withCore(topology, async (core) => {
        const { bucket, ids } = idsInOneBucket(core, 'unwatched', 2);
        const [alive, dead] = ids as [string, string];
        await open(core, alive, T0);
        await open(core, dead, T0);
        assert.deepEqual(claimedIds(await core.store.claimDue(bucket, T0 + 100, 10, watched)), []);
        // Redis (or every engine) is gone for 9.9 s, three windows: both deadlines (T0 + 3 s) pass unseen.
        const back = await core.store.claimDue(bucket, T0 + 10_000, 10, watched);
        assert.deepEqual(back.claimed, [], 'nobody is expired for a silence nobody could hear');
        assert.equal(back.deferred, 2);
        assert.deepEqual(back.blind, { from: T0 + 100, to: T0 + 10_000 });
        // Each was last heard at T0, 100 ms before the span: 2.9 s of its window remain after it.
        assert.equal(back.head, T0 + 12_900);
        // The live one is heard again within an interval; the dead one is not, and is expired when its rest runs out.
        // (The engine claims every 100 ms; a claim a second is enough to keep the bucket watched here.)
        await beat(core, alive, T0 + 11_000);
        for (const t of [T0 + 11_000, T0 + 12_000, T0 + 12_899]) assert.deepEqual(claimedIds(await core.store.claimDue(bucket, t, 10, watched)), []);
        const due = await core.store.claimDue(bucket, T0 + 12_900, 10, watched);
        assert.deepEqual(due.claimed.map((c) => [c.sessionId, c.deadline]), [[dead, T0 + 12_900]], 'moved once, never twice');
        assert.equal((await core.store.inspect(alive))?.state, 'active');
        assert.equal((await core.store.inspect(dead))?.cause, 'expired');
      }));

    test('without the rule the same outage expires both sessions at once (what the rule prevents)', () =>
      withCore(topology, async (core) => {
        const { bucket, ids } = idsInOneBucket(core, 'norule', 2);
        for (const id of ids) await open(core, id, T0);
        await core.store.claimDue(bucket, T0 + 100, 10);
        assert.deepEqual(claimedIds(await core.store.claimDue(bucket, T0 + 10_000, 10)).sort(), [...ids].sort());
      }));

    test('a session that died before the span is expired as usual, and short gaps are not spans', () =>
      withCore(topology, async (core) => {
        const { bucket, ids } = idsInOneBucket(core, 'before', 2);
        const [early, later] = ids as [string, string];
        await open(core, early, T0 - WINDOW + 50);
        await open(core, later, T0 - WINDOW + 900);
        assert.deepEqual(claimedIds(await core.store.claimDue(bucket, T0 + 100, 10, watched)), [early]);
        // 1 s since the last claim is within BLIND_GAP_MS: nothing recorded, the deadline stands.
        const next = await core.store.claimDue(bucket, T0 + 1100, 10, watched);
        assert.equal(next.blind, null);
        assert.deepEqual(claimedIds(next), [later]);
      }));

    test('claimExpired applies the same windows, and moves a deadline only once', () =>
      withCore(topology, async (core) => {
        const { bucket, ids } = idsInOneBucket(core, 'single', 2);
        const [one, other] = ids as [string, string];
        await open(core, one, T0);
        await open(core, other, T0);
        await core.store.claimDue(bucket, T0 + 100, 0, watched);
        // A claim of nothing (limit 0) still records the span, as the engine's poll would.
        assert.deepEqual((await core.store.claimDue(bucket, T0 + 5100, 0, watched)).blind, { from: T0 + 100, to: T0 + 5100 });
        assert.deepEqual(await core.store.claimExpired(one, T0 + 5200, watched), { code: 'NOT_DUE', deadline: T0 + 8000 });
        assert.deepEqual(await core.store.claimExpired(one, T0 + 7999, watched), { code: 'NOT_DUE', deadline: T0 + 8000 });
        assert.equal((await core.store.claimExpired(one, T0 + 8000, watched)).code, 'CLAIMED');
        // Without the rule's settings the claim ignores the windows (as every caller but the engine does).
        assert.equal((await core.store.claimExpired(other, T0 + 5200)).code, 'CLAIMED');
      }));

    describe('unheard: heartbeats that stop far beyond their rhythm', () => {
      const rule: OutageRule = { blindGapMs: 1000, ingestSilenceMs: 2000, holdMaxMs: 600_000 };

      /** Opens `beating` and `silent` at T0, and beats `beating` every 100 ms until T0 + 1 s, claiming as an engine would. */
      async function rhythm(core: TestCore, stem: string) {
        const { bucket, ids } = idsInOneBucket(core, stem, 3);
        const [a, c, dead] = ids as [string, string, string];
        for (const id of ids) await open(core, id, T0);
        for (let t = T0; t <= T0 + 1000; t += 100) {
          await beat(core, a, t);
          await beat(core, c, t);
          await core.store.claimDue(bucket, t, 10, rule);
        }
        return { bucket, a, c, dead };
      }

      test('holds expiries while nothing is heard, then counts the unheard span as blind', () =>
        withCore(topology, async (core) => {
          const { bucket, a, c, dead } = await rhythm(core, 'unheard');
          // 2 s later: the bucket is still heard from (2 s is its floor); the session that never beat is expired.
          const heard = await core.store.claimDue(bucket, T0 + 2000, 10, rule);
          assert.equal(heard.holdFrom, null);
          assert.deepEqual(claimedIds(await core.store.claimDue(bucket, T0 + 3000, 10, rule)), [dead]);
          // Then nothing for 3 s while a and c are due (T0 + 4 s): the ingest path is down, expiries wait.
          const held = await core.store.claimDue(bucket, T0 + 4000, 10, rule);
          assert.equal(held.holdFrom, T0 + 1000);
          assert.deepEqual(held.claimed, []);
          assert.equal(held.head, null, 'no wake-up for held deadlines: the poll looks again');
          assert.deepEqual((await core.store.claimExpired(c, T0 + 4500, rule)).code, 'NOT_DUE');
          assert.deepEqual((await core.store.claimDue(bucket, T0 + 5000, 10, rule)).claimed, []);
          assert.deepEqual((await core.store.claimDue(bucket, T0 + 6000, 10, rule)).claimed, []);
          // Heard again: a beats; c does not (it died meanwhile, or its heartbeats were lost).
          await beat(core, a, T0 + 6500);
          const resumed = await core.store.claimDue(bucket, T0 + 7000, 10, rule);
          assert.equal(resumed.holdFrom, null);
          assert.deepEqual(resumed.blind, { from: T0 + 1000, to: T0 + 6500 });
          assert.equal(resumed.deferred, 1);
          // c was last heard at T0 + 1 s, when the silence began: its whole window, counted from T0 + 6.5 s.
          for (let t = T0 + 7500; t < T0 + 9500; t += 500) {
            await beat(core, a, t);
            assert.deepEqual((await core.store.claimDue(bucket, t, 10, rule)).claimed, []);
          }
          assert.deepEqual(claimedIds(await core.store.claimDue(bucket, T0 + 9500, 10, rule)), [c]);
          assert.equal((await core.store.inspect(a))?.state, 'active');
        }));

      test('holds no longer than BLIND_HOLD_MAX_MS: senders that really stopped are expired, that much later', () =>
        withCore(topology, async (core) => {
          const short = { ...rule, holdMaxMs: 3000 };
          const { bucket, a, c } = await rhythm(core, 'giveup');
          for (let t = T0 + 2000; t <= T0 + 4000; t += 1000) await core.store.claimDue(bucket, t, 10, short);
          const gaveUp = await core.store.claimDue(bucket, T0 + 5000, 10, short);
          assert.deepEqual(gaveUp.blind, { from: T0 + 1000, to: T0 + 4000 });
          assert.equal(gaveUp.holdFrom, null);
          assert.equal(gaveUp.deferred, 2);
          // Not held again for the same silence; both expire 3 s (the span) after their deadline.
          assert.equal((await core.store.claimDue(bucket, T0 + 6000, 10, short)).holdFrom, null);
          assert.deepEqual(claimedIds(await core.store.claimDue(bucket, T0 + 7000, 10, short)).sort(), [a, c].sort());
        }));

      test('a bucket whose sessions beat rarely is not judged unheard by a silence of the floor', () =>
        withCore(topology, async (core) => {
          const { bucket, ids } = idsInOneBucket(core, 'rare', 1);
          const [slow] = ids as [string];
          await open(core, slow, T0);
          // Heartbeats 2.5 s apart: a 2 s floor is no evidence of an outage here (20 x 2.5 s is).
          for (let t = T0; t <= T0 + 10_000; t += 2500) {
            await beat(core, slow, t);
            for (let e = t; e < t + 2500; e += 1000) await core.store.claimDue(bucket, e, 10, rule);
          }
          assert.equal((await core.store.claimDue(bucket, T0 + 12_600, 10, rule)).holdFrom, null);
          assert.deepEqual(claimedIds(await core.store.claimDue(bucket, T0 + 13_000, 10, rule)), [slow], 'it died: expired at its deadline');
        }));
    });
  });
}
