import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { startSimRuntime, type SimRuntime } from '../../runtimes/sim-gpu-runtime/server.ts';
import type { RuntimeReleaseError } from '../core/runtime-client.ts';
import { createRuntimeClient, retryAfterMs } from '../core/runtime-client.ts';
import { capturingLogger, testClientOptions, rejection } from './runtime-client-test-support.ts';

const GiB = 1024 ** 3;

function retryDelays(entries: ReturnType<typeof capturingLogger>['entries']): unknown[] {
  return entries.filter((e) => e.msg?.includes('retrying')).map((e) => e.obj.delayMs);
}

describe('retries are bounded, jittered and idempotent', () => {
  let sim: SimRuntime;

  before(async () => {
    sim = await startSimRuntime({ seed: 2 });
  });
  after(async () => {
    await sim.stop();
  });

  it('retries after a lost response and gets the stored answer: one real release', async () => {
    // The hang is the runtime applying the release and its answer never arriving; the retry must not free twice.
    const client = createRuntimeClient(testClientOptions({ timeoutMs: 400, retries: 3 }));
    try {
      sim.allocate('lost-1', 2, 4 * GiB);
      sim.queueFaults('hang');
      const result = await client.release(sim.url, 'lost-1', 2);
      assert.equal(result.outcome, 'released');
      assert.equal(result.freedBytes, 4 * GiB, 'the replayed answer carries the bytes the first attempt freed');
      assert.ok(result.attempts >= 2);
      const stats = sim.stats();
      assert.equal(stats.releases['lost-1:2'], 1);
      assert.ok(stats.replays >= 1);
      assert.equal(sim.requestLog().filter((r) => r.idempotencyKey === 'lost-1:2').length, result.attempts);
    } finally {
      client.shutdown();
    }
  });

  it('reports failure when every answer was lost, and a later redelivery still gets the stored answer', async () => {
    const client = createRuntimeClient(testClientOptions({ timeoutMs: 300, retries: 1 }));
    try {
      sim.allocate('lost-2', 1, GiB);
      sim.queueFaults('hang', 'hang');
      const err = await rejection(client.release(sim.url, 'lost-2', 1));
      assert.equal(err.reason, 'budget_exhausted');
      assert.equal((err.cause as RuntimeReleaseError).reason, 'timeout');
      assert.equal(err.attempts, 2);
      // The runtime did free it, but the client never heard so; only a confirmed answer counts.
      assert.equal(sim.session('lost-2'), undefined);
      const redelivered = await client.release(sim.url, 'lost-2', 1);
      assert.deepEqual({ outcome: redelivered.outcome, freedBytes: redelivered.freedBytes }, { outcome: 'released', freedBytes: GiB });
      assert.equal(sim.stats().releases['lost-2:1'], 1);
    } finally {
      client.shutdown();
    }
  });

  it('retries 5xx answers and succeeds within the budget', async () => {
    const client = createRuntimeClient(testClientOptions({ retries: 3 }));
    try {
      sim.allocate('flaky-1', 1, GiB);
      sim.queueFaults('error', 502, 'error');
      const result = await client.release(sim.url, 'flaky-1', 1);
      assert.deepEqual(result, { outcome: 'released', freedBytes: GiB, status: 200, attempts: 4 });
    } finally {
      client.shutdown();
    }
  });

  it('stops after the budget: the first attempt plus `retries`, then budget_exhausted', async () => {
    const logger = capturingLogger();
    const client = createRuntimeClient(testClientOptions({ retries: 2, logger }));
    try {
      sim.allocate('flaky-2', 1, GiB);
      sim.setFaults({ errorRate: 1 });
      const before = sim.stats().received;
      const err = await rejection(client.release(sim.url, 'flaky-2', 1));
      assert.equal(err.reason, 'budget_exhausted');
      assert.equal(err.retryable, true);
      assert.equal(err.status, 503);
      assert.equal(err.attempts, 3);
      assert.equal(sim.stats().received - before, 3);
      assert.equal(retryDelays(logger.entries).length, 2);
      assert.equal(sim.session('flaky-2')?.bytes, GiB, 'nothing was applied');
    } finally {
      sim.setFaults({ errorRate: 0 });
      client.shutdown();
    }
  });

  it('reports a connection failure as retryable once the budget is spent', async () => {
    const closed = createServer();
    closed.listen(0, '127.0.0.1');
    await once(closed, 'listening');
    const { port } = closed.address() as AddressInfo;
    closed.close();
    await once(closed, 'close');
    const client = createRuntimeClient(testClientOptions({ retries: 1 }));
    try {
      const err = await rejection(client.release(`http://127.0.0.1:${port}`, 'nobody-home', 1));
      assert.equal(err.reason, 'budget_exhausted');
      assert.equal((err.cause as RuntimeReleaseError).reason, 'network');
      assert.equal(err.attempts, 2);
    } finally {
      client.shutdown();
    }
  });

  it('draws each backoff from [0, min(max, base * 2^n)] (full jitter)', async () => {
    for (const [fraction, expected] of [
      [0.999, [9, 19, 34, 34]],
      [0.5, [5, 10, 17, 17]],
      [0, [0, 0, 0, 0]],
    ] as const) {
      const logger = capturingLogger();
      const client = createRuntimeClient(testClientOptions({ retries: 4, baseBackoffMs: 10, maxBackoffMs: 35, random: () => fraction, logger }));
      try {
        sim.queueFaults('error', 'error', 'error', 'error');
        const result = await client.release(sim.url, 'jitter', 1);
        assert.equal(result.attempts, 5);
        assert.deepEqual(retryDelays(logger.entries), expected);
      } finally {
        client.shutdown();
      }
    }
  });

  it('waits for Retry-After on a 429, capped at the largest backoff', async () => {
    sim.setFaults({ retryAfterSeconds: 1 });
    try {
      const capped = capturingLogger();
      const quick = createRuntimeClient(testClientOptions({ maxBackoffMs: 50, random: () => 0, logger: capped }));
      try {
        sim.queueFaults('rateLimit');
        const result = await quick.release(sim.url, 'limited', 1);
        assert.equal(result.attempts, 2);
        assert.deepEqual(retryDelays(capped.entries), [50]);
      } finally {
        quick.shutdown();
      }

      const patient = capturingLogger();
      const slow = createRuntimeClient(testClientOptions({ maxBackoffMs: 5000, random: () => 0, logger: patient }));
      try {
        sim.queueFaults('rateLimit');
        const started = performance.now();
        const result = await slow.release(sim.url, 'limited', 1);
        assert.equal(result.attempts, 2);
        // With random() = 0 jitter would wait 0 ms: the only source of this wait is the Retry-After header.
        assert.deepEqual(retryDelays(patient.entries), [1000]);
        assert.ok(performance.now() - started >= 990);
      } finally {
        slow.shutdown();
      }
    } finally {
      sim.setFaults({ retryAfterSeconds: 1 });
    }
  });

  it('parses Retry-After as seconds or as an HTTP date', () => {
    const now = Date.parse('2025-01-01T00:00:00Z');
    assert.equal(retryAfterMs('3', now), 3000);
    assert.equal(retryAfterMs('Wed, 01 Jan 2025 00:00:02 GMT', now), 2000);
    assert.equal(retryAfterMs('Tue, 31 Dec 2024 23:00:00 GMT', now), 0);
    assert.equal(retryAfterMs('soon', now), undefined);
    assert.equal(retryAfterMs(null, now), undefined);
  });

  it('cancels waits and requests in flight on shutdown', async () => {
    const client = createRuntimeClient(testClientOptions({ timeoutMs: 30_000, retries: 0 }));
    sim.queueFaults('hang');
    const pending = client.release(sim.url, 'shutdown-1', 1);
    await new Promise((resolve) => setImmediate(resolve));
    client.shutdown();
    const err = await rejection(pending);
    assert.equal(err.reason, 'breaker_open');
    const late = await rejection(client.release(sim.url, 'shutdown-1', 1));
    assert.equal(late.reason, 'breaker_open');
  });
});
