// A small HTTP client for the hops between our own services (function → Broker, Broker → function, gpu-release →
// runtime). Global fetch (undici) costs three to four times the client CPU of node:http per request, and a
// destroy makes eight such hops, so these hops go through node:http/node:https with keep-alive Agents instead.
// It speaks fetch's error language so callers classify failures the same way whichever they use: an abort
// rejects with the signal's reason (a DOMException named TimeoutError for AbortSignal.timeout, AbortError for a
// bare abort()), and a transport failure with a TypeError whose `cause` is the socket error.
// Redirects are never followed (fetch's redirect: 'manual'): a 3xx comes back as it is.
import { Agent as HttpAgent, request as httpRequest, type ClientRequest, type IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { rootCertificates } from 'node:tls';
import type { OutboundAddressPolicy } from './outbound-address.ts';

/** Sockets one client keeps open to one origin at most; further requests to it queue in the Agent. */
export const DEFAULT_MAX_SOCKETS_PER_ORIGIN = 64;

/** Options of one request. */
export interface HttpRequestInit {
  /** Default GET. */
  method?: string;
  /** Names are sent lower-cased, as fetch sends them. */
  headers?: Readonly<Record<string, string>>;
  body?: string | Uint8Array;
  /** Aborts the request, and the reading of its answer's body, when it fires. */
  signal?: AbortSignal;
  /**
   * Aborts the request, and the reading of its answer's body, after this many ms, rejecting with the DOMException
   * named TimeoutError that AbortSignal.timeout would. Preferred to AbortSignal.timeout on hot paths: its timer is
   * cleared as soon as the body is read, where each AbortSignal.timeout lives (a timer, a weak reference and a
   * finalizer) until it fires or is collected, so a process sending a thousand requests a second carried thousands
   * of them through every garbage collection.
   */
  timeoutMs?: number;
}

/** An answer's headers: lower-cased names, repeated fields joined with ', ' (set-cookie included). */
export class ResponseHeaders {
  /** Every field by lower-cased name. */
  readonly record: Readonly<Record<string, string>>;

  constructor(record: Readonly<Record<string, string>>) {
    this.record = record;
  }

  /** The field's value, whatever the case of `name`; null when the answer has no such field. */
  get(name: string): string | null {
    return this.record[name.toLowerCase()] ?? null;
  }
}

/** An answer whose status and headers have arrived; its body keeps arriving and is read once with text() or json(). */
export interface HttpResponse {
  readonly status: number;
  readonly statusText: string;
  /** Status is 200–299. */
  readonly ok: boolean;
  readonly headers: ResponseHeaders;
  /** The whole body; rejects like fetch's body reading when the transfer breaks or the signal fires. */
  bytes(): Promise<Buffer>;
  /** The whole body as UTF-8 text. */
  text(): Promise<string>;
  /** The whole body parsed as JSON; a SyntaxError when it is not JSON. */
  json(): Promise<unknown>;
}

/** Sizing of a client's connection pools. */
export interface HttpClientOptions {
  /** Sockets per origin at most. Default DEFAULT_MAX_SOCKETS_PER_ORIGIN. */
  maxSocketsPerOrigin?: number;
  /**
   * Where the client may connect: every address a host resolves to (or a literal host) is checked when the socket
   * connects, and a refused one fails the request with a TypeError whose cause is a ForbiddenAddressError.
   * Anywhere when absent (our own infrastructure: the Broker, Redis, the collector).
   */
  addressPolicy?: OutboundAddressPolicy;
  /** Extra CA certificates (PEM) trusted for https besides the system's, e.g. the Broker's (K_CA_CERTS). */
  caCerts?: string;
}

/** Sends requests over pooled keep-alive connections. */
export interface HttpClient {
  /** Sends one request; resolves once the status line and headers arrived. */
  request(url: string | URL, init?: HttpRequestInit): Promise<HttpResponse>;
  /** Closes every pooled connection; requests in flight fail. */
  close(): void;
}

// Socket errors that mean a pooled connection had already been closed by the server when we wrote to it.
const STALE_SOCKET_CODES = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED']);

// What an aborted request rejects with: the signal's reason, as fetch does (a DOMException named TimeoutError from
// AbortSignal.timeout, AbortError from a bare abort()); a reason that is not an Error is wrapped in an AbortError.
function abortReason(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  if (reason instanceof Error) return reason;
  return new DOMException('This operation was aborted', { name: 'AbortError', cause: reason });
}

// What a request that ran out of time rejects with: what fetch rejects with when an AbortSignal.timeout fires.
function timeoutError(): DOMException {
  return new DOMException('The operation was aborted due to timeout', 'TimeoutError');
}

function outgoingHeaders(headers: Readonly<Record<string, string>> | undefined, body: string | Uint8Array | undefined, method: string): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  if (headers !== undefined) for (const [name, value] of Object.entries(headers)) out[name.toLowerCase()] = value;
  // A known length, not chunked encoding, as fetch does for a string or byte body (and 0 for an empty POST).
  if (body !== undefined) out['content-length'] = typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength;
  else if (method === 'POST' || method === 'PUT' || method === 'PATCH') out['content-length'] = 0;
  return out;
}

