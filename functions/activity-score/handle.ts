// activity-score: folds each session.activity and inference.completed into the session's activity context (scoring.ts)
// and stores it with a compare-and-set, refreshing the session's liveness in the same script. It then schedules the
// session's next idle check in the idle index: the function scales to zero, so the verdict on a session that went
// quiet is reached by the idle checker (idle-checker.ts) when that moment comes, not by a later event.
import { EventType } from '../core/contract/events.ts';
import type { InboundEvent } from '../core/contract/parse.ts';
import { OwnershipError, TransientError } from '../core/errors.ts';
import type { Core, CoreDeps } from '../core/function-host.ts';
import { drawReleaseToken, eventFingerprint, placementForEvent, type SessionView } from '../core/session-store.ts';
import { IdleIndex } from './idle-index.ts';
import { contextFromFields, firstCheckAt, storedContextFields } from './idle-judgement.ts';
import { createMemoryProbe, LoadMonitor } from './load-monitor.ts';
import { ActivityContextDecodeError, applyActivity, applyCompletion, initialContext, score, type ActivityContext, type ScoringPolicy } from './scoring.ts';
import { policyFor, type ActivityScoreSettings } from './settings.ts';

/** The event types activity-score consumes. */
export const ACTIVITY_SCORE_ACCEPTS = [EventType.SessionActivity, EventType.InferenceCompleted] as const;

/** An event activity-score handles. */
export type ActivityScoreEvent = InboundEvent<(typeof ACTIVITY_SCORE_ACCEPTS)[number]>;

/** What activity-score's handler needs beyond the core. */
export interface ActivityScoreDeps {
  readonly settings: ActivityScoreSettings;
  readonly load: LoadMonitor;
  readonly idleIndex: IdleIndex;
}

/** Builds activity-score's dependencies once per process (the `extend` of its definition); timers start with `load.start()`. */
export function createActivityScoreDeps(core: Pick<Core, 'deps'>, settings: ActivityScoreSettings): ActivityScoreDeps {
  const { config, logger, redis, runtimes, outboundPolicy } = core.deps;
  const load = new LoadMonitor(redis, {
    prefix: config.REDIS_KEY_PREFIX,
    policy: settings.loadPolicy,
    runtimeTtlMs: settings.runtimeTtlMs,
    registry: runtimes,
    runtime: createMemoryProbe(config, logger, { registry: runtimes, addressPolicy: outboundPolicy }),
    logger,
    now: () => core.deps.now(),
  });
  return { settings, load, idleIndex: new IdleIndex(redis, config.REDIS_KEY_PREFIX, config.INDEX_BUCKETS) };
}

/** Compare-and-set attempts before the event is handed back to the Broker for redelivery. */
export const MAX_CONTEXT_ATTEMPTS = 5;

const parsedTime = (text: string | undefined): number | undefined => {
  const t = text === undefined ? Number.NaN : Date.parse(text);
  return Number.isFinite(t) ? t : undefined;
};

type Deps = CoreDeps & ActivityScoreDeps;

// The stored context, or a fresh one when there is none or it cannot be read (a corrupt context must not wedge the
// session: its version still guards the write, so the fresh one replaces it cleanly).
function contextOrFresh(fields: Record<string, string>, at: number, policy: ScoringPolicy, deps: Deps, sessionId: string): ActivityContext {
  try {
    return contextFromFields(fields) ?? initialContext(at, policy);
  } catch (err) {
    if (!(err instanceof ActivityContextDecodeError)) throw err;
    deps.logger.warn({ sessionId, err: err.message }, 'stored activity context unreadable; starting afresh');
    return initialContext(at, policy);
  }
}

/**
 * Handles a session.activity or inference.completed: applies it to the session's activity context (with the
 * tenant's policy), stores the result if no other replica changed the context meanwhile (else recomputes, up to
 * MAX_CONTEXT_ATTEMPTS, then TransientError), and schedules the session's next idle check. Events for sessions that
 * are unknown or already ending are acknowledged without effect; a duplicate changes nothing but re-asserts the
 * schedule.
 */
