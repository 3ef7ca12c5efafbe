// Session rebuilding on tiny hand-made traces whose answers are known, then on the shipped trace against the facts
// its README records.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { fullBlocks, linkPredecessors, loadMooncakeTrace, parseTrace, rebuildSessions, type TraceRequest } from './sessions.ts';

// One request per entry: [arrival s, input tokens, hash ids]; outputs are irrelevant to linking.
function trace(...rows: Array<[number, number, number[]]>): TraceRequest[] {
  return rows.map(([s, input, hashIds], index) => ({ index, arrivalMs: s * 1000, inputTokens: input, outputTokens: 10, hashIds }));
}

describe('a request continues the earlier request whose full blocks prefix its own', () => {
  test('a follow-up links to the turn whose full blocks it re-sends, even when that turn ended in a partial block', () => {
    // A has 1100 tokens: blocks 0 and 1 are full, block 5 partial (the follow-up's third block holds more text).
    const requests = trace([0, 1100, [0, 1, 5]], [60, 2000, [0, 1, 7, 8]]);
    assert.deepEqual(linkPredecessors(requests), [undefined, 0]);
  });

  test('a request that shares only the system prompt block starts its own session', () => {
    const requests = trace([0, 3000, [0, 1, 2, 3, 4, 5]], [10, 3000, [0, 9, 10, 11, 12, 13]]);
    assert.deepEqual(linkPredecessors(requests), [undefined, undefined]);
  });

  test('block boundary: 1023 tokens make one full block (too few to continue); 1024 make two', () => {
    assert.equal(fullBlocks({ inputTokens: 1023, hashIds: [0, 1] }), 1);
    assert.equal(fullBlocks({ inputTokens: 1024, hashIds: [0, 1] }), 2);
    assert.equal(fullBlocks({ inputTokens: 5000, hashIds: [0, 1, 2] }), 3, 'never more blocks than the request lists');
    assert.deepEqual(linkPredecessors(trace([0, 1023, [0, 1]], [5, 1600, [0, 1, 2, 3]])), [undefined, undefined]);
    assert.deepEqual(linkPredecessors(trace([0, 1024, [0, 1]], [5, 1600, [0, 1, 2, 3]])), [undefined, 0]);
  });

  test('the longest predecessor wins over a shorter one, and the most recent among equally long ones', () => {
    const requests = trace(
      [0, 1024, [0, 1]], // 0: two full blocks
      [10, 2048, [0, 1, 2, 3]], // 1: continues 0, four full blocks
      [20, 2048, [0, 1, 2, 3]], // 2: same prompt again (a retry): continues 1
      [30, 3000, [0, 1, 2, 3, 4, 5]], // 3: 0, 1 and 2 are all prefixes; 1 and 2 are longest, 2 most recent
    );
    assert.deepEqual(linkPredecessors(requests), [undefined, 0, 1, 2]);
  });

  test('a regenerated turn gives its predecessor two followers, all in one session', () => {
    const requests = trace(
      [0, 1200, [0, 1, 2]], // 0
      [30, 1700, [0, 1, 3, 4]], // 1: continues 0
      [45, 1700, [0, 1, 5, 6]], // 2: the user regenerated: continues 0 again
      [50, 1100, [0, 7, 8]], // 3: another conversation
      [90, 2600, [0, 1, 5, 6, 9, 10]], // 4: continues the regenerated branch
    );
    const rebuilt = rebuildSessions(requests);
    assert.deepEqual(rebuilt.parentOf, [undefined, 0, 0, undefined, 2]);
    assert.deepEqual(rebuilt.sessionOf, [0, 0, 0, 1, 0]);
    assert.deepEqual(rebuilt.sessions.map((s) => s.turns.map((t) => t.index)), [[0, 1, 2, 4], [3]]);
    assert.deepEqual(rebuilt.sessions[0]!.parents, [undefined, 0, 0, 2]);
  });

  test('a link only ever points back in arrival order', () => {
    // 1 would prefix 0, but arrives later: 0 starts a session, and 1 does not continue it (0's blocks are not 1's prefix).
    const requests = trace([0, 2048, [0, 1, 2, 3]], [5, 1024, [0, 1]]);
    assert.deepEqual(linkPredecessors(requests), [undefined, undefined]);
  });

  test('parsing keeps the line order as the request index and refuses a malformed line', () => {
    const parsed = parseTrace('{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]}\n\n{"timestamp": 1000, "input_length": 9, "output_length": 1, "hash_ids": [0]}\n');
    assert.deepEqual(parsed.map((r) => [r.index, r.arrivalMs, r.inputTokens, r.outputTokens]), [[0, 0, 600, 5], [1, 1000, 9, 1]]);
    assert.throws(() => parseTrace('{"timestamp": "soon"}'), /line 1/);
  });
});

test('the shipped trace rebuilds into the sessions its README describes', async () => {
  const requests = await loadMooncakeTrace();
  assert.equal(requests.length, 12_031);
  const { sessions, parentOf } = rebuildSessions(requests);
  const multi = sessions.filter((s) => s.turns.length > 1);
  const inMulti = multi.reduce((n, s) => n + s.turns.length, 0);
  assert.ok(sessions.length > 7_500 && sessions.length < 8_500, `about 8,000 sessions (got ${sessions.length})`);
  assert.ok(multi.length > 1_800 && multi.length < 2_200, `about 2,000 multi-turn (got ${multi.length})`);
  assert.ok(inMulti > 5_500 && inMulti < 6_500, `about 6,000 requests in them (got ${inMulti})`);
  const followers = new Map<number, number>();
  for (const p of parentOf) if (p !== undefined) followers.set(p, (followers.get(p) ?? 0) + 1);
  const branched = [...followers.values()].filter((n) => n >= 2).length;
  assert.ok(branched >= 10 && branched < 100, `a few dozen requests with two followers (got ${branched})`);

  // Arrival-to-arrival gaps between consecutive turns: a fixed timeout counted from the previous turn.
  const gaps = sessions.flatMap((s) => s.turns.slice(1).map((t, i) => t.arrivalMs - s.turns[i]!.arrivalMs));
  const endedBefore = (timeoutMs: number) => gaps.filter((g) => g > timeoutMs).length / gaps.length;
  assert.equal(Math.round(endedBefore(90_000) * 100), 62, 'a 90 s timeout ends the session before ~62 % of follow-ups');
  assert.equal(Math.round(endedBefore(600_000) * 100), 5, 'a 600 s timeout before ~5 %');
  const sorted = [...gaps].sort((a, b) => a - b);
  const p50 = sorted[Math.floor(0.5 * (sorted.length - 1))]!;
  assert.ok(Math.abs(p50 - 123_000) <= 5_000, `gap p50 ≈ 123 s (got ${p50 / 1000} s)`);
});
