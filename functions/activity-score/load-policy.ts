// How load tightens the idle policy, and how tenants' policies are read and combined with it.
//
// Load policy (DEFAULT_LOAD_POLICY; the README quotes this):
//
// 1. Demand comes from the rate of events this function receives: below 200 events/s it is low, from 200 medium,
//    from 1000 high.
// 2. Memory pressure is the median used share of GPU memory over the registered runtimes that reported: the tier is
//    fleet-wide, so it follows the typical runtime, and no runtime on its own (fewer than half of them together)
//    can move every tenant to a tighter policy by reporting itself full. (Reclaiming idle sessions elsewhere would
//    not free memory on one full runtime anyway.)
// 3. Each demand level has a memory watermark: 85 % at low demand, 75 % at medium, 60 % at high (the busier the
//    system, the sooner free memory will be claimed, so the earlier reclamation must start). While pressure is below
//    the watermark for the current demand, the tier is `normal`; at or above it, the tier is the demand level
//    (`low`, `medium` or `high`). With no memory reports there is no pressure, so the tier is `normal`.
// 4. Each tier tightens the tenant's policy: the score threshold rises (by 0 / 0.05 / 0.10 / 0.20 for normal / low /
//    medium / high, never above 0.95) and the grace window shrinks (×1 / ×0.75 / ×0.5 / ×0.25), but never below the
//    minimum grace (60 s): a higher tier never makes a session less likely to be idle, nor idle later.
//    Any tier above normal also hastens demotes (settings.ts PRESSURE_DEMOTE_QUIET_MS, idle-judgement.ts demoteAt).
// 5. The function re-evaluates the tier every 10 s. To stop it flapping, a tier is only left downwards once the
//    rate is 20 % below the level's entry rate or the pressure 5 points below the watermark that raised it.
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { DEFAULT_SCORING_POLICY, type ComponentWeights, type ScoringPolicy } from './scoring.ts';

/** How much load the fleet is under, from least to most; a higher tier reclaims more eagerly. */
export type LoadTier = 'normal' | 'low' | 'medium' | 'high';

/** Every tier, least loaded first. */
export const LOAD_TIERS: readonly LoadTier[] = ['normal', 'low', 'medium', 'high'];

/** A demand level, from the event rate. */
export type DemandLevel = Exclude<LoadTier, 'normal'>;

/** How one tier changes a tenant's policy. */
export interface Tightening {
  /** Added to the score threshold (the result is capped at maxThreshold). */
  thresholdRaise: number;
  /** Multiplies the grace window (the result is floored at minGraceMs). */
  graceFactor: number;
}

/** The deployment-wide rules that turn load into a tier and a tier into a tighter policy. */
export interface LoadPolicy {
  /** Events per second at which demand becomes medium and high (below medium it is low). */
  demandEventsPerSecond: { medium: number; high: number };
  /** Used share of a runtime's GPU memory at or above which each demand level's tightening applies. */
  memoryWatermark: Record<DemandLevel, number>;
  /** How far below its entry point a tier must fall before it is left: relative for the rate, absolute for memory. */
  hysteresis: { eventRate: number; memory: number };
  tightening: Record<LoadTier, Tightening>;
  /** No tenant and no tier can make the grace window shorter than this. */
  minGraceMs: number;
  /** No tier raises the score threshold above this. */
  maxThreshold: number;
  /** How often the function should call evaluateLoadTier. */
  evaluateEveryMs: number;
}

/** The load policy described at the top of this file. */
export const DEFAULT_LOAD_POLICY: LoadPolicy = Object.freeze({
  demandEventsPerSecond: Object.freeze({ medium: 200, high: 1000 }),
  memoryWatermark: Object.freeze({ low: 0.85, medium: 0.75, high: 0.6 }),
  hysteresis: Object.freeze({ eventRate: 0.2, memory: 0.05 }),
  tightening: Object.freeze({
    normal: Object.freeze({ thresholdRaise: 0, graceFactor: 1 }),
    low: Object.freeze({ thresholdRaise: 0.05, graceFactor: 0.75 }),
    medium: Object.freeze({ thresholdRaise: 0.1, graceFactor: 0.5 }),
    high: Object.freeze({ thresholdRaise: 0.2, graceFactor: 0.25 }),
  }),
  minGraceMs: 60_000,
  maxThreshold: 0.95,
  evaluateEveryMs: 10_000,
});

