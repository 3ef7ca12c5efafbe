// `npm start -- --duplicate P --reorder-ms N --delay-ms N` makes the stack's Broker deliver as untidily as a real
// one, seeded by --seed so a run replays; without them the Broker is exact, and a bad value is a usage error.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseStartFlags, UsageError } from './flags.ts';

test('the chaos flags reach the Broker with the run seed, and are off when not given', () => {
  assert.equal(parseStartFlags([]).brokerChaos, undefined);
  assert.deepEqual(parseStartFlags(['--duplicate', '0.1', '--reorder-ms', '50', '--delay-ms', '20', '--seed', '9']).brokerChaos, {
    duplicate: 0.1, reorderMs: 50, delayMs: 20, seed: 9,
  });
  assert.deepEqual(parseStartFlags(['--delay-ms', '5']).brokerChaos, { delayMs: 5 });
});

test('a chaos flag out of range is a usage error naming it', () => {
  assert.throws(() => parseStartFlags(['--duplicate', '1.5']), UsageError);
  assert.throws(() => parseStartFlags(['--duplicate', '']), /--duplicate must be a probability/);
  assert.throws(() => parseStartFlags(['--reorder-ms=-1']), /--reorder-ms must be a whole number/);
  assert.throws(() => parseStartFlags(['--delay-ms', 'soon']), /--delay-ms must be a whole number/);
});
