// destroy-dispatch end to end under load (part of `npm run bench:functions`). A benchmark, not a test: it prints
// figures with the machine and exits 1 if a target is missed.
//
// The whole stack runs as it does locally (tests/support/stack.ts): Redis, the four functions as their own
// functions-framework processes, the deadline engine, the idle checker and the local Broker; the simulated GPU
// runtimes answer with zero latency. Sessions are opened through the core and allocated on their runtime
// beforehand. Then `session.closed` events are POSTed to the Broker open-loop at BENCH_DESTROY_RATE per second (each
// at its scheduled instant, whatever is still in flight) for BENCH_DESTROY_WARMUP_SECONDS, not measured, then
// BENCH_DESTROY_SECONDS, measured. A session's latency = arrival of its `session.destroyed` at the subscriber of the
// inference pipeline's Trigger (a sink in a worker thread) − the instant its close was scheduled to be sent.
//
// Two runs, one after the other on the same stack, each with sessions of its own:
// 1. at BENCH_DESTROY_RATE (default 100/s): targets p50 ≤ 8 ms and p99 ≤ 18 ms close → destroyed, and CPU per
//    destroy ≤ 3× the transport floor measured in the same run (machine-floor.ts);
// 2. at a rate that keeps the machine below half busy: the stack's own CPU per destroy, measured in run 1, sets it
//    (BENCH_DESTROY_QUIET_SHARE of the machine, default 0.4; BENCH_DESTROY_QUIET_RATE fixes it; 0 skips the run);
//    latency is reported there, and the machine's busy share during it, read from /proc/stat (other work on the
//    machine counts too: the line says so when the machine was busier than the stack).
// Each run prints the CPU per destroy of every process (from /proc), in all and on a destroy's path (the Broker and
// the driver, destroy-dispatch, gpu-release, Redis, the runtimes; the other functions, the engine and the idle checker
// only poll), each against the floor as a ratio. With BENCH_CPU_PROF_DIR the processes of the stack write CPU
// profiles and the Broker's thread is profiled in-process; the bench then prints each process's top frames by self
// time over run 1 (BENCH_TOP_FRAMES of them, default 12).
//
// The sessions are spread over BENCH_RUNTIMES GPU nodes, one runtime each, and the storm guard keeps its default
// limits (50 releases/s per runtime, 8 in flight per GPU node): a platform destroying many sessions a second has many
// runtimes, and a single runtime taking them all would be exactly the stampede the guard exists to refuse.
//
// It also checks that every closed session was destroyed exactly once and no other was touched, that the GPU
// ledger balances, and that every runtime freed each closed session's memory exactly once. Before the load it
// measures the transport's floor on this machine (machine-floor.ts): the CPU a destroy's fixed path of HTTP
// exchanges and Redis round trips takes with no-op ends, and the share of the machine that alone needs at the rate.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { Agent, createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker, isMainThread, parentPort } from 'node:worker_threads';
import { Session as InspectorSession } from 'node:inspector/promises';
import { pino } from 'pino';
import { EventType } from '../../functions/core/contract/events.ts';
import { auditLedger } from '../../functions/core/ledger.ts';
import { connectRedis, createRedisClient } from '../../functions/core/redis/connect.ts';
import { KeySpace } from '../../functions/core/redis/keys.ts';
import { Scripts } from '../../functions/core/redis/scripts.ts';
import { SessionStore, eventFingerprint } from '../../functions/core/session-store.ts';
import { freePort } from '../support/redis-harness.ts';
import { profileClockMicros, readProfile, topFrames, type CpuProfile } from './cpu-profile-top.ts';
import { CLOCK_TICKS_PER_S, DESTROY_PATH, destroyFloorMs, measureMachineFloor, procStat, type MachineFloor } from './machine-floor.ts';
import { REPO_ROOT, startStack, type Stack } from '../support/stack.ts';
import { diesWithParent } from '../../tools/local-stack/parent-death.ts';

const RATE = Number(process.env.BENCH_DESTROY_RATE ?? 100);
const SECONDS = Number(process.env.BENCH_DESTROY_SECONDS ?? 20);
const WARMUP_SECONDS = Number(process.env.BENCH_DESTROY_WARMUP_SECONDS ?? 2);
const RUNTIMES = Number(process.env.BENCH_RUNTIMES ?? 16);
// The second run's rate: fixed, or chosen so the stack's work takes this share of the machine (0 skips the run).
const QUIET_RATE = process.env.BENCH_DESTROY_QUIET_RATE === undefined ? undefined : Number(process.env.BENCH_DESTROY_QUIET_RATE);
const QUIET_SHARE = Number(process.env.BENCH_DESTROY_QUIET_SHARE ?? 0.4);
const TOP_FRAMES = Number(process.env.BENCH_TOP_FRAMES ?? 12);
const closesAt = (rate: number) => Math.round(rate * (SECONDS + WARMUP_SECONDS));
// Run 2 never goes faster than run 1, so twice run 1's closes cover both; the rest stay open, never to be touched.
const CLOSABLE = closesAt(RATE) * (QUIET_RATE === 0 ? 1 : 2);
const SESSIONS = Math.max(CLOSABLE, Number(process.env.BENCH_DESTROY_SESSIONS ?? CLOSABLE + 4000));
const GPU_BYTES = 64 * 2 ** 20;
const SIM_TOTAL_BYTES = 2 ** 50;
const WINDOW_MS = 30 * 60_000;
const BUCKETS = 32;
const DRAIN_TIMEOUT_MS = 60_000;
const TARGET_P50_MS = 8;
const TARGET_P99_MS = 18;
/** CPU per destroy on a destroy's path, at most this many times the transport floor. */
const TARGET_FLOOR_RATIO = 3;
const CLOSE_SOURCE = '/bench/inference-pipeline';
const SINK_TRIGGER = 'inference-pipeline-session-destroyed';
// BENCH_VERBOSE=1: count the Broker's retries by trigger and reason (costs the Broker some time), print recent logs.
const VERBOSE = Boolean(process.env.BENCH_VERBOSE);
// BENCH_LOG_LEVEL: LOG_LEVEL of every process of the stack (default warn).
// BENCH_CPU_PROF_DIR=dir: every process of the stack writes a V8 CPU profile there when it stops (for profiling).
// BENCH_NODE_OPTIONS: NODE_OPTIONS for every process of the stack (what-if experiments).
// BENCH_STACK_ENV='NAME=value,…': extra environment for the functions and the engine (tuning experiments, e.g.
// RUNTIME_RELEASE_RATE_PER_S=1000 or OTEL_SDK_DISABLED=true); the run says what it was given.
const CPU_PROF_DIR = process.env.BENCH_CPU_PROF_DIR;
// BENCH_FLOOR=0: skip measuring the transport's floor on this machine (tests/bench/machine-floor.ts, ~10 s).
const FLOOR = process.env.BENCH_FLOOR !== '0';
const nodeOptions = [process.env.BENCH_NODE_OPTIONS ?? '', CPU_PROF_DIR ? `--cpu-prof --cpu-prof-dir=${CPU_PROF_DIR}` : ''].filter(Boolean).join(' ');
const nodeOptionsEnv: Record<string, string> = nodeOptions ? { NODE_OPTIONS: nodeOptions } : {};
const STACK_ENV: Record<string, string> = Object.fromEntries(
  (process.env.BENCH_STACK_ENV ?? '').split(',').filter((kv) => kv.includes('=')).map((kv) => [kv.slice(0, kv.indexOf('=')).trim(), kv.slice(kv.indexOf('=') + 1).trim()]),
);

