// The stack's supervision as its user sees it: a part that keeps crashing waits a doubling delay before each restart,
// capped (CrashLoopBackOff's shape, shortened), and every restart shows in the progress line and the report.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { BrokerStats } from '../local-broker/broker.ts';
import { progressLine } from './progress.ts';
import { buildReport, createRunRecorder, formatReport, type GpuFigures } from './report.ts';
import { RESTART_BACKOFF, restartDelayMs } from './stack.ts';

const noGpu: GpuFigures = { registeredBytes: 0, releasedBytes: 0, heldBytes: 0, runtime: undefined, balanced: true, problems: [] };
const brokerStats: BrokerStats = { received: 0, rejected: 0, delivered: 0, retried: 0, deadLettered: 0, dropped: 0, pending: 0, inFlight: 0, recovered: 0, duplicated: 0, reordered: 0, delayed: 0, routes: {} };

test('a part that keeps crashing waits a doubling delay before each restart, up to a cap', () => {
  assert.deepEqual([0, 1, 2, 3].map(restartDelayMs), [250, 500, 1000, 2000]);
  assert.equal(restartDelayMs(30), RESTART_BACKOFF.maxMs);
  assert.ok(RESTART_BACKOFF.maxMs < RESTART_BACKOFF.resetAfterMs, 'a part that runs past the longest delay starts a new streak');
});

test('restarts show in the progress line only once there are some, and always in the report', () => {
  const recorder = createRunRecorder();
  const extras = { pendingDeliveries: 0, deadLetters: 0 };
  assert.doesNotMatch(progressLine(1000, recorder.live(), { ...extras, restarts: { 'destroy-dispatch': 0 } }), /restarts/);
  assert.match(progressLine(1000, recorder.live(), { ...extras, restarts: { 'destroy-dispatch': 2, 'gpu-release': 1 } }), /restarts 3 \(destroy-dispatch 2, gpu-release 1\)/);

  const quiet = buildReport(recorder, noGpu, brokerStats, 0, { 'destroy-dispatch': 0 });
  assert.deepEqual(quiet.restarts, {});
  assert.match(formatReport(quiet), /restarts +none/);
  const crashed = buildReport(recorder, noGpu, brokerStats, 0, { 'destroy-dispatch': 2, 'idle-checker': 0 });
  assert.deepEqual(crashed.restarts, { 'destroy-dispatch': 2 });
  assert.match(formatReport(crashed), /restarts +destroy-dispatch 2/);
});
