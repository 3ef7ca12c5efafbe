// The mechanisms bench:compare runs the same workload through. Each has two halves: the driver (the main thread:
// creates sessions with a given deadline and applies heartbeats) and the detector (its own worker thread, so its
// timers never wait for the driver's event loop: reports each expiry it finds, with the time it found it). Every
// mechanism talks to its own fresh redis-server and is given the deadline each session really has, so lag is measured
// against the same truth for all.
//
//   sorted-set-floor  one sorted set scored by deadline, one ZADD XX GT per heartbeat wave, one precise timer at the head and a Lua
//                     claim (ZRANGEBYSCORE + ZREM) when it fires, the head re-read every 100 ms: what no deadline
//                     mechanism on Redis can go below.
//   session-reaper    SessionStore.open / heartbeatMany (the heartbeat script, 32 buckets; quiet records on, as
//                     SESSION_RECORD_PACKING=true) and the DeadlineEngine
//                     itself, emitting into a recorder instead of the Broker.
//   sweeper-30s/-5s   one string key per session holding its deadline (MSET per heartbeat wave), a SCAN of every key
//                     each interval with a Lua claim of the due ones per SCAN page (the design documents' 30 s poll).
//   redis-ttl         one key per session with its expiry at the deadline (SET … PXAT per heartbeat), detection by
//                     keyspace notifications (notify-keyspace-events Ex, the __keyevent@0__:expired channel).
//   bullmq            one delayed job per session (jobId = session id), Job.changeDelay on each heartbeat, a Worker
//                     whose processor is the detection.
import { initMetrics } from '../../../functions/core/metrics-provider.ts';
import { Job, Queue, Worker } from 'bullmq';
import { EventType } from '../../../functions/core/contract/events.ts';
import { loadConfig } from '../../../functions/core/config.ts';
import { createLogger } from '../../../functions/core/log.ts';
import { KeySpace } from '../../../functions/core/redis/keys.ts';
import { Scripts } from '../../../functions/core/redis/scripts.ts';
import { connectRedis, createRedisClient, type RedisClient } from '../../../functions/core/redis/connect.ts';
import { SessionStore, eventFingerprint } from '../../../functions/core/session-store.ts';
import { DeadlineEngine } from '../../../functions/heartbeat-timeout/deadline-engine.ts';

/** Where a mechanism's redis-server listens. */
export interface RedisTarget {
  port: number;
  password: string;
}

/** The liveness rule of a workload: a session beats every intervalMs and is dead timeoutMs after its last beat. */
export interface Liveness {
  intervalMs: number;
  timeoutMs: number;
}

/** A session to create: its id and the deadline it has (last beat + timeout), ms since the epoch. */
export interface NewSession {
  id: string;
  deadline: number;
}

/** The main thread's half: writes sessions and heartbeats. */
export interface Driver {
  /** Creates sessions whose deadlines are given (past heartbeats are taken as already received). */
  open(sessions: readonly NewSession[], now: number): Promise<void>;
  /** Applies one heartbeat each, received at `now`: their deadlines become now + timeout. Resolves to how many were refused. */
  heartbeat(ids: readonly string[], now: number): Promise<number>;
  close(): Promise<void>;
}

/** The detector thread's half, running from its creation until stop(). */
export interface Detector {
  stop(): Promise<void>;
}

/** Called by a detector for each session it finds expired, at the moment it finds it (`at` from detectedAt). */
export type OnExpired = (sessionId: string, at: number) => void;

/**
 * The time of a detection, in the epoch ms of Date.now() but to the microsecond: Date.now() counts whole ms, and at the
 * floor's p99 of 2–3 ms a whole ms either side moved the lag ratio by a third. performance.timeOrigin is this thread's
 * start on the wall clock, so the sum agrees with Date.now() to within its truncation (measured: 0.006–1.006 ms ahead,
 * in the main thread and in a worker alike).
 */
export const detectedAt = (): number => performance.timeOrigin + performance.now();

/** One mechanism under comparison. */
export interface Mechanism {
  readonly name: string;
  /** How long after the last deadline a detection still counts (a sweeper needs a whole interval and a sweep). */
  graceMs(liveness: Liveness, defaultGraceMs: number): number;
  /** Server settings the mechanism relies on, applied before anything else. */
  configure?(admin: RedisClient): Promise<void>;
  driver(target: RedisTarget, liveness: Liveness): Promise<Driver>;
  detector(target: RedisTarget, liveness: Liveness, onExpired: OnExpired): Promise<Detector>;
}