function responseHeaders(res: IncomingMessage): ResponseHeaders {
  const record: Record<string, string> = {};
  const raw = res.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    const value = raw[i + 1]!;
    const seen = record[name];
    record[name] = seen === undefined ? value : `${seen}, ${value}`;
  }
  return new ResponseHeaders(record);
}

function isStaleSocketError(err: unknown, req: ClientRequest, answered: boolean): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return req.reusedSocket && !answered && code !== undefined && STALE_SOCKET_CODES.has(code);
}

/** Creates a client with its own keep-alive pools (one per origin, LIFO so idle sockets age out). */
export function createHttpClient(opts: HttpClientOptions = {}): HttpClient {
  const maxSockets = opts.maxSocketsPerOrigin ?? DEFAULT_MAX_SOCKETS_PER_ORIGIN;
  if (!Number.isInteger(maxSockets) || maxSockets < 1) throw new RangeError('maxSocketsPerOrigin must be an integer >= 1');
  // An Agent pools per host:port, so maxSockets bounds each origin; 'lifo' reuses the most recent socket and lets
  // the rest idle out. The Agent also honours the server's Keep-Alive: timeout hint, closing before the server does.
  const agentOptions = { keepAlive: true, maxSockets, maxFreeSockets: maxSockets, scheduling: 'lifo' as const };
  const httpAgent = new HttpAgent(agentOptions);
  const httpsAgent = new HttpsAgent({ ...agentOptions, ...(opts.caCerts ? { ca: [...rootCertificates, opts.caCerts] } : {}) });
  const policy = opts.addressPolicy;

  function send(url: URL, init: HttpRequestInit, method: string, headers: OutgoingHttpHeaders, mayRetryStale: boolean): Promise<HttpResponse> {
    const signal = init.signal;
    return new Promise<HttpResponse>((resolve, reject) => {
      const isHttps = url.protocol === 'https:';
      // A literal address is never looked up, so it is checked here; a name is checked as it resolves.
      try {
        policy?.checkHost(url.hostname);
      } catch (err) {
        reject(new TypeError('fetch failed', { cause: err }));
        return;
      }
      const req = (isHttps ? httpsRequest : httpRequest)(url, { method, headers, agent: isHttps ? httpsAgent : httpAgent, ...(policy ? { lookup: policy.lookup } : {}) });
      let answered = false;
      let settled = false;
      // Resolved with the whole body, or rejected; handed to the response's readers.
      let bodyDone: (body: Buffer) => void = () => undefined;
      let bodyFailed: (err: Error) => void = () => undefined;

      const abortWith = (reason: Error): void => {
        req.destroy();
        if (settled) bodyFailed(reason);
        else fail(reason);
      };
      const onAbort = (): void => abortWith(abortReason(signal!));
      const startedAt = performance.now();
      let timedOut: Error | undefined;
      const timer = init.timeoutMs === undefined ? undefined : setTimeout(() => abortWith((timedOut = timeoutError())), init.timeoutMs);
      const unlisten = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const fail = (err: Error): void => {
        if (settled) return;
        settled = true;
        unlisten();
        reject(err);
      };

      req.on('error', (err) => {
        if (answered) return; // the response's own error handler reports a broken body
        if (!settled && mayRetryStale && isStaleSocketError(err, req, answered) && signal?.aborted !== true) {
          // The server closed this pooled connection as we reused it (its keep-alive timeout raced our write), so
          // the request never reached it: send once more on a fresh connection, as node's documentation advises.
          settled = true;
          unlisten();
          // The retry gets what is left of the one deadline, not a fresh one.
          const left = init.timeoutMs === undefined ? undefined : Math.max(1, init.timeoutMs - (performance.now() - startedAt));
          send(url, left === undefined ? init : { ...init, timeoutMs: left }, method, headers, false).then(resolve, reject);
          return;
        }
        if (timedOut) fail(timedOut);
        else if (signal?.aborted === true) fail(abortReason(signal));
        else fail(new TypeError('fetch failed', { cause: err }));
      });

      req.on('response', (res) => {
        answered = true;
        settled = true;
        const chunks: Buffer[] = [];
        const body = new Promise<Buffer>((done, failed) => {
          bodyDone = done;
          bodyFailed = failed;
        });
        // A caller that never reads the body must not see an unhandled rejection.
        body.catch(() => undefined);
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => {
          unlisten();
          bodyDone(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks));
        });
        res.on('error', (err) => {
          unlisten();
          bodyFailed(timedOut ?? (signal?.aborted === true ? abortReason(signal) : new TypeError('terminated', { cause: err })));
        });
        res.on('aborted', () => {
          unlisten();
          bodyFailed(new TypeError('terminated', { cause: new Error('the server closed the connection before the body ended') }));
        });
        const status = res.statusCode ?? 0;
        let read = false;
        const bytes = (): Promise<Buffer> => {
          if (read) return Promise.reject(new TypeError('Body is unusable: Body has already been read'));
          read = true;
          return body;
        };
        resolve({
          status,
          statusText: res.statusMessage ?? '',
          ok: status >= 200 && status < 300,
          headers: responseHeaders(res),
          bytes,
          text: async () => (await bytes()).toString('utf8'),
          json: async () => JSON.parse((await bytes()).toString('utf8')) as unknown,
        });
      });

      signal?.addEventListener('abort', onAbort, { once: true });
      if (init.body === undefined) req.end();
      else req.end(init.body);
    });
  }

  return {
    request(input, init = {}) {
      const signal = init.signal;
      if (signal?.aborted === true) return Promise.reject(abortReason(signal));
      let url: URL;
      try {
        url = typeof input === 'string' ? new URL(input) : input;
      } catch (err) {
        return Promise.reject(new TypeError(`invalid URL: ${String(input)}`, { cause: err }));
      }
      if (url.protocol !== 'http:' && url.protocol !== 'https:') {
        return Promise.reject(new TypeError(`unsupported protocol ${url.protocol} in ${url.href}`));
      }
      const method = (init.method ?? 'GET').toUpperCase();
      return send(url, init, method, outgoingHeaders(init.headers, init.body, method), true);
    },
    close() {
      httpAgent.destroy();
      httpsAgent.destroy();
    },
  };
}

