// What the transport alone costs on this machine, measured with no-op work at both ends, so a destroy's CPU figure
// can be read against what no code of ours could go below. A destroy crosses the Broker, so its path is fixed by the
// architecture: three requests served by functions-framework (session.closed and gpu.released to destroy-dispatch,
// gpu.release.requested to gpu-release), four plain HTTP exchanges (the close into the Broker, the emit of
// session.destroyed into it, the runtime call, the delivery to the subscriber; gpu.release.requested and gpu.released
// ride in the answers to the requests that caused them, as Knative reply events) and the Redis round trips of
// destroy-dispatch and gpu-release. Each is timed here as the CPU both of its ends spend (this process's and the
// server's, from /proc or Redis INFO).
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createRedisClient, connectRedis } from '../../functions/core/redis/connect.ts';
import { freePort } from '../support/redis-harness.ts';
import { REPO_ROOT } from '../support/stack.ts';
import { diesWithParent } from '../../tools/local-stack/parent-death.ts';

/** The transport's cost on this machine, µs of CPU (both ends together) per exchange. */
export interface MachineFloor {
  plainHttpMicros: number;
  frameworkMicros: number;
  /** functions-framework with its per-request `domain` replaced by a pass-through (what the domain costs). */
  frameworkWithoutDomainMicros: number;
  redisRoundTripMicros: number;
}

/**
 * Redis commands a destroy sends, by the request that sends them: destroy-dispatch on session.closed (claim,
 * admission at the node, a token of the runtime's call rate, checkpoint), gpu-release on gpu.release.requested (begin
 * and settle the runtime call), destroy-dispatch on gpu.released (the booking, the purge and the read for
 * session.destroyed sent together, then the slot and the completion); `pipelined` of them ride in another's round
 * trip. Counted on a real Redis by the-destroy-floor-counts-every-redis-command-a-destroy-makes.test.ts, which fails
 * when the path changes them.
 */
export const DESTROY_REDIS = { commands: { closed: 4, called: 2, released: 5 }, pipelined: 2 } as const;

/** Exchanges a destroy makes, by kind (see the header). */
export const DESTROY_PATH = {
  frameworkRequests: 3,
  plainHttp: 4,
  redisRoundTrips: DESTROY_REDIS.commands.closed + DESTROY_REDIS.commands.called + DESTROY_REDIS.commands.released - DESTROY_REDIS.pipelined,
} as const;

const CONNECTIONS = 8;
const SECONDS = 2;
/** Clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on Linux). */
export const CLOCK_TICKS_PER_S = 100;

/** A process's parent and the CPU it used so far (user + system, clock ticks), from /proc/<pid>/stat. */
export function procStat(pid: number | string): { ppid: number; ticks: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may hold spaces.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { ppid: Number(fields[1]), ticks: Number(fields[11]) + Number(fields[12]) };
}

const selfMicros = () => {
  const u = process.cpuUsage();
  return u.user + u.system;
};

/**
 * Runs CONNECTIONS concurrent callers of `call`, each waiting for its reply before its next call, for a short
 * warm-up and then SECONDS; µs of CPU per call, this process's plus what `serverMicros` says the other end used.
 */
async function cpuPerCall(call: (caller: number) => Promise<void>, serverMicros: () => number | Promise<number>): Promise<number> {
  let done = 0;
  let stopAt = 0;
  const caller = async (i: number): Promise<void> => {
    while (performance.now() < stopAt) {
      await call(i);
      done++;
    }
  };
  const spell = (ms: number) => {
    stopAt = performance.now() + ms;
    return Promise.all(Array.from({ length: CONNECTIONS }, (_, i) => caller(i)));
  };
  await spell(500);
  done = 0;
  const [self0, server0] = [selfMicros(), await serverMicros()];
  await spell(SECONDS * 1000);
  return (selfMicros() - self0 + ((await serverMicros()) - server0)) / done;
}

async function startServer(args: string[], port: number): Promise<ChildProcess> {
  const proc = spawn(...diesWithParent(process.execPath, args), { cwd: REPO_ROOT, env: { ...process.env, PORT: String(port) }, stdio: ['ignore', 'ignore', 'inherit'] });
  for (let i = 0; i < 200; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const req = request({ port, method: 'GET', path: '/' }, (res) => {
        res.resume();
        resolve(true);
      });
      req.on('error', () => resolve(false));
      req.end();
    });
    if (up) return proc;
    await new Promise((r) => setTimeout(r, 50));
  }
  proc.kill();
  throw new Error(`no-op server on port ${port} did not start`);
}

