// Redis Cluster resharding with quiet records (lua/includes/quiet.lua): every script that may reach a bucket's quiet
// hash declares it, so while a resharding has moved it ahead of the bucket's other keys Redis answers TRYAGAIN before
// the script runs, where a key the script built would have failed the script inside ("non local key"). A call made in
// that moment is retried by ioredis, or fails as a redirection its caller answers 5xx for (ioredis does not retry an
// auto-pipelined batch whose commands were refused differently); once the slot has moved, it goes through. A private
// 3-master cluster: resharding a slot of the shared one would disturb the tests running beside this one.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Redis } from 'ioredis';
import { createRedisClient, connectRedis, type RedisClient } from './connect.ts';
import { KeySpace } from './keys.ts';
import { Scripts } from './scripts.ts';
import { SessionStore } from '../session-store.ts';
import { OrphanStore } from '../orphan-store.ts';
import { startRedisCluster, type RedisClusterProcess } from '../../../tests/support/redis-harness.ts';
import { fp, placementA } from '../../../tests/support/core.ts';

let cluster: RedisClusterProcess;
let client: RedisClient;
before(async () => {
  cluster = await startRedisCluster();
  client = createRedisClient({ REDIS_URL: '', REDIS_CLUSTER_NODES: cluster.seeds, REDIS_PASSWORD: '', REDIS_TLS: false, CORE_TIMEOUT_MS: 10_000 });
  await connectRedis(client);
});
after(async () => {
  client.disconnect();
  await cluster.stop();
});

/**
 * The resharding of `key`'s slot to another master, stopped after `first` moved (redis-cli --cluster reshard moves a
 * slot's keys in GETKEYSINSLOT batches, in no order we choose); `finish` moves the rest and then the slot itself.
 */
async function reshardingStartedWith(key: string, first: string): Promise<{ finish(): Promise<void>; close(): void }> {
  const nodes = cluster.nodes.map((n) => new Redis({ host: '127.0.0.1', port: n.port, lazyConnect: true }));
  const slot = Number(await nodes[0]!.cluster('KEYSLOT', key));
  const counts = await Promise.all(nodes.map(async (n) => Number(await n.cluster('COUNTKEYSINSLOT', slot))));
  const from = nodes[counts.findIndex((c) => c > 0)]!;
  const to = nodes.find((n) => n !== from)!;
  const [fromId, toId] = await Promise.all([from.cluster('MYID'), to.cluster('MYID')]);
  await to.cluster('SETSLOT', slot, 'IMPORTING', fromId);
  await from.cluster('SETSLOT', slot, 'MIGRATING', toId);
  await from.migrate('127.0.0.1', to.options.port!, first, 0, 5000);
  return {
    async finish() {
      for (;;) {
        const left = await from.cluster('GETKEYSINSLOT', slot, 100);
        if (left.length === 0) break;
        await from.migrate('127.0.0.1', to.options.port!, '', 0, 5000, 'KEYS', ...left);
      }
      for (const n of nodes) await n.cluster('SETSLOT', slot, 'NODE', toId);
    },
    close() {
      for (const n of nodes) n.disconnect();
    },
  };
}

