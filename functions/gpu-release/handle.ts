// gpu-release: frees a session's GPU memory on the inference runtime that holds it, and says so only when the runtime
// confirmed it. What it calls comes from Redis, never from the event: the runtime the session (or a migration's old
// allocation) was opened with, and only while the release the event carries the token of is pending, so a forged or
// stale request calls nothing. Idempotence at the runtime comes from the Idempotency-Key `{sessionId}:{incarnation}`,
// so a redelivered request replays the runtime's stored answer instead of releasing twice.
import { EventType } from '../core/contract/events.ts';
import type { InboundEvent } from '../core/contract/parse.ts';
import { TransientError } from '../core/errors.ts';
import type { Core, CoreDeps } from '../core/function-host.ts';
import { traceHeadersForActiveContext } from '../core/telemetry.ts';
import { publicDescription, RuntimeReleaseError, type RuntimeCallContext, type RuntimeClient } from '../core/runtime-client.ts';
import { runtimeClientFor, type RuntimeCallSettings } from '../core/runtime-call-settings.ts';

/** The event types gpu-release consumes. */
export const GPU_RELEASE_ACCEPTS = [EventType.GpuReleaseRequested] as const;

/** The event gpu-release handles. */
export type GpuReleaseEvent = InboundEvent<(typeof GPU_RELEASE_ACCEPTS)[number]>;

/** gpu-release's own settings: the runtime call rules (functions/core/runtime-call-settings.ts), shared with the reconciler. */
export { RuntimeCallSettingsSchema as GpuReleaseSettingsSchema, readRuntimeCallSettings as readGpuReleaseSettings, type RuntimeCallSettings as GpuReleaseSettings } from '../core/runtime-call-settings.ts';

/** What gpu-release's handler needs beyond the core: one runtime client (one breaker per runtime) per process. */
export interface GpuReleaseDeps {
  readonly runtime: RuntimeClient;
}

/** Builds gpu-release's dependencies once per process (the `extend` of its function definition). */
export function createGpuReleaseDeps(core: Pick<Core, 'deps'>, settings: RuntimeCallSettings): GpuReleaseDeps {
  return { runtime: runtimeClientFor(core.deps, settings) };
}

// The runtime call continues the handler's span; with no active span (a bare handle() call) the event's own
// trace context is passed on, so the runtime still joins the session's trace.
function callContext(event: GpuReleaseEvent): RuntimeCallContext {
  const active = traceHeadersForActiveContext();
  const traceparent = active.traceparent ?? event.traceparent;
  const tracestate = active.traceparent !== undefined ? active.tracestate : event.tracestate;
  return { ...(traceparent === undefined ? {} : { traceparent }), ...(tracestate === undefined ? {} : { tracestate }) };
}

/**
 * Handles a gpu.release.requested: calls the runtime's release API and emits gpu.released with the bytes the runtime
 * confirmed (released, already gone, or superseded by a newer incarnation). A retryable failure (breaker open, retry
 * budget spent) emits gpu.release.failed and throws TransientError so the Broker redelivers the request later; a
 * permanent one emits gpu.release.failed (retryable: false) and acknowledges, since redelivery cannot help.
 */
export async function handle(event: GpuReleaseEvent, deps: CoreDeps & GpuReleaseDeps): Promise<void> {
  const { sessionId, incarnation, attempt, token } = event.data;
  const target = await deps.store.releaseTarget(sessionId, incarnation, token);
  if (target.code !== 'PENDING') {
    // Acknowledged: a redelivery of an attempt since superseded, or booked, is normal; a forged one calls nothing.
    deps.logger.warn({ sessionId, incarnation, attempt, why: target.why }, 'gpu.release.requested for no release pending under its token: nothing called');
    return;
  }
  const { node, runtimeUrl } = target;
  const log = deps.logger.child({ sessionId, incarnation, node, attempt });
  if (event.data.placement.runtimeUrl !== runtimeUrl || event.data.placement.node !== node) {
    log.warn({ named: event.data.placement.node }, 'gpu.release.requested names another placement than the session was opened with; the stored one is called');
  }
  let freedBytes: number;
  let outcome: string;
  try {
    const result = await deps.runtime.release(runtimeUrl, sessionId, incarnation, callContext(event));
    freedBytes = result.freedBytes;
    outcome = result.outcome;
  } catch (err) {
    if (!(err instanceof RuntimeReleaseError)) throw err;
    // One id per (attempt, reason): a redelivery that fails the same way reports the same failure, not a new one.
    // The event says what kind of failure it was, never what the runtime answered or where it is (the log has it).
    await deps.emit(
      EventType.GpuReleaseFailed,
      { sessionId, incarnation, node, error: publicDescription(err), retryable: err.retryable, token },
      `${sessionId}/${incarnation}/failed/${attempt}/${err.reason}`,
    );
    if (err.retryable) {
      throw new TransientError(`GPU release not confirmed (${err.reason}); the Broker will redeliver`, { cause: err });
    }
    log.error({ reason: err.reason, status: err.status, err: err.message }, 'GPU release refused for good; not retried');
    return;
  }
  await deps.emit(EventType.GpuReleased, { sessionId, incarnation, node, freedBytes, token }, `${sessionId}/${incarnation}/released/${attempt}`);
  log.info({ outcome, freedBytes, reason: event.data.reason ?? 'destroy' }, 'GPU memory released');
}
