import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  applyActivity,
  applyCompletion,
  belowThresholdFrom,
  DEFAULT_SCORING_POLICY as policy,
  idleDecision,
  initialContext,
  score,
  silenceThresholdMs,
  type ActivityContext,
  type ActivityEvent,
  type ActivityKind,
} from './scoring.ts';

const T0 = Date.parse('2025-01-01T00:00:00Z');

function replay(events: ActivityEvent[], ctx: ActivityContext = initialContext(T0, policy)): ActivityContext {
  return events.reduce((acc, event) => applyActivity(acc, event, policy), ctx);
}

function every(kind: ActivityKind, from: number, count: number, gapMs: number): ActivityEvent[] {
  return Array.from({ length: count }, (_, i) => ({ kind, at: from + i * gapMs }));
}

// A user who types for two minutes, one input event every two seconds, then stops.
const typist = replay(every('input', T0 + 1000, 60, 2000));
const stoppedAt = typist.lastEventAt;

test('a user typing steadily scores well above the threshold and is active', () => {
  for (const after of [0, 1000, 5000]) {
    const decision = idleDecision(typist, stoppedAt + after, policy);
    assert.ok(decision.score > 0.9, `score ${decision.score} after ${after} ms`);
    assert.equal(decision.idle, false);
    assert.equal(decision.reason, 'active');
    assert.equal(decision.belowSince, undefined);
  }
  assert.ok(typist.rates.input > 25 && typist.rates.input < 32, `input rate ${typist.rates.input}/min for 30/min typed`);
});

test('a pause within the user’s own rhythm keeps timing at full, while the same pause is long for a faster user', () => {
  // A slow, thoughtful chatter: a message every 40 to 60 seconds.
  const chatter = replay(Array.from({ length: 12 }, (_, i) => ({ kind: 'message' as const, at: T0 + 5000 + i * 50_000 + (i % 2 ? 10_000 : -10_000) })));
  const pause = 70_000;
  const slow = score(chatter, chatter.lastEventAt + pause, policy);
  assert.equal(slow.components.timing, 1, 'a 70 s pause is within the rhythm of someone who writes every ~50 s');
  assert.ok(slow.score >= policy.threshold, `score ${slow.score} after a pause within the rhythm`);
  assert.equal(idleDecision(chatter, chatter.lastEventAt + pause, policy).idle, false);

  const fast = score(typist, stoppedAt + pause, policy);
  assert.ok(fast.components.timing < 0.1, `the same pause is long for a typist: timing ${fast.components.timing}`);
  assert.ok(silenceThresholdMs(chatter, policy) > silenceThresholdMs(typist, policy));
  assert.equal(silenceThresholdMs(typist, policy), policy.timing.floorMs, 'a very fast rhythm is held at the floor');
});

test('a long silence decays every component and idles the session only after a full grace window below the threshold', () => {
  const withSemantics = replay(
    [
      { kind: 'message', at: stoppedAt + 500, text: 'How do I deploy the reaper on Knative?' },
      { kind: 'message', at: stoppedAt + 1500, text: 'And how do I deploy the reaper with Istio?' },
    ],
    typist,
  );
  const last = withSemantics.lastEventAt;
  const fresh = score(withSemantics, last, policy).components;
  const later = score(withSemantics, last + 10 * 60_000, policy).components;
  assert.ok(fresh.semantic > 0.5, `related messages give continuity ${fresh.semantic}`);
  for (const name of ['behavior', 'semantic', 'timing'] as const) {
    assert.ok(later[name] < fresh[name] / 4, `${name} ${fresh[name]} -> ${later[name]} after 10 min`);
  }

  const belowSince = belowThresholdFrom(withSemantics, policy);
  assert.ok(belowSince !== undefined && belowSince > last, 'it was above the threshold when it went quiet');
  assert.ok(score(withSemantics, belowSince - 1, policy).score >= policy.threshold);
  assert.ok(score(withSemantics, belowSince, policy).score < policy.threshold);

  const justBefore = idleDecision(withSemantics, belowSince + policy.graceMs - 1, policy);
  assert.equal(justBefore.idle, false);
  assert.equal(justBefore.reason, 'in-grace');
  assert.equal(justBefore.belowSince, belowSince);
  assert.equal(justBefore.idleAt, belowSince + policy.graceMs);

  const atGrace = idleDecision(withSemantics, belowSince + policy.graceMs, policy);
  assert.equal(atGrace.idle, true);
  assert.equal(atGrace.reason, 'below-threshold-for-grace');
  assert.equal(atGrace.idleAt, belowSince + policy.graceMs);
});

test('any activity restarts the grace window', () => {
  const belowSince = belowThresholdFrom(typist, policy)!;
  const nudgeAt = belowSince + policy.graceMs - 5000;
  const nudged = applyActivity(typist, { kind: 'cursor', at: nudgeAt }, policy);
  const decision = idleDecision(nudged, belowSince + policy.graceMs + 1000, policy);
  assert.equal(decision.idle, false, 'without the nudge it would be idle by now');
  assert.equal(idleDecision(typist, belowSince + policy.graceMs + 1000, policy).idle, true);
  assert.ok(decision.belowSince === undefined || decision.belowSince >= nudgeAt);
  assert.ok(decision.idleAt !== undefined && decision.idleAt >= nudgeAt + policy.graceMs);
});

