// The client gpu-release uses to call a GPU inference runtime's release API (runtime-api.openapi.yaml).
// Retries for this hop live here and nowhere else: one circuit breaker per runtime endpoint wraps each single
// HTTP attempt, and a bounded, jittered retry budget sits around it. A release is reported only when the runtime
// confirmed it (200 with a valid body, or a recognised 404/409); everything else is a typed RuntimeReleaseError.
// Only registered runtimes are called (RUNTIMES), and only at addresses the outbound policy allows; nothing a runtime
// answers is copied into an error's message (which may reach an event or a log).
import CircuitBreaker from 'opossum';
import { setTimeout as sleep } from 'node:timers/promises';
import { senderFor, type HttpAnswer, type HttpRequestInit } from './http-client.ts';
import { forbiddenAddressIn, type OutboundAddressPolicy } from './outbound-address.ts';
import { runtimeEndpoint as normalisedEndpoint, RuntimeUrlError, type RuntimeRegistry } from './runtime-registry.ts';

/** Session ids the runtime API accepts (the OpenAPI document's SessionId schema). */
export const SESSION_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

const TRACEPARENT_PATTERN = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;
const MAX_RESPONSE_CHARS = 64 * 1024;
const DEFAULT_BREAKER_IDLE_MS = 600_000;

/** How a release ended: freed now, already gone from the runtime, or left alone because a newer incarnation holds it. */
export interface ReleaseResult {
  outcome: 'released' | 'gone' | 'superseded';
  freedBytes: number;
  status: number;
  attempts: number;
  /**
   * Whether freedBytes was measured or exactly derived (absent: exact, as the native API reports it). An engine that
   * only lets it be estimated (SGLang's metrics delta, a vLLM no-op) says false; gpu.released then says `estimated`.
   */
  exact?: boolean;
  /** Why nothing (or something engine-wide) was done, for the log: a vLLM release. */
  note?: string;
}

/** The runtime's memory summary (GET /v1/memory); `sessions` is a count. */
export interface RuntimeMemory {
  totalBytes: number;
  usedBytes: number;
  sessions: number;
  /**
   * 'share' when the engine reports only a used fraction (vLLM's kv_cache_usage_perc): totalBytes is then 1,000,000
   * and usedBytes the used parts per million, meaningful only as a ratio. Absent: bytes.
   */
  unit?: 'share';
}

/** One session incarnation a runtime reports holding memory for (GET /v1/sessions). */
export interface HeldSession {
  sessionId: string;
  incarnation: number;
  bytes: number;
}

/**
 * One page of a runtime's listing, `next` leading to the following one; or, for a runtime that answered 404, 405 or
 * 501, `unsupported` (the listing is optional in the API).
 */
export type HeldSessionPage = { sessions: HeldSession[]; next?: string } | { unsupported: true; status: number };

/** Most sessions one listing page holds (the API's SessionPage). */
export const LIST_PAGE_LIMIT = 256;

/** Why a call failed; `invalid_request` means the caller passed an argument the API cannot carry. */
export type RuntimeReleaseErrorReason =
  | 'breaker_open' | 'budget_exhausted' | 'timeout' | 'http_status' | 'network' | 'bad_response' | 'invalid_request'
  | 'unregistered_runtime' | 'forbidden_address'
  // The engine cannot do what was asked: a llama-server without --slot-save-path (501), an operation its kind lacks.
  | 'unsupported'
  // A llama-server slot id at or past the registered slot count: refused here, since the server would wrap it around
  // and act on another session's slot.
  | 'slot_out_of_range';

/**
 * What a failure may say outside the process (a gpu.release.failed, an answer): a fixed description of its kind,
 * with the HTTP status where there was one, never a URL, an address or anything the runtime sent.
 */
