// What bench:reclaim's main thread and its pool worker share: the trace, its sessions, the held-back split, the
// first-half fit, and every policy the bench replays, built the same way in each thread (policies hold closures, so
// they cannot be sent between threads; rebuilding them is deterministic).
import {
  activityScore,
  fitReturnModel,
  fixedTimeout,
  formatDuration,
  observeSpells,
  returnProbabilityPolicy,
  timeoutsFor,
  twoTier,
} from './policies.ts';
import type { ReclaimPolicy, ReplayOptions } from './replay.ts';
import { loadMooncakeTrace, rebuildSessions } from './sessions.ts';

/** One minute in milliseconds. */
export const MIN = 60_000;

/** The name of a fixed demote/destroy pair. */
export const pairName = (d: number, D: number): string => `demote ${formatDuration(d)} / destroy ${formatDuration(D)}`;

/** Builds everything the bench replays, for a decode speed and a KV size per token. */
export async function benchSetup(tokensPerSecond: number, bytesPerToken: number) {
  const requests = await loadMooncakeTrace();
  const { sessions } = rebuildSessions(requests);
  const traceEnd = requests.at(-1)!.arrivalMs;
  const half = traceEnd / 2;
  const base: ReplayOptions = { tokensPerSecond, bytesPerToken, judgedFromMs: half };
  // Sessions with no turn in the judged half open no judged spell: leaving them out changes no unbounded figure.
  const judgedSessions = sessions.filter((s) => s.turns.some((t) => t.arrivalMs >= half));

  // The return-probability policy is fitted on the first half only (spells watched until the half, censored there).
  const model = fitReturnModel(observeSpells(sessions, half, tokensPerSecond));
  const RETURN_PS = [0.5, 0.3, 0.2, 0.1, 0.05];
  const returnPolicies = RETURN_PS.map((p) => returnProbabilityPolicy(`return-prob < ${p}`, timeoutsFor(model, p)));
  const returnDemote = [0.1, 0.05].map((p) => returnProbabilityPolicy(`return-prob < ${p}, demote 1 min`, timeoutsFor(model, p), MIN));

  const FIXED = [0.5, 1, 1.5, 2, 3, 5, 10, 15, 20, 30].map((m) => fixedTimeout(m * MIN));
  // Fixed demote/destroy pairs: a grid searched by the bench; its main table shows part of it.
  const GRID_DEMOTE = [15, 30, 45, 60, 90, 120].map((s) => s * 1000);
  const GRID_DESTROY = [3, 5, 8, 10, 12, 15, 20, 30].map((m) => m * MIN);
  // activity-score as the function runs it, with settings chosen before the replay (none tuned on the judged half).
  // The defaults demote after 30 s (DEMOTE_QUIET_MS) and give a demoted session 10 min of grace (DEMOTED_IDLE_GRACE_MS),
  // chosen from the first half (where the same pair is 95 % / 93 % beyond its frontier), not from the judged one.
  const OURS_SETTINGS: ReadonlyArray<readonly [string, Record<string, string>]> = [
    ['activity-score defaults', {}],
    // The same defaults where the runtime cannot demote (SGLang, vLLM, the simulator): no demote, the policy's grace.
    ['activity-score defaults, runtime cannot demote', { DEMOTE_QUIET_MS: '0' }],
    ['activity-score + DEMOTE_QUIET_MS 1 min', { DEMOTE_QUIET_MS: String(MIN) }],
    ['activity-score + demote 30 s, IDLE_GRACE_MS 10 min', { DEMOTE_QUIET_MS: String(MIN / 2), IDLE_GRACE_MS: String(10 * MIN) }],
    ['activity-score, IDLE_GRACE_MS 10 min, runtime cannot demote', { IDLE_GRACE_MS: String(10 * MIN), DEMOTE_QUIET_MS: '0' }],
  ];
  // Without a pool no runtime reports memory, so the load tier is `normal` throughout, and the checker's extra looks
  // every LOAD_EVAL_MS (made in case the tier rises) cannot change a verdict: an hour between them gives the same
  // figures with far fewer looks (the-replay-drives-activity-scores-own-policy-code.test.ts shows it). Under a pool the
  // tier can rise, and the deployed 10 s applies.
  const OURS: ReclaimPolicy[] = OURS_SETTINGS.map(([name, env]) => activityScore(name, { ...env, LOAD_EVAL_MS: String(60 * MIN) }));
  // Under the pools: the defaults, on runtimes that can demote and on those that cannot (each demoting variant costs
  // about 4 s of CPU here, judged every 10 s as deployed; the others are left out to keep the bench under a minute).
  const OURS_UNDER_LOAD: ReclaimPolicy[] = OURS_SETTINGS.slice(0, 2).map(([name, env]) => activityScore(name, env));

  // Fixed KV pools below the trace's peak demand (see pool-worker.ts), and the policies replayed under them.
  const POOL_SHARES = [0.8, 0.6, 0.45];
  const poolPolicies: ReclaimPolicy[] = [
    ...FIXED, twoTier(pairName(MIN, 10 * MIN), MIN, 10 * MIN), twoTier(pairName(MIN / 2, 20 * MIN), MIN / 2, 20 * MIN), ...OURS_UNDER_LOAD, returnPolicies[3]!, returnDemote[0]!,
  ];
  return {
    requests, sessions, traceEnd, half, base, judgedSessions, model, RETURN_PS, returnPolicies, returnDemote, FIXED, GRID_DEMOTE, GRID_DESTROY, OURS,
    POOL_SHARES, poolPolicies,
  };
}
