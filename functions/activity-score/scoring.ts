// The pure scoring core of activity-score: how engaged a session is, from what its events say, and when its quiet has
// lasted long enough to call it idle. No I/O and no clock: every function takes the time it should reason about.
//
// Score = weighted mean of three components, each in [0, 1] (higher = more engaged):
// - behaviour: decaying per-minute rates of each activity kind, plus cursor dwell, combined as a noisy-OR (any strong
//   signal is enough; each kind's weight is the most that kind alone can contribute, so a model streaming output to
//   an absent user cannot look like a user typing);
// - semantic: continuity of consecutive `message`s (cosine of their embeddings; lexical.ts's trigram cosine when a
//   pair has no embeddings of equal dimension but both have text; 0, a discontinuity, when neither can be compared),
//   smoothed and fading with time since the last message. Until a session has compared two messages there is no
//   semantic evidence, and the component is left out (its weight re-spread over the others) rather than counted as 0;
// - timing: 1 while the silence is within the user's own rhythm (mean + k·stddev of their inter-activity gaps,
//   clamped to a floor and ceiling), then halving every further such span.
//
// Every component only falls while nothing happens, so the score is non-increasing between events. That lets the
// idle decision be exact and independent of how often it is asked: the moment the score went below the threshold is
// found by bisection, and a session is idle once that moment lies a whole grace window in the past.
import { isTrigramSketch, LEXICAL_SKETCH_SIZE, lexicalSimilarity, sketchText, type TrigramSketch } from './lexical.ts';

/** What a `session.activity` event reports the user (or the model) did. */
export type ActivityKind = 'input' | 'edit' | 'cursor' | 'message' | 'output';

/** Every activity kind, in the order the stored rates use. */
export const ACTIVITY_KINDS: readonly ActivityKind[] = ['input', 'edit', 'cursor', 'message', 'output'];

// Kinds that come from the user, and so teach the rhythm and cancel a requested release; `output` comes from the model.
const USER_KINDS: ReadonlySet<ActivityKind> = new Set(['input', 'edit', 'cursor', 'message']);

/** Largest embedding kept (and compared); a longer one is ignored as if absent. */
export const MAX_EMBEDDING_DIMENSIONS = 8192;

/** Relative weights of the three components; they are normalised, so only their ratios matter. */
export interface ComponentWeights {
  behavior: number;
  semantic: number;
  timing: number;
}

/** Everything that shapes a session's score and idle decision; tenants may override any of it. */
export interface ScoringPolicy {
  weights: ComponentWeights;
  /** A session scoring below this is a candidate for idleness. */
  threshold: number;
  /** How long a session must stay continuously below the threshold before it is idle. */
  graceMs: number;
  /**
   * Whether `inference.completed` with `release: true` makes the session idle at once (no grace) unless held. Off by
   * default: destroy-dispatch already ends such a session with cause `completed`, and an idle verdict racing it
   * would only muddle the recorded cause. A tenant whose pipeline cannot route that event to destroy-dispatch may
   * turn it on.
   */
  honorRelease: boolean;
  behavior: {
    /** Half-life of the activity rates and cursor dwell. */
    halfLifeMs: number;
    /** The most each kind alone can contribute to behaviour, in [0, 1]. */
    kindWeight: Record<ActivityKind, number>;
    /** Per-minute rate at which a kind reaches 63% of its weight (86% at twice that rate). */
    typicalPerMinute: Record<ActivityKind, number>;
    /** The most cursor dwell alone can contribute to behaviour, in [0, 1]. */
    dwellWeight: number;
    /** Dwell at which the dwell term reaches 63% of its weight. */
    typicalDwellMs: number;
    /** Cursor events closer than this count as one continuous dwell. */
    dwellJoinMs: number;
  };
  semantic: {
    /** Half-life of continuity after the last message. */
    halfLifeMs: number;
    /** Weight of the newest pair's similarity against the running value, in (0, 1]. */
    smoothing: number;
    /** Embedding cosine at or below which a pair counts as unrelated (embedding models are rarely centred on 0). */
    embeddingFloor: number;
    /** Embedding cosine at or above which a pair counts as fully continuous. */
    embeddingCeiling: number;
    /** Trigram cosine at or below which a pair counts as unrelated (common trigrams give unrelated text ~0.05–0.1). */
    lexicalFloor: number;
    /** Trigram cosine at or above which a pair counts as fully continuous (follow-ups typically score 0.3–0.7). */
    lexicalCeiling: number;
  };
  timing: {
    /** Silence threshold = mean gap + spread × stddev of gap. */
    spread: number;
    /** Lowest silence threshold, however fast the user's rhythm. */
    floorMs: number;
    /** Highest silence threshold, however slow the rhythm; longer gaps are learnt as this long. */
    ceilingMs: number;
    /** Weight of the newest gap in the gap mean and variance, in (0, 1]. */
    gapSmoothing: number;
    /** Gap assumed (as mean and as stddev) before the user has shown a rhythm. */
    priorGapMs: number;
  };
}