const sessionId = (i: number) => `d-${String(i).padStart(6, '0')}`;
const fmt = (n: number) => Math.round(n).toLocaleString('en');
const ms = (n: number) => (n === Number.POSITIVE_INFINITY ? '∞' : Number.isFinite(n) ? (n < 10 ? n.toFixed(2) : n.toFixed(1)) : 'n/a');
/** Wall-clock time with sub-millisecond resolution, comparable across threads and with other processes' Date.now(). */
const wallNow = () => performance.timeOrigin + performance.now();

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

function distribution(values: readonly number[]): string {
  const sorted = [...values].sort((a, b) => a - b);
  return `p50 ${ms(percentile(sorted, 50))} ms, p90 ${ms(percentile(sorted, 90))} ms, p99 ${ms(percentile(sorted, 99))} ms, max ${ms(sorted.at(-1) ?? Number.NaN)} ms`;
}

// ---------------------------------------------------------------- driver thread ----------------------------------
// The close sender and the destroyed sink share one worker thread and one clock, away from the Broker's event loop
// (which runs on the main thread), so neither a send nor an arrival waits for the Broker's work to be timed.

/** What the driver is asked to do. */
interface RunRequest {
  kind: 'run';
  brokerUrl: string;
  /** The pipeline's bearer token: the Broker admits session.closed from it. */
  token: string;
  sessionIds: string[];
  ratePerS: number;
  drainTimeoutMs: number;
}

/** One destroyed event as the sink received it. */
interface Arrival {
  sessionId: string;
  eventId: string;
  arrivedAt: number;
  /** When the Broker accepted it (its knativearrivaltime), ms since the epoch. */
  brokerAcceptedAt: number;
  cause: string;
  durationMs: number;
  timeline: { stage: string; at: string }[];
}

/** What the driver reports once every destroyed event arrived (or the drain timed out). */
interface RunResult {
  scheduledAt: number[];
  sentAt: number[];
  /** When the Broker answered the close; NaN when it did not answer 202. */
  ackedAt: number[];
  closeErrors: Record<string, number>;
  arrivals: Arrival[];
  sendEndedAt: number;
}

