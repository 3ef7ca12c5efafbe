// gpu-release: frees a session's GPU memory on the inference runtime that holds it, and says so only when the runtime
// confirmed it. What it calls comes from Redis, never from the event: the runtime the session (or a migration's old
// allocation) was opened with, and only while the release the event carries the token of is pending, so a forged or
// stale request calls nothing. Idempotence at the runtime comes from the Idempotency-Key `{sessionId}:{incarnation}`,
// so a redelivered request replays the runtime's stored answer instead of releasing twice.
import { Type, type Static } from '@sinclair/typebox';
import { readSettings } from '../core/config.ts';
import { EventType } from '../core/contract/events.ts';
import type { InboundEvent } from '../core/contract/parse.ts';
import { TransientError } from '../core/errors.ts';
import type { Core, CoreDeps } from '../core/function-host.ts';
import { traceHeadersForActiveContext } from '../core/telemetry.ts';
import { createRuntimeClient, publicDescription, RuntimeReleaseError, type RuntimeCallContext, type RuntimeClient } from '../core/runtime-client.ts';

/** The event types gpu-release consumes. */
export const GPU_RELEASE_ACCEPTS = [EventType.GpuReleaseRequested] as const;

/** The event gpu-release handles. */
export type GpuReleaseEvent = InboundEvent<(typeof GPU_RELEASE_ACCEPTS)[number]>;

const Int = (minimum: number, maximum: number, dflt: number, description: string, extra: Record<string, number> = {}) =>
  Type.Integer({ minimum, maximum, default: dflt, description, ...extra });

/** gpu-release's own settings (the per-call timeout is the core's RUNTIME_TIMEOUT_MS). */
export const GpuReleaseSettingsSchema = Type.Object({
  RELEASE_RETRIES: Int(0, 10, 3, 'Retries of one release call after its first attempt, within one delivery.'),
  RELEASE_BASE_BACKOFF_MS: Int(1, 10_000, 50, 'Cap of the first retry backoff; each retry waits a random time up to base x 2^n.'),
  RELEASE_MAX_BACKOFF_MS: Int(1, 60_000, 1000, 'Largest wait between two attempts, Retry-After included.'),
  BREAKER_ERROR_THRESHOLD_PERCENTAGE: Int(1, 100, 50, 'Failed share (%) of calls to one runtime, in the rolling window, that opens its breaker.'),
  BREAKER_RESET_TIMEOUT_MS: Int(100, 600_000, 10_000, 'How long an open breaker refuses calls before one trial call.'),
  BREAKER_VOLUME_THRESHOLD: Int(0, 100_000, 5, 'Calls to a runtime within the rolling window before its breaker may open.'),
  BREAKER_ROLLING_WINDOW_MS: Int(100, 600_000, 10_000, 'Length of the breaker statistics window (ten equal slices).', { multipleOf: 10 }),
  BREAKER_IDLE_MS: Int(1000, 86_400_000, 600_000, 'A closed breaker with no call to its runtime for this long is shut down and dropped (a later call makes a fresh one), so runtimes that come and go are not remembered forever.'),
});

/** gpu-release's validated settings. */
export type GpuReleaseSettings = Readonly<Static<typeof GpuReleaseSettingsSchema>>;

/** Reads and validates gpu-release's settings from an environment map (defaults for what is unset). */
export function readGpuReleaseSettings(env: NodeJS.ProcessEnv): GpuReleaseSettings {
  return readSettings(GpuReleaseSettingsSchema, env);
}

/** What gpu-release's handler needs beyond the core: one runtime client (one breaker per runtime) per process. */
export interface GpuReleaseDeps {
  readonly runtime: RuntimeClient;
}

/** Builds gpu-release's dependencies once per process (the `extend` of its function definition). */
export function createGpuReleaseDeps(core: Pick<Core, 'deps'>, settings: GpuReleaseSettings): GpuReleaseDeps {
  const { config, logger, runtimes, outboundPolicy } = core.deps;
  const runtime = createRuntimeClient({
    registry: runtimes,
    addressPolicy: outboundPolicy,
    timeoutMs: config.RUNTIME_TIMEOUT_MS,
    retries: settings.RELEASE_RETRIES,
    baseBackoffMs: settings.RELEASE_BASE_BACKOFF_MS,
    maxBackoffMs: settings.RELEASE_MAX_BACKOFF_MS,
    breaker: {
      errorThresholdPercentage: settings.BREAKER_ERROR_THRESHOLD_PERCENTAGE,
      resetTimeoutMs: settings.BREAKER_RESET_TIMEOUT_MS,
      volumeThreshold: settings.BREAKER_VOLUME_THRESHOLD,
      rollingCountTimeoutMs: settings.BREAKER_ROLLING_WINDOW_MS,
    },
    breakerIdleMs: settings.BREAKER_IDLE_MS,
    logger,
  });
  return { runtime };
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