export function publicDescription(err: RuntimeReleaseError): string {
  const status = err.status === undefined ? '' : ` (last answer HTTP ${err.status})`;
  switch (err.reason) {
    case 'breaker_open': return `the runtime's breaker is open${status}`;
    case 'budget_exhausted': {
      const attempts = `${err.attempts} attempt${err.attempts === 1 ? '' : 's'}`;
      return err.status === undefined ? `${attempts} failed` : `the runtime answered HTTP ${err.status} (${attempts})`;
    }
    case 'timeout': return 'the runtime did not answer in time';
    case 'http_status': return `the runtime answered HTTP ${err.status ?? 0}`;
    case 'network': return 'the runtime could not be reached';
    case 'bad_response': return `the runtime's answer was not understood${status}`;
    case 'invalid_request': return 'the release cannot be sent as asked';
    case 'unregistered_runtime': return 'the runtime is not registered';
    case 'forbidden_address': return "the runtime's address is not allowed for outbound calls";
    case 'unsupported': return `the runtime cannot do this operation${status}`;
    case 'slot_out_of_range': return "the session's slot is outside the runtime's registered slot count";
  }
}

/** A call to the runtime that did not end in a confirmed answer; `retryable` says whether trying later may help. */
export class RuntimeReleaseError extends Error {
  override name = 'RuntimeReleaseError';
  readonly retryable: boolean;
  readonly reason: RuntimeReleaseErrorReason;
  readonly status?: number;
  /** HTTP attempts made before giving up (0 when the call never reached the runtime). */
  readonly attempts: number;
  /** How long the runtime asked callers to wait (Retry-After on a 429 or 503), uncapped. */
  readonly retryAfterMs?: number;
  constructor(message: string, init: { reason: RuntimeReleaseErrorReason; retryable: boolean; status?: number | undefined; attempts?: number; retryAfterMs?: number | undefined; cause?: unknown }) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.reason = init.reason;
    this.retryable = init.retryable;
    if (init.status !== undefined) this.status = init.status;
    if (init.retryAfterMs !== undefined) this.retryAfterMs = init.retryAfterMs;
    this.attempts = init.attempts ?? 0;
  }
}

/** The subset of a pino logger this client writes to (structured object first, message second). */
export interface RuntimeClientLogger {
  warn(obj: Record<string, unknown>, msg?: string): void;
  info(obj: Record<string, unknown>, msg?: string): void;
  debug(obj: Record<string, unknown>, msg?: string): void;
}

/** State of one endpoint's breaker, as opossum names it. */
export type BreakerState = 'closed' | 'open' | 'halfOpen';

/** Circuit breaker settings, applied to each runtime endpoint's breaker. */
export interface RuntimeBreakerOptions {
  /** Failure percentage within the rolling window above which the breaker opens (opossum default 50). */
  errorThresholdPercentage: number;
  /** How long the breaker stays open before letting one trial call through (opossum default 30000). */
  resetTimeoutMs: number;
  /** Calls within the rolling window before the breaker may open at all (opossum default 0). */
  volumeThreshold: number;
  /** Length of the rolling statistics window, kept as ten buckets (opossum default 10000). */
  rollingCountTimeoutMs: number;
}

/** Options of createRuntimeClient. */
export interface RuntimeClientOptions {
  /** Limit of one HTTP attempt, response body included. */
  timeoutMs: number;
  /** Retries after the first attempt, at most. */
  retries: number;
  /** First backoff cap; the n-th retry waits a random time in [0, min(maxBackoffMs, baseBackoffMs * 2^n)]. */
  baseBackoffMs: number;
  /** Largest wait between attempts, Retry-After included. */
  maxBackoffMs: number;
  breaker: RuntimeBreakerOptions;
  logger?: RuntimeClientLogger;
  /** Called on each breaker transition, e.g. to export it as a metric. */
  onBreakerStateChange?: (change: { endpoint: string; state: BreakerState }) => void;
  /** A fetch to send with instead of the shared keep-alive client (http-client.ts), e.g. to observe requests in a test. */
  fetchImpl?: typeof fetch;
  /** Source of backoff jitter in [0, 1); default Math.random. */
  random?: () => number;
  /** The runtimes that may be called; a URL outside it fails with unregistered_runtime. Any runtime when absent (tests). */
  registry?: RuntimeRegistry;
  /** Where the client may connect (OUTBOUND_ALLOWED_CIDRS); anywhere when absent. Not used with fetchImpl. */
  addressPolicy?: OutboundAddressPolicy;
  /**
   * How long a closed breaker may go without a call before it is shut down and dropped (default 600000); a later
   * call makes a fresh one. Bounds what the client keeps to the runtimes in use, however many come and go.
   */
  breakerIdleMs?: number;
}

