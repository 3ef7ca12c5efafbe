// The return-probability policy's fit on hand-made spells with a known Kaplan–Meier answer, and the spells it is
// fitted on: only what was visible before the cut-off.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fitReturnModel, MIN_SPELLS_PER_CLASS, observeSpells, returnProbability, spellClass, timeoutsFor, type SpellObservation } from './policies.ts';
import { rebuildSessions, type TraceRequest } from './sessions.ts';

test('Kaplan–Meier survival, return probability and per-class timeouts match the hand-computed values', () => {
  // Returns after 10, 20 and 40 s of quiet, one spell watched only 30 s: S = 3/4 from 10 s, 1/2 from 20 s, 0 from 40 s.
  const first: SpellObservation[] = [10, 20, 40].map((s) => ({ cls: 'first turn', quietMs: s * 1000, returned: true }));
  first.push({ cls: 'first turn', quietMs: 30_000, returned: false });
  const copies = Array.from({ length: Math.ceil(MIN_SPELLS_PER_CLASS / first.length) }, () => first).flat();
  const model = fitReturnModel(copies, 35_000);
  assert.equal(model.survival('first turn', 5_000), 1);
  assert.equal(model.survival('first turn', 15_000), 0.75);
  assert.equal(model.survival('first turn', 39_000), 0.5);
  assert.equal(model.survival('first turn', 40_000), 0);
  // Within the 35 s horizon: P(return | quiet q) = 1 − S(35 s) / S(q).
  assert.equal(returnProbability(model, 'first turn', 0), 0.5);
  assert.equal(returnProbability(model, 'first turn', 15_000), 1 - 0.5 / 0.75);
  assert.equal(returnProbability(model, 'first turn', 25_000), 0);
  // On the 5 s grid, the first quiet time with a return probability below 0.4 is 10 s.
  assert.equal(timeoutsFor(model, 0.4)['first turn'], 10_000);
  // A class without enough spells of its own gets the curve of all of them.
  assert.equal(model.survival('think > 300 s', 15_000), 0.75);
});

test('spells are classed by the think time before their turn and cut off at the fit window\'s end', () => {
  const turn = (index: number, s: number, hashIds: number[]): TraceRequest => ({ index, arrivalMs: s * 1000, inputTokens: 512 * hashIds.length, outputTokens: 100, hashIds });
  // One session: turns at 0 s, 100 s and 600 s; each completes 10 s after it arrives (100 tokens at 10 tokens/s).
  const { sessions } = rebuildSessions([turn(0, 0, [0, 1]), turn(1, 100, [0, 1, 2]), turn(2, 600, [0, 1, 2, 3])]);
  const spells = observeSpells(sessions, 400_000, 10);
  assert.deepEqual(spells, [
    { cls: 'first turn', quietMs: 90_000, returned: true },
    // Think time before turn 2 was 90 s; its spell began at 110 s and was watched until the 400 s cut-off.
    { cls: 'think 60-300 s', quietMs: 290_000, returned: false },
  ]);
  assert.equal(spellClass(59_999), 'think < 60 s');
  assert.equal(spellClass(300_001), 'think > 300 s');
});