export async function handle(event: ActivityScoreEvent, deps: Deps): Promise<void> {
  const now = deps.now();
  const { sessionId } = event.data;
  const liveFrom = Math.min(parsedTime(event.time) ?? now, now);
  const at = event.type === EventType.SessionActivity ? Math.min(parsedTime(event.data.at) ?? liveFrom, now) : liveFrom;
  const fingerprint = eventFingerprint(event.source, event.id);
  const log = deps.logger.child({ sessionId });

  const session = await deps.store.inspect(sessionId);
  if (session === null || session.state !== 'active') {
    log.debug({ state: session?.state ?? 'unknown' }, 'activity for a session that is not live; ignored');
    return;
  }
  // Refused before anything is counted; the script checks it again, atomically with the write.
  if ((session.tenant ?? '') !== (event.tenant ?? '')) throw new OwnershipError(sessionId);
  deps.load.recordEvent(now, session.placement?.runtimeUrl);
  // The tier only moves the threshold and the grace, which the idle checker applies; folding an event uses neither.
  const policy = policyFor(deps.settings, session.tenant, 'normal');

  for (let attempt = 1; ; attempt++) {
    const { version, fields } = await deps.store.readContext(sessionId);
    const ctx = contextOrFresh(fields, at, policy, deps, sessionId);
    const next =
      event.type === EventType.SessionActivity
        ? applyActivity(ctx, { kind: event.data.kind, at, text: event.data.text, embedding: event.data.embedding }, policy)
        : applyCompletion(ctx, { at, release: event.data.release }, policy);
    const result = await deps.store.recordActivity({
      sessionId, fingerprint, liveFrom, now, expectedVersion: version, lastActivityAt: next.lastEventAt, context: storedContextFields(next), tenant: event.tenant,
    });
    switch (result.code) {
      case 'APPLIED': {
        const holdUntil = result.holdUntil > 0 ? result.holdUntil : undefined;
        const checkAt = firstCheckAt(deps.settings, next, now, session.tenant, holdUntil, deps.load.tier());
        await Promise.all([deps.idleIndex.schedule(sessionId, result.version, checkAt), restoreOnUserTurn(event, session, result.incarnation, result.offload, deps)]);
        log.debug({ version: result.version, score: score(next, now, policy).score, predictedIdleEndAt: next.predictedIdleEndAt, checkAt }, 'activity scored');
        return;
      }
      case 'CONFLICT':
        if (attempt >= MAX_CONTEXT_ATTEMPTS) {
          throw new TransientError(`activity context of ${sessionId} kept changing under ${attempt} attempts`, { cause: result });
        }
        continue;
      case 'DUPLICATE':
        // A redelivery re-asserts what its first delivery may not have finished: the schedule, and a restore's request.
        await Promise.all([reassertSchedule(sessionId, session.tenant, now, deps), restoreOnUserTurn(event, session, result.incarnation, result.offload, deps)]);
        return;
      case 'UNKNOWN':
      case 'ENDED':
        log.debug({ code: result.code }, 'session ended while its activity was scored; ignored');
        return;
      case 'NOT_OWNER':
        throw new OwnershipError(sessionId);
    }
  }
}

// A duplicate may be the redelivery of an event whose context was stored but whose schedule was not (the process died
// in between): scheduling again from the stored context is idempotent and closes that gap.
async function reassertSchedule(sessionId: string, tenant: string | undefined, now: number, deps: Deps): Promise<void> {
  const [{ version, fields }, session] = await Promise.all([deps.store.readContext(sessionId), deps.store.inspect(sessionId)]);
  let ctx: ActivityContext | undefined;
  try {
    ctx = contextFromFields(fields);
  } catch (err) {
    if (!(err instanceof ActivityContextDecodeError)) throw err;
  }
  if (ctx === undefined || session?.state !== 'active') return;
  await deps.idleIndex.schedule(sessionId, version, firstCheckAt(deps.settings, ctx, now, tenant, session.holdUntil, deps.load.tier()));
}

/**
 * Demote before destroy's way back: the user of a session whose KV was moved off the GPU (or is being moved) is back,
 * so its KV is asked back before the turn needs it. Only what the user does counts (the model's own output needs a
 * resident KV to happen at all). The request's token is stored with it, and a redelivery re-emits the same one.
 */
async function restoreOnUserTurn(event: ActivityScoreEvent, session: SessionView, incarnation: number, offload: SessionView['offload'], deps: Deps): Promise<void> {
  if (offload === undefined || event.type !== EventType.SessionActivity || event.data.kind === 'output' || !session.placement) return;
  const { sessionId } = event.data;
  const r = await deps.store.requestRestore(sessionId, incarnation, drawReleaseToken(), deps.now());
  if (r.code !== 'REQUESTED' && r.code !== 'PENDING') return;
  await deps.emit(
    EventType.GpuRestoreRequested,
    { sessionId, incarnation, token: r.token, placement: placementForEvent(session.placement) },
    `${sessionId}/${incarnation}/restore/${r.token}`,
  );
  deps.logger.info({ sessionId, incarnation, from: offload }, 'user back on a demoted session: restore requested');
}
