// The worker thread of a function's process (worker-host.ts says why there is one): it builds the function host from
// the module it is given and applies each request the main thread forwards to it, answering with what the host
// wrote. Nothing here serves HTTP or touches functions-framework; the host is the same one served in-process.
import { parentPort, workerData } from 'node:worker_threads';
import type { HostRequest, HostResponse } from '../core/function-host.ts';
import type { Answer, ForwardedRequest, FromMain, FromWorker, WorkerHostModule } from './worker-host.ts';

const port = parentPort;
if (port === null) throw new Error('host-worker.ts runs only as a worker thread (functions/framework/worker-host.ts starts it)');

const { module } = workerData as { module: string };
const hostModule = (await import(module)) as WorkerHostModule;
const { host, beforeStop } = hostModule.startHost(process.env);
const { config } = host.core.deps;

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
    this.written = { kind: 'end', body };
  }
}

async function apply(id: number, forwarded: ForwardedRequest): Promise<void> {
  const res = new RecordedResponse();
  const rawBody = forwarded.rawBody === undefined ? undefined : Buffer.from(forwarded.rawBody);
  const req: HostRequest = {
    method: forwarded.method, path: forwarded.path, headers: forwarded.headers, query: forwarded.query,
    body: forwarded.decoded?.value, ...(rawBody ? { rawBody } : {}), ...(forwarded.decoded ? { decodedBody: forwarded.decoded } : {}),
  };
  try {
    await host.handler(req as never, res as never);
  } catch (err) {
    // What the framework answers a rejected handler with (its crash response), so the Broker redelivers.
    host.core.deps.logger.error({ err }, 'the handler failed outside any event');
    res.status(500).json({ error: 'INTERNAL', reason: 'the event could not be handled' });
  }
  post({ kind: 'response', id, status: res.statusCode, headers: res.headers, written: res.written });
}

port.on('message', (message: FromMain) => {
  if (message.kind === 'request') {
    void apply(message.id, message.request);
    return;
  }
  void (async () => {
    try {
      try {
        await beforeStop?.();
      } finally {
        await host.core.close();
      }
      post({ kind: 'stopped' });
    } catch (err) {
      post({ kind: 'stopped', error: (err as Error).message });
    }
    // The host's last lines leave before the thread ends (its log is written asynchronously); then nothing keeps it.
    await new Promise<void>((resolve) => host.core.deps.logger.flush(() => resolve()));
    port.close();
  })();
});

post({
  kind: 'ready', name: host.name, batches: host.batches,
  limits: { listenHost: config.LISTEN_HOST, maxEventBytes: config.MAX_EVENT_BYTES, maxBatchBytes: config.MAX_BATCH_BYTES, logLevel: config.LOG_LEVEL },
});
