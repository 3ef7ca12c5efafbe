// What `npm start` tells its user about a run: it watches every event the local Broker accepts (the demo's and any
// pipeline's alike) and, with the GPU ledger in Redis and the simulated runtime's counters, sums it up: sessions by
// cause, detection lag, destroy latency, GPU bytes registered versus freed, dead letters. With the real llama.cpp
// engine (`--engine llama`) it also sets the KV bytes session-reaper booked as freed for the sessions placed there
// beside the engine's own reading: what the demo's turns filled, and whether the engine is back where it started.
import { DESTROY_CAUSES, EventType, type DestroyCause } from '../../functions/core/contract/events.ts';
import type { LedgerAudit } from '../../functions/core/ledger.ts';
import type { DemoEngineFigures } from './demo-engine.ts';
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
  /** What the Broker saw of the sessions placed on one runtime (placement.runtimeUrl). */
  runtimeSessions(runtimeUrl: string): RuntimeSessions;
}

/** The sessions placed on one runtime, as their events told: opened, ended, declared and freed bytes. */
export interface RuntimeSessions {
  opened: number;
  ended: number;
  /** GPU bytes their session.opened placements declared. */
  registeredBytes: number;
  /** The nodes they were placed on. */
  nodes: string[];
  /** Whether sessions on another runtime were placed on one of those nodes too (the ledger is kept by node). */
  nodesShared: boolean;
  /** Their gpu.released events, one per session incarnation, and the freedBytes each reported. */
  releases: number;
  freedBytes: number;
  /** freedBytes by `sessionId:incarnation`. */
  freedBy: Record<string, number>;
  /**
   * Demote before destroy: their gpu.demoted (GPU KV freed while the session lived on) and gpu.restored (brought
   * back) events, each counted once by its token, and by `sessionId:incarnation` the net of both (freed − restored).
   */
  demotes: number;
  demoteFreedBytes: number;
  restores: number;
  restoredBytes: number;
  offloadNetBy: Record<string, number>;
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
const baseUrl = (url: string): string => url.replace(/\/+$/, '');

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
  // Where each session (its latest opening) and each release (by its token) went, and what was freed there.
  const runtimeOf = new Map<string, string>();
  const releaseRuntime = new Map<string, string>();
  type Runtime = { opened: number; ended: number; registeredBytes: number; nodes: Set<string>; freedBy: Map<string, number>; offload: { demotes: number; freed: number; restores: number; restored: number; netBy: Map<string, number> } };
  const byRuntime = new Map<string, Runtime>();
  const offloadTokens = new Set<string>();
  const runtimesOfNode = new Map<string, Set<string>>();
  const runtime = (url: string) => {
    let r = byRuntime.get(url);
    if (r === undefined) byRuntime.set(url, (r = { opened: 0, ended: 0, registeredBytes: 0, nodes: new Set(), freedBy: new Map(), offload: { demotes: 0, freed: 0, restores: 0, restored: 0, netBy: new Map() } }));
    return r;
  };

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
        const placement = data.placement as Record<string, unknown> | undefined;
        const bytes = num(placement?.gpuBytes) ?? 0;
        gpuBytesOpen += bytes - (gpuBytesOf.get(sessionId) ?? 0);
        gpuBytesOf.set(sessionId, bytes);
        triggerAt.delete(sessionId);
        const url = str(placement?.runtimeUrl);
        const node = str(placement?.node);
        if (url !== undefined) {
          const r = runtime(baseUrl(url));
          r.opened++;
          r.registeredBytes += bytes;
          runtimeOf.set(sessionId, baseUrl(url));
          if (node !== undefined) {
            r.nodes.add(node);
            runtimesOfNode.set(node, (runtimesOfNode.get(node) ?? new Set()).add(baseUrl(url)));
          }
        }
        return;
      }
      if (type === EventType.GpuReleaseRequested) {
        const url = str((data.placement as Record<string, unknown> | undefined)?.runtimeUrl);
        const token = str(data.token);
        if (url !== undefined && token !== undefined) releaseRuntime.set(token, baseUrl(url));
      }
      if (type === EventType.GpuReleased) {
        // Attributed to the runtime its release was sent to; each incarnation's first gpu.released counts.
        const url = releaseRuntime.get(str(data.token) ?? '') ?? runtimeOf.get(sessionId);
        const freed = num(data.freedBytes);
        const incarnationKey = `${sessionId}:${String(num(data.incarnation))}`;
        if (url !== undefined && freed !== undefined && !runtime(url).freedBy.has(incarnationKey)) runtime(url).freedBy.set(incarnationKey, freed);
      }
      if (type === EventType.GpuDemoted || type === EventType.GpuRestored) {
        // Reported again on a redelivery (another id, the same token): counted once.
        const token = `${String(type)} ${str(data.token) ?? ''}`;
        const url = runtimeOf.get(sessionId);
        if (url !== undefined && !offloadTokens.has(token)) {
          offloadTokens.add(token);
          const o = runtime(url).offload;
          const incarnationKey = `${sessionId}:${String(num(data.incarnation))}`;
          const bytes = (type === EventType.GpuDemoted ? num(data.freedBytes) : num(data.restoredBytes)) ?? 0;
          if (type === EventType.GpuDemoted) [o.demotes, o.freed] = [o.demotes + 1, o.freed + bytes];
          else [o.restores, o.restored] = [o.restores + 1, o.restored + bytes];
          o.netBy.set(incarnationKey, (o.netBy.get(incarnationKey) ?? 0) + (type === EventType.GpuDemoted ? bytes : -bytes));
        }
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
        const url = runtimeOf.get(sessionId);
        if (url !== undefined) runtime(url).ended++;
      }
    },
    live: () => ({ opened, ended, byCause: { ...byCause }, gpuBytesOpen, events }),
    samples: () => ({ detectionLagMs: [...samples.detectionLagMs], destroyMs: [...samples.destroyMs], endToEndMs: [...samples.endToEndMs] }),
    destroyedTwice: () => [...destroyedIds.values()].filter((ids) => ids.size > 1).length,
    runtimeSessions(runtimeUrl) {
      const r = byRuntime.get(baseUrl(runtimeUrl));
      const nodes = [...(r?.nodes ?? [])].sort();
      const freed = [...(r?.freedBy ?? new Map<string, number>()).values()];
      return {
        opened: r?.opened ?? 0,
        ended: r?.ended ?? 0,
        registeredBytes: r?.registeredBytes ?? 0,
        nodes,
        nodesShared: nodes.some((n) => (runtimesOfNode.get(n)?.size ?? 0) > 1),
        releases: freed.length,
        freedBytes: freed.reduce((sum, b) => sum + b, 0),
        freedBy: Object.fromEntries(r?.freedBy ?? []),
        demotes: r?.offload.demotes ?? 0,
        demoteFreedBytes: r?.offload.freed ?? 0,
        restores: r?.offload.restores ?? 0,
        restoredBytes: r?.offload.restored ?? 0,
        offloadNetBy: Object.fromEntries(r?.offload.netBy ?? []),
      };
    },
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

