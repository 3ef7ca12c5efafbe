// A function's process in two threads: the main thread owns the HTTP server and functions-framework (serve.ts), and
// a worker thread (host-worker.ts) owns the function host: its handler, Redis, the Broker and runtime clients,
// telemetry, metrics. Why: functions-framework runs every request in a `domain` of its own (function_wrappers.js,
// wrapHttpFunction), and the first domain a thread makes turns on node:domain's async hook, whose `destroy` callback
// makes Node track the collection of every promise that thread creates from then on (a weak handle per promise,
// processed in every scavenge). A function makes one to two hundred promises an event (Redis round trips, HTTP
// calls, breakers, spans), so with the framework in the same thread its young-generation collections took 35-80 ms
// (issue 16; `outside-the-domain.ts` keeps the work out of the domain's context, which does not stop the tracking).
// Async hooks belong to a thread: the worker makes no domain, so nothing it creates is tracked, and the framework
// still serves every request as documented, unpatched (its domain, its crash answer). Each request crosses the
// threads twice: its headers and body bytes one way, the answer the other.
import type { IncomingMessage } from 'node:http';
import { Worker } from 'node:worker_threads';
import { isBatchRequest } from '../core/contract/parse.ts';
import { createLogger, type Logger } from '../core/log.ts';
import { exitAfterFlush, stopOnSignals } from '../core/process-lifecycle.ts';
import { serveFunction, type FunctionServer } from './serve.ts';
import { ownBytes, type Answer, type ForwardedRequest, type FromMain, type FromWorker } from './worker-protocol.ts';

export type { WorkerHostModule } from './worker-protocol.ts';

/** The request as the framework hands it on: serve.ts assigned `rawBody`, Express `path` and `query`. */
type FrameworkRequest = IncomingMessage & { path: string; query?: Record<string, unknown>; rawBody?: Buffer };
interface FrameworkResponse {
  readonly headersSent: boolean;
  status(code: number): FrameworkResponse;
  set(headers: Record<string, string>): FrameworkResponse;
  get(name: string): string | undefined;
  send(body: string): unknown;
  end(body?: string | Uint8Array): unknown;
}

// How long a stopped host's thread may take to end by itself before it is terminated.
const WORKER_EXIT_MS = 1000;

const UNAVAILABLE = JSON.stringify({ error: 'UNAVAILABLE', reason: 'a dependency is unavailable; retry later' });

/** Writes an answer the way the host wrote it in-process (Express's `json` sets the type; `end` nothing); once. */
function write(res: FrameworkResponse, answer: Pick<Answer, 'status' | 'headers' | 'written'>): void {
  if (res.headersSent) return;
  res.status(answer.status).set(answer.headers);
  if (answer.written.kind === 'json') {
    if (res.get('content-type') === undefined) res.set({ 'content-type': 'application/json' });
    res.send(answer.written.body);
  } else res.end(answer.written.body instanceof ArrayBuffer ? new Uint8Array(answer.written.body) : answer.written.body);
}


/**
 * Starts the function host of `module` in a worker thread and serves it on PORT (default 8080) behind the request
 * bounds; stops on SIGTERM/SIGINT. A start that fails in the worker fails here (a bad setting: the error names the
 * variable). A worker that dies later stops the process (its supervisor restarts it) and the requests it held are
 * answered 503, so the Broker redelivers them.
 */
