// The pure decisions activity-score's handler and idle checker share: how a context is kept in its Redis hash, when
// a session's idleness is next worth judging, and what a session.idle says. No I/O.
import type { DataOf, EventType } from '../core/contract/events.ts';
import { LOAD_TIERS, type LoadTier } from './load-policy.ts';
import { decodeContext, encodeContext, heldQuietMs, idleDecision, type ActivityContext, type IdleDecision } from './scoring.ts';
import { policyFor, type ActivityScoreSettings } from './settings.ts';

/**
 * Hash fields activity-score writes beside the ones record-activity-4.lua owns (`v` version, `la` last activity):
 * `c` the whole encoded context as one JSON value, so a field the new context no longer has (a cleared release
 * request, a dropped embedding) cannot linger from an older one; `pi` the predicted end of the current quiet spell
 * (ms), readable on its own by operators.
 */
export const CONTEXT_FIELD = 'c';
export const PREDICTED_IDLE_END_FIELD = 'pi';

/** The hash fields to store a context as (passed to SessionStore.recordActivity). */
export function storedContextFields(ctx: ActivityContext): Record<string, string> {
  return { [CONTEXT_FIELD]: JSON.stringify(encodeContext(ctx)), [PREDICTED_IDLE_END_FIELD]: String(Math.round(ctx.predictedIdleEndAt)) };
}

/** Reads a context back from its hash; undefined when none is stored; ActivityContextDecodeError when it is corrupt. */
export function contextFromFields(fields: Readonly<Record<string, string>>): ActivityContext | undefined {
  const text = fields[CONTEXT_FIELD];
  if (text === undefined) return undefined;
  let encoded: unknown;
  try {
    encoded = JSON.parse(text);
  } catch {
    encoded = undefined;
  }
  const flat = typeof encoded === 'object' && encoded !== null && !Array.isArray(encoded) ? (encoded as Record<string, unknown>) : {};
  const strings = Object.fromEntries(Object.entries(flat).filter((e): e is [string, string] => typeof e[1] === 'string'));
  // A missing or non-object value decodes as a context without a version, which decodeContext refuses by name.
  return decodeContext({ ...strings, v: strings.v ?? 'missing' });
}

/** The tier that reclaims most eagerly: no tier makes a session idle earlier than this one does. */
export const TIGHTEST_TIER: LoadTier = LOAD_TIERS[LOAD_TIERS.length - 1]!;

/**
 * The earliest moment the session could be idle under any load tier (its tenant's policy at the tightest tier), or
 * undefined if never: the idle index wakes the checker then, and the checker judges with the tier of that moment.
 */
export function earliestIdleAt(settings: ActivityScoreSettings, ctx: ActivityContext, now: number, tenant: string | undefined, holdUntil: number | undefined, demoted = false): number | undefined {
  return idleDecision(ctx, now, policyFor(settings, tenant, TIGHTEST_TIER, { demoted }), { holdUntil }).idleAt;
}

/**
 * A user message with no answer seen is taken as a turn still being generated for at most this long (ms): a pipeline
 * that never reports the answer (no `output` activity, no inference.completed) delays demotes by this, not forever.
 */
export const OPEN_TURN_MAX_MS = 10 * 60_000;

/**
 * When a quiet session becomes worth demoting (its KV moved off the GPU until its user is back) under a load tier, or
 * undefined when demotes are off. At the normal tier: once it has been quiet DEMOTE_QUIET_MS, and its user is later
 * than the session's own rhythm predicted (its predicted idle end passed). Under memory pressure (any tier above
 * normal) with PRESSURE_DEMOTE_QUIET_MS set: once it has been quiet that long (or DEMOTE_QUIET_MS if shorter), without
 * waiting for the predicted return, since a full GPU will otherwise evict some session's KV outright. While the model
 * may still be answering the user's last message (no answer seen), the KV is in use: not before that answer, or
 * OPEN_TURN_MAX_MS after the message. Times are on the session's clock, as the idle verdict's; time under a hold
 * (`holdUntil`) is not quiet, as for the idle verdict (heldQuietMs).
 */
export function demoteAt(settings: DemoteSettings, ctx: ActivityContext, tier: LoadTier = 'normal', holdUntil?: number): number | undefined {
  if (settings.demoteQuietMs <= 0) return undefined;
  const pressure = tier !== 'normal' ? (settings.pressureDemoteQuietMs ?? 0) : 0;
  const held = heldQuietMs(ctx, holdUntil);
  const quiet = held + (pressure > 0
    ? ctx.lastEventAt + Math.min(settings.demoteQuietMs, pressure)
    : Math.max(ctx.predictedIdleEndAt, ctx.lastEventAt + settings.demoteQuietMs));
  return ctx.turnOpenAt === undefined ? quiet : Math.max(quiet, ctx.turnOpenAt + OPEN_TURN_MAX_MS);
}

/** The settings demoteAt reads (PRESSURE_DEMOTE_QUIET_MS absent = pressure does not hasten demotes). */
export type DemoteSettings = Pick<ActivityScoreSettings, 'demoteQuietMs'> & Partial<Pick<ActivityScoreSettings, 'pressureDemoteQuietMs'>>;

/** The checker's demote verdict on a session whose KV is on the GPU: demote now, or when to look again for it. */
export interface DemoteJudgement {
  demote: boolean;
  /** When a demote could next be due (under this tier, or sooner should the tier rise); undefined: never. */
  nextCheckAt?: number;
}

