// The frontier arithmetic the bench reports, on points whose answers are plain, and the plot it draws.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { beyondFrontier, frontierRefillAt, frontierWasteAt, plotSvg } from './frontier.ts';

// Three fixed timeouts: the longer, the less re-prefill and the more waste.
const frontier = [
  { refill: 100, waste: 10 },
  { refill: 50, waste: 40 },
  { refill: 0, waste: 100 },
];

test('the frontier is the straight line between neighbouring fixed timeouts', () => {
  assert.equal(frontierWasteAt(frontier, 75), 25);
  assert.equal(frontierWasteAt(frontier, 25), 70);
  assert.equal(frontierRefillAt(frontier, 25), 75);
  assert.equal(frontierWasteAt(frontier, 150), undefined, 'no answer beyond the fixed timeouts');
});

test('a policy beats the frontier by how much less it wastes at its re-prefill, and re-prefills at its waste', () => {
  // At 50 re-prefill the frontier wastes 40: a policy wasting 10 there wastes 75 % less; at 10 waste the frontier
  // re-prefills 100, so 50 is 50 % less.
  assert.deepEqual(beyondFrontier(frontier, { refill: 50, waste: 10 }), { lessWaste: 0.75, lessRefill: 0.5 });
  const worse = beyondFrontier(frontier, { refill: 50, waste: 80 });
  assert.equal(worse.lessWaste, -1, 'twice the frontier\'s waste');
});

test('the plot draws every point of every series and names each series', () => {
  const svg = plotSvg('t', [
    { name: 'fixed', color: '#444', line: true, points: frontier.map((p) => ({ ...p, label: `${p.refill}` })) },
    { name: 'ours & co', color: '#d62728', line: false, points: [{ refill: 50, waste: 10 }] },
  ], { refillScale: 1, refillUnit: 'tokens', wasteScale: 1, wasteUnit: 'B·s' });
  assert.equal(svg.match(/<circle /g)?.length, 4 + 2, 'four points and two legend marks');
  assert.match(svg, /<polyline /);
  assert.match(svg, /ours &amp; co/);
  assert.doesNotMatch(svg, /NaN|Infinity/);
});
