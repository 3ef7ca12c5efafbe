// Properties over arbitrary histories: out-of-order and non-finite times, garbage embeddings, dimension switches,
// arbitrary tenant policies and tiers. They guard the invariants the function relies on without re-deriving them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { LOAD_TIERS, parseTenantPolicies, resolvePolicy, type EffectivePolicy, type TenantPolicy } from './load-policy.ts';
import {
  ACTIVITY_KINDS,
  applyActivity,
  applyCompletion,
  decodeContext,
  DEFAULT_SCORING_POLICY,
  encodeContext,
  idleDecision,
  initialContext,
  score,
  type ActivityContext,
  type ActivityEvent,
} from './scoring.ts';

const T0 = Date.parse('2025-01-01T00:00:00Z');

type Step = { type: 'activity'; offset: number; event: Omit<ActivityEvent, 'at'> } | { type: 'completion'; offset: number; release: boolean };

// Offsets are relative to the previous event, so negative ones deliver events out of order.
const offset = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: -5_000, max: 20_000 }) },
  { weight: 2, arbitrary: fc.integer({ min: -120_000, max: 600_000 }) },
  { weight: 1, arbitrary: fc.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, 0) },
);
const embedding = fc.oneof(
  fc.array(fc.double(), { maxLength: 4 }),
  fc.array(fc.double({ min: -1, max: 1, noNaN: true }), { minLength: 3, maxLength: 3 }),
  fc.array(fc.double({ min: -1e38, max: 1e38, noNaN: true }), { minLength: 5, maxLength: 5 }),
);
const text = fc.oneof(fc.string({ maxLength: 40 }), fc.constantFrom('deploy the reaper', 'deploy the reaper on a cluster', 'banana bread', '???'));
const step: fc.Arbitrary<Step> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      type: fc.constant('activity' as const),
      offset,
      event: fc.record(
        { kind: fc.oneof(fc.constantFrom(...ACTIVITY_KINDS), fc.constant('message' as const)), text, embedding },
        { requiredKeys: ['kind'] },
      ),
    }),
  },
  { weight: 1, arbitrary: fc.record({ type: fc.constant('completion' as const), offset, release: fc.boolean() }) },
);

const fraction = fc.double({ min: 0, max: 1, noNaN: true });
const tenantPolicy: fc.Arbitrary<TenantPolicy> = fc.record(
  {
    weights: fc.record({ behavior: fraction, semantic: fraction, timing: fraction }),
    threshold: fc.double({ min: 0.01, max: 0.95, noNaN: true }),
    graceMs: fc.integer({ min: 0, max: 3_600_000 }),
    honorRelease: fc.boolean(),
    timing: fc.record({ spread: fc.double({ min: 0, max: 20, noNaN: true }), gapSmoothing: fc.double({ min: 0.01, max: 1, noNaN: true }) }),
    behavior: fc.record({ halfLifeMs: fc.integer({ min: 1000, max: 3_600_000 }) }),
  },
  { requiredKeys: [] },
);

// Parses the generated overrides the way the function will, dropping the few that fail cross-field checks.
function tenants(override: TenantPolicy): Readonly<Record<string, TenantPolicy>> {
  try {
    return parseTenantPolicies(JSON.stringify({ t: override }));
  } catch {
    return {};
  }
}

function replay(steps: Step[], policy: EffectivePolicy, visit: (ctx: ActivityContext) => void = () => {}): ActivityContext {
  let ctx = initialContext(T0, policy);
  let clock = T0;
  visit(ctx);
  for (const s of steps) {
    const at = clock + s.offset;
    if (Number.isFinite(at)) clock = at;
    ctx = s.type === 'activity' ? applyActivity(ctx, { ...s.event, at }, policy) : applyCompletion(ctx, { at, release: s.release }, policy);
    visit(ctx);
  }
  return ctx;
}

// Mostly around the grace window, where decisions change, sometimes far beyond it.
const elapsed = fc.oneof(fc.integer({ min: 0, max: 180_000 }), fc.integer({ min: 0, max: 3_600_000 }));
const inUnit = (x: number) => Number.isFinite(x) && x >= 0 && x <= 1;
const probes = fc.array(fc.oneof(fc.integer({ min: -600_000, max: 86_400_000 }), fc.constantFrom(Number.NaN, 1e15)), { minLength: 1, maxLength: 4 });

