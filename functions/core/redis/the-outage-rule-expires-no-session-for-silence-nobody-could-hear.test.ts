// The outage rule (lua/includes/blind.lua) in claim-due-5 and claim-expired-6, against real Redis, single and cluster:
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
    const watched: OutageRule = { blindGapMs: 1000 };

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

    describe("unheard: the engine's verdict that the fleet's heartbeats stopped", () => {
      // The verdict is the engine's (functions/heartbeat-timeout/ingest-silence.ts, tested there); here, what a claim
      // does with it.
      const unheardSince = (since: number): OutageRule => ({ blindGapMs: 1000, holdFrom: since, heardAt: since });
      const heardAt = (at: number): OutageRule => ({ blindGapMs: 1000, holdFrom: null, heardAt: at });

      test('holds expiries while unheard, then counts the unheard span as blind', () =>
        withCore(topology, async (core) => {
          const { bucket, ids } = idsInOneBucket(core, 'unheard', 3);
          const [a, c, dead] = ids as [string, string, string];
          for (const id of ids) await open(core, id, T0);
          await beat(core, a, T0 + 1000);
          await beat(core, c, T0 + 1000);
          for (const t of [T0 + 1000, T0 + 2000]) await core.store.claimDue(bucket, t, 10, heardAt(T0 + 1000));
          // The session that never beat is expired at its deadline, heard or not.
          const first = await core.store.claimDue(bucket, T0 + 3000, 10, heardAt(T0 + 1000));
          assert.deepEqual(claimedIds(first), [dead]);
          assert.deepEqual(first.heard, { n: 2, hb: T0 + 1000, hg: null }, 'the marks the engine judges from (one moment: no gap yet)');
          // Then the fleet goes silent while a and c are due (T0 + 4 s): expiries wait.
          const held = await core.store.claimDue(bucket, T0 + 4000, 10, unheardSince(T0 + 1000));
          assert.equal(held.holdFrom, T0 + 1000);
          assert.deepEqual(held.claimed, []);
          assert.equal(held.head, null, 'no wake-up for held deadlines: the poll looks again');
          assert.equal((await core.store.claimExpired(c, T0 + 4500, heardAt(T0 + 1000))).code, 'NOT_DUE', 'a claim with declared keys holds too');
          for (const t of [T0 + 5000, T0 + 6000]) assert.deepEqual((await core.store.claimDue(bucket, t, 10, unheardSince(T0 + 1000))).claimed, []);
          // Heard again: a beats; c does not (it died meanwhile, or its heartbeats were lost).
          await beat(core, a, T0 + 6500);
          const resumed = await core.store.claimDue(bucket, T0 + 7000, 10, heardAt(T0 + 6500));
          assert.equal(resumed.holdFrom, null);
          assert.deepEqual(resumed.blind, { from: T0 + 1000, to: T0 + 6500 });
          assert.equal(resumed.deferred, 1);
          // c was last heard at T0 + 1 s, when the silence began: its whole window, counted from T0 + 6.5 s.
          for (let t = T0 + 7500; t < T0 + 9500; t += 500) {
            await beat(core, a, t);
            assert.deepEqual((await core.store.claimDue(bucket, t, 10, heardAt(t))).claimed, []);
          }
          assert.deepEqual(claimedIds(await core.store.claimDue(bucket, T0 + 9500, 10, heardAt(T0 + 9000))), [c]);
          assert.equal((await core.store.inspect(a))?.state, 'active');
        }));

      test('an end that arrived before its open is claimed at once while unheard', () =>
        withCore(topology, async (core) => {
          const { bucket, ids } = idsInOneBucket(core, 'ended-early', 2);
          const [held, ended] = ids as [string, string];
          await open(core, held, T0);
          await core.store.claimDue(bucket, T0 + 1000, 10, heardAt(T0));
          assert.equal((await core.store.claimDue(bucket, T0 + 4000, 10, unheardSince(T0))).holdFrom, T0);
          const marked = await core.store.claimDestroy({ sessionId: ended, fingerprint: fp('close'), cause: 'closed', now: T0 + 4100, sentAt: T0 + 4050, causeAt: T0 + 4050, owner: '', waitForOpen: true });
          assert.equal(marked.code, 'MARKED');
          const opened = await core.store.open({ sessionId: ended, fingerprint: fp('open'), now: T0 + 4200, liveFrom: T0 + 4000, windowMs: WINDOW, placement: placementA });
          assert.ok(opened.code === 'OPENED' && opened.endedBy === 'closed');
          assert.deepEqual(claimedIds(await core.store.claimDue(bucket, T0 + 4300, 10, unheardSince(T0))), [ended], 'its end needs no heartbeat');
          assert.equal((await core.store.inspect(held))?.state, 'active');
        }));

      test("a verdict that gives up closes the hold where it gave up: senders that really stopped are expired, that much later", () =>
        withCore(topology, async (core) => {
          const { bucket, ids } = idsInOneBucket(core, 'giveup', 2);
          for (const id of ids) await open(core, id, T0);
          await core.store.claimDue(bucket, T0 + 1000, 10, heardAt(T0));
          for (let t = T0 + 2000; t <= T0 + 4000; t += 1000) await core.store.claimDue(bucket, t, 10, unheardSince(T0));
          // The engine gave up at T0 + 3 s of silence (BLIND_HOLD_MAX_MS): the span is [T0, T0 + 3 s].
          const gaveUp = await core.store.claimDue(bucket, T0 + 5000, 10, heardAt(T0 + 3000));
          assert.deepEqual(gaveUp.blind, { from: T0, to: T0 + 3000 });
          assert.equal(gaveUp.deferred, 2);
          assert.deepEqual(claimedIds(await core.store.claimDue(bucket, T0 + 6000, 10, heardAt(T0 + 3000))).sort(), [...ids].sort());
        }));
    });
  });
}
