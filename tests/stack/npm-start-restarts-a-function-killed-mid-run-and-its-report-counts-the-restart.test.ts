// `kill -9` of destroy-dispatch in the middle of an `npm start` run no longer stops the stack: npm start says it is
// restarting it, the process comes back on its port with a new pid, a session closed meanwhile is destroyed once it
// is back, and the report at stop (and its JSON) counts the restart.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { CloudEvent, HTTP } from 'cloudevents';
import { startEventSink } from '../support/event-sink.ts';
import { stackStore } from '../support/stack.ts';
import { freshStateDir, readStackFile, spawnStart, stopWith, twoFreePorts, waitHealthy } from './npm-start-process.ts';

async function until<V>(what: string, probe: () => V | undefined | Promise<V | undefined>, timeoutMs: number, describe: () => string): Promise<V> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; ${describe()}`);
    await sleep(50);
  }
}

// The destroy-dispatch process among start.ts's children, by its command line.
function destroyDispatchPid(launcher: number): number | undefined {
  const children = readFileSync(`/proc/${launcher}/task/${launcher}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  return children.find((pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('functions/destroy-dispatch/index.ts');
    } catch {
      return false;
    }
  });
}

test('npm start restarts destroy-dispatch killed with SIGKILL, keeps serving, and its report counts the restart', { timeout: 180_000 }, async () => {
  const sink = await startEventSink();
  const [port, runtimePort] = await twoFreePorts();
  const stateDir = freshStateDir();
  const reportFile = join(stateDir, 'report.json');
  const started = spawnStart(['--no-demo', '--port', String(port), '--runtime-port', String(runtimePort), '--forward', sink.url, '--report-file', reportFile], { viaNode: true, stateDir });
  try {
    await waitHealthy(started, port, 90_000);
    const info = readStackFile(started.stateDir);
    const token = readFileSync(info.tokenFiles['inference-pipeline']!, 'utf8').trim();
    const send = async (type: 'opened' | 'closed', sessionId: string) => {
      const data = type === 'opened' ? { sessionId, placement: { node: 'sim-node', runtimeUrl: info.runtimeUrl, gpuBytes: 4096 } } : { sessionId };
      const m = HTTP.binary(new CloudEvent({ id: `${sessionId}-${type}`, source: '/tests/npm-start-restart', type: `dev.sessionreaper.session.${type}`, datacontenttype: 'application/json', data }));
      const res = await fetch(`http://127.0.0.1:${port}/`, { method: 'POST', headers: { ...(m.headers as Record<string, string>), authorization: `Bearer ${token}` }, body: m.body as string });
      await res.body?.cancel();
      assert.equal(res.status, 202);
    };
    const sessionId = `npm-start-restart-${process.pid}`;
    await send('opened', sessionId);
    const { redis, store } = await stackStore(info);
    try {
      await until('the session to be open', async () => ((await store.inspect(sessionId)) !== null ? true : undefined), 30_000, () => started.output());
    } finally {
      redis.disconnect();
    }

    const before = destroyDispatchPid(info.pid);
    assert.ok(before !== undefined, 'destroy-dispatch runs under start.ts');
    process.kill(before, 'SIGKILL');
    await send('closed', sessionId);

    await until('npm start to say destroy-dispatch is back', () => (/destroy-dispatch restarted \(pid (\d+)/.exec(started.output()) ?? undefined), 60_000, () => started.output());
    const after = destroyDispatchPid(info.pid);
    assert.ok(after !== undefined && after !== before, 'a new destroy-dispatch process runs');
    assert.match(started.output(), /destroy-dispatch exited unexpectedly \(128\); restarting it/);
    assert.equal(started.proc.exitCode, null, 'npm start kept running');
    const destroyed = await sink.waitForEvent((e) => e.event.type === 'dev.sessionreaper.session.destroyed', { timeoutMs: 60_000 });
    assert.equal((destroyed.event.data as { sessionId: string }).sessionId, sessionId);

    assert.equal(await stopWith(started, 'SIGTERM', 30_000), 0, started.output());
    assert.match(started.output(), /restarts +destroy-dispatch 1/);
    const written = JSON.parse(readFileSync(reportFile, 'utf8')) as { kind: string; report: { restarts: Record<string, number>; sessions: { ended: number } } };
    assert.equal(written.kind, 'stop');
    assert.deepEqual(written.report.restarts, { 'destroy-dispatch': 1 });
    assert.equal(written.report.sessions.ended, 1);
  } finally {
    if (started.proc.exitCode === null) started.proc.kill('SIGKILL');
    await sink.close();
  }
});