test('score and components are finite and within [0, 1] for any history, policy and time', () => {
  fc.assert(
    fc.property(fc.array(step, { maxLength: 30 }), tenantPolicy, fc.constantFrom(...LOAD_TIERS), probes, (steps, override, tier, times) => {
      const policy = resolvePolicy('t', tenants(override), tier);
      replay(steps, policy, (ctx) => {
        assert.ok(Number.isFinite(ctx.lastEventAt) && Number.isFinite(ctx.predictedIdleEndAt));
        for (const dt of times) {
          const result = score(ctx, ctx.lastEventAt + dt, policy);
          assert.ok(inUnit(result.score), `score ${result.score}`);
          for (const name of ['behavior', 'semantic', 'timing'] as const) assert.ok(inUnit(result.components[name]), `${name} ${result.components[name]}`);
          assert.ok(Math.abs(result.weights.behavior + result.weights.semantic + result.weights.timing - 1) < 1e-9);
          const decision = idleDecision(ctx, ctx.lastEventAt + dt, policy);
          assert.ok(inUnit(decision.score));
          if (decision.idleAt !== undefined) assert.ok(Number.isFinite(decision.idleAt));
        }
      });
    }),
  );
});

test('every context on the way round-trips through its stored form', () => {
  fc.assert(
    fc.property(fc.array(step, { maxLength: 30 }), (steps) => {
      replay(steps, resolvePolicy(undefined, {}, 'normal'), (ctx) => {
        assert.deepStrictEqual(decodeContext(encodeContext(ctx)), ctx);
      });
    }),
  );
});

test('with no new events the score never rises, which is what makes the grace decision exact', () => {
  fc.assert(
    fc.property(fc.array(step, { maxLength: 20 }), tenantPolicy, fc.array(fc.integer({ min: 0, max: 7_200_000 }), { minLength: 2, maxLength: 6 }), (steps, override, times) => {
      const policy = resolvePolicy('t', tenants(override), 'normal');
      const ctx = replay(steps, policy);
      const sorted = [...times].sort((a, b) => a - b);
      for (let i = 1; i < sorted.length; i++) {
        const earlier = score(ctx, ctx.lastEventAt + sorted[i - 1]!, policy).score;
        const later = score(ctx, ctx.lastEventAt + sorted[i]!, policy).score;
        assert.ok(later <= earlier + 1e-12, `score rose from ${earlier} to ${later}`);
      }
    }),
  );
});

test('idle means below the threshold for the whole grace window since the last event, unless held or released', () => {
  fc.assert(
    fc.property(fc.array(step, { maxLength: 20 }), tenantPolicy, fc.constantFrom(...LOAD_TIERS), elapsed, (steps, override, tier, dt) => {
      const policy = resolvePolicy('t', tenants(override), tier);
      const ctx = replay(steps, policy);
      const now = ctx.lastEventAt + dt;
      const decision = idleDecision(ctx, now, policy);
      if (decision.reason === 'release-requested') return;
      const windowStart = now - policy.graceMs;
      const expected = windowStart >= ctx.lastEventAt && score(ctx, windowStart, policy).score < policy.threshold;
      assert.equal(decision.idle, expected, `${decision.reason}: score at window start ${score(ctx, windowStart, policy).score}`);
      if (decision.belowSince !== undefined) {
        assert.ok(score(ctx, decision.belowSince, policy).score < policy.threshold);
        if (decision.belowSince > ctx.lastEventAt) assert.ok(score(ctx, decision.belowSince - 1, policy).score >= policy.threshold);
      }
      if (!decision.idle && decision.idleAt !== undefined) assert.ok(decision.idleAt > now);
      const held = idleDecision(ctx, now, policy, { holdUntil: now + 1 });
      assert.equal(held.idle, false);
    }),
  );
});

test('a higher load tier never makes a session less likely to be idle, nor idle later', () => {
  fc.assert(
    fc.property(
      fc.array(step, { maxLength: 20 }),
      tenantPolicy,
      elapsed,
      fc.option(fc.integer({ min: -60_000, max: 600_000 }), { nil: undefined }),
      (steps, override, dt, holdOffset) => {
        const policies = tenants(override);
        const ctx = replay(steps, resolvePolicy('t', policies, 'normal'));
        const now = ctx.lastEventAt + dt;
        const holdUntil = holdOffset === undefined ? undefined : now + holdOffset;
        const decisions = LOAD_TIERS.map((tier) => idleDecision(ctx, now, resolvePolicy('t', policies, tier), { holdUntil }));
        for (let i = 1; i < decisions.length; i++) {
          const lower = decisions[i - 1]!;
          const higher = decisions[i]!;
          if (lower.idle) assert.equal(higher.idle, true, `idle under ${LOAD_TIERS[i - 1]} but not under ${LOAD_TIERS[i]}`);
          if (lower.idleAt !== undefined) assert.ok(higher.idleAt !== undefined && higher.idleAt <= lower.idleAt);
        }
      },
    ),
  );
});

test('the default policy is the one resolved for a tenant without overrides under normal load', () => {
  const { tier, tenant, ...resolved } = resolvePolicy('anyone', {}, 'normal');
  assert.equal(tier, 'normal');
  assert.equal(tenant, undefined);
  assert.deepStrictEqual(resolved, { ...DEFAULT_SCORING_POLICY, weights: { ...DEFAULT_SCORING_POLICY.weights } });
});
