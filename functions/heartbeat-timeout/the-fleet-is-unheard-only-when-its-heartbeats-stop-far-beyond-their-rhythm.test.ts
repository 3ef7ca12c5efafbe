// The engine's verdict on the fleet's heartbeats (ingest-silence.ts), as a pure function of the buckets' marks, and
// the same verdict driving the real engine against real Redis: while the ingest path is down expiries wait, and after
// it every session gets the rest of its window; a session that died meanwhile is expired, later.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createCore } from '../core/function-host.ts';
import { fp, placementA, testCore } from '../../tests/support/core.ts';
import { startEventSink } from '../../tests/support/event-sink.ts';
import { testRedisEnv } from '../../tests/support/redis.ts';
import { DeadlineEngine } from './deadline-engine.ts';
import { judgeIngest, MIN_SESSIONS_TO_JUDGE, type BucketHeard } from './ingest-silence.ts';

const T0 = 1_800_000_000_000;
const settings = { silenceMs: 5000, holdMaxMs: 600_000 };
/** 32 buckets of one session each, heartbeats every 30 s: the fleet hears one every ~0.94 s. */
const fleet = (hb: number, over: Partial<BucketHeard> = {}): BucketHeard[] => Array.from({ length: 32 }, () => ({ hb, hg: 30_000, n: 1, ...over }));

void describe("the fleet's ingest verdict", () => {
  test('heard while its silence is within 20 mean gaps (and the floor), unheard after', () => {
    // 20 x 30 s / 32 = 18.75 s.
    assert.deepEqual(judgeIngest(fleet(T0), T0 + 18_000, settings, null), { holdFrom: null, heardAt: T0 });
    assert.deepEqual(judgeIngest(fleet(T0), T0 + 19_000, settings, null), { holdFrom: T0, heardAt: T0 });
  });

  test('one bucket going quiet is a session dying, not an outage: the latest heartbeat of any bucket counts', () => {
    const buckets = fleet(T0 + 60_000);
    buckets[3] = { hb: T0, hg: 30_000, n: 1 };
    assert.equal(judgeIngest(buckets, T0 + 70_000, settings, null).holdFrom, null);
  });

  test('a busy fleet is unheard after the floor, not sooner', () => {
    const busy = fleet(T0, { hg: 50, n: 1000 });
    assert.equal(judgeIngest(busy, T0 + 4999, settings, null).holdFrom, null);
    assert.equal(judgeIngest(busy, T0 + 5001, settings, null).holdFrom, T0);
  });

  test(`fewer than ${MIN_SESSIONS_TO_JUDGE} sessions are never judged: their quiet says nothing`, () => {
    const few = fleet(T0).map((b, i) => (i < MIN_SESSIONS_TO_JUDGE - 1 ? b : { ...b, n: 0 }));
    assert.equal(judgeIngest(few, T0 + 3_600_000, settings, null).holdFrom, null);
  });

  test('a fleet that was empty owes no heartbeats from before: silence counts from when it last was', () => {
    assert.equal(judgeIngest(fleet(T0), T0 + 60_000, settings, T0 + 50_000).holdFrom, null);
    assert.equal(judgeIngest(fleet(T0), T0 + 70_000, settings, T0 + 50_000).holdFrom, T0 + 50_000);
  });

  test('held no longer than BLIND_HOLD_MAX_MS: then the span ends there and expiries resume', () => {
    assert.deepEqual(judgeIngest(fleet(T0), T0 + 700_000, settings, null), { holdFrom: null, heardAt: T0 + 600_000 });
  });

  test('INGEST_SILENCE_MS=0 never judges; buckets without sessions or gaps add no rhythm', () => {
    assert.equal(judgeIngest(fleet(T0), T0 + 3_600_000, { ...settings, silenceMs: 0 }, null).holdFrom, null);
    assert.equal(judgeIngest(fleet(T0, { hg: null }), T0 + 3_600_000, settings, null).holdFrom, null);
  });
});

void describe('the engine holds expiries while the fleet is unheard (single Redis)', () => {
  test('no expiry while unheard; after it, the live ones are heard and the dead ones expire the rest of their window later', { timeout: 60_000 }, async () => {
    const sink = await startEventSink();
    const core = await testCore('single', { buckets: 8 });
    let now = T0;
    const engineCore = createCore({
      name: 'deadline-engine',
      env: { ...testRedisEnv('single'), REDIS_KEY_PREFIX: core.prefix, INDEX_BUCKETS: '8', K_SINK: sink.url, LOG_LEVEL: 'silent', BLIND_GAP_MS: '2000', INGEST_SILENCE_MS: '3000' },
      now: () => now,
    });
    const engine = new DeadlineEngine({ deps: engineCore.deps, ready: () => engineCore.ready() });
    try {
      const WINDOW = 6000;
      const ids = Array.from({ length: 24 }, (_, i) => `fleet-${i}`);
      for (const id of ids) await core.store.open({ sessionId: id, fingerprint: fp('open'), now: T0, liveFrom: T0, windowMs: WINDOW, placement: placementA });
      // Each beats every 2 s, staggered; the engine polls every second.
      const beatAll = async (from: number, to: number, who: readonly string[]) => {
        for (now = from; now < to; now += 250) {
          for (const [i, id] of who.entries()) if ((now - T0) % 2000 === (i % 8) * 250) await core.store.heartbeat(id, now, now);
          if ((now - T0) % 1000 === 0) await engine.runOnce(now);
        }
      };
      await beatAll(T0, T0 + 10_000, ids);
      // The ingest path goes down at T0 + 10 s: nothing is heard for 20 s, three windows.
      let expired = 0;
      for (now = T0 + 10_000; now <= T0 + 30_000; now += 1000) expired += (await engine.runOnce(now)).expired;
      assert.equal(expired, 0, 'nobody is expired while nothing can be heard');
      // Heard again, from all but two (they died during the outage).
      const [deadA, deadB] = ids as [string, string];
      const live = ids.slice(2);
      await beatAll(T0 + 30_000, T0 + 40_000, live);
      const expiredIds = sink.events.filter((e) => e.event.type === 'dev.sessionreaper.session.expired').map((e) => e.event.subject);
      assert.deepEqual([...new Set(expiredIds)].sort(), [deadA, deadB].sort(), 'the two that died are expired after the outage, no live one');
      const deadlineOf = (id: string) => Date.parse((sink.events.find((e) => e.event.subject === id)?.event.data as { deadline: string }).deadline);
      // Last heard just before T0 + 10 s, the rest of their 6 s window counted from when heartbeats were heard again.
      for (const id of [deadA, deadB]) assert.ok(deadlineOf(id) > T0 + 30_000 && deadlineOf(id) <= T0 + 30_000 + WINDOW + 250, `${id} expired at +${deadlineOf(id) - T0} ms`);
    } finally {
      await engine.stop();
      await engineCore.close();
      await core.close();
      await sink.close();
    }
  });
});
