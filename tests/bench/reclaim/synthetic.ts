// The demo pipeline's simulated users (tools/local-stack/demo-behaviour.ts) as a replayable workload with known
// ground truth: the same plans `npm start` plays, on a longer time scale, turned into the sessions replay.ts takes —
// each turn's message at its arrival, the typing (input, edit, cursor) before it, the answer's `output` and
// inference.completed after it, a long tool call's hold after it, and the end its pipeline sends. What the trace
// cannot say, these sessions know: which quiet is a user thinking and which a tool call, and which sessions are over.
//
// Tokens (the demo has none): a first prompt of FIRST_PROMPT_TOKENS (system prompt and question); each follow-up
// re-sends the context so far plus FOLLOW_UP_TOKENS; an answer has answerMs × tokensPerSecond tokens, so that the
// replay's decode time is the plan's answer time.
import { seededRandom } from '../../../functions/core/seeded-random.ts';
import { planDemo, type DemoEnding, type DemoSessionPlan } from '../../../tools/local-stack/demo-behaviour.ts';
import type { Session, SideEvent, TraceRequest } from './sessions.ts';

/** Prompt tokens of a session's first turn. */
export const FIRST_PROMPT_TOKENS = 1000;
/** Tokens a follow-up adds to the context it re-sends. */
export const FOLLOW_UP_TOKENS = 60;

/** The synthetic workload's shape. */
export interface SyntheticOptions {
  readonly seed: number;
  readonly sessions: number;
  /** How long the behaviour lasts in virtual time (ms); sessions open over its first third. */
  readonly durationMs: number;
  /** Multiplies the demo's pauses (typing, answers, thinking): the demo plays in seconds what users do in minutes. */
  readonly timeScale: number;
  /** Heartbeat interval and missed beats the sessions promise (a tool call's hold outlasts the window they make). */
  readonly heartbeatIntervalMs: number;
  readonly missedBeats: number;
  readonly tokensPerSecond: number;
}

/** A synthetic session, with its plan's ending. */
export interface SyntheticSession extends Session {
  readonly ending: DemoEnding;
}

/**
 * Builds the workload: each plan's times laid out from its start (typing steps, message, answer, tool call up to its
 * heartbeats' return, thinking), and its end as its pipeline sends it — closes and completes after the last think,
 * vanishes once the heartbeat window after the last think has passed (the deadline engine's expiry), walks-away never
 * (only the policy can find it).
 */
export function syntheticSessions(options: SyntheticOptions): SyntheticSession[] {
  const plans = planDemo(seededRandom(options.seed), {
    sessions: options.sessions, durationMs: options.durationMs, heartbeatIntervalMs: options.heartbeatIntervalMs, missedBeats: options.missedBeats, timeScale: options.timeScale,
  });
  return plans.map((plan, id) => sessionOf(plan, id, options));
}

function sessionOf(plan: DemoSessionPlan, id: number, options: SyntheticOptions): SyntheticSession {
  const turns: TraceRequest[] = [];
  const events: SideEvent[] = [];
  let t = Math.round(plan.startDelayMs);
  let context = 0;
  plan.turns.forEach((turn, i) => {
    for (const step of turn.typing) {
      events.push({ atMs: t, kind: step.kind, ...(step.text === undefined ? {} : { text: step.text }) });
      t += step.pauseAfterMs;
    }
    const inputTokens = i === 0 ? FIRST_PROMPT_TOKENS : context + FOLLOW_UP_TOKENS;
    const outputTokens = Math.max(1, Math.round((turn.answerMs / 1000) * options.tokensPerSecond));
    turns.push({ index: i, arrivalMs: t, inputTokens, outputTokens, hashIds: [] });
    context = inputTokens + outputTokens;
    t += turn.answerMs;
    if (turn.toolCall !== undefined) {
      events.push({ atMs: t, kind: 'hold', holdMs: turn.toolCall.holdMs });
      t += turn.toolCall.resumeAfterMs;
    }
    t += turn.thinkMs;
  });
  const endAtMs = plan.ending === 'closes' || plan.ending === 'completes' ? t : plan.ending === 'vanishes' ? t + options.heartbeatIntervalMs * options.missedBeats : undefined;
  return {
    id,
    turns,
    parents: turns.map((_, i) => (i === 0 ? undefined : i - 1)),
    ending: plan.ending,
    synthetic: {
      events,
      prompts: plan.turns.map((turn) => turn.prompt),
      replies: plan.turns.map((turn) => turn.reply),
      quietCauses: plan.turns.map((turn) => (turn.toolCall === undefined ? 'thinking' : 'tool call')),
      ...(endAtMs === undefined ? {} : { endAtMs }),
    },
  };
}