async function driverThread(): Promise<void> {
  const arrivals: Arrival[] = [];
  let onArrival: (() => void) | undefined;
  const sink: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const arrivedAt = wallNow();
      res.writeHead(202).end();
      if (req.headers['ce-type'] !== EventType.SessionDestroyed) return;
      const data = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { sessionId: string; cause: string; durationMs: number; timeline: Arrival['timeline'] };
      const knativeArrival = req.headers['ce-knativearrivaltime'];
      arrivals.push({
        sessionId: data.sessionId,
        eventId: String(req.headers['ce-id']),
        arrivedAt,
        brokerAcceptedAt: typeof knativeArrival === 'string' ? Date.parse(knativeArrival) : Number.NaN,
        cause: data.cause,
        durationMs: data.durationMs,
        timeline: data.timeline,
      });
      onArrival?.();
    });
  });
  sink.keepAliveTimeout = 60_000;
  sink.listen(0, '127.0.0.1');
  await once(sink, 'listening');
  parentPort?.postMessage({ url: `http://127.0.0.1:${(sink.address() as AddressInfo).port}/` });

  const run = async (job: RunRequest): Promise<RunResult> => {
    const n = job.sessionIds.length;
    const broker = new URL(job.brokerUrl);
    const agent = new Agent({ keepAlive: true, maxSockets: 64 });
    const scheduledAt = new Array<number>(n).fill(Number.NaN);
    const sentAt = new Array<number>(n).fill(Number.NaN);
    const ackedAt = new Array<number>(n).fill(Number.NaN);
    const closeErrors: Record<string, number> = {};
    const countError = (what: string) => (closeErrors[what] = (closeErrors[what] ?? 0) + 1);

    // `resend`: the one retry a close gets when the Broker had closed the pooled connection it was written on (its
    // keep-alive timeout raced the write, so the request never reached it), as functions/core/http-client.ts does
    // for the functions' own hops and a pipeline's sender would; any other failure is counted as not accepted.
    const sendClose = (i: number, resend = true) => {
      const id = job.sessionIds[i]!;
      const body = JSON.stringify({ sessionId: id, reason: 'benchmark' });
      if (resend) sentAt[i] = wallNow();
      let answered = false;
      const req = request(
        {
          host: broker.hostname, port: broker.port, path: broker.pathname, method: 'POST', agent,
          headers: {
            'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'ce-specversion': '1.0',
            'ce-id': `close-${id}`, 'ce-source': CLOSE_SOURCE, 'ce-type': EventType.SessionClosed, 'ce-time': new Date(sentAt[i]!).toISOString(),
            authorization: `Bearer ${job.token}`,
          },
        },
        (res) => {
          answered = true;
          res.resume();
          res.on('end', () => {
            if (res.statusCode === 202) ackedAt[i] = wallNow();
            else countError(`HTTP ${res.statusCode}`);
          });
        },
      );
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (resend && !answered && req.reusedSocket && ['ECONNRESET', 'EPIPE', 'ECONNABORTED'].includes(err.code ?? '')) sendClose(i, false);
        else countError(err.message);
      });
      req.end(body);
    };

    // Open loop: close i is due at start + i / rate, sent then whatever is in flight; a late tick sends every
    // close that is due, and latency counts from the scheduled instant, so a slow sender cannot hide delay.
    const intervalMs = 1000 / job.ratePerS;
    const start = wallNow() + 20;
    let next = 0;
    while (next < n) {
      const now = wallNow();
      while (next < n && start + next * intervalMs <= now) {
        scheduledAt[next] = start + next * intervalMs;
        sendClose(next);
        next += 1;
      }
      if (next < n) await sleep(Math.max(0, start + next * intervalMs - wallNow()));
    }
    const sendEndedAt = wallNow();
    const wanted = new Set(job.sessionIds);
    const seen = new Set<string>();
    const done = () => {
      for (const a of arrivals) if (wanted.has(a.sessionId)) seen.add(a.sessionId);
      return seen.size >= wanted.size;
    };
    if (!done()) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, job.drainTimeoutMs);
        let checked = 0;
        onArrival = () => {
          for (; checked < arrivals.length; checked++) if (wanted.has(arrivals[checked]!.sessionId)) seen.add(arrivals[checked]!.sessionId);
          if (seen.size >= wanted.size) {
            clearTimeout(timer);
            resolve();
          }
        };
      });
      onArrival = undefined;
    }
    // Late duplicates (redeliveries) would arrive within moments: give them a chance to be counted.
    await sleep(500);
    agent.destroy();
    return { scheduledAt, sentAt, ackedAt, closeErrors, arrivals: [...arrivals], sendEndedAt };
  };

  parentPort?.on('message', (msg: RunRequest | 'close') => {
    if (msg === 'close') {
      sink.closeAllConnections();
      sink.close(() => parentPort?.close());
      return;
    }
    void run(msg).then((result) => parentPort?.postMessage(result));
  });
}

interface Driver {
  sinkUrl: string;
  run(job: Omit<RunRequest, 'kind'>): Promise<RunResult>;
  close(): Promise<void>;
}

async function startDriver(): Promise<Driver> {
  const worker = new Worker(new URL(import.meta.url));
  const next = <T>() =>
    new Promise<T>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
  const { url } = await next<{ url: string }>();
  return {
    sinkUrl: url,
    run(job) {
      const reply = next<RunResult>();
      worker.postMessage({ kind: 'run', ...job } satisfies RunRequest);
      return reply;
    },
    async close() {
      const exited = once(worker, 'exit');
      worker.postMessage('close');
      await exited;
    },
  };
}

// ---------------------------------------------------------------- extra runtimes ----------------------------------

interface RuntimeProcess {
  url: string;
  stop(): Promise<void>;
}

async function startRuntime(): Promise<RuntimeProcess> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const keep = ['PATH', 'HOME', 'TMPDIR', 'LANG', 'NODE_COMPILE_CACHE'];
  const proc: ChildProcess = spawn(...diesWithParent(process.execPath, ['runtimes/sim-gpu-runtime/index.ts']), {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'ignore', 'inherit'],
    env: {
      ...Object.fromEntries(keep.flatMap((k) => (process.env[k] === undefined ? [] : [[k, process.env[k]]]))),
      PORT: String(port), SIM_HOST: '127.0.0.1', SIM_LATENCY_MS: '0', SIM_LATENCY_JITTER_MS: '0', SIM_TOTAL_BYTES: String(SIM_TOTAL_BYTES), LOG_LEVEL: 'warn',
    },
  });
  const exited = once(proc, 'exit');
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      const res = await fetch(`${url}/v1/memory`, { signal: AbortSignal.timeout(1000) });
      await res.body?.cancel();
      if (res.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline || proc.exitCode !== null) {
      proc.kill('SIGKILL');
      throw new Error(`a simulated runtime on port ${port} did not start`);
    }
    await sleep(100);
  }
  return {
    url,
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      await exited;
    },
  };
}

// ---------------------------------------------------------------- CPU per process ----------------------------------

interface CpuSample {
  at: number;
  /** Clock ticks (user + system) by process label. */
  ticks: Map<string, number>;
  /** The processes behind each label. */
  pids: Map<string, number[]>;
  selfMicros: number;
  /** The whole machine's clock ticks from /proc/stat: busy (neither idle nor iowait) and in all. */
  machine: { busy: number; total: number } | undefined;
}

/** Labels of the processes on a destroy's path (with the bench process: the Broker and the driver thread). */
const ON_PATH = new Set(['destroy-dispatch', 'gpu-release', 'redis-server', 'sim runtimes (all)']);

/** The machine's busy and total clock ticks so far, summed over its CPUs (/proc/stat's first line). */
function machineTicks(): { busy: number; total: number } | undefined {
  try {
    const fields = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
    const total = fields.reduce((a, b) => a + b, 0);
    // user nice system idle iowait irq softirq steal: idle and iowait are the time no work ran.
    return { busy: total - fields[3]! - fields[4]!, total };
  } catch {
    return undefined;
  }
}

