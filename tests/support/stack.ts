// The stack launcher lives with `npm start` (tools/local-stack/stack.ts); tests import it from here, with a
// connection to a running stack's session core.
import { connectRedis, createRedisClient, type RedisClient } from '../../functions/core/redis/connect.ts';
import { KeySpace } from '../../functions/core/redis/keys.ts';
import { Scripts } from '../../functions/core/redis/scripts.ts';
import { SessionStore } from '../../functions/core/session-store.ts';

export * from '../../tools/local-stack/stack.ts';

/** A client of a running stack's Redis (its password given) and the session core on its key prefix. */
export async function stackStore(stack: { redisUrl: string; redisPassword: string; keyPrefix: string }): Promise<{ redis: RedisClient; store: SessionStore }> {
  const redis = createRedisClient({ REDIS_URL: stack.redisUrl, REDIS_CLUSTER_NODES: '', REDIS_PASSWORD: stack.redisPassword, REDIS_TLS: false, CORE_TIMEOUT_MS: 5000 });
  await connectRedis(redis);
  return { redis, store: new SessionStore(redis, new KeySpace(stack.keyPrefix, 32), await Scripts.register(redis), { tombstoneTtlMs: 60_000 }) };
}