/** The defaults the issue sets (weights 0.4 / 0.35 / 0.25, threshold 0.5, grace 60 s) and tuned constants. */
export const DEFAULT_WEIGHTS: Readonly<ComponentWeights> = Object.freeze({ behavior: 0.4, semantic: 0.35, timing: 0.25 });
export const DEFAULT_THRESHOLD = 0.5;
export const DEFAULT_GRACE_MS = 60_000;

/** The scoring policy a tenant gets unless it overrides part of it. */
export const DEFAULT_SCORING_POLICY: ScoringPolicy = deepFreeze({
  weights: { ...DEFAULT_WEIGHTS },
  threshold: DEFAULT_THRESHOLD,
  graceMs: DEFAULT_GRACE_MS,
  honorRelease: false,
  behavior: {
    halfLifeMs: 30_000,
    kindWeight: { input: 1, edit: 1, cursor: 0.5, message: 1, output: 0.3 },
    typicalPerMinute: { input: 6, edit: 3, cursor: 10, message: 1, output: 20 },
    dwellWeight: 0.5,
    typicalDwellMs: 10_000,
    dwellJoinMs: 5_000,
  },
  semantic: {
    halfLifeMs: 120_000,
    smoothing: 0.5,
    embeddingFloor: 0.2,
    embeddingCeiling: 0.8,
    lexicalFloor: 0.1,
    lexicalCeiling: 0.5,
  },
  timing: {
    spread: 3,
    floorMs: 15_000,
    ceilingMs: 600_000,
    gapSmoothing: 0.2,
    priorGapMs: 5_000,
  },
});

/** One `session.activity` event, its time already parsed to epoch milliseconds. */
export interface ActivityEvent {
  kind: ActivityKind;
  at: number;
  text?: string | undefined;
  embedding?: readonly number[] | undefined;
}

/** One `inference.completed` event, its time already parsed to epoch milliseconds. */
export interface CompletionEvent {
  at: number;
  release: boolean;
}

/** Per-session state between events: small, bounded, and stored by the function (see encodeContext). */
export interface ActivityContext {
  v: 1;
  /** When the context was created (session opened or first seen). */
  startedAt: number;
  /** Latest event time seen; decayed values are as of this time, and earlier events are treated as happening now. */
  lastEventAt: number;
  /** Decaying rate of each kind, in events per minute, as of lastEventAt. */
  rates: Record<ActivityKind, number>;
  /** Decaying total of continuous cursor presence, as of lastEventAt. */
  cursorDwellMs: number;
  lastCursorAt?: number;
  /** Smoothed continuity of consecutive messages, as of lastMessageAt. */
  semantic: number;
  /** How many message pairs were compared; 0 means no semantic evidence yet. */
  semanticSamples: number;
  lastMessageAt?: number;
  /** The last message's embedding, rounded to float32 (as stored). */
  lastEmbedding?: number[];
  /** The last message's trigram sketch. */
  lastSketch?: TrigramSketch;
  /** Exponentially weighted mean and variance of the user's inter-activity gaps. */
  gapMeanMs: number;
  gapVarMs2: number;
  gapSamples: number;
  /** When the current quiet spell is expected to end: last event plus the mean gap. */
  predictedIdleEndAt: number;
  /** Set by a completion with release: true; cleared by later user activity. */
  releaseRequestedAt?: number;
  /**
   * When the user's last message was sent while no answer to it has been seen yet (no `output` activity, no
   * inference.completed): the model is likely generating, so the session's KV is in use however quiet it looks.
   */
  turnOpenAt?: number;
}

