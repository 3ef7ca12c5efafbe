// The outage rule in the idle checker: a user's activity sent while session-reaper could not hear it was lost, so the
// quiet time in a blind span (recorded by the deadline engine's claims) does not count towards idleness, and while the
// bucket is unheard right now the check waits. Real Redis, single and cluster; the blind span is recorded the way the
// engine records it (claimDue with the rule's settings, twice, further apart than BLIND_GAP_MS).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { TOPOLOGIES } from '../../tests/support/redis.ts';
import { activity, harness, type Harness } from './activity-score-test-support.ts';
import type { IdleChecker } from './idle-checker.ts';
import { handle } from './handle.ts';
import { idleDecision } from './scoring.ts';
import { policyFor } from './settings.ts';

const RULE = { blindGapMs: 1000 };

async function typeUntilQuiet(h: Harness, sessionId: string): Promise<{ stopped: number; idleAt: number }> {
  let at = h.clock.now;
  for (let i = 0; i < 20; i++) {
    at += 2000;
    h.clock.now = at;
    await handle(activity(sessionId, 'input', at), h.deps);
  }
  const { ctx } = await h.context(sessionId);
  assert.ok(ctx);
  const idleAt = idleDecision(ctx, ctx.lastEventAt, policyFor(h.settings, undefined, 'normal')).idleAt;
  assert.ok(idleAt !== undefined);
  // The first check that would find it idle: at its idle time, or its scheduled check if that is later.
  const scheduled = (await h.deps.idleIndex.scheduledAt(sessionId)) ?? idleAt;
  return { stopped: at, idleAt: Math.max(idleAt, scheduled) };
}

/** Runs the checker at each check the index schedules, from `from`, until it declares the session idle; returns when. */
async function idleDeclaredAt(h: Harness, checker: IdleChecker, sessionId: string, from: number): Promise<number> {
  let at = from;
  for (let i = 0; i < 50; i++) {
    h.clock.now = at;
    if ((await checker.runOnce(at)).idle > 0) return at;
    const next = await h.deps.idleIndex.scheduledAt(sessionId);
    assert.ok(next !== undefined && next > at, 'a session not idle yet has a later check');
    at = next;
  }
  assert.fail('never declared idle');
}

for (const topology of TOPOLOGIES) {
  describe(`the idle checker and the outage rule (${topology})`, () => {
    let h: Harness;
    before(async () => {
      h = await harness(topology);
    });
    after(() => h.close());

    it('does not count quiet time nobody could hear: idle that much later, not at once', async () => {
      await h.open('blind-quiet');
      const { stopped, idleAt } = await typeUntilQuiet(h, 'blind-quiet');
      const bucket = h.core.deps.store.keys.bucketOf('blind-quiet');
      // Redis was out for half a minute, a while after the user stopped typing.
      const outage = { from: stopped + 5000, to: stopped + 35_000 };
      await h.core.deps.store.claimDue(bucket, outage.from, 0, RULE);
      assert.deepEqual((await h.core.deps.store.claimDue(bucket, outage.to, 0, RULE)).blind, outage);
      const lost = outage.to - outage.from;
      assert.ok(idleAt > outage.to, 'without the span the session would be idle after the outage');

      const checker = await h.checker();
      const declared = await idleDeclaredAt(h, checker, 'blind-quiet', idleAt + 1);
      assert.ok(declared >= idleAt + lost, `declared idle ${declared - idleAt} ms after its idle time: the lost ${lost} ms do not count`);
      assert.ok(declared <= idleAt + lost + 30_000, 'and idle once the quiet it was owed has passed');
      assert.equal(h.idleEvents('blind-quiet').length, 1);
    });

    it('waits while the bucket is unheard now', async () => {
      await h.open('unheard-quiet');
      const { idleAt } = await typeUntilQuiet(h, 'unheard-quiet');
      const b = h.core.deps.store.keys.bucket(h.core.deps.store.keys.bucketOf('unheard-quiet'));
      // What the engine's claim notes when the bucket's heartbeats stop far beyond their rhythm (claim-due-5.lua).
      await h.core.deps.redis.hset(b.watch, 'bs', String(idleAt - 10_000));
      const checker = await h.checker();
      h.clock.now = idleAt + 1;
      await checker.runOnce(idleAt + 1);
      assert.equal(h.idleEvents('unheard-quiet').length, 0, 'not idle while nothing can be heard');
      await h.core.deps.redis.hdel(b.watch, 'bs');
      const when = (await h.deps.idleIndex.scheduledAt('unheard-quiet')) ?? Number.NaN;
      assert.equal(when, idleAt + 1 + h.settings.idleLeaseMs, 'looked at again after a lease');
      assert.equal(await idleDeclaredAt(h, checker, 'unheard-quiet', when), when, 'and judged idle once heard');
      assert.equal(h.idleEvents('unheard-quiet').length, 1);
    });
  });
}
