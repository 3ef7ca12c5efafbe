// The probes of the long-running processes (the deadline engine, the idle checker), as the kubelet calls them:
// readiness says the worker started and never asks Redis; the deep check does; liveness follows the worker's loop
// (RoundWatch), so a loop that stops completing rounds is restarted, and a loop whose every round fails because Redis
// is unreachable is not.
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { IdleChecker } from '../activity-score/idle-checker.ts';
import { readActivityScoreSettings } from '../activity-score/settings.ts';
import { DeadlineEngine } from '../heartbeat-timeout/deadline-engine.ts';
import { freePort } from '../../tests/support/redis-harness.ts';
import { createCore } from './function-host.ts';
import { RoundWatch, serveHealth } from './process-lifecycle.ts';

async function listening(server: Server): Promise<string> {
  if (!server.listening) await new Promise<void>((done) => server.once('listening', done));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function get(url: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(url);
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

describe('the health endpoints of a long-running process', () => {
  let clock = 0;
  const watch = new RoundWatch(60_000, () => clock);
  let started = false;
  let redisAnswers = false;
  const server = serveHealth('deadline-engine', 0, '127.0.0.1', { started: () => started, deep: () => Promise.resolve(redisAnswers), watch }, () => undefined);
  after(() => server.close());

  test('readiness waits for the worker to start, then never asks Redis; ?deep=1 does', async () => {
    const base = await listening(server);
    assert.equal((await get(`${base}/healthz`)).status, 503);
    started = true;
    assert.deepEqual(await get(`${base}/healthz`), { status: 200, body: { status: 'ok', function: 'deadline-engine' } });
    assert.equal((await get(`${base}/readyz`)).status, 200);
    assert.deepEqual(await get(`${base}/healthz?deep=1`), { status: 503, body: { status: 'unavailable', redis: 'unreachable', function: 'deadline-engine' } });
    redisAnswers = true;
    assert.equal((await get(`${base}/healthz?deep=1`)).status, 200);
    assert.equal((await fetch(`${base}/metrics`)).status, 404);
  });

  test('liveness fails once no round completed for stallMs, and recovers with the next round', async () => {
    const base = await listening(server);
    clock = 59_999;
    assert.equal((await get(`${base}/livez`)).status, 200);
    clock = 60_000;
    const stalled = await get(`${base}/livez`);
    assert.equal(stalled.status, 503);
    assert.deepEqual(stalled.body, { status: 'stalled', sinceLastRoundMs: 60_000, stallMs: 60_000, rounds: 0, function: 'deadline-engine' });
    watch.round();
    clock += 1000;
    assert.deepEqual(await get(`${base}/livez`), { status: 200, body: { status: 'ok', sinceLastRoundMs: 1000, stallMs: 60_000, rounds: 1, function: 'deadline-engine' } });
  });
});

describe('the loops count failed rounds as rounds: Redis down is never a stall', () => {
  const closedRedis = async () => ({ REDIS_URL: `redis://127.0.0.1:${await freePort()}`, REDIS_CLUSTER_NODES: '', K_SINK: 'http://127.0.0.1:9/', LOG_LEVEL: 'silent', CORE_TIMEOUT_MS: '200' });

  test('the deadline engine completes rounds while every one fails', async () => {
    const core = createCore({ name: 'deadline-engine', env: await closedRedis() });
    let rounds = 0;
    const engine = new DeadlineEngine({ deps: core.deps, ready: () => core.ready(), maxBackoffMs: 50, onRound: () => (rounds += 1) });
    try {
      engine.start();
      await sleep(1500);
      assert.equal(engine.connected, false, 'Redis is unreachable');
      assert.ok(rounds >= 3, `rounds completed: ${rounds}`);
    } finally {
      await engine.stop();
      await core.close();
    }
  });

  test('the idle checker completes passes while every one fails', async () => {
    const env = { ...(await closedRedis()), IDLE_POLL_MS: '50' };
    const core = createCore({ name: 'idle-checker', env });
    let rounds = 0;
    const checker = new IdleChecker(core.deps, { settings: readActivityScoreSettings(env), onRound: () => (rounds += 1) });
    try {
      checker.start();
      await sleep(1500);
      assert.ok(rounds >= 3, `passes completed: ${rounds}`);
    } finally {
      await checker.stop();
      await core.close();
    }
  });
});
