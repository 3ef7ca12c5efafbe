// Demote before destroy in the session scripts (request-demote-2, request-restore-2, begin-offload-call-4,
// settle-offload-call-5, and what record-release-7 and open-session-10 do with an offloaded session), on a single
// Redis and on a cluster: one request is pending at a time; each is called once however often it is delivered, and
// never beside a release of the same allocation; each answer is booked once; the ledger counts offloaded bytes apart
// from GPU releases and gives them back with a restore, a destroy's release or a migration.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { auditLedger, type NodeLedger } from '../ledger.ts';
import { drawReleaseToken, SessionStore } from '../session-store.ts';
import { Scripts } from './scripts.ts';
import { TOPOLOGIES } from '../../../tests/support/redis.ts';
import { placementA, testCore, type TestCore } from '../../../tests/support/core.ts';

const LEASE = 10_000;
const nodeA = placementA.node;

async function openLive(store: SessionStore, sessionId: string, now = Date.now(), placement = placementA): Promise<number> {
  const opened = await store.open({ sessionId, fingerprint: `open-${sessionId}-${now}`, now, liveFrom: now, windowMs: 600_000, placement });
  assert.ok(opened.code === 'OPENED' || opened.code === 'REOPENED', opened.code);
  return opened.incarnation;
}

/** Requests, calls and books a demote answered with `offloaded` / `freed`; returns its token. */
async function demoted(store: SessionStore, sessionId: string, incarnation: number, offloaded: number, freed: number): Promise<string> {
  const r = await store.requestDemote(sessionId, incarnation, drawReleaseToken(), Date.now());
  assert.equal(r.code, 'REQUESTED');
  const token = r.code === 'REQUESTED' ? r.token : '';
  assert.equal((await store.beginOffloadCall(sessionId, incarnation, 'demote', token, Date.now(), LEASE)).code, 'CALL');
  assert.equal(await store.settleOffloadCall(sessionId, incarnation, 'demote', token, Date.now(), { bytes: offloaded, freedBytes: freed, estimated: false }), true);
  return token;
}

