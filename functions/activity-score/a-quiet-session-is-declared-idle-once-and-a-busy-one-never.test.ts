import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { EventType } from '../core/contract/events.ts';
import { TransientError } from '../core/errors.ts';
import type { SessionStore } from '../core/session-store.ts';
import { fp } from '../../tests/support/core.ts';
import { TOPOLOGIES } from '../../tests/support/redis.ts';
import { activity, completed, harness, type Harness } from './activity-score-test-support.ts';
import { handle, MAX_CONTEXT_ATTEMPTS } from './handle.ts';
import { idleDecision } from './scoring.ts';
import { policyFor } from './settings.ts';

// Types every `gapMs` from `from`, `count` times, moving the clock with each keystroke; returns when it stopped.
async function type(h: Harness, sessionId: string, from: number, count: number, gapMs = 2000, tenant?: string): Promise<number> {
  let at = from;
  for (let i = 0; i < count; i++) {
    at = from + i * gapMs;
    h.clock.now = at;
    await handle(activity(sessionId, 'input', at, tenant === undefined ? {} : { tenant }), h.deps);
  }
  return at;
}

// The real store with readContext replaced (its methods stay bound to it: they use private fields).
function storeReading(real: SessionStore, readContext: SessionStore['readContext']): SessionStore {
  return new Proxy(real, {
    get(target, prop) {
      if (prop === 'readContext') return readContext;
      const value: unknown = Reflect.get(target, prop, target);
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
}

// When the stored context says the session becomes idle under a tier, with no hold.
async function idleAtUnder(h: Harness, sessionId: string, tier: 'normal' | 'high', tenant?: string): Promise<number> {
  const { ctx } = await h.context(sessionId);
  assert.ok(ctx);
  const at = idleDecision(ctx, ctx.lastEventAt, policyFor(h.settings, tenant, tier)).idleAt;
  assert.ok(at !== undefined);
  return at;
}

for (const topology of TOPOLOGIES) {
  describe(`activity-score judges idleness from activity, once (${topology})`, () => {
    let h: Harness;
    before(async () => {
      h = await harness(topology, { TENANT_POLICIES: JSON.stringify({ patient: { graceMs: 600_000 }, releasing: { honorRelease: true } }), IDLE_POLL_MS: '20' });
    });
    after(() => h.close());

    it('keeps a typing session active, refreshes its liveness and stores its predicted idle end', async () => {
      const start = h.clock.now;
      await h.open('typist');
      const checker = await h.checker();
      let at = start;
      for (let i = 0; i < 60; i++) {
        at = start + 1000 + i * 2000;
        h.clock.now = at;
        await handle(activity('typist', i % 7 === 0 ? 'edit' : 'input', at), h.deps);
        if (i % 5 === 4) assert.equal((await checker.runOnce(at)).idle, 0);
      }
      assert.equal(h.idleEvents('typist').length, 0);
      const { version, ctx, fields } = await h.context('typist');
      assert.equal(version, 60);
      assert.ok(ctx && ctx.gapSamples >= 59 && ctx.gapMeanMs > 1500 && ctx.gapMeanMs < 2500, `gap mean ${ctx?.gapMeanMs}`);
      assert.equal(Number(fields.pi), Math.round(ctx.predictedIdleEndAt));
      assert.equal(Number(fields.la), at);
      const view = await h.core.deps.store.inspect('typist');
      assert.equal(view?.deadline, at + 3_600_000, 'each activity refreshed liveness');
      const scheduled = await h.deps.idleIndex.scheduledAt('typist');
      assert.ok(scheduled !== undefined && scheduled > at, 'its next idle check lies ahead');
    });

    it('declares a session idle after a silence past the grace window: exactly one session.idle from two racing checkers', async () => {
      const inc = await h.open('quiet');
      const stopped = await type(h, 'quiet', h.clock.now + 1000, 20);
      const idleAt = await idleAtUnder(h, 'quiet', 'normal');
      assert.ok(idleAt - stopped >= h.settings.base.graceMs, 'never sooner than the grace window after the last activity');
      const [a, b] = [await h.checker(), await h.checker()];

      h.clock.now = idleAt - 1;
      await Promise.all([a.runOnce(idleAt - 1), b.runOnce(idleAt - 1)]);
      assert.equal(h.idleEvents('quiet').length, 0, 'not idle a millisecond before');

      h.clock.now = idleAt + 5000;
      await Promise.all([a.runOnce(h.clock.now), b.runOnce(h.clock.now)]);
      assert.equal(h.idleEvents('quiet').length, 1);
      await Promise.all([a.runOnce(h.clock.now), b.runOnce(h.clock.now)]);
      const events = h.idleEvents('quiet');
      assert.equal(events.length, 1);
      const [event] = events;
      assert.equal(event?.event.id, `quiet/${inc}/idle/${idleAt}`);
      // Recorded before it left, so destroy-dispatch applies it (and no session.idle the checker did not send).
      // Both checkers recorded the one verdict: one entry, its id and the time it was reached.
      assert.deepEqual((await h.context('quiet')).fields.iv?.split(' ')[0], event?.event.id);
      assert.equal((await h.context('quiet')).fields.iv?.split(' ').length, 2);
      const data = event?.event.data as { incarnation: number; score: number; threshold: number; loadTier?: string; components: { behavior: number; semantic: number; timing: number } };
      assert.equal(data.incarnation, inc);
      assert.ok(data.score > data.threshold, `idle score ${data.score} over ${data.threshold}`);
      assert.equal(data.threshold, 1 - h.settings.base.threshold);
      assert.equal(data.loadTier, undefined, 'no tier under normal load');
      assert.ok(data.components.timing > 0.5, 'a long silence');
    });

    it('many quiet sessions, three racing checkers: each session gets exactly one session.idle', async () => {
      const ids = Array.from({ length: 12 }, (_, i) => `crowd-${i}`);
      for (const id of ids) await h.open(id);
      const from = h.clock.now + 1000;
      for (let i = 0; i < 10; i++) {
        h.clock.now = from + i * 2000;
        await Promise.all(ids.map((id) => handle(activity(id, 'input', h.clock.now), h.deps)));
      }
      const checkers = await Promise.all([h.checker(), h.checker(), h.checker()]);
      h.clock.now += 30 * 60_000;
      const reports = await Promise.all(checkers.map((c) => c.runOnce(h.clock.now)));
      for (const id of ids) assert.equal(h.idleEvents(id).length, 1, id);
      assert.ok(reports.reduce((n, r) => n + r.idle, 0) >= ids.length);
    });

    it('resets the countdown on new activity', async () => {
      await h.open('returns');
      await type(h, 'returns', h.clock.now + 1000, 20);
      const idleAt = await idleAtUnder(h, 'returns', 'normal');
      const checker = await h.checker();
      // Ten seconds before it would be idle, the user is back.
      h.clock.now = idleAt - 10_000;
      await checker.runOnce(h.clock.now);
      await handle(activity('returns', 'message', h.clock.now, { text: 'sorry, was away' }), h.deps);
      h.clock.now = idleAt + 1000;
      await checker.runOnce(h.clock.now);
      assert.equal(h.idleEvents('returns').length, 0);
      const nextIdleAt = await idleAtUnder(h, 'returns', 'normal');
      assert.ok(nextIdleAt > idleAt + 10_000, 'the quiet spell starts again from the new activity');
      const next = await h.deps.idleIndex.scheduledAt('returns');
      assert.ok(next !== undefined && next > h.clock.now);
    });

    it('never declares a held session idle, and times its quiet from the hold\'s end', async () => {
      await h.open('held');
      const lastTyped = await type(h, 'held', h.clock.now + 1000, 20);
      const idleAt = await idleAtUnder(h, 'held', 'normal');
      const quietNeeded = idleAt - lastTyped;
      const hold = await h.core.deps.store.hold('held', fp('hold'), h.clock.now, 30 * 60_000);
      assert.equal(hold.code, 'HELD');
      const holdUntil = hold.code === 'HELD' ? hold.holdUntil : 0;
      const checker = await h.checker();
      for (const at of [idleAt + 1000, idleAt + 10 * 60_000, holdUntil - 1, holdUntil + 1]) {
        h.clock.now = at;
        await checker.runOnce(at);
      }
      assert.equal(h.idleEvents('held').length, 0, 'not idle the moment its hold ran out: the quiet before it does not count again');
      const next = await h.deps.idleIndex.scheduledAt('held');
      assert.ok(next !== undefined && next > holdUntil && next <= holdUntil + quietNeeded, 'looked at again after the hold, by its quiet since');
      h.clock.now = holdUntil + quietNeeded - 1000;
      await checker.runOnce(h.clock.now);
      assert.equal(h.idleEvents('held').length, 0);
      h.clock.now = holdUntil + quietNeeded;
      assert.equal((await checker.runOnce(h.clock.now)).idle, 1, 'idle after as much quiet after the hold as it needed without one');
      assert.equal(h.idleEvents('held').length, 1);
    });

    it('applies a tenant’s policy: a patient tenant’s grace is longer', async () => {
      await h.open('hasty-user');
      await h.open('patient-user', { tenant: 'patient' });
      const from = h.clock.now + 1000;
      for (let i = 0; i < 20; i++) {
        h.clock.now = from + i * 2000;
        await handle(activity('hasty-user', 'input', h.clock.now), h.deps);
        await handle(activity('patient-user', 'input', h.clock.now, { tenant: 'patient' }), h.deps);
      }
      const hastyAt = await idleAtUnder(h, 'hasty-user', 'normal');
      const patientAt = await idleAtUnder(h, 'patient-user', 'normal', 'patient');
      assert.equal(patientAt - hastyAt, 600_000 - h.settings.base.graceMs);
      const checker = await h.checker();
      h.clock.now = hastyAt + 60_000;
      await checker.runOnce(h.clock.now);
      assert.equal(h.idleEvents('hasty-user').length, 1);
      assert.equal(h.idleEvents('patient-user').length, 0);
      h.clock.now = patientAt;
      await checker.runOnce(h.clock.now);
      assert.equal(h.idleEvents('patient-user').length, 1);
    });

    it('ends a released session at once through the checker where the tenant honours release, and ignores events of sessions not live', async () => {
      await h.open('done', { tenant: 'releasing' });
      await type(h, 'done', h.clock.now + 1000, 3, 2000, 'releasing');
      h.clock.now += 500;
      await handle(completed('done', h.clock.now, true, 'releasing'), h.deps);
      const checker = await h.checker();
      await checker.runOnce(h.clock.now);
      assert.equal(h.idleEvents('done').length, 1);

      await handle(activity('never-opened', 'input', h.clock.now), h.deps);
      assert.equal((await h.context('never-opened')).version, 0, 'nothing written for an unknown session');
    });

    it('a duplicate event changes nothing', async () => {
      await h.open('dup');
      const ev = activity('dup', 'input', h.clock.now, { id: 'same-event' });
      await handle(ev, h.deps);
      const first = await h.context('dup');
      await handle(ev, h.deps);
      const second = await h.context('dup');
      assert.equal(second.version, first.version);
      assert.deepEqual(second.fields, first.fields);
    });

    it('recomputes on a compare-and-set conflict with a concurrent replica, and gives up to redelivery after a bound', async () => {
      await h.open('contended');
      const at = h.clock.now;
      // A replica that handles another event of the session between this one's read and its write.
      let raced = false;
      const racing = storeReading(h.core.deps.store, async (sessionId: string) => {
        const read = await h.core.deps.store.readContext(sessionId);
        if (!raced) {
          raced = true;
          await handle(activity('contended', 'edit', at), h.deps);
        }
        return read;
      });
      await handle(activity('contended', 'input', at), Object.create(h.deps, { store: { value: racing } }) as typeof h.deps);
      const { version, ctx } = await h.context('contended');
      assert.equal(version, 2, 'both events applied');
      assert.ok(ctx && ctx.rates.input > 0 && ctx.rates.edit > 0, 'neither overwrote the other');

      // A context that changes under every attempt: the event goes back to the Broker.
      let reads = 0;
      const hostile = storeReading(h.core.deps.store, async (sessionId: string) => {
        const read = await h.core.deps.store.readContext(sessionId);
        reads++;
        await h.core.deps.redis.hincrby(h.core.deps.store.keys.session(sessionId).context, 'v', 1);
        return read;
      });
      await assert.rejects(handle(activity('contended', 'input', at + 1), Object.create(h.deps, { store: { value: hostile } }) as typeof h.deps), TransientError);
      assert.equal(reads, MAX_CONTEXT_ATTEMPTS);
      const after = await h.context('contended');
      assert.equal(after.version, 2 + MAX_CONTEXT_ATTEMPTS);
      assert.deepEqual(after.ctx, ctx, 'nothing of the refused event was stored');
      assert.equal(h.sink.events.filter((e) => e.event.type === EventType.SessionIdle && e.event.subject === 'contended').length, 0);
    });

    // Last: a started checker judges every session of this suite that is due.
    it('runs by itself once started: wakes for a due check, and stops cleanly', async () => {
      await h.open('unattended');
      await type(h, 'unattended', h.clock.now + 1000, 5);
      const checker = await h.checker();
      checker.start();
      h.clock.now += 30 * 60_000;
      const event = await h.sink.waitForEvent((e) => e.event.type === EventType.SessionIdle && e.event.subject === 'unattended', { timeoutMs: 15_000 });
      assert.match(event.event.id, /^unattended\/\d+\/idle\/\d+$/);
      await checker.stop();
    });
  });
}
