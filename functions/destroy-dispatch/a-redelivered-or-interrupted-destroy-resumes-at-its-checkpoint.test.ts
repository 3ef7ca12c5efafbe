// Delivery is at-least-once and a replica may die between any two steps: redeliveries at every stage and
// destroys interrupted part-way (simulated by running the first steps through the store, then redelivering)
// must resume at the checkpoint and repeat no effect: one release request id per attempt, one booking, one
// session.destroyed.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EventType } from '../core/contract/events.ts';
import { auditLedger } from '../core/ledger.ts';
import { drawReleaseToken, eventFingerprint } from '../core/session-store.ts';
import { TOPOLOGIES } from '../../tests/support/redis.ts';
import { events, placementA, startHarness, T0, type Harness } from './destroy-dispatch-test-support.ts';
import { releaseMember } from './storm-guard.ts';

for (const topology of TOPOLOGIES) {
  describe(`destroy checkpoints on ${topology} Redis`, () => {
    let h: Harness;
    before(async () => {
      h = await startHarness(topology);
    });
    after(async () => {
      await h.close();
    });

    const releaseIds = (sessionId: string) => h.emitted(EventType.GpuReleaseRequested, sessionId).map((e) => e.event.id);
    const destroyedCount = (sessionId: string) => h.emitted(EventType.SessionDestroyed, sessionId).length;

    test('redelivering every event of a destroy repeats no release request id, booking or session.destroyed', async () => {
      h.setNow(T0);
      const inc = await h.open('redeliver-1');
      const closed = events.closed('redeliver-1', { id: 'closed-once' });
      assert.equal(await h.replica.deliver(closed), 'ok');
      assert.equal(await h.replica.deliver(closed), 'ok');
      assert.deepEqual(new Set(releaseIds('redeliver-1')), new Set([`redeliver-1/${inc}/release/1`]));

      const released = events.released('redeliver-1', inc, placementA.node, 1000, { id: 'released-once' });
      assert.equal(await h.replica.deliver(released), 'ok');
      assert.equal(await h.replica.deliver(released), 'ok');
      assert.equal(await h.replica.deliver(closed), 'ok');
      assert.equal(destroyedCount('redeliver-1'), 1);
      assert.deepEqual(new Set(releaseIds('redeliver-1')), new Set([`redeliver-1/${inc}/release/1`]));

      const ledger = await auditLedger(h.deps.redis, h.deps.store.keys);
      const node = ledger.nodes.find((n) => n.node === placementA.node);
      assert.ok(ledger.balanced, ledger.problems.join('; '));
      assert.equal(node?.releases, 1, 'the allocation is booked as released once');
    });

    test('a destroy interrupted after its checkpoint but before the release request went out sends it on redelivery', async () => {
      h.setNow(T0);
      const inc = await h.open('crash-before-emit');
      const closed = events.closed('crash-before-emit', { id: 'closed-crash-1' });
      // What the crashed delivery did: claimed and checkpointed, but never sent the request.
      const claim = await h.deps.store.claimDestroy({ sessionId: 'crash-before-emit', fingerprint: eventFingerprint(closed.source, closed.id), cause: 'closed', now: T0 });
      assert.equal(claim.code, 'CLAIMED');
      assert.equal((await h.deps.store.advance('crash-before-emit', inc, 'gpu_release_requested', T0, { attempt: 1, token: drawReleaseToken() })).code, 'ADVANCED');
      assert.deepEqual(releaseIds('crash-before-emit'), []);

      assert.equal(await h.replica.deliver(closed), 'ok');
      assert.deepEqual(releaseIds('crash-before-emit'), [`crash-before-emit/${inc}/release/1`]);
    });

    test('a retry that finds the release checkpointed by the delivery it replaces sends the request again, same id and token', async () => {
      h.setNow(T0);
      const inc = await h.open('race-retry');
      const closed = events.closed('race-retry', { id: 'closed-race' });
      // Delivery X claimed the destroy and is slow (its hooks, say); the Broker gave up on it and retries (X′). X′ reads
      // the claim, then X checkpoints the release just before X′ tries to: X sends its request as its reply, to a
      // connection the Broker has closed, so X′ must send it.
      const claim = await h.deps.store.claimDestroy({ sessionId: 'race-retry', fingerprint: eventFingerprint(closed.source, closed.id), cause: 'closed', now: T0 });
      assert.equal(claim.code, 'CLAIMED');
      const store = h.deps.store;
      const advance = store.advance.bind(store);
      const token = drawReleaseToken();
      store.advance = (async (...args: Parameters<typeof advance>) => {
        store.advance = advance;
        assert.equal((await advance('race-retry', inc, 'gpu_release_requested', T0, { attempt: 1, token })).code, 'ADVANCED', 'X checkpoints first');
        return advance(...args);
      });
      try {
        assert.equal(await h.replica.deliver(closed), 'ok');
      } finally {
        store.advance = advance;
      }
      const sent = h.emitted(EventType.GpuReleaseRequested, 'race-retry');
      assert.deepEqual(sent.map((e) => e.event.id), [`race-retry/${inc}/release/1`]);
      assert.equal((sent[0]!.event.data as { token: string }).token, token, "X's attempt, under its token");
    });

    test('a release request the Broker refused fails the delivery (503), and the redelivery sends it under the same id', async () => {
      h.setNow(T0);
      const inc = await h.open('sink-down-1');
      const closed = events.closed('sink-down-1');
      h.sink.failNext(3, 503);
      assert.equal(await h.replica.deliver(closed), 503);
      assert.equal((await h.deps.store.inspect('sink-down-1'))?.stage, 'gpu_release_requested');
      assert.deepEqual(releaseIds('sink-down-1'), []);
      assert.equal(await h.replica.deliver(closed), 'ok');
      assert.deepEqual(releaseIds('sink-down-1'), [`sink-down-1/${inc}/release/1`]);
    });

    test('a destroy claimed by a trigger that then died is carried on by the next trigger', async () => {
      h.setNow(T0);
      const inc = await h.open('crash-after-claim');
      assert.equal((await h.deps.store.claimDestroy({ sessionId: 'crash-after-claim', fingerprint: 'lost-delivery', cause: 'closed', now: T0 })).code, 'CLAIMED');
      assert.equal(await h.replica.deliver(events.forced('crash-after-claim')), 'ok');
      assert.deepEqual(releaseIds('crash-after-claim'), [`crash-after-claim/${inc}/release/1`]);
      const view = await h.deps.store.inspect('crash-after-claim');
      assert.equal(view?.cause, 'closed');
      assert.deepEqual(view?.extraCauses, ['forced']);
    });

    test('a destroy interrupted after the release was booked, or after the purge, finishes on the redelivered gpu.released', async () => {
      h.setNow(T0);
      for (const [sessionId, steps] of [['crash-after-booking', 1], ['crash-after-purge', 2]] as const) {
        const inc = await h.open(sessionId);
        assert.equal(await h.replica.deliver(events.closed(sessionId)), 'ok');
        // What the crashed delivery of gpu.released did before dying.
        assert.equal((await h.deps.store.recordRelease(sessionId, inc, 1000, T0 + 10, placementA.node, (await h.deps.store.releaseAttempt(sessionId, inc))!.token)).code, 'RELEASED');
        if (steps === 2) assert.equal((await h.deps.store.purge(sessionId, inc, T0 + 11)).code, 'PURGED');
        assert.equal(destroyedCount(sessionId), 0);

        h.setNow(T0 + 20);
        const released = events.released(sessionId, inc);
        assert.equal(await h.replica.deliver(released), 'ok');
        assert.equal(await h.replica.deliver(released), 'ok');
        assert.equal(destroyedCount(sessionId), 1, `${sessionId} is destroyed exactly once`);
        const data = h.emitted(EventType.SessionDestroyed, sessionId)[0]!.event.data as { timeline: { stage: string }[] };
        assert.deepEqual(data.timeline.map((t) => t.stage), ['claimed', 'gpu_release_requested', 'gpu_released', 'state_purged', 'completed']);
        assert.equal((await h.deps.store.inspect(sessionId))?.state, 'destroyed');
      }
    });

    test('a purge that reached Redis ahead of its booking is refused, and the destroy purges from its checkpoint', async () => {
      h.setNow(T0);
      const inc = await h.open('purge-ran-first');
      assert.equal(await h.replica.deliver(events.closed('purge-ran-first')), 'ok');
      // The reply a purge gets when it runs before the booking it was sent after (a Cluster redirect, a reload after
      // NOSCRIPT): this handling of gpu.released is handed it instead of its own.
      const early = await h.deps.store.purge('purge-ran-first', inc, T0 + 5);
      assert.equal(early.code, 'NOT_READY');
      const store = h.deps.store;
      let purges = 0;
      const reordered = new Proxy(store, {
        get(target, prop) {
          if (prop === 'purge') {
            return async (...args: Parameters<typeof store.purge>) => (++purges === 1 ? early : target.purge(...args));
          }
          const value: unknown = Reflect.get(target, prop, target);
          return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
        },
      });
      Object.defineProperty(h.deps, 'store', { value: reordered, configurable: true });
      try {
        h.setNow(T0 + 10);
        assert.equal(await h.replica.deliver(events.released('purge-ran-first', inc)), 'ok');
      } finally {
        delete (h.deps as { store?: unknown }).store;
      }
      assert.equal(purges, 2, 'the refused purge is sent again from the checkpoint');
      assert.equal(destroyedCount('purge-ran-first'), 1);
      const data = h.emitted(EventType.SessionDestroyed, 'purge-ran-first')[0]!.event.data as { timeline: { stage: string }[] };
      assert.deepEqual(data.timeline.map((t) => t.stage), ['claimed', 'gpu_release_requested', 'gpu_released', 'state_purged', 'completed']);
      assert.equal((await h.deps.store.inspect('purge-ran-first'))?.state, 'destroyed');
    });

    test('a session.destroyed the Broker refused leaves the destroy at state_purged; the redelivery emits it once', async () => {
      h.setNow(T0);
      const inc = await h.open('destroyed-refused');
      assert.equal(await h.replica.deliver(events.closed('destroyed-refused')), 'ok');
      h.sink.failNext(3, 503);
      const released = events.released('destroyed-refused', inc);
      assert.equal(await h.replica.deliver(released), 503);
      assert.equal((await h.deps.store.inspect('destroyed-refused'))?.stage, 'state_purged');
      assert.equal(await h.replica.deliver(released), 'ok');
      assert.equal(destroyedCount('destroyed-refused'), 1);
      assert.equal((await h.deps.store.inspect('destroyed-refused'))?.state, 'destroyed');
    });

    test('destroy.resume re-issues a stalled release under a new attempt, once per resume event', async () => {
      h.setNow(T0);
      const inc = await h.open('stalled-1');
      assert.equal(await h.replica.deliver(events.closed('stalled-1')), 'ok');
      const resume1 = events.resume('stalled-1', inc, 'gpu_release_requested', { id: 'resume-1' });
      h.setNow(T0 + 30_000);
      assert.equal(await h.replica.deliver(resume1), 'ok');
      assert.equal(await h.replica.deliver(resume1), 'ok', 'a redelivered resume re-sends, never re-issues');
      assert.deepEqual(releaseIds('stalled-1'), ['stalled-1/' + inc + '/release/1', `stalled-1/${inc}/release/2`, `stalled-1/${inc}/release/2`]);
      const second = h.emitted(EventType.GpuReleaseRequested, 'stalled-1')[1]!;
      assert.equal((second.event.data as { attempt: number }).attempt, 2);

      assert.equal(await h.replica.deliver(events.resume('stalled-1', inc, 'gpu_release_requested', { id: 'resume-2' })), 'ok');
      assert.equal(releaseIds('stalled-1').at(-1), `stalled-1/${inc}/release/3`);
      assert.equal((await h.deps.store.inspect('stalled-1'))?.releaseAttempt, 3);

      assert.equal(await h.replica.deliver(events.released('stalled-1', inc)), 'ok');
      assert.equal(destroyedCount('stalled-1'), 1);
      assert.equal(await h.replica.deliver(events.resume('stalled-1', inc, 'gpu_release_requested', { id: 'resume-3' })), 'ok');
      assert.equal(releaseIds('stalled-1').length, 4, 'a resume after the destroy ended sends nothing');
    });

    test('destroy.resume re-issues the stalled release of a destroy an idle verdict started (it names no verdict)', async () => {
      h.setNow(T0);
      const inc = await h.open('stalled-idle');
      await h.firstActivity('stalled-idle', T0);
      assert.equal(await h.deps.store.recordIdleVerdict('stalled-idle', inc, 'stalled-idle-verdict', T0 + 10), 'RECORDED');
      assert.equal(await h.replica.deliver(events.idle('stalled-idle', inc, { time: T0 + 10, id: 'stalled-idle-verdict' })), 'ok');
      assert.equal((await h.deps.store.inspect('stalled-idle'))?.cause, 'idle');
      h.setNow(T0 + 30_000);
      assert.equal(await h.replica.deliver(events.resume('stalled-idle', inc, 'gpu_release_requested', { id: 'resume-si' })), 'ok');
      assert.deepEqual(releaseIds('stalled-idle'), [`stalled-idle/${inc}/release/1`, `stalled-idle/${inc}/release/2`]);
      assert.equal(await h.replica.deliver(events.released('stalled-idle', inc)), 'ok');
      assert.equal(destroyedCount('stalled-idle'), 1);
    });

    test('destroy.resume at a later stage finishes the destroy; for a live session it changes nothing', async () => {
      h.setNow(T0);
      const inc = await h.open('stalled-2');
      assert.equal(await h.replica.deliver(events.closed('stalled-2')), 'ok');
      await h.deps.store.recordRelease('stalled-2', inc, 1000, T0 + 1, placementA.node, (await h.deps.store.releaseAttempt('stalled-2', inc))!.token);
      assert.equal(await h.replica.deliver(events.resume('stalled-2', inc, 'gpu_released')), 'ok');
      assert.equal(destroyedCount('stalled-2'), 1);

      const live = await h.open('live-1');
      assert.equal(await h.replica.deliver(events.resume('live-1', live, 'claimed')), 'ok');
      assert.equal((await h.deps.store.inspect('live-1'))?.state, 'active', 'a resume never claims a live session');
      assert.deepEqual(releaseIds('live-1'), []);
    });

    test('gpu.release.failed: a retryable failure keeps the slot; a final one frees it and leaves the destroy at its checkpoint', async () => {
      h.setNow(T0);
      const inc = await h.open('failed-1');
      const member = releaseMember('failed-1', inc);
      assert.equal(await h.replica.deliver(events.closed('failed-1')), 'ok');
      assert.ok((await h.deps.stormGuard.inFlight(placementA.node, h.now())).includes(member));

      assert.equal(await h.replica.deliver(events.releaseFailed('failed-1', inc, true)), 'ok');
      assert.ok((await h.deps.stormGuard.inFlight(placementA.node, h.now())).includes(member));

      assert.equal(await h.replica.deliver(events.releaseFailed('failed-1', inc, false)), 'ok');
      assert.ok(!(await h.deps.stormGuard.inFlight(placementA.node, h.now())).includes(member));
      const view = await h.deps.store.inspect('failed-1');
      assert.equal(view?.state, 'destroying');
      assert.equal(view?.stage, 'gpu_release_requested');

      assert.equal(await h.replica.deliver(events.resume('failed-1', inc, 'gpu_release_requested')), 'ok');
      assert.deepEqual(releaseIds('failed-1'), [`failed-1/${inc}/release/1`, `failed-1/${inc}/release/2`]);
      assert.ok((await h.deps.stormGuard.inFlight(placementA.node, h.now())).includes(member), 'the re-issued release holds a slot again');
    });

    test('gpu.released for a live session or an older incarnation books nothing', async () => {
      h.setNow(T0);
      const inc = await h.open('stray-1');
      assert.equal(await h.replica.deliver(events.released('stray-1', inc)), 'ok');
      assert.equal(await h.replica.deliver(events.released('stray-1', inc + 7)), 'ok');
      const view = await h.deps.store.inspect('stray-1');
      assert.equal(view?.state, 'active');
      assert.equal(destroyedCount('stray-1'), 0);
    });
  });
}
