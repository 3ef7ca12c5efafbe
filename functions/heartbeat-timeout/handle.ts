// heartbeat-timeout's request side: session.opened starts (or refreshes, or migrates) a session's liveness
// deadline, session.heartbeat pushes it out, session.hold keeps it out for a while. The deadline itself is watched
// by the deadline engine (deadline-engine.ts), the second entry point of this function.
import { EventType } from '../core/contract/events.ts';
import { eventTimeOf, type InboundEvent } from '../core/contract/parse.ts';
import { BackpressureError, ContractError, OwnershipError } from '../core/errors.ts';
import type { CoreDeps } from '../core/function-host.ts';
import { eventFingerprint } from '../core/session-store.ts';

/** The event types heartbeat-timeout consumes. */
export const ACCEPTS = [EventType.SessionOpened, EventType.SessionHeartbeat, EventType.SessionHold] as const;

/** An event this function consumes. */
export type HeartbeatTimeoutEvent = InboundEvent<(typeof ACCEPTS)[number]>;

/** Applies one session.opened, session.heartbeat or session.hold; each first step is one idempotent script call. */
export async function handle(event: HeartbeatTimeoutEvent, deps: CoreDeps): Promise<void> {
  const now = deps.now();
  // When the session was last known alive.
  const liveFrom = eventTimeOf(event, now);
  switch (event.type) {
    case EventType.SessionOpened:
      return opened(event, deps, now, liveFrom);
    case EventType.SessionHeartbeat: {
      const r = await deps.store.heartbeat(event.data.sessionId, liveFrom, now, event.tenant ?? '');
      if (r.code === 'NOT_OWNER') throw new OwnershipError(event.data.sessionId);
      // A heartbeat for a session being destroyed (or gone) never revives it: acknowledged and dropped.
      if (r.code !== 'REFRESHED' && deps.logger.isLevelEnabled('debug')) {
        deps.logger.debug({ sessionId: event.data.sessionId, code: r.code }, 'heartbeat for a session that is not live: ignored');
      }
      return;
    }
    case EventType.SessionHold: {
      const { sessionId, durationMs, reason } = event.data;
      const granted = Math.min(durationMs, deps.config.MAX_HOLD_MS);
      const r = await deps.store.hold(sessionId, eventFingerprint(event.source, event.id), now, granted, event.tenant ?? '');
      if (r.code === 'NOT_OWNER') throw new OwnershipError(sessionId);
      if (r.code === 'HELD') deps.logger.info({ sessionId, incarnation: r.incarnation, holdUntil: r.holdUntil, requestedMs: durationMs, grantedMs: granted, reason }, 'hold granted');
      else deps.logger.debug({ sessionId, code: r.code }, 'hold not applied');
      return;
    }
  }
}

async function opened(event: Extract<HeartbeatTimeoutEvent, { type: typeof EventType.SessionOpened }>, deps: CoreDeps, now: number, liveFrom: number): Promise<void> {
  const { sessionId, placement, heartbeatIntervalMs, missedBeats, model } = event.data;
  // The runtime must be one the operator registered, for this node: an event never chooses where a release goes.
  const registered = deps.runtimes.resolve(placement.runtimeUrl, placement.node);
  if ('refused' in registered) {
    throw registered.refused === 'node_not_registered'
      ? new ContractError('UNREGISTERED_RUNTIME', 'data.placement.node', 'the runtime is registered, but not for this node (RUNTIMES)')
      : new ContractError('UNREGISTERED_RUNTIME', 'data.placement.runtimeUrl', 'is not a registered runtime (RUNTIMES)');
  }
  // A llama-server session lives in one slot, and its release erases that slot: without a slot, or with one the
  // server would wrap around onto another session's (id % slots), it could never be released correctly.
  const engine = registered.engine;
  if (engine.kind === 'llamacpp' && (placement.slot === undefined || placement.slot >= engine.slots)) {
    throw new ContractError('INVALID_FIELD', 'data.placement.slot', `must name the session's slot on this llama-server runtime, below its ${engine.slots} slots`);
  }
  const windowMs = (heartbeatIntervalMs ?? deps.config.DEFAULT_HEARTBEAT_INTERVAL_MS) * (missedBeats ?? deps.config.DEFAULT_MISSED_BEATS);
  const r = await deps.store.open({
    sessionId,
    fingerprint: eventFingerprint(event.source, event.id),
    now,
    liveFrom,
    windowMs,
    placement: { node: placement.node, runtimeUrl: registered.endpoint, gpuBytes: placement.gpuBytes ?? 0, slot: placement.slot, engineSessionId: placement.engineSessionId },
    tenant: event.tenant,
    model,
  });
  const log = deps.logger;
  if (r.code === 'OPENED' || r.code === 'REOPENED' || r.code === 'MIGRATED') deps.metrics.sessionsOpened.add(1);
  switch (r.code) {
    case 'OPENED':
    case 'REOPENED':
      if (r.endedBy) log.info({ sessionId, incarnation: r.incarnation, code: r.code, endedBy: r.endedBy }, 'session opened after its end arrived: the deadline engine ends it at once');
      else log.info({ sessionId, incarnation: r.incarnation, deadline: r.deadline, windowMs, code: r.code }, 'session opened');
      return;
    case 'REFRESHED':
    case 'DUPLICATE':
    case 'STALE':
      log.debug({ sessionId, incarnation: r.incarnation, code: r.code }, 'session.opened changed nothing new');
      return;
    case 'NOT_OWNER':
      throw new OwnershipError(sessionId);
    case 'BUSY':
      // The previous incarnation is mid-destroy; once it is destroyed this opened starts a new one.
      throw new BackpressureError(`session ${sessionId} is still being destroyed (incarnation ${r.incarnation}); retry later`, { cause: undefined });
    case 'MIGRATED': {
      const { previous } = r;
      log.info({ sessionId, incarnation: r.incarnation, previousIncarnation: previous.incarnation, from: previous.placement.node, to: placement.node }, 'session migrated');
      // The old placement's memory is released under the same fencing as a destroy. If this emission fails the
      // Broker redelivers the opened, which is then a DUPLICATE: the deadline engine's watchdog re-requests the
      // release once the migration entry has stalled for DESTROY_STALL_MS, so the memory is never forgotten.
      await deps.emit(
        EventType.GpuReleaseRequested,
        { sessionId, incarnation: previous.incarnation, placement: previous.placement, attempt: 1, token: previous.token, reason: 'migration' },
        `${sessionId}/${previous.incarnation}/release/1`,
      );
      return;
    }
  }
}
