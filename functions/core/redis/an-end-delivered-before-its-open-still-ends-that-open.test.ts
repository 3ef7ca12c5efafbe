// A Broker delivers in no particular order: an end may reach destroy-dispatch before the open it was sent after, and
// a close sent before a deadline may be processed after it. claimDestroy, openSession and the deadline engine's claims
// (claim-destroy-7, open-session-8, claim-due-5, claim-expired-6) against real Redis, single and cluster.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { TOPOLOGIES } from '../../../tests/support/redis.ts';
import { fp, placementA, testCore, type TestCore } from '../../../tests/support/core.ts';

const T0 = 1_800_000_000_000;

for (const topology of TOPOLOGIES) {
  describe(`ends and opens out of order on ${topology} Redis`, () => {
    let core: TestCore;
    before(async () => {
      core = await testCore(topology);
    });
    after(async () => {
      await core.close();
    });

    const open = (sessionId: string, at: number, tenant?: string, now = at + 50) =>
      core.store.open({ sessionId, fingerprint: fp('open'), now, liveFrom: at, windowMs: 1000, placement: placementA, tenant });
    const close = (sessionId: string, sentAt: number, now: number, owner = '') =>
      core.store.claimDestroy({ sessionId, fingerprint: fp('close'), cause: 'closed', now, sentAt, causeAt: sentAt, owner, waitForOpen: true });
    const markerOf = (sessionId: string) => core.redis.hgetall(core.keys.session(sessionId).endMarker);

    test('a close that arrives before its open leaves a marker, and the open is ended at once under that cause', async () => {
      assert.equal((await close('early-1', T0 + 10, T0 + 20)).code, 'MARKED');
      const opened = await open('early-1', T0, undefined, T0 + 30);
      assert.equal(opened.code, 'OPENED');
      assert.ok(opened.code === 'OPENED' && opened.endedBy === 'closed' && opened.deadline === T0 + 30, 'due at once');
      assert.deepEqual(await markerOf('early-1'), {}, 'the marker is used up');
      const bucket = core.keys.bucketOf('early-1');
      const due = await core.store.claimDue(bucket, T0 + 31, 100);
      assert.deepEqual(due.claimed.map((c) => c.sessionId), ['early-1']);
      const view = await core.store.inspect('early-1');
      assert.equal(view?.state, 'destroying');
      assert.equal(view?.cause, 'closed', 'the cause is the close, not an expiry');
      // The engine's session.expired for that claim reaches destroy-dispatch: the mechanism, not a further cause.
      const expired = await core.store.claimDestroy({ sessionId: 'early-1', fingerprint: fp('expired'), incarnation: due.claimed[0]!.incarnation, cause: 'expired', now: T0 + 32 });
      assert.ok(expired.code === 'ALREADY' && expired.cause === 'closed');
      assert.deepEqual((await core.store.inspect('early-1'))?.extraCauses, []);
    });

    test('an open sent after the end is a new session the marker does not touch, and the marker is dropped', async () => {
      assert.equal((await close('early-2', T0 + 10, T0 + 20)).code, 'MARKED');
      const opened = await open('early-2', T0 + 11);
      assert.ok(opened.code === 'OPENED' && opened.endedBy === undefined && opened.deadline === T0 + 1011);
      assert.deepEqual(await markerOf('early-2'), {});
    });

    test("another tenant's end never ends an open, nor hides the owner's", async () => {
      assert.equal((await close('early-3', T0 + 10, T0 + 20, 'mallory')).code, 'MARKED');
      const opened = await open('early-3', T0, 'acme');
      assert.ok(opened.code === 'OPENED' && opened.endedBy === undefined);
      assert.equal((await core.store.inspect('early-3'))?.state, 'active');

      assert.equal((await close('early-3b', T0 + 5, T0 + 20, 'mallory')).code, 'MARKED');
      assert.equal((await close('early-3b', T0 + 10, T0 + 21, 'acme')).code, 'MARKED');
      const owned = await open('early-3b', T0, 'acme');
      assert.ok(owned.code === 'OPENED' && owned.endedBy === 'closed');
    });

    test('an end sent before the open is ignored even when a later one was kept with it', async () => {
      // A stale end of an older life (at +10), then the end of this one (at +110), both before the open (at +100).
      await close('early-7', T0 + 10, T0 + 200);
      await close('early-7', T0 + 110, T0 + 201);
      const opened = await open('early-7', T0 + 100, undefined, T0 + 202);
      assert.ok(opened.code === 'OPENED' && opened.endedBy === 'closed');
      assert.equal((await core.store.inspect('early-7'))?.deadline, T0 + 202, 'due at once');
    });

    test('a session ended at once is not pushed back by heartbeats, activity or holds sent before its end', async () => {
      await close('early-8', T0 + 10, T0 + 20);
      await open('early-8', T0, undefined, T0 + 30);
      assert.equal((await core.store.heartbeat('early-8', T0 + 5, T0 + 31)).code, 'ENDED');
      assert.equal((await core.store.hold('early-8', fp('hold'), T0 + 32, 60_000)).code, 'ENDED');
      assert.equal((await core.store.inspect('early-8'))?.deadline, T0 + 30);
    });

    test('the earliest of several early ends is the cause', async () => {
      await core.store.claimDestroy({ sessionId: 'early-4', fingerprint: fp(), cause: 'completed', now: T0 + 40, sentAt: T0 + 30, causeAt: T0 + 30, owner: '', waitForOpen: true });
      await close('early-4', T0 + 10, T0 + 41);
      const opened = await open('early-4', T0);
      assert.ok(opened.code === 'OPENED' && opened.endedBy === 'closed');
    });

    test('an end without a send time, or one of our own, leaves no marker', async () => {
      const r = await core.store.claimDestroy({ sessionId: 'early-5', fingerprint: fp(), cause: 'forced', now: T0 });
      assert.equal(r.code, 'UNKNOWN');
      assert.deepEqual(await markerOf('early-5'), {});
    });

    test('a close sent after a destroy completed waits for the reopen it was sent after', async () => {
      const first = await open('early-6', T0);
      assert.equal(first.code, 'OPENED');
      // The first incarnation expires and is destroyed; the pipeline had reopened the id meanwhile and closed it.
      await core.store.claimExpired('early-6', T0 + 2000);
      await core.redis.hset(core.keys.session('early-6').session, 's', 'X');
      assert.equal((await close('early-6', T0 + 2500, T0 + 2600)).code, 'ENDED');
      const reopened = await open('early-6', T0 + 2400, undefined, T0 + 2700);
      assert.ok(reopened.code === 'REOPENED' && reopened.endedBy === 'closed');
    });

    test('a close sent before the deadline but processed after the expiry claim becomes the cause', async () => {
      await open('late-1', T0);
      assert.equal((await core.store.claimExpired('late-1', T0 + 1500)).code, 'CLAIMED');
      const r = await close('late-1', T0 + 10, T0 + 1600);
      assert.ok(r.code === 'ALREADY' && r.cause === 'closed');
      const view = await core.store.inspect('late-1');
      assert.equal(view?.cause, 'closed');
      assert.deepEqual(view?.extraCauses, ['expired']);
    });

    test('a close sent after the deadline stays an extra cause of the expiry', async () => {
      await open('late-2', T0);
      await core.store.claimExpired('late-2', T0 + 1500);
      const r = await close('late-2', T0 + 1200, T0 + 1600);
      assert.ok(r.code === 'ALREADY' && r.cause === 'expired');
      const view = await core.store.inspect('late-2');
      assert.equal(view?.cause, 'expired');
      assert.deepEqual(view?.extraCauses, ['closed']);
    });
  });
}
