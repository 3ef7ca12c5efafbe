// The sum bench:compare --profile prints, over a CPU profile small enough to work out by hand. No clock, no Redis.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { topFrames, type CpuProfile } from './profile.ts';

const frame = (functionName: string, url = '', lineNumber = 0) => ({ functionName, url, lineNumber });

test('self time is summed per function over its call sites, weighted by each sample\'s time, idle left out of the shares', () => {
  const profile: CpuProfile = {
    nodes: [
      { id: 1, callFrame: frame('(root)') },
      { id: 2, callFrame: frame('(idle)') },
      { id: 3, callFrame: frame('heartbeatMany', 'file:///work/x/functions/core/session-store.ts', 546) },
      // The same function under another caller: one frame in the sum.
      { id: 4, callFrame: frame('heartbeatMany', 'file:///work/x/functions/core/session-store.ts', 546) },
      { id: 5, callFrame: frame('', 'file:///work/x/node_modules/ioredis/built/Command.js', 118) },
    ],
    startTime: 0,
    endTime: 100,
    // A sample's time is the delta to the next sample.
    samples: [3, 2, 4, 5, 3, 2],
    timeDeltas: [0, 10_000, 40_000, 20_000, 10_000, 10_000],
  };
  const top = topFrames(profile, 5);
  // heartbeatMany: samples 0, 2 and 4 (10 + 20 + 10 ms); idle: sample 1 (40 ms; the last sample has no time).
  assert.equal(top.idleMs, 40);
  assert.equal(top.busyMs, 50);
  assert.deepEqual(top.frames, [
    { frame: 'heartbeatMany functions/core/session-store.ts:547', selfMs: 40, share: 0.8 },
    { frame: '(anonymous) node_modules/ioredis/built/Command.js:119', selfMs: 10, share: 0.2 },
  ]);
  assert.deepEqual(topFrames(profile, 1).frames.map((f) => f.selfMs), [40], 'only the top n');
});
