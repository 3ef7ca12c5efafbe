// destroy-dispatch: every cause of a session's end claims its destroy (the first trigger of an incarnation wins,
// later ones are recorded as extra causes), and every step's outcome moves the destroy on. The destroy is
// checkpointed in the session record at each stage (claimed -> gpu_release_requested -> gpu_released ->
// state_purged -> completed), and every entry point hands the checkpoint to one function, continueDestroy, so a
// redelivered or interrupted destroy resumes where it stopped and no step's effect happens twice.
import { EventType } from '../core/contract/events.ts';
import { eventTimeOf, type InboundEvent } from '../core/contract/parse.ts';
import { OwnershipError } from '../core/errors.ts';
import type { CoreDeps } from '../core/function-host.ts';
import {
  drawReleaseToken, eventFingerprint, releaseAttemptOf, UnexpectedReplyError, type Cause, type DestroyRecord, type Placement, type PurgeResult, type ReleaseAttempt, type Stage,
} from '../core/session-store.ts';
import { HOOK_STAGES, runPendingHooks, type DestroyHooks, type HookFailedError, type HookProgress, type HookStage } from './hooks.ts';
import { parseReleaseMember, ReleaseThrottledError, releaseMember, type StormGuard } from './storm-guard.ts';

/** The event types destroy-dispatch consumes. */
export const ACCEPTS = [
  EventType.SessionClosed,
  EventType.SessionExpired,
  EventType.SessionIdle,
  EventType.InferenceCompleted,
  EventType.SessionDestroyRequested,
  EventType.GpuReleased,
  EventType.GpuReleaseFailed,
  EventType.DestroyResume,
] as const;

/** An event this function consumes. */
export type DestroyDispatchEvent = InboundEvent<(typeof ACCEPTS)[number]>;

/** What destroy-dispatch needs beyond the core: its hooks and its storm guard. */
export interface DestroyExtras {
  readonly hooks: DestroyHooks;
  readonly hookProgress: HookProgress;
  readonly stormGuard: StormGuard;
}

export type DestroyDispatchDeps = CoreDeps & DestroyExtras;

/** A destroy's checkpoint, as an entry point learnt it; continueDestroy fetches what is missing. */
export interface DestroyPoint {
  sessionId: string;
  incarnation: number;
  stage: Stage;
  cause?: Cause | undefined;
  placement?: Placement | undefined;
  /** The GPU release attempt recorded so far (the store's `ga` and its token `gt`), when known. */
  release?: ReleaseAttempt | undefined;
  /** Nothing has run for this destroy yet (it was claimed by this very event): no hook progress to read. */
  fresh?: boolean;
  /** The destroy gave up its release (release_failed): nothing is requested until an operator answers. */
  gaveUp?: boolean;
  /** At gpu_release_requested: request the release again under a new attempt (the watchdog found it stalled),
   *  rather than re-send the current attempt's request (a redelivery). */
  reissue?: boolean;
  /** At state_purged: the record as read right after the purge, so finishing need not read it again; given only
   *  when no hook runs after the purge (one that did would leave it stale). */
  record?: DestroyRecord | null | undefined;
}

/** When a trigger naming no incarnation was sent, if its producer said: one sent before a reopen is stale. */
export function sentAtOf(event: { time?: string | undefined }): number | undefined {
  const at = event.time === undefined ? Number.NaN : Date.parse(event.time);
  return Number.isFinite(at) ? at : undefined;
}

/** The deterministic id of the gpu.release.requested for one attempt of one incarnation's release. */
export function releaseRequestId(sessionId: string, incarnation: number, attempt: number): string {
  return `${sessionId}/${incarnation}/release/${attempt}`;
}

/** The deterministic id of the session.destroyed of one incarnation. */
export function destroyedId(sessionId: string, incarnation: number): string {
  return `${sessionId}/${incarnation}/destroyed`;
}

const STAGE_RANK: Record<Stage, number> = { claimed: 1, gpu_release_requested: 2, gpu_released: 3, state_purged: 4, completed: 5 };