// Every child of this process (the stack, the extra runtimes, redis-server), labelled by what it runs.
function sampleCpu(): CpuSample | undefined {
  if (!existsSync('/proc/self/stat')) return undefined;
  const ticks = new Map<string, number>();
  const pids = new Map<string, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const { ppid, ticks: used } = procStat(entry);
      if (ppid !== process.pid) continue;
      const cmd = readFileSync(join('/proc', entry, 'cmdline'), 'utf8').split('\0');
      const env = readFileSync(join('/proc', entry, 'environ'), 'utf8').split('\0');
      const target = env.find((e) => e.startsWith('FUNCTION_TARGET='))?.slice('FUNCTION_TARGET='.length);
      let label = target ?? cmd.find((a) => a.endsWith('.ts'))?.replace(/^functions\//, '') ?? cmd[0] ?? entry;
      if (label === 'destroy-dispatch/index.ts') label = 'destroy-dispatch';
      if (label === 'gpu-release/index.ts') label = 'gpu-release';
      if (label.includes('redis-server')) label = 'redis-server';
      if (label.includes('sim-gpu-runtime')) label = 'sim runtimes (all)';
      ticks.set(label, (ticks.get(label) ?? 0) + used);
      pids.set(label, [...(pids.get(label) ?? []), Number(entry)]);
    } catch {
      // the process ended meanwhile
    }
  }
  const self = process.cpuUsage();
  return { at: performance.now(), ticks, pids, selfMicros: self.user + self.system, machine: machineTicks() };
}

/** CPU per destroy over an interval, by process, on a destroy's path and in all, and the machine's busy share. */
interface CpuPerDestroy {
  seconds: number;
  /** ms of CPU per destroy by process label (the bench process as `Broker + driver`). */
  byProcess: [string, number][];
  onPathMs: number;
  allMs: number;
  /** Share of the machine the stack and the bench used (1 = every core busy). */
  stackShare: number;
  /** Share of the machine busy with anything, this bench or not (/proc/stat). */
  machineShare: number | undefined;
}

function cpuPerDestroy(a: CpuSample, b: CpuSample, destroys: number): CpuPerDestroy {
  const seconds = (b.at - a.at) / 1000;
  const byProcess: [string, number][] = [['Broker + driver (bench process)', (b.selfMicros - a.selfMicros) / 1000 / destroys]];
  let onPathMs = byProcess[0]![1];
  let allMs = onPathMs;
  for (const [label, t] of [...b.ticks].sort((x, y) => x[0].localeCompare(y[0]))) {
    const perDestroy = ((t - (a.ticks.get(label) ?? 0)) / CLOCK_TICKS_PER_S) * 1000 / destroys;
    byProcess.push([label, perDestroy]);
    allMs += perDestroy;
    if (ON_PATH.has(label)) onPathMs += perDestroy;
  }
  const machineShare = a.machine && b.machine && b.machine.total > a.machine.total ? (b.machine.busy - a.machine.busy) / (b.machine.total - a.machine.total) : undefined;
  return { seconds, byProcess, onPathMs, allMs, stackShare: (allMs * destroys) / 1000 / seconds / cpus().length, machineShare };
}

/** The CPU lines of a run: per process, on the path and in all, each against the floor when there is one. */
function cpuLines(c: CpuPerDestroy, floorMs: number | undefined): string[] {
  const ratio = (msPerDestroy: number) => (floorMs === undefined ? '' : ` = ${(msPerDestroy / floorMs).toFixed(1)}× the floor`);
  const busy = c.machineShare === undefined ? 'n/a (no /proc/stat)' : `${Math.round(c.machineShare * 100)}%`;
  return [
    `CPU per destroy by process (ms; ${c.seconds.toFixed(1)} s from the first close to the last destroyed event): ` +
      c.byProcess.map(([label, v]) => `${label}${ON_PATH.has(label) || label.startsWith('Broker') ? '' : ' [polls only]'} ${ms(v)}`).join(', '),
    `CPU per destroy on a destroy's path ${ms(c.onPathMs)} ms${ratio(c.onPathMs)}${floorMs === undefined ? '' : ` (${ms(floorMs)} ms)`}; in all, with the processes that only poll, ` +
      `${ms(c.allMs)} ms${ratio(c.allMs)}; the stack used ${Math.round(c.stackShare * 100)}% of the machine, which was ${busy} busy (/proc/stat, everything on it)`,
  ];
}

/** The transport's floor, and what share of the machine it alone would take at a rate. */
function floorReport(f: MachineFloor, rate: number): string {
  const us = (n: number) => `${Math.round(n)} µs`;
  const share = (msPerDestroy: number) => `${Math.round((msPerDestroy * rate) / 10 / cpus().length)}%`;
  const p = DESTROY_PATH;
  return (
    `transport floor on this machine (no-op ends, ${cpus().length} cores): a plain HTTP exchange ${us(f.plainHttpMicros)}, a request served by ` +
    `functions-framework ${us(f.frameworkMicros)} (${us(f.frameworkWithoutDomainMicros)} without its per-request domain), a Redis round trip ` +
    `${us(f.redisRoundTripMicros)} of CPU, both ends together; a destroy's path (${p.frameworkRequests} framework requests, ${p.plainHttp} plain ` +
    `exchanges, ${p.redisRoundTrips} Redis round trips) costs at least ${ms(destroyFloorMs(f))} ms of CPU: at ${fmt(rate)}/s, ` +
    `${share(destroyFloorMs(f))} of the machine before any work (${share(destroyFloorMs(f, f.frameworkWithoutDomainMicros))} without the domain)`
  );
}

// ---------------------------------------------------------------- CPU profiles ----------------------------------

/** Profiles this thread (the Broker's event loop) with the inspector, as `--cpu-prof` profiles the stack's processes. */
async function profileThisThread(): Promise<{ stop(): Promise<CpuProfile> }> {
  const session = new InspectorSession();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.start');
  return {
    async stop() {
      const { profile } = await session.post('Profiler.stop');
      session.disconnect();
      return profile as unknown as CpuProfile;
    },
  };
}