/** What the function measured since the last evaluation. */
export interface LoadInputs {
  eventsPerSecond: number;
  /** The latest memory report of each GPU runtime. */
  memory: ReadonlyArray<{ totalBytes: number; usedBytes: number }>;
}

/** A tier with the figures it was decided from, for logs and metrics. */
export interface LoadAssessment {
  tier: LoadTier;
  demand: DemandLevel;
  /** Median used share of GPU memory over the runtimes that reported, in [0, 1]; 0 with no reports. */
  memoryPressure: number;
  /** The watermark the pressure was compared with. */
  watermark: number;
}

const rank = (tier: LoadTier): number => LOAD_TIERS.indexOf(tier);

/**
 * The median used share of GPU memory over the runtimes' reports (the mean of the middle two for an even count); a
 * report with no usable figures, or more used than total, is skipped. 0 with no usable report.
 */
export function memoryPressure(memory: LoadInputs['memory']): number {
  const shares: number[] = [];
  for (const { totalBytes, usedBytes } of memory) {
    if (!Number.isFinite(totalBytes) || !Number.isFinite(usedBytes) || totalBytes <= 0 || usedBytes < 0 || usedBytes > totalBytes) continue;
    shares.push(usedBytes / totalBytes);
  }
  if (shares.length === 0) return 0;
  shares.sort((a, b) => a - b);
  const mid = shares.length >> 1;
  return shares.length % 2 === 1 ? shares[mid]! : (shares[mid - 1]! + shares[mid]!) / 2;
}

/** Decides the load tier, with the figures behind it; `previous` (the last tier) adds hysteresis. */
export function assessLoad(input: LoadInputs, policy: LoadPolicy = DEFAULT_LOAD_POLICY, previous?: LoadTier): LoadAssessment {
  const rate = Number.isFinite(input.eventsPerSecond) && input.eventsPerSecond > 0 ? input.eventsPerSecond : 0;
  const pressure = memoryPressure(input.memory);
  const decide = (rateScale: number, memorySlack: number): LoadAssessment => {
    const { medium, high } = policy.demandEventsPerSecond;
    const demand: DemandLevel = rate >= high * rateScale ? 'high' : rate >= medium * rateScale ? 'medium' : 'low';
    const watermark = policy.memoryWatermark[demand] - memorySlack;
    return { tier: pressure >= watermark ? demand : 'normal', demand, memoryPressure: pressure, watermark };
  };
  const entered = decide(1, 0);
  if (previous === undefined || rank(previous) <= rank(entered.tier)) return entered;
  // Relaxed thresholds can only give the same tier or a higher one; keep what they still justify, up to `previous`.
  const relaxed = decide(1 - policy.hysteresis.eventRate, policy.hysteresis.memory);
  return rank(relaxed.tier) <= rank(previous) ? relaxed : { ...relaxed, tier: previous };
}

/** Decides the load tier from the event rate and the runtimes' memory reports (see the policy above). */
export function evaluateLoadTier(input: LoadInputs, policy: LoadPolicy = DEFAULT_LOAD_POLICY, previous?: LoadTier): LoadTier {
  return assessLoad(input, policy, previous).tier;
}

/** A tenant's scoring policy with load tightening applied: what score() and idleDecision() should be given. */
export interface EffectivePolicy extends ScoringPolicy {
  tier: LoadTier;
  /** The tenant whose overrides were applied; undefined when the defaults were used. */
  tenant: string | undefined;
}

