// Test support for activity-score: the function's real dependencies on the shared test Redis of one topology, a real
// event sink as the Broker, a clock the test moves, and contract events built and parsed as the host would.
import { CloudEvent, HTTP } from 'cloudevents';
import { EventType, type ActivityKind } from '../core/contract/events.ts';
import { parseInbound } from '../core/contract/parse.ts';
import { createCore, type Core, type CoreDeps } from '../core/function-host.ts';
import { type Placement } from '../core/session-store.ts';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { dropPrefix, testRedisEnv, uniquePrefix, type Topology } from '../../tests/support/redis.ts';
import { fp } from '../../tests/support/core.ts';
import { ACTIVITY_SCORE_ACCEPTS, createActivityScoreDeps, type ActivityScoreDeps, type ActivityScoreEvent } from './handle.ts';
import { IdleChecker } from './idle-checker.ts';
import { contextFromFields } from './idle-judgement.ts';
import type { ActivityContext } from './scoring.ts';
import { readActivityScoreSettings, type ActivityScoreSettings } from './settings.ts';

/** A fixed start time for tests. */
export const T0 = Date.parse('2025-03-01T09:00:00.000Z');

/** A placement on a runtime nobody calls unless a test starts one. */
export const PLACEMENT: Placement = { node: 'gpu-node-t', runtimeUrl: 'http://127.0.0.1:9/rt', gpuBytes: 1024 };

/** activity-score wired for one test. */
export interface Harness {
  readonly clock: { now: number };
  readonly sink: EventSink;
  readonly core: Core;
  readonly deps: CoreDeps & ActivityScoreDeps;
  readonly settings: ActivityScoreSettings;
  readonly env: Record<string, string>;
  /** An idle checker on a Redis connection of its own, like a separate replica. */
  checker(): Promise<IdleChecker>;
  /** Opens a session (liveness window of an hour, so only idleness can end it). */
  open(sessionId: string, opts?: { tenant?: string; placement?: Placement }): Promise<number>;
  /** The stored context of a session. */
  context(sessionId: string): Promise<{ version: number; ctx: ActivityContext | undefined; fields: Record<string, string> }>;
  /** session.idle events the sink received for a session. */
  idleEvents(sessionId: string): EventSink['events'];
  close(): Promise<void>;
}

/** Builds the harness on a fresh key prefix; `env` adds activity-score settings. */
export async function harness(topology: Topology, env: Record<string, string> = {}): Promise<Harness> {
  const sink = await startEventSink();
  const clock = { now: T0 };
  const fullEnv = { ...testRedisEnv(topology), REDIS_KEY_PREFIX: uniquePrefix(), INDEX_BUCKETS: '8', K_SINK: sink.url, LOG_LEVEL: 'silent', ...env };
  const settings = readActivityScoreSettings(fullEnv);
  const core = createCore({ name: 'activity-score', env: fullEnv, now: () => clock.now });
  await core.ready();
  const deps = Object.assign(Object.create(core.deps) as CoreDeps, createActivityScoreDeps(core, settings));
  const others: { core: Core; checker: IdleChecker }[] = [];
  return {
    clock, sink, core, deps, settings, env: fullEnv,
    async checker() {
      const other = createCore({ name: 'idle-checker', env: fullEnv, now: () => clock.now });
      await other.ready();
      const checker = new IdleChecker(other.deps, { settings });
      others.push({ core: other, checker });
      return checker;
    },
    async open(sessionId, opts = {}) {
      const r = await core.deps.store.open({
        sessionId, fingerprint: fp('open'), now: clock.now, liveFrom: clock.now, windowMs: 3_600_000,
        placement: opts.placement ?? PLACEMENT, tenant: opts.tenant,
      });
      if (r.code !== 'OPENED') throw new Error(`open ${sessionId}: ${r.code}`);
      return r.incarnation;
    },
    async context(sessionId) {
      const { version, fields } = await core.deps.store.readContext(sessionId);
      return { version, fields, ctx: contextFromFields(fields) };
    },
    idleEvents(sessionId) {
      return sink.events.filter((e) => e.event.type === EventType.SessionIdle && e.event.subject === sessionId);
    },
    async close() {
      for (const o of others) {
        await o.checker.stop();
        await o.core.close();
      }
      await deps.load.stop();
      await dropPrefix(core.deps.redis, fullEnv.REDIS_KEY_PREFIX);
      await core.close();
      await sink.close();
    },
  };
}

let eventSeq = 0;

/** Builds an inbound event exactly as the host would hand it to handle(): encoded as binary HTTP, then parsed. */
export function inbound(type: ActivityScoreEvent['type'], data: Record<string, unknown>, opts: { time: number; id?: string; tenant?: string | undefined }): ActivityScoreEvent {
  eventSeq += 1;
  const ce = new CloudEvent({
    specversion: '1.0', id: opts.id ?? `evt-${eventSeq}`, source: '/tests/pipeline', type, time: new Date(opts.time).toISOString(), datacontenttype: 'application/json',
    ...(opts.tenant === undefined ? {} : { tenant: opts.tenant }),
    data,
  });
  const message = HTTP.binary(ce);
  return parseInbound({ headers: message.headers, body: message.body as string }, { maxBytes: 1 << 20, accept: ACTIVITY_SCORE_ACCEPTS });
}

/** A session.activity at `at` (also its CloudEvent time), naming `tenant` when the session has one. */
export function activity(sessionId: string, kind: ActivityKind, at: number, extra: { text?: string; embedding?: number[]; id?: string; tenant?: string } = {}): ActivityScoreEvent {
  const { id, tenant, ...rest } = extra;
  return inbound(EventType.SessionActivity, { sessionId, kind, at: new Date(at).toISOString(), ...rest }, { time: at, tenant, ...(id === undefined ? {} : { id }) });
}

/** An inference.completed at `at`, naming `tenant` when the session has one. */
export function completed(sessionId: string, at: number, release: boolean, tenant?: string): ActivityScoreEvent {
  return inbound(EventType.InferenceCompleted, { sessionId, requestId: `req-${at}`, release }, { time: at, tenant });
}
