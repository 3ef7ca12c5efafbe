// activity-score's process: the host's handler served behind the request bounds (functions/framework/serve.ts; the
// `http` signature: see the host). The idle checker is not run here (this function scales to zero); a long-running
// process hosts it.
import { createFunctionHost } from '../core/function-host.ts';
import { stopOnSignals } from '../core/process-lifecycle.ts';
import { serveHost } from '../framework/serve.ts';
import { ACTIVITY_SCORE_ACCEPTS, createActivityScoreDeps, handle } from './handle.ts';
import { readActivityScoreSettings } from './settings.ts';

/** The running activity-score function: its HTTP handler, its core and its dependencies. */
export const host = createFunctionHost({
  name: 'activity-score',
  accept: ACTIVITY_SCORE_ACCEPTS,
  extend: (core) => createActivityScoreDeps(core, readActivityScoreSettings(process.env)),
  handle,
});

host.deps.load.start();

const server = await serveHost(host);

stopOnSignals(host.core.deps.logger, 'activity-score', async () => {
  try {
    await server.close();
    await host.deps.load.stop();
  } finally {
    await host.core.close();
  }
});
