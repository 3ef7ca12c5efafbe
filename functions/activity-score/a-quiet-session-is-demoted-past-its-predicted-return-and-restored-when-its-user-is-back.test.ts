// Demote before destroy's policy (idle-judgement.ts demoteAt, the idle checker, the handler's restore): a live session
// quiet for DEMOTE_QUIET_MS and past the moment its own rhythm predicted its next turn is demoted once, by whichever
// checker replica looks first; not before, not while held, not on a runtime whose kind cannot demote (SGLang), and
// not at all with DEMOTE_QUIET_MS=0. Its user's next action asks for the KV back, once per request (a redelivery
// re-emits the same token); the model's own output does not.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { EventType } from '../core/contract/events.ts';
import { TOPOLOGIES } from '../../tests/support/redis.ts';
import { activity, harness, PLACEMENT, type Harness } from './activity-score-test-support.ts';
import { handle } from './handle.ts';
import { demoteAt, OPEN_TURN_MAX_MS } from './idle-judgement.ts';
import { applyActivity, applyCompletion, decodeContext, encodeContext, initialContext } from './scoring.ts';
import { policyFor, readActivityScoreSettings } from './settings.ts';

const QUIET = 10_000;
const SGLANG = { node: 'gpu-node-t', runtimeUrl: 'http://127.0.0.1:9/sg', gpuBytes: 1024 };
const RUNTIMES = JSON.stringify([
  { name: 'native', url: PLACEMENT.runtimeUrl },
  { name: 'sg', url: SGLANG.runtimeUrl, kind: 'sglang', bytesPerToken: 1024 },
]);

it('demotes are off at DEMOTE_QUIET_MS=0, and never before the predicted return nor before the quiet time', () => {
  const ctx = { ...initialContext(1000), predictedIdleEndAt: 50_000 };
  assert.equal(demoteAt({ demoteQuietMs: 0 }, ctx), undefined);
  assert.equal(demoteAt({ demoteQuietMs: 10_000 }, ctx), 50_000, 'the user is not late before their rhythm says');
  assert.equal(demoteAt({ demoteQuietMs: 100_000 }, ctx), 101_000, 'nor before the quiet time');
  assert.equal(demoteAt({ demoteQuietMs: 10_000 }, { ...ctx, turnOpenAt: 1000 }), 1000 + OPEN_TURN_MAX_MS, 'nor while the model may still answer the last message');
  assert.equal(demoteAt({ demoteQuietMs: 100_000 }, ctx, 'normal', ctx.lastEventAt + 60_000), 161_000, 'quiet under a hold does not count');
  assert.equal(demoteAt({ demoteQuietMs: 100_000 }, ctx, 'normal', ctx.lastEventAt - 1), 101_000, 'a hold over before the last event changes nothing');
});

it('a user message opens a turn that the answer (output activity or inference.completed) closes', () => {
  const policy = policyFor(readActivityScoreSettings({}), undefined, 'normal');
  const asked = applyActivity(initialContext(1000), { kind: 'message', at: 2000, text: 'what is the capital of France?' }, policy);
  assert.equal(asked.turnOpenAt, 2000);
  assert.equal(decodeContext(encodeContext(asked))?.turnOpenAt, 2000, 'kept with the stored context');
  assert.equal(applyActivity(asked, { kind: 'output', at: 3000 }, policy).turnOpenAt, undefined);
  assert.equal(applyCompletion(asked, { at: 3000, release: false }, policy).turnOpenAt, undefined);
  assert.equal(applyActivity(asked, { kind: 'input', at: 2500 }, policy).turnOpenAt, 2000, 'typing meanwhile leaves it open');
});

for (const topology of TOPOLOGIES) {
  describe(`a quiet session is demoted and restored (${topology})`, () => {
    let h: Harness;
    before(async () => {
      h = await harness(topology, { DEMOTE_QUIET_MS: String(QUIET), RUNTIMES, OUTBOUND_ALLOWED_CIDRS: '127.0.0.0/8' });
    });
    after(() => h.close());
    const of = (type: string, sessionId: string) => h.sink.events.filter((e) => e.event.type === type && e.event.subject === sessionId).map((e) => e.event);

    it('demotes once past its predicted return, not while held or on SGLang, and restores on its user\'s next action', async () => {
      const start = h.clock.now;
      const inc = await h.open('dm-user');
      await h.open('dm-sglang', { placement: SGLANG });
      await h.open('dm-held');
      let last = start;
      for (let i = 0; i < 3; i++) {
        last = start + i * 2000;
        h.clock.now = last;
        for (const id of ['dm-user', 'dm-sglang', 'dm-held']) await handle(activity(id, 'input', last), h.deps);
      }
      assert.equal((await h.core.deps.store.hold('dm-held', 'hold-1', last, 60_000)).code, 'HELD');
      const [one, two] = [await h.checker(), await h.checker()];

      h.clock.now = last + QUIET - 1000;
      assert.equal((await one.runOnce(h.clock.now)).demoted, 0, 'not yet quiet long enough');
      h.clock.now = last + QUIET;
      const reports = await Promise.all([one.runOnce(h.clock.now), two.runOnce(h.clock.now)]);
      assert.equal(reports[0].demoted + reports[1].demoted, 1, 'one replica demotes it');
      const requested = of(EventType.GpuDemoteRequested, 'dm-user');
      assert.equal(requested.length, 1);
      const data = requested[0]!.data as { incarnation: number; token: string; placement: { runtimeUrl: string } };
      assert.deepEqual([data.incarnation, data.placement.runtimeUrl, requested[0]!.source], [inc, PLACEMENT.runtimeUrl, '/session-reaper/idle-checker']);
      assert.equal((await h.core.deps.store.inspect('dm-user'))?.offload, 'demoting');
      assert.equal(of(EventType.GpuDemoteRequested, 'dm-sglang').length, 0, 'SGLang cannot demote');
      assert.equal(of(EventType.GpuDemoteRequested, 'dm-held').length, 0, 'a held session is busy');
      assert.equal(h.idleEvents('dm-user').length, 0, 'demoted, not destroyed');

      // The model's output is not the user coming back; the user's next keystroke is.
      h.clock.now += 5000;
      await handle(activity('dm-user', 'output', h.clock.now), h.deps);
      assert.equal(of(EventType.GpuRestoreRequested, 'dm-user').length, 0);
      // Still pending at its next check (its request may have been lost): sent again, under the same id and token.
      h.clock.now += QUIET;
      await one.runOnce(h.clock.now);
      const again = of(EventType.GpuDemoteRequested, 'dm-user');
      assert.deepEqual(again.map((e) => e.id), [requested[0]!.id, requested[0]!.id]);
      const back = activity('dm-user', 'input', h.clock.now, { id: 'user-back' });
      await handle(back, h.deps);
      await handle(back, h.deps);
      const restores = of(EventType.GpuRestoreRequested, 'dm-user');
      assert.equal(restores.length, 2, 'the redelivery re-emits its request');
      assert.equal(restores[0]!.id, restores[1]!.id, 'under the same id and token');
      assert.equal(restores[0]!.source, '/session-reaper/activity-score');
      assert.equal((await h.core.deps.store.inspect('dm-user'))?.offload, 'restoring');
    });
  });
}
