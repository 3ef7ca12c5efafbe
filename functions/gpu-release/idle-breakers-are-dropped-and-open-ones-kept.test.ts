// The runtime client keeps a breaker only for the runtimes in use: a closed breaker with no call for breakerIdleMs is
// shut down and dropped, an open one is kept (a failing runtime must not get a fresh, trusting breaker), and a call
// after a drop simply makes a new one. The runtimes are real HTTP endpoints: one loopback server answers under many
// path prefixes, each registered as its own runtime.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { createRuntimeClient } from '../core/runtime-client.ts';
import { RuntimeRegistry } from '../core/runtime-registry.ts';
import { rejection, testClientOptions, waitFor } from './runtime-client-test-support.ts';

const RUNTIMES = 40;
// Long enough that 40 calls on a loaded machine usually finish within it; the count is checked only when they did.
const IDLE_MS = 1000;

describe('idle runtime breakers are dropped and open ones kept', () => {
  let server: Server;
  let base: string;

  before(async () => {
    // GET /rt-<n>/v1/memory answers a memory summary; under /down-<n> every call is a 503.
    server = createServer((req, res) => {
      const down = req.url?.startsWith('/down-') === true;
      res.writeHead(down ? 503 : 200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(down ? { code: 'unavailable', title: 'down', status: 503 } : { totalBytes: 100, usedBytes: 1, sessions: 1 }));
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(async () => {
    server.closeAllConnections();
    server.close();
    await once(server, 'close');
  });

  const registry = () =>
    new RuntimeRegistry([
      ...Array.from({ length: RUNTIMES }, (_, n) => ({ name: `rt-${n}`, url: `${base}/rt-${n}` })),
      { name: 'down-0', url: `${base}/down-0` },
    ]);

  it('holds no breaker once many runtimes, each called once, have been idle for breakerIdleMs', async () => {
    const client = createRuntimeClient(testClientOptions({ registry: registry(), breakerIdleMs: IDLE_MS }));
    try {
      const started = Date.now();
      await Promise.all(Array.from({ length: RUNTIMES }, (_, n) => client.memory(`${base}/rt-${n}`)));
      const count = client.breakerCount();
      if (Date.now() - started < IDLE_MS) assert.equal(count, RUNTIMES, 'one breaker per runtime called');
      else assert.ok(count <= RUNTIMES, `${count} breakers for ${RUNTIMES} runtimes`);
      await waitFor(() => client.breakerCount() === 0, 'every idle breaker to be dropped');

      // A later call after the drop works and makes a fresh, closed breaker.
      assert.deepEqual(await client.memory(`${base}/rt-0`), { totalBytes: 100, usedBytes: 1, sessions: 1 });
      assert.equal(client.breakerCount(), 1);
      assert.equal(client.breakerState(`${base}/rt-0`), 'closed');
    } finally {
      client.shutdown();
    }
  });

  it('keeps an open breaker past the idle time while it is open', async () => {
    // One failed call opens the breaker, and it stays open far longer than the test runs.
    const breaker = { errorThresholdPercentage: 50, resetTimeoutMs: 600_000, volumeThreshold: 1, rollingCountTimeoutMs: 10_000 };
    const client = createRuntimeClient(testClientOptions({ registry: registry(), breakerIdleMs: IDLE_MS, retries: 0, breaker }));
    try {
      const failed = await rejection(client.memory(`${base}/down-0`));
      assert.equal(failed.status, 503);
      assert.equal(client.breakerState(`${base}/down-0`), 'open');
      // A healthy runtime called after the failing one: once its breaker is dropped, the open one has been idle
      // longer than breakerIdleMs too, so the sweep has looked at it and kept it.
      await client.memory(`${base}/rt-1`);
      assert.equal(client.breakerCount(), 2);
      await waitFor(() => client.breakerCount() === 1, "the healthy runtime's idle breaker to be dropped");
      assert.equal(client.breakerState(`${base}/down-0`), 'open', 'the open breaker is still the one in force');
      const refused = await rejection(client.memory(`${base}/down-0`));
      assert.equal(refused.reason, 'breaker_open', 'calls are still refused without reaching the runtime');
    } finally {
      client.shutdown();
    }
  });
});