/** The engine's own reading (GET /v1/memory usedBytes: llama.cpp's state size), when the run began and now. */
export interface EngineReadings {
  atStart: number | undefined;
  now: number | undefined;
}

/**
 * The real engine's part of the report: the sessions placed there, the KV bytes session-reaper booked as freed for
 * them, the engine's own reading, and what the demo's turns filled, measured on that reading.
 */
export interface EngineFigures {
  url: string;
  sessions: { placed: number; ended: number; stillOpen: number; registeredBytes: number };
  /** gpu.released of those sessions (one per incarnation): the freedBytes the engine answered each release with. */
  releases: number;
  freedBytes: number;
  /** The ledger's confirmed freed bytes over the run on the engine sessions' nodes; undefined when a node is shared. */
  ledgerFreedBytes: number | undefined;
  /** Demote before destroy on the engine: gpu.demoted and gpu.restored, and what the ledger keeps offloaded now. */
  offload: { demotes: number; freedBytes: number; restores: number; restoredBytes: number; ledgerOffloadedBytes: number | undefined };
  usedBytes: EngineReadings;
  /** The demo's turns there, when the demo ran. */
  demo?: Omit<DemoEngineFigures, 'sessions' | 'url' | 'node'>;
  /**
   * The demo's sessions whose every completion was measured alone and which were never seen demoted: the bytes
   * their turns filled (the engine's reading) and the bytes session-reaper booked as freed for them.
   */
  compared: { sessions: number; of: number; filledBytes: number; freedBytes: number };
  /** Every session ended, the figures agree with each other, and the engine is back at its starting reading. */
  agree: boolean;
  /** What disagrees (or is not over yet). */
  problems: string[];
}

/**
 * Sets session-reaper's freed bytes for the sessions on the engine beside the engine's own reading: the ledger must
 * book what gpu.released reported, each compared session must have freed exactly what its turns filled, and once
 * every engine session ended the engine's reading must be back at its start.
 */
