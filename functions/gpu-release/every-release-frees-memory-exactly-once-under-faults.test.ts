// Many concurrent releases against a runtime that errors, rate-limits, loses answers and mangles bodies. Failed
// releases are redelivered, as the Broker would, until each is confirmed; the runtime's own counters must then show
// every allocation freed exactly once, and every confirmed result must carry the bytes that allocation held.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startSimRuntime, type SimRuntime } from '../../runtimes/sim-gpu-runtime/server.ts';
import { createRuntimeClient, RuntimeReleaseError, type ReleaseResult, type RuntimeClient } from '../core/runtime-client.ts';
import { testClientOptions } from './runtime-client-test-support.ts';

const SESSIONS = 40;
const MiB = 1024 ** 2;

describe('every release frees memory exactly once under faults', () => {
  let sim: SimRuntime;
  let client: RuntimeClient;

  before(async () => {
    sim = await startSimRuntime({ seed: 42, latencyJitterMs: 5, errorRate: 0.15, rateLimitRate: 0.1, retryAfterSeconds: 0, hangRate: 0.1, malformedRate: 0.05 });
    client = createRuntimeClient(
      testClientOptions({
        timeoutMs: 300,
        retries: 4,
        baseBackoffMs: 5,
        maxBackoffMs: 50,
        breaker: { errorThresholdPercentage: 90, resetTimeoutMs: 100, volumeThreshold: 20, rollingCountTimeoutMs: 1000 },
      }),
    );
  });
  after(async () => {
    client.shutdown();
    await sim.stop();
  });

  it('confirms each release once with the bytes it held, whatever the faults', async () => {
    const held = new Map<string, number>();
    for (let i = 0; i < SESSIONS; i++) {
      const id = `tenant-${i % 3}:chat.${i}`;
      const bytes = (i + 1) * MiB;
      sim.allocate(id, 1, bytes);
      held.set(id, bytes);
    }
    // Scripted first so that each fault kind surely happens, whatever order the concurrent requests arrive in;
    // the seeded rates add more after them.
    sim.queueFaults('hang', 'error', 'rateLimit', 'malformed', 'hang');
    const confirmed = new Map<string, ReleaseResult>();
    let redeliveries = 0;
    for (let round = 0; confirmed.size < SESSIONS; round++) {
      assert.ok(round < 200, 'releases should all be confirmed long before 200 redeliveries');
      const pending = [...held.keys()].filter((id) => !confirmed.has(id));
      const outcomes = await Promise.allSettled(pending.map((id) => client.release(sim.url, id, 1)));
      outcomes.forEach((o, i) => {
        if (o.status === 'fulfilled') confirmed.set(pending[i] ?? '', o.value);
        else {
          assert.ok(o.reason instanceof RuntimeReleaseError && o.reason.retryable, `unexpected failure: ${String(o.reason)}`);
          redeliveries++;
        }
      });
      if (confirmed.size < SESSIONS && client.breakerState(sim.url) === 'open') await sleep(20);
    }

    const stats = sim.stats();
    // A hung release was applied, so the one confirmation its session got must have been a replay.
    assert.ok(stats.hangs >= 2 && stats.replays >= 1, `lost answers and replays (${redeliveries} redeliveries)`);
    assert.ok((stats.requests['503'] ?? 0) >= 1 && (stats.requests['429'] ?? 0) >= 1, 'errors and rate limits');
    for (const [id, bytes] of held) {
      assert.equal(stats.releases[`${id}:1`], 1, `${id} freed exactly once`);
      assert.deepEqual({ outcome: confirmed.get(id)?.outcome, freedBytes: confirmed.get(id)?.freedBytes }, { outcome: 'released', freedBytes: bytes });
    }
    assert.equal(stats.totalFreed, stats.totalAllocated);
    assert.deepEqual(sim.memory(), { totalBytes: sim.memory().totalBytes, usedBytes: 0, sessions: 0 });
  });
});