const Fraction = (description: string) => Type.Number({ minimum: 0, maximum: 1, description });
const Milliseconds = (minimum: number, maximum: number, description: string) => Type.Integer({ minimum, maximum, description });
const Strict = <T extends Record<string, TSchema>>(properties: T) => Type.Object(properties, { additionalProperties: false });
const PerKind = <T extends TSchema>(item: () => T) =>
  Strict({
    input: Type.Optional(item()),
    edit: Type.Optional(item()),
    cursor: Type.Optional(item()),
    message: Type.Optional(item()),
    output: Type.Optional(item()),
  });

/** One tenant's overrides: any part of the scoring policy, each field optional; unknown fields are errors. */
export const TenantPolicySchema = Strict({
  weights: Type.Optional(
    Strict({
      behavior: Type.Optional(Fraction('Relative weight of behaviour.')),
      semantic: Type.Optional(Fraction('Relative weight of semantic continuity.')),
      timing: Type.Optional(Fraction('Relative weight of timing.')),
    }),
  ),
  threshold: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 0.95, description: 'Score below which a session is an idle candidate.' })),
  graceMs: Type.Optional(Milliseconds(0, 86_400_000, 'Time continuously below the threshold before idle (floored at the minimum grace).')),
  honorRelease: Type.Optional(Type.Boolean({ description: 'Whether inference.completed with release: true ends the session at once.' })),
  behavior: Type.Optional(
    Strict({
      halfLifeMs: Type.Optional(Milliseconds(1000, 3_600_000, 'Half-life of activity rates.')),
      kindWeight: Type.Optional(PerKind(() => Fraction('Most this kind alone contributes.'))),
      typicalPerMinute: Type.Optional(PerKind(() => Type.Number({ exclusiveMinimum: 0, maximum: 100_000 }))),
      dwellWeight: Type.Optional(Fraction('Most cursor dwell alone contributes.')),
      typicalDwellMs: Type.Optional(Milliseconds(1, 3_600_000, 'Dwell at 63% of its weight.')),
      dwellJoinMs: Type.Optional(Milliseconds(0, 600_000, 'Cursor events closer than this are one dwell.')),
    }),
  ),
  semantic: Type.Optional(
    Strict({
      halfLifeMs: Type.Optional(Milliseconds(1000, 86_400_000, 'Half-life of continuity after the last message.')),
      smoothing: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1 })),
      embeddingFloor: Type.Optional(Type.Number({ minimum: -1, maximum: 1 })),
      embeddingCeiling: Type.Optional(Type.Number({ minimum: -1, maximum: 1 })),
      lexicalFloor: Type.Optional(Fraction('Trigram cosine counted as unrelated.')),
      lexicalCeiling: Type.Optional(Fraction('Trigram cosine counted as fully continuous.')),
    }),
  ),
  timing: Type.Optional(
    Strict({
      spread: Type.Optional(Type.Number({ minimum: 0, maximum: 20 })),
      floorMs: Type.Optional(Milliseconds(1000, 86_400_000, 'Lowest silence threshold.')),
      ceilingMs: Type.Optional(Milliseconds(1000, 86_400_000, 'Highest silence threshold.')),
      gapSmoothing: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1 })),
      priorGapMs: Type.Optional(Milliseconds(1, 86_400_000, 'Gap assumed before a rhythm is known.')),
    }),
  ),
});

/** One tenant's overrides, as read from TENANT_POLICIES. */
export type TenantPolicy = Static<typeof TenantPolicySchema>;

const TenantPoliciesSchema = Type.Record(Type.String({ minLength: 1 }), TenantPolicySchema);

/** TENANT_POLICIES (or LOAD_POLICY) could not be used; the message says where and why. */
export class PolicyError extends Error {
  override name = 'PolicyError';
}

function schemaErrors(variable: string, schema: TSchema, value: unknown): string[] {
  const problems: string[] = [];
  for (const error of Value.Errors(schema, value)) {
    problems.push(`${error.path === '' ? '(top level)' : error.path}: ${error.message}`);
    if (problems.length === 5) break;
  }
  return problems.map((problem) => `${variable} ${problem}`);
}