/** The score and the components it was made from, with the weights that were applied. */
export interface ScoreResult {
  score: number;
  components: ComponentWeights;
  /** Normalised weights used; semantic is 0 when there was no semantic evidence. */
  weights: ComponentWeights;
}

/** Why a session is or is not idle. */
export type IdleReason = 'held' | 'release-requested' | 'below-threshold-for-grace' | 'in-grace' | 'active';

/** The idle decision for one moment, and when it would next change if nothing happens. */
export interface IdleDecision extends ScoreResult {
  idle: boolean;
  reason: IdleReason;
  threshold: number;
  graceMs: number;
  /** Since when the score has been continuously below the threshold; absent while it is not. */
  belowSince?: number;
  /** When the session became idle, or will if no event arrives and no hold is granted; absent if never. */
  idleAt?: number;
}

function deepFreeze<T extends object>(value: T): T {
  for (const inner of Object.values(value)) if (typeof inner === 'object' && inner !== null) deepFreeze(inner as object);
  return Object.freeze(value);
}

const LN2 = Math.LN2;
const unit = (x: number): number => (Number.isFinite(x) ? Math.min(1, Math.max(0, x)) : 0);
const halve = (elapsedMs: number, halfLifeMs: number): number =>
  elapsedMs <= 0 ? 1 : halfLifeMs > 0 ? Math.pow(0.5, elapsedMs / halfLifeMs) : 0;
const saturate = (value: number, typical: number): number => (typical > 0 ? 1 - Math.exp(-value / typical) : value > 0 ? 1 : 0);
const rescale = (x: number, floor: number, ceiling: number): number =>
  ceiling > floor ? unit((x - floor) / (ceiling - floor)) : x >= ceiling ? 1 : 0;

/** Creates the context of a session first seen at `now`, with the policy's prior rhythm. */
export function initialContext(now: number, policy: ScoringPolicy = DEFAULT_SCORING_POLICY): ActivityContext {
  const at = Number.isFinite(now) ? now : 0;
  const prior = Math.max(0, policy.timing.priorGapMs);
  return {
    v: 1,
    startedAt: at,
    lastEventAt: at,
    rates: { input: 0, edit: 0, cursor: 0, message: 0, output: 0 },
    cursorDwellMs: 0,
    semantic: 0,
    semanticSamples: 0,
    gapMeanMs: prior,
    gapVarMs2: prior * prior,
    gapSamples: 0,
    predictedIdleEndAt: at + prior,
  };
}

// An event earlier than what was already seen is treated as happening at the latest time seen: state only moves
// forward, so replays and out-of-order delivery cannot make decayed values grow back.
function eventTime(ctx: ActivityContext, at: number): number {
  return Number.isFinite(at) ? Math.max(at, ctx.lastEventAt) : ctx.lastEventAt;
}

// Brings the decayed state forward to `at`.
function advance(ctx: ActivityContext, at: number, policy: ScoringPolicy): ActivityContext {
  const decay = halve(at - ctx.lastEventAt, policy.behavior.halfLifeMs);
  const rates = { ...ctx.rates };
  for (const kind of ACTIVITY_KINDS) rates[kind] *= decay;
  return { ...ctx, rates, cursorDwellMs: ctx.cursorDwellMs * decay, lastEventAt: at };
}

