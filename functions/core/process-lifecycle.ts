// The lifecycle every long-running process here shares: stop once on SIGTERM or SIGINT (Kubernetes and Ctrl-C),
// log how it went, and exit 0 only when the stop completed; and, for the ones Kubernetes probes, /healthz
// (readiness: the process serves) and /livez (liveness: its loop still completes rounds).
import { EventEmitter } from 'node:events';
import { createServer, type Server } from 'node:http';
import { performance } from 'node:perf_hooks';
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

/** Whether a health request asks for the deep check (`?deep=1` or `?deep=true`; Express may hand a list). */
export function isDeep(value: unknown): boolean {
  const v = Array.isArray(value) ? (value as unknown[])[0] : value;
  return v === '1' || v === 'true';
}

/** What a long-running entry point runs: started once its health endpoint listens, stopped on a signal. */
export interface LongRunningWorker {
  start(): void;
  stop(): Promise<void>;
}

/**
 * Tells a live loop from a wedged one for the liveness probe: the loop calls `round()` each time it completes a
 * round, whether the round succeeded or failed (Redis unreachable is a failed round, and a live one), and the
 * process is live while the last round (or the start) lies less than `stallMs` ago. Measured on the monotonic
 * clock, so a wall-clock step is no stall. Redis being down never makes a process unlive: its calls fail within
 * CORE_TIMEOUT_MS and the round completes; only a loop that stopped completing rounds does (a hung promise, a
 * dead timer, an event loop blocked).
 */
export class RoundWatch {
  readonly stallMs: number;
  readonly #now: () => number;
  #last: number;
  #rounds = 0;

  constructor(stallMs: number, now: () => number = () => performance.now()) {
    if (!(stallMs > 0)) throw new RangeError('stallMs must be > 0');
    this.stallMs = stallMs;
    this.#now = now;
    this.#last = now();
  }

  /** Restarts the clock: the worker just started, so its first round is due within stallMs from now. */
  started(): void {
    this.#last = this.#now();
  }

  /** The loop completed a round (success or failure). */
  round(): void {
    this.#last = this.#now();
    this.#rounds += 1;
  }

  /** How long ago the last round (or the start) was, ms, and how many rounds completed. */
  state(): { sinceLastRoundMs: number; rounds: number; live: boolean } {
    const since = Math.max(0, this.#now() - this.#last);
    return { sinceLastRoundMs: Math.round(since), rounds: this.#rounds, live: since < this.stallMs };
  }
}

/**
 * Runs a long-running second entry point (the deadline engine, the idle checker): the health endpoints on `port`
 * (serveHealth), the worker started once they listen (Redis is readied at once, and keeps being retried by the
 * worker while unreachable), and on SIGTERM/SIGINT the endpoint closed, the worker stopped and the core closed.
 * `watch` is the worker's RoundWatch: /livez answers from it.
 */
export function runLongRunning(opts: { name: string; label: string; core: Core; worker: LongRunningWorker; watch: RoundWatch; port: number }): void {
  const { name, label, core, worker, watch, port } = opts;
  const { logger } = core.deps;
  let started = false;
  const server = serveHealth(name, port, core.deps.config.LISTEN_HOST, { started: () => started, deep: () => core.healthy(), watch }, () => {
    logger.info({ port }, `${label} health endpoint listening`);
    void core.ready().catch((err: unknown) => logger.warn({ err }, `Redis not reachable yet; ${label} keeps trying`));
    watch.started();
    worker.start();
    started = true;
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

/** What the health endpoints of a long-running process answer from. */
export interface HealthSources {
  /** Whether the worker has started (readiness). */
  started: () => boolean;
  /** Whether Redis answers now: only for `?deep=1`. */
  deep: () => Promise<boolean>;
  /** The worker's loop, for /livez. */
  watch: RoundWatch;
}

/**
 * Serves, on `port` and `host` (every interface when empty):
 * - GET /healthz (and /readyz): readiness, 200 once the worker started. Redis is not asked: the replicas need no
 *   traffic, and a probe that fails with Redis would only make every pod unready together.
 *   With `?deep=1`, 200 only while Redis answers (for humans and the local stack's start-up wait).
 * - GET /livez: liveness, 200 while the worker's loop completes rounds (RoundWatch), else 503: the kubelet then
 *   restarts a wedged process, and never one that merely cannot reach Redis.
 * 404 for anything else.
 */
export function serveHealth(name: string, port: number, host: string, sources: HealthSources, onListening: () => void): Server {
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://health');
    const answer = (status: number, body: object) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify({ ...body, function: name }));
    if (req.method === 'GET' && (url.pathname === '/healthz' || url.pathname === '/readyz')) {
      if (!sources.started()) return void answer(503, { status: 'starting' });
      if (!isDeep(url.searchParams.get('deep'))) return void answer(200, { status: 'ok' });
      void sources.deep().then((ok) => answer(ok ? 200 : 503, { status: ok ? 'ok' : 'unavailable', redis: ok ? 'ok' : 'unreachable' }));
      return;
    }
    if (req.method === 'GET' && url.pathname === '/livez') {
      const state = sources.watch.state();
      return void answer(state.live ? 200 : 503, { status: state.live ? 'ok' : 'stalled', sinceLastRoundMs: state.sinceLastRoundMs, stallMs: sources.watch.stallMs, rounds: state.rounds });
    }
    res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'NOT_FOUND' }));
  });
  // An empty host listens on every interface, as an omitted one does.
  server.listen(port, host, onListening);
  return server;
}
