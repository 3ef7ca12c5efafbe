// npm run bench:compare — the same heartbeat/expiry workload through several mechanisms, one after another in this
// process and the same minutes, each against its own fresh private redis-server (started here, killed by the kernel
// if this process dies): session-reaper's heartbeat path and deadline engine, a bare sorted set with a precise timer
// (the floor), SCAN sweepers at 30 s and 5 s, Redis key TTL with keyspace notifications, and a BullMQ delayed job per
// session. A benchmark, not a test: it prints a table and the issue's targets as ratios to figures of the same run,
// writes JSON, and exits 0 (a missed target is printed as missed, not failed, since a loaded machine moves them).
//
// Workloads (sessions scale with --scale, or set --sessions for the first):
//   heartbeat-30s  1,000,000 sessions, heartbeats every 30 s, dead 90 s after the last (the design documents' rhythm)
//   heartbeat-1s   100,000 sessions, every 1 s, dead after 3 s
//   outage         as heartbeat-1s, with the detecting side (consumer, sweeper, worker or engine) stopped for 2 s
//                  while deadlines pass
// How a run goes: the detector starts on an empty Redis; live sessions are created as fast as the mechanism takes
// them, each due one timeout after its creation, while the heartbeat driver beats every created session once per
// interval (session i at phase i/N of the interval), so the load is the workload's rate from the start. Then
// --dying-fraction of sessions are created as if they had stopped beating a while ago: their deadlines fall at random
// moments over the window (--window-s) and nothing refreshes them. From then until the last deadline plus the grace
// (--grace-ms; a sweeper gets 1.25 intervals more) the run is measured: detection lag = detection time − the deadline
// the session really had; missed = a dying session never detected; false = a live session detected (or a dying one
// before its deadline); lost = missed with a deadline inside the outage. CPU per heartbeat = (this process's CPU,
// driver and detector threads, + redis-server's used_cpu_sys+used_cpu_user) over the measured span / heartbeats
// applied in it. Redis bytes per session = used_memory after creating every session − before, / sessions. Then for
// --blast-s the driver beats live sessions as fast as the mechanism answers (waves of 1,000, 8 in flight): the
// highest sustained heartbeat rate.
// With --profile, each run also says where its time went: the top self-time frames of the detector's thread over the
// measured span (with its event-loop delay and GC pauses) and of the driver's thread over the blast, and Redis's
// commands and scripts (µs per call) over each, from INFO commandstats and a SLOWLOG that logs every command. Logging
// every command costs Redis CPU: a profiled run's CPU figures are higher than an unprofiled one's.
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { dirname, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { connectRedis, createRedisClient, type RedisClient } from '../../../functions/core/redis/connect.ts';
import { startRedisServer } from '../../../tools/local-stack/redis-server.ts';
import { loadScriptSources } from '../../../functions/core/redis/scripts.ts';
import { DetectorThread, type ThreadProfile } from './detector-thread.ts';
import { BENCH_SCRIPTS, MECHANISMS, mechanismNamed, type Liveness, type Mechanism, type NewSession, type RedisTarget } from './mechanisms.ts';
import { classify, figure, lagSummary, ratioLine, type Detection, type Outage, type RatioTarget } from './outcomes.ts';
import { commandStats, logEveryCommand, scriptCosts, ThreadProfiler, topFrames, type RedisCost, type TopFrame } from './profile.ts';

const HELP = `npm run bench:compare -- [options]
  --scale F            sessions of every workload × F (default 1: 1,000,000 and 100,000)
  --sessions N         sessions of heartbeat-30s (overrides --scale for it)
  --quick              --scale 0.02 --window-s 3 --grace-ms 2000 --blast-s 0.5, the 30 s sweeper only in heartbeat-30s (~3 min)
  --window-s S         seconds over which dying sessions' deadlines fall (default 30 for heartbeat-30s, 10 otherwise)
  --grace-ms MS        how long after the last deadline a detection still counts (default 3000; sweepers + 1.25 intervals)
  --dying-fraction F   share of sessions that stop beating (default 0.02)
  --blast-s S          seconds of heartbeats as fast as answered, per mechanism (default 2; 0 skips)
  --workloads a,b      of heartbeat-30s, heartbeat-1s, outage (default all)
  --mechanisms a,b     of ${MECHANISMS.map((m) => m.name).join(', ')} (default all)
  --profile            also print where each run's time went: top self-time frames of the detector thread (measured
                       span, with event-loop delay and GC) and of the driver thread (blast), Redis µs per command and
                       per script (logging every command costs Redis CPU: compare profiled runs with profiled runs)
  --out PATH           JSON results (default tests/bench/results/compare-<time>.json; - for stdout)`;

const { values: flags } = parseArgs({
  options: {
    scale: { type: 'string' }, sessions: { type: 'string' }, quick: { type: 'boolean', default: false },
    'window-s': { type: 'string' }, 'grace-ms': { type: 'string' }, 'dying-fraction': { type: 'string' },
    'blast-s': { type: 'string' }, workloads: { type: 'string' }, mechanisms: { type: 'string' }, out: { type: 'string' },
    profile: { type: 'boolean', default: false }, help: { type: 'boolean', default: false },
  },
});
if (flags.help) {
  console.log(HELP);
  process.exit(0);
}

/** A flag's number, or the default; a flag that is not a positive number (or 0 where allowed) stops the run. */
function num(name: keyof typeof flags, dflt: number, { zero = false } = {}): number {
  const raw = flags[name];
  if (raw === undefined || typeof raw === 'boolean') return dflt;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0 || (n === 0 && !zero)) throw new Error(`--${name}=${raw} is not a ${zero ? 'non-negative' : 'positive'} number\n${HELP}`);
  return n;
}

