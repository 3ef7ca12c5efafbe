// What the status page shows, worked out from data: every process's metrics scraped and summed into the figures an
// operator looks at first (status-page.ts draws them), and the alerts of the deployed rule file with their state —
// as a local Prometheus evaluates them (`npm start -- --prometheus`), or listed as not evaluated when none runs.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import {
  CATALOGUE, DETECTION_TARGET_SECONDS, DESTROY_TARGET_SECONDS, RECLAIM_TARGET_SECONDS, CAUSES, SESSION_STATES, type MetricSpec,
} from '../../functions/core/metrics.ts';
import { parseExposition, type Sample } from './exposition.ts';

/** The deployed rule file, whose alerts the page lists. */
export const RULES_FILE = join(import.meta.dirname, '..', '..', 'infra', 'observability', 'rules', 'session-reaper.rules.yaml');

/** One process's scrape: its samples, or why there are none. */
export interface Scrape {
  readonly process: string;
  readonly url: string;
  readonly samples: readonly Sample[];
  readonly error?: string;
}

/** Scrapes every process's metrics at once; a process that does not answer in time is an error, not a throw. */
export async function scrapeAll(urls: Readonly<Record<string, string>>, timeoutMs = 2000): Promise<Scrape[]> {
  return Promise.all(Object.entries(urls).map(async ([process, url]): Promise<Scrape> => {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
      const text = await res.text();
      if (!res.ok) return { process, url, samples: [], error: `HTTP ${res.status}` };
      return { process, url, samples: parseExposition(text) };
    } catch (err) {
      return { process, url, samples: [], error: (err as Error).message };
    }
  }));
}

const matches = (s: Sample, name: string, match: Readonly<Record<string, string>>) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v);

/** The sum of a metric's samples over every process whose labels include `match` (0 when none). */
export function total(scrapes: readonly Scrape[], name: string, match: Readonly<Record<string, string>> = {}): number {
  let sum = 0;
  for (const s of scrapes) for (const x of s.samples) if (matches(x, name, match)) sum += x.value;
  return sum;
}

/** The largest value of a gauge of shared state (every deadline engine reports the same), or undefined when none reports it. */
export function highest(scrapes: readonly Scrape[], name: string, match: Readonly<Record<string, string>> = {}): number | undefined {
  let out: number | undefined;
  for (const s of scrapes) for (const x of s.samples) if (matches(x, name, match)) out = Math.max(out ?? -Infinity, x.value);
  return out;
}

/** A metric's sum by one label, over every process. */
export function byLabel(scrapes: readonly Scrape[], name: string, label: string, match: Readonly<Record<string, string>> = {}): Map<string, number> {
  const out = new Map<string, number>();
  for (const s of scrapes) for (const x of s.samples) if (matches(x, name, match)) out.set(x.labels[label] ?? '', (out.get(x.labels[label] ?? '') ?? 0) + x.value);
  return out;
}

/** A histogram summed over processes and labels: its count, and its cumulative buckets by upper edge. */
export interface HistogramFigures {
  readonly count: number;
  readonly sum: number;
  /** Cumulative counts by `le`, ascending (+Inf last). */
  readonly buckets: ReadonlyArray<{ le: number; count: number }>;
}

/** A catalogue histogram's figures, summed over every process and label. */
export function histogram(scrapes: readonly Scrape[], spec: MetricSpec): HistogramFigures {
  const byEdge = byLabel(scrapes, `${spec.name}_bucket`, 'le');
  const buckets = [...byEdge].map(([le, count]) => ({ le: le === '+Inf' ? Infinity : Number(le), count })).sort((a, b) => a.le - b.le);
  return { count: total(scrapes, `${spec.name}_count`), sum: total(scrapes, `${spec.name}_sum`), buckets };
}

/** The share of observations at or under `edge` (an edge the histogram has), or undefined when it has none. */
export function shareWithin(h: HistogramFigures, edge: number): number | undefined {
  if (h.count === 0) return undefined;
  const at = h.buckets.find((b) => Math.abs(b.le - edge) < 1e-12);
  return at === undefined ? undefined : at.count / h.count;
}

/**
 * A quantile estimated from the buckets as PromQL's histogram_quantile does: linear within the bucket it falls in
 * (the lowest bucket from 0); in the +Inf bucket, the highest finite edge. Undefined without observations.
 */
