// A process whose stdout reader is gone (a launcher killed with SIGKILL, a closed pipe) must still exit promptly on
// SIGTERM. pino's synchronous flush at exit retried the failed write forever, which kept the simulated runtime and
// the deadline engine, and their ports, alive after their launcher died. Real processes, real pipes.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT } from '../../tools/local-stack/stack.ts';
import { STOP_DEADLINE_MS } from './process-lifecycle.ts';
import { diesWithParent } from '../../tools/local-stack/parent-death.ts';

test('the simulated runtime exits promptly on SIGTERM after the reader of its logs has gone', { timeout: 60_000 }, async () => {
  const proc = spawn(...diesWithParent(process.execPath, ['runtimes/sim-gpu-runtime/index.ts']), {
    cwd: REPO_ROOT,
    env: { PATH: process.env.PATH ?? '', PORT: '0', LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = once(proc, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
  try {
    let output = '';
    proc.stdout.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
    // Listening once it says so; then the reader goes away, as a killed launcher's end of the pipe does.
    const deadline = Date.now() + 30_000;
    while (!output.includes('listening')) {
      assert.ok(Date.now() < deadline && proc.exitCode === null, `the runtime did not start: ${output}`);
      await sleep(25);
    }
    proc.stdout.destroy();
    proc.stderr.destroy();

    const sent = Date.now();
    proc.kill('SIGTERM');
    const bound = STOP_DEADLINE_MS + 1000;
    const outcome = await Promise.race([exited, sleep(bound, 'still running' as const, { ref: false })]);
    assert.notEqual(outcome, 'still running', `still running ${bound} ms after SIGTERM`);
    assert.ok(Date.now() - sent < bound);
  } finally {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
  }
});
