// The replay's metric arithmetic on a tiny trace whose answers are worked out by hand. One token is one byte and
// decoding runs at 10 tokens/s, so every figure below can be checked on paper:
//   session A: turn 1 at 0 s (1050 in, 50 out → completes at 5 s, KV 1100 B); turn 2 at 70 s (1200 in, 50 out →
//              completes at 75 s, KV 1250 B), its last;
//   session B: one turn at 15 s (2000 in, 200 out → completes at 35 s, KV 2200 B).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { accuracy, refillTokens, replay, type ReplayOptions } from './replay.ts';
import { fixedTimeout, oracle, twoTier } from './policies.ts';
import { rebuildSessions, type TraceRequest } from './sessions.ts';

const requests: TraceRequest[] = [
  { index: 0, arrivalMs: 0, inputTokens: 1050, outputTokens: 50, hashIds: [0, 1, 2] },
  { index: 1, arrivalMs: 15_000, inputTokens: 2000, outputTokens: 200, hashIds: [0, 7, 8, 9] },
  { index: 2, arrivalMs: 70_000, inputTokens: 1200, outputTokens: 50, hashIds: [0, 1, 3] },
];
const { sessions } = rebuildSessions(requests);
const options: ReplayOptions = { tokensPerSecond: 10, bytesPerToken: 1 };

describe('the replay books by hand-computed answers', () => {
  test('the tiny trace is two sessions, A with a follow-up and B alone', () => {
    assert.deepEqual(sessions.map((s) => s.turns.map((t) => t.index)), [[0, 2], [1]]);
  });

  test('a 30 s timeout ends A before its follow-up: one premature end, and the follow-up re-prefills A\'s 1100 tokens', () => {
    const m = replay(sessions, fixedTimeout(30_000), options);
    assert.deepEqual([m.spells, m.followUps, m.finals], [3, 1, 2]);
    // A's first spell: 5 s → destroyed at 35 s: 30 s × 1100 B held while its user was thinking.
    assert.equal(m.gapByteSeconds, 33_000);
    // A after its last turn: 75 s → 105 s × 1250 B; B: 35 s → 65 s × 2200 B.
    assert.equal(m.wasteByteSeconds, 30 * 1250 + 30 * 2200);
    assert.deepEqual([m.premature, m.prematureRefillTokens, refillTokens(m)], [1, 1100, 1100]);
    assert.equal(m.returnsKept, 0);
    assert.equal(m.finalsFreedInTime, 2);
    assert.equal(accuracy(m), 2 / 3);
    assert.equal(m.peakResidentBytes, 1100 + 2200);
  });

  test('a 120 s timeout keeps A for its follow-up and holds both sessions 120 s after their last turns', () => {
    const m = replay(sessions, fixedTimeout(120_000), options);
    assert.equal(m.gapByteSeconds, 65 * 1100);
    assert.equal(m.wasteByteSeconds, 120 * 1250 + 120 * 2200);
    assert.deepEqual([m.premature, refillTokens(m), m.returnsKept], [0, 0, 1]);
    assert.equal(accuracy(m), 1);
    // A's follow-up at 70 s replaces its 1100 B with 1250 B while B still holds 2200 B.
    assert.equal(m.peakResidentBytes, 1250 + 2200);
  });

  test('demote after 20 s, destroy after 120 s: GPU waste stops at the demote, and the restore and the host bytes are booked apart', () => {
    const m = replay(sessions, twoTier('demote 20 s / destroy 2 min', 20_000, 120_000), options);
    assert.equal(m.gapByteSeconds, 20 * 1100, 'A demoted at 25 s');
    assert.equal(m.wasteByteSeconds, 20 * 1250 + 20 * 2200);
    assert.deepEqual([m.demotes, m.demotedBytes], [3, 1100 + 1250 + 2200]);
    assert.deepEqual([m.restores, m.restoredBytes], [1, 1100], 'A restored when its user came back at 70 s');
    assert.deepEqual([m.premature, refillTokens(m)], [0, 0]);
    // Host copies: A 25 s → 70 s (1100 B), A 95 s → 195 s (1250 B), B 55 s → 155 s (2200 B).
    assert.equal(m.offloadedByteSeconds, 45 * 1100 + 100 * 1250 + 100 * 2200);
    assert.equal(accuracy(m), 1);
  });

  test('under a 3000 B pool each arrival that finds no room evicts the least recently active quiet session', () => {
    const m = replay(sessions, fixedTimeout(120_000), { ...options, poolBytes: 3000 });
    // B at 15 s needs 2200 B beside A's 1100 B: A (quiet since 5 s) is evicted. A's follow-up at 70 s needs 1250 B
    // beside B's 2200 B: B (quiet since 35 s) is evicted, and A re-prefills its 1100 tokens.
    assert.deepEqual([m.noRoomTurns, m.refusedTurns], [2, 0]);
    assert.deepEqual([m.evicted, m.evictedRefillTokens, m.premature, refillTokens(m)], [1, 1100, 0, 1100]);
    assert.equal(m.gapByteSeconds, 10 * 1100, 'A held 5 s → 15 s');
    assert.equal(m.wasteByteSeconds, 35 * 2200 + 120 * 1250, 'B evicted at 70 s; A destroyed at 195 s');
    assert.equal(m.peakResidentBytes, 2200, 'never both at once');
  });

  test('only spells opened by turns in the judged window count', () => {
    const m = replay(sessions, fixedTimeout(30_000), { ...options, judgedFromMs: 60_000 });
    assert.deepEqual([m.spells, m.finals, m.followUps], [1, 1, 0]);
    assert.equal(m.wasteByteSeconds, 30 * 1250);
    assert.equal(m.premature, 0, 'the follow-up ended a spell opened before the window');
  });

  test('the oracle wastes nothing and ends nothing early', () => {
    const m = replay(sessions, oracle(), options);
    assert.deepEqual([m.wasteByteSeconds, m.premature, refillTokens(m)], [0, 0, 0]);
    assert.equal(m.gapByteSeconds, 65 * 1100);
  });
});