const SCALE = num('scale', flags.quick ? 0.02 : 1);
const WINDOW_S = flags['window-s'] === undefined ? (flags.quick ? 3 : undefined) : num('window-s', 10);
const GRACE_MS = num('grace-ms', flags.quick ? 2000 : 3000);
const DYING_FRACTION = num('dying-fraction', 0.02);
const BLAST_S = num('blast-s', flags.quick ? 0.5 : 2, { zero: true });
const PROFILE = flags.profile;
/** Script names by sha, so that the SLOWLOG's EVALSHA entries can be named: the core's scripts and the bench's own. */
const SCRIPT_NAMES = new Map<string, string>([
  ...loadScriptSources().map((s) => [s.lua, s.name] as const),
  ...Object.entries(BENCH_SCRIPTS).map(([name, lua]) => [lua, name] as const),
].map(([lua, name]) => [createHash('sha1').update(lua).digest('hex'), name]));

/** One workload: its sessions, liveness rule, window and (for the outage) when the detector stops and for how long. */
interface Workload {
  name: string;
  sessions: number;
  liveness: Liveness;
  windowMs: number;
  outage?: { afterMs: number; durationMs: number };
}

const scaled = (n: number) => Math.max(200, Math.round(n * SCALE));
const WORKLOADS: Workload[] = [
  { name: 'heartbeat-30s', sessions: flags.sessions ? num('sessions', 0) : scaled(1_000_000), liveness: { intervalMs: 30_000, timeoutMs: 90_000 }, windowMs: (WINDOW_S ?? 30) * 1000 },
  { name: 'heartbeat-1s', sessions: scaled(100_000), liveness: { intervalMs: 1000, timeoutMs: 3000 }, windowMs: (WINDOW_S ?? 10) * 1000 },
  { name: 'outage', sessions: scaled(100_000), liveness: { intervalMs: 1000, timeoutMs: 3000 }, windowMs: (WINDOW_S ?? 10) * 1000 },
];
for (const w of WORKLOADS) if (w.name === 'outage') w.outage = { afterMs: Math.max(500, w.windowMs / 2 - 1000), durationMs: 2000 };

const chosenWorkloads = flags.workloads ? flags.workloads.split(',').map((n) => {
  const w = WORKLOADS.find((x) => x.name === n);
  if (!w) throw new Error(`unknown workload ${n}; one of ${WORKLOADS.map((x) => x.name).join(', ')}`);
  return w;
}) : WORKLOADS;
const chosenMechanisms = flags.mechanisms ? flags.mechanisms.split(',').map(mechanismNamed) : [...MECHANISMS];
/** Whether a mechanism runs in a workload: --quick leaves the 30 s sweeper to the 30 s workload (it needs 40 s a run). */
const runs = (w: Workload, m: Mechanism) => !(flags.quick && m.name === 'sweeper-30s' && w.name !== 'heartbeat-30s');

const sessionId = (i: number) => `s-${String(i).padStart(7, '0')}`;
const OPEN_WAVE = 2000;
const OPEN_IN_FLIGHT = 4;
const BEAT_TICK_MS = 5;
const BEAT_MAX_WAVE = 5000;
const BEATS_IN_FLIGHT = 8;
const BLAST_WAVE = 1000;

