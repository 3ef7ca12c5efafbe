// What `npm start` tells its user about a run: it watches every event the local Broker accepts (the demo's and any
// pipeline's alike) and, with the GPU ledger in Redis and the simulated runtime's counters, sums it up: sessions by
// cause, detection lag, destroy latency, GPU bytes registered versus freed, dead letters.
import { DESTROY_CAUSES, EventType, type DestroyCause } from '../../functions/core/contract/events.ts';
import type { LedgerAudit } from '../../functions/core/ledger.ts';
import type { BrokerStats } from '../local-broker/broker.ts';
import type { BrokerEvent } from '../local-broker/wire.ts';

/** p50 and p99 (nearest rank) of a set of durations, ms. */
export interface Percentiles {
  count: number;
  p50: number;
  p99: number;
  max: number;
}

/** The live figures the recorder keeps, for the progress line. */
export interface LiveFigures {
  opened: number;
  /** Session incarnations destroyed (each counted once, however often its destroyed event was delivered). */
  ended: number;
  byCause: Record<DestroyCause, number>;
  /** GPU bytes of sessions opened and not destroyed yet, as their session.opened events declared them. */
  gpuBytesOpen: number;
  events: number;
}

/** The samples behind the report's latencies. */
export interface LatencySamples {
  /** session.expired lagMs: deadline to detection. */
  detectionLagMs: number[];
  /** session.destroyed durationMs: claim to completion. */
  destroyMs: number[];
  /** From the time of the event that ended the session (its CloudEvent time) to the destroyed event at the Broker. */
  endToEndMs: number[];
}

/** Watches the events the Broker accepts and keeps what the progress line and the report need. */
export interface RunRecorder {
  observe(event: BrokerEvent): void;
  live(): LiveFigures;
  samples(): LatencySamples;
  /** Session incarnations whose destroyed event came with more than one distinct event id (must stay 0). */
  destroyedTwice(): number;
}

// The event that ends a session with each cause; the first one seen after the session opened starts the clock.
const TRIGGER_OF: Readonly<Record<string, DestroyCause>> = {
  [EventType.SessionClosed]: 'closed',
  [EventType.InferenceCompleted]: 'completed',
  [EventType.SessionExpired]: 'expired',
  [EventType.SessionIdle]: 'idle',
  [EventType.SessionDestroyRequested]: 'forced',
};

