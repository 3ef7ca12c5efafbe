// Demote before destroy under memory pressure (PRESSURE_DEMOTE_QUIET_MS): while the load tier is above normal (the
// median runtime at its memory watermark), a quiet session is demoted once quiet that long, without waiting past the
// return its rhythm predicts; at the normal tier nothing changes. At the normal tier the idle checker looks once the
// session has been quiet one load evaluation interval and every interval after, so a tier that rises later demotes
// within an interval (and a user typing every few seconds costs no extra look); a turn the model may still be
// answering is never demoted. The replay bench (tests/bench/reclaim) decides with the same
// judgeDemote.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startSimRuntime, type SimRuntime } from '../../runtimes/sim-gpu-runtime/server.ts';
import { EventType } from '../core/contract/events.ts';
import { TOPOLOGIES } from '../../tests/support/redis.ts';
import { runtimesEnv } from '../../tests/support/runtimes.ts';
import { activity, completed, harness, type Harness } from './activity-score-test-support.ts';
import { handle } from './handle.ts';
import { demoteAt, firstCheckAt, judgeDemote, OPEN_TURN_MAX_MS } from './idle-judgement.ts';
import { initialContext } from './scoring.ts';
import { readActivityScoreSettings } from './settings.ts';

it('under any tier above normal a demote waits only PRESSURE_DEMOTE_QUIET_MS (or DEMOTE_QUIET_MS if shorter), never past an open turn', () => {
  const ctx = { ...initialContext(1000), lastEventAt: 1000, predictedIdleEndAt: 200_000 };
  const s = { demoteQuietMs: 30_000, pressureDemoteQuietMs: 5000 };
  assert.equal(demoteAt(s, ctx, 'normal'), 200_000, 'at normal the predicted return still counts');
  for (const tier of ['low', 'medium', 'high'] as const) assert.equal(demoteAt(s, ctx, tier), 6000, tier);
  assert.equal(demoteAt({ demoteQuietMs: 3000, pressureDemoteQuietMs: 5000 }, ctx, 'low'), 4000, 'never later than DEMOTE_QUIET_MS would be');
  assert.equal(demoteAt({ demoteQuietMs: 30_000, pressureDemoteQuietMs: 0 }, ctx, 'high'), 200_000, '0: pressure does not hasten demotes');
  assert.equal(demoteAt({ demoteQuietMs: 0, pressureDemoteQuietMs: 5000 }, ctx, 'high'), undefined, 'demotes off stay off');
  assert.equal(demoteAt(s, { ...ctx, turnOpenAt: 1000 }, 'high'), 1000 + OPEN_TURN_MAX_MS, 'not while the model may still answer');
});

it('at the normal tier the checker looks after one evaluation interval of quiet, then every interval, and demotes at once when the tier is up', () => {
  const settings = readActivityScoreSettings({ DEMOTE_QUIET_MS: '30000', PRESSURE_DEMOTE_QUIET_MS: '5000', LOAD_EVAL_MS: '10000' });
  const ctx = { ...initialContext(1000), lastEventAt: 1000, predictedIdleEndAt: 200_000 };
  assert.equal(firstCheckAt(settings, ctx, 1000, undefined, undefined), 11_000, 'at normal: once quiet one evaluation interval');
  assert.equal(firstCheckAt(settings, ctx, 1000, undefined, undefined, 'medium'), 6000, 'under pressure already: at the pressure moment');
  assert.deepEqual(judgeDemote(settings, ctx, 2000, 'normal'), { demote: false, nextCheckAt: 11_000 });
  assert.deepEqual(judgeDemote(settings, ctx, 11_000, 'normal'), { demote: false, nextCheckAt: 21_000 }, 'then once per interval');
  assert.deepEqual(judgeDemote(settings, ctx, 195_000, 'normal'), { demote: false, nextCheckAt: 200_000 }, 'never later than the normal moment');
  assert.deepEqual(judgeDemote(settings, ctx, 6000, 'low'), { demote: true });
  assert.deepEqual(judgeDemote(settings, ctx, 200_000, 'normal'), { demote: true });
  const off = readActivityScoreSettings({ DEMOTE_QUIET_MS: '30000', PRESSURE_DEMOTE_QUIET_MS: '0' });
  assert.deepEqual(judgeDemote(off, ctx, 6000, 'normal'), { demote: false, nextCheckAt: 200_000 }, 'off: no extra looks');
});

