// `npm run chaos`: the open world, for a few minutes, on this machine. The demo pipeline runs at a steady load while
// this run kill -9s a random part every few seconds (a function, the deadline engine, the idle checker, the Broker
// process) or kills and restarts Redis (AOF on); the simulated runtime fails 30 % of its API calls and hangs on 5 %;
// the Broker duplicates, reorders and delays deliveries. Then the faults stop, the dead letters are replayed, and the
// run checks the promise: every session that ended was destroyed exactly once, no live session was destroyed, every
// registered byte was released exactly once, no event was lost. It prints its figures, writes them as JSON under
// .local/chaos/, and exits 1 on any violation. A benchmark-style run, not a unit test.
//
// Settings (environment): CHAOS_SECONDS (120) of demo behaviour, CHAOS_SESSIONS (60), CHAOS_KILL_EVERY_MS (4000),
// CHAOS_SEED (random; printed, so a run can be repeated), CHAOS_DRAIN_SECONDS (90) to wait for the last destroys.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { EventType } from '../../functions/core/contract/events.ts';
import { auditLedger } from '../../functions/core/ledger.ts';
import { seededRandom } from '../../functions/core/seeded-random.ts';
import { startDemoPipeline, type DemoOutcome } from '../../tools/local-stack/demo-pipeline.ts';
import type { BrokerEvent } from '../../tools/local-broker/wire.ts';
import { startEventSink } from '../support/event-sink.ts';
import { REPO_ROOT, stackStore, startStack, type SupervisedName } from '../support/stack.ts';

