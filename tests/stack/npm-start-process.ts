// Starts the local stack the way a user does — `npm start -- <flags>` — in a throw-away state directory, and
// watches it: its output, its /healthz answers from the first moment, and its exit.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from '../../tools/local-stack/redis-server.ts';
import { REPO_ROOT } from '../../tools/local-stack/stack.ts';
import { diesWithParent } from '../../tools/local-stack/parent-death.ts';

/** What start.ts writes to <state-dir>/stack.json while it runs. */
export interface StackFile {
  pid: number;
  ingressUrl: string;
  runtimeUrl: string;
  redisUrl: string;
  redisPassword: string;
  keyPrefix: string;
  deadLetterDir: string;
  /** The status page the Broker serves (GET /status). */
  statusUrl: string;
  /** Each sender's token file (the pipeline's, the operator's, each workload's). */
  tokenFiles: Record<string, string>;
}

/** A running `npm start`. */
export interface StartedProcess {
  readonly proc: ChildProcess;
  readonly stateDir: string;
  /** stdout and stderr so far, interleaved. */
  output(): string;
  /** Resolves with the exit code (or 128 + signal number style code for a signal) once the process exits. */
  readonly exited: Promise<number | null>;
}

// Every state directory made here is removed when the test file's process exits (node --test runs each file in a
// process of its own), by which time the stacks using it have stopped; SR_KEEP_STATE_DIRS=1 keeps them to look at.
const stateDirs = new Set<string>();
process.once('exit', () => {
  if (process.env.SR_KEEP_STATE_DIRS === '1') return;
  for (const dir of stateDirs) {
    try {
      rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
    } catch {
      // A directory something still writes into stays; cleaning up never fails the tests.
    }
  }
});

/** A fresh state directory (Redis data, dead letters, logs), so no test touches the user's .local. */
export function freshStateDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'sr-npm-start-'));
  stateDirs.add(dir);
  return dir;
}

/** Spawns `npm start -- ...args` (or, with viaNode, this Node on start.ts) with --state-dir added. */
export function spawnStart(args: readonly string[], opts: { stateDir?: string; viaNode?: boolean } = {}): StartedProcess {
  const stateDir = opts.stateDir ?? freshStateDir();
  const all = [...args, '--state-dir', stateDir];
  const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1' };
  delete env.REDIS_URL; // the stack starts its own private redis-server, as it does for a user
  const proc = opts.viaNode
    ? spawn(...diesWithParent(process.execPath, ['tools/local-stack/start.ts', ...all]), { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] })
    : // Its own process group, like a shell job, so a Ctrl-C can be sent to the whole group as a terminal does.
      spawn(...diesWithParent('npm', ['start', '--silent', '--', ...all]), { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let text = '';
  proc.stdout?.on('data', (c: Buffer) => (text += c.toString('utf8')));
  proc.stderr?.on('data', (c: Buffer) => (text += c.toString('utf8')));
  const exited = new Promise<number | null>((resolveExit) => proc.once('exit', (code) => resolveExit(code)));
  return { proc, stateDir, output: () => text, exited };
}

/** Two free loopback ports: the ingress and the simulated runtime. */
export async function twoFreePorts(): Promise<[number, number]> {
  const a = await freePort();
  let b = await freePort();
  while (b === a) b = await freePort();
  return [a, b];
}

/** Polls /healthz from now on, recording every status, until it answers 200; throws with the output on timeout. */
export async function waitHealthy(started: StartedProcess, port: number, timeoutMs = 60_000): Promise<number[]> {
  const statuses: number[] = [];
  const deadline = Date.now() + timeoutMs;
  let exitCode: number | null | undefined;
  void started.exited.then((code) => (exitCode = code));
  while (Date.now() < deadline && exitCode === undefined) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(2000) });
      await res.body?.cancel();
      statuses.push(res.status);
      if (res.status === 200) return statuses;
    } catch {
      // not listening yet
    }
    await sleep(30);
  }
  throw new Error(`npm start was not healthy on port ${port} (exit ${String(exitCode)}); its output:\n${started.output()}`);
}

/** Reads the stack file start.ts writes once the stack runs. */
export function readStackFile(stateDir: string): StackFile {
  return JSON.parse(readFileSync(join(stateDir, 'stack.json'), 'utf8')) as StackFile;
}

/**
 * Stops it with a signal — or with 'ctrl-c', SIGINT to its whole process group as a terminal sends it — and resolves
 * with the exit code; kills it and throws if it does not exit in time.
 */
export async function stopWith(started: StartedProcess, signal: NodeJS.Signals | 'ctrl-c' = 'SIGTERM', timeoutMs = 30_000): Promise<number | null> {
  if (started.proc.exitCode !== null) return started.proc.exitCode;
  if (signal === 'ctrl-c') process.kill(-started.proc.pid!, 'SIGINT');
  else started.proc.kill(signal);
  const code = await Promise.race([started.exited, sleep(timeoutMs, 'timeout' as const, { ref: false })]);
  if (code === 'timeout') {
    started.proc.kill('SIGKILL');
    throw new Error(`npm start did not exit within ${timeoutMs} ms of ${signal}; its output:\n${started.output()}`);
  }
  return code;
}
