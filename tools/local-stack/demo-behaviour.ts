// What the demo's simulated users do, as plans: pure and seedable, no I/O and no clock. The demo pipeline
// (demo-pipeline.ts) plays each plan against the Broker in real time; the reclamation bench (tests/bench/reclaim)
// replays the same plans in virtual time, on a longer time scale, knowing which sessions are really over and which
// users are only thinking or waiting for a tool.
//
// A user types their prompt in a few steps (input, sometimes an edit and a cursor move), sends it (message), the model
// answers (output, then inference.completed); now and then a long tool call follows under a hold (no heartbeats
// meanwhile), then the user thinks before the next prompt. Once its life is spent the session ends as planned: the user
// closes the tab (session.closed), the work completes (inference.completed with release), the user walks away with
// the tab open (activity stops, heartbeats go on), or the client vanishes (heartbeats stop).
import type { ActivityKind } from '../../functions/core/contract/events.ts';

/** How a demo session is meant to end (the system may end it otherwise first). */
export type DemoEnding = 'closes' | 'completes' | 'walks-away' | 'vanishes';

/** Each ending and its share of sessions. */
export const DEMO_ENDINGS: ReadonlyArray<readonly [DemoEnding, number]> = [['closes', 0.3], ['completes', 0.25], ['walks-away', 0.2], ['vanishes', 0.25]];

export const PROMPTS = [
  'Summarise the quarterly report in three bullet points.',
  'Why does my Kubernetes pod keep restarting with exit code 137?',
  'Write a haiku about garbage collection.',
  'Translate "the meeting moved to Thursday" into French and German.',
  'Refactor this function to avoid the nested loops, please.',
  'What are the trade-offs between Redis Cluster and a single primary?',
  'Draft a polite reply declining the invitation.',
  'Explain exactly-once delivery as if I were new to distributed systems.',
  'Find the bug: the total is off by one on the last page.',
  'Plan a three-day trip to Lisbon on a budget.',
];
export const FOLLOW_UPS = ['Can you make it shorter?', 'Now add an example.', 'What about the edge cases?', 'Great, and in Python?', 'Why is that faster?', 'Give me a second option.'];
export const REPLIES = ['Here is a summary of the main points.', 'The usual cause is the OOM killer; check the memory limit.', 'Sure — here is a version with an example.', 'Done. I kept the behaviour the same.'];
export const TOOLS = ['web search', 'code interpreter', 'vector store lookup', 'spreadsheet export', 'batch embedding job'];
export const CLOSE_REASONS = ['user closed the tab', 'user signed out', 'conversation finished'];

/** One keystroke-level step before a message: its activity, and the pause after it (ms). */
export interface TypingStep {
  readonly kind: Extract<ActivityKind, 'input' | 'edit' | 'cursor'>;
  readonly text?: string;
  readonly pauseAfterMs: number;
}

/** A long tool call after a turn: a hold of holdMs; heartbeats stop and resume resumeAfterMs later (before it ends). */
export interface ToolCallPlan {
  readonly tool: string;
  readonly holdMs: number;
  readonly resumeAfterMs: number;
}

/** One exchange: typing, the message, the model's answer after answerMs, maybe a tool call, then thinkMs of quiet. */
export interface DemoTurnPlan {
  readonly typing: readonly TypingStep[];
  readonly prompt: string;
  readonly answerMs: number;
  readonly reply: string;
  readonly toolCall?: ToolCallPlan;
  readonly thinkMs: number;
}

/** One simulated user's whole session. */
export interface DemoSessionPlan {
  readonly ending: DemoEnding;
  /** When the session opens, from the start of the demo (ms). */
  readonly startDelayMs: number;
  /** How long its turns go on: turns are planned while their planned time is short of this (at least one). */
  readonly lifeMs: number;
  readonly turns: readonly DemoTurnPlan[];
  readonly closeReason: string;
}