/** Float32-rounds an embedding, or returns undefined when it cannot be compared (empty, too long, non-finite, zero). */
export function usableEmbedding(embedding: readonly number[] | undefined): number[] | undefined {
  if (!Array.isArray(embedding) || embedding.length === 0 || embedding.length > MAX_EMBEDDING_DIMENSIONS) return undefined;
  const rounded = embedding.map((x) => (typeof x === 'number' ? Math.fround(x) : Number.NaN));
  let nonZero = false;
  for (const x of rounded) {
    if (!Number.isFinite(x)) return undefined;
    if (x !== 0) nonZero = true;
  }
  return nonZero ? rounded : undefined;
}

/** Cosine of two equal-length, non-zero vectors; scaled first so huge components cannot overflow. */
export function cosine(a: readonly number[], b: readonly number[]): number {
  let maxA = 0;
  let maxB = 0;
  for (let i = 0; i < a.length; i++) {
    maxA = Math.max(maxA, Math.abs(a[i]!));
    maxB = Math.max(maxB, Math.abs(b[i]!));
  }
  if (maxA === 0 || maxB === 0) return 0;
  let dot = 0;
  let normA = 0;
  let normB = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]! / maxA;
    const y = b[i]! / maxB;
    dot += x * y;
    normA += x * x;
    normB += y * y;
  }
  const c = dot / Math.sqrt(normA * normB);
  return Number.isFinite(c) ? Math.max(-1, Math.min(1, c)) : 0;
}

// Similarity of a message with the one before it, or undefined when there is no earlier message to compare with.
// A pair that cannot be compared (embeddings of different dimensions and no text on both sides, or one side with only
// an embedding and the other with only text) is a discontinuity: it counts as unrelated.
function continuity(
  ctx: ActivityContext,
  embedding: number[] | undefined,
  sketch: TrigramSketch | undefined,
  policy: ScoringPolicy,
): number | undefined {
  if (ctx.lastEmbedding === undefined && ctx.lastSketch === undefined) return undefined;
  const { semantic } = policy;
  if (embedding !== undefined && ctx.lastEmbedding !== undefined && embedding.length === ctx.lastEmbedding.length) {
    return rescale(cosine(ctx.lastEmbedding, embedding), semantic.embeddingFloor, semantic.embeddingCeiling);
  }
  if (sketch !== undefined && ctx.lastSketch !== undefined) {
    const similarity = lexicalSimilarity(ctx.lastSketch, sketch);
    if (similarity !== undefined) return rescale(similarity, semantic.lexicalFloor, semantic.lexicalCeiling);
  }
  return 0;
}

