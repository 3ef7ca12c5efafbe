import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError } from '../core/config.ts';
import { DEFAULT_LOAD_POLICY } from './load-policy.ts';
import { DEFAULT_SCORING_POLICY } from './scoring.ts';
import { policyFor, readActivityScoreSettings } from './settings.ts';

test('defaults: 60 s grace, the default load policy evaluated every 10 s, no tenant overrides', () => {
  const s = readActivityScoreSettings({});
  assert.equal(s.base.graceMs, 60_000);
  assert.equal(s.base.threshold, DEFAULT_SCORING_POLICY.threshold);
  assert.deepEqual(s.loadPolicy, { ...DEFAULT_LOAD_POLICY, evaluateEveryMs: 10_000 });
  assert.deepEqual(s.tenantPolicies, {});
});

test('IDLE_GRACE_MS, LOAD_EVAL_MS and a tenant’s overrides shape the policy a session is judged by', () => {
  const s = readActivityScoreSettings({ IDLE_GRACE_MS: '90000', LOAD_EVAL_MS: '2500', TENANT_POLICIES: '{"acme":{"threshold":0.6}}' });
  assert.equal(s.loadPolicy.evaluateEveryMs, 2500);
  assert.equal(policyFor(s, 'acme', 'normal').threshold, 0.6);
  assert.equal(policyFor(s, 'acme', 'normal').graceMs, 90_000);
  assert.equal(policyFor(s, 'other', 'normal').threshold, 0.5);
  assert.equal(policyFor(s, 'other', 'high').graceMs, 60_000, 'a tier shortens the grace, never below the minimum');
});

test('a bad value stops the process with a ConfigError naming the variable', () => {
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ TENANT_POLICIES: '{"acme":{"treshold":0.6}}' }, /TENANT_POLICIES/],
    [{ TENANT_POLICIES: 'not json' }, /TENANT_POLICIES is not valid JSON/],
    [{ LOAD_POLICY: '{"memoryWatermark":{"low":0.5,"medium":0.7,"high":0.9}}' }, /LOAD_POLICY/],
    [{ IDLE_GRACE_MS: 'soon' }, /IDLE_GRACE_MS/],
    [{ LOAD_EVAL_MS: '5' }, /LOAD_EVAL_MS/],
  ];
  for (const [env, message] of cases) assert.throws(() => readActivityScoreSettings(env), (err: unknown) => err instanceof ConfigError && message.test(err.message), JSON.stringify(env));
});
