// activity-score's long-running second entry point: the idle checker. activity-score itself is a scale-to-zero
// Knative Service that only runs when events arrive, but a session goes idle precisely when none arrive, so the
// due idle checks are claimed by this process (any number of replicas; claims are atomic). Started as
// `node functions/activity-score/idle-checker-main.ts`; serves GET /healthz on PORT and stops on SIGTERM/SIGINT.
import { createServer } from 'node:http';
import { createCore } from '../core/function-host.ts';
import { IdleChecker } from './idle-checker.ts';
import { readActivityScoreSettings } from './settings.ts';

const core = createCore({ name: 'activity-score' });
const { logger } = core.deps;
const checker = new IdleChecker(core.deps, { settings: readActivityScoreSettings(process.env) });
const port = Number(process.env.PORT ?? 8080);

const server = createServer((req, res) => {
  if (req.method === 'GET' && (req.url === '/healthz' || req.url === '/readyz')) {
    void core.healthy().then((ok) => {
      res.writeHead(ok ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify({ status: ok ? 'ok' : 'unavailable', function: 'idle-checker' }));
    });
    return;
  }
  res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'NOT_FOUND' }));
});

server.listen(port, () => {
  logger.info({ port }, 'idle checker health endpoint listening');
  // The checker's passes fail (and are retried) until Redis is reachable; make it ready as soon as it is.
  void core.ready().catch((err: unknown) => logger.warn({ err }, 'Redis not reachable yet; the idle checker keeps trying'));
  checker.start();
});

let stopping = false;
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  logger.info({ signal }, 'stopping the idle checker');
  server.close();
  try {
    await checker.stop();
  } finally {
    await core.close();
  }
}

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    shutdown(signal).then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'idle checker did not stop cleanly');
        process.exit(1);
      },
    );
  });
}
