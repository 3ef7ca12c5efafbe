// The storm guard against real Redis, shared by two replicas: a burst of destroys on one node never has more
// releases in flight than the node's limit, a runtime never gets more requests than its token bucket allows, the
// excess answers 503 (the Broker redelivers it) and every destroy completes in the end. Slots are leases that a
// lost holder cannot keep forever.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EventType } from '../core/contract/events.ts';
import { KeySpace } from '../core/redis/keys.ts';
import { TOPOLOGIES } from '../../tests/support/redis.ts';
import { events, placementA, startHarness, T0, type Harness, type Replica } from './destroy-dispatch-test-support.ts';
import { handle } from './handle.ts';
import { ReleaseThrottledError, releaseMember, StormGuard } from './storm-guard.ts';

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

      test('a burst of 10 destroys on one node has at most 2 releases in flight; the rest wait their turn and all complete', async () => {
        h.setNow(T0);
        const ids = Array.from({ length: 10 }, (_, i) => `storm-${i}`);
        const incarnations = new Map<string, number>();
        for (const id of ids) incarnations.set(id, await h.open(id));
        const replicas = [h.replica, second];

        let waiting = [...ids];
        let throttled = 0;
        for (let round = 0; waiting.length > 0; round++) {
          assert.ok(round < 20, `destroys still waiting after 20 rounds: ${waiting.join(', ')}`);
          // Every waiting destroy is (re)delivered at once, spread over both replicas, as the Broker would.
          const outcomes = await Promise.all(waiting.map((id, i) => replicas[i % 2]!.deliver(events.closed(id, { id: `closed-${id}` }))));
          for (const o of outcomes) assert.ok(o === 'ok' || o === 503, `unexpected outcome ${String(o)}`);
          throttled += outcomes.filter((o) => o === 503).length;
          waiting = waiting.filter((_, i) => outcomes[i] !== 'ok');

          const requested = new Set(h.emitted(EventType.GpuReleaseRequested).map((e) => String(e.event.subject)));
          const releasedIds = new Set(h.emitted(EventType.SessionDestroyed).map((e) => String(e.event.subject)));
          const inFlight = [...requested].filter((id) => !releasedIds.has(id));
          assert.ok(inFlight.length <= 2, `round ${round}: ${inFlight.length} releases in flight on one node`);
          assert.ok((await h.deps.stormGuard.inFlight(placementA.node, h.now())).length <= 2);

          // The runtime answers: the releases in flight complete, and free their slots.
          for (const [i, id] of inFlight.entries()) {
            assert.equal(await replicas[i % 2]!.deliver(events.released(id, incarnations.get(id)!)), 'ok');
          }
        }
        assert.ok(throttled >= 8, `the first round alone throttles 8 destroys, saw ${throttled} throttled deliveries`);
        const destroyed = h.emitted(EventType.SessionDestroyed).map((e) => e.event.subject).sort();
        assert.deepEqual(destroyed, [...ids].sort(), 'every destroy completed exactly once');
        assert.deepEqual(await h.deps.stormGuard.inFlight(placementA.node, h.now()), []);
      });

      test('a throttled destroy stays claimed, answers 503 with the node named, and holds no slot', async () => {
        h.setNow(T0);
        const incs = [await h.open('hold-a'), await h.open('hold-b'), await h.open('hold-c')];
        assert.equal(await h.replica.deliver(events.closed('hold-a')), 'ok');
        assert.equal(await second.deliver(events.closed('hold-b')), 'ok');
        await assert.rejects(
          () => handle(events.closed('hold-c'), h.deps),
          (err: unknown) => err instanceof ReleaseThrottledError && err.scope === 'node' && err.target === placementA.node,
        );
        const view = await h.deps.store.inspect('hold-c');
        assert.equal(view?.stage, 'claimed');
        assert.deepEqual((await h.deps.stormGuard.inFlight(placementA.node, h.now())).sort(), [releaseMember('hold-a', incs[0]!), releaseMember('hold-b', incs[1]!)].sort());
        for (const [i, id] of ['hold-a', 'hold-b'].entries()) assert.equal(await h.replica.deliver(events.released(id, incs[i]!)), 'ok');
        assert.equal(await h.replica.deliver(events.closed('hold-c')), 'ok');
        assert.equal(await h.replica.deliver(events.released('hold-c', incs[2]!)), 'ok');
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

    describe('leases', () => {
      let h: Harness;
      before(async () => {
        h = await startHarness(topology, { env: { NODE_MAX_INFLIGHT_RELEASES: '1', RELEASE_SLOT_LEASE_MS: '10000' } });
      });
      after(async () => {
        await h.close();
      });

      test('a slot whose release never reports back frees itself when its lease runs out', async () => {
        h.setNow(T0);
        const lost = await h.open('lease-lost');
        const next = await h.open('lease-next');
        assert.equal(await h.replica.deliver(events.closed('lease-lost')), 'ok');
        assert.equal(await h.replica.deliver(events.closed('lease-next')), 503);
        h.setNow(T0 + 9_999);
        assert.equal(await h.replica.deliver(events.closed('lease-next')), 503);
        h.setNow(T0 + 10_000);
        assert.equal(await h.replica.deliver(events.closed('lease-next')), 'ok');
        assert.deepEqual(await h.deps.stormGuard.inFlight(placementA.node, h.now()), [releaseMember('lease-next', next)]);
        // The late outcome of the lost release still completes its destroy.
        assert.equal(await h.replica.deliver(events.released('lease-lost', lost)), 'ok');
        assert.equal(h.emitted(EventType.SessionDestroyed, 'lease-lost').length, 1);
      });

      test('acquiring again for the same release renews its lease and takes no second slot', async () => {
        const guard = new StormGuard(h.deps.redis, new KeySpace(h.prefix, 8), { nodeMaxInflight: 2, ratePerS: 1, burst: 1, leaseMs: 1000 });
        assert.deepEqual(await guard.acquireSlot('renew-node', 'x:1', T0), { code: 'ACQUIRED', inFlight: 1 });
        assert.deepEqual(await guard.acquireSlot('renew-node', 'x:1', T0 + 900), { code: 'HELD', inFlight: 1 });
        assert.deepEqual(await guard.acquireSlot('renew-node', 'y:1', T0 + 950), { code: 'ACQUIRED', inFlight: 2 });
        const busy = await guard.acquireSlot('renew-node', 'z:1', T0 + 1000);
        assert.equal(busy.code, 'BUSY');
        assert.deepEqual(await guard.inFlight('renew-node', T0 + 1500), ['x:1', 'y:1'], 'x:1, renewed at 900, outlives its first lease (1000)');
        assert.equal((await guard.acquireSlot('renew-node', 'z:1', T0 + 1950)).code, 'ACQUIRED', 'both leases have run out by 1950');
        await guard.releaseSlot('renew-node', 'x:1');
        await guard.releaseSlot('renew-node', 'x:1');
        assert.deepEqual(await guard.inFlight('renew-node', T0 + 1950), ['z:1']);
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
