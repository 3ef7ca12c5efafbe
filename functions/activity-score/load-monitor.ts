// How loaded the fleet is, shared by every replica through Redis: each process counts the events it scores per
// second and the runtimes its sessions live on, adds them to per-second counters in Redis about once a second, and
// one process per interval (whoever takes the evaluation lease) turns the fleet-wide event rate and the runtimes'
// GPU memory reports into a load tier (load-policy.ts) stored in Redis, which every replica and the idle checker read.
// Only registered runtimes (RUNTIMES) are ever counted or polled: every runtime an entry names by its URL, and those a
// wildcard entry admits while sessions on them are scored.
//
// Keys (hash tag {load}, so they share one slot on a Cluster; prefix = REDIS_KEY_PREFIX):
//   <prefix>:{load}:events:<second>  STRING  events scored during that epoch second, all replicas together (expires)
//   <prefix>:{load}:runtimes         ZSET    registered runtime endpoint -> when a session on it was last scored (ms)
//   <prefix>:{load}:tier             STRING  the current tier; expires after three intervals, so a fleet whose
//                                            evaluators all stopped falls back to `normal`
//   <prefix>:{load}:evaluating       STRING  the evaluation lease (SET NX PX), so one process polls the runtimes
import type { Config } from '../core/config.ts';
import type { RedisClient } from '../core/redis/connect.ts';
import type { Logger } from '../core/log.ts';
import type { OutboundAddressPolicy } from '../core/outbound-address.ts';
import { createEngineClient } from '../core/runtime-adapters/index.ts';
import { createRuntimeClient, type RuntimeClient } from '../core/runtime-client.ts';
import type { RuntimeRegistry } from '../core/runtime-registry.ts';
import { loadKeys } from '../core/redis/keys.ts';
import { assessLoad, LOAD_TIERS, type LoadAssessment, type LoadPolicy, type LoadTier } from './load-policy.ts';

/** The keys the load monitor uses under a prefix (named in functions/core/redis/keys.ts). */
export { loadKeys } from '../core/redis/keys.ts';

/** Most runtimes polled for memory in one evaluation. */
const MAX_RUNTIMES_POLLED = 256;
/** How often counted events are added to Redis. */
const FLUSH_EVERY_MS = 1000;

/** What a LoadMonitor needs. */
export interface LoadMonitorOptions {
  /** REDIS_KEY_PREFIX. */
  prefix: string;
  policy: LoadPolicy;
  /** A runtime is polled while a session on it was scored within this long. */
  runtimeTtlMs: number;
  /** Reads a runtime's GET /v1/memory; without it no memory pressure is seen. */
  runtime?: Pick<RuntimeClient, 'memory'>;
  /** The registered runtimes: the only ones counted and polled. */
  registry: RuntimeRegistry;
  logger: Logger;
  now: () => number;
}

/** The fleet's load tier, measured and shared through Redis (see the top of this file). */
export class LoadMonitor {
  readonly #redis: RedisClient;
  readonly #opts: LoadMonitorOptions;
  readonly #keys: ReturnType<typeof loadKeys>;
  #events = new Map<number, number>();
  #runtimes = new Map<string, number>();
  #tier: LoadTier = 'normal';
  #tierReadAt = Number.NEGATIVE_INFINITY;
  #timers: NodeJS.Timeout[] = [];

  constructor(redis: RedisClient, opts: LoadMonitorOptions) {
    this.#redis = redis;
    this.#opts = opts;
    this.#keys = loadKeys(opts.prefix);
  }

  /** The policy the tier is decided by. */
  get policy(): LoadPolicy {
    return this.#opts.policy;
  }

  /** Counts one scored event (at `at`, ms) and the runtime its session lives on, if registered; no I/O. */
  recordEvent(at: number, runtimeUrl?: string): void {
    const second = Math.floor(at / 1000);
    this.#events.set(second, (this.#events.get(second) ?? 0) + 1);
    const endpoint = runtimeUrl === undefined || runtimeUrl === '' ? undefined : this.#opts.registry.lookup(runtimeUrl)?.endpoint;
    if (endpoint !== undefined) this.#runtimes.set(endpoint, Math.max(at, this.#runtimes.get(endpoint) ?? 0));
  }

