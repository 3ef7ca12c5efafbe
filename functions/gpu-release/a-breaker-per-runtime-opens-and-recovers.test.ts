import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { startSimRuntime, type SimRuntime } from '../../runtimes/sim-gpu-runtime/server.ts';
import { createRuntimeClient } from '../core/runtime-client.ts';
import { breakerRecorder, testClientOptions, rejection } from './runtime-client-test-support.ts';

const GiB = 1024 ** 3;

// A real pino logger writing into memory: proves the client's logger type accepts pino and shows what it logs.
function memoryPino(): { logger: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line !== '') lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  return { logger: pino({ level: 'debug' }, sink), lines };
}

// volumeThreshold 3 with 100% failures: the third failed attempt opens the breaker. resetTimeoutMs is long enough
// that the short-circuit check right after opening cannot race the half-open timer, short enough to keep tests quick.
const breaker = { errorThresholdPercentage: 50, resetTimeoutMs: 500, volumeThreshold: 3, rollingCountTimeoutMs: 10_000 };

describe('a breaker per runtime opens on failures and recovers', () => {
  let down: SimRuntime;
  let healthy: SimRuntime;

  before(async () => {
    [down, healthy] = await Promise.all([startSimRuntime({ seed: 3 }), startSimRuntime({ seed: 4 })]);
  });
  after(async () => {
    await Promise.all([down.stop(), healthy.stop()]);
  });

  it('opens after repeated failures, short-circuits without touching the runtime, then recovers after resetTimeout', async () => {
    const transitions = breakerRecorder();
    const { logger, lines } = memoryPino();
    const client = createRuntimeClient(testClientOptions({ retries: 10, breaker, logger, onBreakerStateChange: transitions.onBreakerStateChange }));
    try {
      down.allocate('b-1', 1, GiB);
      down.setFaults({ down: true });

      const opened = await rejection(client.release(down.url, 'b-1', 1));
      assert.equal(opened.reason, 'breaker_open');
      assert.equal(opened.retryable, true);
      assert.equal(opened.attempts, 3, 'retrying stopped as soon as the breaker opened, well inside the budget of 11');
      assert.equal(opened.status, 503);
      assert.equal(down.stats().received, 3);
      assert.equal(client.breakerState(down.url), 'open');

      const refused = await rejection(client.release(down.url, 'b-1', 1));
      assert.equal(refused.reason, 'breaker_open');
      assert.equal(refused.attempts, 0);
      assert.equal(down.stats().received, 3, 'an open breaker does not call the runtime');

      // Still down at the trial call: the breaker reopens after one attempt.
      await transitions.next('halfOpen');
      assert.equal(client.breakerState(down.url), 'halfOpen');
      const failedTrial = await rejection(client.release(down.url, 'b-1', 1));
      assert.equal(failedTrial.reason, 'breaker_open');
      assert.equal(failedTrial.attempts, 1);
      assert.equal(down.stats().received, 4);
      assert.equal(client.breakerState(down.url), 'open');

      down.setFaults({ down: false });
      await transitions.next('halfOpen');
      const result = await client.release(down.url, 'b-1', 1);
      assert.deepEqual(result, { outcome: 'released', freedBytes: GiB, status: 200, attempts: 1 });
      assert.equal(client.breakerState(down.url), 'closed');
      assert.deepEqual(transitions.states, ['open', 'halfOpen', 'open', 'halfOpen', 'closed']);

      const logged = lines.filter((l) => typeof l.breaker === 'string').map((l) => [l.level, l.breaker, l.endpoint]);
      assert.deepEqual(logged, [
        [40, 'open', down.url],
        [30, 'halfOpen', down.url],
        [40, 'open', down.url],
        [30, 'halfOpen', down.url],
        [30, 'closed', down.url],
      ]);
    } finally {
      down.setFaults({ down: false });
      client.shutdown();
    }
  });

  it('keeps one breaker per endpoint: an open one does not stop calls to another runtime', async () => {
    const transitions = breakerRecorder();
    const client = createRuntimeClient(testClientOptions({ retries: 10, breaker, onBreakerStateChange: transitions.onBreakerStateChange }));
    try {
      down.setFaults({ down: true });
      await rejection(client.release(down.url, 'b-2', 1));
      assert.equal(client.breakerState(down.url), 'open');
      assert.equal(client.breakerState(`${down.url}/`), 'open', 'a trailing slash names the same endpoint');

      healthy.allocate('b-2', 1, GiB);
      const result = await client.release(healthy.url, 'b-2', 1);
      assert.equal(result.outcome, 'released');
      assert.equal(client.breakerState(healthy.url), 'closed');
    } finally {
      down.setFaults({ down: false });
      client.shutdown();
    }
  });

  it('does not count answers that show a healthy runtime (400, 403, 404, 409) against the breaker', async () => {
    const client = createRuntimeClient(testClientOptions({ retries: 0, breaker: { ...breaker, volumeThreshold: 1 } }));
    try {
      for (let i = 0; i < 5; i++) {
        healthy.queueFaults(403);
        const err = await rejection(client.release(healthy.url, 'b-3', 1));
        assert.equal(err.status, 403);
        assert.equal((await client.release(healthy.url, 'b-3', 1)).outcome, 'gone');
      }
      assert.equal(client.breakerState(healthy.url), 'closed');
    } finally {
      client.shutdown();
    }
  });
});
