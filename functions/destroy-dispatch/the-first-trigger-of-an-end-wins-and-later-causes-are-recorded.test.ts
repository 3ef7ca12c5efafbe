// Every cause of a session's end, through the pure handler with real deps (real Redis of each topology, a real
// event sink): the first trigger of an incarnation claims its destroy, later ones are only recorded, and a
// session that is not dead (revived, or a completion that keeps it) is never destroyed.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EventType } from '../core/contract/events.ts';
import { auditLedger } from '../core/ledger.ts';
import { TOPOLOGIES } from '../../tests/support/redis.ts';
import { events, placementA, startHarness, T0, type Harness } from './destroy-dispatch-test-support.ts';
import { releaseMember } from './storm-guard.ts';

for (const topology of TOPOLOGIES) {
  describe(`destroy triggers on ${topology} Redis`, () => {
    let h: Harness;
    before(async () => {
      h = await startHarness(topology);
    });
    after(async () => {
      await h.close();
    });

    test('a closed session has its release requested, and once released is destroyed with its full timeline', async () => {
      h.setNow(T0);
      const inc = await h.open('closed-1');
      assert.equal(await h.replica.deliver(events.closed('closed-1')), 'ok');

      const requests = h.emitted(EventType.GpuReleaseRequested, 'closed-1');
      assert.equal(requests.length, 1);
      assert.equal(requests[0]!.event.id, `closed-1/${inc}/release/1`);
      const { token, ...request } = requests[0]!.event.data as { token: string };
      assert.deepEqual(request, { sessionId: 'closed-1', incarnation: inc, placement: placementA, attempt: 1, reason: 'destroy' });
      assert.deepEqual(await h.deps.store.releaseAttempt('closed-1', inc), { attempt: 1, token }, 'the request carries the token its attempt was stored with');
      assert.equal((await h.deps.store.inspect('closed-1'))?.stage, 'gpu_release_requested');
      assert.deepEqual(await h.deps.stormGuard.inFlight(placementA.node, h.now()), [releaseMember('closed-1', inc)]);

      h.setNow(T0 + 40);
      assert.equal(await h.replica.deliver(events.released('closed-1', inc)), 'ok');
      const destroyed = h.emitted(EventType.SessionDestroyed, 'closed-1');
      assert.equal(destroyed.length, 1);
      assert.equal(destroyed[0]!.event.id, `closed-1/${inc}/destroyed`);
      const data = destroyed[0]!.event.data as { cause: string; timeline: { stage: string; at: string }[]; durationMs: number; extraCauses?: string[] };
      assert.equal(data.cause, 'closed');
      assert.deepEqual(data.timeline.map((t) => t.stage), ['claimed', 'gpu_release_requested', 'gpu_released', 'state_purged', 'completed']);
      assert.equal(data.timeline[0]!.at, new Date(T0).toISOString());
      assert.equal(data.timeline.at(-1)!.at, new Date(T0 + 40).toISOString());
      assert.equal(data.durationMs, 40);
      assert.equal(data.extraCauses, undefined);

      const view = await h.deps.store.inspect('closed-1');
      assert.equal(view?.state, 'destroyed');
      assert.deepEqual(await h.deps.stormGuard.inFlight(placementA.node, h.now()), [], 'the slot is freed by gpu.released');
      const ledger = await auditLedger(h.deps.redis, h.deps.store.keys);
      assert.ok(ledger.balanced, ledger.problems.join('; '));
    });

    test('the first trigger wins: later causes are recorded as extra causes and never start a second destroy', async () => {
      h.setNow(T0);
      const inc = await h.open('many-1');
      // The idle checker judged it idle (and recorded its verdict) just before the close arrived.
      await h.firstActivity('many-1', T0);
      assert.equal(await h.deps.store.recordIdleVerdict('many-1', inc, 'many-1-idle', T0), 'RECORDED');
      assert.equal(await h.replica.deliver(events.closed('many-1')), 'ok');
      assert.equal(await h.replica.deliver(events.idle('many-1', inc, { time: T0, id: 'many-1-idle' })), 'ok');
      assert.equal(await h.replica.deliver(events.forced('many-1')), 'ok');
      assert.equal(await h.replica.deliver(events.completed('many-1', true)), 'ok');

      const ids = new Set(h.emitted(EventType.GpuReleaseRequested, 'many-1').map((e) => e.event.id));
      assert.deepEqual([...ids], [`many-1/${inc}/release/1`], 'later triggers re-send the one release request, under its id');
      const view = await h.deps.store.inspect('many-1');
      assert.equal(view?.cause, 'closed');
      assert.deepEqual(view?.extraCauses, ['idle', 'forced', 'completed']);

      assert.equal(await h.replica.deliver(events.released('many-1', inc)), 'ok');
      const destroyed = h.emitted(EventType.SessionDestroyed, 'many-1');
      assert.equal(destroyed.length, 1);
      assert.deepEqual((destroyed[0]!.event.data as { extraCauses: string[] }).extraCauses, ['idle', 'forced', 'completed']);

      const before = h.sink.events.length;
      assert.equal(await h.replica.deliver(events.closed('many-1')), 'ok', 'a trigger after the destroy is acknowledged');
      assert.equal(h.sink.events.length, before, 'and emits nothing');
    });

    test('session.expired resumes the destroy the deadline engine claimed; one for another incarnation changes nothing', async () => {
      h.setNow(T0);
      const inc = await h.open('expired-1');
      const claim = await h.deps.store.claimExpired('expired-1', T0 + 61_000);
      assert.equal(claim.code, 'CLAIMED');
      h.setNow(T0 + 61_001);
      assert.equal(await h.replica.deliver(events.expired('expired-1', inc + 1)), 'ok');
      assert.equal(h.emitted(EventType.GpuReleaseRequested, 'expired-1').length, 0, 'a stale incarnation is ignored');
      assert.equal(await h.replica.deliver(events.expired('expired-1', inc)), 'ok');
      assert.equal(h.emitted(EventType.GpuReleaseRequested, 'expired-1').length, 1);
      assert.equal((await h.deps.store.inspect('expired-1'))?.cause, 'expired');
    });

    test('an idle verdict outdated by later activity, or by an active hold, is not destroyed', async () => {
      h.setNow(T0);
      const inc = await h.open('idle-revived');
      const activity = await h.deps.store.recordActivity({
        sessionId: 'idle-revived', fingerprint: 'act-1', liveFrom: T0 + 100, now: T0 + 100, expectedVersion: 0, lastActivityAt: T0 + 100, context: {},
      });
      assert.equal(activity.code, 'APPLIED');
      h.setNow(T0 + 200);
      // Recorded by the checker (a verdict it reached on facts older than the activity), so REVIVED is what refuses it.
      assert.equal(await h.deps.store.recordIdleVerdict('idle-revived', inc, 'idle-revived-1', T0 + 50), 'RECORDED');
      assert.equal(await h.replica.deliver(events.idle('idle-revived', inc, { time: T0 + 50, id: 'idle-revived-1' })), 'ok');
      assert.equal((await h.deps.store.inspect('idle-revived'))?.state, 'active');

      const held = await h.open('idle-held');
      await h.firstActivity('idle-held', T0);
      assert.equal((await h.deps.store.hold('idle-held', 'hold-1', T0 + 200, 10_000)).code, 'HELD');
      assert.equal(await h.deps.store.recordIdleVerdict('idle-held', held, 'idle-held-1', T0 + 200), 'RECORDED');
      assert.equal(await h.replica.deliver(events.idle('idle-held', held, { time: T0 + 200, id: 'idle-held-1' })), 'ok');
      assert.equal((await h.deps.store.inspect('idle-held'))?.state, 'active');
      assert.equal(h.emitted(EventType.GpuReleaseRequested, 'idle-revived').length + h.emitted(EventType.GpuReleaseRequested, 'idle-held').length, 0);
    });

    test('an idle verdict reached after the last activity destroys the session', async () => {
      h.setNow(T0);
      const inc = await h.open('idle-dead');
      await h.firstActivity('idle-dead', T0 + 100);
      h.setNow(T0 + 400);
      assert.equal(await h.deps.store.recordIdleVerdict('idle-dead', inc, 'idle-dead-1', T0 + 300), 'RECORDED');
      assert.equal(await h.replica.deliver(events.idle('idle-dead', inc, { time: T0 + 300, id: 'idle-dead-1' })), 'ok');
      assert.equal((await h.deps.store.inspect('idle-dead'))?.cause, 'idle');
      assert.equal(h.emitted(EventType.GpuReleaseRequested, 'idle-dead').length, 1);
    });

    test('a session.idle the idle checker did not record changes nothing: neither a destroy nor a cause of one', async () => {
      // Any subscriber of the Kafka Broker could answer a delivery with a session.idle (its replies are not checked
      // against the EventPolicies): only the verdict the checker recorded, by event id, is applied.
      h.setNow(T0);
      const inc = await h.open('idle-forged');
      await h.firstActivity('idle-forged', T0 + 100);
      h.setNow(T0 + 60_000);
      assert.equal(await h.replica.deliver(events.idle('idle-forged', inc, { time: T0 + 50_000, id: 'forged-1' })), 'ok', 'no verdict recorded: 2xx, ignored');
      assert.equal(await h.deps.store.recordIdleVerdict('idle-forged', inc, 'the-checkers-verdict', T0 + 50_000), 'RECORDED');
      assert.equal(await h.replica.deliver(events.idle('idle-forged', inc, { time: T0 + 50_000, id: 'forged-2' })), 'ok', 'another verdict recorded: ignored');
      const view = await h.deps.store.inspect('idle-forged');
      assert.equal(view?.state, 'active');
      assert.equal(h.emitted(EventType.GpuReleaseRequested, 'idle-forged').length, 0);

      // Nor may one displace the cause of a destroy in progress, however early its time.
      h.setNow(T0 + 61_000);
      assert.equal(await h.replica.deliver(events.closed('idle-forged', { time: T0 + 61_000 })), 'ok');
      assert.equal(await h.replica.deliver(events.idle('idle-forged', inc, { time: T0 + 1_000, id: 'forged-3' })), 'ok');
      const closing = await h.deps.store.inspect('idle-forged');
      assert.equal(closing?.cause, 'closed');
      assert.deepEqual(closing?.extraCauses ?? [], []);
    });

    test('inference.completed with release=false is acknowledged and ignored; with release=true it destroys', async () => {
      h.setNow(T0);
      await h.open('completed-1');
      assert.equal(await h.replica.deliver(events.completed('completed-1', false)), 'ok');
      assert.equal((await h.deps.store.inspect('completed-1'))?.state, 'active');
      assert.equal(h.emitted(EventType.GpuReleaseRequested, 'completed-1').length, 0);
      assert.equal(await h.replica.deliver(events.completed('completed-1', true)), 'ok');
      const view = await h.deps.store.inspect('completed-1');
      assert.equal(view?.state, 'destroying');
      assert.equal(view?.cause, 'completed');
    });

    test('an operator-forced destroy has cause forced; a trigger for an unknown session is acknowledged', async () => {
      h.setNow(T0);
      await h.open('forced-1');
      assert.equal(await h.replica.deliver(events.forced('forced-1')), 'ok');
      assert.equal((await h.deps.store.inspect('forced-1'))?.cause, 'forced');
      const before = h.sink.events.length;
      assert.equal(await h.replica.deliver(events.closed('never-opened')), 'ok');
      assert.equal(h.sink.events.length, before);
      assert.equal(await h.deps.store.inspect('never-opened'), null);
    });
  });
}
