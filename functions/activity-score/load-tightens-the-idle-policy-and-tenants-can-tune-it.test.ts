import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  assessLoad,
  DEFAULT_LOAD_POLICY,
  evaluateLoadTier,
  LOAD_TIERS,
  loadPolicyProblems,
  parseLoadPolicy,
  parseTenantPolicies,
  PolicyError,
  resolvePolicy,
  type LoadTier,
} from './load-policy.ts';
import { applyActivity, DEFAULT_SCORING_POLICY, idleDecision, initialContext } from './scoring.ts';

const GiB = 2 ** 30;
const runtime = (usedShare: number) => ({ totalBytes: 80 * GiB, usedBytes: usedShare * 80 * GiB });

test('the tier is the demand level once memory reaches that level’s watermark (85 / 75 / 60 %), and normal below it', () => {
  const cases: Array<[eventsPerSecond: number, memoryShares: number[], expected: LoadTier]> = [
    [10, [], 'normal'],
    [5000, [], 'normal'],
    [10, [0.84], 'normal'],
    [10, [0.85], 'low'],
    [10, [0.99], 'low'],
    [200, [0.74], 'normal'],
    [200, [0.75], 'medium'],
    [999, [0.8], 'medium'],
    [1000, [0.59], 'normal'],
    [1000, [0.6], 'high'],
    [1000, [0.1, 0.2, 0.61], 'normal'],
    [1000, [0.1, 0.61, 0.65], 'high'],
  ];
  for (const [eventsPerSecond, shares, expected] of cases) {
    const tier = evaluateLoadTier({ eventsPerSecond, memory: shares.map(runtime) });
    assert.equal(tier, expected, `${eventsPerSecond}/s, memory ${shares.join(',')}`);
  }
});

test('memory reports with no usable figures are skipped and pressure is the median runtime\'s', () => {
  const memory = [
    { totalBytes: 0, usedBytes: 10 },
    { totalBytes: Number.NaN, usedBytes: 1 },
    { totalBytes: 100, usedBytes: -1 },
    { totalBytes: 100, usedBytes: 500 },
    runtime(0.3),
  ];
  const assessment = assessLoad({ eventsPerSecond: Number.NaN, memory });
  assert.equal(assessment.memoryPressure, 0.3, 'a runtime reporting more used than total is not believed');
  assert.equal(assessment.demand, 'low');
  assert.equal(assessment.tier, 'normal');
  assert.equal(assessLoad({ eventsPerSecond: 0, memory: [runtime(0.2), runtime(0.9), runtime(0.4)] }).memoryPressure, 0.4);
  assert.equal(assessLoad({ eventsPerSecond: 0, memory: [runtime(0.2), runtime(0.9), runtime(0.4), runtime(0.6)] }).memoryPressure, 0.5);
});

test('one runtime reporting itself full among honest ones moves no tenant to a tighter policy', () => {
  const honest = [runtime(0.3), runtime(0.35), runtime(0.4), runtime(0.3)];
  for (const eventsPerSecond of [0, 500, 5000]) {
    const fleet = assessLoad({ eventsPerSecond, memory: [...honest, { totalBytes: 80e9, usedBytes: 80e9 }] });
    assert.equal(fleet.tier, 'normal', `${eventsPerSecond}/s`);
  }
});

test('a tier is left only once load falls clearly below what raised it', () => {
  const atHigh = { eventsPerSecond: 1000, memory: [runtime(0.6)] };
  assert.equal(evaluateLoadTier(atHigh), 'high');
  const slightlyLess = { eventsPerSecond: 900, memory: [runtime(0.58)] };
  assert.equal(evaluateLoadTier(slightlyLess), 'normal', 'without history: 900/s is medium demand, 58 % is under its 75 % watermark');
  assert.equal(evaluateLoadTier(slightlyLess, DEFAULT_LOAD_POLICY, 'high'), 'high', 'within 20 % of the rate and 5 points of the watermark');
  assert.equal(evaluateLoadTier({ eventsPerSecond: 700, memory: [runtime(0.58)] }, DEFAULT_LOAD_POLICY, 'high'), 'normal');
  assert.equal(evaluateLoadTier({ eventsPerSecond: 900, memory: [runtime(0.5)] }, DEFAULT_LOAD_POLICY, 'high'), 'normal');
  assert.equal(evaluateLoadTier({ eventsPerSecond: 900, memory: [runtime(0.72)] }, DEFAULT_LOAD_POLICY, 'high'), 'high');
  assert.equal(evaluateLoadTier(atHigh, DEFAULT_LOAD_POLICY, 'normal'), 'high', 'hysteresis never delays going up');
  assert.equal(evaluateLoadTier({ eventsPerSecond: 1200, memory: [runtime(0.82)] }, DEFAULT_LOAD_POLICY, 'low'), 'high');
});

test('each tier raises the threshold and shortens the grace window, never below the minimum grace', () => {
  const long = parseTenantPolicies(JSON.stringify({ patient: { graceMs: 600_000 } }));
  const thresholds = LOAD_TIERS.map((tier) => resolvePolicy(undefined, {}, tier).threshold);
  assert.deepEqual(thresholds.map((t) => Math.round(t * 100) / 100), [0.5, 0.55, 0.6, 0.7]);
  assert.deepEqual(LOAD_TIERS.map((tier) => resolvePolicy(undefined, {}, tier).graceMs), [60_000, 60_000, 60_000, 60_000], 'the default grace is already the minimum');
  assert.deepEqual(LOAD_TIERS.map((tier) => resolvePolicy('patient', long, tier).graceMs), [600_000, 450_000, 300_000, 150_000]);

  const hasty = parseTenantPolicies(JSON.stringify({ hasty: { graceMs: 1000, threshold: 0.9 } }));
  const resolved = resolvePolicy('hasty', hasty, 'high');
  assert.equal(resolved.graceMs, DEFAULT_LOAD_POLICY.minGraceMs);
  assert.equal(resolved.threshold, DEFAULT_LOAD_POLICY.maxThreshold);
  assert.equal(resolved.tier, 'high');
  assert.equal(resolved.tenant, 'hasty');
});

