// The deployed dead-letter receiver as it runs: its own process (index.ts) on a port, configured by its environment,
// sent dead letters the way Knative's dispatchers send them (binary and structured, with knativeerrordest,
// knativeerrorcode and knativeerrordata added), read back through its admin API. It keeps each one whole and once,
// refuses at its byte cap with 507 keeping what it had, keeps everything across a restart on the same directory, and
// answers 400 with a reason to anything that is not a CloudEvent.
import assert from 'node:assert/strict';
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { describe, it } from 'node:test';
import type { DeadLetter, DeadLetterPage } from '../core/dead-letter-store.ts';
import { freePort } from '../../tests/support/redis-harness.ts';
import { diesWithParent } from '../../tools/local-stack/parent-death.ts';

const ENTRY = join(import.meta.dirname, 'index.ts');

interface Receiver {
  url: string;
  proc: ChildProcessByStdio<null, Readable, Readable>;
  exited: Promise<number | null>;
  output: () => string;
}

function tempDir(label: string): string {
  const dir = mkdtempSync(join(tmpdir(), `sr-dead-letters-${label}-`));
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  return join(dir, 'store');
}

function spawnReceiver(env: Record<string, string>): Omit<Receiver, 'url'> {
  const proc = spawn(...diesWithParent(process.execPath, [ENTRY]), { env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'warn', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  proc.stdout.on('data', (c: Buffer) => (output += c.toString()));
  proc.stderr.on('data', (c: Buffer) => (output += c.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  return { proc, exited, output: () => output };
}

async function startReceiver(dir: string, env: Record<string, string> = {}): Promise<Receiver> {
  const port = await freePort();
  const r = spawnReceiver({ PORT: String(port), LISTEN_HOST: '127.0.0.1', DEAD_LETTER_DIR: dir, ...env });
  const url = `http://127.0.0.1:${port}`;
  const until = Date.now() + 30_000;
  for (;;) {
    const status = await fetch(`${url}/healthz`).then((res) => res.status, () => 0);
    if (status === 200) return { ...r, url };
    if (Date.now() > until || r.proc.exitCode !== null) throw new Error(`the receiver did not start: ${r.output()}`);
    await new Promise((res) => setTimeout(res, 25));
  }
}

async function stop(r: Receiver): Promise<void> {
  r.proc.kill('SIGTERM');
  assert.equal(await r.exited, 0, r.output());
}

let seq = 0;
function eventId(): string {
  seq += 1;
  return `dl-${process.pid}-${seq}`;
}

const SUBSCRIBER = 'http://gpu-release.session-reaper.svc.cluster.local/';
const ANSWER = '{"error":"UNAVAILABLE","reason":"redis is not reachable"}';

/** The headers Knative's dispatcher sends a dead letter with in binary mode (the error extensions as ce- headers). */
function binaryDeadLetter(id: string, data: string = '{"sessionId":"s-1"}'): { headers: Record<string, string>; body: string } {
  return {
    headers: {
      'ce-specversion': '1.0',
      'ce-id': id,
      'ce-source': '/session-reaper/destroy-dispatch',
      'ce-type': 'dev.sessionreaper.gpu.release.requested',
      'ce-subject': 's-1',
      'ce-knativeerrordest': SUBSCRIBER,
      'ce-knativeerrorcode': '503',
      'ce-knativeerrordata': Buffer.from(ANSWER).toString('base64'),
      'content-type': 'application/json',
    },
    body: data,
  };
}

async function post(url: string, message: { headers: Record<string, string>; body: string }): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${url}/`, { method: 'POST', headers: message.headers, body: message.body });
  const text = await res.text();
  return { status: res.status, body: text === '' ? {} : (JSON.parse(text) as Record<string, unknown>) };
}

async function admin<T>(url: string, method: string, path: string): Promise<{ status: number; body: T }> {
  const res = await fetch(`${url}/admin/${path}`, { method });
  return { status: res.status, body: (await res.json()) as T };
}

async function listAll(url: string): Promise<DeadLetter[]> {
  const page = await admin<DeadLetterPage>(url, 'GET', 'dead-letters');
  assert.equal(page.status, 200);
  return page.body.deadLetters;
}

void describe('the dead-letter receiver', () => {
  void it('keeps a binary and a structured dead letter whole, with why each died, and a redelivered one once', { timeout: 60_000 }, async () => {
    const r = await startReceiver(tempDir('kept'));
    try {
      const binaryId = eventId();
      const binary = binaryDeadLetter(binaryId);
      assert.deepEqual(await post(r.url, binary).then((a) => a.status), 201);

      const structuredId = eventId();
      const structured = {
        specversion: '1.0',
        id: structuredId,
        source: '/session-reaper/heartbeat-timeout',
        type: 'dev.sessionreaper.session.expired',
        datacontenttype: 'application/json',
        data: { sessionId: 's-2' },
        // The broker filter's URL: the Trigger is named in its path.
        knativeerrordest: 'http://broker-filter.knative-eventing.svc.cluster.local/triggers/session-reaper/destroy-dispatch-session-expired/0b1c',
        knativeerrorcode: 500,
        knativeerrordata: Buffer.from('dispatch error: connection refused').toString('base64'),
      };
      const sent = await post(r.url, { headers: { 'content-type': 'application/cloudevents+json' }, body: JSON.stringify(structured) });
      assert.equal(sent.status, 201);

      // Knative redelivers a dead letter whose 2xx it did not see: the same event to the same sink.
      const again = await post(r.url, binary);
      assert.equal(again.status, 200);
      assert.equal(again.body.duplicate, true);

      const entries = await listAll(r.url);
      assert.equal(entries.length, 2, 'the redelivery is stored once');
      const b = entries.find((e) => e.event.attributes.id === binaryId);
      assert.ok(b);
      assert.equal(again.body.id, b.id);
      assert.equal(b.destination, SUBSCRIBER);
      assert.equal(b.trigger, 'gpu-release.session-reaper.svc.cluster.local');
      assert.equal(b.reason.status, 503);
      assert.equal(b.reason.body, ANSWER);
      assert.equal(b.reason.message, `${SUBSCRIBER} answered HTTP 503`);
      // Whole: every attribute, the extensions included, and the data's exact bytes.
      assert.equal(b.event.attributes.subject, 's-1');
      assert.equal(b.event.attributes.knativeerrorcode, '503');
      assert.equal(b.event.attributes.datacontenttype, 'application/json');
      assert.equal(Buffer.from(b.event.data_base64 ?? '', 'base64').toString(), binary.body);

      const s = entries.find((e) => e.event.attributes.id === structuredId);
      assert.ok(s);
      assert.equal(s.trigger, 'destroy-dispatch-session-expired');
      assert.equal(s.reason.status, 500);
      assert.equal(s.reason.body, 'dispatch error: connection refused');
      assert.deepEqual(JSON.parse(Buffer.from(s.event.data_base64 ?? '', 'base64').toString()), { sessionId: 's-2' });

      const shown = await admin<DeadLetter>(r.url, 'GET', `dead-letters/${s.id}`);
      assert.equal(shown.status, 200);
      assert.deepEqual(shown.body, s);
      const stats = await admin<Record<string, number>>(r.url, 'GET', 'stats');
      assert.equal(stats.body.stored, 2);
      assert.equal(stats.body.duplicates, 1);
      assert.equal(stats.body.deadLetters, 2);
      assert.equal(stats.body.usedBytes, 2 * 4096);
    } finally {
      r.proc.kill('SIGKILL');
    }
  });

  void it('at its byte cap answers 507, counts the refusal and keeps every entry it had', { timeout: 60_000 }, async () => {
    // Each event is ~300 KB of data, ~400 KB stored (base64): two fit in 1 MiB, the third does not.
    const r = await startReceiver(tempDir('full'), { DEAD_LETTER_MAX_BYTES: String(1_048_576), MAX_EVENT_BYTES: String(400_000) });
    try {
      const big = () => JSON.stringify({ sessionId: 's-big', pad: 'x'.repeat(300_000) });
      const first = binaryDeadLetter(eventId(), big());
      const second = binaryDeadLetter(eventId(), big());
      assert.equal((await post(r.url, first)).status, 201);
      assert.equal((await post(r.url, second)).status, 201);
      const before = await listAll(r.url);

      const third = await post(r.url, binaryDeadLetter(eventId(), big()));
      assert.equal(third.status, 507, JSON.stringify(third.body));
      assert.equal(third.body.error, 'STORE_FULL');
      assert.equal(third.body.maxBytes, 1_048_576);
      assert.deepEqual(await listAll(r.url), before, 'nothing kept was evicted, nothing new was written');
      // A redelivery of what is kept is still acknowledged at the cap: it takes no room.
      assert.equal((await post(r.url, first)).status, 200);
      const stats = await admin<Record<string, number>>(r.url, 'GET', 'stats');
      assert.equal(stats.body.refusedFull, 1);
      assert.ok(stats.body.usedBytes! <= 1_048_576);

      // Deleting one (after replaying it) makes room again.
      const deleted = await admin<{ deleted: string }>(r.url, 'DELETE', `dead-letters/${before[0]!.id}`);
      assert.equal(deleted.status, 200);
      assert.equal((await admin(r.url, 'DELETE', `dead-letters/${before[0]!.id}`)).status, 404);
      assert.equal((await post(r.url, binaryDeadLetter(eventId(), big()))).status, 201);
    } finally {
      r.proc.kill('SIGKILL');
    }
  });

  void it('keeps what it had across a restart on the same directory, and still stores a redelivery once', { timeout: 60_000 }, async () => {
    const dir = tempDir('restart');
    const first = await startReceiver(dir);
    const kept = binaryDeadLetter(eventId());
    let before: DeadLetter[];
    try {
      assert.equal((await post(first.url, kept)).status, 201);
      assert.equal((await post(first.url, binaryDeadLetter(eventId()))).status, 201);
      before = await listAll(first.url);
      await stop(first);
    } finally {
      first.proc.kill('SIGKILL');
    }
    const second = await startReceiver(dir);
    try {
      assert.deepEqual(await listAll(second.url), before);
      const again = await post(second.url, kept);
      assert.equal(again.status, 200, 'the index of what is kept is rebuilt from the directory');
      assert.equal(again.body.duplicate, true);
      const stats = await admin<Record<string, number>>(second.url, 'GET', 'stats');
      assert.equal(stats.body.usedBytes, 2 * 4096, 'the bytes kept are counted again at start');
      assert.equal(readdirSync(dir).filter((n) => n.endsWith('.json')).length, 2);
    } finally {
      second.proc.kill('SIGKILL');
    }
  });

  void it('answers 400 with a reason to what is not a CloudEvent, 413 past its limit, and keeps none of it', { timeout: 60_000 }, async () => {
    const r = await startReceiver(tempDir('malformed'), { MAX_EVENT_BYTES: '2048' });
    try {
      const noId = binaryDeadLetter(eventId());
      delete noId.headers['ce-id'];
      const cases: { what: string; message: { headers: Record<string, string>; body: string }; status: number; reason: RegExp }[] = [
        { what: 'binary without ce-id', message: noId, status: 400, reason: /required attribute id/ },
        { what: 'structured that is not JSON', message: { headers: { 'content-type': 'application/cloudevents+json' }, body: '{"specversion":' }, status: 400, reason: /not valid UTF-8 JSON/ },
        { what: 'no CloudEvent at all', message: { headers: { 'content-type': 'application/json' }, body: '{"a":1}' }, status: 400, reason: /not a CloudEvent/ },
        {
          what: 'a batch',
          message: { headers: { 'content-type': 'application/cloudevents-batch+json' }, body: '[]' },
          status: 400,
          reason: /one event, not a batch/,
        },
        { what: 'specversion 0.3', message: { ...binaryDeadLetter(eventId()), headers: { ...binaryDeadLetter(eventId()).headers, 'ce-specversion': '0.3' } }, status: 400, reason: /specversion 0.3/ },
        { what: 'over MAX_EVENT_BYTES', message: binaryDeadLetter(eventId(), JSON.stringify({ pad: 'x'.repeat(4096) })), status: 413, reason: /at most 2048/ },
      ];
      for (const c of cases) {
        const a = await post(r.url, c.message);
        assert.equal(a.status, c.status, c.what);
        assert.match(String(a.body.reason), c.reason, c.what);
      }
      assert.deepEqual(await listAll(r.url), []);
      assert.equal((await admin<Record<string, number>>(r.url, 'GET', 'stats')).body.malformed, cases.length);
    } finally {
      r.proc.kill('SIGKILL');
    }
  });

  void it('serves its admin API only to loopback names, and sends replay back to the documented procedure', { timeout: 60_000 }, async () => {
    const r = await startReceiver(tempDir('admin'));
    try {
      const port = Number(new URL(r.url).port);
      // As a mesh client would call it, by its Service name.
      const status = await new Promise<number>((resolve, reject) => {
        const req = request({ host: '127.0.0.1', port, path: '/admin/dead-letters', headers: { host: 'dead-letters.session-reaper.svc.cluster.local' } }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        req.on('error', reject).end();
      });
      assert.equal(status, 403);
      assert.equal((await post(r.url, binaryDeadLetter(eventId()))).status, 201);
      const [entry] = await listAll(r.url);
      const replay = await admin<{ reason: string }>(r.url, 'POST', `dead-letters/${entry!.id}/replay`);
      assert.equal(replay.status, 501);
      assert.match(replay.body.reason, /docs\/deploy\.md/);
      assert.equal((await fetch(`${r.url}/`)).status, 405);
    } finally {
      r.proc.kill('SIGKILL');
    }
  });

  void it('stops at start naming the variable when a setting is bad', { timeout: 60_000 }, async () => {
    const bad = spawnReceiver({ PORT: '0', DEAD_LETTER_DIR: tempDir('bad'), DEAD_LETTER_MAX_BYTES: 'lots' });
    assert.equal(await bad.exited, 1);
    assert.match(bad.output(), /DEAD_LETTER_MAX_BYTES/);
    const tight = spawnReceiver({ PORT: '0', DEAD_LETTER_DIR: tempDir('tight'), DEAD_LETTER_MAX_BYTES: '1048576', MAX_EVENT_BYTES: '1048576' });
    assert.equal(await tight.exited, 1);
    assert.match(tight.output(), /at least two of the largest events/);
  });
});
