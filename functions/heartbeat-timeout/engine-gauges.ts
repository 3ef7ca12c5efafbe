// The gauges of shared state — live sessions by state, overdue deadlines, the GPU ledger, the storm guard's queues,
// the oldest release in flight — read from Redis by the deadline engine, the one process that always runs. Counted
// in each pod's memory they would be wrong (every replica sees its own part) and vanish when Knative scales a
// function to zero. Read at collection (a scrape, an OTLP export), not on a timer: one snapshot, shared by every
// gauge of one collection, costs O(buckets + nodes) commands and never a SCAN.
//
// Every deadline engine replica reports them; they are the same figures, so dashboards and alerts take max(), not sum().
// Beside them, the engine's own event-loop delay: a loop that lags is a deadline engine that detects late.
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { ObservableResult } from '@opentelemetry/api';
import type { CoreDeps } from '../core/function-host.ts';
import { auditLedger } from '../core/ledger.ts';
import type { RedisClient } from '../core/redis/connect.ts';
import { KeySpace } from '../core/redis/keys.ts';

/** What one collection reads of the shared state. */
export interface SharedState {
  active: number;
  destroying: number;
  releaseFailed: number;
  overdue: number;
  registeredBytes: number;
  freedBytes: number;
  heldBytes: number;
  offloadedBytes: number;
  ledgerViolations: number;
  queued: number;
  oldestPendingSeconds: number;
}

/** A deadline this far past is overdue: well beyond the engine's claim (at most DEADLINE_POLL_MS ≤ 100 ms late). */
export const OVERDUE_AFTER_MS = 1000;

/** Reads the shared state once: the deadline index, the stall watchdog, the failed sets, the ledger and the node queues. */
export async function readSharedState(redis: RedisClient, keys: KeySpace, now: number): Promise<SharedState> {
  const buckets = keys.allBuckets();
  const [active, destroying, failed, overdue, oldest, ledger] = await Promise.all([
    Promise.all(buckets.map((b) => redis.zcard(b.deadlines))),
    Promise.all(buckets.map((b) => redis.zcard(b.destroying))),
    Promise.all(buckets.map((b) => redis.zcard(b.failed))),
    Promise.all(buckets.map((b) => redis.zcount(b.deadlines, '-inf', String(now - OVERDUE_AFTER_MS)))),
    Promise.all(buckets.map((b) => redis.zrange(b.destroying, '0', '0', 'WITHSCORES'))),
    auditLedger(redis, keys),
  ]);
  const queued = await Promise.all(ledger.nodes.map((n) => redis.zcard(keys.nodeWaiting(n.node))));
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  const oldestProgress = Math.min(...oldest.map((pair) => (pair.length >= 2 ? Number(pair[1]) : Number.POSITIVE_INFINITY)));
  return {
    active: sum(active),
    destroying: sum(destroying),
    releaseFailed: sum(failed),
    overdue: sum(overdue),
    registeredBytes: ledger.totals.registeredBytes,
    freedBytes: ledger.totals.releasedBytes,
    heldBytes: ledger.totals.heldBytes,
    offloadedBytes: ledger.totals.offloadedBytes ?? 0,
    ledgerViolations: ledger.problems.length,
    queued: sum(queued),
    oldestPendingSeconds: Number.isFinite(oldestProgress) ? Math.max(0, now - oldestProgress) / 1000 : 0,
  };
}

/** How long one snapshot serves the gauges of a collection (the OTLP reader and a scrape may collect together). */
const SNAPSHOT_TTL_MS = 500;

/**
 * Makes the deadline engine's process report the shared-state gauges and its event-loop delay. `ready` is the core's
 * (Redis connected); while Redis is unreachable a collection reports none of the shared gauges rather than zeros.
 * Returns a function that stops the event-loop monitor.
 */
export function observeSharedState(deps: Pick<CoreDeps, 'metrics' | 'redis' | 'config' | 'now' | 'logger'>, ready: () => Promise<void>): () => void {
  const keys = new KeySpace(deps.config.REDIS_KEY_PREFIX, deps.config.INDEX_BUCKETS);
  const m = deps.metrics;
  let snapshot: { at: number; state: Promise<SharedState | undefined> } | undefined;
  const read = (): Promise<SharedState | undefined> => {
    const at = performance.now();
    if (snapshot === undefined || at - snapshot.at > SNAPSHOT_TTL_MS) {
      snapshot = {
        at,
        state: ready().then(() => readSharedState(deps.redis, keys, deps.now())).catch((err: unknown) => {
          deps.logger.warn({ err }, 'could not read the shared state for the metrics gauges');
          return undefined;
        }),
      };
    }
    return snapshot.state;
  };
  const gauge = (g: { instrument: { addCallback(cb: (r: ObservableResult) => Promise<void>): void } }, observe: (r: ObservableResult, s: SharedState) => void) =>
    g.instrument.addCallback(async (result) => {
      const s = await read();
      if (s !== undefined) observe(result, s);
    });
  gauge(m.sessions, (r, s) => {
    r.observe(s.active, m.sessions.attributes('active'));
    r.observe(s.destroying, m.sessions.attributes('destroying'));
    r.observe(s.releaseFailed, m.sessions.attributes('release_failed'));
  });
  gauge(m.deadlinesOverdue, (r, s) => r.observe(s.overdue));
  gauge(m.gpuRegisteredBytes, (r, s) => r.observe(s.registeredBytes));
  gauge(m.gpuFreedBytes, (r, s) => r.observe(s.freedBytes));
  gauge(m.gpuHeldBytes, (r, s) => r.observe(s.heldBytes));
  gauge(m.gpuOffloadedBytes, (r, s) => r.observe(s.offloadedBytes));
  gauge(m.ledgerViolations, (r, s) => r.observe(s.ledgerViolations));
  gauge(m.stormGuardQueued, (r, s) => r.observe(s.queued));
  gauge(m.oldestPendingRelease, (r, s) => r.observe(s.oldestPendingSeconds));

  // Since the last collection: the histogram is reset once read, so each collection tells its own interval.
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  m.eventLoopDelay.instrument.addCallback((result) => {
    if (loop.count === 0) return;
    result.observe(loop.percentile(50) / 1e9, m.eventLoopDelay.attributes('p50'));
    result.observe(loop.percentile(99) / 1e9, m.eventLoopDelay.attributes('p99'));
    result.observe(loop.max / 1e9, m.eventLoopDelay.attributes('max'));
    loop.reset();
  });
  return () => loop.disable();
}
