// The rules of every call to a GPU runtime that frees memory (retry budget, backoff, breaker), read once from the
// environment: gpu-release's releases and the deadline engine reconciler's release orphans by the same rules, so a
// runtime sees one client behaviour whoever asks. The per-attempt timeout is the core's RUNTIME_TIMEOUT_MS.
import { Type, type Static } from '@sinclair/typebox';
import { readSettings } from './config.ts';
import type { CoreDeps } from './function-host.ts';
import { createRuntimeClient, type BreakerState, type RuntimeClient } from './runtime-client.ts';

const Int = (minimum: number, maximum: number, dflt: number, description: string, extra: Record<string, number> = {}) =>
  Type.Integer({ minimum, maximum, default: dflt, description, ...extra });

/** The runtime call settings (gpu-release's, read by the deadline engine too). */
export const RuntimeCallSettingsSchema = Type.Object({
  RELEASE_RETRIES: Int(0, 10, 3, 'Retries of one release call after its first attempt, within one delivery.'),
  RELEASE_BASE_BACKOFF_MS: Int(1, 10_000, 50, 'Cap of the first retry backoff; each retry waits a random time up to base x 2^n.'),
  RELEASE_MAX_BACKOFF_MS: Int(1, 60_000, 1000, 'Largest wait between two attempts, Retry-After included.'),
  BREAKER_ERROR_THRESHOLD_PERCENTAGE: Int(1, 100, 50, 'Failed share (%) of calls to one runtime, in the rolling window, that opens its breaker.'),
  BREAKER_RESET_TIMEOUT_MS: Int(100, 600_000, 10_000, 'How long an open breaker refuses calls before one trial call.'),
  BREAKER_VOLUME_THRESHOLD: Int(0, 100_000, 5, 'Calls to a runtime within the rolling window before its breaker may open.'),
  BREAKER_ROLLING_WINDOW_MS: Int(100, 600_000, 10_000, 'Length of the breaker statistics window (ten equal slices).', { multipleOf: 10 }),
  BREAKER_IDLE_MS: Int(1000, 86_400_000, 600_000, 'A closed breaker with no call to its runtime for this long is shut down and dropped (a later call makes a fresh one), so runtimes that come and go are not remembered forever.'),
});

/** The validated runtime call settings. */
export type RuntimeCallSettings = Readonly<Static<typeof RuntimeCallSettingsSchema>>;

/** Reads and validates the runtime call settings from an environment map (defaults for what is unset). */
export function readRuntimeCallSettings(env: NodeJS.ProcessEnv): RuntimeCallSettings {
  return readSettings(RuntimeCallSettingsSchema, env);
}

const BREAKER_LABEL = { closed: 'closed', halfOpen: 'half_open', open: 'open' } as const;

/**
 * Counts breaker transitions per registered runtime and reports, at collection, how many of this client's breakers
 * are in each state (a breaker is made closed, and dropped when idle and closed, so only transitions need telling).
 */
function breakerMetrics(deps: Pick<CoreDeps, 'runtimes' | 'metrics'>): (change: { endpoint: string; state: BreakerState }) => void {
  const states = new Map<string, { runtime: string; state: BreakerState }>();
  deps.metrics.breakerState.instrument.addCallback((result) => {
    const counts = new Map<string, number>();
    for (const { runtime, state } of states.values()) counts.set(`${runtime}\u0000${state}`, (counts.get(`${runtime}\u0000${state}`) ?? 0) + 1);
    for (const runtime of [...deps.runtimes.names(), 'other']) {
      for (const state of ['closed', 'halfOpen', 'open'] as const) {
        const n = counts.get(`${runtime}\u0000${state}`) ?? 0;
        if (n > 0 || state !== 'closed') result.observe(n, deps.metrics.breakerState.attributes(runtime, BREAKER_LABEL[state]));
      }
    }
  });
  return ({ endpoint, state }) => {
    const runtime = deps.runtimes.lookup(endpoint)?.name ?? 'other';
    if (state === 'closed') states.delete(endpoint);
    else states.set(endpoint, { runtime, state });
    deps.metrics.breakerTransitions.add(1, runtime, BREAKER_LABEL[state]);
  };
}

/** A runtime client for registered runtimes at allowed addresses, by these rules; shut it down when done. */
export function runtimeClientFor(deps: Pick<CoreDeps, 'config' | 'logger' | 'runtimes' | 'outboundPolicy' | 'metrics'>, settings: RuntimeCallSettings): RuntimeClient {
  const onBreakerStateChange = breakerMetrics(deps);
  return createRuntimeClient({
    onBreakerStateChange,
    registry: deps.runtimes,
    addressPolicy: deps.outboundPolicy,
    timeoutMs: deps.config.RUNTIME_TIMEOUT_MS,
    retries: settings.RELEASE_RETRIES,
    baseBackoffMs: settings.RELEASE_BASE_BACKOFF_MS,
    maxBackoffMs: settings.RELEASE_MAX_BACKOFF_MS,
    breaker: {
      errorThresholdPercentage: settings.BREAKER_ERROR_THRESHOLD_PERCENTAGE,
      resetTimeoutMs: settings.BREAKER_RESET_TIMEOUT_MS,
      volumeThreshold: settings.BREAKER_VOLUME_THRESHOLD,
      rollingCountTimeoutMs: settings.BREAKER_ROLLING_WINDOW_MS,
    },
    breakerIdleMs: settings.BREAKER_IDLE_MS,
    logger: deps.logger,
  });
}