/** A client of the project's own kind (RESP2 pinned, as the core uses), for every mechanism alike. */
async function client(target: RedisTarget): Promise<RedisClient> {
  const redis = createRedisClient({ REDIS_URL: `redis://127.0.0.1:${target.port}`, REDIS_CLUSTER_NODES: '', REDIS_PASSWORD: target.password, REDIS_TLS: false, CORE_TIMEOUT_MS: 30_000 });
  await connectRedis(redis);
  return redis;
}

/** A driver's close: its client disconnected. */
function disconnecting(redis: RedisClient): () => Promise<void> {
  return () => {
    redis.disconnect();
    return Promise.resolve();
  };
}

/** Calls a script by its sha, loading it the first time (one round trip per call either way). */
function script(redis: RedisClient, lua: string): (keys: readonly string[], args: readonly (string | number)[]) => Promise<unknown> {
  let sha: string | undefined;
  return async (keys, args) => {
    sha ??= (await redis.script('LOAD', lua)) as string;
    return redis.evalsha(sha, keys.length, ...keys, ...args);
  };
}

/**
 * A precise timer over a deadline source: claims what is due when the earliest known deadline passes, and polls every
 * pollMs (new sessions may bring an earlier deadline than the cached head). `claim(now)` answers the next head (or
 * null) and whether it took a full batch (then it claims again at once).
 */
function preciseTimer(claim: (now: number) => Promise<{ head: number | null; full: boolean }>, pollMs: number): Detector {
  let stopped = false;
  let running: Promise<void> | undefined;
  let wake: NodeJS.Timeout | undefined;
  let again = false;
  const run = (): void => {
    if (stopped) return;
    if (running) {
      again = true;
      return;
    }
    clearTimeout(wake);
    running = claim(Date.now()).then(
      ({ head, full }) => {
        running = undefined;
        if (stopped) return;
        if (full || again) {
          again = false;
          setImmediate(run);
        } else if (head !== null) {
          wake = setTimeout(run, Math.max(0, Math.ceil(head - Date.now())));
        }
      },
      () => {
        running = undefined;
        if (!stopped) wake = setTimeout(run, pollMs);
      },
    );
  };
  const poll = setInterval(run, pollMs);
  run();
  return {
    async stop() {
      stopped = true;
      clearInterval(poll);
      clearTimeout(wake);
      await running;
    },
  };
}

const FLOOR_KEY = 'floor:deadlines';
const FLOOR_BATCH = 256;
const FLOOR_CLAIM = `
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local out = { head[2] or '' }
for i = 1, #due do out[i + 1] = due[i] end
return out`;

const sortedSetFloor: Mechanism = {
  name: 'sorted-set-floor',
  graceMs: (_l, dflt) => dflt,
  async driver(target, { timeoutMs }) {
    const redis = await client(target);
    return {
      async open(sessions) {
        await redis.zadd(FLOOR_KEY, ...sessions.flatMap((s) => [s.deadline, s.id]));
      },
      async heartbeat(ids, now) {
        const deadline = now + timeoutMs;
        // XX: a session already claimed stays dead; GT: a deadline only moves later (a late heartbeat cannot shorten it).
        await redis.zadd(FLOOR_KEY, 'XX', 'GT', ...ids.flatMap((id) => [deadline, id]));
        return 0;
      },
      close: disconnecting(redis),
    };
  },
  async detector(target, _l, onExpired) {
    const redis = await client(target);
    const claim = script(redis, FLOOR_CLAIM);
    const timer = preciseTimer(async (now) => {
      const [head, ...due] = (await claim([FLOOR_KEY], [now, FLOOR_BATCH])) as string[];
      const at = detectedAt();
      for (const id of due) onExpired(id, at);
      return { head: head === '' || head === undefined ? null : Number(head), full: due.length === FLOOR_BATCH };
    }, 100);
    return {
      async stop() {
        await timer.stop();
        redis.disconnect();
      },
    };
  },
};

const REAPER_BUCKETS = 32;
const placement = (id: string) => {
  const node = id.charCodeAt(id.length - 1) % 8;
  return { node: `gpu-node-${node}`, runtimeUrl: `http://runtime-${node}.inference.svc:8000`, gpuBytes: 2 ** 31 };
};