function parseJson(variable: string, json: string): unknown {
  try {
    return JSON.parse(json) as unknown;
  } catch (error) {
    throw new PolicyError(`${variable} is not valid JSON: ${(error as Error).message}`);
  }
}

/** Applies a tenant's overrides to a base scoring policy. */
export function mergePolicy(base: ScoringPolicy, override: TenantPolicy): ScoringPolicy {
  const { kindWeight, typicalPerMinute, ...behavior } = override.behavior ?? {};
  return {
    weights: { ...base.weights, ...override.weights },
    threshold: override.threshold ?? base.threshold,
    graceMs: override.graceMs ?? base.graceMs,
    honorRelease: override.honorRelease ?? base.honorRelease,
    behavior: {
      ...base.behavior,
      ...behavior,
      kindWeight: { ...base.behavior.kindWeight, ...kindWeight },
      typicalPerMinute: { ...base.behavior.typicalPerMinute, ...typicalPerMinute },
    },
    semantic: { ...base.semantic, ...override.semantic },
    timing: { ...base.timing, ...override.timing },
  };
}

// Rules that span fields, checked on the merged policy so a tenant overriding one side is judged against the other.
function crossFieldProblems(policy: ScoringPolicy): string[] {
  const problems: string[] = [];
  const { behavior, semantic, timing } = policy.weights;
  if (!(behavior + semantic + timing > 0)) problems.push('weights must not all be 0');
  if (policy.timing.floorMs > policy.timing.ceilingMs) problems.push('timing.floorMs must not exceed timing.ceilingMs');
  if (policy.semantic.embeddingFloor >= policy.semantic.embeddingCeiling) problems.push('semantic.embeddingFloor must be below semantic.embeddingCeiling');
  if (policy.semantic.lexicalFloor >= policy.semantic.lexicalCeiling) problems.push('semantic.lexicalFloor must be below semantic.lexicalCeiling');
  return problems;
}

/**
 * Parses TENANT_POLICIES: a JSON object from tenant id to overrides (empty text = no overrides). Throws a PolicyError
 * naming every problem found (up to 5 per kind) rather than leaving a tenant silently on the defaults.
 */
export function parseTenantPolicies(json: string, base: ScoringPolicy = DEFAULT_SCORING_POLICY): Readonly<Record<string, TenantPolicy>> {
  if (json.trim() === '') return Object.freeze({});
  const value = parseJson('TENANT_POLICIES', json);
  const problems = schemaErrors('TENANT_POLICIES', TenantPoliciesSchema, value);
  if (problems.length > 0) throw new PolicyError(problems.join('; '));
  const policies = value as Record<string, TenantPolicy>;
  for (const [tenant, override] of Object.entries(policies)) {
    const cross = crossFieldProblems(mergePolicy(base, override)).map((p) => `TENANT_POLICIES /${tenant}: ${p}`);
    problems.push(...cross);
  }
  if (problems.length > 0) throw new PolicyError(problems.join('; '));
  return Object.freeze(policies);
}

const TighteningSchema = Strict({
  thresholdRaise: Type.Number({ minimum: 0, maximum: 1 }),
  graceFactor: Type.Number({ exclusiveMinimum: 0, maximum: 1 }),
});

/** A deployment's load policy overrides (LOAD_POLICY); each part replaces the default's part of the same name. */
export const LoadPolicySchema = Strict({
  demandEventsPerSecond: Type.Optional(Strict({ medium: Type.Number({ exclusiveMinimum: 0 }), high: Type.Number({ exclusiveMinimum: 0 }) })),
  memoryWatermark: Type.Optional(Strict({ low: Fraction('Watermark at low demand.'), medium: Fraction('Watermark at medium demand.'), high: Fraction('Watermark at high demand.') })),
  hysteresis: Type.Optional(Strict({ eventRate: Type.Number({ minimum: 0, maximum: 0.9 }), memory: Type.Number({ minimum: 0, maximum: 0.5 }) })),
  tightening: Type.Optional(Strict({ normal: TighteningSchema, low: TighteningSchema, medium: TighteningSchema, high: TighteningSchema })),
  minGraceMs: Type.Optional(Milliseconds(0, 86_400_000, 'Shortest grace window any tenant or tier may have.')),
  maxThreshold: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1 })),
  evaluateEveryMs: Type.Optional(Milliseconds(100, 3_600_000, 'How often the tier is re-evaluated.')),
});

