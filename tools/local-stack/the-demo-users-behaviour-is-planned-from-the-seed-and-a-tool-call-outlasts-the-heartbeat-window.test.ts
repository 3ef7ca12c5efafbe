// The demo's simulated users (demo-behaviour.ts), which `npm start` plays and the reclamation bench replays: one seed
// gives the same plans, every message is typed first, a tool call's hold outlasts the heartbeat window with heartbeats
// back before it ends, and turns go on for the planned life (at least one).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { seededRandom } from '../../functions/core/seeded-random.ts';
import { DEMO_ENDINGS, planDemo, type DemoSessionPlan } from './demo-behaviour.ts';

const shape = { sessions: 40, durationMs: 60_000, heartbeatIntervalMs: 1000, missedBeats: 3 };
const plannedMs = (plan: DemoSessionPlan) =>
  plan.turns.reduce((sum, t) => sum + t.typing.reduce((a, s) => a + s.pauseAfterMs, 0) + t.answerMs + (t.toolCall?.resumeAfterMs ?? 0) + t.thinkMs, 0);

test('one seed gives the same plans, another seed others', () => {
  assert.deepEqual(planDemo(seededRandom(3), shape), planDemo(seededRandom(3), shape));
  assert.notDeepEqual(planDemo(seededRandom(3), shape), planDemo(seededRandom(4), shape));
});

test('each plan types before it sends, holds past the heartbeat window for a tool call, and lives its planned time', () => {
  const plans = planDemo(seededRandom(11), shape);
  const window = shape.heartbeatIntervalMs * shape.missedBeats;
  let toolCalls = 0;
  plans.forEach((plan, i) => {
    assert.ok(DEMO_ENDINGS.some(([e]) => e === plan.ending));
    assert.ok(plan.turns.length >= 1);
    assert.ok(plannedMs({ ...plan, turns: plan.turns.slice(0, -1) }) < plan.lifeMs, `session ${i}: no turn begun past its life`);
    assert.ok(plannedMs(plan) >= plan.lifeMs, `session ${i}: turns fill its life`);
    if (i > 0) assert.ok(plan.startDelayMs >= 0 && plan.startDelayMs <= shape.durationMs / 3);
    for (const turn of plan.turns) {
      assert.ok(turn.typing.length >= 2 && turn.typing.every((s) => s.pauseAfterMs >= 100 && s.pauseAfterMs <= 500), 'typed in steps');
      assert.ok(turn.typing.filter((s) => s.kind === 'input').every((s) => turn.prompt.startsWith(s.text!)), 'input is the prompt so far');
      if (turn.toolCall) {
        toolCalls++;
        assert.ok(turn.toolCall.holdMs > window, 'a tool call outlasts the heartbeat window');
        assert.ok(turn.toolCall.resumeAfterMs < turn.toolCall.holdMs, 'heartbeats are back before the hold ends');
      }
    }
    assert.ok(plan.turns.filter((t) => t.toolCall).length <= 1, 'at most one tool call a session');
  });
  assert.ok(toolCalls > 0, 'some sessions call tools');
});

test('the time scale stretches every pause of the users and nothing else', () => {
  const [one] = planDemo(seededRandom(5), { ...shape, sessions: 1 });
  const [slow] = planDemo(seededRandom(5), { ...shape, sessions: 1, durationMs: 20 * shape.durationMs, timeScale: 20 });
  const [a, b] = [one!.turns[0]!, slow!.turns[0]!];
  // Each pause is rounded to the millisecond after scaling: within 20 × 0.5 + 0.5 ms of twenty times the demo's.
  const close = (x: number, y: number) => Math.abs(x - 20 * y) <= 10.5;
  assert.ok(close(b.thinkMs, a.thinkMs) && close(b.answerMs, a.answerMs), `${b.thinkMs} vs ${a.thinkMs}, ${b.answerMs} vs ${a.answerMs}`);
  assert.ok(b.typing.every((step, i) => close(step.pauseAfterMs, a.typing[i]!.pauseAfterMs)));
  assert.deepEqual([b.prompt, b.reply, slow!.ending], [a.prompt, a.reply, one!.ending]);
});
