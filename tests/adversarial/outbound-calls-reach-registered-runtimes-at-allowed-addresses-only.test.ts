// Findings 2 and 8, past the event: every outbound call (a release, a memory report, the router hook) goes to a
// registered runtime only, and only to an address the policy allows, checked on the address the socket connects to
// (so a registered name that resolves to loopback or the metadata service is refused, and a literal in disguise is
// what it is). And the load tier follows the median registered runtime: one runtime reporting itself full moves no
// tenant to a tighter policy. Real HTTP servers, real DNS (localhost), real Redis.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { DEFAULT_LOAD_POLICY } from '../../functions/activity-score/load-policy.ts';
import { createMemoryProbe, LoadMonitor } from '../../functions/activity-score/load-monitor.ts';
import { OutboundAddressPolicy } from '../../functions/core/outbound-address.ts';
import { createRuntimeClient } from '../../functions/core/runtime-client.ts';
import { rejection, testClientOptions } from '../../functions/gpu-release/runtime-client-test-support.ts';
import { RuntimeRegistry } from '../../functions/core/runtime-registry.ts';
import { deregisterFromRouterHook } from '../../functions/destroy-dispatch/hooks.ts';
import { startSimRuntime, type SimRuntime } from '../../runtimes/sim-gpu-runtime/server.ts';
import { testCore, type TestCore } from '../support/core.ts';

const logger = pino({ level: 'silent' });

describe('outbound calls reach registered runtimes at allowed addresses only', () => {
  let target: Server;
  let calls = 0;
  let port: number;

  before(async () => {
    target = createServer((req, res) => {
      calls++;
      req.resume();
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"freedBytes":1,"totalBytes":1,"usedBytes":1,"sessions":1}');
    });
    await new Promise<void>((r) => target.listen(0, '127.0.0.1', () => r()));
    port = (target.address() as AddressInfo).port;
  });
  after(() => new Promise<void>((r) => target.close(() => r())));

  const client = (registry: RuntimeRegistry, allowed: string[]) =>
    createRuntimeClient(testClientOptions({ retries: 0, registry, addressPolicy: new OutboundAddressPolicy(allowed) }));

  test('a registered name that resolves to loopback, and loopback in disguise, are refused unless loopback is allowed', async () => {
    const named = `http://localhost:${port}`;
    const registry = new RuntimeRegistry([{ name: 'named', url: named }, { name: 'decimal', url: `http://2130706433:${port}` }, { name: 'mapped', url: `http://[::ffff:7f00:1]:${port}` }]);
    const strict = client(registry, ['10.0.0.0/8']);
    try {
      for (const url of [named, `http://2130706433:${port}`, `http://[::ffff:7f00:1]:${port}`]) {
        const err = await rejection(strict.release(url, 's', 1));
        assert.equal(err.reason, 'forbidden_address', url);
        assert.equal(err.retryable, false);
      }
      assert.equal(calls, 0, 'nothing was sent');
    } finally {
      strict.shutdown();
    }
    const local = client(registry, ['127.0.0.0/8', '::1/128']);
    try {
      assert.equal((await local.release(named, 's', 1)).freedBytes, 1);
      assert.equal(calls, 1);
    } finally {
      local.shutdown();
    }
  });

  test('the metadata service, a private network and unregistered runtimes are never called', async () => {
    const registry = new RuntimeRegistry([{ name: 'meta', url: 'http://169.254.169.254' }, { name: 'lan', url: 'http://192.168.77.1:8000' }]);
    const c = client(registry, ['10.0.0.0/8']);
    try {
      assert.equal((await rejection(c.release('http://169.254.169.254', 's', 1))).reason, 'forbidden_address');
      assert.equal((await rejection(c.memory('http://192.168.77.1:8000'))).reason, 'forbidden_address');
      assert.equal((await rejection(c.release(`http://127.0.0.1:${port}`, 's', 1))).reason, 'unregistered_runtime');
    } finally {
      c.shutdown();
    }
    assert.equal(calls, 1, 'still only the one allowed call of the test before');
  });

  test('the router hook is held to the same rule', async () => {
    const hook = deregisterFromRouterHook({ url: `http://localhost:${port}/deregister`, timeoutMs: 2000, addressPolicy: new OutboundAddressPolicy([]) });
    await assert.rejects(hook.run({ sessionId: 's', incarnation: 1, stage: 'claimed', now: Date.now(), redis: undefined as never, logger }), /fetch failed/);
    assert.equal(calls, 1);
  });

  describe('8: the load tier follows the median registered runtime', () => {
    let core: TestCore;
    const sims: SimRuntime[] = [];
    before(async () => {
      core = await testCore('single');
      // Four runtimes at 30 %, and one that says it is full.
      for (let i = 0; i < 4; i++) {
        const sim = await startSimRuntime({ totalBytes: 1000, seed: i });
        sim.allocate(`r${i}`, 1, 300);
        sims.push(sim);
      }
      const liar = await startSimRuntime({ totalBytes: 1000, seed: 9 });
      liar.allocate('all', 1, 1000);
      sims.push(liar);
    });
    after(async () => {
      await Promise.all(sims.map((s) => s.stop()));
      await core.close();
    });

    test('one runtime reporting itself full moves no tenant to a tighter policy, and unregistered runtimes are never polled', async () => {
      const registry = new RuntimeRegistry(sims.map((s, i) => ({ name: `sim-${i}`, url: s.url })));
      const monitor = new LoadMonitor(core.redis, {
        prefix: core.prefix,
        // High demand: its watermark (60 %) is the lowest, so a single full runtime would have tipped it.
        policy: { ...DEFAULT_LOAD_POLICY, demandEventsPerSecond: { medium: 0, high: 0 } },
        runtimeTtlMs: 60_000,
        registry,
        runtime: createMemoryProbe({ RUNTIME_TIMEOUT_MS: 2000 }, logger, { registry, addressPolicy: new OutboundAddressPolicy(['127.0.0.0/8']) }),
        logger,
        now: Date.now,
      });
      // A scored event on an unregistered runtime is counted as an event, never as a runtime to poll.
      monitor.recordEvent(Date.now(), `http://127.0.0.1:${port}`);
      const assessment = await monitor.evaluate({ force: true });
      assert.equal(assessment?.demand, 'high');
      assert.equal(assessment?.memoryPressure, 0.3);
      assert.equal(assessment?.tier, 'normal');
      assert.equal(calls, 1, 'the unregistered runtime was not polled');
      const reports = await monitor.memoryReports();
      assert.equal(reports.length, sims.length, 'every registered runtime reported');
      await monitor.stop();
    });
  });
});