/** What one mechanism did in one workload. */
interface RunResult {
  workload: string;
  mechanism: string;
  sessions: number;
  dying: number;
  lagMs: { count: number; p50: number; p99: number; max: number };
  missed: number;
  falseExpiries: number;
  duplicates: number;
  lost: number | null;
  dueInOutage: number | null;
  outageMs: number | null;
  graceMs: number;
  redisBytesPerSession: number;
  cpuMicrosPerHeartbeat: { total: number; process: number; redis: number };
  heartbeats: { applied: number; refused: number; failed: number; perSecond: number; targetPerSecond: number; maxBehindMs: number };
  maxSustainedHeartbeatsPerSecond: number | null;
  /** CPU per heartbeat while heartbeats came as fast as answered (fixed costs such as polling amortised). */
  cpuMicrosPerHeartbeatAtMax: { total: number; process: number; redis: number } | null;
  /** How long creating the sessions took, ms (live; dying, from the first to the last), and the least time a dying one was created before its deadline. */
  setupMs: { live: number; dying: number; dyingLeadMs: number };
  loadAverage: { start: number; end: number };
  wallS: number;
  /** With --profile: where the time went (see the file comment). */
  profile?: RunProfile;
}

/** Where one run's time went (--profile). */
interface RunProfile {
  detector: ThreadProfile | undefined;
  redisInSpan: { commands: RedisCost[]; scripts: RedisCost[] };
  driverInBlast?: { frames: TopFrame[]; busyMs: number; idleMs: number };
  redisInBlast?: { commands: RedisCost[]; scripts: RedisCost[] };
}

/** Redis's account of a span: commandstats since the last reset, per script from the SLOWLOG. */
async function redisCosts(admin: RedisClient): Promise<{ commands: RedisCost[]; scripts: RedisCost[] }> {
  return { commands: (await commandStats(admin)).slice(0, 8), scripts: (await scriptCosts(admin, SCRIPT_NAMES)).slice(0, 8) };
}

/** Starts Redis's account of a span: commandstats reset, every command logged. */
async function redisCostsStart(admin: RedisClient): Promise<void> {
  await admin.config('RESETSTAT');
  await logEveryCommand(admin);
}

async function redisInfo(admin: RedisClient, section: string, field: string): Promise<number> {
  const info = await admin.info(section);
  return Number(new RegExp(`^${field}:([\\d.]+)`, 'm').exec(info)?.[1] ?? Number.NaN);
}

async function redisCpuMicros(admin: RedisClient): Promise<number> {
  return ((await redisInfo(admin, 'cpu', 'used_cpu_sys')) + (await redisInfo(admin, 'cpu', 'used_cpu_user'))) * 1e6;
}

const processCpuMicros = () => {
  const u = process.cpuUsage();
  return u.user + u.system;
};