/** The hook stages whose hooks must have succeeded before the destroy may leave `stage`. */
function hookStagesDueAt(stage: Stage): HookStage[] {
  return HOOK_STAGES.filter((h) => STAGE_RANK[h] <= Math.max(STAGE_RANK[stage], STAGE_RANK.claimed));
}

/** Handles one event; the first step of each path is one idempotent script call. */
export async function handle(event: DestroyDispatchEvent, deps: DestroyDispatchDeps): Promise<void> {
  const now = deps.now();
  const fingerprint = eventFingerprint(event.source, event.id);
  switch (event.type) {
    case EventType.SessionClosed:
      return trigger(deps, pipelineEnd(event, fingerprint, 'closed', now));
    case EventType.SessionDestroyRequested:
      deps.logger.info({ sessionId: event.data.sessionId, reason: event.data.reason }, 'destroy requested by an operator');
      return trigger(deps, { sessionId: event.data.sessionId, fingerprint, cause: 'forced', now, sentAt: sentAtOf(event), causeAt: eventTimeOf(event, now) });
    case EventType.SessionExpired:
      // The deadline engine claimed the destroy already; this resumes it (or finds it a duplicate).
      return trigger(deps, { sessionId: event.data.sessionId, fingerprint, incarnation: event.data.incarnation, cause: 'expired', now });
    case EventType.SessionIdle:
      // Only a verdict the idle checker recorded before emitting it (by this event's id) is applied, judged at the time
      // it recorded, not the event's: activity recorded after that (or an active hold) revives the session and the
      // claim is refused (claim-destroy-7.lua), and a session.idle it did not reach cannot end a session, whoever sent
      // it (UNVERIFIED).
      return trigger(deps, { sessionId: event.data.sessionId, fingerprint, incarnation: event.data.incarnation, cause: 'idle', now, idleVerdict: event.id });
    case EventType.InferenceCompleted:
      if (!event.data.release) {
        if (deps.logger.isLevelEnabled('debug')) deps.logger.debug({ sessionId: event.data.sessionId, requestId: event.data.requestId }, 'inference completed without release: ignored');
        return;
      }
      return trigger(deps, pipelineEnd(event, fingerprint, 'completed', now));
    case EventType.GpuReleased:
      return released(deps, event.data, now);
    case EventType.GpuReleaseFailed:
      return releaseFailed(deps, event.data);
    case EventType.DestroyResume:
      return resume(deps, event.data, fingerprint, now);
  }
}

/** A claim by one of the pipeline's ends (closed, completed): fenced by its send time, and kept for an open it beat. */
function pipelineEnd(event: { data: { sessionId: string }; time?: string | undefined; tenant?: string | undefined }, fingerprint: string, cause: Cause, now: number): ClaimInput {
  // Capped at now, as an open's time is (these types carry their time: the contract requires it).
  const sentAt = eventTimeOf(event, now);
  return { sessionId: event.data.sessionId, fingerprint, cause, now, sentAt, causeAt: sentAt, owner: event.tenant ?? '', waitForOpen: true };
}

type ClaimInput = Parameters<DestroyDispatchDeps['store']['claimDestroy']>[0];

/** What a claim's code counts as in sessionreaper_destroy_triggers_total. */
const TRIGGER_OUTCOME = {
  CLAIMED: 'claimed', ALREADY: 'resumed', DUPLICATE: 'resumed', STALE: 'stale', REVIVED: 'revived', ENDED: 'ended', UNKNOWN: 'unknown', MARKED: 'marked',
  NOT_OWNER: 'not_owner', UNVERIFIED: 'unverified',
} as const;