for (const topology of TOPOLOGIES) {
  describe(`demote before destroy on ${topology} Redis`, () => {
    let core: TestCore;
    let store: SessionStore;
    before(async () => {
      core = await testCore(topology);
      store = core.store;
    });
    after(async () => {
      await core.close();
    });
    const node = async (): Promise<NodeLedger> => {
      const audit = await auditLedger(core.redis, core.keys);
      assert.equal(audit.balanced, true, audit.problems.join('; '));
      const zero = { node: nodeA, registeredBytes: 0, releasedBytes: 0, heldBytes: 0, allocations: 0, releases: 0, confirmedFreedBytes: 0, ignoredReleases: 0, offloadedBytes: 0, demotes: 0, demoteFreedBytes: 0, restores: 0, restoredBytes: 0 };
      return audit.nodes.find((n) => n.node === nodeA) ?? zero;
    };

    test('a demote is requested once, called once, booked once, and reported again from its stored answer', async () => {
      const start = await node();
      const inc = await openLive(store, 'dm-1');
      const first = await store.requestDemote('dm-1', inc, drawReleaseToken(), Date.now());
      assert.equal(first.code, 'REQUESTED');
      const token = first.code === 'REQUESTED' ? first.token : '';
      // A second check while it is pending (its event may have been lost) gets the same token back, not a new demote.
      assert.deepEqual(await store.requestDemote('dm-1', inc, drawReleaseToken(), Date.now()), { code: 'PENDING', token });
      const call = await store.beginOffloadCall('dm-1', inc, 'demote', token, Date.now(), LEASE);
      assert.deepEqual(call, { code: 'CALL', node: nodeA, runtimeUrl: placementA.runtimeUrl, address: {} });
      // A duplicate delivery while it is in flight, and a forged token, call nothing.
      assert.equal((await store.beginOffloadCall('dm-1', inc, 'demote', token, Date.now(), LEASE)).code, 'IN_FLIGHT');
      assert.deepEqual(await store.beginOffloadCall('dm-1', inc, 'demote', drawReleaseToken(), Date.now(), LEASE), { code: 'NOT_PENDING', why: 'superseded' });
      assert.equal(await store.settleOffloadCall('dm-1', inc, 'demote', drawReleaseToken(), Date.now(), { bytes: 1, freedBytes: 1, estimated: false }), false, 'only the holder settles');
      assert.equal(await store.settleOffloadCall('dm-1', inc, 'demote', token, Date.now(), { bytes: 900, freedBytes: 800, estimated: false }), true);
      assert.deepEqual(await store.beginOffloadCall('dm-1', inc, 'demote', token, Date.now(), LEASE), { code: 'ANSWERED', answer: { bytes: 900, freedBytes: 800, estimated: false } });
      const view = await store.inspect('dm-1');
      assert.deepEqual([view?.offload, view?.offloadedBytes, view?.demotes], ['demoted', 900, 1]);
      assert.deepEqual(await store.requestDemote('dm-1', inc, drawReleaseToken(), Date.now()), { code: 'ALREADY', stage: 'demoted' });
      const n = await node();
      assert.deepEqual(
        [n.offloadedBytes! - start.offloadedBytes!, n.demotes! - start.demotes!, n.demoteFreedBytes! - start.demoteFreedBytes!, n.releases - start.releases, n.heldBytes - start.heldBytes],
        [900, 1, 800, 0, placementA.gpuBytes],
        'offloaded and demote-freed bytes are counted apart; the allocation is still held, nothing is released',
      );
    });

    test('a user turn restores: the offloaded bytes go back, and the session may be demoted again later', async () => {
      const inc = await openLive(store, 'dm-2');
      await demoted(store, 'dm-2', inc, 500, 400);
      const start = await node();
      const r = await store.requestRestore('dm-2', inc, drawReleaseToken(), Date.now());
      assert.equal(r.code, 'REQUESTED');
      const token = r.code === 'REQUESTED' ? r.token : '';
      assert.deepEqual(await store.requestRestore('dm-2', inc, drawReleaseToken(), Date.now()), { code: 'PENDING', token }, 'a redelivered activity re-emits the same request');
      assert.equal((await store.beginOffloadCall('dm-2', inc, 'restore', token, Date.now(), LEASE)).code, 'CALL');
      assert.equal(await store.settleOffloadCall('dm-2', inc, 'restore', token, Date.now(), { bytes: 400, freedBytes: 0, estimated: false }), true);
      const n = await node();
      assert.deepEqual([n.offloadedBytes! - start.offloadedBytes!, n.restores! - start.restores!, n.restoredBytes! - start.restoredBytes!], [-500, 1, 400]);
      const view = await store.inspect('dm-2');
      assert.deepEqual([view?.offload, view?.offloadedBytes], [undefined, undefined]);
      assert.deepEqual(await store.requestRestore('dm-2', inc, drawReleaseToken(), Date.now()), { code: 'RESIDENT' });
      await demoted(store, 'dm-2', inc, 600, 500);
      assert.equal((await store.inspect('dm-2'))?.demotes, 2);
    });

    test('a restore overtaking a demote never made cancels it: the demote calls nothing and the restore has nothing to do', async () => {
      const inc = await openLive(store, 'dm-3');
      const d = await store.requestDemote('dm-3', inc, drawReleaseToken(), Date.now());
      const r = await store.requestRestore('dm-3', inc, drawReleaseToken(), Date.now());
      assert.equal(r.code, 'REQUESTED');
      const demoteToken = d.code === 'REQUESTED' ? d.token : '';
      const restoreToken = r.code === 'REQUESTED' ? r.token : '';
      assert.deepEqual(await store.beginOffloadCall('dm-3', inc, 'demote', demoteToken, Date.now(), LEASE), { code: 'NOT_PENDING', why: 'superseded' });
      assert.deepEqual(await store.beginOffloadCall('dm-3', inc, 'restore', restoreToken, Date.now(), LEASE), { code: 'NOTHING' });
      assert.equal((await store.inspect('dm-3'))?.offload, undefined, 'resident again');
    });

    test('a restore overtaking a demote in flight waits for it, then restores what it booked', async () => {
      const start = await node();
      const inc = await openLive(store, 'dm-4');
      const d = await store.requestDemote('dm-4', inc, drawReleaseToken(), Date.now());
      const demoteToken = d.code === 'REQUESTED' ? d.token : '';
      assert.equal((await store.beginOffloadCall('dm-4', inc, 'demote', demoteToken, Date.now(), LEASE)).code, 'CALL');
      const r = await store.requestRestore('dm-4', inc, drawReleaseToken(), Date.now());
      const restoreToken = r.code === 'REQUESTED' ? r.token : '';
      assert.equal((await store.beginOffloadCall('dm-4', inc, 'restore', restoreToken, Date.now(), LEASE)).code, 'IN_FLIGHT', 'never beside the demote');
      // The runtime did demote: booked, though the stage moved on to restoring.
      assert.equal(await store.settleOffloadCall('dm-4', inc, 'demote', demoteToken, Date.now(), { bytes: 300, freedBytes: 250, estimated: false }), true);
      assert.deepEqual([(await store.inspect('dm-4'))?.offload, (await store.inspect('dm-4'))?.offloadedBytes], ['restoring', 300]);
      assert.equal((await store.beginOffloadCall('dm-4', inc, 'restore', restoreToken, Date.now(), LEASE)).code, 'CALL');
      assert.equal(await store.settleOffloadCall('dm-4', inc, 'restore', restoreToken, Date.now(), { bytes: 250, freedBytes: 0, estimated: false }), true);
      const n = await node();
      assert.deepEqual([n.offloadedBytes! - start.offloadedBytes!, n.demotes! - start.demotes!, n.restores! - start.restores!], [0, 1, 1]);
    });

    test('a demote refused for good is never asked again; a failed call is released for the redelivery', async () => {
      const inc = await openLive(store, 'dm-5');
      const d = await store.requestDemote('dm-5', inc, drawReleaseToken(), Date.now());
      const token = d.code === 'REQUESTED' ? d.token : '';
      assert.equal((await store.beginOffloadCall('dm-5', inc, 'demote', token, Date.now(), LEASE)).code, 'CALL');
      assert.equal(await store.settleOffloadCall('dm-5', inc, 'demote', token, Date.now(), 'retry'), true);
      assert.equal((await store.beginOffloadCall('dm-5', inc, 'demote', token, Date.now(), LEASE)).code, 'CALL', 'the redelivery calls again');
      assert.equal(await store.settleOffloadCall('dm-5', inc, 'demote', token, Date.now(), 'failed'), true);
      assert.deepEqual(await store.beginOffloadCall('dm-5', inc, 'demote', token, Date.now(), LEASE), { code: 'FAILED' });
      const view = await store.inspect('dm-5');
      assert.equal(view?.offload, undefined);
      assert.ok(view?.demoteRefusedAt !== undefined);
      assert.deepEqual(await store.requestDemote('dm-5', inc, drawReleaseToken(), Date.now()), { code: 'REFUSED' });
    });

    test('no demote while held, none of an ended session, none of another incarnation', async () => {
      const now = Date.now();
      const inc = await openLive(store, 'dm-6', now);
      assert.equal((await store.hold('dm-6', 'hold-1', now, 60_000)).code, 'HELD');
      assert.equal((await store.requestDemote('dm-6', inc, drawReleaseToken(), now + 1)).code, 'HELD');
      assert.deepEqual(await store.requestDemote('dm-6', inc + 1, drawReleaseToken(), now + 1), { code: 'STALE', incarnation: inc });
      await store.claimDestroy({ sessionId: 'dm-6', fingerprint: 'close-dm-6', cause: 'closed', now: now + 2 });
      assert.equal((await store.requestDemote('dm-6', inc, drawReleaseToken(), now + 3)).code, 'ENDED');
      assert.equal((await store.requestDemote('dm-never', 1, drawReleaseToken(), now)).code, 'UNKNOWN');
    });

    test('a destroy of a demoted session waits for a demote in flight; its release gives the offloaded bytes back', async () => {
      const start = await node();
      const now = Date.now();
      const inc = await openLive(store, 'dm-7', now);
      const d = await store.requestDemote('dm-7', inc, drawReleaseToken(), now);
      const demoteToken = d.code === 'REQUESTED' ? d.token : '';
      assert.equal((await store.beginOffloadCall('dm-7', inc, 'demote', demoteToken, now, LEASE)).code, 'CALL');
      await store.claimDestroy({ sessionId: 'dm-7', fingerprint: 'close-dm-7', cause: 'closed', now: now + 1 });
      const releaseToken = drawReleaseToken();
      await store.advance('dm-7', inc, 'gpu_release_requested', now + 2, { attempt: 1, token: releaseToken });
      assert.equal((await store.beginReleaseCall('dm-7', inc, releaseToken, now + 3, LEASE)).code, 'IN_FLIGHT', 'the release waits for the demote');
      assert.equal(await store.settleOffloadCall('dm-7', inc, 'demote', demoteToken, now + 4, { bytes: 700, freedBytes: 650, estimated: false }), true);
      assert.equal((await node()).offloadedBytes! - start.offloadedBytes!, 700, 'booked though the session is being destroyed');
      assert.equal((await store.beginReleaseCall('dm-7', inc, releaseToken, now + 5, LEASE)).code, 'CALL');
      // The runtime's release of a demoted session frees no more GPU KV; it drops the copy it kept.
      assert.equal((await store.recordRelease('dm-7', inc, 0, now + 6, nodeA, releaseToken)).code, 'RELEASED');
      const n = await node();
      assert.deepEqual([n.offloadedBytes! - start.offloadedBytes!, n.releases - start.releases, n.heldBytes - start.heldBytes], [0, 1, 0]);
      // A restore asked for a session being destroyed calls nothing.
      assert.equal((await store.requestRestore('dm-7', inc, drawReleaseToken(), now + 7)).code, 'ENDED');
    });

    test('a demote that kept nothing, restored, books no restore and never drives the ledger negative', async () => {
      const start = await node();
      const inc = await openLive(store, 'dm-9');
      await demoted(store, 'dm-9', inc, 0, 0);
      const r = await store.requestRestore('dm-9', inc, drawReleaseToken(), Date.now());
      const token = r.code === 'REQUESTED' ? r.token : '';
      // Nothing is booked as offloaded, so the restore has nothing to bring back and calls nothing.
      assert.deepEqual(await store.beginOffloadCall('dm-9', inc, 'restore', token, Date.now(), LEASE), { code: 'NOTHING' });
      const n = await node();
      assert.deepEqual([n.offloadedBytes! - start.offloadedBytes!, n.restores! - start.restores!, n.demotes! - start.demotes!], [0, 0, 1]);
    });

    test('a restore called after its demote\'s caller died books no restore for the demote the ledger never counted', async () => {
      const start = await node();
      const now = Date.now();
      const inc = await openLive(store, 'dm-10', now);
      const d = await store.requestDemote('dm-10', inc, drawReleaseToken(), now);
      const demoteToken = d.code === 'REQUESTED' ? d.token : '';
      assert.equal((await store.beginOffloadCall('dm-10', inc, 'demote', demoteToken, now, 100)).code, 'CALL');
      const r = await store.requestRestore('dm-10', inc, drawReleaseToken(), now + 1);
      const token = r.code === 'REQUESTED' ? r.token : '';
      // The demote's lease ran out unanswered: it may have happened, so the restore is called.
      assert.equal((await store.beginOffloadCall('dm-10', inc, 'restore', token, now + 200, LEASE)).code, 'CALL');
      assert.equal(await store.settleOffloadCall('dm-10', inc, 'restore', token, now + 201, { bytes: 5, freedBytes: 0, estimated: false }), true);
      assert.equal(await store.settleOffloadCall('dm-10', inc, 'demote', demoteToken, now + 202, { bytes: 9, freedBytes: 9, estimated: false }), false, 'the dead caller\'s late answer books nothing');
      const n = await node();
      assert.deepEqual([n.offloadedBytes! - start.offloadedBytes!, n.restores! - start.restores!], [0, 0]);
      assert.equal((await store.inspect('dm-10'))?.offload, undefined);
    });

    test('a hold granted before the demote is called calls it off', async () => {
      const now = Date.now();
      const inc = await openLive(store, 'dm-11', now);
      const d = await store.requestDemote('dm-11', inc, drawReleaseToken(), now);
      const token = d.code === 'REQUESTED' ? d.token : '';
      assert.equal((await store.hold('dm-11', 'hold-11', now + 1, 60_000)).code, 'HELD');
      assert.equal((await store.requestDemote('dm-11', inc, drawReleaseToken(), now + 2)).code, 'HELD', 'not even sent again while held');
      assert.deepEqual(await store.beginOffloadCall('dm-11', inc, 'demote', token, now + 2, LEASE), { code: 'NOT_PENDING', why: 'held' });
      assert.equal((await store.inspect('dm-11'))?.offload, undefined);
    });

    test('an operator\'s resolve of a demoted session\'s failed destroy writes its offloaded bytes off too', async () => {
      const start = await node();
      const budgeted = new SessionStore(core.redis, core.keys, await Scripts.register(core.redis), { tombstoneTtlMs: 60_000, releaseMaxAttempts: 1 });
      const now = Date.now();
      const inc = await openLive(budgeted, 'dm-12', now);
      await demoted(budgeted, 'dm-12', inc, 800, 700);
      await budgeted.claimDestroy({ sessionId: 'dm-12', fingerprint: 'close-dm-12', cause: 'closed', now: now + 1 });
      assert.equal((await budgeted.advance('dm-12', inc, 'gpu_release_requested', now + 2, { attempt: 1, token: drawReleaseToken() })).code, 'ADVANCED');
      assert.equal((await budgeted.advance('dm-12', inc, 'gpu_release_requested', now + 3, { attempt: 2, token: drawReleaseToken() })).code, 'EXHAUSTED');
      assert.equal((await budgeted.settleFailedDestroy('dm-12', 'resolve', now + 4)).code, 'RESOLVED');
      const n = await node();
      assert.equal(n.offloadedBytes! - start.offloadedBytes!, 0);
      assert.equal(n.heldBytes - start.heldBytes, 0);
    });

    test('a migration of a demoted session starts the new incarnation resident and stops counting the old copy', async () => {
      const start = await node();
      const now = Date.now();
      const inc = await openLive(store, 'dm-8', now);
      await demoted(store, 'dm-8', inc, 400, 350);
      const moved = await store.open({ sessionId: 'dm-8', fingerprint: 'open-dm-8-moved', now: now + 10, liveFrom: now + 10, windowMs: 600_000, placement: { ...placementA, runtimeUrl: 'http://runtime-b.test:8000' } });
      assert.equal(moved.code, 'MIGRATED');
      const view = await store.inspect('dm-8');
      assert.deepEqual([view?.offload, view?.offloadedBytes, view?.demotes], [undefined, undefined, undefined]);
      assert.equal((await node()).offloadedBytes! - start.offloadedBytes!, 0);
      assert.equal((await store.requestDemote('dm-8', moved.incarnation, drawReleaseToken(), now + 11)).code, 'REQUESTED', 'the new incarnation may be demoted');
    });
  });
}
