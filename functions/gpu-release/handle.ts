// gpu-release: frees a session's GPU memory on the inference runtime that holds it, and says so only when the runtime
// confirmed it. What it calls comes from Redis, never from the event: the runtime the session (or a migration's old
// allocation) was opened with, and only while the release the event carries the token of is pending, so a forged or
// stale request calls nothing. Each release attempt reaches the runtime once (beginReleaseCall): a duplicate or
// concurrent delivery of it calls nothing, since real engines do not honour the Idempotency-Key
// `{sessionId}:{incarnation}` it is still sent with.
import { EventType } from '../core/contract/events.ts';
import type { InboundEvent } from '../core/contract/parse.ts';
import { TransientError } from '../core/errors.ts';
import type { Core, CoreDeps } from '../core/function-host.ts';
import { traceHeadersForActiveContext } from '../core/telemetry.ts';
import { createEngineClient, type EngineAddress } from '../core/runtime-adapters/index.ts';
import { publicDescription, RuntimeReleaseError, type ReleaseResult, type RuntimeCallContext, type RuntimeClient } from '../core/runtime-client.ts';
import { runtimeClientFor, type RuntimeCallSettings } from '../core/runtime-call-settings.ts';
import { handleOffload, OFFLOAD_ACCEPTS, type OffloadCaller } from './offload.ts';

/** The event types gpu-release consumes: releases, and demote before destroy's requests (offload.ts). */
export const GPU_RELEASE_ACCEPTS = [EventType.GpuReleaseRequested, ...OFFLOAD_ACCEPTS] as const;

/** An event gpu-release handles. */
export type GpuReleaseEvent = InboundEvent<(typeof GPU_RELEASE_ACCEPTS)[number]>;

/** A release request. */
type ReleaseRequestEvent = InboundEvent<typeof EventType.GpuReleaseRequested>;

/** gpu-release's own settings: the runtime call rules (functions/core/runtime-call-settings.ts), shared with the reconciler. */
export { RuntimeCallSettingsSchema as GpuReleaseSettingsSchema, readRuntimeCallSettings as readGpuReleaseSettings, type RuntimeCallSettings as GpuReleaseSettings } from '../core/runtime-call-settings.ts';

/**
 * The release call gpu-release makes: the engine client's (functions/core/runtime-adapters/), which speaks each
 * registered runtime's own API and takes the session's engine address; a plain RuntimeClient fits too (native only).
 */
export type ReleaseCaller = Pick<RuntimeClient, 'shutdown' | 'breakerState'> & OffloadCaller & {
  release(runtimeUrl: string, sessionId: string, incarnation: number, ctx?: RuntimeCallContext, address?: EngineAddress): Promise<ReleaseResult>;
};

/** What gpu-release's handler needs beyond the core: one runtime client (one breaker per runtime) per process. */
export interface GpuReleaseDeps {
  readonly runtime: ReleaseCaller;
  /**
   * How long one delivery holds the runtime call of a release attempt: the longest its call may take, retries and
   * backoffs included, plus a second. Another delivery of the same attempt calls only once it ran out.
   */
  readonly callLeaseMs: number;
  /** How long a refusal for good keeps a migration's release (whose token never changes) from calling again: the stall. */
  readonly failedBlocksMs: number;
}

/** The longest one release call may take with its retries: every attempt timing out, every backoff at its cap. */
export function releaseCallLeaseMs(timeoutMs: number, settings: Pick<RuntimeCallSettings, 'RELEASE_RETRIES' | 'RELEASE_MAX_BACKOFF_MS'>): number {
  return timeoutMs * (settings.RELEASE_RETRIES + 1) + settings.RELEASE_MAX_BACKOFF_MS * settings.RELEASE_RETRIES + 1000;
}

/** Builds gpu-release's dependencies once per process (the `extend` of its function definition). */
export function createGpuReleaseDeps(core: Pick<Core, 'deps'>, settings: RuntimeCallSettings): GpuReleaseDeps {
  return {
    runtime: createEngineClient(runtimeClientFor(core.deps, settings), core.deps.runtimes),
    callLeaseMs: releaseCallLeaseMs(core.deps.config.RUNTIME_TIMEOUT_MS, settings),
    failedBlocksMs: core.deps.config.DESTROY_STALL_MS,
  };
}

// The runtime call continues the handler's span; with no active span (a bare handle() call) the event's own
// trace context is passed on, so the runtime still joins the session's trace.
function callContext(event: GpuReleaseEvent): RuntimeCallContext {
  const active = traceHeadersForActiveContext();
  const traceparent = active.traceparent ?? event.traceparent;
  const tracestate = active.traceparent !== undefined ? active.tracestate : event.tracestate;
  return { ...(traceparent === undefined ? {} : { traceparent }), ...(tracestate === undefined ? {} : { tracestate }) };
}

/** Counts one release call: its outcome, its duration (retries and backoffs included) and the attempts beyond the first. */
function recordCall(deps: CoreDeps, runtime: string, outcome: string, started: number, attempts: number): void {
  deps.metrics.releaseRequests.add(1, runtime, outcome);
  deps.metrics.releaseDuration.record((performance.now() - started) / 1000, runtime, outcome);
  if (attempts > 1) deps.metrics.releaseRetries.add(attempts - 1, runtime);
}

// A release's confirmation may ride in the answer to its request: the answer is its last step, and a redelivered
// request finds the call answered in Redis and reports it again under the same id (EmitOptions in function-host.ts). A
// failure is sent on its own, never as a reply: a redelivery that finds it failed for good calls nothing and has no
// stored answer to report again, so a reply lost with its answer would leave the destroy to the watchdog.
const REPLY = { reply: true } as const;

