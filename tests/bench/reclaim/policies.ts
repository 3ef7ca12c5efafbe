// The reclamation policies the bench compares. Fixed ones (a timeout, or demote after d and destroy after D, counted
// from the session's latest event) are the anchors; activity-score's is the function's own code, driven through the
// same exported functions its handler and idle checker call; the return-probability policy is fitted on one part of
// the trace and judged on another; the oracle knows each session's future and marks the corner nobody can reach.
import { firstCheckAt, judgeDemote, judgeIdleness } from '../../../functions/activity-score/idle-judgement.ts';
import { evaluateLoadTier } from '../../../functions/activity-score/load-policy.ts';
import type { ActivityKind } from '../../../functions/core/contract/events.ts';
import { applyActivity, applyCompletion, initialContext, type ActivityContext } from '../../../functions/activity-score/scoring.ts';
import { policyFor, readActivityScoreSettings, type ActivityScoreSettings } from '../../../functions/activity-score/settings.ts';
import type { CheckVerdict, CheckView, ReclaimPolicy, SessionReclaimer } from './replay.ts';
import type { Session } from './sessions.ts';

/** The tenant every replayed session belongs to (TENANT_POLICIES may name it). */
export const TRACE_TENANT = 'trace';

/** Demote after `demoteAfterMs` (if given) and destroy after `destroyAfterMs` of quiet since the latest event. */
export function twoTier(name: string, demoteAfterMs: number | undefined, destroyAfterMs: number): ReclaimPolicy {
  return { name, start: () => quietTimer(() => demoteAfterMs, () => destroyAfterMs) };
}

/** Destroy after `timeoutMs` of quiet since the latest event. */
export function fixedTimeout(timeoutMs: number): ReclaimPolicy {
  return twoTier(`fixed ${formatDuration(timeoutMs)}`, undefined, timeoutMs);
}

// A reclaimer that demotes and destroys at quiet times it asks for after each event.
function quietTimer(demoteAfter: () => number | undefined, destroyAfter: () => number, hooks: { onTurn?(at: number, lastEventAt: number | undefined): void } = {}): SessionReclaimer {
  let last: number | undefined;
  return {
    onTurn(at) {
      hooks.onTurn?.(at, last);
      last = at;
    },
    onCompleted(at) {
      last = at;
    },
    // Any event the pipeline sends restarts the quiet time; a fixed timeout knows nothing of how long a hold lasts.
    onActivity(at) {
      last = at;
    },
    onHold(at) {
      last = at;
    },
    firstCheckAt() {
      if (last === undefined) return undefined;
      const d = demoteAfter();
      return last + (d ?? destroyAfter());
    },
    check(now: number, view: CheckView): CheckVerdict {
      const since = last ?? now;
      const destroyAt = since + destroyAfter();
      if (now >= destroyAt) return { destroy: true, demote: false, nextCheckAt: undefined };
      const d = demoteAfter();
      const demoteMoment = d === undefined || !view.resident ? undefined : since + d;
      const demote = demoteMoment !== undefined && now >= demoteMoment;
      return { destroy: false, demote, nextCheckAt: demoteMoment !== undefined && !demote ? Math.min(demoteMoment, destroyAt) : destroyAt };
    },
  };
}

/** Frees each session's KV the moment its last turn completes and never before: zero waste, zero re-prefill. */
export function oracle(): ReclaimPolicy {
  return {
    name: 'oracle (knows the future)',
    start(session: Session) {
      let arrived = 0;
      let completed = 0;
      const over = () => arrived === session.turns.length && completed === arrived;
      return {
        onTurn: () => void arrived++,
        onCompleted: () => void completed++,
        onActivity: () => undefined,
        onHold: () => undefined,
        firstCheckAt: (now) => (over() ? now : undefined),
        check: () => ({ destroy: over(), demote: false, nextCheckAt: undefined }),
      };
    },
  };
}

/**
 * activity-score's policy, from the same settings the function reads (`env` as its environment: TENANT_POLICIES,
 * DEMOTE_QUIET_MS, IDLE_GRACE_MS, LOAD_POLICY ...). Each turn is folded as the handler folds it (a fresh context at the
 * first event, applyActivity for the message, applyCompletion for inference.completed, the tenant's policy at the
 * normal tier), the first look is the handler's firstCheckAt, and each look is the idle checker's: judgeIdleness under
 * the tier in force (idle = destroy), else judgeDemote under the same tier while the KV is on the GPU (demote now, or
 * look again at the earlier of its nextCheckAt and judgeIdleness's). The load tier is evaluateLoadTier's, from the
 * replay's event rate and pool pressure. Signals the trace lacks (typing, edits, cursor, text, embeddings, holds) are
 * absent: every activity is a `message` without text.
 */
