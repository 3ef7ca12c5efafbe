// bench:reclaim's pool replays, in a worker thread so that they run beside the main thread's (they are most of the
// bench's CPU: activity-score under a pool is judged every LOAD_EVAL_MS, as the deployed checker does). Posts the
// oracle's peak and each pool policy's metrics at each pool size.
import { parentPort, workerData } from 'node:worker_threads';
import { benchSetup } from './bench-setup.ts';
import { oracle } from './policies.ts';
import { replay, type ReplayMetrics } from './replay.ts';

/** What the worker is given. */
export interface PoolWork {
  tokensPerSecond: number;
  bytesPerToken: number;
}

/** What the worker answers. */
export interface PoolResults {
  /** The trace's peak demand: the oracle's peak (every session's KV from its first turn to the end of its last). */
  peak: number;
  pools: number[];
  pooled: Array<{ name: string; results: ReplayMetrics[] }>;
}

const { tokensPerSecond, bytesPerToken } = workerData as PoolWork;
const setup = await benchSetup(tokensPerSecond, bytesPerToken);
const peak = replay(setup.sessions, oracle(), { tokensPerSecond, bytesPerToken }).peakResidentBytes;
const pools = setup.POOL_SHARES.map((share) => Math.round(peak * share));
const pooled = setup.poolPolicies.map((policy) => ({ name: policy.name, results: pools.map((poolBytes) => replay(setup.sessions, policy, { ...setup.base, poolBytes })) }));
parentPort?.postMessage({ peak, pools, pooled } satisfies PoolResults);