export function engineFigures(url: string, seen: RuntimeSessions, ledgerStart: LedgerAudit, ledgerEnd: LedgerAudit, usedBytes: EngineReadings, demo?: DemoEngineFigures): EngineFigures {
  const confirmed = (audit: LedgerAudit) => audit.nodes.filter((n) => seen.nodes.includes(n.node)).reduce((sum, n) => sum + n.confirmedFreedBytes, 0);
  const ledgerFreedBytes = seen.nodesShared ? undefined : confirmed(ledgerEnd) - confirmed(ledgerStart);
  const stillOpen = Math.max(0, seen.opened - seen.ended);
  const problems: string[] = [];
  if (stillOpen > 0) problems.push(`${stillOpen} engine sessions still open hold their KV`);
  if (ledgerFreedBytes !== undefined && ledgerFreedBytes !== seen.freedBytes) problems.push(`the ledger booked ${ledgerFreedBytes} bytes freed on ${seen.nodes.join(', ')}, gpu.released reported ${seen.freedBytes}`);
  if (usedBytes.atStart === undefined || usedBytes.now === undefined) problems.push("the engine's reading could not be taken");
  else if (stillOpen === 0 && usedBytes.now !== usedBytes.atStart) problems.push(`the engine's reading is ${usedBytes.now} bytes, not back at its start (${usedBytes.atStart})`);
  const offloaded = (audit: LedgerAudit) => audit.nodes.filter((n) => seen.nodes.includes(n.node)).reduce((sum, n) => sum + (n.offloadedBytes ?? 0), 0);
  const ledgerOffloadedBytes = seen.nodesShared ? undefined : offloaded(ledgerEnd);
  if (stillOpen === 0 && ledgerOffloadedBytes !== undefined && ledgerOffloadedBytes !== 0) problems.push(`the ledger still counts ${ledgerOffloadedBytes} bytes offloaded on ${seen.nodes.join(', ')}`);
  const compared = { sessions: 0, of: demo?.sessions.length ?? 0, filledBytes: 0, freedBytes: 0 };
  for (const s of demo?.sessions ?? []) {
    const key = `${s.sessionId}:${s.incarnation}`;
    const released = seen.freedBy[key];
    if (s.unmeasured > 0 || s.measuredCompletions !== s.completions || released === undefined) continue;
    // A demote freed part of it while the session lived on, a restore filled it again: the release frees the rest.
    const freed = released + (seen.offloadNetBy[key] ?? 0);
    compared.sessions++;
    compared.filledBytes += s.filledBytes;
    compared.freedBytes += freed;
    if (freed !== s.filledBytes) problems.push(`${s.sessionId}: its demotes and release freed ${freed} bytes net, its turns filled ${s.filledBytes}`);
  }
  return {
    url,
    sessions: { placed: seen.opened, ended: seen.ended, stillOpen, registeredBytes: seen.registeredBytes },
    releases: seen.releases,
    freedBytes: seen.freedBytes,
    ledgerFreedBytes,
    offload: { demotes: seen.demotes, freedBytes: seen.demoteFreedBytes, restores: seen.restores, restoredBytes: seen.restoredBytes, ledgerOffloadedBytes },
    usedBytes,
    ...(demo === undefined
      ? {}
      : { demo: { sequences: demo.sequences, placed: demo.placed, open: demo.open, refused: demo.refused, completions: demo.completions, measuredCompletions: demo.measuredCompletions, filledBytes: demo.filledBytes, demotedWaits: demo.demotedWaits } }),
    compared,
    agree: problems.length === 0,
    problems,
  };
}