async function trigger(deps: DestroyDispatchDeps, claim: ClaimInput): Promise<void> {
  const r = await deps.store.claimDestroy(claim);
  deps.metrics.destroyTriggers.add(1, claim.cause, TRIGGER_OUTCOME[r.code]);
  const log = deps.logger;
  switch (r.code) {
    case 'NOT_OWNER':
      throw new OwnershipError(claim.sessionId);
    case 'CLAIMED':
    case 'ALREADY':
    case 'DUPLICATE':
      // ALREADY: another trigger claimed this destroy and requests its release; a second request would reach the
      // runtime again. A request lost after its checkpoint is re-issued by the stall watchdog, under a new attempt.
      // From any other checkpoint, going on repeats no effect.
      if (r.code === 'ALREADY' && r.stage === 'gpu_release_requested') {
        log.debug({ sessionId: claim.sessionId, incarnation: r.incarnation, stage: r.stage, cause: claim.cause }, 'destroy in progress: its release is requested already');
        return;
      }
      if (r.code === 'CLAIMED') log.info({ sessionId: claim.sessionId, incarnation: r.incarnation, cause: r.cause }, 'destroy claimed');
      else log.debug({ sessionId: claim.sessionId, incarnation: r.incarnation, code: r.code, stage: r.stage, cause: claim.cause }, 'destroy in progress: resuming at its checkpoint');
      return continueDestroy(deps, {
        sessionId: claim.sessionId, incarnation: r.incarnation, stage: r.stage, cause: r.cause, placement: r.placement, fresh: r.code === 'CLAIMED', gaveUp: r.gaveUp,
        ...(r.release.attempt > 0 ? { release: r.release } : {}),
      });
    case 'STALE':
    case 'REVIVED':
    case 'ENDED':
      log.info({ sessionId: claim.sessionId, incarnation: r.incarnation, code: r.code, cause: claim.cause }, 'destroy trigger not applied');
      return;
    case 'UNKNOWN':
      log.info({ sessionId: claim.sessionId, code: r.code, cause: claim.cause }, 'destroy trigger for an unknown session: ignored');
      return;
    case 'UNVERIFIED':
      // Answered 2xx (redelivering it would change nothing), logged as a warning: it is forged, or from an idle
      // checker older than the recording (a rolling upgrade; the checker says its verdict again after its lease).
      log.warn({ sessionId: claim.sessionId, incarnation: r.incarnation, eventId: claim.idleVerdict }, 'a session.idle the idle checker did not record: ignored, nothing changed');
      return;
    case 'MARKED':
      log.info({ sessionId: claim.sessionId, cause: claim.cause, sentAt: claim.sentAt }, 'end of a session not opened yet: it ends the open it was sent after');
      return;
  }
}

