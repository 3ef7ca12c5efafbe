// Follow-on events go to the Broker (K_SINK) explicitly: functions-framework does not send reply events.
// One circuit breaker guards the sink, and a small, bounded, jittered retry budget absorbs a blip; beyond that
// the caller gets a TransientError and throws it, so the Broker redelivers the event that caused the emission
// (delivery is at-least-once, every consumer is idempotent, so re-emitting after a partial failure is safe).
import { setTimeout as sleep } from 'node:timers/promises';
import { SpanKind, SpanStatusCode, trace, type Span, type Tracer } from '@opentelemetry/api';
import { ATTR_HTTP_RESPONSE_STATUS_CODE, ATTR_URL_FULL } from '@opentelemetry/semantic-conventions';
import { HTTP, type CloudEvent } from 'cloudevents';
import CircuitBreaker from 'opossum';
import type { Logger } from 'pino';
import { ConfigError } from './config.ts';
import { TransientError } from './errors.ts';
import { senderFor, type HttpAnswer } from './http-client.ts';
import type { SinkToken } from './sink-token.ts';
import {
  ATTR_CLOUDEVENTS_EVENT_ID,
  ATTR_CLOUDEVENTS_EVENT_SOURCE,
  ATTR_CLOUDEVENTS_EVENT_SUBJECT,
  ATTR_CLOUDEVENTS_EVENT_TYPE,
  ATTR_MESSAGING_MESSAGE_ID,
  ATTR_MESSAGING_OPERATION_NAME,
  ATTR_MESSAGING_OPERATION_TYPE,
  TRACER_NAME,
  recordFailure,
  traceHeadersForActiveContext,
} from './telemetry.ts';

/**
 * The sink's circuit breaker (opossum). Once open it fails every emission at once, for `resetTimeoutMs`,
 * instead of making each handler wait out timeouts against a Broker that is down; then one trial emission
 * (half-open) decides whether it closes again.
 */
export interface SinkBreakerOptions {
  /** Percentage of failed attempts in the rolling window at which the breaker opens. Default 50. */
  errorThresholdPercentage?: number;
  /** How long the breaker stays open before letting one trial attempt through (half-open), ms. Default 5000. */
  resetTimeoutMs?: number;
  /** Length of the rolling window failures are counted over, ms. Default 10000. */
  rollingCountTimeoutMs?: number;
  /** Buckets the rolling window is divided into; must divide rollingCountTimeoutMs. Default 10. */
  rollingCountBuckets?: number;
  /** Attempts the window must hold before the breaker may open, so a quiet period's first failure cannot open it. Default 10. */
  volumeThreshold?: number;
}

/** How the emitter reaches the Broker and how hard it tries. */
export interface EmitterOptions {
  /** The Broker's URL: K_SINK, injected by a Knative SinkBinding or ContainerSource. */
  sink: string;
  /** Timeout of one attempt (connect, answer and body), ms: CORE_TIMEOUT_MS. */
  timeoutMs: number;
  /** Further attempts after the first for a transient failure (429, 5xx, network, timeout). Default 2. */
  retries?: number;
  /** Cap of the first retry's full-jitter delay, ms; it doubles for each later retry. Default 25. */
  retryBaseDelayMs?: number;
  breaker?: SinkBreakerOptions;
  logger: Logger;
  /** A fetch to send with instead of the shared keep-alive client (http-client.ts), e.g. to observe requests in a test. */
  fetchImpl?: typeof fetch;
  /** The tracer for PRODUCER spans; the global tracer provider's when absent. */
  tracer?: Tracer;
  /** The sender's identity token, presented as `Authorization: Bearer` (SINK_TOKEN_FILE); none when absent. */
  token?: SinkToken;
  /** CA certificates (PEM) trusted for an https sink besides the system's (K_CA_CERTS). */
  caCerts?: string;
  /** Counts retries and events not sent (the catalogue's emitRetries and emitFailures); nothing counted when absent. */
  counters?: { retries: { add(n: number): void }; failures: { add(n: number): void } };
}