/**
 * At the normal tier, the earliest moment worth a look in case the tier rises before the session's demote moment: the
 * moment pressure would demote it, but not before it has been quiet one load evaluation interval (a tier rise is only
 * seen at an evaluation, and a user typing every few seconds should not cost a look per keystroke). Undefined when
 * pressure would not demote it sooner than the normal tier does.
 */
function pressureLookAt(settings: DemoteSettings & Pick<ActivityScoreSettings, 'loadPolicy'>, ctx: ActivityContext, holdUntil: number | undefined): number | undefined {
  const [normal, pressed] = [demoteAt(settings, ctx, 'normal', holdUntil), demoteAt(settings, ctx, TIGHTEST_TIER, holdUntil)];
  if (normal === undefined || pressed === undefined || pressed >= normal) return undefined;
  return Math.min(normal, Math.max(pressed, ctx.lastEventAt + heldQuietMs(ctx, holdUntil) + settings.loadPolicy.evaluateEveryMs));
}

/**
 * Judges whether to demote a live session at `now` under the current tier, as judgeIdleness judges idleness: demote
 * once demoteAt under this tier has passed; else look again at that moment, or, at the normal tier, sooner in case
 * the tier rises (pressureLookAt, then every load evaluation interval). The idle checker and the replay bench both
 * decide with this.
 */
export function judgeDemote(settings: DemoteSettings & Pick<ActivityScoreSettings, 'loadPolicy'>, ctx: ActivityContext, now: number, tier: LoadTier, holdUntil?: number): DemoteJudgement {
  const at = demoteAt(settings, ctx, tier, holdUntil);
  if (at === undefined) return { demote: false };
  if (at <= now) return { demote: true };
  let next = at;
  const eager = tier === 'normal' ? pressureLookAt(settings, ctx, holdUntil) : undefined;
  if (eager !== undefined) next = Math.min(next, eager > now ? eager : now + settings.loadPolicy.evaluateEveryMs);
  return { demote: false, nextCheckAt: Math.max(now + 1, next) };
}

/**
 * When the idle checker should first look at a session after an event, given the load tier last seen: the earliest
 * idle moment under any tier, or its demote moment under that tier (at the normal tier, pressureLookAt if sooner) if
 * that comes first (a session already demoted is then re-scheduled by the checker).
 */
export function firstCheckAt(settings: ActivityScoreSettings, ctx: ActivityContext, now: number, tenant: string | undefined, holdUntil: number | undefined, tier: LoadTier = 'normal'): number | undefined {
  const idle = earliestIdleAt(settings, ctx, now, tenant, holdUntil);
  const at = demoteAt(settings, ctx, tier, holdUntil);
  const eager = tier === 'normal' ? pressureLookAt(settings, ctx, holdUntil) : undefined;
  const demote = at === undefined || eager === undefined ? at : Math.min(at, eager);
  if (demote === undefined || demote <= now) return idle;
  return idle === undefined ? demote : Math.min(idle, demote);
}

/** The checker's verdict on one session at `now` under the current tier, and when to look again if it is not idle. */
export interface IdleJudgement {
  decision: IdleDecision;
  tier: LoadTier;
  /** When to check again; undefined when the session is idle now or can never become idle. */
  nextCheckAt?: number;
}

/**
 * Judges a session: idle now under the current tier, or when to check again — the moment it becomes idle under the
 * current tier, or sooner where a rise of the tier could make it idle earlier (at the tightest tier's moment, or
 * after one load evaluation interval once that moment has passed).
 */
export function judgeIdleness(
  settings: ActivityScoreSettings,
  ctx: ActivityContext,
  now: number,
  opts: { tenant: string | undefined; tier: LoadTier; holdUntil: number | undefined; demoted?: boolean },
): IdleJudgement {
  const decision = idleDecision(ctx, now, policyFor(settings, opts.tenant, opts.tier, { demoted: opts.demoted === true }), { holdUntil: opts.holdUntil });
  if (decision.idle) return { decision, tier: opts.tier };
  const candidates: number[] = [];
  if (decision.idleAt !== undefined) candidates.push(decision.idleAt);
  if (opts.tier !== TIGHTEST_TIER) {
    const eager = earliestIdleAt(settings, ctx, now, opts.tenant, opts.holdUntil, opts.demoted === true);
    if (eager !== undefined) candidates.push(eager > now ? eager : now + settings.loadPolicy.evaluateEveryMs);
  }
  if (candidates.length === 0) return { decision, tier: opts.tier };
  return { decision, tier: opts.tier, nextCheckAt: Math.max(now + 1, Math.min(...candidates)) };
}

const idleShare = (engagement: number): number => Math.min(1, Math.max(0, 1 - engagement));

/**
 * The data of a session.idle. The contract's score runs from 0 (busy) to 1 (idle) while the scoring core measures
 * engagement (1 = busy), so each figure is reported as 1 − engagement, and the threshold likewise; the tier is
 * named only when load tightened the policy (the contract has no `normal` tier).
 */
export function idleEventData(sessionId: string, incarnation: number, decision: IdleDecision, tier: LoadTier): DataOf<typeof EventType.SessionIdle> {
  return {
    sessionId,
    incarnation,
    score: idleShare(decision.score),
    components: {
      behavior: idleShare(decision.components.behavior),
      semantic: idleShare(decision.components.semantic),
      timing: idleShare(decision.components.timing),
    },
    threshold: idleShare(decision.threshold),
    ...(tier === 'normal' ? {} : { loadTier: tier }),
  };
}
