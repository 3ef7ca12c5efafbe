// The only module that imports functions-framework besides the functions themselves: core stays framework-free.
// The HTTP server of a function's process. functions-framework's own server (its CLI, main.js) listens on every
// interface and reads any body up to 1 GiB (server.ts: `requestLimit = '1024mb'`, gzip inflated) before a handler
// can look at it, with no option for either: one large POST would OOM-kill a pod of 256 MiB, again at each
// redelivery. So the process owns its server: it listens where LISTEN_HOST says, and bounds every request before
// the framework sees a byte of its body (a Content-Length over the limit: 413; a Content-Encoding: 415; any body
// collected up to the limit, then 413 past it), decodes it, answering what the framework's parsers would otherwise
// answer in their own words (a body that is not JSON: 400 in the contract's words, never Express's error page), then
// hands the request, read, with its body decoded (`body`) and its bytes (`rawBody`, as the framework keeps them; the
// host's thread is sent the bytes and decodes them again, worker-host.ts says why), to the framework's Express app
// for the function, which it obtains through the framework's documented getTestServer; the framework's body parsers
// skip a request already read. The handler it is given (worker-host.ts: forwarding to the function host in a worker thread) runs outside
// the framework's per-request domain (outside-the-domain.ts). Nothing of the framework is patched.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as ff from '@google-cloud/functions-framework';
import { getTestServer } from '@google-cloud/functions-framework/testing';
import type { Logger } from 'pino';
import { BoundedIncomingMessage, refuseDeclaredBody, sendRefusal, tooLarge } from '../core/bounded-request.ts';
import { decodeBody } from '../core/contract/parse.ts';
import { outsideTheDomain } from './outside-the-domain.ts';

type RequestListener = (req: IncomingMessage, res: ServerResponse) => void;

/** How a function's server is bound and bounded. */
export interface ServeOptions {
  /** The function's name: its framework target. */
  name: string;
  /** The `http`-signature handler the framework invokes (the function host's). */
  handler: ff.HttpFunction;
  port: number;
  /** Interface to listen on; every interface when empty. */
  host: string;
  /** Largest body accepted for a request, by its headers (a batch may be larger than one event). */
  bodyLimit: (req: IncomingMessage) => number;
  logger: Logger;
}

/** A function's server, listening. */
export interface FunctionServer {
  readonly server: Server;
  readonly port: number;
  close(): Promise<void>;
}

/** Registers the handler with functions-framework and serves it behind the request bounds; resolves once listening. */
export async function serveFunction(opts: ServeOptions): Promise<FunctionServer> {
  // The framework still wraps the call in its domain and receives the handler's promise (a rejection: its 500).
  ff.http(opts.name, (req, res) => outsideTheDomain.run((): unknown => opts.handler(req, res)));
  const [app] = getTestServer(opts.name).listeners('request') as RequestListener[];
  if (app === undefined) throw new Error(`functions-framework built no request listener for ${opts.name}`);

  const onRequest = (req: BoundedIncomingMessage, res: ServerResponse): void => {
    const limit = opts.bodyLimit(req);
    const refusal = refuseDeclaredBody(req, limit);
    if (refusal) {
      opts.logger.warn({ status: refusal.status, reason: refusal.reason }, 'refused a request before reading its body');
      sendRefusal(req, res, refusal);
      return;
    }
    if (req.method !== 'POST') {
      app(req, res);
      return;
    }
    // Collected whole (it is within the limit), so it can be judged whole before the framework parses it.
    void req.collect(limit).then(async (body) => {
      if (body === undefined) {
        opts.logger.warn({ status: 413, limit }, 'refused a request past its limit');
        sendRefusal(req, res, tooLarge(limit));
        return;
      }
      const decoded = decodeBody(req.headers, body);
      if ('refusal' in decoded) {
        const { code, field, reason } = decoded.refusal;
        opts.logger.warn({ code, field, reason }, 'rejected a malformed request');
        sendRefusal(req, res, { status: 400, error: 'BAD_JSON', reason }, field, code);
        return;
      }
      Object.assign(req, { body: decoded.value, rawBody: body });
      await req.markRead();
      app(req, res);
    });
  };

  const server = createServer<typeof BoundedIncomingMessage>({ IncomingMessage: BoundedIncomingMessage }, onRequest);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // An empty host listens on every interface, as an omitted one does.
    server.listen(opts.port, opts.host, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  return {
    server,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      }),
  };
}

/** The slice of a function host (functions/core/function-host.ts) a function's process serves. */
export interface ServableHost {
  /** The function's name (its framework target). */
  name: string;
  /** Whether it takes batches: a batch's body is then bounded by MAX_BATCH_BYTES. */
  batches: boolean;
  handler: ff.HttpFunction;
  core: { deps: { config: { LISTEN_HOST: string; MAX_EVENT_BYTES: number; MAX_BATCH_BYTES: number }; logger: Logger } };
}