/** Sends CloudEvents to the Broker. */
export interface Emitter {
  /** Sends one event; resolves once the Broker accepted it (2xx). */
  emit(ce: CloudEvent<unknown>): Promise<void>;
  /** Sends events concurrently; waits for all, then throws the first failure (in input order) if any failed. */
  emitAll(ces: readonly CloudEvent<unknown>[]): Promise<void>;
  /** The breaker's state: closed (sending), open (failing fast) or half-open (one trial in flight). */
  breakerState(): 'closed' | 'open' | 'half-open';
  /** Stops the breaker's timers; every later emit fails with a TransientError. */
  shutdown(): void;
}

/** The Broker refused an event with a 4xx other than 429: our event is wrong, and resending it cannot help. */
export class EventRejectedError extends Error {
  override name = 'EventRejectedError';
  /** The status the Broker answered. */
  readonly status: number;
  /** The id of the refused event. */
  readonly eventId: string;
  /** The start of the Broker's answer, for the log. */
  readonly responseBody: string;

  constructor(status: number, eventId: string, responseBody: string) {
    super(`the Broker refused event ${eventId} with HTTP ${status}: ${responseBody}`);
    this.status = status;
    this.eventId = eventId;
    this.responseBody = responseBody;
  }
}

// One failed attempt that another attempt may cure: a 429 or 5xx answer, a network error or a timeout.
class AttemptFailedError extends Error {
  override name = 'AttemptFailedError';
  readonly status: number | undefined;
  constructor(message: string, status: number | undefined, options?: ErrorOptions) {
    super(message, options);
    this.status = status;
  }
}

const DEFAULT_RETRIES = 2;
const DEFAULT_RETRY_BASE_DELAY_MS = 25;
const RESPONSE_EXCERPT_CHARS = 512;

interface Outgoing {
  eventId: string;
  headers: Record<string, string>;
  body: string | Uint8Array | undefined;
}

// 401: our token was refused, which a rotated token read again may cure (the Broker's EventPolicies answer 403 to
// a sender they do not admit, which no retry cures).
function isRetryableStatus(status: number): boolean {
  return status === 401 || status === 429 || status >= 500;
}

