// The synthetic workload (synthetic.ts): the demo's plans laid out in virtual time with their ground truth — typing
// before each message, a hold after each tool call's answer, the quiet after each turn marked thinking or tool call,
// and the end each ending's pipeline sends — and the replay counting a live session wrongly ended by what its quiet
// really was.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { seededRandom } from '../../../functions/core/seeded-random.ts';
import { planDemo } from '../../../tools/local-stack/demo-behaviour.ts';
import { activityScore, fixedTimeout, twoTier } from './policies.ts';
import { replay } from './replay.ts';
import type { Session } from './sessions.ts';
import { FIRST_PROMPT_TOKENS, FOLLOW_UP_TOKENS, syntheticSessions, type SyntheticOptions } from './synthetic.ts';

const tiny: SyntheticOptions = { seed: 5, sessions: 6, durationMs: 600_000, timeScale: 20, heartbeatIntervalMs: 20_000, missedBeats: 3, tokensPerSecond: 50 };

test('a tiny seeded workload is its plans laid out in time, with each quiet and each ending as planned', () => {
  const sessions = syntheticSessions(tiny);
  const plans = planDemo(seededRandom(tiny.seed), { ...tiny });
  assert.deepEqual(syntheticSessions(tiny), sessions, 'the seed fixes the workload');
  assert.equal(sessions.length, tiny.sessions);
  sessions.forEach((s, i) => {
    const plan = plans[i]!;
    const extras = s.synthetic!;
    assert.equal(s.ending, plan.ending);
    assert.equal(s.turns.length, plan.turns.length);
    let t = Math.round(plan.startDelayMs);
    let context = 0;
    let events = 0;
    plan.turns.forEach((turn, k) => {
      // Typing steps, then the message; the answer takes answerMs (its tokens at tokensPerSecond).
      for (const step of turn.typing) {
        assert.deepEqual([extras.events[events]!.atMs, extras.events[events]!.kind], [t, step.kind]);
        events++;
        t += step.pauseAfterMs;
      }
      const r = s.turns[k]!;
      assert.equal(r.arrivalMs, t);
      assert.equal(r.inputTokens, k === 0 ? FIRST_PROMPT_TOKENS : context + FOLLOW_UP_TOKENS);
      assert.ok(Math.abs((r.outputTokens / tiny.tokensPerSecond) * 1000 - turn.answerMs) <= 10);
      context = r.inputTokens + r.outputTokens;
      t += turn.answerMs;
      assert.equal(extras.quietCauses[k], turn.toolCall ? 'tool call' : 'thinking');
      if (turn.toolCall) {
        assert.deepEqual(extras.events[events], { atMs: t, kind: 'hold', holdMs: turn.toolCall.holdMs }, 'held from the answer on');
        events++;
        t += turn.toolCall.resumeAfterMs;
      }
      t += turn.thinkMs;
    });
    assert.equal(events, extras.events.length);
    const window = tiny.heartbeatIntervalMs * tiny.missedBeats;
    const expected = { closes: t, completes: t, vanishes: t + window, 'walks-away': undefined }[s.ending];
    assert.equal(extras.endAtMs, expected, `${s.ending}: ended by its pipeline then`);
  });
  assert.ok(sessions.some((s) => s.synthetic!.quietCauses.includes('tool call')), 'the seed gives a tool call');
  assert.ok(new Set(sessions.map((s) => s.ending)).size >= 3, 'and several endings');
});

// One user, by hand: message at 0 (answered at 10 s), a tool call held for 100 s from 10 s, typing at 150 s, the next
// message at 160 s (answered at 170 s), then thinking 40 s with typing at 200 s, a last message at 210 s (answered at
// 220 s), and the tab closed at 250 s.
const byHand: Session = {
  id: 0,
  turns: [0, 160_000, 210_000].map((arrivalMs, index) => ({ index, arrivalMs, inputTokens: 100, outputTokens: 100, hashIds: [] })),
  parents: [undefined, 0, 1],
  synthetic: {
    events: [{ atMs: 10_000, kind: 'hold', holdMs: 100_000 }, { atMs: 150_000, kind: 'input', text: 'and' }, { atMs: 200_000, kind: 'input', text: 'so' }],
    prompts: ['first question', 'and then?', 'so what?'],
    replies: ['an answer', 'another', 'a third'],
    quietCauses: ['tool call', 'thinking', 'thinking'],
    endAtMs: 250_000,
  },
};
const options = { tokensPerSecond: 10, bytesPerToken: 1 };

test('a fixed timeout ends a long tool call and counts it so; typing keeps a thinking user; the close ends the last quiet', () => {
  const short = replay([byHand], fixedTimeout(60_000), options);
  // Quiet from the hold at 10 s: destroyed at 70 s, mid tool call; the follow-up at 160 s re-prefills its 100 tokens.
  assert.deepEqual([short.premature, short.prematureToolCalls, short.prematureRefillTokens], [1, 1, 100]);
  // The last spell: completed at 220 s, closed at 250 s (before the 60 s timeout): ended by its pipeline.
  assert.equal(short.endedByPipeline, 1);
  assert.equal(short.wasteByteSeconds, 30 * 200);
  const thirtyFive = replay([byHand], fixedTimeout(35_000), options);
  // After 170 s the user types at 200 s (30 s of quiet) and sends at 210 s: never 35 s quiet, so the thinking survives.
  assert.equal(thirtyFive.premature - thirtyFive.prematureToolCalls, 0);
  const long = replay([byHand], fixedTimeout(180_000), options);
  assert.equal(long.premature, 0);
  const pair = replay([byHand], twoTier('demote 1 min / destroy 3 min', 60_000, 180_000), options);
  assert.deepEqual([pair.premature, pair.demotes, pair.restores], [0, 1, 1], 'demoted mid tool call, restored when the user is back');
});

test('activity-score keeps a held session through its hold and times its quiet from the hold\'s end', () => {
  // Without demotes, so that GPU KV is freed only by the idle verdict.
  const settings = { DEMOTE_QUIET_MS: '0', LOAD_EVAL_MS: '3600000' };
  const m = replay([byHand], activityScore('no demote', settings), options);
  const unheld = replay([{ ...byHand, synthetic: { ...byHand.synthetic!, events: byHand.synthetic!.events.slice(1) } }], activityScore('no demote', settings), options);
  assert.equal(m.spells, 3);
  assert.equal(m.endedByPipeline, 1);
  // The tool call returns at 110 s and sends nothing; the user types 40 s later: the quiet before the hold does not
  // count again, so the session is kept until the user is back.
  assert.deepEqual([m.premature, m.prematureToolCalls], [0, 0], 'kept through the hold and the quiet after it');
  // The same quiet without the hold (from the answer at 10 s to the typing at 150 s) is long enough to end it.
  assert.deepEqual([unheld.premature, unheld.prematureToolCalls], [1, 1], 'without the hold it is ended before the user is back');
});
