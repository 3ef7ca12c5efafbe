// The real engine's part of the report: the recorder attributes each gpu.released to the runtime its release was sent
// to (once per incarnation), and the report agrees only when the ledger booked what gpu.released said, each session
// measured alone freed exactly what its turns filled (its demotes and release, net of its restores), and the engine's
// own reading is back at its start.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { LedgerAudit, NodeLedger } from '../../functions/core/ledger.ts';
import type { BrokerStats } from '../local-broker/broker.ts';
import type { BrokerEvent } from '../local-broker/wire.ts';
import type { DemoEngineFigures, DemoEngineSession } from './demo-engine.ts';
import { buildReport, createRunRecorder, engineFigures, formatReport, gpuFigures } from './report.ts';

const T = 'dev.sessionreaper.';
const ENGINE = 'http://127.0.0.1:9000';
const SIM = 'http://127.0.0.1:9001';
const ev = (id: string, type: string, data: Record<string, unknown>): BrokerEvent => ({
  attributes: { specversion: '1.0', id, source: '/t', type: T + type },
  data: Buffer.from(JSON.stringify(data)),
});

function ledger(confirmedOnEngine: number): LedgerAudit {
  const node: NodeLedger = { node: 'llama-engine', registeredBytes: 0, releasedBytes: 0, heldBytes: 0, allocations: 0, releases: 0, confirmedFreedBytes: confirmedOnEngine, ignoredReleases: 0 };
  return { nodes: [node], totals: { ...node }, balanced: true, problems: [] };
}

const session = (sessionId: string, filledBytes: number, extra: Partial<DemoEngineSession> = {}): DemoEngineSession => ({
  sessionId, incarnation: 1, completions: 2, measuredCompletions: 2, filledBytes, unmeasured: 0, contextTokens: 40, demotedWaits: 0, ...extra,
});
const demo = (sessions: DemoEngineSession[]): DemoEngineFigures => ({
  url: ENGINE, node: 'llama-engine', sequences: 4, placed: sessions.length, open: 0, refused: 0,
  completions: sessions.reduce((n, s) => n + s.completions, 0), measuredCompletions: sessions.reduce((n, s) => n + s.measuredCompletions, 0),
  filledBytes: sessions.reduce((n, s) => n + s.filledBytes, 0), demotedWaits: 0, sessions,
});

// Two sessions on the engine (a, b) and one on the simulator (c), each opened, released and destroyed.
function recorded() {
  const r = createRunRecorder();
  const place = (id: string, url: string, node: string) => r.observe(ev(`o-${id}`, 'session.opened', { sessionId: id, placement: { node, runtimeUrl: url, gpuBytes: 1000 } }));
  place('a', ENGINE, 'llama-engine');
  place('b', ENGINE, 'llama-engine');
  place('c', SIM, 'sim-gpu-0');
  const release = (id: string, url: string, node: string, freedBytes: number) => {
    r.observe(ev(`q-${id}`, 'gpu.release.requested', { sessionId: id, incarnation: 1, placement: { node, runtimeUrl: `${url}/`, gpuBytes: 1000 }, attempt: 1, token: `t-${id}` }));
    const released = ev(`r-${id}`, 'gpu.released', { sessionId: id, incarnation: 1, node, freedBytes, token: `t-${id}` });
    r.observe(released);
    r.observe(released);
    r.observe(ev(`d-${id}`, 'session.destroyed', { sessionId: id, incarnation: 1, cause: 'closed', durationMs: 5 }));
  };
  release('a', ENGINE, 'llama-engine', 3000);
  release('b', ENGINE, 'llama-engine', 500);
  release('c', SIM, 'sim-gpu-0', 1000);
  return r;
}

test('the recorder counts each engine release once, by the runtime it was sent to', () => {
  const seen = recorded().runtimeSessions(`${ENGINE}/`);
  assert.deepEqual(seen, {
    opened: 2, ended: 2, registeredBytes: 2000, nodes: ['llama-engine'], nodesShared: false, releases: 2, freedBytes: 3500, freedBy: { 'a:1': 3000, 'b:1': 500 },
    demotes: 0, demoteFreedBytes: 0, restores: 0, restoredBytes: 0, offloadNetBy: {},
  });
});