test('calls made while the quiet hash has moved ahead of its bucket are redirected, never failed inside a script', async () => {
  // One bucket, so every key of the test is in one slot.
  const keys = new KeySpace('reshard', 1);
  const scripts = await Scripts.register(client);
  const packing = new SessionStore(client, keys, scripts, { tombstoneTtlMs: 60_000, quietRecords: true });
  const unpacking = new SessionStore(client, keys, scripts, { tombstoneTtlMs: 60_000, quietRecords: false });
  const t0 = Date.now();
  const quiet = await packing.open({ sessionId: 'rs-quiet', fingerprint: fp(), now: t0, liveFrom: t0, windowMs: 60_000, placement: placementA });
  const own = await unpacking.open({ sessionId: 'rs-own', fingerprint: fp(), now: t0, liveFrom: t0, windowMs: 60_000, placement: placementA });
  if (quiet.code !== 'OPENED' || own.code !== 'OPENED') return assert.fail(`${quiet.code} ${own.code}`);
  const b = keys.bucket(0);
  assert.equal(await client.hexists(b.quiet, 'rs-quiet'), 1);

  // The slot's resharding, stopped after its first key moved: the quiet hash.
  const resharding = await reshardingStartedWith(b.quiet, b.quiet);
  try {

    const now = t0 + 1000;
    const orphans = new OrphanStore(client, keys, scripts);
    // Each call as a service makes it: mid-resharding it may fail, but only as a redirection the caller answers 5xx
    // for (the Broker redelivers), never inside the script; made again once the slot has moved, it goes through.
    const calls = {
      beats: () => packing.heartbeatMany([{ sessionId: 'rs-quiet', liveFrom: now }, { sessionId: 'rs-own', liveFrom: now }], now),
      hold: () => packing.hold('rs-own', fp('hold'), now, 5000),
      owned: () => orphans.owned([{ sessionId: 'rs-quiet', incarnation: quiet.incarnation }, { sessionId: 'rs-own', incarnation: own.incarnation }]),
      claim: () => packing.claimDestroy({ sessionId: 'rs-quiet', fingerprint: 'close-rs-quiet', cause: 'closed', now }),
    };
    const during = await Promise.all(Object.values(calls).map((call) => call().then(() => null, (err: unknown) => String(err))));
    const failures = during.filter((e) => e !== null);
    for (const e of failures) assert.match(e, /TRYAGAIN|ASK|redirections/, 'a redirection, not a script that failed inside');
    await resharding.finish();

    const beats = await calls.beats();
    assert.deepEqual(beats.map((r) => r.code === 'REFRESHED' && r.deadline), [now + 60_000, now + 60_000]);
    assert.match((await calls.hold()).code, /^(HELD|DUPLICATE)$/);
    assert.deepEqual(await calls.owned(), [true, true]);
    assert.match((await calls.claim()).code, /^(CLAIMED|DUPLICATE)$/);
    assert.equal((await packing.inspect('rs-quiet'))?.state, 'destroying');
    assert.equal((await packing.inspect('rs-own'))?.state, 'active');
  } finally {
    resharding.close();
  }
});

test('a due claim that meets a record already moved by a resharding claims nothing, and claims it all once the slot has moved', async () => {
  // Two due sessions of one bucket, each with a record of its own; the resharding has moved the second's record only.
  // Before, the claim made the first session's claim and then failed on the second, so the first was destroying with
  // nobody told until the stall watchdog resumed it.
  const keys = new KeySpace('reshard-due', 1);
  const scripts = await Scripts.register(client);
  const store = new SessionStore(client, keys, scripts, { tombstoneTtlMs: 60_000, quietRecords: false });
  const t0 = Date.now();
  for (const [id, windowMs] of [['due-a', 1000], ['due-b', 2000]] as const) {
    const r = await store.open({ sessionId: id, fingerprint: fp(), now: t0, liveFrom: t0, windowMs, placement: placementA });
    assert.equal(r.code, 'OPENED');
  }
  const b = keys.bucket(0);
  // Every key the claim declares exists, as in a bucket that has seen destroys, outages and quiet records: with one
  // missing, Redis answers TRYAGAIN before the script runs, and the script's own order is not reached.
  await Promise.all([
    client.zadd(b.destroying, t0 + 600_000, 'placeholder'), client.zadd(b.blind, t0, 'placeholder'),
    client.hset(b.watch, 'placeholder', '1'), client.hset(b.quiet, 'placeholder', '1'),
  ]);
  const resharding = await reshardingStartedWith(b.deadlines, keys.session('due-b').session);
  try {

    const now = t0 + 5000;
    await assert.rejects(store.claimDue(0, now, 100), /non local key/);
    await resharding.finish();
    assert.equal((await store.inspect('due-a'))?.state, 'active', 'the failed claim claimed nothing');
    assert.deepEqual((await store.claimDue(0, now, 100)).claimed.map((c) => c.sessionId), ['due-a', 'due-b']);
  } finally {
    resharding.close();
  }
});
