// The whole system on one machine, for tests, benchmarks and `npm start`: a private redis-server (unless a Redis
// URL is given; its password drawn at random), the simulated GPU runtime, each of the four functions as its own process,
// the deadline engine, and the local Broker (in this process, so tests can inspect it), all on free loopback
// ports. Processes are started with this process's Node (process.execPath), so a run through npm or npx uses
// Node 24 for all of them, each in its own process group: a Ctrl-C in the terminal reaches only the launcher, which
// stops the parts in order (the Broker first, so nothing in flight is lost). startStack resolves once every part
// answers its health check.
//
// Every child dies with the launcher, however the launcher dies (SIGKILL included): each is spawned through
// `setpriv --pdeathsig KILL` where util-linux has it (parent-death.ts). A part that crashes once the stack runs is
// restarted on the same port, so the Broker's routes stay valid, as Knative's kubelet restarts a crashed container:
// with CrashLoopBackOff's doubling delay, shortened for one machine (see RESTART_BACKOFF). Deliveries to it meanwhile
// fail to connect and are retried by the Broker as their Trigger's delivery spec says.
//
// The Broker itself starts last, once its subscribers are up, so the deliveries kept at the last stop go straight
// out rather than into retries against processes still starting; until then a stand-in on the ingress port answers
// /healthz with 503 and events with 503 and Retry-After (both what a Knative Broker that is not ready answers).
//
// The trust boundary is the deployed one: every part listens on 127.0.0.1 unless told otherwise; every sender (each
// workload, the pipeline, an operator) gets a token of its own, drawn at each start and kept in a private folder,
// and the Broker admits only what the manifests' EventPolicies let that sender send; the one registered runtime is
// the simulator, and outbound calls may reach loopback addresses only.
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomBytes, randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { WORKLOADS, type Sender } from '../../functions/core/contract/events.ts';
import { isSpecificInterface, reachableOrigin } from '../../functions/core/listen-host.ts';
import { OutboundAddressPolicy } from '../../functions/core/outbound-address.ts';
import type { RuntimeEntry } from '../../functions/core/runtime-registry.ts';
import { startLocalBroker, type LocalBroker } from '../local-broker/broker.ts';
import { loadSenderPolicies } from '../local-broker/event-policies.ts';
import { createStatusPage, type StatusPage } from '../local-broker/status-page.ts';
import type { DeliveryChaos } from '../local-broker/delivery-chaos.ts';
import type { DeliverySpec } from '../local-broker/triggers.ts';
import type { BrokerEvent } from '../local-broker/wire.ts';
import { diesWithParent } from './parent-death.ts';
import { freePort, startRedisServer, type RedisServer } from './redis-server.ts';

/** The repository root: every entry file is given relative to it, and processes run in it. */
export const REPO_ROOT = resolve(import.meta.dirname, '..', '..');

/** The four functions, each served by functions-framework as its own process. */
export const FUNCTION_NAMES = ['heartbeat-timeout', 'activity-score', 'destroy-dispatch', 'gpu-release'] as const;
export type FunctionName = (typeof FUNCTION_NAMES)[number];

/** Every process of the stack besides Redis and the in-process Broker. */
export type ProcessName = FunctionName | 'deadline-engine' | 'idle-checker' | 'sim-gpu-runtime' | 'llama-engine';

/** Every process the stack supervises: the Broker too when it runs as its own process (brokerProcess). */
export type SupervisedName = ProcessName | 'local-broker';

const ENGINE_ENTRY = 'functions/heartbeat-timeout/engine.ts';
const IDLE_CHECKER_ENTRY = 'functions/activity-score/idle-checker-main.ts';
const RUNTIME_ENTRY = 'runtimes/sim-gpu-runtime/index.ts';
/** The reference llama.cpp engine (runtimes/llama-engine), run beside the simulator when asked for (`engine`). */
const LLAMA_ENGINE_ENTRY = 'runtimes/llama-engine/index.ts';
const BROKER_ENTRY = 'tools/local-broker/index.ts';
const functionEntry = (name: FunctionName) => `functions/${name}/index.ts`;

/** The entry files the stack runs, relative to the repository root. */
export const STACK_ENTRY_FILES: readonly string[] = [ENGINE_ENTRY, IDLE_CHECKER_ENTRY, RUNTIME_ENTRY, ...FUNCTION_NAMES.map(functionEntry)];

/** The senders that get a token: our workloads, the inference pipeline, an operator. */
const STACK_SENDERS: readonly Sender[] = [...WORKLOADS, 'inference-pipeline', 'operator'];