/** Folds one activity event into the context; pure, and safe for out-of-order, repeated or malformed input. */
export function applyActivity(ctx: ActivityContext, event: ActivityEvent, policy: ScoringPolicy): ActivityContext {
  // The function's event schema rejects unknown kinds; one that slips through counts as input rather than poisoning the rates.
  const kind: ActivityKind = ACTIVITY_KINDS.includes(event.kind) ? event.kind : 'input';
  const inOrder = Number.isFinite(event.at) && event.at >= ctx.lastEventAt;
  const at = eventTime(ctx, event.at);
  const gap = at - ctx.lastEventAt;
  const next = advance(ctx, at, policy);
  const { behavior, timing } = policy;

  // Each event adds 60000/τ (τ = half-life / ln 2), so a steady λ events per minute settles at a rate of about λ.
  const tauMs = behavior.halfLifeMs / LN2;
  next.rates[kind] += tauMs > 0 ? 60_000 / tauMs : 0;

  if (kind === 'cursor') {
    if (next.lastCursorAt !== undefined && at - next.lastCursorAt <= behavior.dwellJoinMs) {
      next.cursorDwellMs += at - next.lastCursorAt;
    }
    next.lastCursorAt = at;
  }

  if (USER_KINDS.has(kind)) {
    if (inOrder) {
      // Exponentially weighted mean and variance (Finch, "Incremental calculation of weighted mean and variance").
      const sample = Math.min(gap, timing.ceilingMs);
      const alpha = unit(timing.gapSmoothing) || 1;
      const diff = sample - next.gapMeanMs;
      const increment = alpha * diff;
      next.gapMeanMs += increment;
      next.gapVarMs2 = (1 - alpha) * (next.gapVarMs2 + diff * increment);
      next.gapSamples += 1;
    }
    if (next.releaseRequestedAt !== undefined && inOrder && event.at > next.releaseRequestedAt) {
      delete next.releaseRequestedAt;
    }
  }

  if (kind === 'message' && inOrder) next.turnOpenAt = at;
  if (kind === 'output') delete next.turnOpenAt;
  if (kind === 'message') {
    const embedding = usableEmbedding(event.embedding);
    const sketch = typeof event.text === 'string' ? sketchText(event.text) : undefined;
    const usableSketch = sketch !== undefined && sketch.size > 0 ? sketch : undefined;
    if (embedding !== undefined || usableSketch !== undefined) {
      const similarity = continuity(ctx, embedding, usableSketch, policy);
      if (similarity !== undefined) {
        const alpha = unit(policy.semantic.smoothing) || 1;
        next.semantic = unit(next.semanticSamples === 0 ? similarity : alpha * similarity + (1 - alpha) * next.semantic);
        next.semanticSamples += 1;
      }
      next.lastMessageAt = at;
      if (embedding === undefined) delete next.lastEmbedding;
      else next.lastEmbedding = embedding;
      if (usableSketch === undefined) delete next.lastSketch;
      else next.lastSketch = usableSketch;
    }
  }

  next.predictedIdleEndAt = at + next.gapMeanMs;
  return next;
}

/** Folds an `inference.completed` into the context: the model answered, so the silence starts again from here. */
export function applyCompletion(ctx: ActivityContext, event: CompletionEvent, policy: ScoringPolicy): ActivityContext {
  const at = eventTime(ctx, event.at);
  const next = advance(ctx, at, policy);
  if (event.release && policy.honorRelease) next.releaseRequestedAt = at;
  delete next.turnOpenAt;
  next.predictedIdleEndAt = at + next.gapMeanMs;
  return next;
}

/** The silence (ms) after which the timing component starts to fall, from the user's own rhythm. */
export function silenceThresholdMs(ctx: ActivityContext, policy: ScoringPolicy): number {
  const { spread, floorMs, ceilingMs } = policy.timing;
  const adaptive = ctx.gapMeanMs + spread * Math.sqrt(Math.max(0, ctx.gapVarMs2));
  const threshold = Math.min(ceilingMs, Math.max(floorMs, Number.isFinite(adaptive) ? adaptive : floorMs));
  return Math.max(1, threshold);
}

function behaviorAt(ctx: ActivityContext, decay: number, policy: ScoringPolicy): number {
  const { kindWeight, typicalPerMinute, dwellWeight, typicalDwellMs } = policy.behavior;
  let quiet = 1 - unit(dwellWeight) * saturate(ctx.cursorDwellMs * decay, typicalDwellMs);
  for (const kind of ACTIVITY_KINDS) {
    quiet *= 1 - unit(kindWeight[kind]) * saturate(ctx.rates[kind] * decay, typicalPerMinute[kind]);
  }
  return unit(1 - quiet);
}