/** Runs one workload through one mechanism on a fresh redis-server. */
async function runOne(w: Workload, m: Mechanism): Promise<RunResult> {
  const wallStart = performance.now();
  const loadStart = loadavg()[0]!;
  const server = await startRedisServer();
  const target: RedisTarget = { port: server.port, password: server.password };
  const admin = createRedisClient({ REDIS_URL: server.url, REDIS_CLUSTER_NODES: '', REDIS_PASSWORD: server.password, REDIS_TLS: false, CORE_TIMEOUT_MS: 30_000 });
  // Undone in reverse order however the run ends, so a failed run leaves no thread, loop or connection behind.
  const undo: (() => Promise<void> | void)[] = [() => server.stop(), () => admin.disconnect()];
  await connectRedis(admin);
  try {
    await m.configure?.(admin);
    const { intervalMs, timeoutMs } = w.liveness;
    const dying = Math.max(50, Math.round(w.sessions * DYING_FRACTION));
    const live = w.sessions - dying;
    const ids = Array.from({ length: w.sessions }, (_, i) => sessionId(i));
    const detector = await DetectorThread.start({ mechanism: m.name, target, liveness: w.liveness });
    undo.push(() => detector.terminate());
    const driver = await m.driver(target, w.liveness);
    undo.push(() => driver.close());
    const memBefore = await redisInfo(admin, 'memory', 'used_memory');

    // ---- the heartbeat driver: beat c is due at s0 + c · interval / live, and goes to the session under a cursor that
    // sweeps the live sessions in order, so each is beaten once per interval ----
    // While sessions are still being created, the cursor sweeps the ones created so far (the created prefix), at the
    // same rate: were it to run ahead over sessions not yet created, no heartbeat at all would be sent until it came
    // round again (seconds, when creating is slower than the rate asked), and session-reaper's outage rule would
    // rightly take that silence of a whole fleet for an ingest outage and move every deadline past it. A cursor, not
    // c mod the prefix: with the prefix growing under it, c mod the prefix slides back by the growth times c / prefix,
    // and at 1M sessions created at ~11k/s some sessions went unbeaten for longer than their timeout (false expiries
    // that were the driver's, not the mechanism's).
    const opened = new Uint8Array(live);
    let openedPrefix = 0;
    const s0 = Date.now();
    let c = 0;
    let cursor = 0;
    let stopBeats = false;
    let measuring = false;
    let applied = 0;
    let refused = 0;
    let failed = 0;
    let maxBehindMs = 0;
    const inFlight = new Set<Promise<void>>();
    undo.push(async () => {
      stopBeats = true;
      await beats.catch(() => undefined);
    });
    const beats = (async () => {
      while (!stopBeats) {
        const now = Date.now();
        const wave: string[] = [];
        const firstDue = s0 + (c * intervalMs) / live;
        while (s0 + (c * intervalMs) / live <= now && wave.length < BEAT_MAX_WAVE) {
          if (cursor >= (openedPrefix < live ? Math.max(1, openedPrefix) : live)) cursor = 0;
          const i = cursor;
          cursor += 1;
          c += 1;
          if (opened[i] === 1) wave.push(ids[i]!);
        }
        if (measuring && wave.length > 0) maxBehindMs = Math.max(maxBehindMs, now - firstDue);
        if (wave.length > 0) {
          const counted = measuring;
          const sent = driver.heartbeat(wave, now).then(
            (r) => {
              if (counted) {
                applied += wave.length - r;
                refused += r;
              }
            },
            () => {
              if (counted) failed += wave.length;
            },
          );
          inFlight.add(sent);
          void sent.finally(() => inFlight.delete(sent));
          // Bounded: a mechanism that cannot keep up makes the driver fall behind (maxBehindMs), not queue forever.
          while (inFlight.size >= BEATS_IN_FLIGHT) await Promise.race(inFlight);
        }
        await sleep(BEAT_TICK_MS);
      }
      await Promise.all(inFlight);
    })();

    // ---- live sessions, each due one timeout after it is created ----
    const liveStart = performance.now();
    const openWaves = new Set<Promise<void>>();
    for (let base = 0; base < live; base += OPEN_WAVE) {
      const now = Date.now();
      const end = Math.min(live, base + OPEN_WAVE);
      const batch: NewSession[] = [];
      for (let i = base; i < end; i++) batch.push({ id: ids[i]!, deadline: now + timeoutMs });
      const wave = driver.open(batch, now).then(() => {
        opened.fill(1, base, end);
        while (openedPrefix < live && opened[openedPrefix] === 1) openedPrefix += 1;
      });
      openWaves.add(wave);
      void wave.finally(() => openWaves.delete(wave));
      while (openWaves.size >= OPEN_IN_FLIGHT) await Promise.race(openWaves);
    }
    await Promise.all(openWaves);
    const liveMs = performance.now() - liveStart;

    // ---- dying sessions: deadlines spread over the window from t0, nothing refreshes them ----
    // Each is created as if it had beaten last at deadline − timeout and gone silent, at a quarter of a timeout after
    // that beat (never after it: a session cannot have been heard later than it was created). With a 90 s timeout all
    // of them exist before t0; with a 3 s one they are created during the window, each 2.25 s before its deadline.
    const perSessionMs = liveMs / Math.max(1, live);
    const t0 = Date.now() + Math.max(300, dying * perSessionMs * 2);
    const deaths = new Map<string, number>();
    const dyingPlan = Array.from({ length: dying }, (_, k) => {
      const deadline = Math.round(t0 + 200 + Math.random() * (w.windowMs - 200));
      deaths.set(ids[live + k]!, deadline);
      return { id: ids[live + k]!, deadline, createAt: deadline - timeoutMs + timeoutMs / 4 };
    }).sort((a, b) => a.createAt - b.createAt);
    let dyingLeadMs = Number.POSITIVE_INFINITY;
    let dyingCreated = 0;
    const dyingStart = performance.now();
    let dyingMs = 0;
    const creating = (async () => {
      let next = 0;
      while (next < dyingPlan.length) {
        const now = Date.now();
        const batch: NewSession[] = [];
        while (next < dyingPlan.length && dyingPlan[next]!.createAt <= now && batch.length < OPEN_WAVE) {
          const p = dyingPlan[next++]!;
          dyingLeadMs = Math.min(dyingLeadMs, p.deadline - now);
          batch.push(p);
        }
        if (batch.length > 0) {
          await driver.open(batch, now);
          dyingCreated += batch.length;
        }
        else await sleep(Math.min(BEAT_TICK_MS, dyingPlan[next]!.createAt - now));
      }
      dyingMs = performance.now() - dyingStart;
    })();
    await sleep(Math.max(0, t0 - Date.now()));

    // ---- measured span ----
    const memAfter = await redisInfo(admin, 'memory', 'used_memory');
    const sessionsAtT0 = live + dyingCreated;
    let profile: RunProfile | undefined;
    if (PROFILE) {
      await detector.profileStart();
      await redisCostsStart(admin);
    }
    const [cpu0, redis0] = [processCpuMicros(), await redisCpuMicros(admin)];
    const phaseStart = performance.now();
    measuring = true;
    let outage: Outage | undefined;
    const outageDone = w.outage
      ? (async () => {
        await sleep(w.outage!.afterMs);
        const from = Date.now();
        await detector.pause();
        await sleep(w.outage!.durationMs);
        await detector.resume();
        outage = { from, to: Date.now() };
      })()
      : Promise.resolve();
    const lastDeadline = [...deaths.values()].reduce((a, b) => Math.max(a, b), 0);
    // After an outage every mechanism may rightly be late by up to its length (session-reaper's outage rule moves due
    // deadlines past it on purpose): that is lag, not a miss.
    const graceMs = m.graceMs(w.liveness, GRACE_MS) + (w.outage?.durationMs ?? 0);
    await outageDone;
    await creating;
    await sleep(Math.max(0, lastDeadline + graceMs - Date.now()));
    measuring = false;
    const phaseMs = performance.now() - phaseStart;
    const [cpu1, redis1] = [processCpuMicros(), await redisCpuMicros(admin)];
    stopBeats = true;
    await beats;
    if (PROFILE) profile = { detector: await detector.profileStop(), redisInSpan: await redisCosts(admin) };

    // ---- highest sustained heartbeat rate: live sessions, as fast as answered ----
    let blastRate: number | null = null;
    let blastCpu: RunResult['cpuMicrosPerHeartbeat'] | null = null;
    if (BLAST_S > 0) {
      const profiler = PROFILE ? new ThreadProfiler() : undefined;
      if (profiler) {
        await redisCostsStart(admin);
        await profiler.start();
      }
      const [bcpu0, bredis0] = [processCpuMicros(), await redisCpuMicros(admin)];
      let done = 0;
      let cursor = 0;
      const until = performance.now() + BLAST_S * 1000;
      const started = performance.now();
      await Promise.all(Array.from({ length: BEATS_IN_FLIGHT }, async () => {
        while (performance.now() < until) {
          const wave = Array.from({ length: BLAST_WAVE }, () => ids[(cursor = (cursor + 1) % live)]!);
          const r = await driver.heartbeat(wave, Date.now()).catch(() => wave.length);
          done += wave.length - r;
        }
      }));
      blastRate = (done / (performance.now() - started)) * 1000;
      const [bcpu1, bredis1] = [processCpuMicros(), await redisCpuMicros(admin)];
      // No heartbeat applied in the blast (every call refused or failed: BullMQ past its rate): no cost per heartbeat.
      blastCpu = done === 0 ? null : { total: (bcpu1 - bcpu0 + (bredis1 - bredis0)) / done, process: (bcpu1 - bcpu0) / done, redis: (bredis1 - bredis0) / done };
      if (profiler && profile) {
        profile.driverInBlast = topFrames(await profiler.stop());
        profile.redisInBlast = await redisCosts(admin);
      }
    }

    await detector.stop();
    if (detector.failure) console.log(`  ${m.name}: detector reported ${detector.failure.message}`);
    const detections: Detection[] = detector.ids.map((sessionId, k) => ({ sessionId, at: detector.ats[k]! }))
      // Only what was found by the end of the measured span counts (the blast runs after it).
      .filter((d) => d.at <= lastDeadline + graceMs);
    const out = classify(deaths, detections, outage);
    const heartbeatsInSpan = applied + refused;
    return {
      workload: w.name,
      mechanism: m.name,
      sessions: w.sessions,
      dying,
      lagMs: lagSummary(out.lags),
      missed: out.missed,
      falseExpiries: out.falseExpiries,
      duplicates: out.duplicates,
      lost: w.outage ? out.lost : null,
      dueInOutage: w.outage ? out.dueInOutage : null,
      outageMs: outage ? outage.to - outage.from : null,
      graceMs,
      redisBytesPerSession: (memAfter - memBefore) / sessionsAtT0,
      cpuMicrosPerHeartbeat: {
        total: (cpu1 - cpu0 + (redis1 - redis0)) / heartbeatsInSpan,
        process: (cpu1 - cpu0) / heartbeatsInSpan,
        redis: (redis1 - redis0) / heartbeatsInSpan,
      },
      heartbeats: { applied, refused, failed, perSecond: (heartbeatsInSpan / phaseMs) * 1000, targetPerSecond: (live / intervalMs) * 1000, maxBehindMs },
      maxSustainedHeartbeatsPerSecond: blastRate,
      cpuMicrosPerHeartbeatAtMax: blastCpu,
      setupMs: { live: liveMs, dying: dyingMs, dyingLeadMs },
      loadAverage: { start: loadStart, end: loadavg()[0]! },
      wallS: (performance.now() - wallStart) / 1000,
      ...(profile ? { profile } : {}),
    };
  } finally {
    for (const step of undo.reverse()) await Promise.resolve().then(step).catch(() => undefined);
  }
}

