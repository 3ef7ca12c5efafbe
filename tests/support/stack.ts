// The stack launcher lives with `npm start` (tools/local-stack/stack.ts); tests import it from here, with a
// connection to a running stack's session core.
import { HTTP, type CloudEvent } from 'cloudevents';
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

/** Posts an event to a running stack's Broker as the inference pipeline (binary mode, its token); answers the status. */
export async function sendAsPipeline(stack: { brokerUrl: string; tokens: Readonly<Record<string, string>> }, event: CloudEvent<unknown>): Promise<number> {
  const m = HTTP.binary(event);
  const res = await fetch(stack.brokerUrl, { method: 'POST', headers: { ...(m.headers as Record<string, string>), authorization: `Bearer ${stack.tokens['inference-pipeline']}` }, body: m.body as string });
  await res.body?.cancel();
  return res.status;
}