/** Scores the session at `now` (clamped to no earlier than its last event): a weighted mean in [0, 1]. */
export function score(ctx: ActivityContext, now: number, policy: ScoringPolicy): ScoreResult {
  const t = eventTime(ctx, now);
  const silence = t - ctx.lastEventAt;
  const behavior = behaviorAt(ctx, halve(silence, policy.behavior.halfLifeMs), policy);

  const known = ctx.semanticSamples > 0;
  const sinceMessage = t - (ctx.lastMessageAt ?? ctx.lastEventAt);
  const semantic = known ? unit(ctx.semantic * halve(sinceMessage, policy.semantic.halfLifeMs)) : 0;

  const threshold = silenceThresholdMs(ctx, policy);
  const timing = silence <= threshold ? 1 : unit(halve(silence - threshold, threshold));

  const w = policy.weights;
  const raw = { behavior: Math.max(0, w.behavior), semantic: known ? Math.max(0, w.semantic) : 0, timing: Math.max(0, w.timing) };
  let total = raw.behavior + raw.semantic + raw.timing;
  if (!(total > 0) || !Number.isFinite(total)) {
    raw.behavior = DEFAULT_WEIGHTS.behavior;
    raw.semantic = known ? DEFAULT_WEIGHTS.semantic : 0;
    raw.timing = DEFAULT_WEIGHTS.timing;
    total = raw.behavior + raw.semantic + raw.timing;
  }
  const weights = { behavior: raw.behavior / total, semantic: raw.semantic / total, timing: raw.timing / total };
  const value = unit(weights.behavior * behavior + weights.semantic * semantic + weights.timing * timing);
  return { score: value, components: { behavior, semantic, timing }, weights };
}

// Latest instant (ms) a bisection will look at: beyond ~35 years of silence every component is 0 anyway.
const SEARCH_LIMIT_MS = 2 ** 40;

/**
 * The first instant at or after the last event at which the score is below the threshold, found by bisection to the
 * millisecond (the score never rises between events); undefined when it never gets there.
 */
export function belowThresholdFrom(ctx: ActivityContext, policy: ScoringPolicy): number | undefined {
  const start = ctx.lastEventAt;
  const below = (t: number) => score(ctx, t, policy).score < policy.threshold;
  if (below(start)) return start;
  let step = 1_000;
  while (!below(start + step)) {
    if (step >= SEARCH_LIMIT_MS) return undefined;
    step *= 2;
  }
  let lo = 0;
  let hi = step;
  while (hi - lo > 1) {
    const mid = lo + Math.floor((hi - lo) / 2);
    if (below(start + mid)) hi = mid;
    else lo = mid;
  }
  return start + hi;
}

/**
 * Decides whether the session is idle at `now`: below the threshold continuously for the grace window, or released,
 * and not held. Also says since when it has been below and when it will be idle if nothing happens.
 *
 * Time under a hold is not quiet: the session was busy (a long tool call, a paused stream) until the hold ended, and
 * a tool that returns may send nothing at all, so its quiet is timed from the hold's end, as if its clock had stood
 * still for the hold (heldQuietMs; the idle checker's clock stands still the same way while nobody could hear the
 * session). Ending it the moment a hold ran out, for quiet it had before the hold, would end a live session.
 */
export function idleDecision(
  ctx: ActivityContext,
  now: number,
  policy: ScoringPolicy,
  opts: { holdUntil?: number | undefined } = {},
): IdleDecision {
  const t = Number.isFinite(now) ? now : ctx.lastEventAt;
  const holdUntil = opts.holdUntil !== undefined && Number.isFinite(opts.holdUntil) ? opts.holdUntil : undefined;
  const held = heldQuietMs(ctx, holdUntil);
  // Every figure below is read on the session's clock (wall time less the held span) and moved back by `held`.
  const current = score(ctx, t - held, policy);
  const graceMs = Math.max(0, policy.graceMs);
  const base = { ...current, threshold: policy.threshold, graceMs };
  const onClock = belowThresholdFrom(ctx, policy);
  const crossing = onClock === undefined ? undefined : onClock + held;
  const belowSince = crossing !== undefined && crossing <= t ? crossing : undefined;
  const released = policy.honorRelease && ctx.releaseRequestedAt !== undefined;
  const naturalIdleAt = released ? ctx.releaseRequestedAt : crossing === undefined ? undefined : crossing + graceMs;

  const optional = (idleAt: number | undefined) => ({
    ...(belowSince === undefined ? {} : { belowSince }),
    ...(idleAt === undefined ? {} : { idleAt }),
  });

  if (holdUntil !== undefined && holdUntil > t) {
    const idleAt = naturalIdleAt === undefined ? undefined : Math.max(naturalIdleAt, holdUntil);
    return { ...base, idle: false, reason: 'held', ...optional(idleAt) };
  }
  if (released) return { ...base, idle: true, reason: 'release-requested', ...optional(ctx.releaseRequestedAt) };
  if (naturalIdleAt !== undefined && naturalIdleAt <= t) {
    return { ...base, idle: true, reason: 'below-threshold-for-grace', ...optional(naturalIdleAt) };
  }
  return { ...base, idle: false, reason: belowSince === undefined ? 'active' : 'in-grace', ...optional(naturalIdleAt) };
}

