// A session core wired to the shared test Redis of one topology, under its own key prefix.
import { KeySpace } from '../../functions/core/redis/keys.ts';
import { Scripts } from '../../functions/core/redis/scripts.ts';
import { SessionStore, drawReleaseToken, eventFingerprint, unpackQuietRecord, type Placement } from '../../functions/core/session-store.ts';
import type { RedisClient } from '../../functions/core/redis/connect.ts';
import { dropPrefix, testRedis, testRedisEnv, uniquePrefix, type Topology } from './redis.ts';

export interface TestCore {
  store: SessionStore;
  redis: RedisClient;
  keys: KeySpace;
  prefix: string;
  close(): Promise<void>;
}

/** Builds a core on a fresh prefix; `close` removes its keys and disconnects. */
export async function testCore(topology: Topology, opts: { buckets?: number; tombstoneTtlMs?: number; quietRecords?: boolean } = {}): Promise<TestCore> {
  const redis = await testRedis(topology);
  const prefix = uniquePrefix();
  const keys = new KeySpace(prefix, opts.buckets ?? 8);
  const scripts = await Scripts.register(redis);
  // Quiet records on unless a test says otherwise, so the core suites run both forms (what an open packs, and what it
  // cannot, or what another script has opened out), on both topologies.
  const store = new SessionStore(redis, keys, scripts, { tombstoneTtlMs: opts.tombstoneTtlMs ?? 60_000, quietRecords: opts.quietRecords ?? true });
  return {
    store, redis, keys, prefix,
    async close() {
      await dropPrefix(redis, prefix);
      redis.disconnect();
    },
  };
}

/** A session's record fields as Redis holds them, wherever: its own hash, or quiet in its bucket's hash. */
export async function recordOf(core: Pick<TestCore, 'redis' | 'keys'>, sessionId: string): Promise<Record<string, string>> {
  const k = core.keys.session(sessionId);
  const own = await core.redis.hgetall(k.session);
  if (own.s !== undefined) return own;
  const packed = await core.redis.hget(k.quiet, sessionId);
  return packed === null ? own : unpackQuietRecord(packed);
}

/**
 * Makes a quiet record a hash of its own (as every script but open and heartbeat does before reading it), so a test
 * can change its fields in place, as an upgrade or a fault would have left them. Returns the record's key.
 */
export async function openOut(core: Pick<TestCore, 'redis' | 'keys'>, sessionId: string): Promise<string> {
  const k = core.keys.session(sessionId);
  const packed = await core.redis.hget(k.quiet, sessionId);
  if (packed !== null) await core.redis.multi().hset(k.session, unpackQuietRecord(packed)).hdel(k.quiet, sessionId).exec();
  return k.session;
}

let seq = 0;
/** A fresh event fingerprint, as if from a distinct CloudEvent. */
export function fp(label = 'e'): string {
  seq += 1;
  return eventFingerprint('test-source', `${label}-${seq}`);
}

export const placementA: Placement = { node: 'gpu-node-a', runtimeUrl: 'http://runtime-a.test:8000', gpuBytes: 1000 };
export const placementB: Placement = { node: 'gpu-node-b', runtimeUrl: 'http://runtime-b.test:8000/rt', gpuBytes: 3000 };

/**
 * A destroy waiting for its GPU release, as destroy-dispatch leaves it (opened, claimed, its release requested under
 * a fresh token): what gpu-release may act on. Its incarnation and the token an answer must echo.
 */
export async function pendingRelease(store: SessionStore, sessionId: string, placement: Placement): Promise<{ incarnation: number; token: string }> {
  const now = Date.now();
  const opened = await store.open({ sessionId, fingerprint: `open-${sessionId}`, now, liveFrom: now, windowMs: 60_000, placement });
  if (opened.code !== 'OPENED') throw new Error(`${sessionId}: ${opened.code}`);
  await store.claimDestroy({ sessionId, fingerprint: `close-${sessionId}`, cause: 'closed', now });
  const token = drawReleaseToken();
  await store.advance(sessionId, opened.incarnation, 'gpu_release_requested', now, { attempt: 1, token });
  return { incarnation: opened.incarnation, token };
}

/** The settings a process needs to work on a test core's keys (its Redis, key prefix and buckets), plus `extra`. */
export function coreEnv(core: TestCore, topology: Topology, extra: Record<string, string> = {}): Record<string, string> {
  return { ...testRedisEnv(topology), REDIS_KEY_PREFIX: core.prefix, INDEX_BUCKETS: String(core.keys.buckets), ...extra };
}

/** Opens a session with a 1000 ms window at `now`. */
export function openAt(core: TestCore, sessionId: string, now: number, placement: Placement = placementA, fingerprint = fp('open')) {
  return core.store.open({ sessionId, fingerprint, now, liveFrom: now, windowMs: 1000, placement });
}
