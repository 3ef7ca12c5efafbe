// A runtime that refuses every release must not be retried forever: after RELEASE_MAX_ATTEMPTS attempts the destroy
// gives up (release_failed), says so once (session.destroy.failed), leaves the stall watchdog and frees its node slot,
// and waits for an operator: retry (a fresh budget) or resolve (booked as freed, then finished).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EventType } from '../core/contract/events.ts';
import { auditLedger } from '../core/ledger.ts';
import { TOPOLOGIES } from '../../tests/support/redis.ts';
import { events, placementA, startHarness, T0, type Harness } from './destroy-dispatch-test-support.ts';

for (const topology of TOPOLOGIES) {
  describe(`a release that keeps failing on ${topology} Redis`, () => {
    let h: Harness;
    before(async () => {
      h = await startHarness(topology, { env: { RELEASE_MAX_ATTEMPTS: '2' } });
    });
    after(async () => {
      await h.close();
    });

    const closedId = (sessionId: string) => `close-${topology}-${sessionId}`;
    const releaseIds = (sessionId: string) => h.emitted(EventType.GpuReleaseRequested, sessionId).map((e) => e.event.id);
    const inWatchdog = async (sessionId: string) => (await h.deps.store.destroysInFlight(Number.MAX_SAFE_INTEGER)).some((m) => m.member === sessionId);

    /** Opens a session, closes it and has each of its two attempts refused for good; returns its incarnation. */
    async function exhaust(sessionId: string): Promise<number> {
      h.setNow(T0);
      const inc = await h.open(sessionId);
      assert.equal(await h.replica.deliver(events.closed(sessionId, { time: T0, id: closedId(sessionId) })), 'ok');
      assert.equal(await h.replica.deliver(events.releaseFailed(sessionId, inc, false)), 'ok');
      // The watchdog's resume re-issues the release under attempt 2, which is refused too; the next resume gives up.
      assert.equal(await h.replica.deliver(events.resume(sessionId, inc, 'gpu_release_requested')), 'ok');
      assert.equal(await h.replica.deliver(events.releaseFailed(sessionId, inc, false)), 'ok');
      assert.equal(await h.replica.deliver(events.resume(sessionId, inc, 'gpu_release_requested')), 'ok');
      assert.deepEqual(releaseIds(sessionId), [`${sessionId}/${inc}/release/1`, `${sessionId}/${inc}/release/2`]);
      return inc;
    }

    test('gives up after the budget, says so once, leaves the watchdog and is listed for an operator', async () => {
      const inc = await exhaust('gives-up');
      const failed = h.emitted(EventType.SessionDestroyFailed, 'gives-up');
      assert.equal(failed.length, 1);
      assert.deepEqual(failed[0]?.event.data, { sessionId: 'gives-up', incarnation: inc, cause: 'closed', node: placementA.node, gpuBytes: placementA.gpuBytes, attempts: 2 });
      assert.equal(await inWatchdog('gives-up'), false, 'the watchdog no longer resumes it');
      assert.deepEqual((await h.deps.store.failedDestroys()).map((f) => f.sessionId).filter((id) => id === 'gives-up'), ['gives-up']);
      const view = await h.deps.store.inspect('gives-up');
      assert.equal(view?.state, 'destroying');
      assert.ok(view?.releaseFailedAt !== undefined);
      // A late resume, or a redelivered close, requests nothing and holds no slot.
      assert.equal(await h.replica.deliver(events.resume('gives-up', inc, 'gpu_release_requested')), 'ok');
      assert.equal(await h.replica.deliver(events.closed('gives-up', { time: T0, id: closedId('gives-up') })), 'ok');
      assert.equal(releaseIds('gives-up').length, 2);
      assert.equal(await h.deps.redis.zcard(h.deps.store.keys.nodeInflight(placementA.node)), 0, 'no release slot held');
      assert.ok(h.emitted(EventType.SessionDestroyFailed, 'gives-up').length >= 2, 'reported again');
      assert.equal(new Set(h.emitted(EventType.SessionDestroyFailed, 'gives-up').map((e) => e.event.id)).size, 1, 'under the same id');
    });

    test("the last attempt's answer arriving after the give-up finishes the destroy and clears it from the failed set", async () => {
      const inc = await exhaust('late-answer');
      assert.equal(await h.replica.deliver(events.released('late-answer', inc)), 'ok');
      assert.equal(h.emitted(EventType.SessionDestroyed, 'late-answer').length, 1);
      assert.deepEqual((await h.deps.store.failedDestroys()).filter((f) => f.sessionId === 'late-answer'), []);
      assert.equal((await h.deps.store.settleFailedDestroy('late-answer', 'resolve', T0 + 10)).code, 'NOT_FAILED');
      const ledger = await auditLedger(h.deps.redis, h.deps.store.keys);
      assert.ok(ledger.balanced, ledger.problems.join('; '));
    });

    test('retry restarts the budget and hands the destroy back to the watchdog', async () => {
      const inc = await exhaust('retried');
      assert.equal((await h.deps.store.settleFailedDestroy('retried', 'retry', T0 + 10)).code, 'RETRYING');
      assert.equal(await inWatchdog('retried'), true);
      assert.equal(await h.replica.deliver(events.resume('retried', inc, 'gpu_release_requested')), 'ok');
      assert.deepEqual(releaseIds('retried').at(-1), `retried/${inc}/release/3`);
      assert.equal(await h.replica.deliver(events.released('retried', inc)), 'ok');
      assert.equal(h.emitted(EventType.SessionDestroyed, 'retried').length, 1);
    });

    test('resolve books the memory as freed and the destroy finishes', async () => {
      const inc = await exhaust('resolved');
      const r = await h.deps.store.settleFailedDestroy('resolved', 'resolve', T0 + 10);
      assert.deepEqual(r, { code: 'RESOLVED', incarnation: inc, node: placementA.node, bytes: placementA.gpuBytes });
      assert.equal(await h.replica.deliver(events.resume('resolved', inc, 'gpu_released')), 'ok');
      const destroyed = h.emitted(EventType.SessionDestroyed, 'resolved');
      assert.equal(destroyed.length, 1);
      assert.equal((await h.deps.store.inspect('resolved'))?.state, 'destroyed');
      const ledger = await auditLedger(h.deps.redis, h.deps.store.keys);
      assert.ok(ledger.balanced, ledger.problems.join('; '));
      assert.deepEqual(await h.deps.store.settleFailedDestroy('resolved', 'retry', T0 + 20), { code: 'NOT_FAILED', state: 'destroyed' });
    });
  });
}