/** Handles what gpu-release consumes: a release request here, a demote or restore request in offload.ts. */
export async function handle(event: GpuReleaseEvent, deps: CoreDeps & GpuReleaseDeps): Promise<void> {
  if (event.type !== EventType.GpuReleaseRequested) return handleOffload(event, deps, callContext(event));
  return handleRelease(event, deps);
}

/**
 * Handles a gpu.release.requested: calls the runtime's release API and emits gpu.released with the bytes the runtime
 * confirmed (released, already gone, or superseded by a newer incarnation). A retryable failure (breaker open, retry
 * budget spent) emits gpu.release.failed and throws TransientError so the Broker redelivers the request later; a
 * permanent one emits gpu.release.failed (retryable: false) and acknowledges, since redelivery cannot help.
 */
async function handleRelease(event: ReleaseRequestEvent, deps: CoreDeps & GpuReleaseDeps): Promise<void> {
  const { sessionId, incarnation, attempt, token } = event.data;
  const target = await deps.store.beginReleaseCall(sessionId, incarnation, token, deps.now(), deps.callLeaseMs, deps.failedBlocksMs);
  switch (target.code) {
    case 'NOT_PENDING':
      // Acknowledged: a redelivery of an attempt since superseded, or booked, is normal; a forged one calls nothing.
      deps.logger.warn({ sessionId, incarnation, attempt, why: target.why }, 'gpu.release.requested for no release pending under its token: nothing called');
      return;
    case 'IN_FLIGHT':
      // Another delivery is calling the runtime for this allocation. Redelivered later rather than acknowledged: it
      // then finds the answer (and reports it again), or, should the caller have died, a lease run out and calls.
      throw new TransientError(`the GPU release of ${sessionId}/${incarnation} is in flight elsewhere until ${new Date(target.leaseUntil).toISOString()}; redeliver later`, { cause: undefined });
    case 'FAILED':
      deps.logger.info({ sessionId, incarnation, attempt }, 'GPU release of this attempt was refused for good already: not called again');
      return;
    case 'ANSWERED':
      // The runtime confirmed it, and the report may have been lost: report it again (same id), call nothing.
      await deps.emit(EventType.GpuReleased, { sessionId, incarnation, node: target.node, freedBytes: target.freedBytes, token, ...(target.estimated ? { estimated: true as const } : {}) }, `${sessionId}/${incarnation}/released/${attempt}`, REPLY);
      return;
    case 'CALL':
      break;
  }
  const { node, runtimeUrl } = target;
  const log = deps.logger.child({ sessionId, incarnation, node, attempt });
  if (event.data.placement.runtimeUrl !== runtimeUrl || event.data.placement.node !== node) {
    log.warn({ named: event.data.placement.node }, 'gpu.release.requested names another placement than the session was opened with; the stored one is called');
  }
  let freedBytes: number;
  let outcome: string;
  let estimated: boolean;
  let note: string | undefined;
  const runtimeName = deps.runtimes.lookup(runtimeUrl)?.name ?? 'other';
  const started = performance.now();
  try {
    const result = await deps.runtime.release(runtimeUrl, sessionId, incarnation, callContext(event), target.address);
    freedBytes = result.freedBytes;
    outcome = result.outcome;
    estimated = result.exact === false;
    note = result.note;
    recordCall(deps, runtimeName, result.outcome, started, result.attempts);
  } catch (err) {
    if (err instanceof RuntimeReleaseError) recordCall(deps, runtimeName, err.reason === 'breaker_open' ? 'breaker_open' : err.retryable ? 'failed_retryable' : 'failed', started, err.attempts);
    // An unexpected fault says nothing about the runtime: the call is released so the redelivery may call.
    const settle = deps.store.settleReleaseCall(sessionId, incarnation, token, err instanceof RuntimeReleaseError && !err.retryable ? { failedAt: deps.now() } : 'retry');
    if (!(err instanceof RuntimeReleaseError)) {
      await settle.catch((settleErr: unknown) => log.warn({ err: settleErr }, 'could not release the runtime call; its lease runs out'));
      throw err;
    }
    // One id per (attempt, reason): a redelivery that fails the same way reports the same failure, not a new one.
    // The event says what kind of failure it was, never what the runtime answered or where it is (the log has it).
    await Promise.all([
      settle,
      deps.emit(
        EventType.GpuReleaseFailed,
        { sessionId, incarnation, node, error: publicDescription(err), retryable: err.retryable, token },
        `${sessionId}/${incarnation}/failed/${attempt}/${err.reason}`,
      ),
    ]);
    if (err.retryable) {
      throw new TransientError(`GPU release not confirmed (${err.reason}); the Broker will redeliver`, { cause: err });
    }
    log.error({ reason: err.reason, status: err.status, err: err.message }, 'GPU release refused for good; not retried');
    return;
  }
  // Recorded beside the report: should the report be lost, the redelivery finds the answer and reports it again.
  await Promise.all([
    deps.store.settleReleaseCall(sessionId, incarnation, token, { answered: freedBytes, estimated }),
    deps.emit(EventType.GpuReleased, { sessionId, incarnation, node, freedBytes, token, ...(estimated ? { estimated: true as const } : {}) }, `${sessionId}/${incarnation}/released/${attempt}`, REPLY),
  ]);
  log.info({ outcome, freedBytes, estimated, note, reason: event.data.reason ?? 'destroy' }, 'GPU memory released');
}