export function quantile(h: HistogramFigures, q: number): number | undefined {
  if (h.count === 0 || h.buckets.length === 0) return undefined;
  const rank = q * h.count;
  let lower = 0;
  let below = 0;
  for (const b of h.buckets) {
    if (b.count >= rank) {
      if (!Number.isFinite(b.le)) return lower;
      const inBucket = b.count - below;
      return inBucket === 0 ? b.le : lower + ((b.le - lower) * (rank - below)) / inBucket;
    }
    lower = b.le;
    below = b.count;
  }
  return lower;
}

/** A latency histogram as the page shows it. */
export interface LatencyFigures {
  readonly title: string;
  readonly metric: string;
  readonly target: number | undefined;
  readonly count: number;
  readonly withinTarget: number | undefined;
  readonly p50: number | undefined;
  readonly p99: number | undefined;
}

function latency(scrapes: readonly Scrape[], title: string, spec: MetricSpec, target: number | undefined): LatencyFigures {
  const h = histogram(scrapes, spec);
  return { title, metric: spec.name, target, count: h.count, withinTarget: target === undefined ? undefined : shareWithin(h, target), p50: quantile(h, 0.5), p99: quantile(h, 0.99) };
}

/** Every figure of the page at one moment. */
export interface Figures {
  readonly at: number;
  readonly scrapes: ReadonlyArray<{ process: string; url: string; ok: boolean; error?: string }>;
  /** Live sessions by state (the deadline engine's gauge); undefined before it reports. */
  readonly sessions: ReadonlyMap<string, number> | undefined;
  readonly opened: number;
  /** Destroys by cause (destroyed), and those that gave up. */
  readonly destroys: ReadonlyMap<string, number>;
  readonly destroysGaveUp: number;
  readonly latencies: readonly LatencyFigures[];
  readonly gpu: { registered?: number; freed?: number; held?: number; offloaded?: number };
  readonly ledgerViolations: number | undefined;
  readonly queueDepth: number | undefined;
  readonly oldestPendingReleaseS: number | undefined;
  /** Breakers by runtime, each state's count (summed over the processes that hold one). */
  readonly breakers: ReadonlyMap<string, ReadonlyMap<string, number>>;
  readonly deadLetters: number;
  readonly deadLettersByType: ReadonlyMap<string, number>;
  /** Events the functions handled, by the class of their answer (2xx, 4xx, 5xx). */
  readonly events: ReadonlyMap<string, number>;
  readonly orphanReleases: number;
  readonly demoteRequests: number;
}

/** Works the page's figures out of every process's scrape. */
export function figuresOf(scrapes: readonly Scrape[], at: number): Figures {
  const c = CATALOGUE;
  const sessionsReported = scrapes.some((s) => s.samples.some((x) => x.name === c.sessions.name));
  const sessions = sessionsReported ? new Map(SESSION_STATES.map((state) => [state, highest(scrapes, c.sessions.name, { state }) ?? 0])) : undefined;
  const destroyed = byLabel(scrapes, c.destroys.name, 'cause', { outcome: 'destroyed' });
  const breakers = new Map<string, Map<string, number>>();
  for (const s of scrapes) {
    for (const x of s.samples) {
      if (x.name !== c.breakerState.name) continue;
      const runtime = x.labels.runtime ?? '';
      const states = breakers.get(runtime) ?? new Map<string, number>();
      states.set(x.labels.state ?? '', (states.get(x.labels.state ?? '') ?? 0) + x.value);
      breakers.set(runtime, states);
    }
  }
  return {
    at,
    scrapes: scrapes.map((s) => ({ process: s.process, url: s.url, ok: s.error === undefined, ...(s.error === undefined ? {} : { error: s.error }) })),
    sessions,
    opened: total(scrapes, c.sessionsOpened.name),
    destroys: new Map(CAUSES.map((cause) => [cause, destroyed.get(cause) ?? 0])),
    destroysGaveUp: total(scrapes, c.destroys.name, { outcome: 'gave_up' }),
    latencies: [
      latency(scrapes, 'detection lag', c.detectionLag, DETECTION_TARGET_SECONDS),
      latency(scrapes, 'destroy duration', c.destroyDuration, DESTROY_TARGET_SECONDS),
      latency(scrapes, 'reclaim latency', c.reclaimLatency, RECLAIM_TARGET_SECONDS),
      latency(scrapes, 'storm-guard queue wait', c.stormGuardQueueWait, undefined),
    ],
    gpu: {
      ...opt('registered', highest(scrapes, c.gpuRegisteredBytes.name)),
      ...opt('freed', highest(scrapes, c.gpuFreedBytes.name)),
      ...opt('held', highest(scrapes, c.gpuHeldBytes.name)),
      ...opt('offloaded', highest(scrapes, c.gpuOffloadedBytes.name)),
    },
    ledgerViolations: highest(scrapes, c.ledgerViolations.name),
    queueDepth: highest(scrapes, c.stormGuardQueued.name),
    oldestPendingReleaseS: highest(scrapes, c.oldestPendingRelease.name),
    breakers,
    deadLetters: total(scrapes, c.deadLetters.name),
    deadLettersByType: byLabel(scrapes, c.deadLetters.name, 'type'),
    events: byLabel(scrapes, c.eventsProcessed.name, 'outcome'),
    orphanReleases: total(scrapes, c.orphanReleases.name),
    demoteRequests: total(scrapes, c.demoteRequests.name),
  };
}