/** Networks the local stack's outbound calls may reach: this machine only. */
const LOOPBACK_CIDRS: readonly string[] = ['127.0.0.0/8', '::1/128'];

/**
 * The OIDC subject the manifests' EventPolicies admit for each sender (the policy annotated with it): what the local
 * Broker knows each sender's token as.
 */
function senderSubjects(manifestsDir?: string): Record<Sender, string> {
  const policies = loadSenderPolicies({ broker: 'default', ...(manifestsDir === undefined ? {} : { manifestsDir }) });
  const out: Partial<Record<Sender, string>> = {};
  for (const sender of STACK_SENDERS) {
    const subject = policies.find((p) => p.sender === sender)?.subjects[0];
    if (subject !== undefined) out[sender] = subject;
  }
  return out as Record<Sender, string>;
}

/** The entry files that do not exist (yet); the stack cannot start while any is missing. */
export function missingEntryFiles(): string[] {
  return STACK_ENTRY_FILES.filter((f) => !existsSync(join(REPO_ROOT, f)));
}

/** How to start the stack; every field is optional. */
export interface StackOptions {
  /** A Redis to use instead of a private redis-server; default: process.env.REDIS_URL, else a private one. */
  redisUrl?: string;
  /** Where a private redis-server keeps its data across starts; default: nowhere (a throw-away server). */
  redisDataDir?: string;
  /** The Broker ingress port; 0 (default) picks a free one. */
  brokerPort?: number;
  /** The simulated runtime's port; 0 (default) picks a free one. A fixed one keeps runtime URLs valid across starts. */
  runtimePort?: number;
  /** REDIS_KEY_PREFIX of every process. Default: a fresh unique one. */
  keyPrefix?: string;
  /** LOG_LEVEL of every process. Default warn. */
  logLevel?: string;
  /** Extra environment for the functions and the engine (e.g. DEADLINE_POLL_MS, CORE_TIMEOUT_MS). */
  env?: Readonly<Record<string, string>>;
  /**
   * Also run the reference llama.cpp engine (runtimes/llama-engine: real KV caches on a generated tiny model),
   * registered as the runtime `llama`; it needs its one-time install (`npm --prefix runtimes/llama-engine run setup`).
   */
  engine?: 'llama';
  /** Extra environment for the llama engine (ENGINE_*). */
  engineEnv?: Record<string, string>;
  /** Extra environment for the simulated runtime (SIM_*). */
  runtimeEnv?: Readonly<Record<string, string>>;
  /** The Broker's dead-letter directory. Default: a fresh temporary one, removed at exit. */
  deadLetterDir?: string;
  /** An outside sink for every event the system emits (the Broker's forward). */
  forward?: string;
  /** Replaces parts of every Trigger's delivery spec (tests: short backoff). */
  deliveryOverride?: Partial<DeliverySpec>;
  /** The Broker's duplicated, reordered and delayed deliveries (its `chaos` option). Default: none. */
  brokerChaos?: DeliveryChaos;
  /** Extra subscribers for the Broker, e.g. { 'inference-pipeline-session-destroyed': url }. */
  subscribers?: Readonly<Record<string, string>>;
  /** How long every part may take to answer its health check, ms. Default 30000. */
  readyTimeoutMs?: number;
  /** The Broker's logger (silent when absent). */
  logger?: Logger;
  /** Called with every event the Broker accepts. */
  onEvent?: (event: BrokerEvent) => void;
  /** Called when a process of the stack exits on its own after the stack was ready (a crash); it is then restarted. */
  onProcessExit?: (name: SupervisedName, code: number | null) => void;
  /** Called when a crashed process is healthy again on its port, with its new pid and how often it was restarted. */
  onProcessRestarted?: (name: SupervisedName, pid: number, restarts: number) => void;
  /**
   * Run the Broker as its own supervised process (tools/local-broker/index.ts, configured by its environment) on
   * the ingress port, keeping its dead letters and pending deliveries in deadLetterDir, so a chaos harness can kill -9
   * it and see it restarted. Such a stack has no in-process `broker` to inspect (startStack's return type says so), and
   * onEvent, deliveryOverride and logger do not reach it; brokerEnv does. Default false: the Broker runs in this process.
   */
  brokerProcess?: boolean;
  /** Extra environment for a Broker process (brokerProcess), e.g. its delivery settings. */
  brokerEnv?: Readonly<Record<string, string>>;
  /** Restart a process that crashed (default true); false leaves it down, as before supervision. */
  restartCrashed?: boolean;
  /** How long the Broker's stop lets pending deliveries finish before persisting them, ms. Default 5000. */
  stopGraceMs?: number;
  /** Interface every part listens on. Default 127.0.0.1. */
  host?: string;
  /** Runtimes registered besides the simulator (RUNTIMES). */
  runtimes?: readonly RuntimeEntry[];
  /** Networks outbound calls may reach besides loopback (OUTBOUND_ALLOWED_CIDRS). */
  allowedCidrs?: readonly string[];
  /** Where the senders' token files are written. Default: a private temporary folder, removed at stop. */
  tokenDir?: string;
  /**
   * Whether each function, the deadline engine and the idle checker serve their metrics (Prometheus text, GET
   * /metrics) on a port of their own (`metricsUrls`). Default true; the processes push nothing (no OTLP endpoint).
   */
  metrics?: boolean;
}

