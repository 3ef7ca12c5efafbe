// A delivery that gives up is kept as a dead letter; one the store could not keep (full, or a write that failed) is
// only in the Broker's log. The report at stop says how many there were, so a run that lost one to the store does not
// read as a clean one (a CI failure was hard to read for want of it).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { BrokerStats } from '../local-broker/broker.ts';
import { buildReport, createRunRecorder, formatReport, type GpuFigures } from './report.ts';

const noGpu: GpuFigures = { registeredBytes: 0, releasedBytes: 0, heldBytes: 0, runtime: undefined, balanced: true, problems: [] };
const stats = (deadLettered: number, dropped: number): BrokerStats => ({
  received: 3, rejected: 0, delivered: 3 - deadLettered - dropped, retried: 0, deadLettered, dropped, pending: 0, inFlight: 0, recovered: 0, duplicated: 0, reordered: 0, delayed: 0, routes: {},
});

test('the report names the deliveries that gave up and could not be kept, and only when there are some', () => {
  const recorder = createRunRecorder();
  const clean = formatReport(buildReport(recorder, noGpu, stats(1, 0), 1));
  assert.match(clean, /dead letters +1 this run · 1 in the store\n/);
  assert.doesNotMatch(clean, /not kept/);
  const lost = buildReport(recorder, noGpu, stats(1, 2), 1);
  assert.equal(lost.deadLetters.dropped, 2);
  assert.match(formatReport(lost), /dead letters +1 this run · 1 in the store · 2 given up and not kept \(each in the Broker's log\)\n/);
});