export function activityScore(name: string, env: Readonly<Record<string, string>> = {}): ReclaimPolicy {
  const settings = readActivityScoreSettings({ ...env });
  return {
    name,
    start: () => activityScoreReclaimer(settings),
    loadTier: {
      everyMs: settings.loadPolicy.evaluateEveryMs,
      evaluate: (eventsPerSecond, memory, previous) => evaluateLoadTier({ eventsPerSecond, memory }, settings.loadPolicy, previous),
    },
  };
}

function activityScoreReclaimer(settings: ActivityScoreSettings): SessionReclaimer {
  const policy = policyFor(settings, TRACE_TENANT, 'normal');
  let ctx: ActivityContext | undefined;
  let holdUntil: number | undefined;
  const fold = (at: number, kind: ActivityKind, text: string | undefined) => {
    ctx = applyActivity(ctx ?? initialContext(at, policy), { kind, at, ...(text === undefined ? {} : { text }) }, policy);
  };
  return {
    onTurn(at, text) {
      fold(at, 'message', text);
    },
    onCompleted(at, reply) {
      if (reply !== undefined) fold(at, 'output', reply);
      ctx = applyCompletion(ctx ?? initialContext(at, policy), { at, release: false }, policy);
    },
    onActivity(at, kind, text) {
      fold(at, kind, text);
    },
    onHold(_at, untilMs) {
      holdUntil = Math.max(holdUntil ?? 0, untilMs);
    },
    firstCheckAt(now, tier) {
      return ctx === undefined ? undefined : firstCheckAt(settings, ctx, now, TRACE_TENANT, holdUntil, tier);
    },
    check(now, view) {
      if (ctx === undefined) return { destroy: false, demote: false, nextCheckAt: undefined };
      const judgement = judgeIdleness(settings, ctx, now, { tenant: TRACE_TENANT, tier: view.tier, holdUntil, demoted: !view.resident });
      if (judgement.decision.idle) return { destroy: true, demote: false, nextCheckAt: undefined };
      let nextCheckAt = judgement.nextCheckAt;
      // A held session is never demoted (request-demote-2.lua refuses it): the checker looks again when the idle
      // verdict says, as the deployed checker does after a refused request.
      if (holdUntil !== undefined && holdUntil > now) return { destroy: false, demote: false, nextCheckAt: nextCheckAt ?? holdUntil };
      const demote = view.resident ? judgeDemote(settings, ctx, now, view.tier, holdUntil) : { demote: false };
      if (demote.nextCheckAt !== undefined) nextCheckAt = nextCheckAt === undefined ? demote.nextCheckAt : Math.min(nextCheckAt, demote.nextCheckAt);
      return { destroy: false, demote: demote.demote, nextCheckAt };
    },
  };
}

/** What a session looks like at the start of a quiet spell, as the return-probability policy classifies it. */
export type SpellClass = 'first turn' | 'think < 60 s' | 'think 60-300 s' | 'think > 300 s';

/** Every class, in order. */
export const SPELL_CLASSES: readonly SpellClass[] = ['first turn', 'think < 60 s', 'think 60-300 s', 'think > 300 s'];

/** The class of a spell from the user's latest think time (quiet before their latest turn), if any. */
export function spellClass(lastThinkMs: number | undefined): SpellClass {
  if (lastThinkMs === undefined) return 'first turn';
  return lastThinkMs < 60_000 ? 'think < 60 s' : lastThinkMs <= 300_000 ? 'think 60-300 s' : 'think > 300 s';
}

/** Kaplan–Meier survival of the quiet time until the next turn, per class; survival(q) = P(quiet lasts beyond q). */
export interface ReturnModel {
  readonly horizonMs: number;
  /** Observations (spells) per class, and how many of them ended with a return. */
  readonly counts: Readonly<Record<SpellClass, { spells: number; returns: number }>>;
  survival(cls: SpellClass, quietMs: number): number;
}

/** One observed quiet spell: its class, how long it was watched, and whether the user came back in that time. */
export interface SpellObservation {
  readonly cls: SpellClass;
  readonly quietMs: number;
  readonly returned: boolean;
}

/**
 * The quiet spells of turns that arrived before `untilMs`, watched only until `untilMs` (a return after it is not
 * seen: censored), with completions `outputTokens / tokensPerSecond` after arrival, as the replay has them.
 */
