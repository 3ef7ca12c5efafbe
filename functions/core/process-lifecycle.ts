// The lifecycle every long-running process here shares: stop once on SIGTERM or SIGINT (Kubernetes and Ctrl-C),
// log how it went, and exit 0 only when the stop completed; and, for the ones Kubernetes probes, a /healthz.
import { EventEmitter } from 'node:events';
import { createServer, type Server } from 'node:http';
import { pino } from 'pino';
import type { Core } from './function-host.ts';
import type { Logger } from './log.ts';

/**
 * How long a process may take to stop after SIGTERM before it exits anyway, ms. Kubernetes waits
 * terminationGracePeriodSeconds (30 s by default) before its SIGKILL; a supervisor or test harness on one machine
 * commonly waits 5 s, so we stay under that.
 */
export const STOP_DEADLINE_MS = 4000;

// How long the last log lines may take to leave before the process exits without them.
const FINAL_FLUSH_MS = 250;

/** The logger a stopping process needs: pino's, whose output stream is waited on before exiting. */
export type StopLogger = Pick<Logger, 'info' | 'error'>;

/**
 * Exits with `code` once the logger's last write has finished or failed (within a short bound). Waiting matters:
 * pino's synchronous flush at exit (sonic-boom 4.2's flushSync) retries a write that failed with EPIPE forever, so a
 * process whose stdout reader died (a launcher killed with SIGKILL) would hang inside process.exit. Once an
 * asynchronous write has reported EPIPE, pino stops writing to that stream, and the exit that follows is immediate.
 */
export async function exitAfterFlush(logger: StopLogger, code: number): Promise<never> {
  const stream = (logger as unknown as Record<symbol, unknown>)[pino.symbols.streamSym];
  if (stream instanceof EventEmitter) {
    await new Promise<void>((done) => {
      const finish = () => {
        clearTimeout(timer);
        stream.off('drain', finish).off('error', finish);
        done();
      };
      const timer = setTimeout(finish, FINAL_FLUSH_MS);
      stream.on('drain', finish).on('error', finish);
    });
  }
  process.exit(code);
}

/**
 * Runs `stop` once on the first SIGTERM/SIGINT, then exits 0 (or 1 if stopping failed or took longer than
 * `deadlineMs`, default STOP_DEADLINE_MS): a stop that hangs on a peer that is gone (Redis, a keep-alive client)
 * must not keep the process, and its port, alive.
 */
export function stopOnSignals(logger: StopLogger, name: string, stop: (signal: string) => Promise<void>, opts: { deadlineMs?: number } = {}): void {
  let stopping = false;
  const onSignal = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, `stopping ${name}`);
    const deadlineMs = opts.deadlineMs ?? STOP_DEADLINE_MS;
    // Not unref'd: it is what guarantees the exit when the stop never settles.
    setTimeout(() => {
      logger.error({ deadlineMs }, `${name} did not stop within ${deadlineMs} ms; exiting anyway`);
      void exitAfterFlush(logger, 1);
    }, deadlineMs);
    stop(signal).then(
      () => exitAfterFlush(logger, 0),
      (err: unknown) => {
        logger.error({ err }, `${name} did not stop cleanly`);
        return exitAfterFlush(logger, 1);
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