async function released(deps: DestroyDispatchDeps, data: { sessionId: string; incarnation: number; node: string; freedBytes: number; token: string; estimated?: true | undefined }, now: number): Promise<void> {
  const { sessionId, incarnation } = data;
  const member = releaseMember(sessionId, incarnation);
  // When no hook runs between the booking and the purge (nor after it), the purge and the read that finishing needs
  // are sent with the booking, and the slot's release beside them: one round trip instead of five. Redis runs a
  // connection's commands in order, so the purge sees the booking; should it run first after all (a Cluster
  // redirect, a script reloaded after NOSCRIPT) it refuses, changes nothing, and the destroy purges from its
  // checkpoint as it would have without it.
  const eager = !deps.hooks.any(hookStagesDueAt('gpu_released'));
  const readRecord = eager && !deps.hooks.any(['state_purged']);
  const [r, purged, record] = await settled([
    deps.store.recordRelease(sessionId, incarnation, data.freedBytes, now, data.node, data.token, data.estimated === true),
    eager ? deps.store.purge(sessionId, incarnation, now) : undefined,
    readRecord ? deps.store.destroyRecord(sessionId) : undefined,
  ] as const);
  // Only an answer to the release requested frees its node slot (to the next waiter): a forged or stale one must
  // neither book anything nor let more releases at a node than its limit. The slot is freed beside the rest of the
  // destroy, not before it, so the check costs the destroy no round trip.
  const answered = r.code === 'RELEASED' || r.code === 'MIGRATION_RELEASED' || r.code === 'DUPLICATE';
  deps.metrics.releaseAnswers.add(1, r.code === 'DUPLICATE' ? 'duplicate' : answered ? 'booked' : 'ignored');
  const bookedNode = r.code === 'RELEASED' || r.code === 'MIGRATION_RELEASED' ? r.node : '';
  const freeSlots = async (): Promise<void> => {
    if (!answered) return;
    await continueHanded(deps, data.node, (await deps.stormGuard.releaseSlot(data.node, member, now)).handed);
    // The slot was taken on the node the record names; the event may have named another.
    if (bookedNode && bookedNode !== data.node) await continueHanded(deps, bookedNode, (await deps.stormGuard.releaseSlot(bookedNode, member, now)).handed);
  };
  const from = (stage: Stage): DestroyPoint =>
    isPurged(purged) ? { sessionId, incarnation, stage: 'state_purged', record } : { sessionId, incarnation, stage };
  const goOn = (): Promise<void> => {
    switch (r.code) {
      case 'RELEASED':
        deps.logger.info({ sessionId, incarnation, node: r.node, freedBytes: data.freedBytes, registeredBytes: r.registeredBytes }, 'GPU memory released');
        return continueDestroy(deps, from('gpu_released'));
      case 'DUPLICATE':
        // Booked already; if the destroy stopped after the booking (a crash, a failing hook) it resumes from there.
        if (r.stage === 'gpu_released' || r.stage === 'state_purged') return continueDestroy(deps, from(r.stage));
        return Promise.resolve();
      case 'MIGRATION_RELEASED':
        deps.logger.info({ sessionId, incarnation, node: r.node, freedBytes: data.freedBytes }, 'GPU memory of a migrated session released');
        return Promise.resolve();
      case 'STALE':
      case 'NOT_DESTROYING':
      case 'UNKNOWN':
      case 'NOT_REQUESTED':
      case 'TOKEN_MISMATCH':
        deps.logger.warn({ sessionId, incarnation, code: r.code, node: data.node }, 'gpu.released that answers no release of ours: ignored, nothing booked');
        return Promise.resolve();
    }
  };
  await settled([freeSlots(), goOn()] as const);
}

/** Whether a purge left the destroy at state_purged (this one purged, or an earlier one had). */
function isPurged(p: PurgeResult | undefined): boolean {
  return p !== undefined && (p.code === 'PURGED' || (p.code === 'ALREADY' && p.stage === 'state_purged'));
}

/**
 * Awaits steps sent together, and throws the first failure only once every one has settled, so no write is still
 * in flight when the Broker is told to redeliver.
 */
async function settled<const T extends readonly unknown[]>(steps: T): Promise<{ -readonly [K in keyof T]: Awaited<T[K]> }> {
  const outcomes = await Promise.allSettled(steps);
  const failed = outcomes.find((o) => o.status === 'rejected');
  if (failed) throw failed.reason;
  return outcomes.map((o) => (o as PromiseFulfilledResult<unknown>).value) as { -readonly [K in keyof T]: Awaited<T[K]> };
}

/**
 * Continues the destroys that were handed a node slot, oldest first. A waiter whose destroy is no longer waiting
 * for its release (it ended meanwhile, moved on, or its session was reopened) passes the slot on to the next one.
 * A failure is logged, never thrown: it is not the fault of the event being handled, and the destroy, still
 * claimed and holding its slot, is resumed by its stall watchdog.
 */
async function continueHanded(deps: DestroyDispatchDeps, node: string, handed: readonly string[]): Promise<void> {
  const queue = [...handed];
  for (let member = queue.shift(); member !== undefined; member = queue.shift()) {
    try {
      queue.push(...(await continueWaiter(deps, node, member)));
    } catch (err) {
      deps.logger.warn({ err, node, member }, 'a destroy handed a release slot could not go on; its stall watchdog resumes it');
    }
  }
}