/** The process's shared client: its pools serve every module that calls another service of ours. */
export const sharedHttpClient: HttpClient = createHttpClient();

/** What our callers read of an answer; a fetch Response has all of it too, so either can stand behind HttpSend. */
export interface HttpAnswer {
  readonly status: number;
  readonly ok: boolean;
  readonly headers: { get(name: string): string | null };
  text(): Promise<string>;
}

/** Sends one request and never follows a redirect. */
export type HttpSend = (url: string, init: HttpRequestInit) => Promise<HttpAnswer>;

/** A module's way to send; close() ends the client it holds of its own, if any. */
export interface HttpSender extends HttpSend {
  close(): void;
}

/**
 * The sender a module uses: the fetch a test injected (with redirect 'manual'); else a client of its own when `own`
 * asks for an address policy or extra CAs (the shared client reaches our own services as they are); else the shared
 * keep-alive client.
 */
export function senderFor(fetchImpl?: typeof fetch, own: Pick<HttpClientOptions, 'addressPolicy' | 'caCerts'> = {}): HttpSender {
  if (fetchImpl !== undefined) {
    const send: HttpSend = (url, { timeoutMs, signal, ...init }) => {
      const timeout = timeoutMs === undefined ? undefined : AbortSignal.timeout(timeoutMs);
      const either = timeout && signal ? AbortSignal.any([timeout, signal]) : (timeout ?? signal);
      return fetchImpl(url, { ...init, ...(either ? { signal: either } : {}), redirect: 'manual' });
    };
    return Object.assign(send, { close: () => {} });
  }
  const client = own.addressPolicy !== undefined || own.caCerts ? createHttpClient(own) : sharedHttpClient;
  return Object.assign((url: string, init: HttpRequestInit) => client.request(url, init), {
    close: () => {
      if (client !== sharedHttpClient) client.close();
    },
  });
}