/** Posts small binary-mode CloudEvents over keep-alive connections; µs of CPU per exchange, both ends. */
async function exchangeCost(port: number, serverPid: number): Promise<number> {
  const agent = new Agent({ keepAlive: true, maxSockets: CONNECTIONS });
  const headers = {
    'content-type': 'application/json', 'ce-specversion': '1.0', 'ce-id': 'floor-1', 'ce-source': '/bench/floor',
    'ce-type': 'dev.sessionreaper.session.closed.v1', traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
  };
  const body = '{"sessionId":"floor-0001"}';
  const exchange = () =>
    new Promise<void>((resolve, reject) => {
      const req = request({ port, method: 'POST', path: '/', agent, headers }, (res) => {
        res.resume();
        res.on('end', resolve);
      });
      req.on('error', reject);
      req.end(body);
    });
  try {
    return await cpuPerCall(exchange, () => (procStat(serverPid).ticks / CLOCK_TICKS_PER_S) * 1e6);
  } finally {
    agent.destroy();
  }
}

/** A no-op script call per round trip, as destroy-dispatch makes them; µs of CPU per round trip, both ends. */
async function redisRoundTripCost(redisUrl: string, password: string): Promise<number> {
  const redis = createRedisClient({ REDIS_URL: redisUrl, REDIS_CLUSTER_NODES: '', REDIS_PASSWORD: password, REDIS_TLS: false, CORE_TIMEOUT_MS: 30_000 });
  await connectRedis(redis);
  redis.defineCommand('floorNoop', { numberOfKeys: 1, lua: "return redis.call('EXISTS', KEYS[1])" });
  const noop = (redis as unknown as { floorNoop(key: string): Promise<number> }).floorNoop.bind(redis);
  const redisMicros = async () => {
    const info = await redis.info('cpu');
    const field = (name: string) => Number(new RegExp(`${name}:([\\d.]+)`).exec(info)?.[1] ?? 0);
    return (field('used_cpu_sys') + field('used_cpu_user')) * 1e6;
  };
  try {
    return await cpuPerCall(async (i) => {
      await noop(`bench:floor:${i}`);
    }, redisMicros);
  } finally {
    redis.disconnect();
  }
}

async function stop(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  proc.kill('SIGTERM');
  await once(proc, 'exit');
}

/** Measures the floor; the machine should be otherwise idle. */
export async function measureMachineFloor(redisUrl: string, redisPassword: string): Promise<MachineFloor> {
  const dir = mkdtempSync(join(tmpdir(), 'session-reaper-floor-'));
  const noDomain = join(dir, 'no-domain.cjs');
  try {
    // The function file lives outside the repository: it requires the framework the CLI runs from, by its path.
    const framework = join(REPO_ROOT, 'node_modules/@google-cloud/functions-framework');
    writeFileSync(join(dir, 'noop.cjs'), `require(${JSON.stringify(framework)}).http('noop', (req, res) => res.status(204).end());\n`);
    // Only for this measurement: what functions-framework's domain per request costs, never used by the functions.
    writeFileSync(noDomain, "const d = require('node:domain'); const { EventEmitter } = require('node:events');\n" +
      'd.create = () => Object.assign(new EventEmitter(), { run: (fn) => fn(), bind: (fn) => fn });\n');
    const plainPort = await freePort();
    const plain = await startServer(['-e', `require('node:http').createServer((q, s) => { q.resume(); q.on('end', () => s.writeHead(204).end()); }).listen(${plainPort})`], plainPort);
    const plainHttpMicros = await exchangeCost(plainPort, plain.pid!).finally(() => stop(plain));
    const ffMain = join(framework, 'build/src/main.js');
    const ffArgs = (port: number) => [ffMain, '--target=noop', `--source=${join(dir, 'noop.cjs')}`, `--port=${port}`];
    const ffPort = await freePort();
    const ff = await startServer(ffArgs(ffPort), ffPort);
    const frameworkMicros = await exchangeCost(ffPort, ff.pid!).finally(() => stop(ff));
    const bareFfPort = await freePort();
    const bareFf = await startServer(['--require', noDomain, ...ffArgs(bareFfPort)], bareFfPort);
    const frameworkWithoutDomainMicros = await exchangeCost(bareFfPort, bareFf.pid!).finally(() => stop(bareFf));
    const redisRoundTripMicros = await redisRoundTripCost(redisUrl, redisPassword);
    return { plainHttpMicros, frameworkMicros, frameworkWithoutDomainMicros, redisRoundTripMicros };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** CPU per destroy, ms, that the transport alone takes on a destroy's path. */
export function destroyFloorMs(f: MachineFloor, framework = f.frameworkMicros): number {
  return (DESTROY_PATH.frameworkRequests * framework + DESTROY_PATH.plainHttp * f.plainHttpMicros + DESTROY_PATH.redisRoundTrips * f.redisRoundTripMicros) / 1000;
}
