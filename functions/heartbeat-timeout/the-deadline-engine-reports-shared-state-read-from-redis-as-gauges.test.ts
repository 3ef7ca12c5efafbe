// The deadline engine's gauges are read from Redis at collection, not counted in memory: live and overdue sessions,
// the GPU ledger and the oldest destroy in flight are what the shared state holds, whoever changed it.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createCore, type Core } from '../core/function-host.ts';
import { sumOf, TextReader } from '../../tests/support/metrics.ts';
import { dropPrefix, testRedisEnv, uniquePrefix } from '../../tests/support/redis.ts';
import { observeSharedState } from './engine-gauges.ts';

const T0 = 1_800_000_000_000;

describe("the deadline engine's shared-state gauges", () => {
  let core: Core;
  let stop: () => void;
  let now = T0;
  const reader = new TextReader();
  const prefix = uniquePrefix();

  before(async () => {
    core = createCore({ name: 'deadline-engine', metricReader: reader, now: () => now, env: { ...testRedisEnv('single'), REDIS_KEY_PREFIX: prefix, INDEX_BUCKETS: '8', LOG_LEVEL: 'silent', K_SINK: 'http://127.0.0.1:9/' } });
    await core.ready();
    stop = observeSharedState(core.deps, () => core.ready());
  });
  after(async () => {
    stop();
    await dropPrefix(core.deps.redis, prefix);
    await core.close();
  });

  test('live and overdue sessions, held bytes and the oldest destroy in flight are the figures Redis holds', async () => {
    const placement = { node: 'gpu-node-a', runtimeUrl: 'http://runtime.test:8000', gpuBytes: 1000 };
    for (let i = 0; i < 5; i++) {
      const r = await core.deps.store.open({ sessionId: `g-${i}`, fingerprint: `open-${i}`, now: T0, liveFrom: T0, windowMs: 10_000, placement });
      assert.equal(r.code, 'OPENED');
    }
    const claim = await core.deps.store.claimDestroy({ sessionId: 'g-0', fingerprint: 'close-0', cause: 'closed', now: T0 + 1000 });
    assert.equal(claim.code, 'CLAIMED');
    now = T0 + 20_000; // every deadline (T0 + 10 s) is 10 s past: overdue

    const text = await reader.text();
    assert.equal(sumOf(text, 'sessionreaper_sessions', { state: 'active' }), 4);
    assert.equal(sumOf(text, 'sessionreaper_sessions', { state: 'destroying' }), 1);
    assert.equal(sumOf(text, 'sessionreaper_sessions', { state: 'release_failed' }), 0);
    assert.equal(sumOf(text, 'sessionreaper_deadlines_overdue'), 4);
    assert.equal(sumOf(text, 'sessionreaper_gpu_registered_bytes'), 5000);
    assert.equal(sumOf(text, 'sessionreaper_gpu_held_bytes'), 5000);
    assert.equal(sumOf(text, 'sessionreaper_gpu_freed_bytes'), 0);
    assert.equal(sumOf(text, 'sessionreaper_ledger_violations'), 0);
    assert.equal(sumOf(text, 'sessionreaper_oldest_pending_release_seconds'), 19, 'claimed at T0 + 1 s, read at T0 + 20 s');
  });
});
