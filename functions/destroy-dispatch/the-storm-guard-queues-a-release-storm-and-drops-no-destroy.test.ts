// The storm guard against real Redis, shared by two replicas: a burst of destroys on one node never has more
// releases in flight than the node's limit; the excess is acknowledged and waits in the node's queue, and each
// freed slot goes to the oldest waiter, so every destroy completes in the end without a redelivery. A runtime never
// gets more requests than its token bucket allows (that excess answers 503: the Broker's backoff waits out a
// rate). Slots are leases that a lost holder cannot keep forever.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EventType } from '../core/contract/events.ts';
import { auditLedger } from '../core/ledger.ts';
import { KeySpace } from '../core/redis/keys.ts';
import { drawReleaseToken } from '../core/session-store.ts';
import { TOPOLOGIES } from '../../tests/support/redis.ts';
import { events, placementA, startHarness, T0, type Harness, type Replica } from './destroy-dispatch-test-support.ts';
import { handle } from './handle.ts';
import { parseReleaseMember, ReleaseThrottledError, releaseMember, StormGuard } from './storm-guard.ts';

for (const topology of TOPOLOGIES) {
  describe(`the storm guard on ${topology} Redis`, () => {
    describe('with NODE_MAX_INFLIGHT_RELEASES=2', () => {
      let h: Harness;
      let second: Replica;
      before(async () => {
        h = await startHarness(topology, { env: { NODE_MAX_INFLIGHT_RELEASES: '2', RUNTIME_RELEASE_BURST: '1000', RUNTIME_RELEASE_RATE_PER_S: '1000' } });
        second = await h.addReplica();
      });
      after(async () => {
        await h.close();
      });

      const requestedIds = (): string[] => h.emitted(EventType.GpuReleaseRequested).map((e) => String(e.event.subject));

      test('a burst of 10 destroys on one node is all acknowledged, has at most 2 releases in flight, and the rest go in their order as releases complete', async () => {
        h.setNow(T0);
        const ids = Array.from({ length: 10 }, (_, i) => `storm-${i}`);
        const incarnations = new Map<string, number>();
        for (const id of ids) incarnations.set(id, await h.open(id));
        const replicas = [h.replica, second];

        // Every trigger at once, spread over both replicas, as the Broker would push them.
        const outcomes = await Promise.all(ids.map((id, i) => replicas[i % 2]!.deliver(events.closed(id, { id: `closed-${id}` }))));
        assert.deepEqual(outcomes, ids.map(() => 'ok'), 'no trigger is refused for want of a slot');
        const first = requestedIds();
        assert.equal(first.length, 2);
        const queue = (await h.deps.stormGuard.waiting(placementA.node)).map((m) => parseReleaseMember(m)!.sessionId);
        assert.deepEqual([...first, ...queue].sort(), [...ids].sort(), 'the 8 others wait in the queue, each once');
        for (const id of queue) assert.equal((await h.deps.store.inspect(id))?.stage, 'claimed');

        // The runtime answers one release at a time, alternating replicas; each freed slot starts the oldest waiter.
        for (let round = 0; round < ids.length; round++) {
          const requested = requestedIds();
          const destroyed = new Set(h.emitted(EventType.SessionDestroyed).map((e) => String(e.event.subject)));
          const inFlight = requested.filter((id) => !destroyed.has(id));
          assert.ok(inFlight.length <= 2, `round ${round}: ${inFlight.length} releases in flight on one node`);
          assert.ok((await h.deps.stormGuard.inFlight(placementA.node, h.now())).length <= 2);
          const done = inFlight[0]!;
          assert.equal(await replicas[round % 2]!.deliver(events.released(done, incarnations.get(done)!)), 'ok');
        }
        assert.deepEqual(requestedIds(), [...first, ...queue], 'waiters were started oldest first, each once');
        const destroyed = h.emitted(EventType.SessionDestroyed).map((e) => e.event.subject).sort();
        assert.deepEqual(destroyed, [...ids].sort(), 'every destroy completed exactly once');
        assert.deepEqual(await h.deps.stormGuard.inFlight(placementA.node, h.now()), []);
        assert.deepEqual(await h.deps.stormGuard.waiting(placementA.node), []);
        const audit = await auditLedger(h.deps.redis, new KeySpace(h.prefix, 8));
        assert.deepEqual(audit.problems, []);
        assert.ok(audit.balanced);
      });

      test('a destroy refused a slot is acknowledged, stays claimed holding no slot, and a duplicate trigger keeps its one place', async () => {
        h.setNow(T0);
        const incs = [await h.open('hold-a'), await h.open('hold-b'), await h.open('hold-c'), await h.open('hold-d')];
        assert.equal(await h.replica.deliver(events.closed('hold-a')), 'ok');
        assert.equal(await second.deliver(events.closed('hold-b')), 'ok');
        h.setNow(T0 + 1);
        await handle(events.closed('hold-c', { id: 'closed-hold-c' }), h.deps);
        h.setNow(T0 + 2);
        assert.equal(await second.deliver(events.closed('hold-d')), 'ok');
        // The Broker redelivers the same trigger, and another cause of the same end arrives: neither queues again.
        h.setNow(T0 + 3);
        assert.equal(await h.replica.deliver(events.closed('hold-c', { id: 'closed-hold-c' })), 'ok');
        assert.equal(await second.deliver(events.forced('hold-c')), 'ok');
        assert.equal((await h.deps.store.inspect('hold-c'))?.stage, 'claimed');
        assert.deepEqual(await h.deps.stormGuard.waiting(placementA.node), [releaseMember('hold-c', incs[2]!), releaseMember('hold-d', incs[3]!)], 'hold-c keeps its place ahead');
        assert.deepEqual((await h.deps.stormGuard.inFlight(placementA.node, h.now())).sort(), [releaseMember('hold-a', incs[0]!), releaseMember('hold-b', incs[1]!)].sort());
        assert.equal(h.emitted(EventType.GpuReleaseRequested, 'hold-c').length, 0);

        assert.equal(await h.replica.deliver(events.released('hold-a', incs[0]!)), 'ok');
        assert.equal(h.emitted(EventType.GpuReleaseRequested, 'hold-c').length, 1, 'the freed slot started hold-c');
        assert.equal(h.emitted(EventType.GpuReleaseRequested, 'hold-d').length, 0);
        // A non-retryable failure frees its slot too: hold-d goes.
        assert.equal(await second.deliver(events.releaseFailed('hold-b', incs[1]!, false)), 'ok');
        assert.equal(h.emitted(EventType.GpuReleaseRequested, 'hold-d').length, 1);
        for (const [i, id] of ['hold-c', 'hold-d'].entries()) assert.equal(await h.replica.deliver(events.released(id, incs[i + 2]!)), 'ok');
        assert.equal(h.emitted(EventType.SessionDestroyed, 'hold-c').length, 1);
        assert.equal(h.emitted(EventType.SessionDestroyed, 'hold-d').length, 1);
        // hold-b waits for its stall watchdog, which re-issues it through the guard.
        assert.equal(await h.replica.deliver(events.resume('hold-b', incs[1]!, 'gpu_release_requested')), 'ok');
        assert.equal(await h.replica.deliver(events.released('hold-b', incs[1]!)), 'ok');
        assert.equal(h.emitted(EventType.SessionDestroyed, 'hold-b').length, 1);
      });

      test('a waiting destroy whose session ended meanwhile is skipped, and its slot goes to the next waiter', async () => {
        h.setNow(T0);
        const [a, b, c, d] = [await h.open('skip-a'), await h.open('skip-b'), await h.open('skip-c'), await h.open('skip-d')];
        for (const id of ['skip-a', 'skip-b']) assert.equal(await h.replica.deliver(events.closed(id)), 'ok');
        h.setNow(T0 + 1);
        assert.equal(await h.replica.deliver(events.closed('skip-c')), 'ok');
        h.setNow(T0 + 2);
        assert.equal(await h.replica.deliver(events.closed('skip-d')), 'ok');
        // skip-c's destroy finishes by another way (an operator's tool driving the store) while it waits.
        const token = drawReleaseToken();
        assert.equal((await h.deps.store.advance('skip-c', c, 'gpu_release_requested', T0 + 3, { attempt: 1, token })).code, 'ADVANCED');
        assert.equal((await h.deps.store.recordRelease('skip-c', c, 1000, T0 + 3, placementA.node, token)).code, 'RELEASED');
        assert.equal((await h.deps.store.purge('skip-c', c, T0 + 3)).code, 'PURGED');
        assert.equal((await h.deps.store.complete('skip-c', c, T0 + 3)).code, 'COMPLETED');

        assert.equal(await second.deliver(events.released('skip-a', a)), 'ok');
        assert.equal(h.emitted(EventType.GpuReleaseRequested, 'skip-c').length, 0, 'the ended destroy was skipped');
        assert.equal(h.emitted(EventType.GpuReleaseRequested, 'skip-d').length, 1, 'and the next one took the slot');
        assert.deepEqual((await h.deps.stormGuard.inFlight(placementA.node, h.now())).sort(), [releaseMember('skip-b', b), releaseMember('skip-d', d)].sort());
        assert.deepEqual(await h.deps.stormGuard.waiting(placementA.node), []);
        for (const [id, inc] of [['skip-b', b], ['skip-d', d]] as const) assert.equal(await h.replica.deliver(events.released(id, inc)), 'ok');
        assert.deepEqual(await h.deps.stormGuard.inFlight(placementA.node, h.now()), []);
      });
    });

    describe('with a token bucket of 3 at 2 per second', () => {
      let h: Harness;
      before(async () => {
        h = await startHarness(topology, { env: { NODE_MAX_INFLIGHT_RELEASES: '100', RUNTIME_RELEASE_BURST: '3', RUNTIME_RELEASE_RATE_PER_S: '2' } });
      });
      after(async () => {
        await h.close();
      });

      test('the release requests one runtime gets are limited to its burst, then to its rate', async () => {
        h.setNow(T0);
        const ids = Array.from({ length: 6 }, (_, i) => `rate-${i}`);
        // Six nodes, one runtime: only the runtime's bucket can hold them back.
        for (const [i, id] of ids.entries()) await h.open(id, { node: `rate-node-${i}`, runtimeUrl: placementA.runtimeUrl, gpuBytes: 10 });
        const deliverAll = async (which: string[]) => Promise.all(which.map((id) => h.replica.deliver(events.closed(id, { id: `closed-${id}` }))));

        let outcomes = await deliverAll(ids);
        assert.equal(outcomes.filter((o) => o === 'ok').length, 3, 'the burst');
        let waiting = ids.filter((_, i) => outcomes[i] !== 'ok');
        for (const [i, id] of ids.entries()) {
          if (waiting.includes(id)) assert.deepEqual(await h.deps.stormGuard.inFlight(`rate-node-${i}`, h.now()), [], 'a throttled destroy gives its node slot back');
        }

        await assert.rejects(
          () => handle(events.closed(waiting[0]!, { id: `closed-${waiting[0]!}` }), h.deps),
          (err: unknown) => err instanceof ReleaseThrottledError && err.scope === 'runtime' && err.target === placementA.runtimeUrl,
        );

        h.setNow(T0 + 499);
        outcomes = await deliverAll(waiting);
        assert.equal(outcomes.filter((o) => o === 'ok').length, 0, 'no token before one has been refilled');

        h.setNow(T0 + 500);
        outcomes = await deliverAll(waiting);
        assert.equal(outcomes.filter((o) => o === 'ok').length, 1, 'one token per 500 ms');
        waiting = waiting.filter((_, i) => outcomes[i] !== 'ok');

        h.setNow(T0 + 1500);
        outcomes = await deliverAll(waiting);
        assert.equal(outcomes.filter((o) => o === 'ok').length, 2);
        assert.equal(new Set(h.emitted(EventType.GpuReleaseRequested).map((e) => e.event.subject)).size, 6, 'no destroy dropped');
      });
    });

    describe('with one slot and a token bucket of 1 at 2 per second', () => {
      let h: Harness;
      before(async () => {
        h = await startHarness(topology, { env: { NODE_MAX_INFLIGHT_RELEASES: '1', RUNTIME_RELEASE_BURST: '1', RUNTIME_RELEASE_RATE_PER_S: '2' } });
      });
      after(async () => {
        await h.close();
      });

      test('a waiter handed a slot needs a token too; with none in time it keeps its slot until its watchdog resumes it', async () => {
        h.setNow(T0);
        const a = await h.open('token-a');
        const b = await h.open('token-b');
        assert.equal(await h.replica.deliver(events.closed('token-a')), 'ok');
        assert.equal(await h.replica.deliver(events.closed('token-b')), 'ok');
        // The test clock stands still, so the bucket emptied by token-a never refills while token-b waits for it.
        assert.equal(await h.replica.deliver(events.released('token-a', a)), 'ok');
        assert.equal(h.emitted(EventType.GpuReleaseRequested, 'token-b').length, 0, 'no release without a token');
        assert.deepEqual(await h.deps.stormGuard.inFlight(placementA.node, h.now()), [releaseMember('token-b', b)]);
        assert.equal((await h.deps.store.inspect('token-b'))?.stage, 'claimed');
        h.setNow(T0 + 30_000);
        assert.equal(await h.replica.deliver(events.resume('token-b', b, 'claimed')), 'ok');
        assert.equal(h.emitted(EventType.GpuReleaseRequested, 'token-b').length, 1);
        assert.equal(await h.replica.deliver(events.released('token-b', b)), 'ok');
        assert.equal(h.emitted(EventType.SessionDestroyed, 'token-b').length, 1);
      });
    });

    describe('leases', () => {
      let h: Harness;
      before(async () => {
        h = await startHarness(topology, { env: { NODE_MAX_INFLIGHT_RELEASES: '1', RELEASE_SLOT_LEASE_MS: '10000' } });
      });
      after(async () => {
        await h.close();
      });

      test('a slot whose release never reports back frees itself when its lease runs out, for the oldest waiter', async () => {
        h.setNow(T0);
        const lost = await h.open('lease-lost');
        const next = await h.open('lease-next');
        await h.open('lease-third');
        assert.equal(await h.replica.deliver(events.closed('lease-lost')), 'ok');
        assert.equal(await h.replica.deliver(events.closed('lease-next')), 'ok');
        assert.deepEqual(await h.deps.stormGuard.waiting(placementA.node), [releaseMember('lease-next', next)]);
        h.setNow(T0 + 9_999);
        assert.equal(await h.replica.deliver(events.closed('lease-next')), 'ok');
        assert.equal(h.emitted(EventType.GpuReleaseRequested, 'lease-next').length, 0, 'still waiting');
        // The lease runs out; the next destroy to ask finds the slot free, but the older waiter gets it.
        h.setNow(T0 + 10_000);
        assert.equal(await h.replica.deliver(events.closed('lease-third')), 'ok');
        assert.equal(h.emitted(EventType.GpuReleaseRequested, 'lease-next').length, 1);
        assert.equal(h.emitted(EventType.GpuReleaseRequested, 'lease-third').length, 0);
        assert.deepEqual(await h.deps.stormGuard.inFlight(placementA.node, h.now()), [releaseMember('lease-next', next)]);
        // The late outcome of the lost release still completes its destroy (and frees no slot it no longer holds).
        assert.equal(await h.replica.deliver(events.released('lease-lost', lost)), 'ok');
        assert.equal(h.emitted(EventType.SessionDestroyed, 'lease-lost').length, 1);
        assert.equal(h.emitted(EventType.GpuReleaseRequested, 'lease-third').length, 0);
        assert.equal(await h.replica.deliver(events.released('lease-next', next)), 'ok');
        assert.equal(h.emitted(EventType.GpuReleaseRequested, 'lease-third').length, 1, 'lease-next freed the slot for lease-third');
      });

      test('admitOrWait: ACQUIRED, HELD (renewing the lease), WAITING with its place, and a freed lease handed to the oldest waiter', async () => {
        const waits: number[] = [];
        const guard = new StormGuard(h.deps.redis, new KeySpace(h.prefix, 8), { nodeMaxInflight: 2, ratePerS: 1, burst: 1, leaseMs: 1000 }, { record: (s) => waits.push(s) });
        assert.deepEqual(await guard.acquireSlot('renew-node', 'x:1', T0), { code: 'ACQUIRED', inFlight: 1, waitedMs: 0, handed: [] });
        assert.deepEqual(await guard.acquireSlot('renew-node', 'x:1', T0 + 900), { code: 'HELD', inFlight: 1, handed: [] });
        assert.deepEqual(await guard.acquireSlot('renew-node', 'y:1', T0 + 950), { code: 'ACQUIRED', inFlight: 2, waitedMs: 0, handed: [] });
        assert.deepEqual(await guard.acquireSlot('renew-node', 'z:1', T0 + 960), { code: 'WAITING', position: 1, handed: [] });
        assert.deepEqual(await guard.acquireSlot('renew-node', 'w:1', T0 + 970), { code: 'WAITING', position: 2, handed: [] });
        assert.deepEqual(await guard.acquireSlot('renew-node', 'z:1', T0 + 980), { code: 'WAITING', position: 1, handed: [] }, 'asking again keeps its place');
        assert.deepEqual(await guard.waiting('renew-node'), ['z:1', 'w:1']);
        assert.deepEqual(await guard.inFlight('renew-node', T0 + 1500), ['x:1', 'y:1'], 'x:1, renewed at 900, outlives its first lease (1000)');
        // x:1's lease ends at 1900: the next to ask (v:1) is queued behind, and the freed slot goes to z:1.
        assert.deepEqual(await guard.acquireSlot('renew-node', 'v:1', T0 + 1920), { code: 'WAITING', position: 2, handed: ['z:1'] });
        assert.deepEqual(await guard.waiting('renew-node'), ['w:1', 'v:1']);
        // Both leases run out: w:1 asking again takes one slot, and hands the other to v:1.
        assert.deepEqual(await guard.acquireSlot('renew-node', 'w:1', T0 + 5000), { code: 'ACQUIRED', inFlight: 2, waitedMs: 4030, handed: ['v:1'] });
        assert.deepEqual(await guard.waiting('renew-node'), []);
        // Each waiter handed a slot has its wait recorded, from its first enqueue: z:1 queued at 960, handed at 1920;
        // v:1 queued at 1920, handed at 5000. A member acquiring for itself (w:1 above, 4030 ms) is recorded by admit.
        assert.deepEqual(waits, [0.96, 3.08]);
      });

      test('releaseSlotAndAdmitNext: FREED hands the slot to the oldest waiter; NOT_HELD frees nothing but fills free slots', async () => {
        const waits: number[] = [];
        const guard = new StormGuard(h.deps.redis, new KeySpace(h.prefix, 8), { nodeMaxInflight: 1, ratePerS: 1, burst: 1, leaseMs: 1000 }, { record: (s) => waits.push(s) });
        assert.equal((await guard.acquireSlot('free-node', 'a:1', T0)).code, 'ACQUIRED');
        assert.equal((await guard.acquireSlot('free-node', 'b:1', T0 + 1)).code, 'WAITING');
        assert.equal((await guard.acquireSlot('free-node', 'c:1', T0 + 2)).code, 'WAITING');
        assert.deepEqual(await guard.releaseSlot('free-node', 'a:1', T0 + 10), { code: 'FREED', inFlight: 1, handed: ['b:1'] });
        assert.deepEqual(await guard.releaseSlot('free-node', 'a:1', T0 + 11), { code: 'NOT_HELD', inFlight: 1, handed: [] }, 'idempotent');
        assert.deepEqual(await guard.inFlight('free-node', T0 + 11), ['b:1']);
        // b:1's lease (to 1010) runs out: freeing a slot not held still hands the free one to c:1.
        assert.deepEqual(await guard.releaseSlot('free-node', 'zz:1', T0 + 1010), { code: 'NOT_HELD', inFlight: 1, handed: ['c:1'] });
        assert.deepEqual(await guard.releaseSlot('free-node', 'c:1', T0 + 1011), { code: 'FREED', inFlight: 0, handed: [] });
        assert.deepEqual(await guard.waiting('free-node'), []);
        assert.deepEqual(await guard.inFlight('free-node', T0 + 1011), []);
        assert.deepEqual(waits, [0.009, 1.008], 'b:1 queued at 1, handed at 10; c:1 queued at 2, handed at 1010');
      });

      test('admit records a destroy\'s queue wait once it holds its slot and its token, and nothing for one throttled', async () => {
        const waits: number[] = [];
        const guard = new StormGuard(h.deps.redis, new KeySpace(h.prefix, 8), { nodeMaxInflight: 1, ratePerS: 1, burst: 1, leaseMs: 1000 }, { record: (s) => waits.push(s) });
        const placement = { node: 'wait-node', runtimeUrl: 'http://wait.test:1' };
        assert.equal((await guard.admit('p:1', placement, T0)).code, 'ACQUIRED', 'a free slot and the bucket\'s one token');
        assert.equal((await guard.admit('q:1', placement, T0 + 5)).code, 'WAITING');
        assert.deepEqual((await guard.releaseSlot('wait-node', 'p:1', T0 + 25)).handed, ['q:1'], 'q:1 handed the slot after 20 ms');
        assert.deepEqual(waits, [0, 0.02]);
        assert.equal((await guard.releaseSlot('wait-node', 'q:1', T0 + 30)).code, 'FREED');
        assert.equal((await guard.admit('r:1', placement, T0 + 40)).code, 'THROTTLED', 'a slot, but no token yet');
        assert.deepEqual(waits, [0, 0.02], 'a slot given back for want of a token is no admission');
        assert.equal((await guard.admit('r:1', placement, T0 + 1100)).code, 'ACQUIRED');
        assert.deepEqual(waits, [0, 0.02, 0]);
      });

      test('a release member names its session and incarnation, even when the session id has colons', () => {
        assert.deepEqual(parseReleaseMember(releaseMember('tenant:42:s', 7)), { sessionId: 'tenant:42:s', incarnation: 7 });
        assert.equal(parseReleaseMember('no-incarnation'), undefined);
        assert.equal(parseReleaseMember(':3'), undefined);
        assert.equal(parseReleaseMember('s:0'), undefined);
      });

      test('a token bucket refills to its burst and never beyond, and a clock behind the last caller adds nothing', async () => {
        const guard = new StormGuard(h.deps.redis, new KeySpace(h.prefix, 8), { nodeMaxInflight: 1, ratePerS: 10, burst: 2, leaseMs: 1000 });
        const url = 'http://bucket.test:1';
        assert.deepEqual(await guard.takeToken(url, T0), { code: 'TAKEN', tokensLeft: 1 });
        assert.deepEqual(await guard.takeToken(url, T0), { code: 'TAKEN', tokensLeft: 0 });
        assert.deepEqual(await guard.takeToken(url, T0), { code: 'EMPTY', retryInMs: 100 });
        assert.deepEqual(await guard.takeToken(url, T0 - 5000), { code: 'EMPTY', retryInMs: 100 });
        assert.deepEqual(await guard.takeToken(url, T0 + 60_000), { code: 'TAKEN', tokensLeft: 1 }, 'a long quiet spell refills only to the burst');
      });
    });
  });
}