/** Each profiled process's top frames by self time within a window, labelled as the CPU report labels them. */
function topFramesReport(dir: string, pidsByLabel: Map<string, number[]>, broker: CpuProfile | undefined, window: { fromUs: number; toUs: number }): string[] {
  const lines: string[] = [];
  const print = (label: string, profile: CpuProfile) => {
    const top = topFrames(profile, TOP_FRAMES, window);
    lines.push(`  ${label}: ${fmt(top.sampledMs)} ms sampled in run 1`);
    for (const f of top.frames) lines.push(`    ${(f.share * 100).toFixed(1).padStart(5)}%  ${f.frame}`);
  };
  if (broker) print('Broker (the bench\'s main thread)', broker);
  const files = existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')) : [];
  for (const [label, pids] of [...pidsByLabel].sort((x, y) => x[0].localeCompare(y[0]))) {
    for (const pid of pids) {
      // --cpu-prof names its files CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile, one per thread: a function's
      // main thread (the framework) and its host's worker thread (functions/framework/worker-host.ts).
      for (const file of files.filter((f) => f.split('.')[3] === String(pid)).sort()) {
        const thread = file.split('.')[4];
        print(`${label} (pid ${pid}, ${thread === '0' ? 'main thread' : `thread ${thread}`})`, readProfile(join(dir, file)));
      }
    }
  }
  return lines;
}

// ---------------------------------------------------------------- Broker retries ----------------------------------

/** A Broker logger that only counts failed delivery attempts, by trigger and reason. */
function retryCounter(): { logger: pino.Logger; counts: Map<string, number> } {
  const counts = new Map<string, number>();
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line.includes('delivery failed')) continue;
        const entry = JSON.parse(line) as { trigger: string; reason: string };
        const key = `${entry.trigger}: ${entry.reason.replace(/http:\/\/127\.0\.0\.1:\d+\/?/g, '').replace(/\d+ ms/g, 'N ms')}`;
        counts.set(key, (counts.get(key) ?? 0) + 1);
      }
      done();
    },
  });
  return { logger: pino({ level: 'debug' }, stream), counts };
}

// ---------------------------------------------------------------- main ----------------------------------