  /** Adds what was counted since the last flush to the shared counters. */
  async flush(): Promise<void> {
    const events = this.#events;
    const runtimes = this.#runtimes;
    this.#events = new Map();
    this.#runtimes = new Map();
    const keepMs = Math.max(60_000, this.#opts.policy.evaluateEveryMs * 3);
    try {
      const writes: Promise<unknown>[] = [];
      for (const [second, count] of events) {
        const key = this.#keys.events(second);
        writes.push(this.#redis.incrby(key, count), this.#redis.pexpire(key, keepMs));
      }
      if (runtimes.size > 0) {
        writes.push(this.#redis.zadd(this.#keys.runtimes, 'GT', ...[...runtimes].flatMap(([url, at]) => [at, url])));
        writes.push(this.#redis.pexpire(this.#keys.runtimes, this.#opts.runtimeTtlMs * 2));
      }
      await Promise.all(writes);
    } catch (err) {
      // Put the counts back for the next flush: a Redis blip must not read as a quiet fleet.
      for (const [second, count] of events) this.#events.set(second, (this.#events.get(second) ?? 0) + count);
      for (const [url, at] of runtimes) this.#runtimes.set(url, Math.max(at, this.#runtimes.get(url) ?? 0));
      throw err;
    }
  }

  /** The tier last read or decided (no I/O); `normal` until then. */
  tier(): LoadTier {
    return this.#tier;
  }

  /** Reads the shared tier from Redis (`normal` when none is set). */
  async refresh(): Promise<LoadTier> {
    const stored = await this.#redis.get(this.#keys.tier);
    this.#tier = LOAD_TIERS.includes(stored as LoadTier) ? (stored as LoadTier) : 'normal';
    this.#tierReadAt = this.#opts.now();
    return this.#tier;
  }

  /** The shared tier, read again from Redis when the last read is older than the evaluation interval. */
  async currentTier(): Promise<LoadTier> {
    if (this.#opts.now() - this.#tierReadAt < this.#opts.policy.evaluateEveryMs) return this.#tier;
    return this.refresh();
  }

  /** Fleet-wide events per second over the last evaluation interval's complete seconds. */
  async eventRate(): Promise<number> {
    const seconds = Math.max(1, Math.round(this.#opts.policy.evaluateEveryMs / 1000));
    const current = Math.floor(this.#opts.now() / 1000);
    const keys = Array.from({ length: seconds }, (_, i) => this.#keys.events(current - 1 - i));
    const counts = await this.#redis.mget(...keys);
    return counts.reduce((sum, c) => sum + (c === null ? 0 : Number(c) || 0), 0) / seconds;
  }

  /** Memory reports of the runtimes that sessions were scored on recently; unreachable runtimes are skipped. */
  async memoryReports(): Promise<{ runtimeUrl: string; totalBytes: number; usedBytes: number }[]> {
    const runtime = this.#opts.runtime;
    if (!runtime) return [];
    const now = this.#opts.now();
    await this.#redis.zremrangebyscore(this.#keys.runtimes, '-inf', `(${now - this.#opts.runtimeTtlMs}`);
    const seen = await this.#redis.zrevrange(this.#keys.runtimes, 0, MAX_RUNTIMES_POLLED - 1);
    // Registered by URL first, then the recently used ones a wildcard admits; never one the registry does not know.
    const fixed = this.#opts.registry.fixedEndpoints();
    const urls = [...new Set([...fixed, ...seen.filter((url) => this.#opts.registry.lookup(url) !== undefined)])].slice(0, MAX_RUNTIMES_POLLED);
    const reports = await Promise.allSettled(urls.map(async (runtimeUrl) => ({ runtimeUrl, ...(await runtime.memory(runtimeUrl)) })));
    const out: { runtimeUrl: string; totalBytes: number; usedBytes: number }[] = [];
    reports.forEach((r, i) => {
      if (r.status === 'fulfilled') out.push(r.value);
      else this.#opts.logger.debug({ runtimeUrl: urls[i], err: (r.reason as Error).message }, 'runtime memory report unavailable');
    });
    return out;
  }

  /**
   * Decides the tier from the fleet's event rate and memory pressure and stores it for every replica, if this
   * process holds the evaluation lease for this interval (always, with `force`); otherwise reads the shared tier.
   * Returns the assessment made, or undefined when another process made it.
   */
  async evaluate(opts: { force?: boolean } = {}): Promise<LoadAssessment | undefined> {
    const intervalMs = this.#opts.policy.evaluateEveryMs;
    if (!opts.force) {
      const lease = await this.#redis.set(this.#keys.evaluating, '1', 'PX', Math.max(50, intervalMs - 100), 'NX');
      if (lease === null) {
        await this.refresh();
        return undefined;
      }
    }
    await this.flush();
    const [eventsPerSecond, memory, stored] = await Promise.all([this.eventRate(), this.memoryReports(), this.#redis.get(this.#keys.tier)]);
    const previous = LOAD_TIERS.includes(stored as LoadTier) ? (stored as LoadTier) : undefined;
    const assessment = assessLoad({ eventsPerSecond, memory }, this.#opts.policy, previous);
    await this.#redis.set(this.#keys.tier, assessment.tier, 'PX', intervalMs * 3);
    if (assessment.tier !== this.#tier) {
      this.#opts.logger.info({ ...assessment, eventsPerSecond, runtimes: memory.length, previous: this.#tier }, 'load tier changed');
    }
    this.#tier = assessment.tier;
    this.#tierReadAt = this.#opts.now();
    return assessment;
  }

  /** Flushes counts every second and evaluates (or follows) the tier every interval, until stop(). */
  start(): void {
    if (this.#timers.length > 0) return;
    const quietly = (what: string, work: () => Promise<unknown>) => () => {
      work().catch((err: unknown) => this.#opts.logger.warn({ err: (err as Error).message }, `load monitor could not ${what}`));
    };
    this.#timers.push(setInterval(quietly('count events', () => this.flush()), FLUSH_EVERY_MS));
    this.#timers.push(setInterval(quietly('evaluate the load tier', () => this.evaluate()), this.#opts.policy.evaluateEveryMs));
    for (const t of this.#timers) t.unref();
  }

  /** Stops the timers and adds what is still counted to Redis. */
  async stop(): Promise<void> {
    for (const t of this.#timers) clearInterval(t);
    this.#timers = [];
    await this.flush().catch((err: unknown) => this.#opts.logger.warn({ err: (err as Error).message }, 'load monitor could not flush at stop'));
  }
}

/**
 * The runtime client the load monitor reads memory reports with: one attempt per report, the runtime tier's timeout,
 * registered runtimes only, at addresses the outbound policy allows.
 */
export function createMemoryProbe(
  config: Pick<Config, 'RUNTIME_TIMEOUT_MS'>,
  logger: Logger,
  outbound: { registry: RuntimeRegistry; addressPolicy: OutboundAddressPolicy },
): RuntimeClient {
  // Through the engine adapters: each runtime's memory is read from its own API (native /v1/memory, llama-server's
  // /props and /slots, SGLang's or vLLM's /metrics; vLLM's as a share, which the policy reads as a ratio like the rest).
  return createEngineClient(createRuntimeClient({
    registry: outbound.registry,
    addressPolicy: outbound.addressPolicy,
    timeoutMs: config.RUNTIME_TIMEOUT_MS,
    retries: 0,
    baseBackoffMs: 1,
    maxBackoffMs: 1,
    // A runtime that stops answering is skipped without waiting out its timeout at every evaluation.
    breaker: { errorThresholdPercentage: 50, resetTimeoutMs: 30_000, volumeThreshold: 3, rollingCountTimeoutMs: 60_000 },
    logger,
  }), outbound.registry);
}