/** Continues one waiter handed a slot on `node`; returns the waiters handed the slot in its place when it is skipped. */
async function continueWaiter(deps: DestroyDispatchDeps, node: string, member: string): Promise<string[]> {
  const who = parseReleaseMember(member);
  const view = who ? await deps.store.inspect(who.sessionId) : null;
  const placement = view?.placement;
  const stage = view?.stage;
  if (
    !who || !view || !placement || view.incarnation !== who.incarnation || view.state !== 'destroying' || placement.node !== node
    || (stage !== 'claimed' && stage !== 'gpu_release_requested')
  ) {
    deps.logger.info({ node, member, state: view?.state, stage }, 'a waiting destroy is no longer waiting: its slot goes to the next');
    return (await deps.stormGuard.releaseSlot(node, member, deps.now())).handed;
  }
  const { sessionId, incarnation } = who;
  deps.logger.debug({ sessionId, incarnation, node }, 'a waiting destroy was handed a release slot');
  // The rate limit holds for waiters too. One that gets no token keeps its slot and its checkpoint: its stall
  // watchdog resumes it (admitted again as the slot's holder).
  if (!(await deps.stormGuard.awaitToken(placement.runtimeUrl, () => deps.now()))) {
    deps.logger.warn({ sessionId, incarnation, node, runtimeUrl: placement.runtimeUrl }, 'a waiting destroy got no release token in time; its stall watchdog resumes it');
    return [];
  }
  await continueDestroy(deps, {
    sessionId, incarnation, stage, cause: view.cause, placement, release: releaseAttemptOf(view), gaveUp: view.releaseFailedAt !== undefined,
    // Waiting at gpu_release_requested means its last attempt lost its slot (it failed for good, or its lease ran
    // out): a new attempt, as the watchdog would.
    reissue: stage === 'gpu_release_requested',
  });
  return [];
}

async function releaseFailed(
  deps: DestroyDispatchDeps,
  data: { sessionId: string; incarnation: number; node: string; error: string; retryable: boolean; token: string },
): Promise<void> {
  const { sessionId, incarnation, node, error, retryable } = data;
  // Only the answer to the release attempt in flight counts: a forged or stale failure changes nothing.
  const pending = await deps.store.releaseTarget(sessionId, incarnation, data.token);
  if (pending.code !== 'PENDING') {
    deps.logger.warn({ sessionId, incarnation, node, why: pending.why }, 'gpu.release.failed that answers no release in flight: ignored');
    return;
  }
  deps.metrics.destroyFailures.add(1, 'gpu_release_requested', retryable ? 'release_retryable' : 'release_refused');
  if (retryable) {
    // gpu-release keeps the request and the Broker redelivers it; the slot stays held (its lease bounds it).
    deps.logger.warn({ sessionId, incarnation, node, error, retryable }, 'GPU release failed; gpu-release retries it');
    return;
  }
  // Nothing more will come of this attempt: its slot goes to the next waiter. The destroy stays checkpointed at
  // gpu_release_requested; the deadline engine's watchdog emits destroy.resume after DESTROY_STALL_MS, which
  // re-issues the release under a new attempt, and operators see it in the destroys in flight meanwhile.
  const freed = await deps.stormGuard.releaseSlot(pending.node, releaseMember(sessionId, incarnation), deps.now());
  await continueHanded(deps, pending.node, freed.handed);
  deps.logger.error({ sessionId, incarnation, node, error, retryable }, 'GPU release failed for good; the destroy waits at its checkpoint for the watchdog');
}

async function resume(deps: DestroyDispatchDeps, data: { sessionId: string; incarnation: number; stage: Stage }, fingerprint: string, now: number): Promise<void> {
  const { sessionId, incarnation } = data;
  const view = await deps.store.inspect(sessionId);
  if (!view || view.incarnation !== incarnation || view.state !== 'destroying' || !view.cause) {
    deps.logger.info({ sessionId, incarnation, state: view?.state, currentIncarnation: view?.incarnation }, 'destroy.resume for no destroy in progress: ignored');
    return;
  }
  // Claiming again under the destroy's own cause changes nothing but remembers this event, so a redelivered
  // resume is told apart (DUPLICATE: re-send the same attempt) from a new one (ALREADY: a new attempt).
  const r = await deps.store.claimDestroy({ sessionId, fingerprint, incarnation, cause: view.cause, now, resume: true });
  if (r.code !== 'CLAIMED' && r.code !== 'ALREADY' && r.code !== 'DUPLICATE') {
    deps.logger.info({ sessionId, incarnation, code: r.code }, 'destroy.resume: the destroy is over');
    return;
  }
  if (r.stage !== data.stage) deps.logger.debug({ sessionId, incarnation, watchdogStage: data.stage, stage: r.stage }, 'destroy moved on since the watchdog saw it');
  deps.logger.info({ sessionId, incarnation, stage: r.stage, attempt: r.release.attempt }, 'resuming a stalled destroy');
  return continueDestroy(deps, {
    sessionId, incarnation, stage: r.stage, cause: r.cause, placement: r.placement, release: r.release.attempt > 0 ? r.release : undefined, reissue: r.code === 'ALREADY',
    gaveUp: r.gaveUp,
  });
}

