// Every function's process serves its host from a worker thread (worker-host.ts says why). What crosses the threads
// must come back as the host wrote it (through Express's `json` where it used that), and the worker's failures must never leave a process serving nothing: a host
// that dies takes its process down (its supervisor restarts it) and the requests it held are answered 503 (the Broker
// redelivers them); a stop lets a request in flight finish and closes the host; a start that fails exits non-zero.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { freePort } from '../../tests/support/redis-harness.ts';
import { diesWithParent } from '../../tools/local-stack/parent-death.ts';

const FIXTURE = join(import.meta.dirname, 'worker-host-test-support.ts');

interface Served {
  url: string;
  child: ChildProcess;
  output(): string;
  exited: Promise<number | null>;
}

async function serve(env: Record<string, string> = {}): Promise<Served> {
  const port = await freePort();
  let output = '';
  const child = spawn(...diesWithParent(process.execPath, [FIXTURE]), { env: { ...process.env, ...env, PORT: String(port) }, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.on('data', (c: Buffer) => (output += c.toString('utf8')));
  child.stderr.on('data', (c: Buffer) => (output += c.toString('utf8')));
  const exited = once(child, 'exit').then(([code]) => code as number | null);
  return { url: `http://127.0.0.1:${port}`, child, output: () => output, exited };
}

async function ready(s: Served): Promise<void> {
  const until = Date.now() + 30_000;
  for (;;) {
    if (s.child.exitCode !== null) throw new Error(`the fixture exited with ${s.child.exitCode}:\n${s.output()}`);
    try {
      const res = await fetch(`${s.url}/healthz`, { signal: AbortSignal.timeout(5000) });
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > until) throw new Error(`the fixture did not answer within 30 s:\n${s.output()}`);
    await sleep(50);
  }
}

const post = (s: Served, path: string, body: unknown = { n: 1 }, headers: Record<string, string> = {}) =>
  fetch(`${s.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });

test('answers come back as the host wrote them: Express json, raw bytes with their headers, 204; the request as served', async (t) => {
  const s = await serve();
  t.after(() => s.child.kill('SIGKILL'));
  await ready(s);

  const json = await post(s, '/json?deep=1', { sessionId: 'é-1', list: [1, 2] }, { prefer: 'reply' });
  assert.equal(json.status, 202);
  assert.equal(json.headers.get('content-type'), 'application/json; charset=utf-8');
  assert.deepEqual(await json.json(), { echo: { sessionId: 'é-1', list: [1, 2] }, bytes: Buffer.byteLength(JSON.stringify({ sessionId: 'é-1', list: [1, 2] })), prefer: 'reply', query: { deep: '1' } });

  const raw = await post(s, '/raw');
  assert.equal(raw.status, 200);
  assert.equal(raw.headers.get('ce-id'), 'reply-1');
  assert.equal(raw.headers.get('content-type'), 'application/octet-stream');
  assert.deepEqual([...new Uint8Array(await raw.arrayBuffer())], [0, 1, 2, 255]);

  const empty = await post(s, '/empty');
  assert.equal(empty.status, 204);
  assert.equal(await empty.text(), '');

  // Nesting JSON.parse takes but a structured clone does not: the body crosses as its bytes and is decoded again.
  const deep = await fetch(`${s.url}/empty`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: `${'{"x":'.repeat(8000)}1${'}'.repeat(8000)}` });
  assert.equal(deep.status, 204, s.output());

  const rejected = await post(s, '/reject');
  assert.equal(rejected.status, 500, 'a rejected handler is a 500 (the Broker redelivers), as the framework answers one');
  assert.deepEqual(await rejected.json(), { error: 'INTERNAL', reason: 'the event could not be handled' });
  assert.equal(s.child.exitCode, null, 'a rejection does not stop the process');
});

test('a host thread that dies answers what it held 503 and takes its process down', async (t) => {
  for (const [path, code] of [['/crash', 1], ['/exit', 7]] as const) {
    await t.test(path, async () => {
      const s = await serve();
      try {
        await ready(s);
        const res = await post(s, path);
        assert.equal(res.status, 503);
        assert.deepEqual(await res.json(), { error: 'UNAVAILABLE', reason: 'a dependency is unavailable; retry later' });
        assert.equal(await s.exited, code, s.output());
        assert.match(s.output(), /the function host (failed|exited)/);
        if (path === '/crash') assert.match(s.output(), /fixture line 499 before the crash/, 'the host\'s last lines are flushed as it dies');
      } finally {
        s.child.kill('SIGKILL');
      }
    });
  }
});

test('SIGTERM lets a request in flight finish, then closes the host and exits 0', async (t) => {
  const s = await serve();
  t.after(() => s.child.kill('SIGKILL'));
  await ready(s);
  const slow = post(s, '/slow');
  // The signal comes once the request is in the host (it logs so).
  const until = Date.now() + 30_000;
  while (!s.output().includes('fixture slow request started')) {
    if (Date.now() > until) throw new Error(`the slow request never reached the host:\n${s.output()}`);
    await sleep(10);
  }
  s.child.kill('SIGTERM');
  const res = await slow;
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { slow: true });
  assert.equal(await s.exited, 0, s.output());
  // In order: told of the stop while the request was still in flight, then closed once it had finished.
  const out = s.output();
  const at = (line: string) => out.indexOf(line);
  assert.ok(at('fixture host stopping') >= 0 && at('fixture host stopping') < at('fixture host before close') && at('fixture host before close') < at('fixture host closed'), out);
});

test('a host thread that dies while it closes ends the stop at once, as a failed one, not at the deadline', async (t) => {
  const s = await serve({ FIXTURE_EXIT_ON_CLOSE: '1' });
  t.after(() => s.child.kill('SIGKILL'));
  await ready(s);
  s.child.kill('SIGTERM');
  assert.equal(await s.exited, 1, s.output());
  assert.match(s.output(), /did not stop cleanly/);
  assert.match(s.output(), /the host exited with code 3/);
  assert.doesNotMatch(s.output(), /did not stop within/);
});

test('a start that fails in the host thread exits non-zero with its reason', async () => {
  const s = await serve({ FIXTURE_FAIL_START: '1' });
  try {
    assert.equal(await s.exited, 1);
    assert.match(s.output(), /FIXTURE_FAIL_START="1" is invalid/);
  } finally {
    s.child.kill('SIGKILL');
  }
});