function dataOf(event: BrokerEvent): Record<string, unknown> | undefined {
  if (event.data === undefined) return undefined;
  try {
    const parsed = JSON.parse(event.data.toString('utf8')) as unknown;
    return typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed) ? (parsed as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

/** Creates a recorder; `now` is the clock destroyed events are timed by (injectable for tests). */
export function createRunRecorder(now: () => number = Date.now): RunRecorder {
  const zero = () => Object.fromEntries(DESTROY_CAUSES.map((c) => [c, 0])) as Record<DestroyCause, number>;
  const byCause = zero();
  const seenIds = new Set<string>();
  const gpuBytesOf = new Map<string, number>(); // sessionId -> bytes of its open incarnation
  const destroyedIds = new Map<string, Set<string>>(); // sessionId:incarnation -> destroyed event ids
  const triggerAt = new Map<string, Map<DestroyCause, number>>(); // sessionId -> cause -> trigger time
  const samples: LatencySamples = { detectionLagMs: [], destroyMs: [], endToEndMs: [] };
  let opened = 0;
  let ended = 0;
  let events = 0;
  let gpuBytesOpen = 0;

  return {
    observe(event) {
      const { type, id, source, time } = event.attributes;
      // The Broker is at-least-once: a redelivered event (same source and id) is counted once.
      const key = `${String(source)} ${String(id)}`;
      if (seenIds.has(key)) return;
      seenIds.add(key);
      events++;
      const data = dataOf(event);
      const sessionId = str(data?.sessionId);
      if (data === undefined || sessionId === undefined) return;
      const at = now();
      const sentAt = Math.min(typeof time === 'string' && Date.parse(time) ? Date.parse(time) : at, at);
      if (type === EventType.SessionOpened) {
        opened++;
        const bytes = num((data.placement as Record<string, unknown> | undefined)?.gpuBytes) ?? 0;
        gpuBytesOpen += bytes - (gpuBytesOf.get(sessionId) ?? 0);
        gpuBytesOf.set(sessionId, bytes);
        triggerAt.delete(sessionId);
        return;
      }
      const cause = typeof type === 'string' ? TRIGGER_OF[type] : undefined;
      if (cause !== undefined && (type !== EventType.InferenceCompleted || data.release === true)) {
        const causes = triggerAt.get(sessionId) ?? new Map<DestroyCause, number>();
        if (!causes.has(cause)) causes.set(cause, sentAt);
        triggerAt.set(sessionId, causes);
      }
      if (type === EventType.SessionExpired) {
        const lag = num(data.lagMs);
        if (lag !== undefined) samples.detectionLagMs.push(lag);
      }
      if (type === EventType.SessionDestroyed) {
        const incarnationKey = `${sessionId}:${String(num(data.incarnation))}`;
        const ids = destroyedIds.get(incarnationKey) ?? new Set<string>();
        ids.add(String(id));
        destroyedIds.set(incarnationKey, ids);
        if (ids.size > 1) return;
        ended++;
        const c = str(data.cause) as DestroyCause | undefined;
        if (c !== undefined && c in byCause) byCause[c]++;
        const duration = num(data.durationMs);
        if (duration !== undefined) samples.destroyMs.push(duration);
        const started = c === undefined ? undefined : triggerAt.get(sessionId)?.get(c);
        if (started !== undefined) samples.endToEndMs.push(Math.max(0, at - started));
        triggerAt.delete(sessionId);
        gpuBytesOpen -= gpuBytesOf.get(sessionId) ?? 0;
        gpuBytesOf.delete(sessionId);
      }
    },
    live: () => ({ opened, ended, byCause: { ...byCause }, gpuBytesOpen, events }),
    samples: () => ({ detectionLagMs: [...samples.detectionLagMs], destroyMs: [...samples.destroyMs], endToEndMs: [...samples.endToEndMs] }),
    destroyedTwice: () => [...destroyedIds.values()].filter((ids) => ids.size > 1).length,
  };
}

/** p50/p99/max by nearest rank; undefined for no samples. */
export function percentiles(values: readonly number[]): Percentiles | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = (p: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))]!;
  return { count: sorted.length, p50: rank(0.5), p99: rank(0.99), max: sorted[sorted.length - 1]! };
}

/** The simulated runtime's counters (GET /sim/stats), the part the report uses. */
export interface RuntimeCounters {
  totalAllocated: number;
  totalFreed: number;
  usedBytes: number;
}

/** GPU bytes of this run: the ledger's change since the run began, its balance now, and the runtime's own count. */
export interface GpuFigures {
  /** Bytes registered by sessions opened during the run (ledger). */
  registeredBytes: number;
  /** Bytes booked as released during the run (ledger). */
  releasedBytes: number;
  /** Bytes the ledger holds now for sessions not released yet (all sessions, not only this run's). */
  heldBytes: number;
  /** The simulated runtime's bytes allocated, freed, and in use now; undefined when it could not be asked. */
  runtime: RuntimeCounters | undefined;
  /** The ledger balances (registered = released + held on every node) and, once no session is open, all was freed. */
  balanced: boolean;
  problems: string[];
}

/** The report printed at the end of the demo and on stop. */
export interface StackReport {
  sessions: { opened: number; ended: number; stillOpen: number; byCause: Record<DestroyCause, number>; destroyedTwice: number };
  detectionLagMs: Percentiles | undefined;
  destroyMs: Percentiles | undefined;
  endToEndMs: Percentiles | undefined;
  gpu: GpuFigures;
  deadLetters: { thisRun: number; stored: number };
  broker: Pick<BrokerStats, 'received' | 'rejected' | 'delivered' | 'retried' | 'pending'>;
  /** Crashed processes the stack restarted during the run, by name (those restarted only). */
  restarts: Record<string, number>;
}

/**
 * Compares two ledger audits (at the start of the run and now) and the runtime's counters. The ledger must balance
 * on every node; once no session of the run is open, every byte it registered must also have been freed.
 */