/** A run's profile as printed: the top frames per thread, loop delay and GC, Redis per command and per script. */
function profileLines(p: RunProfile): string[] {
  const frames = (title: string, t: { frames: TopFrame[]; busyMs: number; idleMs: number }) => [
    `${title}: busy ${figure(t.busyMs)} ms, idle ${figure(t.idleMs)} ms; top self time:`,
    ...t.frames.slice(0, 8).map((f) => `  ${figure(f.selfMs).padStart(7)} ms ${(f.share * 100).toFixed(1).padStart(5)} %  ${f.frame}`),
  ];
  const costs = (title: string, c: { commands: RedisCost[]; scripts: RedisCost[] }) => [
    `${title}: ${c.commands.slice(0, 5).map((x) => `${x.what} ${figure(x.calls)} × ${figure(x.usecPerCall)} µs`).join(', ')}`,
    `  per script (SLOWLOG sample): ${c.scripts.slice(0, 5).map((x) => `${x.what} ${figure(x.calls)} × ${figure(x.usecPerCall)} µs`).join(', ') || 'none'}`,
  ];
  const out: string[] = [];
  if (p.detector) {
    out.push(...frames('detector thread, measured span', p.detector));
    out.push(`  event-loop delay p50 ${figure(p.detector.loopDelayMs.p50)} / p99 ${figure(p.detector.loopDelayMs.p99)} / max ${figure(p.detector.loopDelayMs.max)} ms; ` +
      `GC ${p.detector.gc.count} pauses, ${figure(p.detector.gc.totalMs)} ms in all, longest ${figure(p.detector.gc.maxMs)} ms`);
  }
  out.push(...costs('Redis, measured span', p.redisInSpan));
  if (p.driverInBlast) out.push(...frames('driver thread, blast', p.driverInBlast));
  if (p.redisInBlast) out.push(...costs('Redis, blast', p.redisInBlast));
  return out;
}

