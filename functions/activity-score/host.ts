// activity-score's function host, built in its process's worker thread (functions/framework/worker-host.ts); it
// polls the runtimes' memory for the load tier while it runs.
import { createFunctionHost } from '../core/function-host.ts';
import type { WorkerHostModule } from '../framework/worker-host.ts';
import { ACTIVITY_SCORE_ACCEPTS, createActivityScoreDeps, handle } from './handle.ts';
import { readActivityScoreSettings } from './settings.ts';

export const startHost: WorkerHostModule['startHost'] = (env) => {
  const host = createFunctionHost({
    name: 'activity-score',
    accept: ACTIVITY_SCORE_ACCEPTS,
    extend: (core) => createActivityScoreDeps(core, readActivityScoreSettings(env)),
    handle,
  });
  host.deps.load.start();
  return { host, beforeClose: () => host.deps.load.stop() };
};
