import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startSimRuntime, type SimRuntime } from '../../runtimes/sim-gpu-runtime/server.ts';
import { TOPOLOGIES } from '../../tests/support/redis.ts';
import { runtimesEnv } from '../../tests/support/runtimes.ts';
import { activity, harness, type Harness } from './activity-score-test-support.ts';
import { handle } from './handle.ts';
import { loadKeys } from './load-monitor.ts';
import { idleDecision } from './scoring.ts';
import { policyFor } from './settings.ts';

for (const topology of TOPOLOGIES) {
  describe(`load tightens idleness for every replica (${topology})`, () => {
    let sim: SimRuntime;
    let h: Harness;
    before(async () => {
      // 1000 bytes of GPU memory, 70 % in use: above the high-demand watermark (60 %), below the low one (85 %).
      sim = await startSimRuntime({ totalBytes: 1000, seed: 5 });
      sim.allocate('resident', 1, 700);
      h = await harness(topology, {
        LOAD_POLICY: JSON.stringify({ demandEventsPerSecond: { medium: 1, high: 2 } }), LOAD_EVAL_MS: '10000', ...runtimesEnv({ name: 'sim', url: sim.url }),
        // About load and idleness only: no demote check comes first.
        DEMOTE_QUIET_MS: '0',
      });
    });
    after(async () => {
      await h.close();
      await sim.stop();
    });

    it('one replica evaluates per interval; the tier follows event rate and memory pressure, and the idle checker applies it', async () => {
      await h.open('loaded', { placement: { node: 'gpu-node-s', runtimeUrl: sim.url, gpuBytes: 100 } });
      const from = h.clock.now + 1000;
      for (let i = 0; i < 20; i++) {
        h.clock.now = from + i * 2000;
        await handle(activity('loaded', 'input', h.clock.now), h.deps);
      }
      const { ctx } = await h.context('loaded');
      assert.ok(ctx);
      const idleAt = (tier: 'normal' | 'high') => idleDecision(ctx, ctx.lastEventAt, policyFor(h.settings, undefined, tier)).idleAt!;
      assert.ok(idleAt('normal') - idleAt('high') > 12_000, 'the high tier makes the session idle sooner');
      assert.equal(await h.deps.idleIndex.scheduledAt('loaded'), idleAt('high'), 'checked first when the tightest tier would call it idle');

      // A quiet fleet: memory pressure alone (70 %) is under the low-demand watermark.
      h.clock.now = idleAt('high') + 1;
      const quiet = await h.deps.load.evaluate();
      assert.deepEqual({ tier: quiet?.tier, pressure: quiet?.memoryPressure }, { tier: 'normal', pressure: 0.7 });
      assert.equal(await h.deps.load.evaluate(), undefined, 'the interval was evaluated already, by whoever took the lease');
      const checker = await h.checker();
      await checker.runOnce(h.clock.now);
      assert.equal(h.idleEvents('loaded').length, 0, 'not idle yet under normal load');

      // Three events a second across the fleet in the last interval: high demand, and 70 % is over its watermark.
      for (let i = 0; i < 30; i++) h.deps.load.recordEvent(h.clock.now - 10_000 + i * 330);
      const busy = await h.deps.load.evaluate({ force: true });
      assert.equal(busy?.tier, 'high');
      assert.equal(await h.core.deps.redis.get(loadKeys(h.env.REDIS_KEY_PREFIX!).tier), 'high', 'stored for every replica');

      // The checker (another process's view of the tier) looks again within one evaluation interval.
      h.clock.now += h.settings.loadPolicy.evaluateEveryMs;
      assert.ok(h.clock.now < idleAt('normal'));
      await checker.runOnce(h.clock.now);
      const [idle] = h.idleEvents('loaded');
      assert.ok(idle, 'idle under high load');
      const data = idle.event.data as { loadTier?: string; threshold: number };
      assert.equal(data.loadTier, 'high');
      assert.ok(Math.abs(data.threshold - (1 - policyFor(h.settings, undefined, 'high').threshold)) < 1e-9);

      // Pressure alone at 90 % raises the tier at low demand; when it is gone the tier falls back.
      sim.allocate('resident-2', 1, 200);
      h.clock.now += 60_000;
      assert.equal((await h.deps.load.evaluate({ force: true }))?.tier, 'low');
      sim.setFaults({ down: true });
      h.clock.now += 60_000;
      assert.equal((await h.deps.load.evaluate({ force: true }))?.tier, 'normal', 'no reports, no pressure');
      sim.setFaults({ down: false });
    });
  });
}
