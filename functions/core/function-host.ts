// What every function shares: configuration, logs, tracing, the session core and the emitter, built once per
// process; Redis connected lazily (under Istio the sidecar may not be up at start); and the HTTP handler that turns
// a request into a validated contract event and a handler's outcome into the status the Broker acts on:
// 2xx acknowledged, 400 malformed (never redelivered, nothing written), 5xx redelivered.
import type { Tracer } from '@opentelemetry/api';
import type { CloudEvent } from 'cloudevents';
import { ConfigError, loadConfig, type Config } from './config.ts';
import { buildEvent } from './contract/build.ts';
import { sourceOf, type DataOf, type EmittedType, type ContractType, type FunctionName, type Workload } from './contract/events.ts';
import { isBatchRequest, parseInbound, parseInboundBatch, type InboundEvent } from './contract/parse.ts';
import { binaryMessage, createEmitter, EventRejectedError, type Emitter } from './emit.ts';
import { BackpressureError, ContractError, OwnershipError, TransientError } from './errors.ts';
import { OutboundAddressPolicy } from './outbound-address.ts';
import { isDeep } from './process-lifecycle.ts';
import { RuntimeRegistry } from './runtime-registry.ts';
import { SinkToken } from './sink-token.ts';
import { createLogger, withLogContext, type Logger } from './log.ts';
import { KeySpace } from './redis/keys.ts';
import { connectRedis, createRedisClient, type RedisClient } from './redis/connect.ts';
import { loadScriptSources, ScriptLoadError, Scripts } from './redis/scripts.ts';
import { RedisClock } from './redis/redis-clock.ts';
import { SessionStore, UnexpectedReplyError } from './session-store.ts';
import { ATTR_SESSION_ID, initTelemetry, withEventSpan, type Telemetry } from './telemetry.ts';
import { initMetrics, type ProcessMetrics } from './metrics-provider.ts';
import { outcomeClass, shortType } from './metrics.ts';
import type { SpanExporter } from '@opentelemetry/sdk-trace';
import type { IMetricReader } from '@opentelemetry/sdk-metrics';

/** What a handler may use; a handler reads no environment and no globals beyond this. */
export interface CoreDeps {
  readonly config: Config;
  readonly logger: Logger;
  readonly tracer: Tracer;
  readonly store: SessionStore;
  readonly redis: RedisClient;
  /** The CloudEvent `source` of everything this process emits. */
  readonly source: string;
  /** The GPU runtimes the operator registered (RUNTIMES): the only ones a session may be placed on or called. */
  readonly runtimes: RuntimeRegistry;
  /** Where outbound calls to runtimes and hooks may connect (OUTBOUND_ALLOWED_CIDRS). */
  readonly outboundPolicy: OutboundAddressPolicy;
  /** The metric catalogue's instruments (functions/core/metrics.ts), made once per process. */
  readonly metrics: ProcessMetrics['instruments'];
  /** Wall clock in ms (tests may pin it). */
  now(): number;
  /** Builds, validates and sends one follow-on event to the Broker; `id` should be deterministic where a
   *  redelivered input must produce the same output event. With `reply`, the event may instead ride in the answer
   *  to the event being handled (see EmitOptions). */
  emit<T extends EmittedType>(type: T, data: DataOf<T>, id?: string, opts?: EmitOptions): Promise<void>;
}

/**
 * How a follow-on event may leave. `reply: true` says the event may be the reply to the event being handled, in its
 * HTTP answer (Knative's reply contract: a subscriber answers 200 with a CloudEvent and the Broker ingests it), which
 * saves an emission's request to the Broker. A handler says so only where nothing after the emit depends on the event
 * having left, and where a redelivery of the input sends the same event again (same id): a reply is lost with its
 * answer, and a lost answer is a redelivery. The host replies only to a request that asked for replies (`Prefer:
 * reply`), with one event, about the same session as the input; any other event, and every event of a handler that
 * then fails, is emitted as before.
 */
export interface EmitOptions {
  reply?: boolean;
}

/** The follow-on event kept for the answer to the event being handled, when there is one. */
export interface ReplySlot {
  event?: CloudEvent<unknown>;
}