// ---------------- main ----------------
const benchStart = performance.now();
const probe = await startRedisServer();
const probeClient = createRedisClient({ REDIS_URL: probe.url, REDIS_CLUSTER_NODES: '', REDIS_PASSWORD: probe.password, REDIS_TLS: false, CORE_TIMEOUT_MS: 30_000 });
await connectRedis(probeClient);
const redisVersion = /redis_version:(\S+)/.exec(await probeClient.info('server'))?.[1] ?? '?';
probeClient.disconnect();
await probe.stop();
const bullmqVersion = (JSON.parse(readFileSync(new URL('../../../node_modules/bullmq/package.json', import.meta.url), 'utf8')) as { version: string }).version;
const machine = {
  cores: cpus().length,
  cpu: cpus()[0]?.model ?? '?',
  memoryGiB: Math.round(totalmem() / 2 ** 30),
  node: process.version,
  redis: redisVersion,
  bullmq: bullmqVersion,
  loadAverageAtStart: loadavg().map((x) => Number(x.toFixed(2))),
};
console.log(
  `bench:compare — ${machine.cores} × ${machine.cpu}, ${machine.memoryGiB} GiB, Node ${machine.node}, Redis ${machine.redis}, BullMQ ${machine.bullmq}; ` +
    `load average ${machine.loadAverageAtStart.join(' ')} at start`,
);
if (machine.loadAverageAtStart[0]! > machine.cores / 2) {
  console.log(`note: the machine is busy (load average ${machine.loadAverageAtStart[0]} on ${machine.cores} cores): compare figures of this run with each other, not with other runs`);
}
console.log(`scale ${SCALE}, dying ${DYING_FRACTION * 100} %, grace ${GRACE_MS} ms, blast ${BLAST_S} s${flags.quick ? ' (--quick)' : ''}${PROFILE ? '; --profile: Redis logs every command, so CPU figures run higher than unprofiled' : ''}`);

