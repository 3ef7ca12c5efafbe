// The run recorder behind the report: a redelivered event counts once, a session's destroy is timed from the event
// that ended it, expiry lags are collected, and the GPU balance flags bytes registered but never freed.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { LedgerAudit } from '../../functions/core/ledger.ts';
import type { BrokerEvent } from '../local-broker/wire.ts';
import { createRunRecorder, gpuFigures, percentiles } from './report.ts';

const T = 'dev.sessionreaper.';
const ev = (id: string, type: string, data: Record<string, unknown>, time?: string): BrokerEvent => ({
  attributes: { specversion: '1.0', id, source: '/t', type: T + type, ...(time ? { time } : {}) },
  data: Buffer.from(JSON.stringify(data)),
});

test('each destroy counts once, by its cause, timed from the event that ended the session', () => {
  let now = Date.parse('2026-01-01T00:00:10.000Z');
  const r = createRunRecorder(() => now);
  r.observe(ev('o1', 'session.opened', { sessionId: 'a', placement: { node: 'n', runtimeUrl: 'http://r', gpuBytes: 100 } }));
  r.observe(ev('o2', 'session.opened', { sessionId: 'b', placement: { node: 'n', runtimeUrl: 'http://r', gpuBytes: 50 } }));
  assert.equal(r.live().gpuBytesOpen, 150);
  r.observe(ev('c1', 'session.closed', { sessionId: 'a' }, '2026-01-01T00:00:09.900Z'));
  r.observe(ev('x1', 'session.expired', { sessionId: 'b', incarnation: 1, lagMs: 7 }, '2026-01-01T00:00:09.950Z'));
  const destroyedA = ev('d1', 'session.destroyed', { sessionId: 'a', incarnation: 1, cause: 'closed', durationMs: 40 });
  r.observe(destroyedA);
  r.observe(destroyedA); // redelivered by the at-least-once Broker
  now += 20;
  r.observe(ev('d2', 'session.destroyed', { sessionId: 'b', incarnation: 1, cause: 'expired', durationMs: 30 }));
  const live = r.live();
  assert.equal(live.opened, 2);
  assert.equal(live.ended, 2);
  assert.deepEqual(live.byCause, { closed: 1, expired: 1, idle: 0, completed: 0, forced: 0 });
  assert.equal(live.gpuBytesOpen, 0);
  assert.deepEqual(r.samples(), { detectionLagMs: [7], destroyMs: [40, 30], endToEndMs: [100, 70] });
  assert.equal(r.destroyedTwice(), 0);
  r.observe(ev('d3', 'session.destroyed', { sessionId: 'a', incarnation: 1, cause: 'closed', durationMs: 40 }));
  assert.equal(r.destroyedTwice(), 1, 'a second destroy event id for one incarnation is what the report must expose');
});

test('percentiles are nearest-rank and the GPU balance names what was not freed', () => {
  assert.deepEqual(percentiles([5, 1, 3, 2, 4]), { count: 5, p50: 3, p99: 5, max: 5 });
  assert.equal(percentiles([]), undefined);
  const audit = (registered: number, released: number): LedgerAudit => ({
    nodes: [],
    totals: { registeredBytes: registered, releasedBytes: released, heldBytes: registered - released, allocations: 0, releases: 0, confirmedFreedBytes: 0, ignoredReleases: 0 },
    balanced: true,
    problems: [],
  });
  const runtime = { totalAllocated: 100, totalFreed: 100, usedBytes: 0 };
  assert.equal(gpuFigures(audit(10, 10), audit(110, 110), runtime, 0).balanced, true);
  const leak = gpuFigures(audit(0, 0), audit(100, 60), runtime, 0);
  assert.equal(leak.balanced, false);
  assert.match(leak.problems.join(), /registered 100 bytes and released 60/);
  assert.equal(gpuFigures(audit(0, 0), audit(100, 60), runtime, 2).balanced, true, 'open sessions still hold their memory');
});
