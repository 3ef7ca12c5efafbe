// The bench must measure the policy the function runs, not a copy of it: these tests tie the replay's activity-score
// policy to the function's own exports and settings.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { demoteAt, judgeIdleness } from '../../../functions/activity-score/idle-judgement.ts';
import { applyActivity, applyCompletion, initialContext } from '../../../functions/activity-score/scoring.ts';
import { policyFor, readActivityScoreSettings } from '../../../functions/activity-score/settings.ts';
import { activityScore, TRACE_TENANT } from './policies.ts';
import { replay, type ReplayOptions } from './replay.ts';
import { loadMooncakeTrace, rebuildSessions, type TraceRequest } from './sessions.ts';

const options: ReplayOptions = { tokensPerSecond: 10, bytesPerToken: 1 };
const NO_DEMOTE = { DEMOTE_QUIET_MS: '0' };

test('a one-turn session is destroyed exactly when the function judges it idle', () => {
  const turn: TraceRequest = { index: 0, arrivalMs: 1_000_000, inputTokens: 3000, outputTokens: 100, hashIds: [0, 1, 2, 3, 4, 5] };
  const { sessions } = rebuildSessions([turn]);
  const m = replay(sessions, activityScore('activity-score defaults, runtime cannot demote', NO_DEMOTE), options);

  // The same events folded by hand through the function's exports: message at arrival, completion 10 s later.
  const settings = readActivityScoreSettings(NO_DEMOTE);
  const policy = policyFor(settings, TRACE_TENANT, 'normal');
  const completedAt = turn.arrivalMs + 10_000;
  const ctx = applyCompletion(applyActivity(initialContext(turn.arrivalMs, policy), { kind: 'message', at: turn.arrivalMs }, policy), { at: completedAt, release: false }, policy);
  const idleAt = judgeIdleness(settings, ctx, completedAt, { tenant: TRACE_TENANT, tier: 'normal', holdUntil: undefined }).decision.idleAt;
  assert.ok(idleAt !== undefined && idleAt > completedAt);
  assert.equal(m.wasteByteSeconds, ((idleAt - completedAt) / 1000) * 3100, 'held from completion until the idle verdict');
  assert.equal(judgeIdleness(settings, ctx, idleAt - 1, { tenant: TRACE_TENANT, tier: 'normal', holdUntil: undefined }).decision.idle, false);
});

test('changing a weight in the tenant policy (TENANT_POLICIES) moves the replay, and another tenant\'s policy does not', async () => {
  const requests = (await loadMooncakeTrace()).filter((r) => r.arrivalMs < 300_000);
  const { sessions } = rebuildSessions(requests);
  // Without demotes, so that every verdict is the weighted score's (a demoted session's long grace would hide some).
  const run = (env: Record<string, string>) => replay(sessions, activityScore('variant', { ...NO_DEMOTE, ...env }), options);
  const defaults = run({});
  const otherTenant = run({ TENANT_POLICIES: JSON.stringify({ someone: { weights: { timing: 1, behavior: 0 } } }) });
  const timingOnly = run({ TENANT_POLICIES: JSON.stringify({ [TRACE_TENANT]: { weights: { timing: 1, behavior: 0 } } }) });
  assert.deepEqual(otherTenant, defaults);
  assert.ok(defaults.spells > 100, `enough spells to judge (got ${defaults.spells})`);
  assert.notEqual(timingOnly.wasteByteSeconds, defaults.wasteByteSeconds);
  assert.notEqual(timingOnly.premature, defaults.premature);
});

test('DEMOTE_QUIET_MS turns on the function\'s demotes, and they cut GPU waste without changing destroys', async () => {
  const requests = (await loadMooncakeTrace()).filter((r) => r.arrivalMs < 300_000);
  const { sessions } = rebuildSessions(requests);
  const plain = replay(sessions, activityScore('no demote', NO_DEMOTE), options);
  const demoting = replay(sessions, activityScore('demote', { DEMOTE_QUIET_MS: '30000', DEMOTED_IDLE_GRACE_MS: '0' }), options);
  assert.equal(plain.demotes, 0);
  assert.ok(demoting.demotes > 0);
  assert.ok(demoting.wasteByteSeconds < plain.wasteByteSeconds);
  assert.equal(demoting.premature, plain.premature, 'a demote never ends a session');
  // The defaults also give a demoted session DEMOTED_IDLE_GRACE_MS: fewer follow-ups find their session destroyed.
  const defaults = replay(sessions, activityScore('defaults'), options);
  assert.ok(defaults.premature < demoting.premature, `${defaults.premature} premature ends with the demoted grace, ${demoting.premature} without`);
});