/** The processes that record the metric catalogue (functions/core/metrics.ts), each on its own metrics port. */
export const METRICS_PROCESSES = ['heartbeat-timeout', 'activity-score', 'destroy-dispatch', 'gpu-release', 'deadline-engine', 'idle-checker'] as const;

/** A process that serves metrics: those, and the Broker (its own dead letters, at GET /metrics on its ingress). */
export type MetricsProcess = (typeof METRICS_PROCESSES)[number] | 'local-broker';

/** A running stack. */
export interface Stack {
  /** The Broker's ingress (K_SINK of every process): send events here. */
  readonly brokerUrl: string;
  /** The simulated GPU runtime's base URL: use it as a session's placement.runtimeUrl. */
  readonly runtimeUrl: string;
  /** The llama engine's base URL (registered as `llama`) when the stack runs it. */
  readonly engineUrl?: string;
  /** Redis, without its password (see redisPassword). */
  readonly redisUrl: string;
  /** The private redis-server's password ('' for a Redis given by URL). */
  readonly redisPassword: string;
  /** Each sender's bearer token for the Broker: send as the pipeline with tokens['inference-pipeline']. */
  readonly tokens: Readonly<Record<Sender, string>>;
  /** Where each sender's token file is (SINK_TOKEN_FILE of the workloads; sessionctl reads the operator's). */
  readonly tokenFiles: Readonly<Record<Sender, string>>;
  /** The Broker's dead-letter directory. */
  readonly deadLetterDir: string;
  readonly keyPrefix: string;
  /** Where each process serves its metrics (Prometheus text exposition), unless the stack was started without. */
  readonly metricsUrls: Readonly<Partial<Record<MetricsProcess, string>>>;
  /** The status page the in-process Broker serves (tools/local-broker/status-page.ts): figures, charts, alerts. */
  readonly statusUrl: string;
  /** Tells the status page where a local Prometheus evaluates the alert rules (undefined: none runs). */
  setPrometheusUrl(url: string | undefined): void;
  /** Loopback ports by part. */
  readonly ports: Readonly<Record<Exclude<ProcessName, 'llama-engine'> | 'broker', number>> & { readonly 'llama-engine'?: number };
  /** The in-process Broker: stats, received events, dead letters. */
  readonly broker: LocalBroker;
  /** The most recent output lines of each process (stdout and stderr). */
  readonly logs: Readonly<Record<ProcessName, readonly string[]>>;
  /** Each process's pid now (a restarted one has a new pid; undefined while it is down), the private Redis's too. */
  pids(): Readonly<Record<ProcessName, number | undefined>> & { readonly 'redis-server'?: number | undefined; readonly 'local-broker'?: number | undefined };
  /** Each process's state and how often it was restarted after a crash. */
  processes(): Readonly<Record<ProcessName, ProcessStatus>> & { readonly 'local-broker'?: ProcessStatus };
  /** Sends a signal (default SIGKILL: a chaos harness's kill -9) to one process; unless the stack is stopping, it is restarted. */
  kill(name: SupervisedName, signal?: NodeJS.Signals): void;
  /**
   * Restarts the private redis-server on its port with its password, after SIGTERM (it saves first) or SIGKILL
   * (default: a crash). With a data directory (redisDataDir) nothing acknowledged is lost; a throw-away one restarts
   * empty. The processes' clients reconnect on their own. With `downMs`, Redis stays down that long first: an outage
   * of that length (the outage rule's test). Throws for a Redis given by URL.
   */
  restartRedis(signal?: NodeJS.Signals, downMs?: number): Promise<void>;
  /** Stops the Broker (finishing or persisting its deliveries), then SIGTERMs every process and waits for it. */
  stop(): Promise<void>;
}