/** The process-wide parts, built once: Redis connects on first use. */
export interface Core {
  readonly deps: CoreDeps;
  readonly telemetry: Telemetry;
  readonly processMetrics: ProcessMetrics;
  readonly emitter: Emitter;
  /**
   * Deps for handling one event whose answer may carry a reply: their `emit` keeps the first event emitted with
   * `reply: true` about the session `to` names in the slot instead of sending it (EmitOptions).
   */
  replyDeps(to: { sessionId: string }): { deps: CoreDeps; slot: ReplySlot };
  /** Connects Redis and loads the scripts (memoised; retried after a failure). */
  ready(): Promise<void>;
  /**
   * Whether Redis answers now: the deep check a human asks for (`/healthz?deep=1`), never the readiness probe. A
   * probe that pings Redis turns every pod of every function unready together during a Redis blip, and Knative then
   * routes through its activator; a Redis fault is answered per event instead (503, redelivered: statusOf).
   */
  healthy(): Promise<boolean>;
  close(): Promise<void>;
}

export interface CoreOptions {
  /** The workload: its name is its source (`/session-reaper/<name>`) and its ServiceAccount. */
  name: Workload;
  env?: NodeJS.ProcessEnv;
  /** Tests: capture spans in memory. */
  exporter?: SpanExporter;
  /** Tests: read this process's metrics through this reader (and only it). */
  metricReader?: IMetricReader;
  now?: () => number;
}

/** Builds the shared parts of one process from its environment. */
export function createCore(opts: CoreOptions): Core {
  const env = opts.env ?? process.env;
  const config = loadConfig(env);
  const logger = createLogger({ service: opts.name, level: config.LOG_LEVEL });
  const telemetry = initTelemetry({ serviceName: opts.name, env, logger, ...(opts.exporter ? { exporter: opts.exporter } : {}) });
  // Read and checked now, not on the first event: a process whose scripts are missing or malformed fails at start
  // instead of passing its readiness probe and answering every event 500.
  const scriptSources = loadScriptSources();
  const redis = createRedisClient(config);
  redis.on('error', (err: Error) => logger.warn({ err }, 'redis connection error'));
  const keys = new KeySpace(config.REDIS_KEY_PREFIX, config.INDEX_BUCKETS);
  const runtimes = RuntimeRegistry.parse(config.RUNTIMES);
  const outboundPolicy = outboundPolicyOf(config);
  const processMetrics = initMetrics({
    serviceName: opts.name, env, runtimes: runtimes.names(), listenHost: config.LISTEN_HOST, logger, ...(opts.metricReader ? { reader: opts.metricReader } : {}),
  });
  const metrics = processMetrics.instruments;
  const emitter = createEmitter({
    sink: config.K_SINK, timeoutMs: config.CORE_TIMEOUT_MS, logger, tracer: telemetry.tracer,
    counters: { retries: metrics.emitRetries.cell(), failures: metrics.emitFailures.cell() },
    ...(config.SINK_TOKEN_FILE === '' ? {} : { token: new SinkToken(config.SINK_TOKEN_FILE) }),
    ...(config.K_CA_CERTS === '' ? {} : { caCerts: config.K_CA_CERTS }),
  });
  const source = sourceOf(opts.name);
  // Without a clock of the caller's (a test's), every replica reads Redis's: see redis-clock.ts.
  const clock = opts.now ? undefined : new RedisClock(redis);
  const now = opts.now ?? clock!.now;
  let store: SessionStore | undefined;
  let readying: Promise<void> | undefined;

  const ready = (): Promise<void> => {
    readying ??= (async () => {
      await connectRedis(redis);
      if (clock) {
        await clock.sync();
        clock.start((err: unknown) => logger.warn({ err }, 'could not re-anchor the clock to Redis TIME; keeping the last anchor'));
      }
      store = new SessionStore(redis, keys, await Scripts.register(redis, scriptSources, metrics.scriptDuration), { tombstoneTtlMs: config.TOMBSTONE_TTL_MS, releaseMaxAttempts: config.RELEASE_MAX_ATTEMPTS, quietRecords: config.SESSION_RECORD_PACKING });
    })().catch((err: unknown) => {
      readying = undefined;
      if (err instanceof ScriptLoadError) throw err;
      throw new TransientError('Redis is not reachable', { cause: err });
    });
    return readying;
  };

  const deps: CoreDeps = {
    config, logger, tracer: telemetry.tracer, redis, source, now, runtimes, outboundPolicy, metrics,
    get store(): SessionStore {
      if (!store) throw new TransientError('the session core is not ready', { cause: undefined });
      return store;
    },
    async emit(type, data, id) {
      await emitter.emit(buildEvent(type, data, { source, time: new Date(now()), ...(id ? { id } : {}) }));
    },
  };
  return {
    deps, telemetry, processMetrics, emitter, ready,
    replyDeps(to) {
      const slot: ReplySlot = {};
      const replying: CoreDeps = Object.create(deps, {
        emit: {
          value: async (type: EmittedType, data: DataOf<EmittedType>, id?: string, o?: EmitOptions): Promise<void> => {
            if (o?.reply === true && slot.event === undefined && 'sessionId' in data && data.sessionId === to.sessionId) {
              slot.event = buildEvent(type, data, { source, time: new Date(now()), ...(id ? { id } : {}) });
              return;
            }
            await deps.emit(type, data, id);
          },
        },
      }) as CoreDeps;
      return { deps: replying, slot };
    },
    async healthy() {
      try {
        await ready();
        return (await redis.ping()) === 'PONG';
      } catch {
        return false;
      }
    },
    async close() {
      clock?.stop();
      emitter.shutdown();
      // Metrics first: their last interval leaves before the process does (a pod scaled down loses nothing).
      await Promise.allSettled([processMetrics.shutdown(), telemetry.shutdown()]);
      redis.disconnect();
    },
  };
}