const results: RunResult[] = [];
for (const w of chosenWorkloads) {
  console.log(`\n${w.name}: ${w.sessions.toLocaleString('en')} sessions, heartbeat every ${w.liveness.intervalMs / 1000} s, dead ${w.liveness.timeoutMs / 1000} s after the last; ` +
    `deadlines over ${w.windowMs / 1000} s${w.outage ? `; detector stopped for ${w.outage.durationMs / 1000} s from ${w.outage.afterMs / 1000} s` : ''}`);
  for (const m of chosenMechanisms) {
    if (!runs(w, m)) continue;
    const r = await runOne(w, m);
    results.push(r);
    console.log(
      `  ${m.name.padEnd(17)} lag p50 ${figure(r.lagMs.p50)} ms, p99 ${figure(r.lagMs.p99)} ms, max ${figure(r.lagMs.max)} ms; missed ${r.missed}, false ${r.falseExpiries}` +
        `${r.lost === null ? '' : `, lost ${r.lost}/${r.dueInOutage}`}; ${figure(r.redisBytesPerSession)} B/session; ${figure(r.cpuMicrosPerHeartbeat.total)} µs CPU/heartbeat; ` +
        `${figure(r.heartbeats.perSecond)}/${figure(r.heartbeats.targetPerSecond)} heartbeats/s (behind ≤ ${figure(r.heartbeats.maxBehindMs)} ms)` +
        `${r.maxSustainedHeartbeatsPerSecond === null ? '' : `, max ${figure(r.maxSustainedHeartbeatsPerSecond)}/s`}; ${r.wallS.toFixed(0)} s` +
        `${r.setupMs.dyingLeadMs < 150 ? ` (a dying session was created only ${figure(r.setupMs.dyingLeadMs)} ms before its deadline, close to a poll period: the machine is too slow for this scale)` : ''}`,
    );
    if (r.profile) console.log(profileLines(r.profile).map((l) => `    ${l}`).join('\n'));
  }
}

// ---------------- table ----------------
const cell = (n: number | null) => (n === null ? '—' : figure(n));
const table = [
  '| workload | mechanism | lag p50 / p99 / max (ms) | missed | false | lost (of due in outage) | Redis B/session | CPU µs/heartbeat at the asked rate (process + Redis) | heartbeats/s reached / asked | max sustained heartbeats/s | CPU µs/heartbeat at that rate |',
  '|---|---|---|---|---|---|---|---|---|---|---|',
  ...results.map((r) =>
    `| ${r.workload} | ${r.mechanism} | ${cell(r.lagMs.p50)} / ${cell(r.lagMs.p99)} / ${cell(r.lagMs.max)} | ${r.missed} | ${r.falseExpiries} | ` +
      `${r.lost === null ? '—' : `${r.lost} (${r.dueInOutage})`} | ${cell(r.redisBytesPerSession)} | ${cell(r.cpuMicrosPerHeartbeat.total)} (${cell(r.cpuMicrosPerHeartbeat.process)} + ${cell(r.cpuMicrosPerHeartbeat.redis)}) | ` +
      `${cell(r.heartbeats.perSecond)} / ${cell(r.heartbeats.targetPerSecond)} | ${cell(r.maxSustainedHeartbeatsPerSecond)} | ` +
      `${r.cpuMicrosPerHeartbeatAtMax === null ? (r.maxSustainedHeartbeatsPerSecond === 0 ? '— (no heartbeat applied in the blast)' : '—') : `${cell(r.cpuMicrosPerHeartbeatAtMax.total)} (${cell(r.cpuMicrosPerHeartbeatAtMax.process)} + ${cell(r.cpuMicrosPerHeartbeatAtMax.redis)})`} |`,
  ),
];
console.log(`\n${table.join('\n')}`);

