// The lifecycle every long-running process here shares: stop once on SIGTERM or SIGINT (Kubernetes and Ctrl-C),
// log how it went, and exit 0 only when the stop completed; and, for the ones Kubernetes probes, a /healthz.
import { createServer, type Server } from 'node:http';
import type { Core } from './function-host.ts';
import type { Logger } from './log.ts';

/** Runs `stop` once on the first SIGTERM/SIGINT, then exits 0 (or 1 if stopping failed). */
export function stopOnSignals(logger: Pick<Logger, 'info' | 'error'>, name: string, stop: (signal: string) => Promise<void>): void {
  let stopping = false;
  const onSignal = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, `stopping ${name}`);
    stop(signal).then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, `${name} did not stop cleanly`);
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
}

/** What a long-running entry point runs: started once its health endpoint listens, stopped on a signal. */
export interface LongRunningWorker {
  start(): void;
  stop(): Promise<void>;
}

/**
 * Runs a long-running second entry point (the deadline engine, the idle checker): GET /healthz on `port` for the
 * readiness probe, the worker started once that listens (Redis is readied at once, and keeps being retried by the
 * worker while unreachable), and on SIGTERM/SIGINT the endpoint closed, the worker stopped and the core closed.
 */
export function runLongRunning(opts: { name: string; label: string; core: Core; worker: LongRunningWorker; port: number }): void {
  const { name, label, core, worker, port } = opts;
  const { logger } = core.deps;
  const server = serveHealth(name, port, core.deps.config.LISTEN_HOST, () => core.healthy(), () => {
    logger.info({ port }, `${label} health endpoint listening`);
    void core.ready().catch((err: unknown) => logger.warn({ err }, `Redis not reachable yet; ${label} keeps trying`));
    worker.start();
  });
  stopOnSignals(logger, label, async () => {
    server.close();
    try {
      await worker.stop();
    } finally {
      await core.close();
    }
  });
}

/**
 * Serves GET /healthz (and /readyz) on `port` and `host` (every interface when empty): 200 while `healthy()` says so,
 * 503 otherwise; 404 for anything else.
 */
function serveHealth(name: string, port: number, host: string, healthy: () => Promise<boolean>, onListening: () => void): Server {
  const server = createServer((req, res) => {
    if (req.method === 'GET' && (req.url === '/healthz' || req.url === '/readyz')) {
      void healthy().then((ok) => {
        res.writeHead(ok ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify({ status: ok ? 'ok' : 'unavailable', function: name }));
      });
      return;
    }
    res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'NOT_FOUND' }));
  });
  // An empty host listens on every interface, as an omitted one does.
  server.listen(port, host, onListening);
  return server;
}
