// The trust boundary, attacked through the real path: the local Broker of `npm start` (which applies the deployed
// EventPolicies to each sender's token), the four function processes, real Redis and the simulated runtime. Each
// attack gets the documented answer (401/403 at the Broker, 400/403 at a function, kept as a dead letter with the
// reason) and leaves the victim's session, its GPU memory at the runtime and the ledger exactly as they were.
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { connect } from 'node:net';
import type { AddressInfo } from 'node:net';
import { networkInterfaces } from 'node:os';
import { after, before, describe, test } from 'node:test';
import { EventType } from '../../functions/core/contract/events.ts';
import { createRedisClient, type RedisClient } from '../../functions/core/redis/connect.ts';
import { drawReleaseToken, type SessionStore } from '../../functions/core/session-store.ts';
import { startEventSink, type EventSink } from '../support/event-sink.ts';
import { stackStore, startStack, type Stack } from '../support/stack.ts';
import { forge, post, snapshot, until, type Snapshot } from './attack-support.ts';

const GiB = 1024 ** 3;
const T = 'dev.sessionreaper.';

describe('an attacker inside the cluster changes nothing', () => {
  let stack: Stack;
  let sink: EventSink;
  let redis: RedisClient;
  let store: SessionStore;
  // A runtime that is not registered: nothing may ever call it.
  let trap: Server;
  let trapCalls = 0;
  let trapUrl: string;
  // A registered runtime that answers every release with an error page full of internals.
  let leaky: Server;
  let leakyUrl: string;

  const pipeline = () => stack.tokens['inference-pipeline'];
  const ports = () => stack.ports;
  const direct = (fn: 'destroy-dispatch' | 'gpu-release' | 'heartbeat-timeout') => `http://127.0.0.1:${ports()[fn]}/`;

  before(async () => {
    trap = createServer((req, res) => {
      trapCalls++;
      req.resume();
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"freedBytes":1}');
    });
    leaky = createServer((req, res) => {
      req.resume();
      res.writeHead(500, { 'content-type': 'text/html' }).end('<h1>internal-secret-7d1f at http://10.3.4.5:9000/admin?token=hunter2</h1>');
    });
    for (const s of [trap, leaky]) await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
    trapUrl = `http://127.0.0.1:${(trap.address() as AddressInfo).port}`;
    leakyUrl = `http://127.0.0.1:${(leaky.address() as AddressInfo).port}`;
    sink = await startEventSink();
    stack = await startStack({
      forward: sink.url,
      runtimes: [{ name: 'leaky', url: leakyUrl }],
      env: { RELEASE_RETRIES: '0', DESTROY_STALL_MS: '30000' },
      // A refused event is kept at once: the attacks need no redelivery to be judged.
      deliveryOverride: { retry: 0, timeoutMs: 10_000 },
    });
    ({ redis, store } = await stackStore(stack));
  });

  after(async () => {
    redis?.disconnect();
    await stack?.stop();
    await sink?.close();
    for (const s of [trap, leaky]) if (s?.listening) await new Promise<void>((r) => s.close(() => r()));
  });

  /** Opens a session as the pipeline (tenant acme) on the simulator and allocates its memory there. */
  async function victim(sessionId: string, placement: { node?: string; runtimeUrl?: string } = {}): Promise<number> {
    const opened = forge(`${T}session.opened`, {
      sessionId, tenant: 'acme', heartbeatIntervalMs: 60_000,
      placement: { node: placement.node ?? 'gpu-node-v', runtimeUrl: placement.runtimeUrl ?? stack.runtimeUrl, gpuBytes: GiB },
    }, { source: '/inference-pipeline' });
    assert.equal((await post(stack.brokerUrl, opened, pipeline())).status, 202);
    const view = await until(`${sessionId} opened`, async () => {
      const v = await store.inspect(sessionId);
      return v?.state === 'active' ? v : undefined;
    });
    if ((placement.runtimeUrl ?? stack.runtimeUrl) === stack.runtimeUrl) {
      const res = await fetch(`${stack.runtimeUrl}/v1/sessions/${sessionId}/allocate`, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ incarnation: view.incarnation, bytes: GiB }),
      });
      assert.equal(res.status, 201);
    }
    return view.incarnation;
  }

  const runtimeUsed = async () => ((await (await fetch(`${stack.runtimeUrl}/sim/stats`)).json()) as { usedBytes: number }).usedBytes;

  /** Waits until the Broker has delivered (or given up on) everything, then compares with the snapshot. */
  async function unchanged(sessionId: string, before: Snapshot, usedBefore: number): Promise<void> {
    await stack.broker.idle();
    const after = await snapshot(store, sessionId);
    assert.deepEqual(after.view, before.view, `${sessionId}'s session is untouched`);
    assert.deepEqual(after.ledger.totals, before.ledger.totals, 'the ledger is unchanged');
    assert.equal(await runtimeUsed(), usedBefore, 'the runtime still holds every byte');
  }

  describe('1: only the pipeline may start or end a session, only session-reaper may speak for itself', () => {
    test('the Broker answers 401 without a known sender token, and 403 to every type its sender may not send', async () => {
      await victim('victim-1');
      const before = await snapshot(store, 'victim-1');
      const used = await runtimeUsed();
      const inc = before.view!.incarnation;
      const closed = () => forge(`${T}session.closed`, { sessionId: 'victim-1' }, { tenant: 'acme' });
      assert.equal((await post(stack.brokerUrl, closed())).status, 401, 'no token');
      assert.equal((await post(stack.brokerUrl, closed(), 'not-a-token-of-anyone')).status, 401, 'an unknown token');
      const internal = [
        forge(`${T}session.expired`, { sessionId: 'victim-1', incarnation: inc, deadline: new Date().toISOString(), detectedAt: new Date().toISOString(), lagMs: 0 }),
        forge(`${T}gpu.released`, { sessionId: 'victim-1', incarnation: inc, node: 'gpu-node-v', freedBytes: GiB, token: drawReleaseToken() }),
        forge(`${T}destroy.resume`, { sessionId: 'victim-1', incarnation: inc, stage: 'gpu_released' }),
        forge(`${T}gpu.release.requested`, { sessionId: 'victim-1', incarnation: inc, attempt: 1, token: drawReleaseToken(), placement: { node: 'n', runtimeUrl: trapUrl } }),
        forge(`${T}session.destroy.requested`, { sessionId: 'victim-1' }),
      ];
      for (const ev of internal) {
        for (const source of ['/inference-pipeline', '/session-reaper/deadline-engine', '/session-reaper/gpu-release', '/session-reaper/destroy-dispatch']) {
          const res = await post(stack.brokerUrl, forge(ev.type, ev.data, { source }), pipeline());
          assert.equal(res.status, 403, `the pipeline may not send ${ev.type} as ${source}`);
        }
      }
      assert.equal((await post(stack.brokerUrl, closed(), stack.tokens.operator)).status, 403, 'an operator may not close a session as the pipeline');
      assert.equal((await post(stack.brokerUrl, forge(`${T}session.closed`, { sessionId: 'victim-1' }, { source: '/session-reaper/destroy-dispatch', tenant: 'acme' }), pipeline())).status, 403, 'nor speak as session-reaper');
      // A compromised workload sends only its own types, as itself.
      assert.equal((await post(stack.brokerUrl, forge(internal[0]!.type, internal[0]!.data, { source: '/session-reaper/gpu-release' }), stack.tokens['gpu-release'])).status, 403);
      assert.equal((await post(stack.brokerUrl, forge(internal[1]!.type, internal[1]!.data, { source: '/session-reaper/destroy-dispatch' }), stack.tokens['gpu-release'])).status, 403);
      await unchanged('victim-1', before, used);
    });

    test('past the Broker, a function refuses an internal type that does not come from its sender (400), writing nothing', async () => {
      await victim('victim-2');
      const before = await snapshot(store, 'victim-2');
      const used = await runtimeUsed();
      const inc = before.view!.incarnation;
      const expired = forge(`${T}session.expired`, { sessionId: 'victim-2', incarnation: inc, deadline: new Date().toISOString(), detectedAt: new Date().toISOString(), lagMs: 0 }, { source: '/inference-pipeline' });
      const r1 = await post(direct('destroy-dispatch'), expired);
      assert.equal(r1.status, 400);
      assert.deepEqual({ ...(r1.body as object), reason: undefined }, { error: 'FORBIDDEN_SOURCE', field: 'ce.source', reason: undefined });
      const released = forge(`${T}gpu.released`, { sessionId: 'victim-2', incarnation: inc, node: 'gpu-node-v', freedBytes: GiB, token: drawReleaseToken() }, { source: '/session-reaper/destroy-dispatch' });
      assert.equal((await post(direct('destroy-dispatch'), released)).status, 400, 'gpu.released only from gpu-release');
      const requested = forge(`${T}gpu.release.requested`, { sessionId: 'victim-2', incarnation: inc, attempt: 1, token: drawReleaseToken(), placement: { node: 'n', runtimeUrl: stack.runtimeUrl } }, { source: '/attacker' });
      assert.equal((await post(direct('gpu-release'), requested)).status, 400);
      await unchanged('victim-2', before, used);
    });
  });

  describe('2: no event chooses where a release goes', () => {
    test('a session.opened naming an unregistered runtime, however its address is written, is refused (400) and opens nothing', async () => {
      const disguises = [
        'http://169.254.169.254/latest/meta-data',
        'http://2852039166/', // 169.254.169.254 as one decimal number
        'http://[::ffff:a9fe:a9fe]/', // the same, IPv4-mapped IPv6
        `http://0x7f000001:${new URL(stack.redisUrl).port}/`, // this machine's Redis, in hex
        trapUrl,
      ];
      for (const [i, runtimeUrl] of disguises.entries()) {
        const sessionId = `ssrf-${i}`;
        const opened = forge(`${T}session.opened`, { sessionId, placement: { node: 'gpu-node-v', runtimeUrl, gpuBytes: GiB } }, { source: '/inference-pipeline' });
        assert.equal((await post(stack.brokerUrl, opened, pipeline())).status, 202, 'the pipeline may send session.opened');
        assert.equal((await post(direct('heartbeat-timeout'), opened)).status, 400, `${runtimeUrl} refused`);
      }
      await stack.broker.idle();
      for (const i of disguises.keys()) assert.equal(await store.inspect(`ssrf-${i}`), null, 'no session was opened');
      const kept = (await stack.broker.deadLetters.list()).filter((d) => String(d.event.attributes.subject ?? '').startsWith('ssrf') || /ssrf-/.test(Buffer.from(d.event.data_base64 ?? '', 'base64').toString()));
      assert.equal(kept.length, disguises.length, 'each refusal is kept as a dead letter');
      assert.ok(kept.every((d) => d.reason.status === 400 && (d.reason.body ?? '').includes('UNREGISTERED_RUNTIME')), 'with its reason');
      assert.equal(trapCalls, 0);
    });

    test('a gpu.release.requested for a runtime of its choosing, even from a sender that may send it, calls nothing', async () => {
      const inc = await victim('victim-3');
      const before = await snapshot(store, 'victim-3');
      const used = await runtimeUsed();
      const requested = forge(
        `${T}gpu.release.requested`,
        { sessionId: 'victim-3', incarnation: inc, attempt: 1, token: drawReleaseToken(), placement: { node: 'gpu-node-v', runtimeUrl: trapUrl } },
        { source: '/session-reaper/destroy-dispatch' },
      );
      assert.equal((await post(stack.brokerUrl, requested, stack.tokens['destroy-dispatch'])).status, 202, 'destroy-dispatch may send it');
      await unchanged('victim-3', before, used);
      assert.equal(trapCalls, 0, 'the runtime the event names is never called');
    });

    test('a failed release tells nothing of what the runtime answered or where it is', async () => {
      await victim('leak-1', { runtimeUrl: leakyUrl, node: 'gpu-node-l' });
      assert.equal((await post(stack.brokerUrl, forge(`${T}session.closed`, { sessionId: 'leak-1' }, { tenant: 'acme', source: '/inference-pipeline' }), pipeline())).status, 202);
      const failed = await sink.waitForEvent((e) => e.event.type === EventType.GpuReleaseFailed && e.event.subject === 'leak-1');
      const { error } = failed.event.data as { error: string };
      assert.equal(error, 'the runtime answered HTTP 500 (1 attempt)');
      assert.doesNotMatch(JSON.stringify(failed.event.data), /internal-secret|hunter2|10\.3\.4\.5|127\.0\.0\.1/);
    });
  });

  describe('4: a session belongs to the tenant that opened it', () => {
    test('another tenant cannot close, hold, beat, or move it; nothing of it changes', async () => {
      const inc = await victim('victim-4');
      const before = await snapshot(store, 'victim-4');
      const used = await runtimeUsed();
      const attacks = [
        forge(`${T}session.closed`, { sessionId: 'victim-4' }, { tenant: 'umbrella', source: '/inference-pipeline' }),
        forge(`${T}session.closed`, { sessionId: 'victim-4' }, { source: '/inference-pipeline' }),
        forge(`${T}inference.completed`, { sessionId: 'victim-4', requestId: 'r', release: true }, { tenant: 'umbrella', source: '/inference-pipeline' }),
        forge(`${T}session.hold`, { sessionId: 'victim-4', durationMs: 600_000, reason: 'x' }, { tenant: 'umbrella', source: '/inference-pipeline' }),
        forge(`${T}session.heartbeat`, { sessionId: 'victim-4' }, { tenant: 'umbrella', source: '/inference-pipeline' }),
        forge(`${T}session.activity`, { sessionId: 'victim-4', kind: 'input' }, { tenant: 'umbrella', source: '/inference-pipeline' }),
        // A "migration" elsewhere, which would free the victim's live memory.
        forge(`${T}session.opened`, { sessionId: 'victim-4', tenant: 'umbrella', placement: { node: 'gpu-node-w', runtimeUrl: stack.runtimeUrl, gpuBytes: 1 } }, { source: '/inference-pipeline' }),
      ];
      for (const ev of attacks) assert.equal((await post(stack.brokerUrl, ev, pipeline())).status, 202, `${ev.type} is the pipeline's to send`);
      await unchanged('victim-4', before, used);
      assert.equal((await store.inspect('victim-4'))?.incarnation, inc, 'not moved to a new incarnation');
      const refused = (await stack.broker.deadLetters.list()).filter((d) => /victim-4/.test(Buffer.from(d.event.data_base64 ?? '', 'base64').toString()));
      assert.ok(refused.length >= attacks.length, 'every refusal is kept');
      assert.ok(refused.every((d) => d.reason.status === 403), 'answered 403, never retried');
      // Straight to the function, the answer is the same.
      const direct403 = await post(direct('destroy-dispatch'), forge(`${T}session.closed`, { sessionId: 'victim-4' }, { tenant: 'umbrella' }));
      assert.deepEqual({ status: direct403.status, error: (direct403.body as { error: string }).error }, { status: 403, error: 'NOT_OWNER' });
    });
  });

  describe('7: the local stack is reachable from this machine only, and its Redis asks for a password', () => {
    test('no part listens beyond loopback', async (t) => {
      const external = Object.values(networkInterfaces()).flat().find((a) => a && a.family === 'IPv4' && !a.internal)?.address;
      if (external === undefined) return t.skip('this machine has no non-loopback IPv4 address to try');
      for (const [part, port] of Object.entries(ports())) {
        const reached = await new Promise<boolean>((resolve) => {
          const socket = connect({ host: external, port }, () => {
            socket.destroy();
            resolve(true);
          });
          socket.once('error', () => resolve(false));
        });
        assert.equal(reached, false, `${part} is not reachable on ${external}:${port}`);
      }
    });

    test('Redis refuses a client without the password, runs in protected mode, and never had the password on its command line', async () => {
      const anonymous = createRedisClient({ REDIS_URL: stack.redisUrl, REDIS_CLUSTER_NODES: '', REDIS_PASSWORD: '', REDIS_TLS: false, CORE_TIMEOUT_MS: 2000 });
      anonymous.on('error', () => undefined);
      try {
        await assert.rejects(anonymous.get('x'), /NOAUTH/);
      } finally {
        anonymous.disconnect();
      }
      assert.deepEqual(await redis.config('GET', 'protected-mode'), ['protected-mode', 'yes']);
      const port = new URL(stack.redisUrl).port;
      const lines = readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map((pid) => {
        try {
          return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
        } catch {
          return '';
        }
      }).filter((cmd) => cmd.includes('redis-server') && cmd.includes(port));
      assert.ok(lines.length > 0, 'the private redis-server is found');
      for (const cmd of lines) assert.ok(!cmd.includes(stack.redisPassword), 'its password is not on its command line');
    });

    test('the admin API answers only requests addressed to localhost', async () => {
      const admin = new URL('/admin/stats', stack.brokerUrl);
      assert.equal((await fetch(admin)).status, 200);
      const rebound = await new Promise<number>((resolve, reject) => {
        const socket = connect({ host: '127.0.0.1', port: ports().broker }, () => {
          socket.write(`GET /admin/stats HTTP/1.1\r\nHost: attacker.example:${ports().broker}\r\nConnection: close\r\n\r\n`);
        });
        let text = '';
        socket.on('data', (c: Buffer) => (text += c.toString('utf8')));
        socket.on('end', () => resolve(Number(/^HTTP\/1\.1 (\d+)/.exec(text)?.[1] ?? 0)));
        socket.on('error', reject);
      });
      assert.equal(rebound, 403);
    });
  });
});