const sessionReaper: Mechanism = {
  name: 'session-reaper',
  graceMs: (_l, dflt) => dflt,
  async driver(target, { timeoutMs }) {
    const redis = await client(target);
    const store = new SessionStore(redis, new KeySpace('sr', REAPER_BUCKETS), await Scripts.register(redis), { tombstoneTtlMs: 86_400_000, quietRecords: true });
    return {
      async open(sessions, now) {
        await Promise.all(sessions.map((s) =>
          store.open({ sessionId: s.id, fingerprint: eventFingerprint('bench', s.id), now, liveFrom: s.deadline - timeoutMs, windowMs: timeoutMs, placement: placement(s.id) }),
        ));
      },
      async heartbeat(ids, now) {
        const results = await store.heartbeatMany(ids.map((sessionId) => ({ sessionId, liveFrom: now })), now);
        return results.filter((r) => r.code !== 'REFRESHED').length;
      },
      close: disconnecting(redis),
    };
  },
  async detector(target, _l, onExpired) {
    const redis = await client(target);
    const config = loadConfig({ REDIS_URL: `redis://127.0.0.1:${target.port}`, REDIS_PASSWORD: target.password, INDEX_BUCKETS: String(REAPER_BUCKETS) });
    const store = new SessionStore(redis, new KeySpace(config.REDIS_KEY_PREFIX, REAPER_BUCKETS), await Scripts.register(redis), { tombstoneTtlMs: config.TOMBSTONE_TTL_MS, quietRecords: true });
    const engine = new DeadlineEngine({
      deps: {
        config,
        // Warnings too: a blind window the outage rule records (the engine or Redis stalled past BLIND_GAP_MS) makes every
        // deadline in it late by its length, and the run's lag cannot be read without knowing of it.
        logger: createLogger({ service: 'bench-compare', level: 'warn' }),
        store,
        now: Date.now,
        // The engine's own instruments, recording as deployed (exported nowhere here).
        metrics: initMetrics({ serviceName: 'bench-compare', env: { OTEL_SDK_DISABLED: 'true' } }).instruments,
        // The engine's emission, recorded where the Broker would be sent the event.
        emit: (type, data) => {
          if (type === EventType.SessionExpired) onExpired((data as { sessionId: string }).sessionId, detectedAt());
          return Promise.resolve();
        },
      },
      ready: () => Promise.resolve(),
    });
    engine.start();
    return {
      async stop() {
        await engine.stop();
        redis.disconnect();
      },
    };
  },
};

const SWEEP_PREFIX = 'sw:';
const SWEEP_PAGE = 1000;
const SWEEP_CLAIM = `
local out = {}
local now = tonumber(ARGV[1])
for i = 1, #KEYS do
  local d = tonumber(redis.call('GET', KEYS[i]))
  if d and d <= now then
    redis.call('DEL', KEYS[i])
    out[#out + 1] = KEYS[i]
  end
end
return out`;

function sweeper(intervalMs: number): Mechanism {
  return {
    name: `sweeper-${intervalMs / 1000}s`,
    // Up to one interval between sweeps, plus the sweep itself.
    graceMs: (_l, dflt) => Math.round(intervalMs * 1.25) + dflt,
    async driver(target, { timeoutMs }) {
      const redis = await client(target);
      return {
        async open(sessions) {
          await redis.mset(...sessions.flatMap((s) => [SWEEP_PREFIX + s.id, s.deadline]));
        },
        async heartbeat(ids, now) {
          const deadline = now + timeoutMs;
          await redis.mset(...ids.flatMap((id) => [SWEEP_PREFIX + id, deadline]));
          return 0;
        },
        close: disconnecting(redis),
      };
    },
    async detector(target, _l, onExpired) {
      const redis = await client(target);
      const claim = script(redis, SWEEP_CLAIM);
      let stopped = false;
      let timer: NodeJS.Timeout | undefined;
      let sweeping: Promise<void> | undefined;
      const sweep = async (): Promise<void> => {
        let cursor = '0';
        do {
          const [next, keys] = await redis.scan(cursor, 'MATCH', `${SWEEP_PREFIX}*`, 'COUNT', SWEEP_PAGE);
          cursor = next;
          if (keys.length > 0) {
            const due = (await claim(keys, [Date.now()])) as string[];
            const at = detectedAt();
            for (const key of due) onExpired(key.slice(SWEEP_PREFIX.length), at);
          }
        } while (cursor !== '0' && !stopped);
      };
      const every = (): void => {
        if (stopped) return;
        const started = Date.now();
        sweeping = sweep().catch(() => undefined).finally(() => {
          sweeping = undefined;
          if (!stopped) timer = setTimeout(every, Math.max(0, started + intervalMs - Date.now()));
        });
      };
      every();
      return {
        async stop() {
          stopped = true;
          clearTimeout(timer);
          await sweeping;
          redis.disconnect();
        },
      };
    },
  };
}

