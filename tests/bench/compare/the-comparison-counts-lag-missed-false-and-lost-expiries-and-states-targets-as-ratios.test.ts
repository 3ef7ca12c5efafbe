// The arithmetic bench:compare prints, on timelines small enough to work out by hand. No clock, no Redis.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { classify, judgeRatio, lagSummary, percentile, ratioLine } from './outcomes.ts';

test('percentiles are nearest-rank over ascending values', () => {
  const ten = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
  assert.equal(percentile(ten, 50), 5);
  assert.equal(percentile(ten, 99), 10);
  assert.equal(percentile(ten, 100), 10);
  assert.equal(percentile(ten, 10), 1);
  assert.equal(percentile([7], 50), 7);
  assert.ok(Number.isNaN(percentile([], 50)));
  const hundred = Array.from({ length: 100 }, (_, i) => i + 1);
  assert.equal(percentile(hundred, 99), 99);
  assert.deepEqual(lagSummary(hundred), { count: 100, p50: 50, p99: 99, max: 100 });
});

test('a dying session detected after its deadline gives its lag; one never detected is missed', () => {
  const deaths = new Map([['a', 1000], ['b', 2000], ['c', 3000]]);
  const out = classify(deaths, [{ sessionId: 'b', at: 2004 }, { sessionId: 'a', at: 1001 }]);
  assert.deepEqual(out.lags, [1, 4]);
  assert.equal(out.missed, 1);
  assert.equal(out.falseExpiries, 0);
  assert.equal(out.lost, 0);
  assert.equal(out.duplicates, 0);
});

test('a live session detected, or a dying one detected before its deadline, is a false expiry', () => {
  const deaths = new Map([['a', 1000]]);
  const early = classify(deaths, [{ sessionId: 'a', at: 999 }, { sessionId: 'live-1', at: 500 }]);
  assert.equal(early.falseExpiries, 2);
  // The early detection does not count as detecting it: it is also missed.
  assert.equal(early.missed, 1);
  assert.deepEqual(early.lags, []);
  // Detected exactly at its deadline: lag 0, not false.
  const onTime = classify(deaths, [{ sessionId: 'a', at: 1000 }]);
  assert.deepEqual([onTime.falseExpiries, onTime.missed, onTime.lags], [0, 0, [0]]);
});

test('a second detection of one session is a duplicate, and the first one gives the lag', () => {
  const out = classify(new Map([['a', 1000]]), [{ sessionId: 'a', at: 1010 }, { sessionId: 'a', at: 1003 }]);
  assert.deepEqual(out.lags, [10]);
  assert.equal(out.duplicates, 1);
});

test('in an outage, a session due inside it and never detected is lost; one detected after it is late, not lost', () => {
  const deaths = new Map([['before', 900], ['inside-late', 1500], ['inside-lost', 1800], ['after', 2500]]);
  const outage = { from: 1000, to: 2000 };
  const out = classify(deaths, [
    { sessionId: 'before', at: 901 },
    { sessionId: 'inside-late', at: 2100 },
    { sessionId: 'after', at: 2502 },
  ], outage);
  assert.equal(out.dueInOutage, 2);
  assert.equal(out.lost, 1);
  assert.equal(out.missed, 1);
  assert.deepEqual(out.lags, [1, 2, 600]);
  // Missed outside the outage is missed, not lost.
  const quiet = classify(deaths, [], outage);
  assert.deepEqual([quiet.missed, quiet.lost, quiet.dueInOutage], [4, 2, 2]);
});

test('a target is a ratio of two figures from the same run, printed with both sides and its bound', () => {
  const p99 = { what: 'p99 detection lag', ours: { name: 'session-reaper', value: 12.4 }, reference: { name: 'floor', value: 4 }, unit: 'ms', bound: { op: '<=' as const, value: 2 } };
  assert.deepEqual(judgeRatio(p99), { ratio: 3.1, met: false });
  assert.equal(ratioLine(p99), 'p99 detection lag: session-reaper / floor = 3.1 (12.4 ms / 4 ms), target ≤ 2 — missed');
  const better = { what: 'p99 detection lag', ours: { name: 'sweeper 30 s', value: 15_000 }, reference: { name: 'session-reaper', value: 10 }, unit: 'ms', bound: { op: '>=' as const, value: 1000 } };
  assert.deepEqual(judgeRatio(better), { ratio: 1500, met: true });
  assert.equal(ratioLine(better), 'p99 detection lag: sweeper 30 s / session-reaper = 1,500 (15,000 ms / 10 ms), target ≥ 1,000 — met');
  // A zero or missing side is not judged rather than read as met.
  assert.equal(judgeRatio({ ...p99, reference: { name: 'floor', value: 0 } }).met, undefined);
  assert.equal(judgeRatio({ ...p99, ours: { name: 'session-reaper', value: Number.NaN } }).met, undefined);
});