/**
 * How much of a session's quiet since its last event a hold covered (ms): from the last event to the hold's end, or 0
 * when no hold outlasted the last event. Quiet is timed without it, by the idle verdict and by the demote moment.
 */
export function heldQuietMs(ctx: ActivityContext, holdUntil: number | undefined): number {
  return holdUntil === undefined || !Number.isFinite(holdUntil) ? 0 : Math.max(0, holdUntil - ctx.lastEventAt);
}

/** A stored context that cannot be read back (corrupt, or written by an incompatible version). */
export class ActivityContextDecodeError extends Error {
  override name = 'ActivityContextDecodeError';
}

function encodeFloat32(values: readonly number[]): string {
  const buffer = Buffer.alloc(values.length * 4);
  values.forEach((x, i) => buffer.writeFloatLE(x, i * 4));
  return buffer.toString('base64');
}

function encodeUint32(values: readonly number[]): string {
  const buffer = Buffer.alloc(values.length * 4);
  values.forEach((x, i) => buffer.writeUInt32LE(x, i * 4));
  return buffer.toString('base64');
}

function decodeBytes(field: string, text: string, maxItems: number): Buffer {
  const buffer = Buffer.from(text, 'base64');
  if (buffer.toString('base64') !== text || buffer.length % 4 !== 0 || buffer.length / 4 > maxItems) {
    throw new ActivityContextDecodeError(`field ${field} is not base64 of at most ${maxItems} 32-bit values`);
  }
  return buffer;
}

/**
 * Flattens a context into string fields for a Redis hash (names optionally prefixed). Bounded: at most
 * MAX_EMBEDDING_DIMENSIONS float32s (~44 KiB of base64) plus a few hundred bytes.
 */
export function encodeContext(ctx: ActivityContext, prefix = ''): Record<string, string> {
  const fields: Record<string, string> = {
    v: String(ctx.v),
    s: String(ctx.startedAt),
    e: String(ctx.lastEventAt),
    r: ACTIVITY_KINDS.map((kind) => String(ctx.rates[kind])).join(','),
    cd: String(ctx.cursorDwellMs),
    sm: String(ctx.semantic),
    sn: String(ctx.semanticSamples),
    gm: String(ctx.gapMeanMs),
    gv: String(ctx.gapVarMs2),
    gn: String(ctx.gapSamples),
    p: String(ctx.predictedIdleEndAt),
  };
  if (ctx.lastCursorAt !== undefined) fields.ca = String(ctx.lastCursorAt);
  if (ctx.lastMessageAt !== undefined) fields.ma = String(ctx.lastMessageAt);
  if (ctx.lastEmbedding !== undefined) fields.em = encodeFloat32(ctx.lastEmbedding);
  if (ctx.lastSketch !== undefined) {
    fields.ss = String(ctx.lastSketch.size);
    fields.sk = encodeUint32(ctx.lastSketch.hashes);
  }
  if (ctx.releaseRequestedAt !== undefined) fields.rr = String(ctx.releaseRequestedAt);
  if (ctx.turnOpenAt !== undefined) fields.to = String(ctx.turnOpenAt);
  return prefix === '' ? fields : Object.fromEntries(Object.entries(fields).map(([k, v]) => [prefix + k, v]));
}