test('without a pool the tier stays normal, so the checker\'s look cadence (LOAD_EVAL_MS) changes no figure', async () => {
  const requests = (await loadMooncakeTrace()).filter((r) => r.arrivalMs < 300_000);
  const { sessions } = rebuildSessions(requests);
  const env = { DEMOTE_QUIET_MS: '30000', IDLE_GRACE_MS: '300000' };
  const deployed = replay(sessions, activityScore('variant', env), options);
  const hourly = replay(sessions, activityScore('variant', { ...env, LOAD_EVAL_MS: '3600000' }), options);
  assert.ok(deployed.demotes > 0 && deployed.finals > 0);
  // Only the count of looks the engine held off mid-turn may differ (more looks, some while a second turn overlaps the
  // first, whose answer closed the open turn): no reclamation figure.
  const figures = ({ inFlightVerdicts: _, ...m }: typeof deployed) => m;
  assert.deepEqual(figures(hourly), figures(deployed));
});

test('under a pool at 90 % the load tier rises (evaluateLoadTier) and the session is destroyed at the tighter tier\'s idle moment', () => {
  const turn: TraceRequest = { index: 0, arrivalMs: 1_000_000, inputTokens: 3000, outputTokens: 100, hashIds: [0, 1, 2, 3, 4, 5] };
  const { sessions } = rebuildSessions([turn]);
  const env = { IDLE_GRACE_MS: '600000', ...NO_DEMOTE };
  const settings = readActivityScoreSettings(env);
  const policy = policyFor(settings, TRACE_TENANT, 'normal');
  const completedAt = turn.arrivalMs + 10_000;
  const ctx = applyCompletion(applyActivity(initialContext(turn.arrivalMs, policy), { kind: 'message', at: turn.arrivalMs }, policy), { at: completedAt, release: false }, policy);
  const idleAt = (tier: 'normal' | 'low') => judgeIdleness(settings, ctx, completedAt, { tenant: TRACE_TENANT, tier, holdUntil: undefined }).decision.idleAt!;
  // The default load policy: at low demand, memory pressure from 85 % raises the tier to `low` (grace × 0.75).
  assert.ok(idleAt('low') < idleAt('normal'));

  const unbounded = replay(sessions, activityScore('grace 10 min', env), options);
  const pressed = replay(sessions, activityScore('grace 10 min', env), { ...options, poolBytes: Math.ceil(3100 / 0.9) });
  assert.equal(unbounded.wasteByteSeconds, ((idleAt('normal') - completedAt) / 1000) * 3100);
  assert.equal(pressed.wasteByteSeconds, ((idleAt('low') - completedAt) / 1000) * 3100);
});

test('under a pool at 90 % a quiet session is demoted at the pressure moment (PRESSURE_DEMOTE_QUIET_MS), not past its predicted return', () => {
  const turn: TraceRequest = { index: 0, arrivalMs: 1_000_000, inputTokens: 3000, outputTokens: 100, hashIds: [0, 1, 2, 3, 4, 5] };
  const { sessions } = rebuildSessions([turn]);
  const settings = readActivityScoreSettings({});
  const policy = policyFor(settings, TRACE_TENANT, 'normal');
  const completedAt = turn.arrivalMs + 10_000;
  const ctx = applyCompletion(applyActivity(initialContext(turn.arrivalMs, policy), { kind: 'message', at: turn.arrivalMs }, policy), { at: completedAt, release: false }, policy);
  const [normal, pressed] = [demoteAt(settings, ctx, 'normal')!, demoteAt(settings, ctx, 'low')!];
  assert.ok(pressed < normal, 'the defaults demote sooner under pressure');

  const unbounded = replay(sessions, activityScore('defaults'), options);
  const full = replay(sessions, activityScore('defaults'), { ...options, poolBytes: Math.ceil(3100 / 0.9) });
  assert.deepEqual([unbounded.demotes, full.demotes], [1, 1]);
  assert.equal(unbounded.wasteByteSeconds, ((normal - completedAt) / 1000) * 3100);
  assert.equal(full.wasteByteSeconds, ((pressed - completedAt) / 1000) * 3100);
});