/** Checks the orderings the monotonic guarantee relies on; returns the problems found. */
export function loadPolicyProblems(policy: LoadPolicy): string[] {
  const problems: string[] = [];
  if (policy.demandEventsPerSecond.medium > policy.demandEventsPerSecond.high) problems.push('demandEventsPerSecond.medium must not exceed .high');
  const { low, medium, high } = policy.memoryWatermark;
  if (!(low >= medium && medium >= high)) problems.push('memoryWatermark must not rise with demand (low >= medium >= high)');
  for (let i = 1; i < LOAD_TIERS.length; i++) {
    const lower = policy.tightening[LOAD_TIERS[i - 1]!];
    const higher = policy.tightening[LOAD_TIERS[i]!];
    if (higher.thresholdRaise < lower.thresholdRaise || higher.graceFactor > lower.graceFactor) {
      problems.push(`tightening.${LOAD_TIERS[i]!} must be at least as tight as tightening.${LOAD_TIERS[i - 1]!}`);
    }
  }
  return problems;
}

/** Parses LOAD_POLICY (JSON overrides of DEFAULT_LOAD_POLICY; empty text = the defaults), rejecting any that break monotonicity. */
export function parseLoadPolicy(json: string, base: LoadPolicy = DEFAULT_LOAD_POLICY): LoadPolicy {
  if (json.trim() === '') return base;
  const value = parseJson('LOAD_POLICY', json);
  const problems = schemaErrors('LOAD_POLICY', LoadPolicySchema, value);
  if (problems.length > 0) throw new PolicyError(problems.join('; '));
  const policy: LoadPolicy = { ...base, ...(value as Partial<LoadPolicy>) };
  const ordering = loadPolicyProblems(policy).map((p) => `LOAD_POLICY: ${p}`);
  if (ordering.length > 0) throw new PolicyError(ordering.join('; '));
  return Object.freeze(policy);
}

function normalised(weights: ComponentWeights): ComponentWeights {
  const total = weights.behavior + weights.semantic + weights.timing;
  if (!(total > 0) || !Number.isFinite(total)) return normalised(DEFAULT_SCORING_POLICY.weights);
  return { behavior: weights.behavior / total, semantic: weights.semantic / total, timing: weights.timing / total };
}

/**
 * The policy to score a tenant's session with under a load tier: the tenant's overrides on the base, weights
 * normalised, the threshold raised and the grace shortened by the tier, within maxThreshold and minGraceMs.
 */
export function resolvePolicy(
  tenant: string | undefined,
  tenantPolicies: Readonly<Record<string, TenantPolicy>>,
  tier: LoadTier,
  options: { base?: ScoringPolicy; load?: LoadPolicy } = {},
): EffectivePolicy {
  const base = options.base ?? DEFAULT_SCORING_POLICY;
  const load = options.load ?? DEFAULT_LOAD_POLICY;
  const override = tenant !== undefined && Object.hasOwn(tenantPolicies, tenant) ? tenantPolicies[tenant] : undefined;
  const merged = override === undefined ? base : mergePolicy(base, override);
  const tightening = load.tightening[tier];
  return {
    ...merged,
    weights: normalised(merged.weights),
    threshold: Math.min(load.maxThreshold, merged.threshold + tightening.thresholdRaise),
    graceMs: Math.max(load.minGraceMs, Math.round(merged.graceMs * tightening.graceFactor)),
    tier,
    tenant: override === undefined ? undefined : tenant,
  };
}
