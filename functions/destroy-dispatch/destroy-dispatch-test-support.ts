// Test wiring for destroy-dispatch: the real function host (real core, real Redis of a topology, a real HTTP event
// sink as K_SINK), a clock the test moves, and helpers to open sessions and deliver events to the pure handler.
import type { IMetricReader } from '@opentelemetry/sdk-metrics';
import { CloudEvent, HTTP } from 'cloudevents';
import type { ContractType, DataOf } from '../core/contract/events.ts';
import { EventType } from '../core/contract/events.ts';
import { parseInbound } from '../core/contract/parse.ts';
import { createFunctionHost, statusOf, type FailureStatus } from '../core/function-host.ts';
import type { Placement } from '../core/session-store.ts';
import { startEventSink, type EventSink, type ReceivedEvent } from '../../tests/support/event-sink.ts';
import { dropPrefix, testRedisEnv, uniquePrefix, type Topology } from '../../tests/support/redis.ts';
import { destroyDispatch } from './definition.ts';
import { ACCEPTS, handle, type DestroyDispatchDeps, type DestroyDispatchEvent, type DestroyExtras } from './handle.ts';
import type { DestroyHooks } from './hooks.ts';

/** A fixed start for the test clock (2027-01-15). */
export const T0 = 1_800_000_000_000;

export const placementA: Placement = { node: 'gpu-node-a', runtimeUrl: 'http://runtime-a.test:8000', gpuBytes: 1000 };
export const placementB: Placement = { node: 'gpu-node-b', runtimeUrl: 'http://runtime-b.test:8000', gpuBytes: 2000 };

/** One destroy-dispatch replica under test. */
export interface Replica {
  readonly deps: DestroyDispatchDeps;
  readonly host: ReturnType<typeof createFunctionHost<typeof ACCEPTS, DestroyExtras>>;
  /** Delivers one event to the pure handler as the host would: 'ok' (2xx) or the status of the failure. */
  deliver(event: DestroyDispatchEvent): Promise<'ok' | FailureStatus>;
  close(): Promise<void>;
}

/** Everything a destroy-dispatch test needs; replicas share the prefix, the sink and the clock. */
export interface Harness {
  readonly prefix: string;
  readonly sink: EventSink;
  readonly env: Record<string, string>;
  /** The first replica. */
  readonly replica: Replica;
  readonly deps: DestroyDispatchDeps;
  now(): number;
  setNow(ms: number): void;
  /** Starts another replica on the same Redis keys, sink and clock. */
  addReplica(hooks?: DestroyHooks): Promise<Replica>;
  /** Opens a session (as heartbeat-timeout does) and returns its incarnation. */
  open(sessionId: string, placement?: Placement): Promise<number>;
  /** A session's first user activity, at `at`, as activity-score records it (its context, which idle verdicts need). */
  firstActivity(sessionId: string, at: number): Promise<void>;
  /** Accepted events of a type about a session, in order. */
  emitted(type: ContractType, sessionId?: string): ReceivedEvent[];
  close(): Promise<void>;
}

let eventSeq = 0;

/**
 * The token a test's gpu.released or gpu.release.failed carries to mean "the answer to the release pending now": a
 * replica's deliver() puts the pending attempt's real token in its place, as gpu-release echoes the one it was sent.
 * A test of a forged or stale answer gives a token of its own.
 */
const ECHO_PENDING_TOKEN = 'echo-the-pending-token';

/** The event with its ECHO_PENDING_TOKEN replaced by the token of the release pending for its session now. */
async function echoPendingToken(event: DestroyDispatchEvent, deps: DestroyDispatchDeps): Promise<DestroyDispatchEvent> {
  if ((event.type !== EventType.GpuReleased && event.type !== EventType.GpuReleaseFailed) || event.data.token !== ECHO_PENDING_TOKEN) return event;
  const { sessionId, incarnation } = event.data;
  const token = (await deps.store.releaseAttempt(sessionId, incarnation))?.token ?? 'no-release-is-pending';
  return { ...event, data: { ...event.data, token } } as DestroyDispatchEvent;
}

/** A contract event as parseInbound hands it to the handler (validated, so a test cannot send what HTTP would refuse). */
export function inbound<T extends (typeof ACCEPTS)[number]>(type: T, data: DataOf<T>, opts: { id?: string; source?: string; time?: number; tenant?: string } = {}): DestroyDispatchEvent {
  eventSeq += 1;
  const ce = new CloudEvent({
    specversion: '1.0',
    id: opts.id ?? `evt-${process.pid}-${eventSeq}`,
    source: opts.source ?? '/tests/destroy-dispatch',
    type,
    time: new Date(opts.time ?? T0).toISOString(),
    datacontenttype: 'application/json',
    ...(opts.tenant === undefined ? {} : { tenant: opts.tenant }),
    data,
  });
  const message = HTTP.structured(ce);
  return parseInbound({ headers: message.headers, body: message.body as string }, { maxBytes: 1_048_576, accept: ACCEPTS });
}