/**
 * Moves a destroy on from its checkpoint to as far as it can go now: the only place the stages are driven, used
 * by every entry point. Each step is idempotent, so running it again from the same checkpoint (a redelivery, a
 * crash between steps, the watchdog) repeats no effect: the same release request id, no second booking, the same
 * session.destroyed id.
 */
export async function continueDestroy(deps: DestroyDispatchDeps, point: DestroyPoint): Promise<void> {
  const { sessionId, incarnation } = point;
  const log = deps.logger;
  let stage = point.stage;
  let done: Set<string> | undefined = point.fresh ? new Set() : undefined;
  let about: { cause?: Cause | undefined; placement?: Placement | undefined } = point;

  const hooksDue = async (at: Stage): Promise<HookFailedError | undefined> => {
    const stages = hookStagesDueAt(at);
    if (!deps.hooks.any(stages)) return undefined;
    done ??= await deps.hookProgress.done(sessionId, incarnation);
    if (!about.cause || !about.placement) {
      const view = await deps.store.inspect(sessionId);
      about = { cause: about.cause ?? view?.cause, placement: about.placement ?? view?.placement };
    }
    return runPendingHooks(deps.hooks, deps.hookProgress, stages, done, {
      sessionId, incarnation, cause: about.cause, placement: about.placement, now: deps.now(), redis: deps.redis, logger: log,
    });
  };

  if ((stage === 'claimed' || stage === 'gpu_release_requested') && point.gaveUp) {
    // Gave up already: no slot is taken and no request sent again. It is said again (same id) in case the first
    // saying was lost, and a slot it may still hold goes to the next waiter.
    const view = point.placement ? undefined : await deps.store.inspect(sessionId);
    const placement = point.placement ?? view?.placement;
    if (placement) await giveUp(deps, point, placement, { code: 'GAVE_UP', attempts: point.release?.attempt ?? view?.releaseAttempt ?? 0 });
    return;
  }

  if (stage === 'claimed' || stage === 'gpu_release_requested') {
    // Hooks first so the router lets go of the session before its memory does; but a failing hook is reported
    // only after the release was requested, which it never holds back.
    const hookFailure = await hooksDue('claimed');
    await requestRelease(deps, { ...point, stage });
    if (hookFailure) {
      deps.metrics.destroyFailures.add(1, 'claimed', 'hook_failed');
      throw hookFailure;
    }
    return;
  }

  if (stage === 'gpu_released') {
    const failure = await hooksDue('gpu_released');
    if (failure) {
      deps.metrics.destroyFailures.add(1, 'gpu_released', 'hook_failed');
      throw failure;
    }
    const p = await deps.store.purge(sessionId, incarnation, deps.now());
    if (p.code === 'PURGED' || (p.code === 'ALREADY' && p.stage === 'state_purged')) stage = 'state_purged';
    else if (p.code === 'NOT_READY') throw new UnexpectedReplyError(`purge of ${sessionId}/${incarnation} refused at stage ${p.stage} after the release was booked`);
    else {
      log.debug({ sessionId, incarnation, code: p.code }, 'destroy finished elsewhere');
      return;
    }
  }

  if (stage === 'state_purged') {
    const failure = await hooksDue('state_purged');
    if (failure) {
      deps.metrics.destroyFailures.add(1, 'state_purged', 'hook_failed');
      throw failure;
    }
    await finish(deps, sessionId, incarnation, point.record);
  }
}

