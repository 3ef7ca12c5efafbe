// Process hygiene: whatever stops `npm start` — SIGKILL of start.ts itself, SIGKILL of the npm that ran it, or
// SIGTERM — every process it started (redis-server and the seven Node processes) is gone soon after, and every
// port the stack held is free again. Each bound is awaited by polling, never slept out.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { parentDeathSignalAvailable } from '../../tools/local-stack/parent-death.ts';
import { readStackFile, spawnStart, stopWith, twoFreePorts, waitHealthy, type StartedProcess } from './npm-start-process.ts';

// The children the kernel lists for a process (Linux: /proc/<pid>/task/<pid>/children).
function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

// Gone: no such process, or a zombie waiting for whoever adopted it to reap it (it holds no port and runs nothing).
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

function portFree(port: number): Promise<boolean> {
  return new Promise((answer) => {
    const server = createServer();
    server.once('error', () => answer(false));
    server.listen(port, '127.0.0.1', () => server.close(() => answer(true)));
  });
}

async function until(what: string, probe: () => boolean | Promise<boolean>, timeoutMs: number, describe: () => string): Promise<number> {
  const started = Date.now();
  while (!(await probe())) {
    if (Date.now() - started > timeoutMs) throw new Error(`not within ${timeoutMs} ms: ${what}; ${describe()}`);
    await sleep(25);
  }
  return Date.now() - started;
}

interface Running {
  started: StartedProcess;
  /** start.ts's pid (under npm it is npm's child). */
  launcher: number;
  children: number[];
  ports: number[];
}

async function startRunning(viaNode: boolean): Promise<Running> {
  const [port, runtimePort] = await twoFreePorts();
  const started = spawnStart(['--no-demo', '--port', String(port), '--runtime-port', String(runtimePort)], { viaNode });
  await waitHealthy(started, port, 90_000);
  const file = readStackFile(started.stateDir) as ReturnType<typeof readStackFile> & { ports: Record<string, number> };
  const children = childrenOf(file.pid);
  const ports = [...Object.values(file.ports), Number(new URL(file.redisUrl).port)];
  assert.equal(children.length, 8, `redis-server and seven Node processes run under start.ts: ${children.join(' ')}`);
  return { started, launcher: file.pid, children, ports };
}

// The ports are awaited too: the kernel releases a killed process's sockets a little after the process is gone
// (Node's io_uring rings are torn down asynchronously).
async function assertAllGone(r: Running, timeoutMs: number): Promise<void> {
  const started = Date.now();
  const pids = [r.launcher, ...r.children];
  await until('every process to be gone', () => pids.every((pid) => !running(pid)), timeoutMs, () => `still running: ${pids.filter(running).join(' ')}`);
  const held = async () => (await Promise.all(r.ports.map(async (port) => ((await portFree(port)) ? [] : [port])))).flat();
  await until('every port to be free', async () => (await held()).length === 0, Math.max(1000, timeoutMs - (Date.now() - started)), () => `ports held: ${r.ports.join(' ')}`);
}

const killable = { skip: !parentDeathSignalAvailable() && 'setpriv (util-linux) is missing: children cannot be tied to a SIGKILLed launcher', timeout: 180_000 };

test('every process of npm start is gone, and its ports free, soon after start.ts is killed with SIGKILL', killable, async () => {
  const r = await startRunning(true);
  try {
    process.kill(r.launcher, 'SIGKILL');
    await assertAllGone(r, 5_000);
  } finally {
    for (const pid of [r.launcher, ...r.children]) if (running(pid)) process.kill(pid, 'SIGKILL');
  }
});

test('when the npm that ran it is killed with SIGKILL, npm start notices and stops every process it started', { timeout: 180_000 }, async () => {
  const r = await startRunning(false);
  try {
    assert.notEqual(r.launcher, r.started.proc.pid, 'npm runs start.ts as its child');
    process.kill(r.started.proc.pid!, 'SIGKILL');
    await assertAllGone(r, 10_000);
  } finally {
    for (const pid of [r.launcher, ...r.children]) if (running(pid)) process.kill(pid, 'SIGKILL');
  }
});

test('on SIGTERM npm start and every process it started exit within the 5 s a supervisor waits before SIGKILL', { timeout: 180_000 }, async () => {
  const r = await startRunning(true);
  try {
    const sent = Date.now();
    const code = await stopWith(r.started, 'SIGTERM', 5_000);
    assert.equal(code, 0, r.started.output());
    await assertAllGone(r, Math.max(0, 5_000 - (Date.now() - sent)));
  } finally {
    for (const pid of [r.launcher, ...r.children]) if (running(pid)) process.kill(pid, 'SIGKILL');
  }
});