/** Shorthands for the events this function consumes. */
export const events = {
  closed: (sessionId: string, opts?: { id?: string; time?: number }) => inbound(EventType.SessionClosed, { sessionId }, opts),
  forced: (sessionId: string, opts?: { id?: string; time?: number }) => inbound(EventType.SessionDestroyRequested, { sessionId, reason: 'test' }, opts),
  completed: (sessionId: string, release: boolean, opts?: { id?: string; time?: number }) =>
    inbound(EventType.InferenceCompleted, { sessionId, requestId: 'req-1', release }, opts),
  expired: (sessionId: string, incarnation: number, opts?: { id?: string; time?: number }) =>
    inbound(
      EventType.SessionExpired,
      { sessionId, incarnation, deadline: new Date(T0).toISOString(), detectedAt: new Date(T0 + 1).toISOString(), lagMs: 1 },
      { source: '/session-reaper/deadline-engine', ...opts },
    ),
  idle: (sessionId: string, incarnation: number, opts?: { id?: string; time?: number }) =>
    inbound(EventType.SessionIdle, { sessionId, incarnation, score: 0.9, components: { behavior: 0.9, semantic: 0.9, timing: 0.9 } }, { source: '/session-reaper/idle-checker', ...opts }),
  released: (sessionId: string, incarnation: number, node = placementA.node, freedBytes = 1000, opts?: { id?: string; token?: string }) =>
    inbound(EventType.GpuReleased, { sessionId, incarnation, node, freedBytes, token: opts?.token ?? ECHO_PENDING_TOKEN }, { source: '/session-reaper/gpu-release', ...opts }),
  releaseFailed: (sessionId: string, incarnation: number, retryable: boolean, node = placementA.node, opts?: { id?: string; token?: string }) =>
    inbound(
      EventType.GpuReleaseFailed,
      { sessionId, incarnation, node, error: 'runtime answered 500', retryable, token: opts?.token ?? ECHO_PENDING_TOKEN },
      { source: '/session-reaper/gpu-release', ...opts },
    ),
  resume: (sessionId: string, incarnation: number, stage: DataOf<typeof EventType.DestroyResume>['stage'], opts?: { id?: string }) =>
    inbound(EventType.DestroyResume, { sessionId, incarnation, stage }, { source: '/session-reaper/deadline-engine', ...opts }),
};

/** Starts a harness on a topology; `env` adds destroy-dispatch settings (e.g. NODE_MAX_INFLIGHT_RELEASES). */
export async function startHarness(topology: Topology, opts: { env?: Record<string, string>; hooks?: DestroyHooks; prefix?: string; metricReader?: IMetricReader } = {}): Promise<Harness> {
  const sink = await startEventSink();
  const prefix = opts.prefix ?? uniquePrefix();
  const env: Record<string, string> = {
    ...testRedisEnv(topology),
    REDIS_KEY_PREFIX: prefix,
    INDEX_BUCKETS: '8',
    K_SINK: sink.url,
    LOG_LEVEL: 'silent',
    CORE_TIMEOUT_MS: '1000',
    ...opts.env,
  };
  let clock = T0;
  const replicas: Replica[] = [];

  const addReplica = async (hooks?: DestroyHooks): Promise<Replica> => {
    // Only the first replica reads into the test's metric reader (a reader serves one provider).
    const metricReader = replicas.length === 0 ? opts.metricReader : undefined;
    const host = createFunctionHost(destroyDispatch(env, hooks), { env, now: () => clock, ...(metricReader ? { metricReader } : {}) });
    await host.core.ready();
    const replica: Replica = {
      deps: host.deps,
      host,
      async deliver(event) {
        try {
          await handle(await echoPendingToken(event, host.deps), host.deps);
          return 'ok';
        } catch (err) {
          return statusOf(err);
        }
      },
      close: () => host.core.close(),
    };
    replicas.push(replica);
    return replica;
  };

  const first = await addReplica(opts.hooks);
  let openSeq = 0;
  return {
    prefix, sink, env, replica: first, deps: first.deps, addReplica,
    now: () => clock,
    setNow(ms) {
      clock = ms;
    },
    async open(sessionId, placement = placementA) {
      openSeq += 1;
      const r = await first.deps.store.open({ sessionId, fingerprint: `open-${openSeq}`, now: clock, liveFrom: clock, windowMs: 60_000, placement });
      if (r.code !== 'OPENED' && r.code !== 'REOPENED') throw new Error(`could not open ${sessionId}: ${r.code}`);
      return r.incarnation;
    },
    async firstActivity(sessionId, at) {
      openSeq += 1;
      const r = await first.deps.store.recordActivity({ sessionId, fingerprint: `act-${openSeq}`, liveFrom: at, now: at, expectedVersion: 0, lastActivityAt: at, context: {} });
      if (r.code !== 'APPLIED') throw new Error(`could not record activity on ${sessionId}: ${r.code}`);
    },
    emitted(type, sessionId) {
      return sink.events.filter((e) => e.event.type === type && (sessionId === undefined || e.event.subject === sessionId));
    },
    async close() {
      await dropPrefix(first.deps.redis, prefix);
      for (const r of replicas) await r.close();
      await sink.close();
    },
  };
}