function opt<K extends string>(key: K, value: number | undefined): Partial<Record<K, number>> {
  return value === undefined ? {} : ({ [key]: value } as Record<K, number>);
}

/** One alert of the deployed rule file and where it stands. */
export interface AlertStatus {
  readonly name: string;
  readonly severity: string;
  readonly summary: string;
  readonly runbook: string;
  /** As Prometheus evaluates it; 'not evaluated' when no Prometheus runs or it did not answer. */
  readonly state: 'inactive' | 'pending' | 'firing' | 'not evaluated';
  /** Series firing or pending now (Prometheus). */
  readonly active: number;
}

/** The alerts, and whether (and by whom) they are evaluated. */
export interface AlertsView {
  readonly evaluated: boolean;
  /** The Prometheus that evaluates them, or whose answer failed. */
  readonly prometheusUrl?: string;
  /** Why they are not evaluated, when they are not. */
  readonly note?: string;
  readonly alerts: readonly AlertStatus[];
}

interface RuleFile {
  groups?: Array<{ rules?: Array<{ alert?: string; labels?: Record<string, string>; annotations?: Record<string, string> }> }>;
}

/** Every alert of a rule file, as not evaluated. */
export function alertsOfRuleFile(file: string = RULES_FILE): AlertStatus[] {
  const doc = parse(readFileSync(file, 'utf8')) as RuleFile;
  return (doc.groups ?? []).flatMap((g) => g.rules ?? []).filter((r) => r.alert !== undefined).map((r) => ({
    name: r.alert!,
    severity: r.labels?.severity ?? '',
    summary: r.annotations?.summary ?? '',
    runbook: r.annotations?.runbook_url ?? '',
    state: 'not evaluated' as const,
    active: 0,
  }));
}

interface RulesAnswer {
  status?: string;
  data?: { groups?: Array<{ rules?: Array<{ type?: string; name?: string; state?: string; alerts?: unknown[]; labels?: Record<string, string>; annotations?: Record<string, string> }> }> };
}

/**
 * The alerts of the rule file with their state as a running Prometheus has them (GET /api/v1/rules?type=alert); an
 * alert of the file that Prometheus does not know is listed as not evaluated. Without a Prometheus, or when it does
 * not answer, every alert is listed as not evaluated, with a note that says why and how to get them evaluated.
 */
export async function alertsView(prometheusUrl: string | undefined, file: string = RULES_FILE, timeoutMs = 2000): Promise<AlertsView> {
  const listed = alertsOfRuleFile(file);
  if (prometheusUrl === undefined) {
    return { evaluated: false, note: 'No local Prometheus runs, so these alerts are not evaluated: start the stack with `npm start -- --prometheus` (Debian\'s prometheus package) to see their states here.', alerts: listed };
  }
  let answer: RulesAnswer;
  try {
    const res = await fetch(`${prometheusUrl}/api/v1/rules?type=alert`, { signal: AbortSignal.timeout(timeoutMs) });
    answer = (await res.json()) as RulesAnswer;
    if (!res.ok || answer.status !== 'success') throw new Error(`HTTP ${res.status}`);
  } catch (err) {
    return { evaluated: false, prometheusUrl, note: `The local Prometheus at ${prometheusUrl} did not answer (${(err as Error).message}), so these alerts are not evaluated now.`, alerts: listed };
  }
  const known = new Map<string, { state: string; active: number }>();
  for (const rule of (answer.data?.groups ?? []).flatMap((g) => g.rules ?? [])) {
    if (rule.type !== 'alerting' || rule.name === undefined) continue;
    known.set(rule.name, { state: rule.state ?? 'inactive', active: rule.alerts?.length ?? 0 });
  }
  const alerts = listed.map((a): AlertStatus => {
    const k = known.get(a.name);
    const state = k?.state === 'firing' || k?.state === 'pending' || k?.state === 'inactive' ? k.state : 'not evaluated';
    return { ...a, state, active: k?.active ?? 0 };
  });
  return { evaluated: true, prometheusUrl, alerts };
}