const TTL_PREFIX = 'ttl:';
const EXPIRED_CHANNEL = '__keyevent@0__:expired';

const redisTtl: Mechanism = {
  name: 'redis-ttl',
  // Redis notices an expired key only when it is touched or its expiry cycle samples it, seconds later at times:
  // a longer grace keeps "late" apart from "never".
  graceMs: (_l, dflt) => Math.max(dflt, 10_000),
  async configure(admin) {
    await admin.config('SET', 'notify-keyspace-events', 'Ex');
  },
  async driver(target, { timeoutMs }) {
    const redis = await client(target);
    const setAll = async (pairs: readonly (readonly [string, number])[]) => {
      const p = redis.pipeline();
      for (const [id, deadline] of pairs) p.set(TTL_PREFIX + id, '1', 'PXAT', deadline);
      await p.exec();
    };
    return {
      open: (sessions) => setAll(sessions.map((s) => [s.id, s.deadline] as const)),
      async heartbeat(ids, now) {
        await setAll(ids.map((id) => [id, now + timeoutMs] as const));
        return 0;
      },
      close: disconnecting(redis),
    };
  },
  async detector(target, _l, onExpired) {
    const sub = await client(target);
    sub.on('message', (_channel: string, key: string) => onExpired(key.slice(TTL_PREFIX.length), detectedAt()));
    await sub.subscribe(EXPIRED_CHANNEL);
    return {
      stop() {
        sub.disconnect();
        return Promise.resolve();
      },
    };
  },
};

const QUEUE = 'reaper';
const bullConnection = (target: RedisTarget) => ({ host: '127.0.0.1', port: target.port, password: target.password, maxRetriesPerRequest: null });

const bullmq: Mechanism = {
  name: 'bullmq',
  graceMs: (_l, dflt) => dflt,
  async driver(target, { timeoutMs }) {
    const queue = new Queue(QUEUE, { connection: bullConnection(target) });
    await queue.waitUntilReady();
    return {
      async open(sessions, now) {
        await queue.addBulk(sessions.map((s) => ({
          name: 'session', data: {},
          opts: { jobId: s.id, timestamp: now, delay: Math.max(0, s.deadline - now), removeOnComplete: true, removeOnFail: true },
        })));
      },
      async heartbeat(ids) {
        // A Job built from its id alone makes no call; changeDelay is one script call per job.
        const outcomes = await Promise.allSettled(ids.map((id) => new Job(queue, 'session', {}, {}, id).changeDelay(timeoutMs)));
        return outcomes.filter((o) => o.status === 'rejected').length;
      },
      async close() {
        await queue.close();
      },
    };
  },
  async detector(target, _l, onExpired) {
    const worker = new Worker(QUEUE, (job) => {
      onExpired(job.id ?? '', detectedAt());
      return Promise.resolve();
    }, { connection: bullConnection(target), concurrency: 100 });
    await worker.waitUntilReady();
    return {
      async stop() {
        await worker.close();
      },
    };
  },
};

/** The bench's own Lua scripts by name, so that a profile can name them in Redis's SLOWLOG. */
export const BENCH_SCRIPTS: Readonly<Record<string, string>> = { floorClaim: FLOOR_CLAIM, sweepClaim: SWEEP_CLAIM };

/** Every mechanism, by name, in the order the bench runs them. */
export const MECHANISMS: readonly Mechanism[] = [sortedSetFloor, sessionReaper, sweeper(30_000), sweeper(5_000), redisTtl, bullmq];

/** The mechanism of that name; throws naming the choices. */
export function mechanismNamed(name: string): Mechanism {
  const m = MECHANISMS.find((x) => x.name === name);
  if (!m) throw new Error(`unknown mechanism ${JSON.stringify(name)}; one of ${MECHANISMS.map((x) => x.name).join(', ')}`);
  return m;
}