export function gpuFigures(start: LedgerAudit, end: LedgerAudit, runtime: RuntimeCounters | undefined, sessionsStillOpen: number): GpuFigures {
  const registeredBytes = end.totals.registeredBytes - start.totals.registeredBytes;
  const releasedBytes = end.totals.releasedBytes - start.totals.releasedBytes;
  const problems = [...end.problems];
  if (sessionsStillOpen === 0 && registeredBytes !== releasedBytes) problems.push(`this run registered ${registeredBytes} bytes and released ${releasedBytes}`);
  if (sessionsStillOpen === 0 && runtime !== undefined && runtime.totalAllocated !== runtime.totalFreed) {
    problems.push(`the simulated runtime allocated ${runtime.totalAllocated} bytes and freed ${runtime.totalFreed}`);
  }
  return { registeredBytes, releasedBytes, heldBytes: end.totals.heldBytes, runtime, balanced: problems.length === 0, problems };
}

/** Assembles the report from the recorder, the GPU figures, the Broker and the stack's restarts by process. */
export function buildReport(recorder: RunRecorder, gpu: GpuFigures, broker: BrokerStats, storedDeadLetters: number, restarts: Readonly<Record<string, number>> = {}): StackReport {
  const live = recorder.live();
  const samples = recorder.samples();
  return {
    sessions: { opened: live.opened, ended: live.ended, stillOpen: Math.max(0, live.opened - live.ended), byCause: live.byCause, destroyedTwice: recorder.destroyedTwice() },
    detectionLagMs: percentiles(samples.detectionLagMs),
    destroyMs: percentiles(samples.destroyMs),
    endToEndMs: percentiles(samples.endToEndMs),
    gpu,
    deadLetters: { thisRun: broker.deadLettered, stored: storedDeadLetters },
    broker: { received: broker.received, rejected: broker.rejected, delivered: broker.delivered, retried: broker.retried, pending: broker.pending },
    restarts: Object.fromEntries(Object.entries(restarts).filter(([, n]) => n > 0)),
  };
}

/** Bytes as people read them (binary units). */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(1)} ${units[unit]}`;
}

const ms = (p: Percentiles | undefined) => (p === undefined ? 'no samples' : `p50 ${p.p50} ms · p99 ${p.p99} ms · max ${p.max} ms (${p.count})`);

/** The report as terminal text. */
export function formatReport(r: StackReport, title = 'session-reaper report'): string {
  const causes = DESTROY_CAUSES.map((c) => `${c} ${r.sessions.byCause[c]}`).join(' · ');
  const g = r.gpu;
  const runtime = g.runtime === undefined ? 'not reachable' : `allocated ${formatBytes(g.runtime.totalAllocated)} · freed ${formatBytes(g.runtime.totalFreed)} · in use ${formatBytes(g.runtime.usedBytes)}`;
  const lines = [
    `── ${title} ──`,
    `sessions          opened ${r.sessions.opened} · ended ${r.sessions.ended} · still open ${r.sessions.stillOpen}${r.sessions.destroyedTwice > 0 ? ` · DESTROYED TWICE ${r.sessions.destroyedTwice}` : ''}`,
    `  by cause        ${causes}`,
    `detection lag     ${ms(r.detectionLagMs)}   (session.expired lagMs)`,
    `destroy latency   ${ms(r.destroyMs)}   (claim → destroyed)`,
    `  end to end      ${ms(r.endToEndMs)}   (ending event sent → destroyed)`,
    `GPU bytes         registered ${formatBytes(g.registeredBytes)} (${g.registeredBytes}) · freed ${formatBytes(g.releasedBytes)} (${g.releasedBytes}) · held now ${formatBytes(g.heldBytes)}`,
    `  runtime         ${runtime}`,
    `  balance         ${!g.balanced ? `NOT BALANCED: ${g.problems.join('; ')}` : r.sessions.stillOpen === 0 ? 'balanced: every registered byte freed exactly once' : `ledger balanced; ${r.sessions.stillOpen} sessions still open hold their memory`}`,
    `dead letters      ${r.deadLetters.thisRun} this run · ${r.deadLetters.stored} in the store`,
    `broker            ${r.broker.received} events accepted · ${r.broker.rejected} refused · ${r.broker.delivered} deliveries · ${r.broker.retried} retried · ${r.broker.pending} pending`,
    `restarts          ${Object.keys(r.restarts).length === 0 ? 'none' : Object.entries(r.restarts).map(([name, n]) => `${name} ${n}`).join(' · ')}   (crashed processes restarted)`,
  ];
  return lines.join('\n');
}
