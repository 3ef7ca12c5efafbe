// The demo's turns on a real engine (demo-engine.ts), against a scripted engine speaking the same API: it never holds
// more sessions there than the engine has sequences; a 409 session_demoted is waited out and counted; a refusal is
// reported and ends the session's completions; a completion's rise of the engine's reading counts as filled only when
// no release of an engine session was in flight meanwhile; and a session whose release was asked for gets no more
// completions (one would give a released session fresh KV that nothing frees).
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, beforeEach, test } from 'node:test';
import type { BrokerEvent } from '../local-broker/wire.ts';
import { createDemoEngine, type DemoEngine, type EngineTurnSession } from './demo-engine.ts';

interface Scripted {
  status: number;
  body: Record<string, unknown>;
  /** Bytes the completion adds to the engine's reading. */
  fills?: number;
  /** Runs while the engine handles the completion (another party's operation landing meanwhile). */
  during?: () => void;
}

let server: Server;
let url = '';
let usedBytes = 0;
let answers: Scripted[] = [];
const completions: string[] = [];

before(async () => {
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const send = (status: number, body: unknown) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
      const path = req.url ?? '';
      if (path === '/v1/engine') return send(200, { kvBytesPerToken: 512, contextTokens: 256, vocabularySize: 259, stateSize: usedBytes });
      if (path === '/v1/memory') return send(200, { totalBytes: 524_288, usedBytes, sessions: 0 });
      if (path.startsWith('/v1/sessions?')) return send(200, { sessions: [] });
      const m = /^\/v1\/sessions\/([^/]+)\/complete$/.exec(path);
      if (m && req.method === 'POST') {
        completions.push(decodeURIComponent(m[1]!));
        const next = answers.shift() ?? { status: 200, body: { tokens: [1], text: 'x', contextTokens: 10 }, fills: 5240 };
        next.during?.();
        if (next.status === 200) usedBytes += next.fills ?? 0;
        return send(next.status, next.body);
      }
      return send(404, { code: 'route_not_found' });
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(async () => {
  server.closeAllConnections();
  await new Promise((closed) => server.close(closed));
});
beforeEach(() => {
  usedBytes = 29;
  answers = [];
  completions.length = 0;
});

const ok = (contextTokens: number, fills: number, during?: () => void): Scripted => ({ status: 200, body: { tokens: [1], text: 'x', contextTokens }, fills, ...(during ? { during } : {}) });
const session = (id: string, incarnation = 1): EngineTurnSession => ({ id, incarnation, live: () => true, pause: () => Promise.resolve(true) });
const event = (type: string, data: Record<string, unknown>): BrokerEvent => ({
  attributes: { specversion: '1.0', id: `${type}-${JSON.stringify(data)}`, source: '/t', type: `dev.sessionreaper.${type}` },
  data: Buffer.from(JSON.stringify(data)),
});
function demoEngine(problems: string[] = []): DemoEngine {
  return createDemoEngine({ url, sequences: 2 }, (message) => problems.push(message), new AbortController().signal);
}

test('never more sessions on the engine than its sequences: a claim is given back when a session is destroyed', async () => {
  const engine = demoEngine();
  assert.equal(await engine.claim(), 256 * 512, 'a session declares the KV it can fill');
  assert.equal(await engine.claim(), 256 * 512);
  assert.equal(await engine.claim(), undefined, 'both sequences are taken');
  engine.opened('a', 1);
  engine.observe(event('session.destroyed', { sessionId: 'a', incarnation: 1, cause: 'closed' }));
  assert.equal(await engine.claim(), 256 * 512);
});

test('a demoted session is waited for and counted, and its completion then measured', async () => {
  const engine = demoEngine();
  engine.opened('a', 1);
  const demoted = { status: 409, body: { code: 'session_demoted', title: 'a:1 is demoted; restore it first' } };
  answers = [demoted, demoted, ok(20, 10_480)];
  assert.equal(await engine.turn(session('a'), 'hello there'), true);
  const [a] = engine.figures().sessions;
  assert.deepEqual({ completions: a!.completions, measured: a!.measuredCompletions, filled: a!.filledBytes, waits: a!.demotedWaits }, { completions: 1, measured: 1, filled: 10_480, waits: 2 });
  assert.equal(completions.length, 3);
});

test('a refusal is reported and ends the session\'s completions; the session lives on', async () => {
  const problems: string[] = [];
  const engine = demoEngine(problems);
  engine.opened('a', 1);
  answers = [{ status: 507, body: { code: 'insufficient_memory', title: 'all 4 sequences are held' } }];
  assert.equal(await engine.turn(session('a'), 'hello'), false);
  assert.equal(await engine.turn(session('a'), 'again'), false);
  assert.equal(completions.length, 1, 'no completion after the refusal');
  assert.equal(engine.figures().refused, 1);
  assert.match(problems.join('\n'), /a: the llama engine refused the session \(insufficient_memory: all 4 sequences are held\)/);
});

test('a completion during which a release of an engine session was asked for is not counted as filled', async () => {
  const engine = demoEngine();
  engine.opened('a', 1);
  engine.opened('b', 1);
  const releaseOfB = () => engine.observe(event('gpu.release.requested', { sessionId: 'b', incarnation: 1, placement: { node: 'llama-engine', runtimeUrl: url, gpuBytes: 1 }, attempt: 1, token: 'tb' }));
  answers = [ok(20, 10_480, releaseOfB)];
  assert.equal(await engine.turn(session('a'), 'hello there'), true);
  const a = engine.figures().sessions.find((s) => s.sessionId === 'a')!;
  assert.deepEqual({ completions: a.completions, measured: a.measuredCompletions, unmeasured: a.unmeasured, filled: a.filledBytes }, { completions: 1, measured: 0, unmeasured: 1, filled: 0 });
  assert.equal(await engine.turn(session('b'), 'hi'), false, 'b is being released: no more completions for it');
  assert.deepEqual(completions, ['a']);
  // Once its release was answered, the next completion of a is measured again.
  engine.observe(event('gpu.released', { sessionId: 'b', incarnation: 1, node: 'llama-engine', freedBytes: 0, token: 'tb' }));
  answers = [ok(30, 5240)];
  assert.equal(await engine.turn(session('a'), ' more'), true);
  assert.equal(engine.figures().sessions.find((s) => s.sessionId === 'a')!.filledBytes, 5240);
});

test('a turn that would not fit in the session\'s cells is not sent', async () => {
  const engine = demoEngine();
  engine.opened('a', 1);
  answers = [ok(250, 1000)];
  assert.equal(await engine.turn(session('a'), 'hi'), true);
  assert.equal(await engine.turn(session('a'), 'one more turn'), false);
  assert.equal(completions.length, 1);
});