/** Admits the release through the storm guard, checkpoints it, and sends the gpu.release.requested. */
async function requestRelease(deps: DestroyDispatchDeps, point: DestroyPoint): Promise<void> {
  const { sessionId, incarnation } = point;
  let { placement, release } = point;
  if (!placement) {
    const view = await deps.store.inspect(sessionId);
    if (!view || view.incarnation !== incarnation || view.state !== 'destroying') return;
    placement = view.placement;
    release ??= releaseAttemptOf(view);
  } else if (point.stage === 'gpu_release_requested' && release === undefined) {
    release = await deps.store.releaseAttempt(sessionId, incarnation);
  }
  if (!placement?.node || !placement.runtimeUrl) {
    throw new UnexpectedReplyError(`session ${sessionId}/${incarnation} is being destroyed but has no placement to release`);
  }
  const now = deps.now();
  const admission = await deps.stormGuard.admit(releaseMember(sessionId, incarnation), placement, now);
  await continueHanded(deps, placement.node, admission.handed);
  deps.metrics.stormGuardAdmissions.add(1, admission.code === 'WAITING' ? 'waiting' : admission.code === 'THROTTLED' ? 'throttled' : 'admitted');
  if (admission.code === 'WAITING') {
    // Acknowledged: the destroy waits, claimed, in its node's queue; whoever frees a slot continues it.
    deps.logger.info({ sessionId, incarnation, node: placement.node, position: admission.position }, 'GPU release waits for a slot on its node');
    return;
  }
  if (admission.code === 'THROTTLED') {
    deps.metrics.destroyFailures.add(1, point.stage, 'throttled');
    throw new ReleaseThrottledError('runtime', placement.runtimeUrl, admission.retryInMs);
  }

  // Each attempt draws its token when it is checkpointed; gpu-release calls the runtime only for the attempt pending
  // under that token, and only an answer echoing it is booked.
  let attempt: ReleaseAttempt;
  if (point.stage === 'claimed') {
    attempt = { attempt: 1, token: drawReleaseToken() };
    const r = await deps.store.advance(sessionId, incarnation, 'gpu_release_requested', now, attempt);
    if (r.code !== 'ADVANCED') {
      // Another delivery checkpointed it first (or the destroy is over). That delivery sends the request, but perhaps
      // as its reply to a delivery the Broker has already given up on (this one is its retry): so it is sent again
      // here, under the same id and token, and a duplicate is harmless.
      const checkpointed = r.code === 'ALREADY' && r.stage === 'gpu_release_requested' ? await deps.store.releaseAttempt(sessionId, incarnation) : undefined;
      if (checkpointed === undefined) {
        deps.logger.debug({ sessionId, incarnation, code: r.code }, 'release request checkpointed elsewhere, or the destroy moved on');
        return;
      }
      attempt = checkpointed;
    }
  } else if (point.reissue || release === undefined) {
    attempt = { attempt: (release?.attempt ?? 0) + 1, token: drawReleaseToken() };
    const r = await deps.store.advance(sessionId, incarnation, 'gpu_release_requested', now, attempt);
    if (r.code === 'EXHAUSTED' || r.code === 'GAVE_UP') return giveUp(deps, point, placement, r);
    if (r.code !== 'REISSUED') {
      deps.logger.debug({ sessionId, incarnation, code: r.code }, 'release re-issued elsewhere, or the destroy moved on');
      return;
    }
  } else {
    // A redelivery: the request may have been lost after its checkpoint, so send it again, under the same id and token.
    attempt = release;
  }
  await deps.emit(
    EventType.GpuReleaseRequested,
    {
      sessionId, incarnation, placement: { node: placement.node, runtimeUrl: placement.runtimeUrl, gpuBytes: placement.gpuBytes },
      attempt: attempt.attempt, token: attempt.token, reason: 'destroy',
    },
    releaseRequestId(sessionId, incarnation, attempt.attempt),
    // It may ride in the answer to the event that led here (a claim, a resume): nothing below depends on its having
    // left, and a redelivery of that event finds the checkpoint and sends it again under the same id and token.
    { reply: true },
  );
  deps.logger.info({ sessionId, incarnation, attempt: attempt.attempt, node: placement.node }, 'GPU release requested');
}

