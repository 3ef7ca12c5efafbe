// The operator's path through a running `npm start`: sessionctl finds the stack by itself (its state file), sends
// contract events, lists and inspects sessions, force-destroys one, and reads the live stats and dead letters.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { missingEntryFiles } from '../support/stack.ts';
import { spawnStart, stopWith, twoFreePorts, waitHealthy, type StartedProcess } from './npm-start-process.ts';

const REPO = join(import.meta.dirname, '..', '..');
const missing = missingEntryFiles();

describe('sessionctl against a running npm start', { skip: missing.length ? `entry points missing: ${missing.join(', ')}` : false, timeout: 120_000 }, () => {
  let started: StartedProcess;
  let runtimeUrl: string;

  /** Runs the CLI as a user does; only the stack file location is given (npm start was told --state-dir). */
  function sessionctl(...args: string[]): { status: number | null; stdout: string; stderr: string } {
    const env: NodeJS.ProcessEnv = { ...process.env, SESSIONCTL_STACK_FILE: join(started.stateDir, 'stack.json') };
    for (const name of ['REDIS_URL', 'REDIS_CLUSTER_NODES', 'REDIS_KEY_PREFIX', 'SESSIONCTL_BROKER_URL']) delete env[name];
    const r = spawnSync(process.execPath, [join(REPO, 'tools/sessionctl/cli.ts'), ...args], { cwd: REPO, env, encoding: 'utf8', timeout: 30_000 });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  }

  function json<T>(...args: string[]): T {
    const r = sessionctl(...args, '--json');
    assert.equal(r.status, 0, `sessionctl ${args.join(' ')}: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  }

  async function until<T>(what: string, probe: () => T | undefined | false, timeoutMs = 30_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = probe();
      if (v) return v;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await sleep(100);
    }
  }

  before(async () => {
    const ports = await twoFreePorts();
    runtimeUrl = `http://127.0.0.1:${ports[1]}`;
    started = spawnStart(['--no-demo', '--port', String(ports[0]), '--runtime-port', String(ports[1])]);
    await waitHealthy(started, ports[0]);
  });

  after(async () => {
    if (started && started.proc.exitCode === null) await stopWith(started, 'SIGTERM').catch(() => undefined);
    if (started && !process.env.SR_KEEP_STATE) rmSync(started.stateDir, { recursive: true, force: true });
  });

  test('sends events, lists and inspects sessions, force-destroys one, and reports balanced stats', async () => {
    const opened = { sessionId: 'ctl-1', placement: { node: 'gpu-node-1', runtimeUrl, gpuBytes: 4096 }, heartbeatIntervalMs: 60_000 };
    const sent = sessionctl('send', 'session.opened', '--data', JSON.stringify(opened));
    assert.equal(sent.status, 0, sent.stderr);
    assert.match(sent.stdout, /202/);

    const listed = await until('ctl-1 listed as active', () => {
      const { sessions } = json<{ sessions: { sessionId: string; state: string }[] }>('sessions');
      return sessions.find((r) => r.sessionId === 'ctl-1' && r.state === 'active');
    });
    assert.ok(listed);

    const view = json<{ session: { state: string; incarnation: number } }>('inspect', 'ctl-1').session;
    assert.equal(view.state, 'active');
    assert.ok(view.incarnation >= 1);

    const allocated = await fetch(`${runtimeUrl}/v1/sessions/ctl-1/allocate`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ incarnation: view.incarnation, bytes: 4096 }),
    });
    assert.equal(allocated.status, 201);

    const destroy = sessionctl('destroy', 'ctl-1', '--reason', 'operator test');
    assert.equal(destroy.status, 0, destroy.stderr);
    const ended = await until('ctl-1 destroyed', () => {
      const v = json<{ session: { state: string; cause?: string } }>('inspect', 'ctl-1').session;
      return v.state === 'destroyed' ? v : undefined;
    });
    assert.equal(ended.cause, 'forced');

    const stats = sessionctl('stats', '--json');
    assert.equal(stats.status, 0, stats.stderr);
    assert.match(stats.stdout, /"balanced":\s*true/);
    const letters = sessionctl('dead-letters', 'list', '--json');
    assert.equal(letters.status, 0, letters.stderr);
  });

  test('refuses contract-breaking data before sending, and reports an unknown session with exit 3', () => {
    const bad = sessionctl('send', 'session.opened', '--data', JSON.stringify({ sessionId: 'ctl-2' }));
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /placement/);
    assert.equal(sessionctl('inspect', 'ctl-never-opened').status, 3);
  });
});
