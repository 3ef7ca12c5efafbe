// The pure arithmetic of `npm run bench:compare`: what a run's detections mean against the deadlines the workload
// gave its sessions (lag, missed, false and lost expiries), percentiles, and each target printed as a ratio with
// both sides. No clock and no Redis here, so tests/bench/compare/*.test.ts check it on hand-made timelines.

/** One expiry a mechanism reported: which session, and when (ms since the epoch, the detecting thread's clock). */
export interface Detection {
  sessionId: string;
  at: number;
}

/** A span in which the detecting side was stopped (the outage workload), ms since the epoch, both ends included. */
export interface Outage {
  from: number;
  to: number;
}

/** What a run's detections amount to. */
export interface Outcome {
  /** Detection time − true deadline, ms, of each dying session's first timely detection, sorted ascending. */
  lags: number[];
  /** Dying sessions never detected. */
  missed: number;
  /** Detections of live sessions, and of dying ones before their deadline (both declare a live session dead). */
  falseExpiries: number;
  /** Of the missed, those whose deadline fell inside the outage. */
  lost: number;
  /** Dying sessions whose deadline fell inside the outage (what `lost` is out of). */
  dueInOutage: number;
  /** Second and later detections of a session already detected. */
  duplicates: number;
}

/**
 * Classifies detections against the true deadlines of the sessions that stopped beating (`deaths`: session id →
 * deadline, ms). Every other session was live for the whole run, so any detection of one is a false expiry; a dying
 * session detected before its deadline is one too (it was still within its window), and such an early detection
 * does not count as detecting it.
 */
export function classify(deaths: ReadonlyMap<string, number>, detections: Iterable<Detection>, outage?: Outage): Outcome {
  const detectedAt = new Map<string, number>();
  let falseExpiries = 0;
  let duplicates = 0;
  for (const { sessionId, at } of detections) {
    const deadline = deaths.get(sessionId);
    if (deadline === undefined || at < deadline) {
      falseExpiries += 1;
      continue;
    }
    if (detectedAt.has(sessionId)) duplicates += 1;
    else detectedAt.set(sessionId, at);
  }
  const lags: number[] = [];
  let missed = 0;
  let lost = 0;
  let dueInOutage = 0;
  for (const [sessionId, deadline] of deaths) {
    const inOutage = outage !== undefined && deadline >= outage.from && deadline <= outage.to;
    if (inOutage) dueInOutage += 1;
    const at = detectedAt.get(sessionId);
    if (at === undefined) {
      missed += 1;
      if (inOutage) lost += 1;
    } else {
      lags.push(at - deadline);
    }
  }
  lags.sort((a, b) => a - b);
  return { lags, missed, falseExpiries, lost, dueInOutage, duplicates };
}

/** The nearest-rank percentile (p in 0..100] of ascending values; NaN when there are none. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
}

/** p50, p99 and max of ascending lags, ms (NaN when none). */
export function lagSummary(sorted: readonly number[]): { count: number; p50: number; p99: number; max: number } {
  return { count: sorted.length, p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: sorted.at(-1) ?? Number.NaN };
}

/** One side of a ratio: whose figure, and the figure. */
export interface Side {
  name: string;
  value: number;
}

/** A target stated as a ratio of two figures measured in the same run, with its bound. */
export interface RatioTarget {
  /** What is compared, e.g. "p99 detection lag". */
  what: string;
  ours: Side;
  reference: Side;
  /** Unit of both sides, e.g. "ms", "µs", "B". */
  unit: string;
  /** The bound on ours / reference: at most (≤) or at least (≥). */
  bound: { op: '<=' | '>='; value: number };
}

/** A target's ratio, and whether it is met (undefined when a side is missing or zero). */
export function judgeRatio(t: RatioTarget): { ratio: number; met: boolean | undefined } {
  const ratio = t.ours.value / t.reference.value;
  if (!Number.isFinite(ratio)) return { ratio, met: undefined };
  return { ratio, met: t.bound.op === '<=' ? ratio <= t.bound.value : ratio >= t.bound.value };
}

/** Rounds for printing: 3 significant figures below 100, whole numbers above. */
export function figure(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  if (Math.abs(n) >= 100) return Math.round(n).toLocaleString('en');
  return String(Number(n.toPrecision(3)));
}

/**
 * One line per target, both sides shown, e.g.
 * "p99 detection lag: session-reaper / floor = 3.1 (12.4 ms / 4 ms), target ≤ 2 — missed".
 */
export function ratioLine(t: RatioTarget): string {
  const { ratio, met } = judgeRatio(t);
  const verdict = met === undefined ? 'not judged (a side is missing or zero)' : met ? 'met' : 'missed';
  return `${t.what}: ${t.ours.name} / ${t.reference.name} = ${figure(ratio)} ` +
    `(${figure(t.ours.value)} ${t.unit} / ${figure(t.reference.value)} ${t.unit}), target ${t.bound.op === '<=' ? '≤' : '≥'} ${figure(t.bound.value)} — ${verdict}`;
}
