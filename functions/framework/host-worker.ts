// The worker thread of a function's process (worker-host.ts says why there is one): it builds the function host from
// the module it is given and applies each request the main thread forwards to it, answering with what the host
// wrote. Nothing here serves HTTP or touches functions-framework; the host is the one a test builds in-process.
import { parentPort, workerData } from 'node:worker_threads';
import { decodeBody } from '../core/contract/parse.ts';
import type { HostRequest, HostResponse } from '../core/function-host.ts';
import { exitAfterFlush } from '../core/process-lifecycle.ts';
import { ownBytes, type Answer, type ForwardedRequest, type FromMain, type FromWorker, type WorkerHostModule } from './worker-protocol.ts';

const port = parentPort;
if (port === null) throw new Error('host-worker.ts runs only as a worker thread (functions/framework/worker-host.ts starts it)');

const { module } = workerData as { module: string };
const hostModule = (await import(module)) as WorkerHostModule;
const { host, stopping, beforeClose } = hostModule.startHost(process.env);
const { config, logger } = host.core.deps;

// An uncaught exception ends the host, and with it the process (worker-host.ts). It is logged here and the thread
// exits once its log has drained (bounded, as the main thread's exitAfterFlush): pino flushes its asynchronous stream
// at exit only on the main thread, so a thread that simply died would lose its last lines, what it died of among them,
// and a synchronous flush at exit could retry a write to a reader that is gone forever.
process.on('uncaughtException', (err) => {
  logger.fatal({ err }, 'the function host failed');
  void exitAfterFlush(logger, 1);
});

const post = (message: FromWorker, transfer: ArrayBuffer[] = []): void => port.postMessage(message, transfer);

/** What the host wrote, kept for the main thread to write the same way (Express's `json`, or a raw `end`). */
class RecordedResponse implements HostResponse {
  statusCode = 200;
  headers: Record<string, string> = {};
  written: Answer['written'] = { kind: 'end', body: undefined };
  status(code: number): this {
    this.statusCode = code;
    return this;
  }
  set(headers: Record<string, string>): this {
    Object.assign(this.headers, headers);
    return this;
  }
  json(body: unknown): void {
    this.written = { kind: 'json', body: JSON.stringify(body) };
  }
  end(body?: string | Uint8Array): void {
    this.written = { kind: 'end', body: body instanceof Uint8Array ? ownBytes(body) : body };
  }
}

function requestOf(forwarded: ForwardedRequest): HostRequest {
  const req: HostRequest = { method: forwarded.method, path: forwarded.path, headers: forwarded.headers, query: forwarded.query, body: undefined };
  if (forwarded.body === undefined) return req;
  const rawBody = Buffer.from(forwarded.body);
  // The main thread decoded these very bytes before the framework saw them (serve.ts), so this cannot refuse them;
  // were it to, the host decodes the raw body itself and answers what it finds.
  const decoded = decodeBody(forwarded.headers, rawBody);
  return 'refusal' in decoded ? { ...req, rawBody } : { ...req, body: decoded.value, rawBody, decodedBody: decoded };
}

async function apply(id: number, forwarded: ForwardedRequest): Promise<void> {
  const res = new RecordedResponse();
  try {
    await host.handler(requestOf(forwarded) as never, res as never);
  } catch (err) {
    // A failure the host did not answer itself (a bug): a 500, which the Broker redelivers, as the framework answers a
    // rejected handler (its crash page then; the host's own words for an internal failure now).
    logger.error({ err }, 'the handler failed outside any event');
    res.status(500).json({ error: 'INTERNAL', reason: 'the event could not be handled' });
  }
  const body = res.written.body;
  post({ kind: 'response', id, status: res.statusCode, headers: res.headers, written: res.written }, body instanceof ArrayBuffer ? [body] : []);
}

port.on('message', (message: FromMain) => {
  if (message.kind === 'request') {
    void apply(message.id, message.request);
    return;
  }
  if (message.kind === 'stopping') {
    stopping?.();
    return;
  }
  void (async () => {
    try {
      try {
        await beforeClose?.();
      } finally {
        await host.core.close();
      }
      post({ kind: 'stopped' });
    } catch (err) {
      post({ kind: 'stopped', error: (err as Error).message });
    }
    // The host's last lines leave before the thread ends; then nothing keeps it.
    await new Promise<void>((resolve) => logger.flush(() => resolve()));
    port.close();
  })();
});

post({
  kind: 'ready', name: host.name, batches: host.batches,
  limits: { listenHost: config.LISTEN_HOST, maxEventBytes: config.MAX_EVENT_BYTES, maxBatchBytes: config.MAX_BATCH_BYTES, logLevel: config.LOG_LEVEL },
});