/** The demo's shape, as the plans need it. */
export interface DemoShape {
  /** Sessions in the demo, and this one's position (they open over the first third of durationMs). */
  readonly sessions: number;
  readonly index: number;
  /** About how long the sessions' behaviour lasts (ms). */
  readonly durationMs: number;
  /** The heartbeat interval and missed beats the sessions promise: a tool call's hold outlasts that window. */
  readonly heartbeatIntervalMs: number;
  readonly missedBeats: number;
  /** Multiplies every pause of the users' behaviour (typing, answers, thinking); the demo plays at 1. Default 1. */
  readonly timeScale?: number;
}

/** Draws an ending by DEMO_ENDINGS' shares. */
export function chooseEnding(random: () => number): DemoEnding {
  let r = random();
  for (const [ending, weight] of DEMO_ENDINGS) if ((r -= weight) < 0) return ending;
  return 'closes';
}

/** Plans one session's behaviour from `random` (a seeded stream gives the same plan every time). */
export function planDemoSession(random: () => number, shape: DemoShape): DemoSessionPlan {
  const scale = shape.timeScale ?? 1;
  const between = (lo: number, hi: number) => lo + (hi - lo) * random();
  const pause = (lo: number, hi: number) => Math.round(between(lo, hi) * scale);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
  const ending = chooseEnding(random);
  const startDelayMs = (shape.durationMs / 3) * (shape.sessions === 1 ? 0 : shape.index / (shape.sessions - 1)) * between(0.8, 1);
  const lifeMs = between(0.3, 0.66) * shape.durationMs;
  const window = shape.heartbeatIntervalMs * shape.missedBeats;
  const turns: DemoTurnPlan[] = [];
  let tools = random() < 0.35 ? 1 : 0;
  let prompt = pick(PROMPTS);
  let planned = 0;
  while (planned < lifeMs || turns.length === 0) {
    const words = prompt.split(' ');
    const steps = Math.min(words.length, 2 + Math.floor(random() * 3));
    const typing: TypingStep[] = [];
    for (let i = 1; i <= steps; i++) {
      typing.push({ kind: 'input', text: words.slice(0, Math.ceil((words.length * i) / (steps + 1))).join(' '), pauseAfterMs: pause(150, 500) });
    }
    if (random() < 0.4) typing.push({ kind: 'edit', text: prompt.slice(0, -5), pauseAfterMs: pause(100, 300) });
    if (random() < 0.3) typing.push({ kind: 'cursor', pauseAfterMs: pause(100, 400) });
    const answerMs = pause(300, 1200);
    const reply = pick(REPLIES);
    let toolCall: ToolCallPlan | undefined;
    if (tools > 0 && random() < 0.6) {
      tools--;
      // The hold outlasts the heartbeat window; heartbeats resume half a window before it ends, so the first lands in time.
      const holdMs = Math.round(between(window * 1.5, window * 2.5));
      toolCall = { tool: pick(TOOLS), holdMs, resumeAfterMs: holdMs - Math.max(shape.heartbeatIntervalMs, window / 2) };
    }
    const thinkMs = pause(700, 2500);
    turns.push({ typing, prompt, answerMs, reply, ...(toolCall === undefined ? {} : { toolCall }), thinkMs });
    planned += typing.reduce((sum, t) => sum + t.pauseAfterMs, 0) + answerMs + (toolCall?.resumeAfterMs ?? 0) + thinkMs;
    prompt = pick(FOLLOW_UPS);
  }
  return { ending, startDelayMs, lifeMs, turns, closeReason: pick(CLOSE_REASONS) };
}

/** Plans every session of a demo from one seed, in order: the same seed gives the same plans. */
export function planDemo(random: () => number, shape: Omit<DemoShape, 'index'>): DemoSessionPlan[] {
  return Array.from({ length: shape.sessions }, (_, index) => planDemoSession(random, { ...shape, index }));
}