/** Where a supervised process is: running (healthy since its last start), starting, or waiting out its backoff. */
export interface ProcessStatus {
  state: 'running' | 'starting' | 'backoff' | 'stopped';
  pid: number | undefined;
  /** Restarts after a crash so far. */
  restarts: number;
  /** The exit status of its last crash (128 for a signal), if it crashed. */
  lastExit?: number | null;
}

/** A stack whose Broker runs as its own process (brokerProcess): nothing in this process to inspect. */
export type StackWithBrokerProcess = Omit<Stack, 'broker' | 'statusUrl' | 'setPrometheusUrl'>;

/** A part of the stack failed to start; the message carries its exit status and last log lines. */
export class StackStartError extends Error {
  override name = 'StackStartError';
}

const KEEP_LOG_LINES = 400;
// A Broker process finishes its deliveries for this long on stop, then keeps the rest for its next start.
const BROKER_PROCESS_STOP_GRACE_MS = 2000;
// Each process bounds its own stop (STOP_DEADLINE_MS in process-lifecycle.ts); this is the launcher's backstop.
const STOP_TIMEOUT_MS = 6_000;

/**
 * The delay before restarting a crashed process. Kubernetes' kubelet restarts a crashed container after 10 s,
 * doubling the delay at each further crash up to 5 minutes, and resets it once the container has run 10 minutes
 * (CrashLoopBackOff; https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#container-restarts). On one
 * machine, where a demo lasts a minute, we use the same shape with shorter values.
 */
export const RESTART_BACKOFF = { initialMs: 250, factor: 2, maxMs: 8_000, resetAfterMs: 30_000 } as const;

/** The delay before the next restart of a process that has crashed `streak` times in a row (0: its first crash). */
export function restartDelayMs(streak: number): number {
  return Math.min(RESTART_BACKOFF.maxMs, RESTART_BACKOFF.initialMs * RESTART_BACKOFF.factor ** streak);
}

interface Child {
  name: SupervisedName;
  proc: ChildProcess;
  lines: string[];
  exited: Promise<number | null>;
}

// Only what a process needs from ours: no inherited Redis, OTel or K_SINK settings can leak into the stack.
// Node's on-disk compile cache (type-stripped and compiled modules) is shared by every run: six processes
// compiling the same modules on a small machine otherwise take seconds each.
function baseEnv(): Record<string, string> {
  const keep = ['PATH', 'HOME', 'TMPDIR', 'LANG', 'SYSTEMROOT'];
  return {
    ...Object.fromEntries(keep.flatMap((k) => (process.env[k] === undefined ? [] : [[k, process.env[k]]]))),
    NODE_COMPILE_CACHE: process.env.NODE_COMPILE_CACHE ?? join(tmpdir(), 'session-reaper-node-compile-cache'),
  };
}

// A token file only its owner can read: the token is a sender's identity.
function writeToken(dir: string, sender: Sender, token: string): string {
  const file = join(dir, sender);
  writeFileSync(file, `${token}\n`, { mode: 0o600 });
  chmodSync(file, 0o600);
  return file;
}

function spawnChild(name: SupervisedName, args: string[], env: Record<string, string>, lines: string[] = []): Child {
  const [command, commandArgs] = diesWithParent(process.execPath, args);
  const proc = spawn(command, commandArgs, { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const collect = (chunk: Buffer) => {
    for (const line of chunk.toString('utf8').split('\n')) {
      if (line.trim() === '') continue;
      lines.push(line);
      if (lines.length > KEEP_LOG_LINES) lines.splice(0, lines.length - KEEP_LOG_LINES);
    }
  };
  proc.stdout?.on('data', collect);
  proc.stderr?.on('data', collect);
  const exited = new Promise<number | null>((resolveExit) => {
    proc.once('exit', (code, signal) => resolveExit(code ?? (signal ? 128 : null)));
    proc.once('error', (err) => {
      lines.push(`spawn failed: ${err.message}`);
      resolveExit(-1);
    });
  });
  return { name, proc, lines, exited };
}

async function waitHealthy(child: Child, url: string, deadline: number): Promise<void> {
  let exitCode: number | null | undefined;
  void child.exited.then((code) => (exitCode = code));
  let last = 'no answer';
  while (Date.now() < deadline) {
    if (exitCode !== undefined) break;
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.body?.cancel();
      if (res.status === 200) return;
      last = `HTTP ${res.status}`;
    } catch (err) {
      last = (err as Error).message;
    }
    await sleep(100);
  }
  const why = exitCode !== undefined ? `exited with ${String(exitCode)}` : `not healthy at ${url} (${last})`;
  throw new StackStartError(`${child.name} ${why}; its last output:\n${child.lines.slice(-30).join('\n')}`);
}

// The ingress while the stack starts: the port is taken (and K_SINK known) from the first moment.
async function listenStandIn(port: number, host: string): Promise<Server> {
  const server = createServer((req, res) => {
    req.resume();
    res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '1', connection: 'close' });
    res.end(JSON.stringify({ status: 'starting' }));
  });
  await new Promise<void>((listening, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => listening());
  });
  return server;
}