test('the report agrees when every figure matches, and says which one does not otherwise', () => {
  const r = recorded();
  const seen = r.runtimeSessions(ENGINE);
  const back = { atStart: 29, now: 29 };
  const ok = engineFigures(ENGINE, seen, ledger(0), ledger(3500), back, demo([session('a', 3000), session('b', 500)]));
  assert.equal(ok.agree, true, ok.problems.join('; '));
  assert.deepEqual(ok.compared, { sessions: 2, of: 2, filledBytes: 3500, freedBytes: 3500 });
  const broker: BrokerStats = { received: 0, rejected: 0, delivered: 0, retried: 0, deadLettered: 0, dropped: 0, pending: 0, recovered: 0, inFlight: 0, routes: {}, duplicated: 0, reordered: 0, delayed: 0 };
  const text = formatReport(buildReport(r, gpuFigures(ledger(0), ledger(0), undefined, 0), broker, 0, {}, ok));
  assert.match(text, /llama engine +sessions 2 · ended 2 · still open 0/);
  assert.match(text, /KV freed +3\.4 KiB \(3500\) in 2 releases/);
  assert.match(text, /agree +yes: 2 of 2 sessions freed exactly what their turns filled/);

  const short = engineFigures(ENGINE, seen, ledger(0), ledger(3500), back, demo([session('a', 3000), session('b', 600)]));
  assert.equal(short.agree, false);
  assert.deepEqual(short.problems, ['b: its demotes and release freed 500 bytes net, its turns filled 600']);

  const leaked = engineFigures(ENGINE, seen, ledger(0), ledger(3500), { atStart: 29, now: 553 }, demo([session('a', 3000), session('b', 500)]));
  assert.deepEqual(leaked.problems, ["the engine's reading is 553 bytes, not back at its start (29)"]);

  const misbooked = engineFigures(ENGINE, seen, ledger(0), ledger(3000), back);
  assert.deepEqual(misbooked.problems, ['the ledger booked 3000 bytes freed on llama-engine, gpu.released reported 3500']);
});

test('a session not measured alone is left out of the comparison rather than guessed at', () => {
  const seen = recorded().runtimeSessions(ENGINE);
  const figures = engineFigures(ENGINE, seen, ledger(0), ledger(3500), { atStart: 29, now: 29 }, demo([
    session('a', 2000, { measuredCompletions: 1, unmeasured: 1 }),
    session('b', 500, { demotedWaits: 2 }),
  ]));
  assert.equal(figures.agree, true);
  assert.deepEqual(figures.compared, { sessions: 1, of: 2, filledBytes: 500, freedBytes: 500 }, 'a demoted session is compared on its net');
});

test('a demoted session frees by its demotes and release, net of its restores, each answer counted once by its token', () => {
  const r = createRunRecorder();
  r.observe(ev('o-d', 'session.opened', { sessionId: 'd', placement: { node: 'llama-engine', runtimeUrl: ENGINE, gpuBytes: 1000 } }));
  const demoted = (id: string, token: string, freedBytes: number) => ev(id, 'gpu.demoted', { sessionId: 'd', incarnation: 1, node: 'llama-engine', offloadedBytes: freedBytes + 64, freedBytes, token });
  // Filled 700, demoted (700 freed), restored (700 back), filled 300 more, demoted again (1000 freed), then closed:
  // the release frees nothing more.
  r.observe(demoted('dm-1', 'k1', 700));
  r.observe(demoted('dm-1-again', 'k1', 700));
  r.observe(ev('rs-1', 'gpu.restored', { sessionId: 'd', incarnation: 1, node: 'llama-engine', restoredBytes: 700, token: 'k2' }));
  r.observe(demoted('dm-2', 'k3', 1000));
  r.observe(ev('q-d', 'gpu.release.requested', { sessionId: 'd', incarnation: 1, placement: { node: 'llama-engine', runtimeUrl: ENGINE, gpuBytes: 1000 }, attempt: 1, token: 't-d' }));
  r.observe(ev('r-d', 'gpu.released', { sessionId: 'd', incarnation: 1, node: 'llama-engine', freedBytes: 0, token: 't-d' }));
  r.observe(ev('x-d', 'session.destroyed', { sessionId: 'd', incarnation: 1, cause: 'idle', durationMs: 5 }));
  const seen = r.runtimeSessions(ENGINE);
  assert.deepEqual([seen.demotes, seen.demoteFreedBytes, seen.restores, seen.restoredBytes, seen.offloadNetBy], [2, 1700, 1, 700, { 'd:1': 1000 }]);
  const figures = engineFigures(ENGINE, seen, ledger(0), ledger(0), { atStart: 29, now: 29 }, demo([session('d', 1000)]));
  assert.equal(figures.agree, true, figures.problems.join('; '));
  assert.deepEqual(figures.compared, { sessions: 1, of: 1, filledBytes: 1000, freedBytes: 1000 });
});

test('engine sessions still open are not over yet: the report does not agree until they end', () => {
  const r = createRunRecorder();
  r.observe(ev('o', 'session.opened', { sessionId: 'a', placement: { node: 'llama-engine', runtimeUrl: ENGINE, gpuBytes: 1000 } }));
  const figures = engineFigures(ENGINE, r.runtimeSessions(ENGINE), ledger(0), ledger(0), { atStart: 29, now: 5000 });
  assert.equal(figures.agree, false);
  assert.deepEqual(figures.problems, ['1 engine sessions still open hold their KV']);
});