/** Per-call context propagated to the runtime. */
export interface RuntimeCallContext {
  /** W3C trace context of the caller's span; sent as the `traceparent` header when well-formed. */
  traceparent?: string;
  tracestate?: string;
}

/** Calls runtime release APIs, one breaker per endpoint. */
export interface RuntimeClient {
  release(runtimeUrl: string, sessionId: string, incarnation: number, ctx?: RuntimeCallContext): Promise<ReleaseResult>;
  memory(runtimeUrl: string, ctx?: RuntimeCallContext): Promise<RuntimeMemory>;
  /** One page of what the runtime holds (the optional GET /v1/sessions), after the session id `after`. */
  listSessions(runtimeUrl: string, page?: { after?: string; limit?: number }, ctx?: RuntimeCallContext): Promise<HeldSessionPage>;
  /**
   * One request to a registered runtime under the same breaker, retry budget and outbound rules as the calls above,
   * for the engine adapters (functions/core/runtime-adapters/) that speak an engine's own API. `interpret` gets the
   * status and body text and returns the answer or throws a RuntimeReleaseError (retryable ones are retried).
   */
  call<T>(runtimeUrl: string, request: RuntimeRequest, interpret: (answer: RuntimeAnswer) => T, ctx?: RuntimeCallContext): Promise<{ value: T; attempts: number }>;
  breakerState(runtimeUrl: string): BreakerState;
  /** How many endpoints' breakers the client holds now (idle closed ones are dropped after breakerIdleMs). */
  breakerCount(): number;
  /** Shuts every breaker down and cancels waits and requests in flight; later calls fail with breaker_open. */
  shutdown(): void;
}

/** A request an engine adapter sends through RuntimeClient.call. */
export interface RuntimeRequest {
  /** For logs: what the call does (release, erase, metrics...). */
  op: string;
  method: 'GET' | 'POST';
  /** Path and query after the runtime's endpoint, starting with '/'. */
  path: string;
  /** A JSON body (sent with content-type application/json). */
  json?: unknown;
  /** Extra headers (an idempotency key). */
  headers?: Record<string, string>;
  /** Fields added to this call's log lines (session id, slot). */
  logFields?: Record<string, unknown>;
}

/** What a runtime answered to a RuntimeRequest. */
export interface RuntimeAnswer {
  status: number;
  text: string;
  /** The answer's JSON body, or undefined when it is empty or not JSON. */
  body: unknown;
  /** The full URL called (for messages that stay inside the process). */
  url: string;
  /** A typed error for an unexpected status (retryable as the status says, Retry-After kept). */
  statusError(): RuntimeReleaseError;
}

type Attempt<T> = (signal: AbortSignal) => Promise<T>;
type AttemptBreaker = CircuitBreaker<[Attempt<unknown>, AbortSignal], unknown>;

// Answers that say the request was understood but cannot succeed as sent: retrying cannot help, and they say
// nothing about the runtime's health, so they do not count against its breaker. 501/505 are permanent too.
function isRetryableStatus(status: number): boolean {
  return status === 408 || status === 429 || (status >= 500 && status !== 501 && status !== 505);
}