/**
 * A destroy past its release budget: it left the watchdog for the failed set (EXHAUSTED, by this call) or had already
 * (GAVE_UP). Its node slot goes to the next waiter and session.destroy.failed tells observers (again, under the same
 * id, for GAVE_UP: the first emission may have failed after the script ran). The memory stays counted as held until
 * an operator retries or resolves it.
 */
async function giveUp(deps: DestroyDispatchDeps, point: DestroyPoint, placement: Placement, r: { code: 'EXHAUSTED' | 'GAVE_UP'; attempts: number }): Promise<void> {
  const { sessionId, incarnation } = point;
  const freed = await deps.stormGuard.releaseSlot(placement.node, releaseMember(sessionId, incarnation), deps.now());
  await continueHanded(deps, placement.node, freed.handed);
  const cause = point.cause ?? (await deps.store.inspect(sessionId))?.cause ?? 'forced';
  await deps.emit(
    EventType.SessionDestroyFailed,
    { sessionId, incarnation, cause, node: placement.node, gpuBytes: placement.gpuBytes, attempts: Math.max(1, r.attempts) },
    `${sessionId}/${incarnation}/destroy-failed`,
  );
  if (r.code === 'GAVE_UP') return;
  deps.metrics.destroys.add(1, cause, 'gave_up');
  deps.metrics.destroyFailures.add(1, 'gpu_release_requested', 'gave_up');
  deps.logger.error(
    { sessionId, incarnation, node: placement.node, attempts: r.attempts, gpuBytes: placement.gpuBytes },
    'destroy gave up: the GPU release failed every attempt; it waits for an operator (sessionctl stuck, retry, resolve)',
  );
}

/**
 * Emits session.destroyed with the destroy's timeline, then completes it (the record becomes a tombstone). `read` is
 * the record as read after the purge, when the caller has it; one that is not at state_purged is read again.
 */
async function finish(deps: DestroyDispatchDeps, sessionId: string, incarnation: number, read?: DestroyRecord | null): Promise<void> {
  const view = read?.stage === 'state_purged' ? read : await deps.store.destroyRecord(sessionId);
  if (!view || view.incarnation !== incarnation || view.state !== 'destroying' || view.stage !== 'state_purged' || !view.cause) return;
  const now = deps.now();
  const timeline = [...view.timeline, { stage: 'completed' as const, at: now }];
  const claimedAt = view.claimedAt ?? timeline[0]!.at;
  // Emitted before the record is completed: a crash in between leaves the destroy at state_purged, so the
  // redelivery emits again (same id) instead of the event being lost behind a tombstone.
  await deps.emit(
    EventType.SessionDestroyed,
    {
      sessionId,
      incarnation,
      cause: view.cause,
      timeline: timeline.map((t) => ({ stage: t.stage, at: new Date(t.at).toISOString() })),
      durationMs: Math.max(0, now - claimedAt),
      ...(view.extraCauses.length > 0 ? { extraCauses: view.extraCauses } : {}),
    },
    destroyedId(sessionId, incarnation),
  );
  const c = await deps.store.complete(sessionId, incarnation, now);
  if (c.code === 'COMPLETED') {
    // Counted by the delivery that completed it: a redelivery finds it ALREADY and counts nothing.
    deps.metrics.destroys.add(1, view.cause, 'destroyed');
    deps.metrics.destroyDuration.record(Math.max(0, now - claimedAt) / 1000, view.cause);
    deps.metrics.reclaimLatency.record(Math.max(0, now - (view.causeAt ?? claimedAt)) / 1000, view.cause);
  }
  deps.logger.info({ sessionId, incarnation, cause: view.cause, durationMs: now - claimedAt, code: c.code }, 'session destroyed');
}