// Statuses whose Response must have a null body (the Response constructor refuses one otherwise).
const NULL_BODY_STATUSES = new Set([101, 103, 204, 205, 304]);

function requestHeaders(headers: RequestInit['headers']): Record<string, string> {
  const out: Record<string, string> = {};
  if (headers === undefined) return out;
  // Headers, an array of pairs and a record all normalise the same way through the Headers class, as in fetch.
  if (!(headers instanceof Headers) && !Array.isArray(headers)) {
    for (const [name, value] of Object.entries(headers as Record<string, string>)) out[name.toLowerCase()] = value;
    return out;
  }
  for (const [name, value] of new Headers(headers)) out[name] = value;
  return out;
}

/**
 * A drop-in for global fetch over the shared keep-alive client, for the options our hops use: a string or URL,
 * a string or byte body, and redirect 'manual' or 'error'. Anything else (a Request, a stream or form body,
 * redirects to follow) goes to global fetch unchanged, so it never silently behaves differently.
 */
export const keepAliveFetch: typeof fetch = async (input, init) => {
  const body = init?.body ?? undefined;
  const supported =
    (typeof input === 'string' || input instanceof URL) &&
    (init?.redirect === 'manual' || init?.redirect === 'error') &&
    (body === undefined || typeof body === 'string' || body instanceof Uint8Array);
  if (!supported) return fetch(input, init);
  const url = typeof input === 'string' ? new URL(input) : input;
  if (url.username !== '' || url.password !== '') {
    throw new TypeError(`Request cannot be constructed from a URL that includes credentials: ${url.href}`);
  }
  const headers = requestHeaders(init.headers);
  // fetch labels a string body this way when the caller did not.
  if (typeof body === 'string' && headers['content-type'] === undefined) headers['content-type'] = 'text/plain;charset=UTF-8';
  const res = await sharedHttpClient.request(url, {
    ...(init.method === undefined ? {} : { method: init.method }),
    headers,
    ...(body === undefined ? {} : { body }),
    ...(init.signal ? { signal: init.signal } : {}),
  });
  if (init.redirect === 'error' && res.status >= 300 && res.status < 400 && res.headers.get('location') !== null) {
    await res.bytes().catch(() => undefined);
    throw new TypeError('fetch failed', { cause: new Error('unexpected redirect') });
  }
  // The body is read before the Response exists, so a broken transfer or an abort rejects here rather than in
  // the caller's text(); every caller of ours reads the body under the same try as the request.
  const bytes = await res.bytes();
  return new Response(NULL_BODY_STATUSES.has(res.status) ? null : bytes, {
    status: res.status,
    statusText: res.statusText,
    headers: Object.entries(res.headers.record),
  });
};