test('an active hold keeps a quiet session from being idle, and its quiet is timed from the hold\'s end', () => {
  const idleFrom = idleDecision(typist, stoppedAt + 3_600_000, policy).idleAt!;
  const quietNeeded = idleFrom - typist.lastEventAt;
  const now = idleFrom + 10_000;
  const held = idleDecision(typist, now, policy, { holdUntil: now + 30_000 });
  assert.equal(held.idle, false);
  assert.equal(held.reason, 'held');
  assert.equal(held.idleAt, now + 30_000 + quietNeeded, 'idle only after as much quiet after the hold as without one');

  // A tool call that returns sends nothing: the hold ends, and the quiet before it does not count again.
  const ended = idleDecision(typist, now, policy, { holdUntil: now });
  assert.equal(ended.idle, false, 'not ended the moment its hold ran out');
  assert.equal(ended.idleAt, now + quietNeeded);
  assert.equal(idleDecision(typist, now + quietNeeded - 1, policy, { holdUntil: now }).idle, false);
  assert.equal(idleDecision(typist, now + quietNeeded, policy, { holdUntil: now }).idle, true, 'then idle, as without a hold');
  // A hold that ended before the last event covers none of the quiet since.
  assert.equal(idleDecision(typist, now, policy, { holdUntil: typist.lastEventAt - 1 }).idle, true);
  assert.equal(idleDecision(typist, now, policy, { holdUntil: typist.lastEventAt }).idle, true);
});

test('a completion that asks for release ends the session at once where enabled, unless held or followed by user activity', () => {
  const honoring = { ...policy, honorRelease: true };
  const answered = applyCompletion(typist, { at: stoppedAt + 2000, release: false }, policy);
  assert.equal(idleDecision(answered, stoppedAt + 2500, policy).idle, false);
  assert.equal(answered.lastEventAt, stoppedAt + 2000, 'the answer restarts the silence');

  const released = applyCompletion(typist, { at: stoppedAt + 2000, release: true }, honoring);
  const decision = idleDecision(released, stoppedAt + 2500, honoring);
  assert.equal(decision.idle, true);
  assert.equal(decision.reason, 'release-requested');
  assert.equal(idleDecision(released, stoppedAt + 2500, honoring, { holdUntil: stoppedAt + 9000 }).idle, false);

  const ignoring = { ...policy, honorRelease: false };
  assert.equal(policy.honorRelease, false, 'off by default: destroy-dispatch ends such a session as completed');
  assert.equal(idleDecision(applyCompletion(typist, { at: stoppedAt + 2000, release: true }, ignoring), stoppedAt + 2500, ignoring).idle, false);

  const resumed = applyActivity(released, { kind: 'input', at: stoppedAt + 2400 }, honoring);
  assert.equal(resumed.releaseRequestedAt, undefined);
  assert.equal(idleDecision(resumed, stoppedAt + 2500, honoring).idle, false);
  const late = applyActivity(released, { kind: 'input', at: stoppedAt + 1000 }, honoring);
  assert.equal(late.releaseRequestedAt, stoppedAt + 2000, 'input from before the release does not cancel it');
});

test('a session that never shows activity goes idle one grace window after it was opened', () => {
  const opened = initialContext(T0, policy);
  assert.equal(idleDecision(opened, T0 + policy.graceMs - 1, policy).idle, false);
  assert.equal(idleDecision(opened, T0 + policy.graceMs, policy).idle, true);
});

test('the expected end of the quiet spell follows the mean of the user’s gaps', () => {
  assert.ok(Math.abs(typist.gapMeanMs - 2000) < 50, `mean gap ${typist.gapMeanMs}`);
  assert.equal(typist.predictedIdleEndAt, stoppedAt + typist.gapMeanMs);
  const answered = applyCompletion(typist, { at: stoppedAt + 3000, release: false }, policy);
  assert.equal(answered.predictedIdleEndAt, stoppedAt + 3000 + typist.gapMeanMs);
});

test('an event older than the last one counts towards the rates but neither rewinds time nor teaches the rhythm', () => {
  const late = applyActivity(typist, { kind: 'edit', at: stoppedAt - 30_000 }, policy);
  assert.equal(late.lastEventAt, stoppedAt);
  assert.equal(late.gapSamples, typist.gapSamples);
  assert.equal(late.gapMeanMs, typist.gapMeanMs);
  assert.ok(late.rates.edit > 0);
  const garbage = applyActivity(typist, { kind: 'input', at: Number.NaN }, policy);
  assert.equal(garbage.lastEventAt, stoppedAt);
  assert.ok(Number.isFinite(score(garbage, stoppedAt, policy).score));
  assert.deepEqual(score(typist, stoppedAt - 60_000, policy), score(typist, stoppedAt, policy), 'asking about the past is asking about the last event');
});

test('model output alone cannot make a session look engaged the way user activity does', () => {
  const streaming = replay(every('output', T0 + 1000, 200, 100));
  const typing = replay(every('input', T0 + 1000, 200, 100));
  const output = score(streaming, streaming.lastEventAt, policy).components.behavior;
  assert.ok(output <= policy.behavior.kindWeight.output + 1e-9, `output-only behaviour ${output}`);
  assert.ok(score(typing, typing.lastEventAt, policy).components.behavior > 0.95);
});

test('cursor dwell adds to behaviour beyond the cursor event rate, and only continuous presence counts as dwell', () => {
  const dwelling = replay(every('cursor', T0 + 1000, 20, 1000));
  assert.ok(dwelling.cursorDwellMs > 15_000, `dwell ${dwelling.cursorDwellMs}`);
  const withDwell = score(dwelling, dwelling.lastEventAt, policy).components.behavior;
  const withoutDwell = score({ ...dwelling, cursorDwellMs: 0 }, dwelling.lastEventAt, policy).components.behavior;
  assert.ok(withDwell > withoutDwell, `${withDwell} > ${withoutDwell}`);

  const passingBy = replay(every('cursor', T0 + 1000, 5, policy.behavior.dwellJoinMs + 1000));
  assert.equal(passingBy.cursorDwellMs, 0, 'cursor events further apart than dwellJoinMs are not a dwell');
});
