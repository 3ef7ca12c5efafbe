// Started once per `node --test` run: one single Redis and one 3-master Redis Cluster shared by every test file.
// Each test isolates itself with a unique key prefix (see tests/support/redis.ts), so the servers can be shared.
import { startRedis, startRedisCluster, type RedisClusterProcess, type RedisProcess } from './redis-harness.ts';

let single: RedisProcess | undefined;
let cluster: RedisClusterProcess | undefined;

export async function globalSetup(): Promise<void> {
  [single, cluster] = await Promise.all([startRedis(), startRedisCluster()]);
  // Test files run in child processes, which inherit the environment set here.
  process.env.SR_TEST_REDIS_URL = single.url;
  process.env.SR_TEST_REDIS_CLUSTER_NODES = cluster.seeds;
}

export async function globalTeardown(): Promise<void> {
  await Promise.all([single?.stop(), cluster?.stop()]);
}