const int = (name: string, dflt: number): number => {
  const raw = process.env[name];
  const n = raw === undefined || raw === '' ? dflt : Number(raw);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a whole number, got ${raw}`);
  return n;
};

const SECONDS = int('CHAOS_SECONDS', 120);
const SESSIONS = int('CHAOS_SESSIONS', 60);
const KILL_EVERY_MS = int('CHAOS_KILL_EVERY_MS', 4000);
const DRAIN_SECONDS = int('CHAOS_DRAIN_SECONDS', 90);
const SEED = int('CHAOS_SEED', Math.floor(Math.random() * 2 ** 31));
const HEARTBEAT_MS = 1000;
// A liveness window longer than any outage this run causes (a part restarts within a few seconds): a session whose
// heartbeats reach the Broker must never expire, however late they are delivered.
const MISSED_BEATS = 10;
const WINDOW_MS = HEARTBEAT_MS * MISSED_BEATS;
const MAX_HOLD_MS = 3_600_000;
// Timelines are stamped on Redis's clock, promises on this process's: the same machine, so a few ms apart at most.
const CLOCK_TOLERANCE_MS = 50;
// An event the Broker accepted takes a while to reach its function (this run delays and reorders deliveries, on a
// loaded machine): a promise counts against an expiry only if it was accepted this long before the claim. A heartbeat
// still in flight at the deadline cannot be known; the pipeline leaves that margin (the demo resumes heartbeats half
// a window before a hold ends).
const DELIVERY_ALLOWANCE_MS = 1000;
const TARGETS: readonly (SupervisedName | 'redis')[] = [
  'heartbeat-timeout', 'activity-score', 'destroy-dispatch', 'gpu-release', 'deadline-engine', 'idle-checker', 'local-broker', 'redis',
];

interface Tracked {
  /** Latest instant the accepted events promised the session alive until (opened, heartbeats, activity, hold). */
  promises: { at: number; until: number }[];
  /** The pipeline's own end (closed, completed with release), by event time. */
  endSentAt?: number;
  endType?: 'closed' | 'completed';
  /** session.destroyed ids seen, with what each said. */
  destroyed: Map<string, { cause: string; incarnation: number; claimedAt: number; completedAt: number }>;
}

function percentile(sorted: number[], p: number): number | undefined {
  if (sorted.length === 0) return undefined;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function main(): Promise<number> {
  const random = seededRandom(SEED);
  const workDir = mkdtempSync(join(tmpdir(), 'sr-chaos-'));
  const sink = await startEventSink();
  console.log(`chaos: seed ${SEED}, ${SESSIONS} sessions over ${SECONDS} s, a kill every ${KILL_EVERY_MS} ms; work dir ${workDir}`);
  const stack = await startStack({
    brokerProcess: true,
    redisDataDir: join(workDir, 'redis'),
    deadLetterDir: join(workDir, 'dead-letters'),
    forward: sink.url,
    logLevel: 'error',
    env: {
      TENANT_POLICIES: JSON.stringify({ demo: { graceMs: 2000, timing: { floorMs: 4000, priorGapMs: 2000 } } }),
      DESTROY_STALL_MS: '5000',
      RUNTIME_TIMEOUT_MS: '1000',
    },
    runtimeEnv: { SIM_TOTAL_BYTES: String(8 * 80 * 1024 ** 3), SIM_ERROR_RATE: '0.3', SIM_HANG_RATE: '0.05', SIM_SEED: String(SEED) },
    brokerEnv: { BROKER_CHAOS_DUPLICATE: '0.1', BROKER_CHAOS_REORDER_MS: '50', BROKER_CHAOS_DELAY_MS: '20', BROKER_CHAOS_SEED: String(SEED) },
  });
  const { redis, store } = await stackStore(stack);
  const admin = (path: string, init?: RequestInit) => fetch(new URL(path, stack.brokerUrl), { ...init, signal: AbortSignal.timeout(10_000) });

  const tracked = new Map<string, Tracked>();
  const track = (id: string): Tracked => {
    let t = tracked.get(id);
    if (!t) tracked.set(id, (t = { promises: [], destroyed: new Map() }));
    return t;
  };
  const demo = startDemoPipeline({
    brokerUrl: stack.brokerUrl,
    token: stack.tokens['inference-pipeline'],
    runtimeUrl: stack.runtimeUrl,
    sessions: SESSIONS,
    durationMs: SECONDS * 1000,
    heartbeatIntervalMs: HEARTBEAT_MS,
    missedBeats: MISSED_BEATS,
    seed: SEED,
    drainTimeoutMs: DRAIN_SECONDS * 1000,
    sendAttempts: 1000,
    lookup: async (id) => {
      try {
        const view = await store.inspect(id);
        return view ? { state: view.state, incarnation: view.incarnation } : null;
      } catch {
        return null; // Redis restarting: ask again
      }
    },
    onProblem: (message) => console.log(`  demo: ${message}`),
    onAccepted: (type, ids, at, data) => {
      for (const id of ids) {
        const t = track(id);
        if (type === EventType.SessionClosed) Object.assign(t, { endSentAt: at, endType: 'closed' });
        else if (type === EventType.InferenceCompleted && data.release === true) Object.assign(t, { endSentAt: at, endType: 'completed' });
        else if (type === EventType.SessionHold) t.promises.push({ at, until: at + Math.min(Number(data.durationMs), MAX_HOLD_MS) });
        else if (type === EventType.SessionOpened || type === EventType.SessionHeartbeat || type === EventType.SessionActivity) t.promises.push({ at, until: at + WINDOW_MS });
      }
    },
  });

  // The forwarded copy of every event the system emitted reaches the demo (and this run's books), once per id.
  let fed = 0;
  const seenIds = new Set<string>();
  const feed = setInterval(() => {
    for (; fed < sink.events.length; fed++) {
      const { event } = sink.events[fed]!;
      if (seenIds.has(event.id)) continue;
      seenIds.add(event.id);
      if (event.type !== EventType.SessionDestroyed) continue;
      const data = event.data as { sessionId: string; incarnation: number; cause: string; timeline: { stage: string; at: string }[] };
      track(data.sessionId).destroyed.set(event.id, {
        cause: data.cause, incarnation: data.incarnation,
        claimedAt: Date.parse(data.timeline[0]!.at), completedAt: Date.parse(data.timeline.at(-1)!.at),
      });
      const asBroker: BrokerEvent = { attributes: { type: event.type, id: event.id }, data: Buffer.from(JSON.stringify(data)) };
      demo.observe(asBroker);
    }
  }, 100);

  // The chaos: one kill at a time, every KILL_EVERY_MS, while the demo's sessions open and live.
  const kills: Record<string, number> = {};
  const killLog: string[] = [];
  const chaosUntil = Date.now() + SECONDS * 1000;
  const chaos = (async () => {
    while (Date.now() < chaosUntil) {
      await sleep(KILL_EVERY_MS * (0.5 + random()));
      if (Date.now() >= chaosUntil) break;
      const target = TARGETS[Math.floor(random() * TARGETS.length)]!;
      kills[target] = (kills[target] ?? 0) + 1;
      killLog.push(`${new Date().toISOString().slice(11, 23)} ${target}`);
      try {
        if (target === 'redis') await stack.restartRedis('SIGKILL');
        else stack.kill(target, 'SIGKILL');
      } catch (err) {
        console.log(`  chaos: could not kill ${target}: ${(err as Error).message}`);
      }
    }
  })();
  const progress = setInterval(() => {
    const p = demo.progress();
    console.log(`  ${new Date().toISOString().slice(11, 19)} sessions ${p.started}/${p.planned} started, ${p.ended} destroyed; kills ${JSON.stringify(kills)}`);
  }, 10_000);

  await chaos;
  // The faults stop: the runtime answers, the parts stay up; what is left must now finish.
  await fetch(new URL('/sim/faults', stack.runtimeUrl), { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ errorRate: 0, hangRate: 0 }) });
  console.log('  chaos over: runtime faults off; waiting for the sessions to end');
  const outcome: DemoOutcome = await demo.done;

  // Dead letters: accounted, then replayed, then whatever they were for must finish too.
  const deadLetters = ((await (await admin('/admin/dead-letters')).json()) as { deadLetters?: { id: string }[] }).deadLetters ?? [];
  for (const d of deadLetters) await admin(`/admin/dead-letters/${encodeURIComponent(d.id)}/replay`, { method: 'POST' });
  const openAfterDemo = outcome.sessions.filter((s) => s.cause === undefined).map((s) => s.sessionId);
  if (deadLetters.length > 0 || openAfterDemo.length > 0) {
    const until = Date.now() + DRAIN_SECONDS * 1000;
    while (Date.now() < until && openAfterDemo.some((id) => (tracked.get(id)?.destroyed.size ?? 0) === 0)) await sleep(250);
  }
  // Settle: nothing in flight at the Broker, no destroy left in the watchdog.
  const settleUntil = Date.now() + 30_000;
  let brokerStats: Record<string, number>;
  for (;;) {
    brokerStats = (await (await admin('/admin/stats')).json()) as Record<string, number>;
    const inFlight = (await store.destroysInFlight(Number.MAX_SAFE_INTEGER)).length;
    if ((brokerStats.pending === 0 && brokerStats.inFlight === 0 && inFlight === 0) || Date.now() > settleUntil) break;
    await sleep(250);
  }
  clearInterval(progress);
  clearInterval(feed);

  // The books.
  const violations: string[] = [];
  const lateness: number[] = [];
  let idleOfPlannedOther = 0;
  const earlyExpiries: number[] = [];
  for (const s of outcome.sessions) {
    const t = tracked.get(s.sessionId);
    const opened = t?.promises.length ?? 0;
    if (!t || opened === 0) continue; // never opened: nothing registered
    const destroys = [...t.destroyed.values()];
    if (destroys.length !== 1) {
      violations.push(`${s.sessionId}: destroyed ${destroys.length} times (${[...t.destroyed.keys()].join(', ')})`);
      continue;
    }
    const d = destroys[0]!;
    const promisedUntil = Math.max(...t.promises.filter((p) => p.at < d.claimedAt - DELIVERY_ALLOWANCE_MS).map((p) => p.until));
    // Live: the pipeline still sent liveness after the claim, or still meant the session to live (it walks away with
    // heartbeats going on, or its close was not sent yet). Expiring a session that then vanished a little before
    // its last heartbeat's promise (that heartbeat dropped after its retries) is early, not a live session killed.
    const liveAfterClaim = t.promises.some((p) => p.at > d.claimedAt + CLOCK_TOLERANCE_MS);
    const meantLive = s.planned === 'walks-away' || ((s.planned === 'closes' || s.planned === 'completes') && (t.endSentAt === undefined || t.endSentAt > d.claimedAt));
    const early = d.cause === 'expired' && d.claimedAt < promisedUntil - CLOCK_TOLERANCE_MS;
    if (early && !liveAfterClaim && !meantLive) earlyExpiries.push(promisedUntil - d.claimedAt);
    if (early && (liveAfterClaim || meantLive)) {
      const promises = t.promises.map((p) => `${new Date(p.at).toISOString().slice(11, 23)}→${new Date(p.until).toISOString().slice(11, 23)}`).join(' ');
      violations.push(`${s.sessionId}: expired at ${new Date(d.claimedAt).toISOString()} although promised alive until ${new Date(promisedUntil).toISOString()} (${promises})`);
    }
    if ((d.cause === 'closed' || d.cause === 'completed') && t.endType !== d.cause) violations.push(`${s.sessionId}: destroyed as ${d.cause}, which the pipeline never sent`);
    if (d.cause === 'idle' && s.planned !== 'walks-away') idleOfPlannedOther++;
    const endedAt = d.cause === 'expired' ? promisedUntil : d.cause === 'closed' || d.cause === 'completed' ? t.endSentAt : undefined;
    if (endedAt !== undefined) lateness.push(d.completedAt - endedAt);
  }
  const sim = (await (await fetch(new URL('/sim/stats', stack.runtimeUrl))).json()) as { usedBytes: number; sessions: number; releases: Record<string, number>; totalAllocated: number; totalFreed: number };
  const twice = Object.entries(sim.releases).filter(([, n]) => n !== 1);
  if (twice.length > 0) violations.push(`the runtime freed ${twice.length} allocation(s) more than once: ${twice.slice(0, 5).map(([k, n]) => `${k}×${n}`).join(', ')}`);
  if (sim.usedBytes !== 0) violations.push(`the runtime still holds ${sim.usedBytes} bytes in ${sim.sessions} session(s)`);
  const ledger = await auditLedger(redis, store.keys);
  if (!ledger.balanced) violations.push(`ledger unbalanced: ${ledger.problems.join('; ')}`);
  if (ledger.totals.heldBytes !== 0) violations.push(`ledger still holds ${ledger.totals.heldBytes} bytes`);
  const remainingDeadLetters = ((await (await admin('/admin/dead-letters')).json()) as { deadLetters?: unknown[] }).deadLetters?.length ?? 0;
  if (brokerStats.pending !== 0 || brokerStats.inFlight !== 0) violations.push(`the Broker still holds ${brokerStats.pending} pending and ${brokerStats.inFlight} in-flight deliveries`);
  if (remainingDeadLetters > 0) violations.push(`${remainingDeadLetters} dead letter(s) left after the replay`);
  const notDestroyed = outcome.sessions.filter((s) => (tracked.get(s.sessionId)?.promises.length ?? 0) > 0 && (tracked.get(s.sessionId)?.destroyed.size ?? 0) === 0);
  if (notDestroyed.length > 0) violations.push(`${notDestroyed.length} session(s) never destroyed: ${notDestroyed.slice(0, 5).map((s) => s.sessionId).join(', ')}`);

  lateness.sort((a, b) => a - b);
  const restarts: Record<string, number> = {};
  for (const [name, p] of Object.entries(stack.processes())) if (p.restarts > 0) restarts[name] = p.restarts;
  const figures = {
    seed: SEED, seconds: SECONDS, sessions: SESSIONS, killEveryMs: KILL_EVERY_MS,
    kills, restarts,
    destroyed: outcome.sessions.filter((s) => (tracked.get(s.sessionId)?.destroyed.size ?? 0) > 0).length,
    causes: [...tracked.values()].flatMap((t) => [...t.destroyed.values()]).reduce<Record<string, number>>((acc, d) => ((acc[d.cause] = (acc[d.cause] ?? 0) + 1), acc), {}),
    idleOfSessionsPlannedToEndOtherwise: idleOfPlannedOther,
    vanishedSessionsExpiredEarly: { count: earlyExpiries.length, maxMs: earlyExpiries.length === 0 ? 0 : Math.max(...earlyExpiries) },
    destroyLatenessMs: { p50: percentile(lateness, 50), p99: percentile(lateness, 99), max: lateness.at(-1) },
    runtime: { allocatedBytes: sim.totalAllocated, freedBytes: sim.totalFreed, heldBytes: sim.usedBytes, allocationsFreed: Object.keys(sim.releases).length },
    ledger: { registeredBytes: ledger.totals.registeredBytes, releasedBytes: ledger.totals.releasedBytes, heldBytes: ledger.totals.heldBytes },
    killLog,
    // The Broker's counters since its last restart (a killed Broker process starts them again).
    broker: { received: brokerStats.received, delivered: brokerStats.delivered, retried: brokerStats.retried, duplicated: brokerStats.duplicated, reordered: brokerStats.reordered, recovered: brokerStats.recovered, deadLettersReplayed: deadLetters.length },
    violations,
  };
  const outDir = join(REPO_ROOT, '.local', 'chaos');
  mkdirSync(outDir, { recursive: true });
  const outFile = join(outDir, `chaos-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(outFile, `${JSON.stringify(figures, null, 2)}\n`);
  console.log(JSON.stringify(figures, null, 2));
  console.log(violations.length === 0 ? `chaos: no violation (${outFile})` : `chaos: ${violations.length} violation(s) (${outFile})`);

  redis.disconnect();
  await stack.stop();
  await sink.close();
  rmSync(workDir, { recursive: true, force: true });
  return violations.length === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error('chaos: the run itself failed:', err);
    process.exit(2);
  },
);