test('under a higher tier a quiet session is idle sooner', () => {
  let ctx = initialContext(0);
  for (let i = 0; i < 30; i++) ctx = applyActivity(ctx, { kind: 'input', at: 1000 + i * 3000 }, DEFAULT_SCORING_POLICY);
  const patient = parseTenantPolicies(JSON.stringify({ patient: { graceMs: 300_000 } }));
  const idleAt = LOAD_TIERS.map((tier) => idleDecision(ctx, ctx.lastEventAt, resolvePolicy('patient', patient, tier)).idleAt!);
  for (let i = 1; i < idleAt.length; i++) assert.ok(idleAt[i]! < idleAt[i - 1]!, `${LOAD_TIERS[i]} idles at ${idleAt[i]}, ${LOAD_TIERS[i - 1]} at ${idleAt[i - 1]}`);
});

test('tenant overrides are merged field by field over the defaults, and other tenants keep the defaults', () => {
  const policies = parseTenantPolicies(
    JSON.stringify({
      acme: { weights: { semantic: 0 }, threshold: 0.6, behavior: { kindWeight: { cursor: 0.1 } }, timing: { floorMs: 30_000 } },
    }),
  );
  const acme = resolvePolicy('acme', policies, 'normal');
  assert.equal(acme.threshold, 0.6);
  assert.equal(acme.weights.semantic, 0);
  assert.ok(Math.abs(acme.weights.behavior - 0.4 / 0.65) < 1e-12, 'weights are normalised');
  assert.equal(acme.behavior.kindWeight.cursor, 0.1);
  assert.equal(acme.behavior.kindWeight.input, DEFAULT_SCORING_POLICY.behavior.kindWeight.input);
  assert.equal(acme.timing.floorMs, 30_000);
  assert.equal(acme.timing.ceilingMs, DEFAULT_SCORING_POLICY.timing.ceilingMs);

  const other = resolvePolicy('globex', policies, 'normal');
  assert.equal(other.tenant, undefined);
  assert.equal(other.threshold, DEFAULT_SCORING_POLICY.threshold);
  assert.deepEqual(other.weights, DEFAULT_SCORING_POLICY.weights);
  assert.equal(resolvePolicy('__proto__', policies, 'normal').tenant, undefined, 'only a tenant’s own entry counts');
});

test('bad tenant policies are rejected with messages that say where and why', () => {
  const rejects = (json: string, ...fragments: string[]) => {
    assert.throws(
      () => parseTenantPolicies(json),
      (error: unknown) => error instanceof PolicyError && fragments.every((f) => error.message.includes(f)),
      `${json} should be rejected mentioning ${fragments.join(', ')}`,
    );
  };
  rejects('{not json', 'TENANT_POLICIES is not valid JSON');
  rejects('[]', 'TENANT_POLICIES');
  rejects('{"acme":{"threshold":1.5}}', '/acme/threshold');
  rejects('{"acme":{"threshold":0}}', '/acme/threshold');
  rejects('{"acme":{"graceMs":"60s"}}', '/acme/graceMs');
  rejects('{"acme":{"treshold":0.6}}', '/acme/treshold');
  rejects('{"acme":{"weights":{"behavior":0,"semantic":0,"timing":0}}}', '/acme', 'weights must not all be 0');
  rejects('{"acme":{"timing":{"floorMs":900000}}}', '/acme', 'floorMs must not exceed');
  rejects('{"acme":{"semantic":{"lexicalFloor":0.6}}}', '/acme', 'lexicalFloor must be below');
  rejects('{"acme":{"behavior":{"kindWeight":{"typing":1}}}}', '/acme/behavior/kindWeight/typing');
  assert.deepEqual(parseTenantPolicies(''), {});
  assert.deepEqual(parseTenantPolicies('{}'), {});
});

test('a load policy that would break the monotonic guarantee is refused', () => {
  assert.deepEqual(loadPolicyProblems(DEFAULT_LOAD_POLICY), []);
  assert.equal(parseLoadPolicy(''), DEFAULT_LOAD_POLICY);
  const custom = parseLoadPolicy('{"minGraceMs":30000,"memoryWatermark":{"low":0.9,"medium":0.8,"high":0.7}}');
  assert.equal(custom.minGraceMs, 30_000);
  assert.equal(custom.memoryWatermark.high, 0.7);
  assert.equal(custom.demandEventsPerSecond.medium, DEFAULT_LOAD_POLICY.demandEventsPerSecond.medium);
  assert.throws(() => parseLoadPolicy('{"memoryWatermark":{"low":0.6,"medium":0.75,"high":0.85}}'), /memoryWatermark must not rise/);
  assert.throws(
    () =>
      parseLoadPolicy(
        JSON.stringify({
          tightening: {
            normal: { thresholdRaise: 0, graceFactor: 1 },
            low: { thresholdRaise: 0.1, graceFactor: 0.5 },
            medium: { thresholdRaise: 0.05, graceFactor: 0.5 },
            high: { thresholdRaise: 0.2, graceFactor: 0.25 },
          },
        }),
      ),
    /tightening.medium must be at least as tight/,
  );
  assert.throws(() => parseLoadPolicy('{"minGraceMs":-1}'), PolicyError);
  assert.throws(() => parseLoadPolicy('{"surprise":1}'), /\/surprise/);
});
