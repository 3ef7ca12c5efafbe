// Builds the deadline engine's reconciler from its core and environment: the runtime client with gpu-release's
// breaker and retry settings (one set of rules for every call to a runtime), the reconciler's own scripts on the
// core's Redis, and RECONCILE_* from the engine's settings.
import type { Core } from '../core/function-host.ts';
import { OrphanStore } from '../core/orphan-store.ts';
import { Scripts } from '../core/redis/scripts.ts';
import { createEngineClient } from '../core/runtime-adapters/index.ts';
import type { RuntimeClient } from '../core/runtime-client.ts';
import { readRuntimeCallSettings, runtimeClientFor } from '../core/runtime-call-settings.ts';
import { readEngineSettings } from './engine-settings.ts';
import { Reconciler } from './reconciler.ts';

/** The reconciler and the runtime client it calls through (shut it down after stopping the reconciler). */
export interface EngineReconciler {
  reconciler: Reconciler;
  runtime: RuntimeClient;
}

/** The reconciler of a deadline engine process, or undefined when RECONCILE_INTERVAL_MS is 0 (off). */
export function createEngineReconciler(core: Core, env: NodeJS.ProcessEnv): EngineReconciler | undefined {
  const settings = readEngineSettings(env);
  if (settings.RECONCILE_INTERVAL_MS === 0) return undefined;
  // Through the engine adapters: only kinds that list sessions by our ids and incarnations (native) are reconciled;
  // the others answer the listing as unsupported, which the reconciler logs once and skips.
  const runtime = createEngineClient(runtimeClientFor(core.deps, readRuntimeCallSettings(env)), core.deps.runtimes);
  let orphans: Promise<OrphanStore> | undefined;
  const ready = (): Promise<OrphanStore> => {
    orphans ??= (async () => {
      await core.ready();
      const { redis, store } = core.deps;
      return new OrphanStore(redis, store.keys, await Scripts.register(redis));
    })().catch((err: unknown) => {
      orphans = undefined;
      throw err;
    });
    return orphans;
  };
  const reconciler = new Reconciler({
    deps: core.deps,
    ready,
    runtime,
    intervalMs: settings.RECONCILE_INTERVAL_MS,
    graceMs: settings.RECONCILE_GRACE_MS,
  });
  return { reconciler, runtime };
}
