// destroy-dispatch's metrics move by exactly what happened: one destroy per incarnation however often its end is
// delivered, its duration from the claim and its latency from the ending event on the right side of the target edge,
// the duplicate triggers it suppressed, and the failures by stage and reason.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { TOPOLOGIES } from '../../tests/support/redis.ts';
import { sumOf, TextReader } from '../../tests/support/metrics.ts';
import { events, startHarness, T0, type Harness } from './destroy-dispatch-test-support.ts';

for (const topology of TOPOLOGIES.slice(0, 1)) {
  describe(`destroy-dispatch metrics on ${topology} Redis`, () => {
    let h: Harness;
    const reader = new TextReader();
    before(async () => {
      h = await startHarness(topology, { metricReader: reader });
    });
    after(async () => {
      await h.close();
    });

    test('a close delivered three times and a later expiry make one destroy, one claim, and three suppressed triggers', async () => {
      h.setNow(T0);
      const inc = await h.open('m-closed');
      const close = events.closed('m-closed', { time: T0 - 5 });
      for (let i = 0; i < 3; i++) assert.equal(await h.replica.deliver(close), 'ok');
      assert.equal(await h.replica.deliver(events.expired('m-closed', inc)), 'ok');
      h.setNow(T0 + 12);
      assert.equal(await h.replica.deliver(events.released('m-closed', inc)), 'ok');
      assert.equal(await h.replica.deliver(events.released('m-closed', inc)), 'ok', 'a redelivered answer');

      const text = await reader.text();
      assert.equal(sumOf(text, 'sessionreaper_destroys_total', { cause: 'closed', outcome: 'destroyed' }), 1);
      assert.equal(sumOf(text, 'sessionreaper_destroys_total'), 1);
      assert.equal(sumOf(text, 'sessionreaper_destroy_triggers_total', { cause: 'closed', outcome: 'claimed' }), 1);
      assert.equal(sumOf(text, 'sessionreaper_destroy_triggers_total', { outcome: 'resumed' }), 3, 'two redelivered closes and the expiry');
      assert.equal(sumOf(text, 'sessionreaper_release_answers_total', { outcome: 'booked' }), 1);
      assert.equal(sumOf(text, 'sessionreaper_release_answers_total', { outcome: 'duplicate' }), 1);
      // The claim's admission, and each redelivered close (a DUPLICATE resumes at its checkpoint and renews its slot).
      assert.equal(sumOf(text, 'sessionreaper_storm_guard_admissions_total', { outcome: 'admitted' }), 3);
      // Claimed at T0, destroyed at T0 + 12: within the 18 ms edge; sent at T0 - 5, so 17 ms end to end.
      assert.equal(sumOf(text, 'sessionreaper_destroy_duration_seconds_bucket', { cause: 'closed', le: '0.01' }), 0);
      assert.equal(sumOf(text, 'sessionreaper_destroy_duration_seconds_bucket', { cause: 'closed', le: '0.018' }), 1);
      assert.equal(sumOf(text, 'sessionreaper_destroy_duration_seconds_sum', { cause: 'closed' }), 0.012);
      assert.equal(sumOf(text, 'sessionreaper_reclaim_latency_seconds_sum', { cause: 'closed' }), 0.017);
      assert.ok(sumOf(text, 'sessionreaper_redis_script_duration_seconds_count', { script: 'claimDestroy' }) >= 4, 'every claim script call is timed');
    });

    test('a release refused for good and one to retry are counted as failures at gpu_release_requested', async () => {
      h.setNow(T0);
      const a = await h.open('m-fail-a');
      assert.equal(await h.replica.deliver(events.closed('m-fail-a')), 'ok');
      assert.equal(await h.replica.deliver(events.releaseFailed('m-fail-a', a, true)), 'ok');
      assert.equal(await h.replica.deliver(events.releaseFailed('m-fail-a', a, false)), 'ok');
      const text = await reader.text();
      assert.equal(sumOf(text, 'sessionreaper_destroy_failures_total', { stage: 'gpu_release_requested', reason: 'release_retryable' }), 1);
      assert.equal(sumOf(text, 'sessionreaper_destroy_failures_total', { stage: 'gpu_release_requested', reason: 'release_refused' }), 1);
    });
  });
}