/** The slice of an Express request the host reads (functions-framework hands an Express request). */
export interface HostRequest {
  method: string;
  path: string;
  headers: Record<string, string | string[] | undefined>;
  body: unknown;
  rawBody?: Buffer;
  /** The parsed query string (Express's `req.query`): `deep=1` on the health endpoint. */
  query?: Record<string, unknown>;
  /** The body as the functions' server decoded it (functions/framework/serve.ts). */
  decodedBody?: { value: object | undefined };
}

/** The slice of an Express response the host writes. */
export interface HostResponse {
  status(code: number): HostResponse;
  set(headers: Record<string, string>): HostResponse;
  json(body: unknown): unknown;
  end(body?: string | Uint8Array): unknown;
}

/** A function: the event types it consumes and its pure handler. */
export interface FunctionDefinition<A extends readonly ContractType[], D> {
  name: FunctionName;
  accept: A;
  /** Function-specific dependencies built once from the core (a runtime client, a hook registry…). */
  extend: (core: Core) => D;
  handle: (event: InboundEvent<A[number]>, deps: CoreDeps & D) => Promise<void>;
  /**
   * Whether producers may also post batches (CloudEvents' batched content mode) straight to this function: the
   * Broker delivers one event per request, but a producer of many small events (heartbeats) can send hundreds in
   * one. The events of a batch are handled concurrently; the answer is 204 when all were applied, else the status
   * of the worst failure (500, then 503, then 400), and on a 5xx the sender resends the batch (every handler is
   * idempotent).
   */
  batches?: boolean;
}

/** OUTBOUND_ALLOWED_CIDRS as a policy; a ConfigError naming the variable when a network is not a CIDR. */
export function outboundPolicyOf(config: Pick<Config, 'OUTBOUND_ALLOWED_CIDRS'>): OutboundAddressPolicy {
  try {
    return OutboundAddressPolicy.fromList(config.OUTBOUND_ALLOWED_CIDRS);
  } catch (err) {
    throw new ConfigError(`OUTBOUND_ALLOWED_CIDRS=${JSON.stringify(config.OUTBOUND_ALLOWED_CIDRS)} is invalid: ${(err as Error).message}`, { cause: err });
  }
}

/** The status a failure is answered with. */
export type FailureStatus = 400 | 403 | 500 | 503;

/**
 * Maps an error to the status the Broker acts on: 400 malformed and 403 not the sender's session (neither
 * redelivered), 500 a bug, 503 redelivered.
 */
