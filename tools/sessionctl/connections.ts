// What sessionctl talks to: the session core in Redis (the same settings as the functions, via loadConfig) and the
// Broker (its ingress for events, its admin API for dead letters and counters). Both fail fast with a message
// that names the address, so an operator sees at once which part is down.
import { HTTP, type CloudEvent } from 'cloudevents';
import { ConfigError, loadConfig, type Config } from '../../functions/core/config.ts';
import { connectRedis, createRedisClient, type RedisClient } from '../../functions/core/redis/connect.ts';
import { KeySpace } from '../../functions/core/redis/keys.ts';
import { Scripts } from '../../functions/core/redis/scripts.ts';
import { SessionStore } from '../../functions/core/session-store.ts';
import { DEFAULT_BROKER_URL } from './command.ts';
import { RuntimeFailure, UsageError } from './errors.ts';


/** An open connection to the session core. */
export interface CoreConnection {
  readonly config: Config;
  readonly redis: RedisClient;
  readonly keys: KeySpace;
  readonly store: SessionStore;
  close(): void;
}

/** Reads the core settings from the environment; a bad value is a usage error naming the variable. */
export function readConfig(env: NodeJS.ProcessEnv): Config {
  try {
    return loadConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(err.message, { cause: err });
    throw err;
  }
}

function redisAddress(config: Config): string {
  return config.REDIS_CLUSTER_NODES.trim() !== '' ? `the Redis Cluster at ${config.REDIS_CLUSTER_NODES}` : `Redis at ${config.REDIS_URL}`;
}

/** Connects to the session core the environment names; RuntimeFailure when Redis cannot be reached. */
export async function connectCore(env: NodeJS.ProcessEnv): Promise<CoreConnection> {
  const config = readConfig(env);
  // An operator's tool waits a little longer per command than a handler on the hot path does.
  const redis = createRedisClient({ ...config, CORE_TIMEOUT_MS: Math.max(config.CORE_TIMEOUT_MS, 5000) });
  // Connection errors surface through connectRedis and failed commands; the event would only repeat them.
  redis.on('error', () => undefined);
  try {
    await connectRedis(redis);
    const keys = new KeySpace(config.REDIS_KEY_PREFIX, config.INDEX_BUCKETS);
    const store = new SessionStore(redis, keys, await Scripts.register(redis), { tombstoneTtlMs: config.TOMBSTONE_TTL_MS, releaseMaxAttempts: config.RELEASE_MAX_ATTEMPTS, quietRecords: config.SESSION_RECORD_PACKING });
    return { config, redis, keys, store, close: () => redis.disconnect() };
  } catch (err) {
    redis.disconnect();
    throw new RuntimeFailure(`cannot reach ${redisAddress(config)}: ${(err as Error).message}`, { cause: err });
  }
}

/** The Broker's base URL from --broker, else SESSIONCTL_BROKER_URL, else the default; UsageError if not http(s). */
export function brokerUrl(flag: string | undefined, env: NodeJS.ProcessEnv): URL {
  const text = flag ?? (env.SESSIONCTL_BROKER_URL || DEFAULT_BROKER_URL);
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new UsageError(`--broker ${JSON.stringify(text)} is not a URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new UsageError(`--broker ${JSON.stringify(text)} is not an http(s) URL`);
  return url;
}

/** An answer of the Broker: status and the body, parsed when it is JSON. */
export interface BrokerAnswer {
  status: number;
  body: unknown;
}

const BROKER_TIMEOUT_MS = 30_000;

async function request(base: URL, path: string, init: RequestInit): Promise<BrokerAnswer> {
  const url = new URL(path, base);
  let res: Response;
  try {
    res = await fetch(url, { ...init, signal: AbortSignal.timeout(BROKER_TIMEOUT_MS) });
  } catch (err) {
    const cause = (err as { cause?: Error }).cause;
    throw new RuntimeFailure(`cannot reach the Broker at ${base.href}: ${cause?.message ?? (err as Error).message}`, { cause: err });
  }
  const text = await res.text();
  let body: unknown = text;
  if ((res.headers.get('content-type') ?? '').includes('json') && text !== '') {
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
  }
  return { status: res.status, body };
}

/** Sends one CloudEvent to the Broker's ingress in binary mode, with the sender's bearer token when given. */
export function postEvent(base: URL, event: CloudEvent<unknown>, token?: string): Promise<BrokerAnswer> {
  const message = HTTP.binary(event);
  const headers = Object.fromEntries(Object.entries(message.headers).map(([k, v]) => [k, String(v)]));
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  return request(base, base.pathname, { method: 'POST', headers, body: message.body as string });
}

/** Calls the admin API (GET, POST or DELETE under /admin/) of the local Broker or the deployed dead-letter receiver. */
export async function brokerAdmin(base: URL, method: 'GET' | 'POST' | 'DELETE', path: string): Promise<BrokerAnswer> {
  const answer = await request(base, `/admin/${path}`, { method });
  if (answer.status === 404 && (typeof answer.body !== 'object' || answer.body === null)) {
    throw new RuntimeFailure(`the Broker at ${base.href} has no admin API (is it the local Broker of \`npm start\`?)`);
  }
  return answer;
}
