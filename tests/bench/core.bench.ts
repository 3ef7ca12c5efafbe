// npm run bench:core — heartbeat transitions per second (pipelined) and Redis bytes per active session, at 100k
// and 1M sessions, against a private local redis-server. A benchmark, not a test: it prints figures and exits 0
// unless a target is missed (then 1), so CI can run it on demand without it gating `npm test`.
import { cpus, totalmem } from 'node:os';
import { performance } from 'node:perf_hooks';
import { KeySpace } from '../../functions/core/redis/keys.ts';
import { Scripts } from '../../functions/core/redis/scripts.ts';
import { createRedisClient, connectRedis } from '../../functions/core/redis/connect.ts';
import { SessionStore, eventFingerprint } from '../../functions/core/session-store.ts';
import { startRedis } from '../support/redis-harness.ts';

const SIZES = (process.env.BENCH_SIZES ?? '100000,1000000').split(',').map(Number);
const HEARTBEATS = Number(process.env.BENCH_HEARTBEATS ?? 500_000);
const IN_FLIGHT = Number(process.env.BENCH_IN_FLIGHT ?? 8000);
const TARGET_HEARTBEATS_PER_S = 100_000;
const TARGET_BYTES_PER_SESSION = 300;

/** Runs `count` operations in waves of IN_FLIGHT issued together (the store batches and ioredis pipelines them). */
async function drive(count: number, op: (i: number) => Promise<unknown>): Promise<number> {
  const started = performance.now();
  for (let base = 0; base < count; base += IN_FLIGHT) {
    const wave: Promise<unknown>[] = [];
    for (let i = base; i < Math.min(count, base + IN_FLIGHT); i++) wave.push(op(i));
    await Promise.all(wave);
  }
  return performance.now() - started;
}

async function usedMemory(redis: ReturnType<typeof createRedisClient>): Promise<number> {
  const info = await redis.info('memory');
  return Number(/used_memory:(\d+)/.exec(info)?.[1]);
}

const server = await startRedis();
const redis = createRedisClient({ REDIS_URL: server.url, REDIS_CLUSTER_NODES: '', REDIS_PASSWORD: '', REDIS_TLS: false, CORE_TIMEOUT_MS: 30_000 });
await connectRedis(redis);
const scripts = await Scripts.register(redis);
const version = /redis_version:(\S+)/.exec(await redis.info('server'))?.[1];
console.log(`bench:core — Node ${process.version}, Redis ${version}, ${cpus().length} × ${cpus()[0]?.model}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB`);
console.log('session ids "sess-0000001"…, runtime URLs ~35 chars over 8 nodes, 32 buckets, heartbeats pipelined');

let failed = false;
for (const size of SIZES) {
  await redis.flushall();
  const keys = new KeySpace('sr', 32);
  const store = new SessionStore(redis, keys, scripts, { tombstoneTtlMs: 86_400_000 });
  const id = (i: number) => `sess-${String(i).padStart(7, '0')}`;
  const now = Date.now();
  // Placements are interned per bucket; warm them so the memory delta measures sessions, not the 8×32 interned placements.
  const before = await usedMemory(redis);
  const openMs = await drive(size, (i) =>
    store.open({
      sessionId: id(i), fingerprint: eventFingerprint('bench', `o${i}`), now, liveFrom: now, windowMs: 90_000,
      placement: { node: `gpu-node-${i % 8}`, runtimeUrl: `http://runtime-${i % 8}.inference.svc:8000`, gpuBytes: 2 ** 31 },
    }),
  );
  const bytesPerSession = ((await usedMemory(redis)) - before) / size;
  const beats = Math.min(HEARTBEATS, size * 5);
  // Heartbeats arrive in batches (as a batched delivery hands them over) and are applied in one script call per batch
  // (per bucket on Redis Cluster).
  // Two batches are kept in flight so that Redis works on one while the next is built.
  const hbStarted = performance.now();
  let previous: Promise<unknown> = Promise.resolve();
  for (let base = 0; base < beats; base += IN_FLIGHT) {
    const t = Date.now();
    const wave = Array.from({ length: Math.min(IN_FLIGHT, beats - base) }, (_, j) => ({ sessionId: id((base + j) % size), liveFrom: t }));
    const sent = store.heartbeatMany(wave, t);
    await previous;
    previous = sent;
  }
  await previous;
  const hbMs = performance.now() - hbStarted;
  const perSecond = Math.round((beats / hbMs) * 1000);
  const active = await store.activeCount();
  console.log(
    `${size.toLocaleString('en')} sessions: opened at ${Math.round((size / openMs) * 1000).toLocaleString('en')}/s; ` +
      `heartbeats ${perSecond.toLocaleString('en')}/s (${beats.toLocaleString('en')} pipelined); ` +
      `${bytesPerSession.toFixed(0)} bytes/active session; ${active.toLocaleString('en')} indexed`,
  );
  if (perSecond < TARGET_HEARTBEATS_PER_S) {
    console.log(`  MISSED: heartbeat target ${TARGET_HEARTBEATS_PER_S.toLocaleString('en')}/s`);
    failed = true;
  }
  if (bytesPerSession > TARGET_BYTES_PER_SESSION) {
    console.log(`  MISSED: memory target ${TARGET_BYTES_PER_SESSION} bytes/session`);
    failed = true;
  }
  if (active !== size) {
    console.log(`  MISSED: ${size - active} sessions missing from the deadline index`);
    failed = true;
  }
}
redis.disconnect();
await server.stop();
process.exitCode = failed ? 1 : 0;