export function statusOf(err: unknown): FailureStatus {
  if (err instanceof ContractError) return 400;
  if (err instanceof OwnershipError) return 403;
  if (err instanceof UnexpectedReplyError || err instanceof ScriptLoadError || err instanceof EventRejectedError) return 500;
  // Anything else is an infrastructure fault (Redis, the Broker, a runtime): let the Broker redeliver.
  return 503;
}

/** Builds the HTTP handler functions-framework serves (`http` signature; see README on why not `cloudEvent`). */
export function createFunctionHost<const A extends readonly ContractType[], D>(def: FunctionDefinition<A, D>, opts: Omit<CoreOptions, 'name'> = {}) {
  const core = createCore({ ...opts, name: def.name });
  const extra = def.extend(core);
  // The core's deps are the prototype, so its lazily-ready `store` getter keeps working beside the extras.
  const deps: CoreDeps & D = Object.assign<CoreDeps, D>(Object.create(core.deps) as CoreDeps, extra);
  const { logger, tracer, config } = core.deps;

  async function handler(req: HostRequest, res: HostResponse): Promise<void> {
    if (req.method === 'GET' && (req.path === '/healthz' || req.path === '/readyz')) {
      // Readiness: this process serves (its config and scripts were valid at start, or it would have exited).
      // Whether Redis answers right now is asked only with ?deep=1 (see Core.healthy).
      if (!isDeep(req.query?.deep)) {
        res.status(200).json({ status: 'ok', function: def.name });
        return;
      }
      const ok = await core.healthy();
      res.status(ok ? 200 : 503).json({ status: ok ? 'ok' : 'unavailable', function: def.name, redis: ok ? 'ok' : 'unreachable' });
      return;
    }
    if (req.method !== 'POST') {
      res.status(405).json({ error: 'METHOD_NOT_ALLOWED', reason: 'CloudEvents are POSTed' });
      return;
    }
    const batch = def.batches === true && isBatchRequest(req.headers);
    let events: InboundEvent<A[number]>[];
    try {
      const raw = {
        headers: req.headers, body: req.body as Buffer | string | object | undefined,
        ...(req.rawBody ? { rawBody: req.rawBody } : {}), ...(req.decodedBody ? { decoded: req.decodedBody } : {}),
      };
      const opts = { maxBytes: config.MAX_EVENT_BYTES, maxBatchBytes: config.MAX_BATCH_BYTES, accept: def.accept };
      events = batch ? parseInboundBatch(raw, opts) : [parseInbound(raw, opts)];
    } catch (err) {
      if (!(err instanceof ContractError)) throw err;
      logger.warn({ code: err.code, field: err.field, reason: err.reason, eventId: batch ? undefined : headerOf(req, 'ce-id') }, batch ? 'rejected malformed batch' : 'rejected malformed event');
      core.deps.metrics.eventsProcessed.add(1, shortType(headerOf(req, 'ce-type') ?? ''), '4xx');
      res.status(400).json({ error: err.code, field: err.field, reason: err.reason });
      return;
    }
    // A Broker that takes reply events says so (Knative's data-plane contract: `Prefer: reply`); a batch never gets one.
    const replyWanted = !batch && acceptsReply(req.headers.prefer);
    // Settled, not raced: a batch answers once every event's handler has finished, so none is still writing when
    // the sender resends it.
    const outcomes = await Promise.allSettled(events.map((event) => apply(event, replyWanted)));
    let worst: { status: FailureStatus; err: unknown; index: number } | undefined;
    outcomes.forEach((o, index) => {
      if (o.status === 'fulfilled') return;
      const status = statusOf(o.reason);
      if (!worst || rank(status) > rank(worst.status)) worst = { status, err: o.reason, index };
    });
    if (!worst) {
      const reply = outcomes[0]?.status === 'fulfilled' ? outcomes[0].value : undefined;
      // 200 with the event in binary mode: the Broker ingests it as a new event (202 would tell it not to).
      if (reply) res.status(200).set(reply.headers).end(reply.body);
      else res.status(204).end();
      return;
    }
    const { status, err, index } = worst;
    if (status === 400 && err instanceof ContractError) {
      res.status(400).json({ error: err.code, field: batch ? `batch[${index}].${err.field}` : err.field, reason: err.reason });
      return;
    }
    if (status === 403) {
      res.status(403).json({ error: 'NOT_OWNER', ...(batch ? { field: `batch[${index}]` } : {}), reason: 'the session belongs to another tenant' });
      return;
    }
    // The cause stays in the log (written once, with the session and trace): an answer never carries internal
    // messages, addresses or anything a dependency replied.
    res.status(status).json(status === 503 ? { error: 'UNAVAILABLE', reason: 'a dependency is unavailable; retry later' } : { error: 'INTERNAL', reason: 'the event could not be handled' });
  }

  /**
   * Handles one event in its span; logs its failure once, with its session and trace, and rethrows it. With
   * `replyWanted`, answers the reply event the handler left for the answer (binary mode, encoded in the span so it
   * carries its trace), if it left one.
   */
  async function apply(event: InboundEvent<A[number]>, replyWanted: boolean): Promise<ReturnType<typeof binaryMessage> | undefined> {
    const sessionId = event.data.sessionId;
    const replying = replyWanted ? core.replyDeps({ sessionId }) : undefined;
    const eventDeps: CoreDeps & D = replying ? Object.assign<CoreDeps, D>(Object.create(replying.deps) as CoreDeps, extra) : deps;
    try {
      const reply = await withEventSpan(tracer, `${def.name} ${event.type.replace('dev.sessionreaper.', '')}`, { ...event, subject: sessionId }, { [ATTR_SESSION_ID]: sessionId }, async () => {
        await core.ready();
        try {
          await def.handle(event, eventDeps);
        } catch (err) {
          // The answer is a failure, so it carries no event: one kept for it leaves now, as it would have when the
          // handler emitted it (what came after it failed, not the event), and the failure is answered as before.
          const kept = replying?.slot.event;
          if (kept) await core.emitter.emit(kept).catch((emitErr: unknown) => logger.warn({ err: emitErr, eventId: kept.id }, 'an event kept for a reply could not be emitted after the handler failed'));
          throw err;
        }
        return replying?.slot.event ? binaryMessage(replying.slot.event) : undefined;
      });
      deps.metrics.eventsProcessed.add(1, shortType(event.type), '2xx');
      return reply;
    } catch (err) {
      const status = statusOf(err);
      deps.metrics.eventsProcessed.add(1, shortType(event.type), outcomeClass(status));
      const log = withLogContext(logger, { sessionId, eventId: event.id, eventType: event.type });
      if (status === 400 && err instanceof ContractError) log.warn({ code: err.code, field: err.field, reason: err.reason }, 'rejected event');
      else if (status === 403) log.warn({ tenant: event.tenant, source: event.source }, 'refused an event about a session of another tenant; nothing written');
      else if (err instanceof BackpressureError) log.info({ reason: err.message }, 'backpressure; the Broker will redeliver later');
      else log.error({ err, status }, status === 503 ? 'transient failure; the Broker will redeliver' : 'handler failed');
      throw err;
    }
  }

  // The name and whether it takes batches travel with the host, so its server bounds its requests as it parses them.
  return { name: def.name, batches: def.batches === true, handler, core, deps };
}

/**
 * Which failure a batch answers with: a bug (500), then a transient fault (503: the whole batch is resent, and the
 * events already applied are idempotent), then a refusal (403 or 400: never resent, so neither may hide a 503);
 * an event about another tenant's session (403) outranks a malformed one, so the producer hears of it.
 */
function rank(status: FailureStatus): number {
  return { 500: 4, 503: 3, 403: 2, 400: 1 }[status];
}

/** Whether a `Prefer` header asks for a reply event (RFC 7240 preferences, comma-separated, parameters after `;`). */
export function acceptsReply(prefer: string | string[] | undefined): boolean {
  const values = Array.isArray(prefer) ? prefer : prefer === undefined ? [] : [prefer];
  return values.some((v) => v.split(',').some((p) => p.split(';')[0]!.trim().toLowerCase() === 'reply'));
}

function headerOf(req: HostRequest, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}