function toHeaderRecord(headers: Record<string, string | string[] | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    out[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  return out;
}

function toBody(body: unknown): string | Uint8Array | undefined {
  if (body === undefined || body === null) return undefined;
  if (typeof body === 'string' || body instanceof Uint8Array) return body;
  return JSON.stringify(body);
}

function validSink(sink: string): URL {
  if (sink.trim() === '') {
    throw new ConfigError(
      'K_SINK is not set: bind this function to the Broker with a Knative SinkBinding (or run it as a ContainerSource) so follow-on events have somewhere to go',
    );
  }
  let url: URL;
  try {
    url = new URL(sink);
  } catch (err) {
    throw new ConfigError(`K_SINK=${JSON.stringify(sink)} is invalid: not a URL`, { cause: err });
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ConfigError(`K_SINK=${JSON.stringify(sink)} is invalid: expected an http or https URL`);
  }
  return url;
}

/** Creates the emitter for one sink; throws a ConfigError at once when the sink is missing or not a URL. */
/**
 * An event in binary mode as it leaves this process, by emission or in an HTTP reply: its `ce-` headers and body,
 * and the active span's trace context as the hop's W3C headers (and as the event's own, when it has none).
 */
export function binaryMessage(ce: CloudEvent<unknown>): { headers: Record<string, string>; body: string | Uint8Array | undefined } {
  // The HTTP hop carries this span's context; the event keeps the context it was created in, or gets this one if
  // it has none, so consumers continue the same trace (CloudEvents distributed tracing).
  const hop = traceHeadersForActiveContext();
  const message = HTTP.binary(ce);
  // In binary mode an extension is its `ce-` header, so adding the headers is what encoding a copy of the event
  // with the extension set (cloneWith) would send, without building and validating a second event.
  const extension = typeof ce.traceparent === 'string' || hop.traceparent === undefined
    ? {}
    : { 'ce-traceparent': hop.traceparent, ...(hop.tracestate === undefined ? {} : { 'ce-tracestate': hop.tracestate }) };
  return { headers: { ...toHeaderRecord(message.headers), ...extension, ...hop }, body: toBody(message.body) };
}

export function createEmitter(opts: EmitterOptions): Emitter {
  const sinkUrl = validSink(opts.sink).href;
  const retries = opts.retries ?? DEFAULT_RETRIES;
  const retryBaseDelayMs = opts.retryBaseDelayMs ?? DEFAULT_RETRY_BASE_DELAY_MS;
  const send = senderFor(opts.fetchImpl, opts.caCerts ? { caCerts: opts.caCerts } : {});
  const log = opts.logger.child({ component: 'emit', sink: sinkUrl });
  const tracerFor = (): Tracer => opts.tracer ?? trace.getTracer(TRACER_NAME);

  // One attempt; the breaker counts its outcome. A refusal (EventRejectedError) is filtered out of the
  // breaker's failures: it says our event is wrong, not that the Broker is unwell.
  async function attempt(out: Outgoing): Promise<number> {
    let res: HttpAnswer;
    let headers = out.headers;
    if (opts.token) {
      try {
        headers = { ...headers, authorization: `Bearer ${opts.token.current()}` };
      } catch (err) {
        throw new AttemptFailedError('no sender token to present', undefined, { cause: err });
      }
    }
    try {
      res = await send(sinkUrl, {
        method: 'POST',
        headers,
        ...(out.body === undefined ? {} : { body: out.body }),
        timeoutMs: opts.timeoutMs,
      });
    } catch (err) {
      const timedOut = err instanceof DOMException && err.name === 'TimeoutError';
      throw new AttemptFailedError(timedOut ? `no answer within ${opts.timeoutMs} ms` : 'network error', undefined, { cause: err });
    }
    // Reading the body (bounded by the same timeout) frees the connection for reuse.
    let text = '';
    try {
      text = await res.text();
    } catch (err) {
      if (res.ok) throw new AttemptFailedError('answer body not received', res.status, { cause: err });
    }
    if (res.ok) return res.status;
    if (res.status === 401) opts.token?.invalidate();
    const excerpt = text.slice(0, RESPONSE_EXCERPT_CHARS);
    if (isRetryableStatus(res.status)) throw new AttemptFailedError(`HTTP ${res.status}: ${excerpt}`, res.status);
    throw new EventRejectedError(res.status, out.eventId, excerpt);
  }

  const b = opts.breaker ?? {};
  const breaker = new CircuitBreaker<[Outgoing], number>(attempt, {
    name: `emit ${sinkUrl}`,
    // The attempt's own timeoutMs is the one timeout: it also closes the socket, which opossum's cannot.
    timeout: false,
    errorThresholdPercentage: b.errorThresholdPercentage ?? 50,
    resetTimeout: b.resetTimeoutMs ?? 5000,
    rollingCountTimeout: b.rollingCountTimeoutMs ?? 10_000,
    rollingCountBuckets: b.rollingCountBuckets ?? 10,
    volumeThreshold: b.volumeThreshold ?? 10,
    errorFilter: (err: unknown) => err instanceof EventRejectedError,
  });
  // Emitted by opossum when the failure percentage crosses the threshold: emissions now fail fast.
  breaker.on('open', () => log.warn({ breaker: 'open' }, 'event sink breaker opened: emissions fail fast'));
  // Emitted resetTimeout after opening: the next emission is a trial.
  breaker.on('halfOpen', () => log.info({ breaker: 'half-open' }, 'event sink breaker half-open: trying one emission'));
  // Emitted when a trial succeeds: normal sending resumes.
  breaker.on('close', () => log.info({ breaker: 'closed' }, 'event sink breaker closed'));

  async function sendWithRetries(out: Outgoing, span: Span): Promise<{ status: number; attempts: number }> {
    for (let n = 0; ; n++) {
      try {
        return { status: await breaker.fire(out), attempts: n + 1 };
      } catch (err) {
        if (err instanceof EventRejectedError) throw err;
        if (err instanceof Error && CircuitBreaker.isOurError(err)) {
          // Open (or shut down): fail fast rather than spend the retry budget against a known-bad sink.
          const why = breaker.isShutdown ? 'the emitter is shut down' : 'the event sink breaker is open';
          throw new TransientError(`event ${out.eventId} not sent: ${why}`, { cause: err });
        }
        if (!(err instanceof AttemptFailedError)) throw err;
        if (n >= retries) {
          throw new TransientError(`event ${out.eventId} not sent after ${n + 1} attempts: ${err.message}`, { cause: err });
        }
        const delayMs = Math.random() * retryBaseDelayMs * 2 ** n;
        opts.counters?.retries.add(1);
        span.addEvent('retry', { attempt: n + 1, reason: err.message, ...(err.status === undefined ? {} : { [ATTR_HTTP_RESPONSE_STATUS_CODE]: err.status }) });
        log.debug({ eventId: out.eventId, attempt: n + 1, delayMs: Math.round(delayMs), reason: err.message }, 'retrying event emission');
        await sleep(delayMs);
      }
    }
  }

  async function emit(ce: CloudEvent<unknown>): Promise<void> {
    const attributes = {
      [ATTR_MESSAGING_OPERATION_TYPE]: 'send',
      [ATTR_MESSAGING_OPERATION_NAME]: 'send',
      [ATTR_MESSAGING_MESSAGE_ID]: ce.id,
      [ATTR_CLOUDEVENTS_EVENT_ID]: ce.id,
      [ATTR_CLOUDEVENTS_EVENT_TYPE]: ce.type,
      [ATTR_CLOUDEVENTS_EVENT_SOURCE]: ce.source,
      [ATTR_URL_FULL]: sinkUrl,
      ...(ce.subject === undefined ? {} : { [ATTR_CLOUDEVENTS_EVENT_SUBJECT]: ce.subject }),
    };
    const ids = { eventId: ce.id, eventType: ce.type, subject: ce.subject };
    await tracerFor().startActiveSpan(`send ${ce.type}`, { kind: SpanKind.PRODUCER, attributes }, async (span) => {
      try {
        // The HTTP hop carries this span's context; the event keeps the context it was created in, or gets
        // this one if it has none, so consumers continue the same trace (CloudEvents distributed tracing).
        const out: Outgoing = { eventId: ce.id, ...binaryMessage(ce) };
        const { status, attempts } = await sendWithRetries(out, span);
        span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, status);
        span.setStatus({ code: SpanStatusCode.OK });
        log.debug({ ...ids, status, attempts }, 'event emitted');
      } catch (err) {
        recordFailure(span, err);
        opts.counters?.failures.add(1);
        if (err instanceof EventRejectedError) {
          span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, err.status);
          log.error({ ...ids, err, status: err.status }, 'the Broker refused an emitted event: the event we built is wrong');
        } else {
          log.warn({ ...ids, err }, 'event emission failed');
        }
        throw err;
      } finally {
        span.end();
      }
    });
  }

  async function emitAll(ces: readonly CloudEvent<unknown>[]): Promise<void> {
    const results = await Promise.allSettled(ces.map((ce) => emit(ce)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason as Error;
  }

  return {
    emit,
    emitAll,
    breakerState: () => (breaker.opened ? 'open' : breaker.halfOpen ? 'half-open' : 'closed'),
    shutdown: () => {
      breaker.shutdown();
      breaker.removeAllListeners();
      send.close();
    },
  };
}