export function observeSpells(sessions: readonly Session[], untilMs: number, tokensPerSecond: number): SpellObservation[] {
  const out: SpellObservation[] = [];
  for (const session of sessions) {
    let lastCompletion: number | undefined;
    session.turns.forEach((turn, i) => {
      if (turn.arrivalMs >= untilMs) return;
      const think = lastCompletion === undefined ? undefined : Math.max(0, turn.arrivalMs - lastCompletion);
      const completion = turn.arrivalMs + (turn.outputTokens / tokensPerSecond) * 1000;
      lastCompletion = completion;
      const next = session.turns[i + 1];
      if (completion >= untilMs) return;
      if (next !== undefined && next.arrivalMs < completion) return; // the next turn came while this one ran: no spell
      const returned = next !== undefined && next.arrivalMs < untilMs;
      out.push({ cls: spellClass(think), quietMs: (returned ? next.arrivalMs : untilMs) - completion, returned });
    });
  }
  return out;
}

/** Fewest spells a class needs for a curve of its own; a class with fewer uses the curve of all spells together. */
export const MIN_SPELLS_PER_CLASS = 30;

// Kaplan–Meier: at each quiet time with returns, survival falls by returns / spells still watched.
function kaplanMeier(observations: readonly SpellObservation[]): Array<[number, number]> {
  const obs = [...observations].sort((a, b) => a.quietMs - b.quietMs);
  const curve: Array<[number, number]> = [];
  let atRisk = obs.length;
  let s = 1;
  for (let i = 0; i < obs.length; ) {
    const t = obs[i]!.quietMs;
    let returns = 0;
    let leaving = 0;
    while (i < obs.length && obs[i]!.quietMs === t) {
      if (obs[i]!.returned) returns++;
      leaving++;
      i++;
    }
    if (returns > 0) {
      s *= 1 - returns / atRisk;
      curve.push([t, s]);
    }
    atRisk -= leaving;
  }
  return curve;
}

/**
 * Fits Kaplan–Meier survival curves per class to observed spells (a censored spell counts as watched until it was
 * cut off); a class with fewer than MIN_SPELLS_PER_CLASS spells gets the curve of all spells.
 */
export function fitReturnModel(observations: readonly SpellObservation[], horizonMs = 1_800_000): ReturnModel {
  const pooled = kaplanMeier(observations);
  const curves = new Map<SpellClass, Array<[number, number]>>();
  const counts = {} as Record<SpellClass, { spells: number; returns: number }>;
  for (const cls of SPELL_CLASSES) {
    const obs = observations.filter((o) => o.cls === cls);
    counts[cls] = { spells: obs.length, returns: obs.filter((o) => o.returned).length };
    curves.set(cls, obs.length >= MIN_SPELLS_PER_CLASS ? kaplanMeier(obs) : pooled);
  }
  return {
    horizonMs,
    counts,
    survival(cls, quietMs) {
      const curve = curves.get(cls) ?? [];
      let s = 1;
      for (const [t, value] of curve) {
        if (t > quietMs) break;
        s = value;
      }
      return s;
    },
  };
}

/** P(the user sends another turn within the model's horizon | quiet for `quietMs` so far), from the fitted survival. */
export function returnProbability(model: ReturnModel, cls: SpellClass, quietMs: number): number {
  const now = model.survival(cls, quietMs);
  return now <= 0 ? 0 : Math.max(0, 1 - model.survival(cls, model.horizonMs) / now);
}

/** Per class, the least quiet time (on a 5 s grid, at most the horizon) at which the return probability is below `p`. */
export function timeoutsFor(model: ReturnModel, p: number): Record<SpellClass, number> {
  const out = {} as Record<SpellClass, number>;
  for (const cls of SPELL_CLASSES) {
    let q = 0;
    while (q < model.horizonMs && returnProbability(model, cls, q) >= p) q += 5_000;
    out[cls] = q;
  }
  return out;
}

/**
 * Destroys a session once the chance that its user comes back (fitted per class, see fitReturnModel) falls below `p`:
 * a timeout per class, chosen afresh at each turn from the user's latest think time; optionally demotes after
 * `demoteAfterMs` first.
 */
export function returnProbabilityPolicy(name: string, timeouts: Readonly<Record<SpellClass, number>>, demoteAfterMs?: number): ReclaimPolicy {
  return {
    name,
    start() {
      let cls: SpellClass = 'first turn';
      let lastCompletion: number | undefined;
      const timer = quietTimer(
        () => (demoteAfterMs !== undefined && demoteAfterMs < timeouts[cls] ? demoteAfterMs : undefined),
        () => timeouts[cls],
        { onTurn: (at) => void (cls = spellClass(lastCompletion === undefined ? undefined : Math.max(0, at - lastCompletion))) },
      );
      return {
        ...timer,
        onCompleted(at) {
          lastCompletion = at;
          timer.onCompleted(at);
        },
      };
    },
  };
}

/** A duration as the tables print it: 30 s, 2 min, 1 min 30 s. */
export function formatDuration(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  const min = Math.floor(s / 60);
  return s % 60 === 0 ? `${min} min` : `${min} min ${s % 60} s`;
}
