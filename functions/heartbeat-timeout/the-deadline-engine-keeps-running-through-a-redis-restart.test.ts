// The deadline engine through a Redis outage: a private redis-server is killed and started again on the same port;
// the engine logs, backs off, reconnects and goes on expiring sessions, and starts even while Redis is down.
// (A single server: restarting one node of the shared test cluster would disturb every other test file.)
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { EventType } from '../core/contract/events.ts';
import { createCore, type Core } from '../core/function-host.ts';
import { KeySpace } from '../core/redis/keys.ts';
import { connectRedis, createRedisClient, type RedisClient } from '../core/redis/connect.ts';
import { Scripts } from '../core/redis/scripts.ts';
import { SessionStore } from '../core/session-store.ts';
import { fp, placementA } from '../../tests/support/core.ts';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { startRedis, type RedisProcess } from '../../tests/support/redis-harness.ts';
import { DeadlineEngine } from './deadline-engine.ts';

const WAIT = { timeoutMs: 30_000 };

describe('the deadline engine through a Redis restart', () => {
  let server: RedisProcess;
  let sink: EventSink;
  let client: RedisClient;
  let store: SessionStore;
  let engineCore: Core;
  let engine: DeadlineEngine;

  before(async () => {
    server = await startRedis();
    sink = await startEventSink();
    client = createRedisClient({ REDIS_URL: server.url, REDIS_CLUSTER_NODES: '', REDIS_PASSWORD: '', REDIS_TLS: false, CORE_TIMEOUT_MS: 2000 });
    client.on('error', () => undefined); // the outage is intended; the test's own calls report their failures
    await connectRedis(client);
    store = new SessionStore(client, new KeySpace('sr', 8), await Scripts.register(client), { tombstoneTtlMs: 60_000 });
    engineCore = newEngineCore();
    engine = new DeadlineEngine({ deps: engineCore.deps, ready: () => engineCore.ready(), maxBackoffMs: 300 });
  });
  after(async () => {
    await engine.stop();
    await engineCore.close();
    client.disconnect();
    await sink.close();
    await server.stop();
  });

  function newEngineCore(): Core {
    return createCore({
      name: 'deadline-engine',
      env: { REDIS_URL: server.url, INDEX_BUCKETS: '8', K_SINK: sink.url, LOG_LEVEL: 'silent', DEADLINE_POLL_MS: '20', CORE_TIMEOUT_MS: '200' },
    });
  }
  const open = (sessionId: string, windowMs: number) =>
    store.open({ sessionId, fingerprint: fp(), now: Date.now(), liveFrom: Date.now(), windowMs, placement: placementA });
  const expired = (sessionId: string) => sink.waitForEvent((e) => e.event.type === EventType.SessionExpired && e.event.subject === sessionId, WAIT);

  test('expires sessions before the outage, reports it, and expires sessions opened after Redis is back', async () => {
    engine.start();
    await open('before-1', 150);
    await expired('before-1');
    assert.equal(engine.connected, true);

    await server.stop();
    // The engine's passes now fail; it must neither stop nor spin.
    const until = Date.now() + 5000;
    while (engine.connected && Date.now() < until) await sleep(50);
    assert.equal(engine.connected, false, 'the engine noticed the outage');
    assert.equal(engine.running, true);
    await sleep(500);

    await server.start();
    // A restarted server without persistence is empty: scripts are re-sent (EVALSHA falls back to EVAL).
    await connectRedis(client).catch(() => undefined);
    let reopened = false;
    while (!reopened && Date.now() < until + 20_000) {
      try {
        await open('after-1', 150);
        reopened = true;
      } catch {
        await sleep(100);
      }
    }
    assert.ok(reopened, 'could not open a session after the restart');
    const event = await expired('after-1');
    assert.equal((event.event.data as { sessionId: string }).sessionId, 'after-1');
    // The event can arrive before the pass that emitted it has finished and recorded its success.
    const settle = Date.now() + 5000;
    while (!engine.connected && Date.now() < settle) await sleep(20);
    assert.equal(engine.connected, true);
  });

  test('an engine started while Redis is down begins expiring once Redis answers', async () => {
    await engine.stop();
    await engineCore.close();
    await server.stop();
    // A fresh process: it has never reached Redis, so even connecting and loading the scripts must be retried.
    engineCore = newEngineCore();
    engine = new DeadlineEngine({ deps: engineCore.deps, ready: () => engineCore.ready(), maxBackoffMs: 300 });
    engine.start();
    await sleep(400);
    assert.equal(engine.connected, false);
    await server.start();
    let opened = false;
    const until = Date.now() + 20_000;
    while (!opened && Date.now() < until) {
      try {
        await open('late-1', 150);
        opened = true;
      } catch {
        await sleep(100);
      }
    }
    assert.ok(opened);
    await expired('late-1');
  });
});
