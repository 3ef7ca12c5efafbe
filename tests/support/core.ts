// A session core wired to the shared test Redis of one topology, under its own key prefix.
import { KeySpace } from '../../functions/core/redis/keys.ts';
import { Scripts } from '../../functions/core/redis/scripts.ts';
import { SessionStore, eventFingerprint, type Placement } from '../../functions/core/session-store.ts';
import type { RedisClient } from '../../functions/core/redis/connect.ts';
import { dropPrefix, testRedis, uniquePrefix, type Topology } from './redis.ts';

export interface TestCore {
  store: SessionStore;
  redis: RedisClient;
  keys: KeySpace;
  prefix: string;
  close(): Promise<void>;
}

/** Builds a core on a fresh prefix; `close` removes its keys and disconnects. */
export async function testCore(topology: Topology, opts: { buckets?: number; tombstoneTtlMs?: number } = {}): Promise<TestCore> {
  const redis = await testRedis(topology);
  const prefix = uniquePrefix();
  const keys = new KeySpace(prefix, opts.buckets ?? 8);
  const scripts = await Scripts.register(redis);
  const store = new SessionStore(redis, keys, scripts, { tombstoneTtlMs: opts.tombstoneTtlMs ?? 60_000 });
  return {
    store, redis, keys, prefix,
    async close() {
      await dropPrefix(redis, prefix);
      redis.disconnect();
    },
  };
}

let seq = 0;
/** A fresh event fingerprint, as if from a distinct CloudEvent. */
export function fp(label = 'e'): string {
  seq += 1;
  return eventFingerprint('test-source', `${label}-${seq}`);
}

export const placementA: Placement = { node: 'gpu-node-a', runtimeUrl: 'http://runtime-a.test:8000', gpuBytes: 1000 };
export const placementB: Placement = { node: 'gpu-node-b', runtimeUrl: 'http://runtime-b.test:8000/rt', gpuBytes: 3000 };

/** Opens a session with a 1000 ms window at `now`. */
export function openAt(core: TestCore, sessionId: string, now: number, placement: Placement = placementA, fingerprint = fp('open')) {
  return core.store.open({ sessionId, fingerprint, now, liveFrom: now, windowMs: 1000, placement });
}
