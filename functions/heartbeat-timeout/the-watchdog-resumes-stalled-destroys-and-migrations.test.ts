// The deadline engine's destroy watchdog, driven pass by pass (runOnce at chosen instants) against real Redis
// (single and cluster) and a real event sink: a destroy or a migration release that made no progress for
// DESTROY_STALL_MS is resumed exactly once per stall, and an expiry whose emission failed is not lost.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EventType } from '../core/contract/events.ts';
import { createCore, type Core } from '../core/function-host.ts';
import { drawReleaseToken } from '../core/session-store.ts';
import { fp, placementA, placementB, testCore, type TestCore } from '../../tests/support/core.ts';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { TOPOLOGIES, testRedisEnv } from '../../tests/support/redis.ts';
import { DeadlineEngine } from './deadline-engine.ts';

const BUCKETS = 8;
const STALL_MS = 1000;

for (const topology of TOPOLOGIES) {
  describe(`the destroy watchdog on ${topology} Redis`, () => {
    let sink: EventSink;
    let core: TestCore;
    let engineCore: Core;
    let engine: DeadlineEngine;

    before(async () => {
      sink = await startEventSink();
      core = await testCore(topology, { buckets: BUCKETS });
      engineCore = createCore({
        name: 'deadline-engine',
        env: { ...testRedisEnv(topology), REDIS_KEY_PREFIX: core.prefix, INDEX_BUCKETS: String(BUCKETS), K_SINK: sink.url, LOG_LEVEL: 'silent', DESTROY_STALL_MS: String(STALL_MS) },
      });
      engine = new DeadlineEngine({ deps: engineCore.deps, ready: () => engineCore.ready() });
    });
    after(async () => {
      await engine.stop();
      await engineCore.close();
      await core.close();
      await sink.close();
    });

    const ofSession = (sessionId: string) => sink.events.filter((e) => e.event.subject === sessionId);

    test('a destroy stalled for DESTROY_STALL_MS is resumed from its stage with destroy.resume, once per stall', async () => {
      const t = Date.now();
      const opened = await core.store.open({ sessionId: 'stall-1', fingerprint: fp(), now: t, liveFrom: t, windowMs: 60_000, placement: placementA });
      const claim = await core.store.claimDestroy({ sessionId: 'stall-1', fingerprint: fp(), cause: 'closed', now: t });
      assert.equal(claim.code, 'CLAIMED');
      assert.equal((await core.store.advance('stall-1', opened.incarnation, 'gpu_release_requested', t + 10, { attempt: 1, token: drawReleaseToken() })).code, 'ADVANCED');

      assert.equal((await engine.runOnce(t + 10 + STALL_MS - 1)).resumed, 0, 'not stalled yet');
      const report = await engine.runOnce(t + 10 + STALL_MS);
      assert.equal(report.resumed, 1);
      const resumes = ofSession('stall-1').filter((e) => e.event.type === EventType.DestroyResume);
      assert.equal(resumes.length, 1);
      assert.deepEqual(resumes[0]!.event.data, { sessionId: 'stall-1', incarnation: opened.incarnation, stage: 'gpu_release_requested' });
      assert.equal(resumes[0]!.event.id, `stall-1/${opened.incarnation}/resume/${t + 10 + STALL_MS}`);

      // The claim marked it touched: not resumed again before another full stall.
      assert.equal((await engine.runOnce(t + 10 + STALL_MS + 500)).resumed, 0);
      assert.equal((await engine.runOnce(t + 10 + 2 * STALL_MS)).resumed, 1);
    });

    test('a stalled migration release is requested again with a higher attempt under the old incarnation', async () => {
      const t = Date.now();
      const first = await core.store.open({ sessionId: 'move-1', fingerprint: fp(), now: t, liveFrom: t, windowMs: 60_000, placement: placementA });
      const moved = await core.store.open({ sessionId: 'move-1', fingerprint: fp(), now: t + 5, liveFrom: t + 5, windowMs: 60_000, placement: placementB });
      assert.equal(moved.code, 'MIGRATED');

      const report = await engine.runOnce(t + 5 + STALL_MS);
      assert.equal(report.migrationsReissued, 1);
      const requests = ofSession('move-1').filter((e) => e.event.type === EventType.GpuReleaseRequested);
      assert.equal(requests.length, 1);
      const data = requests[0]!.event.data as { incarnation: number; placement: unknown; attempt: number; reason: string; token: string };
      if (moved.code !== 'MIGRATED') return assert.fail('not migrated');
      assert.equal(data.token, moved.previous.token, 'the same token as the first request: the release it answers is the same');
      assert.equal(data.incarnation, first.incarnation);
      assert.deepEqual(data.placement, placementA);
      assert.equal(data.reason, 'migration');
      assert.ok(data.attempt > 1);
      assert.equal(requests[0]!.event.id, `move-1/${first.incarnation}/release/${data.attempt}`);

      // Once the runtime's release is booked, there is nothing left to resume.
      assert.equal((await core.store.recordRelease('move-1', first.incarnation, 1000, t + 10, 'gpu-node-a', data.token)).code, 'MIGRATION_RELEASED');
      assert.equal((await engine.runOnce(t + 5 + 3 * STALL_MS)).migrationsReissued, 0);
    });

    test('an expiry whose emission failed stays claimed and is resumed by the watchdog', async () => {
      const t = Date.now();
      const opened = await core.store.open({ sessionId: 'lost-1', fingerprint: fp(), now: t, liveFrom: t, windowMs: 100, placement: placementA });
      sink.failNext(3, 503); // the first attempt and both retries
      const report = await engine.runOnce(t + 100);
      assert.equal(report.expired, 1);
      assert.equal(report.emitFailures, 1);
      assert.equal(ofSession('lost-1').length, 0);
      assert.equal((await core.store.inspect('lost-1'))?.state, 'destroying');

      await engine.runOnce(t + 100 + STALL_MS);
      const resumed = ofSession('lost-1');
      assert.equal(resumed.length, 1);
      assert.equal(resumed[0]!.event.type, EventType.DestroyResume);
      assert.deepEqual(resumed[0]!.event.data, { sessionId: 'lost-1', incarnation: opened.incarnation, stage: 'claimed' });
    });
  });
}
