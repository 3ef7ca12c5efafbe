// heartbeat-n.lua takes as many keys as a call has buckets: such a `-n` script, like every other, is sent with EVALSHA
// (routed by its keys on Cluster), and a Redis that lost its scripts (a restart, a failover) is sent the source again.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { Redis } from 'ioredis';
import { KeySpace } from './keys.ts';
import { loadScriptSources, Scripts, ScriptLoadError } from './scripts.ts';
import { SessionStore } from '../session-store.ts';
import { startRedis, type RedisProcess } from '../../../tests/support/redis-harness.ts';
import { fp, placementA } from '../../../tests/support/core.ts';

let server: RedisProcess;
let redis: Redis;
before(async () => {
  server = await startRedis();
  redis = new Redis(server.url, { enableAutoPipelining: true });
});
after(async () => {
  redis.disconnect();
  await server.stop();
});

test('a script file named -n takes any number of keys; any other name must say how many', () => {
  const heartbeat = loadScriptSources().find((s) => s.name === 'heartbeat');
  assert.equal(heartbeat?.numberOfKeys, null);
  const dir = mkdtempSync(join(tmpdir(), 'sr-lua-'));
  try {
    writeFileSync(join(dir, 'some-thing-x.lua'), '-- KEYS[1] ARGV[1] Returns\nreturn 1');
    assert.throws(() => loadScriptSources(dir), ScriptLoadError);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('heartbeats of several buckets go in one call, and again once Redis has lost every script', async () => {
  const keys = new KeySpace('anykeys', 8);
  const store = new SessionStore(redis, keys, await Scripts.register(redis), { tombstoneTtlMs: 60_000 });
  const ids = ['k-1', 'k-2', 'k-3', 'k-4', 'k-5', 'k-6'];
  assert.ok(new Set(ids.map((id) => keys.bucketOf(id))).size > 1, 'the ids are in several buckets');
  const t0 = 1_800_000_000_000;
  for (const id of ids) await store.open({ sessionId: id, fingerprint: fp(), now: t0, liveFrom: t0, windowMs: 1000, placement: placementA });
  const beat = async (at: number) => (await store.heartbeatMany(ids.map((sessionId) => ({ sessionId, liveFrom: at })), at)).map((r) => r.code === 'REFRESHED' && r.deadline);
  assert.deepEqual(await beat(t0 + 10), ids.map(() => t0 + 1010));
  await redis.script('FLUSH');
  assert.deepEqual(await beat(t0 + 20), ids.map(() => t0 + 1020), 'sent as EVAL when Redis answers NOSCRIPT');
  assert.deepEqual(await beat(t0 + 30), ids.map(() => t0 + 1030));
});

test('a fixed-key script is sent by SHA1 too, defines nothing on the client, and survives Redis losing it', async () => {
  const client = new Redis(server.url, { enableAutoPipelining: true });
  try {
    const keys = new KeySpace('fixedkeys', 4);
    const store = new SessionStore(client, keys, await Scripts.register(client), { tombstoneTtlMs: 60_000 });
    // ioredis copies every command defined on a client onto each auto-pipelined batch: none is.
    assert.deepEqual(Object.keys(client.scriptsSet), []);
    const t0 = 1_800_000_000_000;
    await client.script('FLUSH');
    const opened = await store.open({ sessionId: 'f-1', fingerprint: fp(), now: t0, liveFrom: t0, windowMs: 1000, placement: placementA });
    assert.equal(opened.code, 'OPENED', 'open-session sent as EVAL when Redis answers NOSCRIPT');
    assert.equal((await store.inspect('f-1'))?.state, 'active');
    const sha = createHash('sha1').update(loadScriptSources().find((s) => s.name === 'openSession')!.lua).digest('hex');
    assert.deepEqual(await client.script('EXISTS', sha), [1], 'the EVAL cached it again under the SHA1 the next call sends');
    assert.equal((await store.open({ sessionId: 'f-2', fingerprint: fp(), now: t0, liveFrom: t0, windowMs: 1000, placement: placementA })).code, 'OPENED');
  } finally {
    client.disconnect();
  }
});