// ---------------- the issue's targets, as ratios to figures of this run ----------------
const find = (w: string, m: string) => results.find((r) => r.workload === w && r.mechanism === m);
const targets: RatioTarget[] = [];
const sr = find('heartbeat-30s', 'session-reaper');
const floor = find('heartbeat-30s', 'sorted-set-floor');
const sweep30 = find('heartbeat-30s', 'sweeper-30s');
if (sr && floor) {
  targets.push({ what: 'p99 detection lag, heartbeat-30s', ours: { name: 'session-reaper', value: sr.lagMs.p99 }, reference: { name: 'sorted-set floor', value: floor.lagMs.p99 }, unit: 'ms', bound: { op: '<=', value: 2 } });
  targets.push({ what: 'CPU per heartbeat at the asked rate (process + Redis), heartbeat-30s', ours: { name: 'session-reaper', value: sr.cpuMicrosPerHeartbeat.total }, reference: { name: 'sorted-set floor', value: floor.cpuMicrosPerHeartbeat.total }, unit: 'µs', bound: { op: '<=', value: 3 } });
  if (sr.cpuMicrosPerHeartbeatAtMax && floor.cpuMicrosPerHeartbeatAtMax) {
    targets.push({ what: 'CPU per heartbeat at the highest sustained rate (process + Redis), heartbeat-30s', ours: { name: 'session-reaper', value: sr.cpuMicrosPerHeartbeatAtMax.total }, reference: { name: 'sorted-set floor', value: floor.cpuMicrosPerHeartbeatAtMax.total }, unit: 'µs', bound: { op: '<=', value: 3 } });
  }
}
if (sr && sweep30) {
  targets.push({ what: 'p99 detection lag, heartbeat-30s', ours: { name: 'sweeper-30s', value: sweep30.lagMs.p99 }, reference: { name: 'session-reaper', value: sr.lagMs.p99 }, unit: 'ms', bound: { op: '>=', value: 1000 } });
}
if (sr) targets.push({ what: 'Redis memory per session, heartbeat-30s', ours: { name: 'session-reaper', value: sr.redisBytesPerSession }, reference: { name: 'the 250 B budget', value: 250 }, unit: 'B', bound: { op: '<=', value: 1 } });
const lines = targets.map(ratioLine);
for (const r of results.filter((x) => x.mechanism === 'session-reaper')) {
  const bad = r.missed + r.falseExpiries + (r.lost ?? 0);
  lines.push(`no missed, false or lost expiry, session-reaper, ${r.workload}: missed ${r.missed}, false ${r.falseExpiries}${r.lost === null ? '' : `, lost ${r.lost} of ${r.dueInOutage} due in the outage`} — ${bad === 0 ? 'met' : 'missed'}`);
}
for (const r of results.filter((x) => x.workload === 'outage' && x.mechanism !== 'session-reaper')) {
  lines.push(`for reference, outage: ${r.mechanism} lost ${r.lost} of ${r.dueInOutage} due while its detector was stopped`);
}
console.log(`\ntargets (ratios to figures of this run):\n${lines.map((l) => `  ${l}`).join('\n')}`);
const wallS = (performance.now() - benchStart) / 1000;
const loadEnd = loadavg().map((x) => Number(x.toFixed(2)));
console.log(`\n${wallS.toFixed(0)} s in all; load average ${loadEnd.join(' ')} at the end (${machine.cores} cores)`);

const report = {
  startedAt: new Date(Date.now() - wallS * 1000).toISOString(),
  wallS,
  machine: { ...machine, loadAverageAtEnd: loadEnd },
  settings: { scale: SCALE, windowS: WINDOW_S ?? null, graceMs: GRACE_MS, dyingFraction: DYING_FRACTION, blastS: BLAST_S, quick: flags.quick, profile: PROFILE },
  results,
  targets: lines,
};
const outPath = flags.out ?? `tests/bench/results/compare-${report.startedAt.replace(/[:.]/g, '-')}.json`;
if (outPath === '-') {
  console.log(JSON.stringify(report, null, 2));
} else {
  mkdirSync(dirname(resolve(outPath)), { recursive: true });
  writeFileSync(outPath, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`results written to ${outPath}`);
}
