// activity-score's long-running second entry point: the idle checker. activity-score itself is a scale-to-zero
// Knative Service that only runs when events arrive, but a session goes idle precisely when none arrive, so the
// due idle checks are claimed by this process (any number of replicas; claims are atomic). Started as
// `node functions/activity-score/idle-checker-main.ts`; serves GET /healthz on PORT and stops on SIGTERM/SIGINT.
import { createCore } from '../core/function-host.ts';
import { serveHealth, stopOnSignals } from '../core/process-lifecycle.ts';
import { IdleChecker } from './idle-checker.ts';
import { readActivityScoreSettings } from './settings.ts';

const core = createCore({ name: 'activity-score' });
const { logger } = core.deps;
const checker = new IdleChecker(core.deps, { settings: readActivityScoreSettings(process.env) });
const port = Number(process.env.PORT ?? 8080);

const server = serveHealth('idle-checker', port, () => core.healthy(), () => {
  logger.info({ port }, 'idle checker health endpoint listening');
  // The checker's passes fail (and are retried) until Redis is reachable; make it ready as soon as it is.
  void core.ready().catch((err: unknown) => logger.warn({ err }, 'Redis not reachable yet; the idle checker keeps trying'));
  checker.start();
});

stopOnSignals(logger, 'the idle checker', async () => {
  server.close();
  try {
    await checker.stop();
  } finally {
    await core.close();
  }
});