async function main(): Promise<void> {
  let failed = false;
  const miss = (what: string) => {
    console.log(`  MISSED: ${what}`);
    failed = true;
  };
  const loadAtStart = loadavg()[0]!;
  const runtimes: RuntimeProcess[] = [];
  let stack: Stack | undefined;
  const driver = await startDriver();
  const retries = VERBOSE ? retryCounter() : undefined;
  let brokerProfile: CpuProfile | undefined;
  let profileWindow: { fromUs: number; toUs: number } | undefined;
  let profiledPids: Map<string, number[]> | undefined;
  try {
    // The runtimes first: each is registered with the stack (RUNTIMES), as an operator would.
    for (let r = 1; r < RUNTIMES; r++) runtimes.push(await startRuntime());
    stack = await startStack({
      runtimes: runtimes.map((r, i) => ({ name: `bench-${i + 1}`, url: r.url })),
      logLevel: process.env.BENCH_LOG_LEVEL ?? 'warn',
      runtimeEnv: { SIM_LATENCY_MS: '0', SIM_LATENCY_JITTER_MS: '0', SIM_TOTAL_BYTES: String(SIM_TOTAL_BYTES), ...nodeOptionsEnv },
      env: { ...STACK_ENV, ...nodeOptionsEnv },
      subscribers: { [SINK_TRIGGER]: driver.sinkUrl },
      readyTimeoutMs: 60_000,
      ...(retries ? { logger: retries.logger } : {}),
    });
    const runtimeUrls = [stack.runtimeUrl, ...runtimes.map((r) => r.url)];
    const placementOf = (i: number) => ({ node: `gpu-node-${i % RUNTIMES}`, runtimeUrl: runtimeUrls[i % RUNTIMES]!, gpuBytes: GPU_BYTES });

    const redis = createRedisClient({ REDIS_URL: stack.redisUrl, REDIS_CLUSTER_NODES: '', REDIS_PASSWORD: stack.redisPassword, REDIS_TLS: false, CORE_TIMEOUT_MS: 30_000 });
    await connectRedis(redis);
    const keys = new KeySpace(stack.keyPrefix, BUCKETS);
    const store = new SessionStore(redis, keys, await Scripts.register(redis), { tombstoneTtlMs: 86_400_000 });
    const version = /redis_version:(\S+)/.exec(await redis.info('server'))?.[1];
    console.log(
      `bench:functions destroy-dispatch — Node ${process.version}, Redis ${version}, ${cpus().length} × ${cpus()[0]?.model}, ` +
        `${(totalmem() / 2 ** 30).toFixed(0)} GiB, load average at start ${loadAtStart.toFixed(2)}`,
    );

    // Before any load, while the machine is quiet: what the transport alone costs here.
    const floor = FLOOR ? await measureMachineFloor(stack.redisUrl, stack.redisPassword) : undefined;

    // Setup: open every session through the core and allocate its memory on its runtime, so releases free real bytes.
    const setupStart = performance.now();
    // Float64: incarnations are at least Redis's clock in ms (13 digits), exact in a double.
    const incarnations = new Float64Array(SESSIONS);
    const WAVE = 256;
    for (let base = 0; base < SESSIONS; base += WAVE) {
      const now = Date.now();
      await Promise.all(
        Array.from({ length: Math.min(WAVE, SESSIONS - base) }, async (_, k) => {
          const i = base + k;
          const id = sessionId(i);
          const opened = await store.open({ sessionId: id, fingerprint: eventFingerprint('bench', `open-${id}`), now, liveFrom: now, windowMs: WINDOW_MS, placement: placementOf(i) });
          if (opened.code !== 'OPENED') throw new Error(`opening ${id} answered ${opened.code}`);
          incarnations[i] = opened.incarnation;
          const res = await fetch(`${placementOf(i).runtimeUrl}/v1/sessions/${encodeURIComponent(id)}/allocate`, {
            method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ incarnation: opened.incarnation, bytes: GPU_BYTES }),
          });
          await res.body?.cancel();
          if (res.status !== 201) throw new Error(`allocating ${id} answered HTTP ${res.status}`);
        }),
      );
    }
    console.log(
      `${fmt(SESSIONS)} sessions opened through the core and allocated (${GPU_BYTES / 2 ** 20} MiB each) on ${RUNTIMES} zero-latency runtimes, one per GPU node, ` +
        `in ${((performance.now() - setupStart) / 1000).toFixed(1)} s; storm guard at its defaults` +
        (Object.keys(STACK_ENV).length > 0 ? `; stack environment ${JSON.stringify(STACK_ENV)}` : '') +
        (nodeOptions ? `; NODE_OPTIONS ${nodeOptions}` : ''),
    );

    const floorMs = floor ? destroyFloorMs(floor) : undefined;
    if (floor) console.log(floorReport(floor, RATE));

    /** One open-loop run over `ids` at `rate`: its latency, where the time goes, and its CPU per destroy. */
    const runPhase = async (title: string, ids: string[], rate: number) => {
      const warmup = Math.round(rate * WARMUP_SECONDS);
      console.log(`\n--- ${title}: session.closed at ${fmt(rate)}/s ---`);
      const loop = monitorEventLoopDelay({ resolution: 1 });
      const brokerBefore = stack!.broker.stats();
      const cpuBefore = sampleCpu();
      const fromUs = profileClockMicros();
      loop.enable();
      const result = await driver.run({ brokerUrl: stack!.brokerUrl, token: stack!.tokens['inference-pipeline'], sessionIds: ids, ratePerS: rate, drainTimeoutMs: DRAIN_TIMEOUT_MS });
      loop.disable();
      const cpuAfter = sampleCpu();
      const toUs = profileClockMicros();
      const loadAtEnd = loadavg()[0]!;
      await stack!.broker.idle(DRAIN_TIMEOUT_MS).catch((err: unknown) => console.log(`  broker not idle: ${(err as Error).message}`));
      const brokerAfter = stack!.broker.stats();

      // Latency per session, from the first destroyed event for it; strays (earlier runs' sessions) are not timed.
      const firstArrival = new Map<string, Arrival>();
      for (const a of result.arrivals) if (!firstArrival.has(a.sessionId)) firstArrival.set(a.sessionId, a);
      const latency: number[] = [];
      const latencyFromSend: number[] = [];
      const durations: number[] = [];
      const segments = { toClaim: [] as number[], toRequest: [] as number[], requestToReleased: [] as number[], releasedToCompleted: [] as number[], toBroker: [] as number[], brokerToSink: [] as number[] };
      for (let i = warmup; i < ids.length; i++) {
        const a = firstArrival.get(ids[i]!);
        if (!a) {
          // Never destroyed within the drain: it counts, as an infinitely late one, so percentiles cannot hide it.
          latency.push(Number.POSITIVE_INFINITY);
          latencyFromSend.push(Number.POSITIVE_INFINITY);
          continue;
        }
        latency.push(a.arrivedAt - result.scheduledAt[i]!);
        latencyFromSend.push(a.arrivedAt - result.sentAt[i]!);
        durations.push(a.durationMs);
        const at = Object.fromEntries(a.timeline.map((t) => [t.stage, Date.parse(t.at)]));
        if (at.claimed !== undefined) segments.toClaim.push(at.claimed - result.sentAt[i]!);
        if (at.claimed !== undefined && at.gpu_release_requested !== undefined) segments.toRequest.push(at.gpu_release_requested - at.claimed);
        if (at.gpu_release_requested !== undefined && at.gpu_released !== undefined) segments.requestToReleased.push(at.gpu_released - at.gpu_release_requested);
        if (at.gpu_released !== undefined && at.completed !== undefined) segments.releasedToCompleted.push(at.completed - at.gpu_released);
        if (at.completed !== undefined && Number.isFinite(a.brokerAcceptedAt)) segments.toBroker.push(a.brokerAcceptedAt - at.completed);
        if (Number.isFinite(a.brokerAcceptedAt)) segments.brokerToSink.push(a.arrivedAt - a.brokerAcceptedAt);
      }
      const n = ids.length;
      const measured = n - warmup;
      const sendSeconds = (result.scheduledAt[n - 1]! - result.scheduledAt[0]!) / 1000;
      const senderLag = result.sentAt.map((sent, i) => sent - result.scheduledAt[i]!);
      const ackLatency = result.ackedAt.flatMap((a, i) => (Number.isFinite(a) ? [a - result.sentAt[i]!] : []));
      const latencySorted = [...latency].sort((x, y) => x - y);
      console.log(
        `${fmt(n)} session.closed POSTed to the Broker open-loop at ${fmt(n / sendSeconds)}/s over ${sendSeconds.toFixed(1)} s ` +
          `(first ${fmt(warmup)} = ${WARMUP_SECONDS} s warm-up, not measured); sender behind schedule: ${distribution(senderLag)}; Broker 202 after ${distribution(ackLatency)}`,
      );
      const arrived = latency.filter(Number.isFinite).length;
      console.log(
        `close → destroyed at the sink (from the scheduled send), ${fmt(measured)} measured${arrived < measured ? ` (${fmt(measured - arrived)} not destroyed within ${DRAIN_TIMEOUT_MS / 1000} s: ∞)` : ''}: ${distribution(latency)}`,
      );
      console.log(`  (from the actual send: ${distribution(latencyFromSend)})`);
      console.log(`session.destroyed durationMs (claim → completed inside the system): ${distribution(durations)}`);
      console.log('where the time goes (ms clocks of the processes; p50 / p99 / max):');
      const seg = (label: string, values: number[]) => {
        const sorted = [...values].sort((x, y) => x - y);
        console.log(`  ${label.padEnd(58)} ${ms(percentile(sorted, 50))} / ${ms(percentile(sorted, 99))} / ${ms(sorted.at(-1) ?? Number.NaN)}`);
      };
      seg('close sent → claimed (Broker → destroy-dispatch, claim)', segments.toClaim);
      seg('claimed → release requested (hooks, storm guard, checkpoint)', segments.toRequest);
      seg('release requested → released (→ Broker → gpu-release → runtime → Broker → destroy-dispatch)', segments.requestToReleased);
      seg('released → completed (booking, purge, read)', segments.releasedToCompleted);
      seg('completed → Broker accepted session.destroyed (emit)', segments.toBroker);
      seg('Broker accepted → sink received (Broker delivery)', segments.brokerToSink);
      const loopMs = (p: number) => loop.percentile(p) / 1e6;
      console.log(`Broker (main thread) event-loop delay during the run: p50 ${ms(loopMs(50))} ms, p99 ${ms(loopMs(99))} ms, max ${ms(loop.max / 1e6)} ms`);
      const cpu = cpuBefore && cpuAfter ? cpuPerDestroy(cpuBefore, cpuAfter, n) : undefined;
      if (cpu) for (const line of cpuLines(cpu, floorMs)) console.log(line);
      else console.log('CPU per destroy: n/a (no /proc)');
      console.log(`load average at end ${loadAtEnd.toFixed(2)}`);
      console.log(
        `Broker: ${fmt(brokerAfter.received - brokerBefore.received)} events accepted, ${fmt(brokerAfter.delivered - brokerBefore.delivered)} deliveries, ` +
          `${fmt(brokerAfter.retried - brokerBefore.retried)} retried, ${fmt(brokerAfter.deadLettered - brokerBefore.deadLettered)} dead-lettered, ` +
          `${fmt(brokerAfter.rejected - brokerBefore.rejected)} refused`,
      );
      const closeErrorCount = Object.values(result.closeErrors).reduce((x, y) => x + y, 0);
      if (closeErrorCount > 0) console.log(`  close requests not accepted: ${JSON.stringify(result.closeErrors)}`);
      return {
        p50: percentile(latencySorted, 50), p99: percentile(latencySorted, 99), cpu, arrived, measured, closed: n, closeErrorCount,
        offered: n / sendSeconds, arrivals: result.arrivals, window: { fromUs, toUs }, pids: cpuAfter?.pids ?? new Map<string, number[]>(),
      };
    };

    // Run 1, at the target's rate: warm-up closes first (not measured), then the measured ones, one open-loop stream.
    const run1Ids = Array.from({ length: closesAt(RATE) }, (_, i) => sessionId(i));
    const brokerProfiler = CPU_PROF_DIR ? await profileThisThread() : undefined;
    const run1 = await runPhase(`run 1 (target: p50 ≤ ${TARGET_P50_MS} ms, p99 ≤ ${TARGET_P99_MS} ms, CPU per destroy ≤ ${TARGET_FLOOR_RATIO}× the floor)`, run1Ids, RATE);
    brokerProfile = await brokerProfiler?.stop();
    if (CPU_PROF_DIR && brokerProfile) writeFileSync(join(CPU_PROF_DIR, `broker.${process.pid}.cpuprofile`), JSON.stringify(brokerProfile));
    profileWindow = run1.window;
    profiledPids = run1.pids;

    // Run 2, below half busy: the polling processes' share stays, each destroy adds its CPU on the path.
    let quietRate = QUIET_RATE;
    if (quietRate === undefined && run1.cpu) {
      const pollingShare = ((run1.cpu.allMs - run1.cpu.onPathMs) * RATE) / 1000 / cpus().length;
      quietRate = Math.max(1, Math.min(RATE, Math.floor(((QUIET_SHARE - pollingShare) * cpus().length * 1000) / run1.cpu.onPathMs)));
    }
    let run2: Awaited<ReturnType<typeof runPhase>> | undefined;
    if (quietRate !== undefined && quietRate > 0) {
      const from = run1Ids.length;
      const run2Ids = Array.from({ length: Math.min(closesAt(quietRate), CLOSABLE - from) }, (_, i) => sessionId(from + i));
      run2 = await runPhase(`run 2, below half busy (the rate at which the stack's CPU per destroy in run 1 takes ${Math.round(QUIET_SHARE * 100)}% of the machine)`, run2Ids, quietRate);
      const busy = run2.cpu?.machineShare;
      if (busy !== undefined && busy >= 0.5) console.log(`  note: the machine was ${Math.round(busy * 100)}% busy during run 2, the stack ${Math.round((run2.cpu?.stackShare ?? 0) * 100)}% of it: other work shared it`);
    }
    const closedCount = run1.closed + (run2?.closed ?? 0);
    const allArrivals = run2?.arrivals ?? run1.arrivals;

    // Exactly once: every closed session destroyed once (one destroyed event id, a tombstone), no other touched.
    console.log('\n--- both runs ---');
    const destroyedIds = new Map<string, Set<string>>();
    let duplicateDeliveries = 0;
    let wrongCause = 0;
    for (const a of allArrivals) {
      const seen = destroyedIds.get(a.sessionId) ?? new Set();
      if (seen.has(a.eventId)) duplicateDeliveries += 1;
      seen.add(a.eventId);
      destroyedIds.set(a.sessionId, seen);
      if (a.cause !== 'closed') wrongCause += 1;
    }
    const views = await Promise.all(Array.from({ length: SESSIONS }, (_, i) => store.inspect(sessionId(i))));
    let notDestroyed = 0;
    let twice = 0;
    let spareTouched = 0;
    for (let i = 0; i < SESSIONS; i++) {
      const view = views[i];
      const events = destroyedIds.get(sessionId(i))?.size ?? 0;
      if (i < closedCount) {
        if (events === 0 || view?.state !== 'destroyed' || view.incarnation !== incarnations[i]) notDestroyed += 1;
        if (events > 1) twice += 1;
      } else if (events > 0 || view?.state !== 'active') spareTouched += 1;
    }
    const audit = await auditLedger(redis, keys);
    const sims = await Promise.all(
      runtimeUrls.map(async (url) => (await (await fetch(`${url}/sim/stats`)).json()) as { releases: Record<string, number>; totalFreed: number; usedBytes: number }),
    );
    const simReleases = sims.flatMap((x) => Object.values(x.releases));
    const simFreed = sims.reduce((n, x) => n + x.totalFreed, 0);
    const simUsed = sims.reduce((n, x) => n + x.usedBytes, 0);
    const spare = SESSIONS - closedCount;
    console.log(
      `exactly once: ${fmt(closedCount - notDestroyed)} of ${fmt(closedCount)} closed sessions destroyed, ${twice} with more than one destroyed event, ` +
        `${duplicateDeliveries} duplicate deliveries, ${wrongCause} with another cause; ${spareTouched} of ${fmt(spare)} open sessions touched`,
    );
    console.log(
      `ledger ${audit.balanced ? 'balances' : `does NOT balance (${audit.problems.slice(0, 3).join('; ')})`}: ${fmt(audit.totals.releases)} releases of ${fmt(audit.totals.allocations)} allocations, ` +
        `${fmt(audit.totals.heldBytes / GPU_BYTES)} sessions' bytes held; runtimes freed ${fmt(simFreed / GPU_BYTES)} sessions' bytes in ${fmt(simReleases.length)} releases ` +
        `(${simReleases.filter((x) => x !== 1).length} freed more than once), ${fmt(simUsed / GPU_BYTES)} still allocated`,
    );
    if (retries) for (const [why, n] of retries.counts) console.log(`  retried ${n}× ${why}`);
    for (const name of ['destroy-dispatch', 'gpu-release'] as const) {
      const lines = stack.logs[name].filter((l) => /"level":(40|50|60|"warn"|"error"|"fatal")/.test(l));
      if (lines.length > 0) console.log(`  ${name} logged warnings or errors (${lines.length} of its last lines), e.g. ${lines.at(-1)!.slice(0, 400)}`);
      if (VERBOSE) console.log(stack.logs[name].slice(-60).join('\n'));
    }

    // The targets, each with both sides.
    console.log(`\ntargets (run 1, at ${fmt(RATE)}/s):`);
    console.log(`  close → destroyed p50 ${ms(run1.p50)} ms (target ≤ ${TARGET_P50_MS} ms), p99 ${ms(run1.p99)} ms (target ≤ ${TARGET_P99_MS} ms)`);
    if (run1.cpu && floorMs !== undefined) {
      console.log(
        `  CPU per destroy on its path ${ms(run1.cpu.onPathMs)} ms ÷ transport floor ${ms(floorMs)} ms = ${(run1.cpu.onPathMs / floorMs).toFixed(1)}× ` +
          `(target ≤ ${TARGET_FLOOR_RATIO}×); in all ${ms(run1.cpu.allMs)} ms = ${(run1.cpu.allMs / floorMs).toFixed(1)}×`,
      );
    }
    if (run2) {
      console.log(
        `run 2, at ${fmt(quietRate ?? 0)}/s (the machine ${run2.cpu?.machineShare === undefined ? 'n/a' : `${Math.round(run2.cpu.machineShare * 100)}%`} busy, the stack ` +
          `${Math.round((run2.cpu?.stackShare ?? 0) * 100)}%): p50 ${ms(run2.p50)} ms, p99 ${ms(run2.p99)} ms` +
          (run2.cpu && floorMs !== undefined ? `; CPU per destroy on its path ${ms(run2.cpu.onPathMs)} ms = ${(run2.cpu.onPathMs / floorMs).toFixed(1)}× the floor` : ''),
      );
    }
    if (!(run1.p50 <= TARGET_P50_MS)) miss(`p50 close → destroyed ≤ ${TARGET_P50_MS} ms (reached ${ms(run1.p50)} ms)`);
    if (!(run1.p99 <= TARGET_P99_MS)) miss(`p99 close → destroyed ≤ ${TARGET_P99_MS} ms (reached ${ms(run1.p99)} ms)`);
    if (run1.cpu && floorMs !== undefined && !(run1.cpu.onPathMs <= TARGET_FLOOR_RATIO * floorMs)) {
      miss(`CPU per destroy ≤ ${TARGET_FLOOR_RATIO}× the transport floor (reached ${(run1.cpu.onPathMs / floorMs).toFixed(1)}×: ${ms(run1.cpu.onPathMs)} ms vs ${ms(floorMs)} ms)`);
    }
    if (run1.offered < RATE * 0.98) miss(`${RATE} closes/s offered`);
    if (run1.closeErrorCount + (run2?.closeErrorCount ?? 0) > 0) miss('every close accepted by the Broker');
    if (notDestroyed > 0 || run1.arrived < run1.measured || (run2 && run2.arrived < run2.measured)) miss('every closed session destroyed');
    if (twice > 0 || simReleases.some((x) => x !== 1) || simReleases.length > closedCount) miss('each destroy and release exactly once');
    if (wrongCause > 0 || spareTouched > 0) miss('no session destroyed but the closed ones');
    if (!audit.balanced) miss('the ledger balances');
    // Once every closed session is destroyed, the books must agree with the runtimes to the byte.
    else if (notDestroyed === 0 && (audit.totals.releases !== closedCount || audit.totals.heldBytes !== spare * GPU_BYTES || simUsed !== spare * GPU_BYTES)) {
      miss('the ledger and the runtimes agree: every closed session released, every open one held');
    }
    redis.disconnect();
  } finally {
    await stack?.stop();
    await Promise.all(runtimes.map((r) => r.stop()));
    await driver.close();
  }
  // The stack's processes write their profiles as they stop.
  if (CPU_PROF_DIR && profileWindow) {
    console.log(`\ntop frames by self time per process, run 1 only (BENCH_CPU_PROF_DIR=${CPU_PROF_DIR}; (program) = V8 and native work outside JavaScript):`);
    for (const line of topFramesReport(CPU_PROF_DIR, profiledPids ?? new Map(), brokerProfile, profileWindow)) console.log(line);
  }
  console.log(failed ? 'bench:functions destroy-dispatch: a target was missed' : 'bench:functions destroy-dispatch: all targets met');
  process.exitCode = failed ? 1 : 0;
}

if (isMainThread) await main();
else await driverThread();