async function closeServer(server: Server): Promise<void> {
  const closed = new Promise<void>((done) => server.close(() => done()));
  server.closeAllConnections();
  await closed;
}

async function stopChild(child: Child, timeoutMs = STOP_TIMEOUT_MS): Promise<void> {
  if (child.proc.exitCode !== null || child.proc.signalCode !== null) return;
  child.proc.kill('SIGTERM');
  const exited = await Promise.race([child.exited.then(() => true), sleep(timeoutMs, false, { ref: false })]);
  if (!exited) {
    child.lines.push(`did not exit within ${timeoutMs} ms of SIGTERM; killed`);
    child.proc.kill('SIGKILL');
    await child.exited;
  }
}

/** Starts the whole system and resolves once every part is healthy; on failure stops what it started and throws. */
export async function startStack(opts: StackOptions & { brokerProcess: true }): Promise<StackWithBrokerProcess>;
export async function startStack(opts?: StackOptions): Promise<Stack>;
export async function startStack(opts: StackOptions = {}): Promise<Stack | StackWithBrokerProcess> {
  const missing = missingEntryFiles();
  if (missing.length > 0) throw new StackStartError(`the stack cannot start: missing ${missing.join(', ')}`);
  const readyTimeoutMs = opts.readyTimeoutMs ?? 30_000;
  const deadline = Date.now() + readyTimeoutMs;
  // The process now running under each name (a restart replaces it), how to start it again, and its status.
  const current = new Map<SupervisedName, Child>();
  const specs = new Map<SupervisedName, { args: string[]; env: Record<string, string>; healthUrl: string; lines: string[] }>();
  const statuses = new Map<SupervisedName, ProcessStatus>();
  const crashStreak = new Map<SupervisedName, number>();
  const restartTimers = new Set<NodeJS.Timeout>();
  let redis: RedisServer | undefined;
  let broker: LocalBroker | undefined;
  let statusPage: StatusPage | undefined;
  let prometheusUrl: string | undefined;
  let standIn: Server | undefined;
  let tempDir: string | undefined;
  let ownTokenDir: string | undefined;
  let ready = false;
  let stopping = false;
  // Children are in their own process groups, so they would outlive a launcher that exits without stopping them
  // (a launcher that is killed is covered by their parent-death signal).
  const killAll = () => {
    for (const c of current.values()) if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill('SIGKILL');
  };
  const alive = (c: Child | undefined) => c !== undefined && c.proc.exitCode === null && c.proc.signalCode === null;

  function launch(name: SupervisedName, args: string[], env: Record<string, string>, healthUrl: string): Child {
    const lines = specs.get(name)?.lines ?? [];
    specs.set(name, { args, env, healthUrl, lines });
    const child = spawnChild(name, args, env, lines);
    current.set(name, child);
    const status = statuses.get(name) ?? { state: 'starting', pid: undefined, restarts: 0 };
    statuses.set(name, { ...status, state: 'starting', pid: child.proc.pid });
    return child;
  }

  // Once the stack is ready, a process that exits on its own is restarted after its backoff delay.
  function supervise(child: Child, startedAt: number): void {
    void child.exited.then((code) => {
      if (stopping || current.get(child.name) !== child) return;
      const status = statuses.get(child.name)!;
      statuses.set(child.name, { ...status, state: opts.restartCrashed === false ? 'stopped' : 'backoff', pid: undefined, lastExit: code });
      opts.onProcessExit?.(child.name, code);
      if (opts.restartCrashed === false) return;
      // As the kubelet does: a process that ran long enough before crashing starts a new streak.
      const streak = Date.now() - startedAt >= RESTART_BACKOFF.resetAfterMs ? 0 : (crashStreak.get(child.name) ?? 0);
      crashStreak.set(child.name, streak + 1);
      const delay = restartDelayMs(streak);
      child.lines.push(`[stack] ${child.name} exited (${String(code)}); restarting in ${delay} ms`);
      const timer = setTimeout(() => {
        restartTimers.delete(timer);
        void restart(child.name);
      }, delay);
      restartTimers.add(timer);
    });
  }

  async function restart(name: SupervisedName): Promise<void> {
    const spec = specs.get(name);
    if (stopping || spec === undefined) return;
    const child = launch(name, spec.args, spec.env, spec.healthUrl);
    const status = statuses.get(name)!;
    statuses.set(name, { ...status, restarts: status.restarts + 1 });
    supervise(child, Date.now());
    try {
      await waitHealthy(child, spec.healthUrl, Date.now() + readyTimeoutMs);
    } catch {
      // Never healthy (a failed liveness probe, to the kubelet): killed, and its exit schedules the next try.
      if (alive(child)) child.proc.kill('SIGKILL');
      return;
    }
    if (stopping || current.get(name) !== child) return;
    statuses.set(name, { ...statuses.get(name)!, state: 'running' });
    opts.onProcessRestarted?.(name, child.proc.pid!, statuses.get(name)!.restarts);
  }
  process.once('exit', killAll);

  async function stopAll(): Promise<void> {
    stopping = true;
    if (standIn?.listening) await closeServer(standIn);
    // The Broker first, while its subscribers are still up to take what it has in flight.
    for (const timer of restartTimers) clearTimeout(timer);
    restartTimers.clear();
    statusPage?.stop();
    await broker?.stop();
    const brokerChild = current.get('local-broker');
    if (brokerChild !== undefined) await stopChild(brokerChild, (opts.stopGraceMs ?? BROKER_PROCESS_STOP_GRACE_MS) + STOP_TIMEOUT_MS);
    await Promise.all([...current.values()].filter((c) => c !== brokerChild).map((c) => stopChild(c)));
    await redis?.stop();
    process.removeListener('exit', killAll);
    if (tempDir) rmSync(tempDir, { recursive: true, force: true });
    if (ownTokenDir) rmSync(ownTokenDir, { recursive: true, force: true });
  }

  try {
    const redisUrl = opts.redisUrl ?? process.env.REDIS_URL ?? (redis = await startRedisServer(opts.redisDataDir === undefined ? {} : { dataDir: opts.redisDataDir })).url;
    const redisPassword = redis?.password ?? '';
    const keyPrefix = opts.keyPrefix ?? `sr${randomUUID().slice(0, 8)}`;
    const logLevel = opts.logLevel ?? 'warn';
    const host = opts.host ?? '127.0.0.1';
    // Every sender's identity for this run, known to the Broker by the subject its EventPolicy admits.
    const subjects = senderSubjects();
    const tokenDir = opts.tokenDir ?? (ownTokenDir = mkdtempSync(join(tmpdir(), 'sr-tokens-')));
    mkdirSync(tokenDir, { recursive: true, mode: 0o700 });
    chmodSync(tokenDir, 0o700);
    const tokens = Object.fromEntries(STACK_SENDERS.map((sender) => [sender, randomBytes(24).toString('base64url')])) as Record<Sender, string>;
    const tokenFiles = Object.fromEntries(STACK_SENDERS.map((sender) => [sender, writeToken(tokenDir, sender, tokens[sender])])) as Record<Sender, string>;
    const identities = Object.fromEntries(STACK_SENDERS.filter((s) => subjects[s] !== undefined).map((s) => [tokens[s], subjects[s]]));
    // The parts call each other where they listen; a specific address that is not loopback is allowed as well.
    const specific = isSpecificInterface(host) ? [`${host}/${host.includes(':') ? 128 : 32}`] : [];
    const allowedCidrs = [...LOOPBACK_CIDRS, ...specific, ...(opts.allowedCidrs ?? [])];
    // Built before anything starts, so a bad --allow-cidr stops the stack here; the Broker's --forward is held to it.
    const outboundPolicy = new OutboundAddressPolicy(allowedCidrs);
    const ports = {
      broker: opts.brokerPort ?? 0,
      'sim-gpu-runtime': opts.runtimePort || (await freePort()),
      'deadline-engine': await freePort(),
      'idle-checker': await freePort(),
      'heartbeat-timeout': await freePort(),
      'activity-score': await freePort(),
      'destroy-dispatch': await freePort(),
      'gpu-release': await freePort(),
      ...(opts.engine === 'llama' ? { 'llama-engine': await freePort() } : {}),
    };
    // Where the parts reach each other: the address they listen on, or loopback when that is every interface.
    const local = (port: number) => reachableOrigin(host, port);
    const metricsPorts = new Map<MetricsProcess, number>();
    if (opts.metrics !== false) for (const name of METRICS_PROCESSES) metricsPorts.set(name, await freePort());
    // The prometheus reader on the process's own metrics port (functions/core/metrics-provider.ts); nothing pushed.
    const metricsEnv = (name: MetricsProcess): Record<string, string> => {
      const port = metricsPorts.get(name);
      return port === undefined ? {} : { OTEL_METRICS_EXPORTER: 'prometheus', OTEL_EXPORTER_PROMETHEUS_PORT: String(port) };
    };
    const metricsUrls = Object.fromEntries([...metricsPorts].map(([name, port]) => [name, `${local(port)}/metrics`])) as Partial<Record<MetricsProcess, string>>;
    // The Broker serves its own on its ingress port (known once the stand-in listens, below).
    const brokerMetrics = opts.metrics !== false;
    if (opts.deadLetterDir === undefined) tempDir = mkdtempSync(join(tmpdir(), 'sr-stack-'));
    const deadLetterDir = resolve(opts.deadLetterDir ?? join(tempDir!, 'dead-letters'));

    // The ingress port first: every process gets its address as K_SINK.
    standIn = await listenStandIn(ports.broker, host);
    ports.broker = (standIn.address() as AddressInfo).port;
    const brokerUrl = `${local(ports.broker)}/`;
    if (brokerMetrics) metricsUrls['local-broker'] = `${brokerUrl}metrics`;
    const runtimeUrl = local(ports['sim-gpu-runtime']);
    const engineUrl = ports['llama-engine'] === undefined ? undefined : local(ports['llama-engine']);
    const runtimes: RuntimeEntry[] = [{ name: 'sim', url: runtimeUrl }, ...(engineUrl === undefined ? [] : [{ name: 'llama', url: engineUrl }]), ...(opts.runtimes ?? [])];

    const shared = {
      ...baseEnv(), REDIS_URL: redisUrl, REDIS_PASSWORD: redisPassword, REDIS_KEY_PREFIX: keyPrefix, K_SINK: brokerUrl, LOG_LEVEL: logLevel,
      LISTEN_HOST: host, RUNTIMES: JSON.stringify(runtimes), OUTBOUND_ALLOWED_CIDRS: allowedCidrs.join(','), ...opts.env,
    };
    // The deep check: each part's readiness says only that it serves, but the stack is usable (and `npm start` says
    // so) only once every part also reaches Redis with its scripts loaded. A restarted part is waited on the same way.
    const healthUrl = (name: Exclude<ProcessName, 'llama-engine'>) => (name === 'sim-gpu-runtime' ? `${runtimeUrl}/v1/memory` : `${local(ports[name])}/healthz?deep=1`);
    launch('sim-gpu-runtime', [RUNTIME_ENTRY], {
      ...baseEnv(),
      PORT: String(ports['sim-gpu-runtime']),
      SIM_HOST: host,
      LOG_LEVEL: logLevel,
      ...opts.runtimeEnv,
    }, healthUrl('sim-gpu-runtime'));
    if (engineUrl !== undefined) {
      launch('llama-engine', [LLAMA_ENGINE_ENTRY], {
        ...baseEnv(),
        PORT: String(ports['llama-engine']),
        ENGINE_HOST: host,
        LOG_LEVEL: logLevel,
        ...opts.engineEnv,
      }, `${engineUrl}/v1/memory`);
    }
    for (const name of FUNCTION_NAMES) {
      launch(name, [functionEntry(name)], { ...shared, ...metricsEnv(name), PORT: String(ports[name]), OTEL_SERVICE_NAME: name, SINK_TOKEN_FILE: tokenFiles[name] }, healthUrl(name));
    }
    launch('deadline-engine', [ENGINE_ENTRY], {
      ...shared, ...metricsEnv('deadline-engine'), PORT: String(ports['deadline-engine']), OTEL_SERVICE_NAME: 'deadline-engine', SINK_TOKEN_FILE: tokenFiles['deadline-engine'],
    }, healthUrl('deadline-engine'));
    launch('idle-checker', [IDLE_CHECKER_ENTRY], {
      ...shared, ...metricsEnv('idle-checker'), PORT: String(ports['idle-checker']), OTEL_SERVICE_NAME: 'activity-score', SINK_TOKEN_FILE: tokenFiles['idle-checker'],
    }, healthUrl('idle-checker'));

    await Promise.all([...current.values()].map((child) => waitHealthy(child, specs.get(child.name)!.healthUrl, deadline)));
    await closeServer(standIn);
    if (opts.brokerProcess === true) {
      const brokerChild = launch('local-broker', [BROKER_ENTRY], {
        ...baseEnv(),
        PORT: String(ports.broker),
        BROKER_HOST: host,
        BROKER_SUBSCRIBERS: JSON.stringify({ ...Object.fromEntries(FUNCTION_NAMES.map((n) => [n, local(ports[n])])), ...opts.subscribers }),
        BROKER_IDENTITIES: JSON.stringify(identities),
        BROKER_DEAD_LETTER_DIR: deadLetterDir,
        BROKER_STOP_GRACE_MS: String(opts.stopGraceMs ?? BROKER_PROCESS_STOP_GRACE_MS),
        LOG_LEVEL: logLevel,
        ...(opts.forward !== undefined ? { BROKER_FORWARD_URL: opts.forward } : {}),
        ...opts.brokerEnv,
      }, `${local(ports.broker)}/healthz`);
      await waitHealthy(brokerChild, `${local(ports.broker)}/healthz`, deadline);
    } else {
      const restartsNow = () => Object.fromEntries([...statuses].map(([name, st]) => [name, st.restarts]));
      statusPage = createStatusPage({ metricsUrls: () => metricsUrls, prometheusUrl: () => prometheusUrl, restarts: restartsNow });
      const page = statusPage;
      broker = await startLocalBroker({
        port: ports.broker,
        statusPage: (res, path) => page.serve(res, path),
        host,
        identities,
        forwardAddressPolicy: outboundPolicy,
        subscribers: { ...Object.fromEntries(FUNCTION_NAMES.map((n) => [n, local(ports[n])])), ...opts.subscribers },
        deadLetterDir,
        ready: () => ready,
        ...(opts.onEvent !== undefined ? { onEvent: opts.onEvent } : {}),
        ...(opts.stopGraceMs !== undefined ? { stopGraceMs: opts.stopGraceMs } : {}),
        ...(opts.forward !== undefined ? { forward: opts.forward } : {}),
        ...(opts.deliveryOverride !== undefined ? { deliveryOverride: opts.deliveryOverride } : {}),
        ...(opts.brokerChaos !== undefined ? { chaos: opts.brokerChaos } : {}),
        ...(opts.logger !== undefined ? { logger: opts.logger } : {}),
      });
    }
    ready = true;
    const readyAt = Date.now();
    for (const child of current.values()) {
      statuses.set(child.name, { ...statuses.get(child.name)!, state: 'running' });
      supervise(child, readyAt);
    }
    const logs = Object.fromEntries([...specs].map(([name, spec]) => [name, spec.lines])) as Record<ProcessName, string[]>;
    let stopped: Promise<void> | undefined;
    return {
      brokerUrl: broker?.url ?? brokerUrl,
      runtimeUrl,
      ...(engineUrl === undefined ? {} : { engineUrl }),
      redisUrl,
      redisPassword,
      tokens,
      tokenFiles,
      deadLetterDir,
      keyPrefix,
      metricsUrls,
      statusUrl: `${brokerUrl}status`,
      setPrometheusUrl: (url) => {
        prometheusUrl = url;
      },
      ports,
      ...(broker === undefined ? {} : { broker }),
      logs,
      pids: () => ({
        ...(Object.fromEntries([...current].map(([name, c]) => [name, alive(c) ? c.proc.pid : undefined])) as Record<ProcessName, number | undefined>),
        ...(redis === undefined ? {} : { 'redis-server': redis.pid }),
      }),
      processes: () => Object.fromEntries([...statuses].map(([name, st]) => [name, { ...st }])) as Record<SupervisedName, ProcessStatus>,
      kill(name, signal = 'SIGKILL') {
        const child = current.get(name);
        if (alive(child)) child!.proc.kill(signal);
      },
      async restartRedis(signal = 'SIGKILL', downMs = 0) {
        const old = redis;
        if (old === undefined) throw new Error('the stack uses a Redis given by URL; only a private redis-server can be restarted');
        await old.kill(signal);
        await old.stop();
        // The outage's length is what is being tested, not a wait for something to happen.
        if (downMs > 0) await sleep(downMs);
        redis = await startRedisServer({ port: old.port, password: old.password, ...(opts.redisDataDir === undefined ? {} : { dataDir: opts.redisDataDir }) });
      },
      stop: () => (stopped ??= stopAll()),
    };
  } catch (err) {
    await stopAll().catch(() => undefined);
    throw err;
  }
}