it('PRESSURE_DEMOTE_QUIET_MS defaults to 1 s and is validated', () => {
  assert.equal(readActivityScoreSettings({}).pressureDemoteQuietMs, 1000);
  assert.throws(() => readActivityScoreSettings({ PRESSURE_DEMOTE_QUIET_MS: '-1' }), /PRESSURE_DEMOTE_QUIET_MS/);
});

const QUIET = 30_000;
const PRESSURE_QUIET = 2000;
const EVAL = 10_000;

for (const topology of TOPOLOGIES) {
  describe(`under memory pressure the idle checker demotes a quiet session early (${topology})`, () => {
    let sim: SimRuntime;
    let h: Harness;
    before(async () => {
      // 1000 bytes of GPU memory, 50 % in use: under every watermark until the test fills it.
      sim = await startSimRuntime({ totalBytes: 1000, seed: 7 });
      sim.allocate('resident', 1, 500);
      h = await harness(topology, {
        DEMOTE_QUIET_MS: String(QUIET), PRESSURE_DEMOTE_QUIET_MS: String(PRESSURE_QUIET), LOAD_EVAL_MS: String(EVAL), ...runtimesEnv({ name: 'sim', url: sim.url }),
      });
    });
    after(async () => {
      await h.close();
      await sim.stop();
    });
    const demotes = (sessionId: string) => h.sink.events.filter((e) => e.event.type === EventType.GpuDemoteRequested && e.event.subject === sessionId);

    it('not at the normal tier before the predicted return; within an interval of the tier rising; never with a turn open', async () => {
      const placement = { node: 'gpu-node-s', runtimeUrl: sim.url, gpuBytes: 100 };
      await h.open('slow-user', { placement });
      await h.open('asking', { placement });
      // A slow rhythm: two minutes between turns, so the predicted return lies far beyond DEMOTE_QUIET_MS.
      const start = h.clock.now;
      for (let i = 0; i < 3; i++) {
        h.clock.now = start + i * 120_000;
        await handle(activity('slow-user', 'message', h.clock.now, { text: `question ${i}` }), h.deps);
        h.clock.now += 1000;
        await handle(completed('slow-user', h.clock.now, false), h.deps);
      }
      const last = h.clock.now;
      await handle(activity('asking', 'message', last, { text: 'a question still being answered' }), h.deps);
      const { ctx } = await h.context('slow-user');
      assert.ok(ctx && ctx.predictedIdleEndAt > last + 2 * EVAL, 'the premise: the rhythm predicts a return after the moment the tier will have risen');
      assert.equal(await h.deps.idleIndex.scheduledAt('slow-user'), last + EVAL, 'first looked at after one evaluation interval of quiet');

      const checker = await h.checker();
      h.clock.now = last + EVAL;
      assert.equal((await h.deps.load.evaluate({ force: true }))?.tier, 'normal');
      assert.equal((await checker.runOnce(h.clock.now)).demoted, 0, 'no pressure: the predicted return still counts');
      assert.equal(await h.deps.idleIndex.scheduledAt('slow-user'), h.clock.now + EVAL, 'looked at again after one evaluation interval');

      // The runtime fills to 90 %: above the low-demand watermark, so the tier rises.
      sim.allocate('resident-2', 1, 400);
      h.clock.now += EVAL / 2;
      assert.equal((await h.deps.load.evaluate({ force: true }))?.tier, 'low');
      h.clock.now = last + 2 * EVAL;
      assert.ok(h.clock.now < last + QUIET, 'still short of DEMOTE_QUIET_MS');
      const report = await checker.runOnce(h.clock.now);
      assert.equal(report.demoted, 1, 'demoted within an interval of the tier rising');
      assert.equal(demotes('slow-user').length, 1);
      assert.equal((await h.core.deps.store.inspect('slow-user'))?.offload, 'demoting');
      assert.equal(demotes('asking').length, 0, 'a message not yet answered keeps its KV');
      assert.equal(h.idleEvents('slow-user').length, 0, 'demoted, not destroyed');

      // With the tier up, a session's first look after its user's event is at the pressure moment itself.
      h.clock.now += 1000;
      await handle(activity('asking', 'output', h.clock.now, { text: 'the answer' }), h.deps);
      assert.equal(await h.deps.idleIndex.scheduledAt('asking'), h.clock.now + PRESSURE_QUIET);
    });
  });
}