/** The report printed at the end of the demo and on stop. */
export interface StackReport {
  sessions: { opened: number; ended: number; stillOpen: number; byCause: Record<DestroyCause, number>; destroyedTwice: number };
  detectionLagMs: Percentiles | undefined;
  destroyMs: Percentiles | undefined;
  endToEndMs: Percentiles | undefined;
  gpu: GpuFigures;
  /** `dropped`: deliveries that gave up and were not kept (a full or unwritable store, or no dead-letter sink; the Broker logs each). */
  deadLetters: { thisRun: number; stored: number; dropped: number };
  broker: Pick<BrokerStats, 'received' | 'rejected' | 'delivered' | 'retried' | 'pending'>;
  /** Crashed processes the stack restarted during the run, by name (those restarted only). */
  restarts: Record<string, number>;
  /** The real engine's part, when the stack runs one (`--engine llama`). */
  engine?: EngineFigures;
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
export function buildReport(recorder: RunRecorder, gpu: GpuFigures, broker: BrokerStats, storedDeadLetters: number, restarts: Readonly<Record<string, number>> = {}, engine?: EngineFigures): StackReport {
  const live = recorder.live();
  const samples = recorder.samples();
  return {
    sessions: { opened: live.opened, ended: live.ended, stillOpen: Math.max(0, live.opened - live.ended), byCause: live.byCause, destroyedTwice: recorder.destroyedTwice() },
    detectionLagMs: percentiles(samples.detectionLagMs),
    destroyMs: percentiles(samples.destroyMs),
    endToEndMs: percentiles(samples.endToEndMs),
    gpu,
    deadLetters: { thisRun: broker.deadLettered, stored: storedDeadLetters, dropped: broker.dropped },
    broker: { received: broker.received, rejected: broker.rejected, delivered: broker.delivered, retried: broker.retried, pending: broker.pending },
    restarts: Object.fromEntries(Object.entries(restarts).filter(([, n]) => n > 0)),
    ...(engine === undefined ? {} : { engine }),
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

const bytesExact = (b: number) => (Math.abs(b) < 1024 ? formatBytes(b) : `${formatBytes(b)} (${b})`);
const maybeBytes = (b: number | undefined) => (b === undefined ? 'unknown' : bytesExact(b));

// The engine's lines of the report.
function engineLines(e: EngineFigures): string[] {
  const d = e.demo;
  const lines = [
    `llama engine      sessions ${e.sessions.placed} · ended ${e.sessions.ended} · still open ${e.sessions.stillOpen}   (${e.url})`,
  ];
  if (d !== undefined) {
    lines.push(`  turns           ${d.completions} completions · at most ${d.sequences} sessions at once, refused ${d.refused} · ${d.demotedWaits} waits for a demoted session`);
    lines.push(`  KV filled       ${bytesExact(d.filledBytes)} by the ${d.measuredCompletions} completions measured alone   (the engine's reading before → after each)`);
  }
  lines.push(`  KV freed        ${bytesExact(e.freedBytes)} in ${e.releases} releases   (gpu.released freedBytes; ledger ${e.ledgerFreedBytes === undefined ? 'shares the node with other runtimes' : bytesExact(e.ledgerFreedBytes)})`);
  const o = e.offload;
  lines.push(`  KV demoted      ${bytesExact(o.freedBytes)} freed by ${o.demotes} demotes · ${bytesExact(o.restoredBytes)} back by ${o.restores} restores · ${o.ledgerOffloadedBytes === undefined ? 'node shared' : bytesExact(o.ledgerOffloadedBytes)} offloaded now   (gpu.demoted, gpu.restored; ledger)`);
  lines.push(`  engine reading  ${maybeBytes(e.usedBytes.atStart)} at the start · ${maybeBytes(e.usedBytes.now)} now   (GET /v1/memory usedBytes)`);
  const c = e.compared;
  const notCompared = c.of - c.sessions;
  const verdict = !e.agree
    ? e.sessions.stillOpen > 0 && e.problems.length === 1
      ? `not yet: ${e.problems[0]}`
      : `NO: ${e.problems.join('; ')}`
    : d === undefined
      ? 'yes: the ledger booked what the engine reported, and the engine is back at its start'
      : `yes: ${c.sessions} of ${c.of} sessions freed exactly what their turns filled (${bytesExact(c.freedBytes)}, demotes and releases net of restores)${notCompared > 0 ? ` (${notCompared} not compared: a completion not measured alone)` : ''}; the engine is back at its start`;
  lines.push(`  agree           ${verdict}`);
  return lines;
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
    `dead letters      ${r.deadLetters.thisRun} this run · ${r.deadLetters.stored} in the store${r.deadLetters.dropped > 0 ? ` · ${r.deadLetters.dropped} given up and not kept (each in the Broker's log)` : ''}`,
    `broker            ${r.broker.received} events accepted · ${r.broker.rejected} refused · ${r.broker.delivered} deliveries · ${r.broker.retried} retried · ${r.broker.pending} pending`,
    `restarts          ${Object.keys(r.restarts).length === 0 ? 'none' : Object.entries(r.restarts).map(([name, n]) => `${name} ${n}`).join(' · ')}   (crashed processes restarted)`,
    ...(r.engine === undefined ? [] : engineLines(r.engine)),
  ];
  return lines.join('\n');
}