function isNonNegativeInteger(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function field(body: unknown, name: string): unknown {
  return typeof body === 'object' && body !== null ? (body as Record<string, unknown>)[name] : undefined;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/** Parses Retry-After (delay-seconds or HTTP-date) into milliseconds from now; undefined when absent or invalid. */
export function retryAfterMs(header: string | null, now: number = Date.now()): number | undefined {
  if (header === null) return undefined;
  const value = header.trim();
  if (/^\d+$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/** Normalises a runtime base URL into the endpoint key its breaker is filed under: origin plus path, no trailing slash. */
export function runtimeEndpoint(runtimeUrl: string): string {
  try {
    return normalisedEndpoint(runtimeUrl);
  } catch (err) {
    if (!(err instanceof RuntimeUrlError)) throw err;
    throw new RuntimeReleaseError(err.message, { reason: 'invalid_request', retryable: false, cause: err });
  }
}

/** Builds a runtime client; call shutdown() when done so breaker timers stop. */
export function createRuntimeClient(opts: RuntimeClientOptions): RuntimeClient {
  const send = senderFor(opts.fetchImpl, opts.addressPolicy ? { addressPolicy: opts.addressPolicy } : {});
  const random = opts.random ?? Math.random;
  const log = opts.logger;
  const breakers = new Map<string, AttemptBreaker>();
  // Per endpoint: when a call last used its breaker, and how many calls are using it now (a call holds its breaker
  // across retries and backoff, so one in use is never dropped under it).
  const lastUsedAt = new Map<string, number>();
  const callsInFlight = new Map<string, number>();
  const idleMs = opts.breakerIdleMs ?? DEFAULT_BREAKER_IDLE_MS;
  let sweepTimer: NodeJS.Timeout | undefined;
  const lifetime = new AbortController();
  if (!Number.isInteger(opts.retries) || opts.retries < 0) throw new RangeError('retries must be an integer >= 0');
  if (!(opts.timeoutMs > 0)) throw new RangeError('timeoutMs must be > 0');
  if (!(idleMs > 0)) throw new RangeError('breakerIdleMs must be > 0');

  // Drops the breakers that are closed, unused now and idle for breakerIdleMs: shutdown() stops their timers. An
  // open or half-open breaker is kept, so a failing runtime is not handed a fresh, trusting breaker.
  function sweepIdleBreakers(): void {
    const now = Date.now();
    for (const [endpoint, breaker] of breakers) {
      if (!breaker.closed || (callsInFlight.get(endpoint) ?? 0) > 0 || now - (lastUsedAt.get(endpoint) ?? now) < idleMs) continue;
      breaker.shutdown();
      breakers.delete(endpoint);
      lastUsedAt.delete(endpoint);
      log?.debug({ endpoint, idleMs }, 'idle runtime breaker dropped');
    }
    if (breakers.size === 0) {
      clearInterval(sweepTimer);
      sweepTimer = undefined;
    }
  }

  function breakerFor(endpoint: string): AttemptBreaker {
    lastUsedAt.set(endpoint, Date.now());
    const existing = breakers.get(endpoint);
    if (existing) return existing;
    if (sweepTimer === undefined && !lifetime.signal.aborted) {
      // Half the idle time: a breaker goes at most 1.5 x breakerIdleMs after its last call. Unref'd: it must not keep
      // a process alive.
      sweepTimer = setInterval(sweepIdleBreakers, Math.max(1, Math.floor(idleMs / 2)));
      sweepTimer.unref();
    }
    const b = opts.breaker;
    const breaker: AttemptBreaker = new CircuitBreaker((attempt: Attempt<unknown>, signal: AbortSignal) => attempt(signal), {
      name: endpoint,
      // false (default 10000): each attempt already aborts its own request after timeoutMs (the HTTP client's timer),
      // which cancels the request; opossum's timer would only reject the promise and leave the socket running,
      // and its shared abortController would cancel every concurrent call to the endpoint at once.
      timeout: false,
      errorThresholdPercentage: b.errorThresholdPercentage, // default 50
      resetTimeout: b.resetTimeoutMs, // default 30000
      volumeThreshold: b.volumeThreshold, // default 0
      rollingCountTimeout: b.rollingCountTimeoutMs, // default 10000
      rollingCountBuckets: 10, // default 10: the window is ten equal slices
      // default true: opossum reads its stats on every failure, and sorting latencies there is wasted work;
      // latency is exported through tracing instead.
      rollingPercentilesEnabled: false,
      // default true: nobody listens for 'snapshot', so skip its interval timer.
      enableSnapshots: false,
      // default: nothing filtered. Answers the runtime gave on purpose (400, 403, 422...) show it is healthy;
      // they must not open the breaker.
      errorFilter: (err: unknown) => err instanceof RuntimeReleaseError && !err.retryable,
      // Defaults kept on purpose: cache false and coalesce false (a release must reach the runtime every time,
      // never be answered from memory); allowWarmUp false (volumeThreshold guards start-up instead); capacity
      // MAX_SAFE_INTEGER (concurrency is bounded by the Broker's delivery, not here); no fallback (a failure
      // must surface as an error, never as a made-up result).
    });
    const transition = (state: BreakerState, level: 'warn' | 'info') => () => {
      log?.[level]({ endpoint, breaker: state }, `runtime breaker ${state}`);
      opts.onBreakerStateChange?.({ endpoint, state });
    };
    // 'open': the failure rate crossed errorThresholdPercentage; calls fail fast for resetTimeout.
    breaker.on('open', transition('open', 'warn'));
    // 'halfOpen': resetTimeout elapsed; the next call is a trial whose outcome closes or reopens the breaker.
    breaker.on('halfOpen', transition('halfOpen', 'info'));
    // 'close': a trial call succeeded; calls flow again.
    breaker.on('close', transition('closed', 'info'));
    // 'reject': a call was refused without touching the runtime because the breaker is open.
    breaker.on('reject', () => log?.debug({ endpoint }, 'runtime call short-circuited by open breaker'));
    breakers.set(endpoint, breaker);
    return breaker;
  }

  function backoffMs(retry: number, failure: RuntimeReleaseError): number {
    if (failure.retryAfterMs !== undefined) return Math.min(failure.retryAfterMs, opts.maxBackoffMs);
    const cap = Math.min(opts.maxBackoffMs, opts.baseBackoffMs * 2 ** retry);
    return Math.floor(random() * cap);
  }

  function shutDownError(attempts: number, cause?: unknown): RuntimeReleaseError {
    return new RuntimeReleaseError('runtime client is shut down', { reason: 'breaker_open', retryable: true, attempts, cause });
  }

  // Runs one attempt through the endpoint's breaker, turning breaker refusals and transport failures into
  // RuntimeReleaseErrors.
  async function attemptOnce<T>(breaker: AttemptBreaker, attempt: Attempt<T>, attempts: number): Promise<T> {
    // The per-call timeout is the HTTP client's own (timeoutMs, in exchange): a cleared timer, not a signal.
    const signal = lifetime.signal;
    try {
      // The breaker is typed for unknown results because one breaker serves every call shape to its endpoint;
      // the value is whatever `attempt` resolved with.
      return (await breaker.fire(attempt, signal)) as T;
    } catch (err) {
      if (err instanceof RuntimeReleaseError) throw err;
      const code = field(err, 'code');
      if (code === 'EOPENBREAKER') {
        throw new RuntimeReleaseError(`breaker open for ${breaker.name}`, { reason: 'breaker_open', retryable: true, attempts, cause: err });
      }
      if (code === 'ESHUTDOWN' || lifetime.signal.aborted) throw shutDownError(attempts, err);
      throw new RuntimeReleaseError(`unexpected failure calling ${breaker.name}: ${String(err)}`, { reason: 'network', retryable: true, attempts, cause: err });
    }
  }

  // The registered endpoint of a runtime URL; an unregistered one is never called.
  function endpointOf(runtimeUrl: string): string {
    const endpoint = runtimeEndpoint(runtimeUrl);
    if (opts.registry && opts.registry.lookup(endpoint) === undefined) {
      throw new RuntimeReleaseError(`runtime ${endpoint} is not registered (RUNTIMES)`, { reason: 'unregistered_runtime', retryable: false });
    }
    return endpoint;
  }

  // `endpoint`: the runtime's registered endpoint (endpointOf), resolved once per call.
  async function withRetries<T>(endpoint: string, op: string, logFields: Record<string, unknown>, attempt: Attempt<T>): Promise<{ value: T; attempts: number }> {
    callsInFlight.set(endpoint, (callsInFlight.get(endpoint) ?? 0) + 1);
    try {
      return await retrying(endpoint, op, logFields, attempt);
    } finally {
      const left = (callsInFlight.get(endpoint) ?? 1) - 1;
      if (left === 0) callsInFlight.delete(endpoint);
      else callsInFlight.set(endpoint, left);
      // The end of a call counts as use: its idle time starts now, not when it began.
      if (breakers.has(endpoint)) lastUsedAt.set(endpoint, Date.now());
    }
  }

  async function retrying<T>(endpoint: string, op: string, logFields: Record<string, unknown>, attempt: Attempt<T>): Promise<{ value: T; attempts: number }> {
    let attempts = 0;
    for (;;) {
      if (lifetime.signal.aborted) throw shutDownError(attempts);
      const breaker = breakerFor(endpoint);
      attempts++;
      let failure: RuntimeReleaseError;
      try {
        const value = await attemptOnce(breaker, attempt, attempts);
        return { value, attempts };
      } catch (err) {
        failure = err as RuntimeReleaseError;
      }
      // A refused call never reached the runtime; don't count it as an attempt made.
      const made = failure.reason === 'breaker_open' ? attempts - 1 : attempts;
      const fields = { ...logFields, endpoint, op, attempt: attempts, reason: failure.reason, status: failure.status };
      if (failure.reason === 'breaker_open' || !failure.retryable) {
        // Refusals by an open breaker come in floods while a runtime is down; its 'open' event was logged once.
        log?.[failure.reason === 'breaker_open' ? 'debug' : 'warn']({ ...fields, err: failure.message }, `runtime ${op} failed`);
        throw withAttempts(failure, made);
      }
      if (breaker.opened) {
        log?.warn({ ...fields, err: failure.message }, `runtime ${op} stopped: breaker opened`);
        throw new RuntimeReleaseError(`breaker opened for ${endpoint} after: ${failure.message}`, { reason: 'breaker_open', retryable: true, status: failure.status, retryAfterMs: failure.retryAfterMs, attempts, cause: failure });
      }
      if (attempts > opts.retries) {
        log?.warn({ ...fields, err: failure.message }, `runtime ${op} failed: retry budget exhausted`);
        throw new RuntimeReleaseError(`${attempts} attempts failed, last: ${failure.message}`, { reason: 'budget_exhausted', retryable: true, status: failure.status, retryAfterMs: failure.retryAfterMs, attempts, cause: failure });
      }
      const delayMs = backoffMs(attempts - 1, failure);
      log?.warn({ ...fields, delayMs, retryAfterMs: failure.retryAfterMs, err: failure.message }, `runtime ${op} attempt failed; retrying`);
      try {
        await sleep(delayMs, undefined, { signal: lifetime.signal });
      } catch (err) {
        throw shutDownError(attempts, err);
      }
    }
  }

  function withAttempts(err: RuntimeReleaseError, attempts: number): RuntimeReleaseError {
    if (err.attempts === attempts) return err;
    return new RuntimeReleaseError(err.message, { reason: err.reason, retryable: err.retryable, status: err.status, retryAfterMs: err.retryAfterMs, attempts, cause: err.cause });
  }

  // One HTTP exchange: sends, reads the whole body under the same deadline, and hands status and text to
  // `interpret`, which returns the answer or throws. Transport failures become typed errors here.
  async function exchange<T>(url: string, init: HttpRequestInit, signal: AbortSignal, interpret: (status: number, text: string, res: HttpAnswer) => T): Promise<T> {
    let res: HttpAnswer;
    let text: string;
    try {
      res = await send(url, { ...init, signal, timeoutMs: opts.timeoutMs });
      text = await res.text();
    } catch (err) {
      if (err instanceof DOMException && err.name === 'TimeoutError' && !lifetime.signal.aborted) {
        throw new RuntimeReleaseError(`no answer from ${url} within ${opts.timeoutMs} ms`, { reason: 'timeout', retryable: true, cause: err });
      }
      if (lifetime.signal.aborted) throw shutDownError(0, err);
      const forbidden = forbiddenAddressIn(err);
      if (forbidden) {
        throw new RuntimeReleaseError(`${url} resolves to ${forbidden.address} (${forbidden.range}), which outbound calls may not reach`, { reason: 'forbidden_address', retryable: false, cause: err });
      }
      const code = field(field(err, 'cause'), 'code');
      throw new RuntimeReleaseError(`request to ${url} failed${typeof code === 'string' ? ` (${code})` : ''}`, { reason: 'network', retryable: true, cause: err });
    }
    if (text.length > MAX_RESPONSE_CHARS) {
      throw new RuntimeReleaseError(`response from ${url} is over ${MAX_RESPONSE_CHARS} characters`, { reason: 'bad_response', retryable: true, status: res.status });
    }
    return interpret(res.status, text, res);
  }

  function statusError(url: string, status: number, res: HttpAnswer): RuntimeReleaseError {
    return new RuntimeReleaseError(`runtime answered ${status} for ${url}`, {
      reason: 'http_status',
      retryable: isRetryableStatus(status),
      status,
      retryAfterMs: status === 429 || status === 503 ? retryAfterMs(res.headers.get('retry-after')) : undefined,
    });
  }

  function headersFor(ctx: RuntimeCallContext | undefined, extra: Record<string, string>): Record<string, string> {
    const headers: Record<string, string> = { accept: 'application/json', ...extra };
    if (ctx?.traceparent !== undefined) {
      if (TRACEPARENT_PATTERN.test(ctx.traceparent) && !ctx.traceparent.startsWith('ff')) {
        headers.traceparent = ctx.traceparent;
        // tracestate is meaningless without a traceparent; header values must not carry line breaks.
        if (ctx.tracestate !== undefined && !/[\r\n]/.test(ctx.tracestate)) headers.tracestate = ctx.tracestate;
      } else {
        log?.debug({ traceparent: ctx.traceparent }, 'dropping malformed traceparent');
      }
    }
    return headers;
  }

  return {
    async release(runtimeUrl, sessionId, incarnation, ctx) {
      if (!SESSION_ID_PATTERN.test(sessionId)) {
        throw new RuntimeReleaseError(`session id ${JSON.stringify(sessionId)} does not match ${SESSION_ID_PATTERN.source}`, { reason: 'invalid_request', retryable: false });
      }
      if (!isNonNegativeInteger(incarnation)) {
        throw new RuntimeReleaseError(`incarnation must be an integer >= 0, got ${String(incarnation)}`, { reason: 'invalid_request', retryable: false });
      }
      const endpoint = endpointOf(runtimeUrl);
      const url = `${endpoint}/v1/sessions/${encodeURIComponent(sessionId)}/release`;
      const init: HttpRequestInit = {
        method: 'POST',
        // The same key on every attempt: a retry after a lost response gets the stored answer, not a second release.
        headers: headersFor(ctx, { 'content-type': 'application/json', 'idempotency-key': `${sessionId}:${incarnation}` }),
        body: JSON.stringify({ incarnation }),
      };
      const logFields = { sessionId, incarnation };
      const { value, attempts } = await withRetries(endpoint, 'release', logFields, (signal) =>
        exchange(url, init, signal, (status, text, res): Omit<ReleaseResult, 'attempts'> => {
          const body = parseJson(text);
          if (status === 200) {
            const freedBytes = field(body, 'freedBytes');
            if (!isNonNegativeInteger(freedBytes)) {
              throw new RuntimeReleaseError(`200 from ${url} without a valid freedBytes (${text.length} characters)`, { reason: 'bad_response', retryable: true, status });
            }
            return { outcome: 'released', freedBytes, status };
          }
          // Only the API's own problem codes confirm these outcomes: a bare 404 from a proxy or a wrong path
          // prefix would otherwise read as "released" while the memory stays held.
          if (status === 404 && field(body, 'code') === 'session_not_found') return { outcome: 'gone', freedBytes: 0, status };
          if (status === 409 && field(body, 'code') === 'incarnation_superseded') return { outcome: 'superseded', freedBytes: 0, status };
          throw statusError(url, status, res);
        }),
      );
      log?.debug({ ...logFields, endpoint, outcome: value.outcome, freedBytes: value.freedBytes, attempts }, 'runtime release confirmed');
      return { ...value, attempts };
    },

    async memory(runtimeUrl, ctx) {
      const endpoint = endpointOf(runtimeUrl);
      const url = `${endpoint}/v1/memory`;
      const init: HttpRequestInit = { method: 'GET', headers: headersFor(ctx, {}) };
      const { value } = await withRetries(endpoint, 'memory', {}, (signal) =>
        exchange(url, init, signal, (status, text, res): RuntimeMemory => {
          if (status !== 200) throw statusError(url, status, res);
          const body = parseJson(text);
          const [totalBytes, usedBytes, sessions] = [field(body, 'totalBytes'), field(body, 'usedBytes'), field(body, 'sessions')];
          if (!isNonNegativeInteger(totalBytes) || !isNonNegativeInteger(usedBytes) || !isNonNegativeInteger(sessions)) {
            throw new RuntimeReleaseError(`200 from ${url} is not a memory summary (${text.length} characters)`, { reason: 'bad_response', retryable: true, status });
          }
          return { totalBytes, usedBytes, sessions };
        }),
      );
      return value;
    },

    async listSessions(runtimeUrl, page = {}, ctx) {
      const limit = page.limit ?? LIST_PAGE_LIMIT;
      if (!Number.isInteger(limit) || limit < 1 || limit > LIST_PAGE_LIMIT) {
        throw new RuntimeReleaseError(`limit must be an integer within [1, ${LIST_PAGE_LIMIT}], got ${String(limit)}`, { reason: 'invalid_request', retryable: false });
      }
      if (page.after !== undefined && !SESSION_ID_PATTERN.test(page.after)) {
        throw new RuntimeReleaseError(`after ${JSON.stringify(page.after)} does not match ${SESSION_ID_PATTERN.source}`, { reason: 'invalid_request', retryable: false });
      }
      const endpoint = endpointOf(runtimeUrl);
      const query = new URLSearchParams({ limit: String(limit), ...(page.after === undefined ? {} : { after: page.after }) });
      const url = `${endpoint}/v1/sessions?${query.toString()}`;
      const init: HttpRequestInit = { method: 'GET', headers: headersFor(ctx, {}) };
      const { value } = await withRetries(endpoint, 'list', {}, (signal) =>
        exchange(url, init, signal, (status, text, res): HeldSessionPage => {
          // The listing is optional: these say the runtime has none, which is an answer, not a failure.
          if (status === 404 || status === 405 || status === 501) return { unsupported: true, status };
          if (status !== 200) throw statusError(url, status, res);
          const body = parseJson(text);
          const sessions = field(body, 'sessions');
          const next = field(body, 'next');
          const entries = Array.isArray(sessions) ? (sessions as unknown[]) : undefined;
          const valid = entries !== undefined && entries.length <= limit && entries.every((e) => {
            const id = field(e, 'sessionId');
            return typeof id === 'string' && SESSION_ID_PATTERN.test(id) && isNonNegativeInteger(field(e, 'incarnation')) && isNonNegativeInteger(field(e, 'bytes'));
          });
          // A `next` that does not move forward would make a caller page forever.
          const nextValid = next === undefined || (typeof next === 'string' && SESSION_ID_PATTERN.test(next) && (page.after === undefined || next > page.after));
          if (!valid || !nextValid) {
            throw new RuntimeReleaseError(`200 from ${url} is not a session page (${text.length} characters)`, { reason: 'bad_response', retryable: true, status });
          }
          const held = entries.map((e) => ({ sessionId: field(e, 'sessionId') as string, incarnation: field(e, 'incarnation') as number, bytes: field(e, 'bytes') as number }));
          return next === undefined ? { sessions: held } : { sessions: held, next };
        }),
      );
      return value;
    },

    async call(runtimeUrl, request, interpret, ctx) {
      if (!request.path.startsWith('/')) throw new RuntimeReleaseError(`request path ${request.path} must start with /`, { reason: 'invalid_request', retryable: false });
      const endpoint = endpointOf(runtimeUrl);
      const url = `${endpoint}${request.path}`;
      const extra: Record<string, string> = { ...(request.json === undefined ? {} : { 'content-type': 'application/json' }), ...request.headers };
      const init: HttpRequestInit = { method: request.method, headers: headersFor(ctx, extra), ...(request.json === undefined ? {} : { body: JSON.stringify(request.json) }) };
      return withRetries(endpoint, request.op, request.logFields ?? {}, (signal) =>
        exchange(url, init, signal, (status, text, res) => interpret({ status, text, body: parseJson(text), url, statusError: () => statusError(url, status, res) })),
      );
    },

    breakerState(runtimeUrl) {
      const breaker = breakers.get(runtimeEndpoint(runtimeUrl));
      if (!breaker || breaker.closed) return 'closed';
      return breaker.halfOpen ? 'halfOpen' : 'open';
    },

    breakerCount() {
      return breakers.size;
    },

    shutdown() {
      lifetime.abort();
      clearInterval(sweepTimer);
      sweepTimer = undefined;
      for (const breaker of breakers.values()) breaker.shutdown();
      breakers.clear();
      lastUsedAt.clear();
      send.close();
    },
  };
}
