// Entry point of activity-score for functions-framework (FUNCTION_TARGET=activity-score, signature http: see the
// host). The idle checker is not run here (this function scales to zero); a long-running process hosts it.
import * as ff from '@google-cloud/functions-framework';
import { createFunctionHost } from '../core/function-host.ts';
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

ff.http('activity-score', host.handler);

process.once('SIGTERM', () => {
  void host.deps.load.stop().finally(() => host.core.close());
});
