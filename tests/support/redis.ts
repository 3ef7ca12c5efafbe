// Test access to the servers started by global-setup.ts: a client per test, a key prefix nobody else uses, and
// cleanup of exactly that prefix afterwards.
import { randomBytes } from 'node:crypto';
import { createRedisClient, connectRedis, type RedisClient } from '../../functions/core/redis/connect.ts';

export type Topology = 'single' | 'cluster';

/** The topologies a suite runs on: both unless SR_TEST_TOPOLOGY narrows it. */
export const TOPOLOGIES: readonly Topology[] = (process.env.SR_TEST_TOPOLOGY?.split(',') as Topology[] | undefined) ?? ['single', 'cluster'];

/** A unique, valid REDIS_KEY_PREFIX for one test. */
export function uniquePrefix(): string {
  return `t${randomBytes(5).toString('hex')}`;
}

/** Redis settings (as REDIS_* env) for the shared test server of a topology. */
export function testRedisEnv(topology: Topology): { REDIS_URL: string; REDIS_CLUSTER_NODES: string } {
  const url = process.env.SR_TEST_REDIS_URL;
  const seeds = process.env.SR_TEST_REDIS_CLUSTER_NODES;
  if (!url || !seeds) throw new Error('run tests through `npm test` (global setup starts the Redis servers)');
  return topology === 'cluster' ? { REDIS_URL: url, REDIS_CLUSTER_NODES: seeds } : { REDIS_URL: url, REDIS_CLUSTER_NODES: '' };
}

/** A connected client to the shared test server of a topology. */
export async function testRedis(topology: Topology): Promise<RedisClient> {
  const client = createRedisClient({ ...testRedisEnv(topology), REDIS_PASSWORD: '', REDIS_TLS: false, CORE_TIMEOUT_MS: 5000 });
  await connectRedis(client);
  return client;
}

/** Deletes every key under a prefix (test cleanup only; production code never SCANs). */
export async function dropPrefix(client: RedisClient, prefix: string): Promise<void> {
  const nodes = 'nodes' in client && typeof client.nodes === 'function' ? client.nodes('master') : [client];
  for (const node of nodes) {
    let cursor = '0';
    do {
      const [next, batch] = await node.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
      cursor = next;
      for (const key of batch) await client.del(key);
    } while (cursor !== '0');
  }
}