export async function serveHostInWorker(module: URL, opts: { port?: number } = {}): Promise<FunctionServer> {
  const worker = new Worker(new URL('./host-worker.ts', import.meta.url), { workerData: { module: module.href } });
  // Its exit, noted once: a stop that comes after it must not wait for an 'exit' that has been emitted already.
  let exitCode: number | undefined;
  const exited = new Promise<number>((resolve) => worker.once('exit', (code) => resolve((exitCode = code))));
  const pending = new Map<number, (answer: Answer | undefined) => void>();
  let nextId = 0;
  // Set once the host is ready (its log level known), and once a stop began.
  const state: { logger?: Logger; onStopped?: (error: string | undefined) => void } = {};

  const ready = new Promise<Extract<FromWorker, { kind: 'ready' }>>((resolve, reject) => {
    worker.on('message', (message: FromWorker) => {
      if (message.kind === 'ready') resolve(message);
      else if (message.kind === 'response') {
        const done = pending.get(message.id);
        pending.delete(message.id);
        done?.(message);
      } else state.onStopped?.(message.error);
    });
    worker.on('error', (err) => {
      if (state.logger === undefined) reject(err instanceof Error ? err : new Error(String(err)));
      else state.logger.error({ err }, 'the function host failed; stopping the process');
    });
    worker.on('exit', (code) => {
      const held = [...pending.values()];
      pending.clear();
      for (const done of held) done(undefined);
      if (state.onStopped !== undefined) {
        // Ended during a stop: the stop goes on (a host that died while stopping did not stop cleanly).
        state.onStopped(code === 0 ? undefined : `the host exited with code ${code}`);
        return;
      }
      // Exited on its own: the process goes with it, so that it is restarted rather than left serving 503s.
      if (state.logger === undefined) reject(new Error(`the function host exited with code ${code} while starting`));
      else {
        state.logger.error({ code }, 'the function host exited; stopping the process');
        void exitAfterFlush(state.logger, code === 0 ? 1 : code);
      }
    });
  });
  const { name, batches, limits } = await ready;
  const logger = (state.logger = createLogger({ service: name, level: limits.logLevel }));

  // Answers once, whatever the answer's own writing does (a header Node refuses): a request never hangs.
  const answer = (res: FrameworkResponse, written: Pick<Answer, 'status' | 'headers' | 'written'>): void => {
    try {
      write(res, written);
    } catch (err) {
      logger.error({ err }, 'an answer of the function host could not be written');
      if (!res.headersSent) res.status(500).set({ 'content-type': 'application/json' }).send(JSON.stringify({ error: 'INTERNAL', reason: 'the event could not be handled' }));
    }
  };
  const unavailable = { status: 503, headers: {}, written: { kind: 'json', body: UNAVAILABLE } } as const;

  const forward = (req: FrameworkRequest, res: FrameworkResponse): Promise<void> =>
    new Promise<void>((resolve) => {
      // A host that has exited takes no message (a post to it is dropped without an error): the process is on its
      // way out, and what arrives meanwhile is answered 503.
      if (exitCode !== undefined) {
        answer(res, unavailable);
        resolve();
        return;
      }
      const id = nextId++;
      const body = req.rawBody === undefined ? undefined : ownBytes(req.rawBody);
      const request: ForwardedRequest = { method: req.method ?? 'GET', path: req.path, headers: req.headers, query: req.query, body };
      pending.set(id, (reply) => {
        answer(res, reply ?? unavailable);
        resolve();
      });
      try {
        worker.postMessage({ kind: 'request', id, request } satisfies FromMain, body === undefined ? [] : [body]);
      } catch (err) {
        // Nothing of it reached the host (a header the thread could not copy): answered as an infrastructure fault.
        pending.delete(id);
        logger.error({ err }, 'a request could not be handed to the function host');
        answer(res, unavailable);
        resolve();
      }
    });

  const server = await serveFunction({
    name,
    handler: forward as never,
    port: opts.port ?? Number(process.env.PORT ?? 8080),
    host: limits.listenHost,
    bodyLimit: (req) => (batches && isBatchRequest(req.headers) ? limits.maxBatchBytes : limits.maxEventBytes),
    logger,
  });

  // The server first (requests in flight finish), then the host (its own stop, then its core), whatever the first did.
  const stopHost = async (): Promise<void> => {
    const stopped = new Promise<string | undefined>((resolve) => (state.onStopped = resolve));
    worker.postMessage({ kind: 'stop' } satisfies FromMain);
    const error = await stopped;
    if (exitCode === undefined) {
      // It ends on its own once its log is flushed; a handle that would keep it (a client's timer) is cut short.
      const timer = setTimeout(() => void worker.terminate(), WORKER_EXIT_MS);
      await exited.finally(() => clearTimeout(timer));
    }
    if (error !== undefined) throw new Error(`the function host did not stop cleanly: ${error}`);
  };
  stopOnSignals(logger, name, async () => {
    worker.postMessage({ kind: 'stopping' } satisfies FromMain);
    try {
      await server.close();
    } finally {
      await stopHost();
    }
  });
  return server;
}