/**
 * Reads a context back from the fields encodeContext wrote; undefined when none was stored, an
 * ActivityContextDecodeError when what is stored is not a valid context. Unknown fields are ignored.
 */
export function decodeContext(stored: Readonly<Record<string, string>>, prefix = ''): ActivityContext | undefined {
  const get = (name: string): string | undefined => stored[prefix + name];
  const version = get('v');
  if (version === undefined) return undefined;
  if (version !== '1') throw new ActivityContextDecodeError(`unsupported context version ${JSON.stringify(version)}`);

  const number = (name: string, check: (x: number) => boolean = () => true): number => {
    const text = get(name);
    const value = text === undefined || text.trim() === '' ? Number.NaN : Number(text);
    if (!Number.isFinite(value) || !check(value)) {
      throw new ActivityContextDecodeError(`field ${prefix + name} is missing or invalid: ${JSON.stringify(text)}`);
    }
    return value;
  };
  const optionalNumber = (name: string): number | undefined => (get(name) === undefined ? undefined : number(name));
  const nonNegative = (x: number) => x >= 0;
  const count = (x: number) => Number.isSafeInteger(x) && x >= 0;

  const rateTexts = (get('r') ?? '').split(',');
  if (rateTexts.length !== ACTIVITY_KINDS.length) throw new ActivityContextDecodeError(`field ${prefix}r must hold ${ACTIVITY_KINDS.length} rates`);
  const rates = { input: 0, edit: 0, cursor: 0, message: 0, output: 0 };
  ACTIVITY_KINDS.forEach((kind, i) => {
    const value = Number(rateTexts[i]);
    if (rateTexts[i]!.trim() === '' || !Number.isFinite(value) || value < 0) throw new ActivityContextDecodeError(`field ${prefix}r has an invalid ${kind} rate`);
    rates[kind] = value;
  });

  const ctx: ActivityContext = {
    v: 1,
    startedAt: number('s'),
    lastEventAt: number('e'),
    rates,
    cursorDwellMs: number('cd', nonNegative),
    semantic: number('sm', (x) => x >= 0 && x <= 1),
    semanticSamples: number('sn', count),
    gapMeanMs: number('gm', nonNegative),
    gapVarMs2: number('gv', nonNegative),
    gapSamples: number('gn', count),
    predictedIdleEndAt: number('p'),
  };
  const lastCursorAt = optionalNumber('ca');
  if (lastCursorAt !== undefined) ctx.lastCursorAt = lastCursorAt;
  const lastMessageAt = optionalNumber('ma');
  if (lastMessageAt !== undefined) ctx.lastMessageAt = lastMessageAt;
  const releaseRequestedAt = optionalNumber('rr');
  if (releaseRequestedAt !== undefined) ctx.releaseRequestedAt = releaseRequestedAt;
  const turnOpenAt = optionalNumber('to');
  if (turnOpenAt !== undefined) ctx.turnOpenAt = turnOpenAt;

  const embeddingText = get('em');
  if (embeddingText !== undefined) {
    const bytes = decodeBytes(prefix + 'em', embeddingText, MAX_EMBEDDING_DIMENSIONS);
    const embedding = Array.from({ length: bytes.length / 4 }, (_, i) => bytes.readFloatLE(i * 4));
    if (usableEmbedding(embedding) === undefined) throw new ActivityContextDecodeError(`field ${prefix}em is not a usable embedding`);
    ctx.lastEmbedding = embedding;
  }
  const sketchText64 = get('sk');
  if (sketchText64 !== undefined) {
    const bytes = decodeBytes(prefix + 'sk', sketchText64, LEXICAL_SKETCH_SIZE);
    const sketch = { size: number('ss', count), hashes: Array.from({ length: bytes.length / 4 }, (_, i) => bytes.readUInt32LE(i * 4)) };
    if (!isTrigramSketch(sketch) || sketch.size === 0) throw new ActivityContextDecodeError(`field ${prefix}sk is not a valid trigram sketch`);
    ctx.lastSketch = sketch;
  }
  return ctx;
}
