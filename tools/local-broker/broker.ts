// A local stand-in for the Knative Broker, driven by the deployed manifests (knative/base): an HTTP ingress that
// takes CloudEvents in binary, structured and batched mode and answers 202 / 400 / 413 as Knative's does, and a
// dispatcher that delivers each event to every matching Trigger's subscriber in binary mode, with that Trigger's
// retries, backoff and timeout, then keeps what finally fails in an on-disk dead-letter store, bounded by bytes like
// the deployed one (functions/core/dead-letter-store.ts).
//
// Delivery is asynchronous (after the 202) from a bounded in-memory set of pending deliveries. On stop, pending
// deliveries get a grace period to finish; what is left (waiting for a retry, or cut off mid-attempt) is written
// to a pending-deliveries file and re-queued by the next broker started on the same store, so nothing is lost.
// Delivery is at-least-once, as with Knative: an attempt cut off by stop is sent again after the restart.
// A Broker that is killed (SIGKILL: no stop at all) loses nothing either: every accepted event is in a journal on the
// same store before the ingress answers 202, and the next start delivers again what the journal does not record as
// done (delivery-journal.ts). Options make delivery as untidy as a real Broker's: duplicated, reordered and delayed,
// seeded so a run can be replayed (delivery-chaos.ts).
// The same port serves a small JSON admin API for operators (sessionctl): GET /admin/stats, GET /admin/dead-letters
// (paged: ?after=<next>), GET and DELETE /admin/dead-letters/:id and POST /admin/dead-letters/:id/replay; it answers only requests addressed to this
// machine by a loopback name (Host), so a web page cannot reach it through DNS rebinding. GET /metrics (the Broker's
// own metrics: broker-metrics.ts) and GET /status (the stack's status page, when one is given) follow the same rule.
//
// Who may send what is Knative's sender authorization, from the same manifests (event-policies.ts): given the
// senders' tokens, the ingress answers 401 to a request without a known bearer token and 403 to an event no
// EventPolicy admits from its sender, before anything is delivered. Bodies are bounded before they are read: a
// Content-Length over the limit is answered 413 without keeping a byte, a chunked body past it too, and a compressed
// one 415. Such an answer (and a 401) comes once the rest of the body has been drained, not buffered, so that every
// client reads it (sendRefusalAfterBody says why an earlier answer is not enough).
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino, type Logger } from 'pino';
import { BoundedIncomingMessage, refuseDeclaredBody, sendRefusalAfterBody, tooLarge, type BodyRefusal } from '../../functions/core/bounded-request.ts';
import { createHttpClient, type HttpClient } from '../../functions/core/http-client.ts';
import { isLoopbackName, reachableOrigin } from '../../functions/core/listen-host.ts';
import type { OutboundAddressPolicy } from '../../functions/core/outbound-address.ts';
import { admittingOf, policiesNaming, policiesNamingTrigger, senderPoliciesOf, type SenderPolicy } from './event-policies.ts';
import { isEmittedType } from '../../functions/core/contract/events.ts';
import { sharedHttpClient } from '../../functions/core/http-client.ts';
import { DeadLetterStoreFullError, isDeadLetterId, openDeadLetterStore, type DeadLetter, type DeadLetterPage, type DeadLetterReason } from '../../functions/core/dead-letter-store.ts';
import { createBrokerMetrics } from './broker-metrics.ts';
import { createDeliveryChaos, type ChaosCounters, type DeliveryChaos } from './delivery-chaos.ts';
import { openDeliveryJournal, type DeliveryJournal, type JournaledEvent } from './delivery-journal.ts';
import { backoffMs, isRetryableStatus, matches, readManifests, routingTableOf, type DeliverySpec, type Route, type RoutingTable } from './triggers.ts';
import {
  IngressError,
  carriesCloudEvent,
  decodeRequest,
  loadEvent,
  requestLimit,
  storeEvent,
  toBinaryRequest,
  withHopTraceContext,
  type BrokerEvent,
  type IngressLimits,
  type StoredEvent,
} from './wire.ts';

/** Largest single event accepted, bytes (data plus attributes): the functions' MAX_EVENT_BYTES default. */
export const DEFAULT_MAX_EVENT_BYTES = 1_048_576;
/** Largest batched request accepted, bytes. */
export const DEFAULT_MAX_BATCH_BYTES = 8 * 1_048_576;
/** Deliveries pending at once before the ingress pushes back with 503. */
export const DEFAULT_MAX_PENDING = 10_000;
/** Delivery attempts in flight at once. */
export const DEFAULT_CONCURRENCY = 64;
/** Per-attempt timeout when a delivery spec sets none, ms. */
export const DEFAULT_ATTEMPT_TIMEOUT_MS = 30_000;
/** How long stop() lets pending deliveries finish before persisting them, ms. */
export const DEFAULT_STOP_GRACE_MS = 5_000;
/** Where dead letters are kept unless told otherwise (relative to the working directory). */
export const DEFAULT_DEAD_LETTER_DIR = '.local/dead-letters';
/** Bytes on disk the local Broker process keeps in dead letters unless told otherwise (BROKER_DEAD_LETTER_MAX_BYTES). */
export const DEFAULT_DEAD_LETTER_MAX_BYTES = 1_073_741_824;
/** The name dead letters and stats use for deliveries to the `forward` sink. */
export const FORWARD_ROUTE = 'forward';

const RESPONSE_EXCERPT_CHARS = 2048;
/** Path prefix of the admin API on the ingress port (GET stats, GET/replay dead letters). */
export const ADMIN_PREFIX = '/admin/';
/** Dead letters per page of GET /admin/dead-letters (sessionctl follows `next`), so a full store is never one answer. */
export const ADMIN_PAGE_ENTRIES = 500;
/** And bytes per page, at most about. */
export const ADMIN_PAGE_BYTES = 8 * 1_048_576;

/** How to start a local Broker. */
export interface LocalBrokerOptions {
  /** Port of the ingress; 0 (default) picks a free one. */
  port?: number;
  /** Interface to listen on. Default 127.0.0.1. */
  host?: string;
  /** Directory of the Broker and Trigger manifests. Default knative/base. */
  triggersDir?: string;
  /** The manifests as YAML text (e.g. rendered by `kubectl kustomize`); wins over triggersDir. */
  manifests?: string;
  /** Name of the Broker in the manifests. Default 'default'. */
  broker?: string;
  /** Local URLs of subscribers by Knative Service name (or Trigger name, or manifest uri). */
  subscribers: Readonly<Record<string, string>>;
  /** Directory of the dead-letter store. Default .local/dead-letters. */
  deadLetterDir?: string;
  /**
   * Bytes on disk the dead-letter store may take; a dead letter past it is not kept but logged whole and counted as
   * dropped, as the deployed receiver refuses it (507). Default: unbounded.
   */
  deadLetterMaxBytes?: number;
  /** File pending deliveries are persisted to on stop. Default <deadLetterDir>/.pending-deliveries.json. */
  pendingFile?: string;
  /**
   * Journal every accepted event before answering 202, so a killed Broker loses none (the next start delivers what
   * it holds unfinished). Default true.
   */
  journal?: boolean;
  /** The journal's file. Default <deadLetterDir>/.delivery-journal.ndjson. */
  journalFile?: string;
  /** fsync the journal before answering, which only losing the machine (not the process) needs. Default false. */
  journalFsync?: boolean;
  /** Duplicate, reorder and delay deliveries as a real Broker may (seeded). Default: none of it. */
  chaos?: DeliveryChaos;
  /** An outside sink that also gets, as binary CloudEvents, every event of a type the system's functions emit. */
  forward?: string;
  /** Where the forward sink may be (its address is checked as it connects); anywhere when absent. */
  forwardAddressPolicy?: OutboundAddressPolicy;
  /**
   * The senders' bearer tokens, each to its OIDC subject (`system:serviceaccount:<ns>:<sa>`): when given, the
   * manifests' EventPolicies decide who may send what (401 without a known token, 403 for an event no policy
   * admits). Without it nothing is authorized: for tests of routing alone.
   */
  identities?: Readonly<Record<string, string>>;
  /** Replaces parts of every delivery spec (tests: short backoff and timeouts). */
  deliveryOverride?: Partial<DeliverySpec>;
  /** Largest event, bytes (data plus attribute names and values); larger ones are answered 413. Default 1 MiB. */
  maxEventBytes?: number;
  /** Largest batched request body, bytes (each event in it is also held to maxEventBytes). Default 8 MiB. */
  maxBatchBytes?: number;
  /** Pending deliveries at most; a request that would exceed it is answered 503. Default 10000. */
  maxPending?: number;
  /** Delivery attempts in flight at most. Default 64. */
  concurrency?: number;
  /** Per-attempt timeout when the delivery spec has none, ms. Default 30000. */
  defaultTimeoutMs?: number;
  /** Grace period of stop(), ms. Default 5000. */
  stopGraceMs?: number;
  /** Accepted events kept in `received` (the most recent). Default 1000. */
  keepReceived?: number;
  /** Add Knative's `knativearrivaltime` extension to each accepted event. Default true. */
  arrivalTime?: boolean;
  /** Called with every accepted event (after the 202 is decided). */
  onEvent?: (event: BrokerEvent) => void;
  /** Serves GET /status and /status/runbook (the stack's status page, status-page.ts), held to the admin API's Host rule. Default: none. */
  statusPage?: (res: ServerResponse, path: string) => Promise<void>;
  /** What GET /healthz reports beyond the broker itself (e.g. the whole stack being ready). Default: ready. */
  ready?: () => boolean | Promise<boolean>;
  logger?: Logger;
}

/** Counters since start. */
export interface BrokerStats extends ChaosCounters {
  /** Events accepted (202). */
  received: number;
  /** Requests refused: 400, 401, 403, 413, 415 or 503. */
  rejected: number;
  /** Deliveries that got a 2xx. */
  delivered: number;
  /** Failed attempts that were retried. */
  retried: number;
  /** Deliveries that gave up and were written to the dead-letter store. */
  deadLettered: number;
  /** Deliveries that gave up where the delivery spec has no dead-letter sink, or the store was full (logged, not kept). */
  dropped: number;
  /** Deliveries not finished yet (queued, in flight or waiting for a retry). */
  pending: number;
  /** Deliveries found unfinished in the journal at start (the last Broker was killed) and sent again. */
  recovered: number;
  /** Attempts in flight now. */
  inFlight: number;
  /** Per Trigger (and 'forward'): deliveries delivered and given up. */
  routes: Record<string, { delivered: number; failed: number }>;
}

/** The outcome of replaying one dead letter. */
export type ReplayResult =
  | { outcome: 'delivered'; id: string; attempts: number }
  | { outcome: 'failed'; id: string; attempts: number; reason: DeadLetterReason }
  | { outcome: 'not-found'; id: string };

/** What stop() did with the deliveries still pending. */
export interface StopReport {
  /** Deliveries written to the pending-deliveries file for the next start. */
  persisted: number;
}

/** A running local Broker. */
export interface LocalBroker {
  /** The ingress: http://127.0.0.1:<port>/ */
  readonly url: string;
  readonly port: number;
  /** The routing table read from the manifests. */
  readonly table: RoutingTable;
  /** The most recent accepted events, oldest first (at most keepReceived): a copy taken when read. */
  readonly received: readonly BrokerEvent[];
  readonly deadLetters: {
    readonly dir: string;
    list(): Promise<DeadLetter[]>;
    /** Bytes on disk the dead letters take, and the cap (Infinity: none). */
    usage(): { usedBytes: number; maxBytes: number };
    get(id: string): Promise<DeadLetter | undefined>;
    /** Re-sends a dead letter to the Trigger it died at (as the manifests define it now); removes it once delivered. */
    replay(id: string): Promise<ReplayResult>;
    remove(id: string): Promise<boolean>;
  };
  stats(): BrokerStats;
  /** Resolves once no delivery is pending (or rejects after timeoutMs). */
  idle(timeoutMs?: number): Promise<void>;
  /** Stops the ingress, lets pending deliveries finish within the grace period, persists the rest. */
  stop(opts?: { graceMs?: number }): Promise<StopReport>;
}

// Where one delivery goes: a Trigger's subscriber, or the forward sink.
interface Target {
  name: string;
  url: string;
  delivery: DeliverySpec;
}

interface Delivery {
  key: string;
  target: Target;
  event: BrokerEvent;
  /** Attempts made so far (carried over a restart). */
  attempts: number;
  /** Set for deliveries loaded from the pending-deliveries file (without a journal: with one they are journaled). */
  loaded: boolean;
  /** Whether the journal holds it: its end is then recorded there. A duplicate made by chaos is not journaled. */
  journaled: boolean;
}

type AttemptResult = { ok: true; status: number } | { ok: false; retryable: boolean; reason: DeadLetterReason; interrupted: boolean };

/** What a subscriber's 200 answer carried as a reply event, as Knative's Broker reads it (see ingestReply). */
type ReplyOutcome = { ok: true } | { ok: false; retryable: boolean; reason: DeadLetterReason };
type Outcome = { kind: 'delivered' } | { kind: 'failed'; reason: DeadLetterReason } | { kind: 'interrupted' };

interface PendingFile {
  version: 1;
  savedAt: string;
  deliveries: Array<{ target: string; url: string; attempts: number; event: StoredEvent }>;
}

function headerRecord(req: IncomingMessage): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(req.headers)) {
    if (v !== undefined) out[k.toLowerCase()] = Array.isArray(v) ? v.join(', ') : v;
  }
  return out;
}

// A bounded number of concurrent attempts. A finishing attempt hands its slot straight to the next waiter, so the
// bound holds exactly; a waiter that gets its turn after stop began gives the slot on without attempting.
function createLimiter(limit: number) {
  let active = 0;
  const waiting: Array<() => void> = [];
  return {
    get active() {
      return active;
    },
    async run<T>(fn: () => Promise<T>, signal: AbortSignal): Promise<T | undefined> {
      if (active >= limit) await new Promise<void>((takeSlot) => waiting.push(takeSlot));
      else active++;
      try {
        return signal.aborted ? undefined : await fn();
      } finally {
        const next = waiting.shift();
        if (next) next();
        else active--;
      }
    },
  };
}

/**
 * Reads a request's body within `limit`, or says why not: a declared length over it or a compressed body before a
 * byte is read, a chunked body once it passes it. Nothing past the limit is ever kept.
 */
async function readBoundedBody(req: BoundedIncomingMessage, limit: number): Promise<Buffer | BodyRefusal> {
  return refuseDeclaredBody(req, limit) ?? (await req.collect(limit)) ?? tooLarge(limit);
}

/** The bearer token of an Authorization header, if it carries one. */
function bearerOf(header: string | undefined): string | undefined {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  return m?.[1];
}

// Only names that address this machine itself reach the admin API (a DNS-rebound name is refused).
function addressedToLoopback(hostHeader: string | undefined): boolean {
  return hostHeader !== undefined && isLoopbackName(hostHeader.trim().replace(/:\d+$/, ''));
}

function send(res: ServerResponse, status: number, body?: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) return;
  if (body === undefined) {
    res.writeHead(status, headers).end();
    return;
  }
  res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(body));
}

/** Starts a local Broker: loads the manifests, re-queues persisted deliveries, and listens. */
export async function startLocalBroker(opts: LocalBrokerOptions): Promise<LocalBroker> {
  const log = (opts.logger ?? pino({ level: 'silent' })).child({ component: 'local-broker' });
  // Read once: the Triggers and the EventPolicies come from the same documents.
  const docs = readManifests({
    ...(opts.manifests !== undefined ? { manifests: opts.manifests } : {}),
    ...(opts.triggersDir !== undefined ? { manifestsDir: opts.triggersDir } : {}),
  });
  const table = routingTableOf(docs, {
    subscribers: opts.subscribers,
    ...(opts.broker !== undefined ? { broker: opts.broker } : {}),
    ...(opts.deliveryOverride !== undefined ? { deliveryOverride: opts.deliveryOverride } : {}),
  });
  for (const route of table.routes) {
    if (route.url === undefined) log.warn({ trigger: route.name, reason: route.unresolved }, 'trigger not ready: its subscriber has no local URL; it gets no events');
  }
  const deadLetterDir = resolve(opts.deadLetterDir ?? DEFAULT_DEAD_LETTER_DIR);
  const store = await openDeadLetterStore(deadLetterDir, opts.deadLetterMaxBytes === undefined ? {} : { maxBytes: opts.deadLetterMaxBytes });
  const pendingFile = resolve(opts.pendingFile ?? join(deadLetterDir, '.pending-deliveries.json'));
  const limits: IngressLimits = { maxEventBytes: opts.maxEventBytes ?? DEFAULT_MAX_EVENT_BYTES, maxBatchBytes: opts.maxBatchBytes ?? DEFAULT_MAX_BATCH_BYTES };
  const maxPending = opts.maxPending ?? DEFAULT_MAX_PENDING;
  const defaultTimeoutMs = opts.defaultTimeoutMs ?? DEFAULT_ATTEMPT_TIMEOUT_MS;
  const keepReceived = opts.keepReceived ?? 1000;
  const arrivalTime = opts.arrivalTime ?? true;
  const limiter = createLimiter(opts.concurrency ?? DEFAULT_CONCURRENCY);
  const stopping = new AbortController();
  const chaos = createDeliveryChaos(opts.chaos, stopping.signal);
  if (chaos.active) log.info({ chaos: { ...opts.chaos, seed: chaos.seed } }, 'deliveries are duplicated, reordered or delayed as asked');
  const journal: DeliveryJournal | undefined = (opts.journal ?? true)
    ? await openDeliveryJournal(resolve(opts.journalFile ?? join(deadLetterDir, '.delivery-journal.ndjson')), { fsync: opts.journalFsync ?? false, logger: log })
    : undefined;
  const forwardTarget: Target | undefined = opts.forward ? { name: FORWARD_ROUTE, url: opts.forward, delivery: table.delivery } : undefined;
  // The forward sink is an outside address someone typed: it gets a client of its own, held to the address policy.
  const forwardClient: HttpClient | undefined = opts.forward && opts.forwardAddressPolicy ? createHttpClient({ addressPolicy: opts.forwardAddressPolicy }) : undefined;
  const readyRoutes = table.routes.filter((r): r is Route & { url: string } => r.url !== undefined);
  // Each known token's sender, with the policies naming it worked out once: an event is then checked against those only.
  const policies: readonly SenderPolicy[] = opts.identities === undefined ? [] : senderPoliciesOf(docs, table.broker);
  const identities = opts.identities === undefined
    ? undefined
    : new Map(Object.entries(opts.identities).map(([token, subject]) => [token, { subject, policies: policiesNaming(policies, subject) }]));
  // A reply is sent to the ingress under its Trigger's own OIDC identity (knative/eventing#7481), which an
  // EventPolicy names by a `ref` to the Trigger: the policies naming each Trigger, worked out once.
  const replyPolicies = new Map(table.routes.map((r) => [r.name, policiesNamingTrigger(policies, r.name)]));
  if (identities === undefined) log.warn('sender authorization is off: any request may send any event');
  else if (policies.length === 0) log.warn('no EventPolicy applies to this Broker: every event is refused (deny-all)');

  // The most recent accepted events, as a ring: trimming an array from its front on every event moved all of it.
  const recent: BrokerEvent[] = [];
  let oldest = 0;
  const remember = (ev: BrokerEvent): void => {
    if (recent.length < keepReceived) recent.push(ev);
    else if (keepReceived > 0) {
      recent[oldest] = ev;
      oldest = (oldest + 1) % keepReceived;
    }
  };
  const pending = new Map<string, Delivery>();
  const running = new Set<Promise<void>>();
  const idleWaiters = new Set<() => void>();
  let loadedLeft = 0;
  let closed = false;
  const counters = { received: 0, rejected: 0, delivered: 0, retried: 0, deadLettered: 0, dropped: 0, recovered: 0 };
  const metrics = createBrokerMetrics();
  const perRoute: Record<string, { delivered: number; failed: number }> = {};
  const countRoute = (name: string, field: 'delivered' | 'failed') => {
    perRoute[name] ??= { delivered: 0, failed: 0 };
    perRoute[name][field]++;
  };

  async function attempt(d: Delivery): Promise<AttemptResult> {
    const { headers, body } = toBinaryRequest(d.event);
    const timeoutMs = d.target.delivery.timeoutMs ?? defaultTimeoutMs;
    const signal = stopping.signal;
    // A Trigger's subscriber may answer with a reply event (Knative's data-plane contract, "Derived (Reply) Events":
    // a Broker MUST say it takes them with `Prefer: reply`); the forward sink is not a subscriber.
    const replies = d.target.name !== FORWARD_ROUTE;
    try {
      // The shared keep-alive client never follows a redirect (fetch's redirect: 'manual'): a 3xx is a failed delivery.
      const client = d.target.name === FORWARD_ROUTE && forwardClient ? forwardClient : sharedHttpClient;
      const res = await client.request(d.target.url, { method: 'POST', headers: replies ? { ...headers, prefer: 'reply' } : headers, ...(body === undefined ? {} : { body }), signal, timeoutMs });
      if (replies && res.status === 200 && carriesCloudEvent(res.headers.record)) {
        // Bounded as the ingress bounds a request: a reply larger than one event may be is not read, nor ingested.
        const limit = requestLimit(res.headers.record['content-type'], limits);
        const declared = Number(res.headers.record['content-length'] ?? 0);
        const bytes = declared > limit ? undefined : await res.bytes();
        if (bytes === undefined || bytes.length > limit) {
          // Drained, not kept, so the keep-alive connection can be reused.
          if (bytes === undefined) void res.bytes().catch(() => undefined);
          return { ok: false, retryable: false, interrupted: false, reason: { status: 502, message: `${d.target.url} replied: a reply over ${limit} bytes` } };
        }
        const reply = await ingestReply(d, res.headers.record, bytes);
        return reply.ok ? { ok: true, status: res.status } : { ok: false, retryable: reply.retryable, interrupted: false, reason: reply.reason };
      }
      const text = (await res.text()).slice(0, RESPONSE_EXCERPT_CHARS);
      if (res.status >= 200 && res.status < 300) return { ok: true, status: res.status };
      return {
        ok: false,
        retryable: isRetryableStatus(res.status),
        interrupted: false,
        reason: { status: res.status, body: text, message: `${d.target.url} answered HTTP ${res.status}` },
      };
    } catch (err) {
      const interrupted = signal.aborted;
      const timedOut = !interrupted && err instanceof DOMException && err.name === 'TimeoutError';
      const error = timedOut ? `no answer within ${timeoutMs} ms` : `${(err as Error).name}: ${(err as Error).message}${(err as { cause?: Error }).cause ? ` (${(err as { cause: Error }).cause.message})` : ''}`;
      return { ok: false, retryable: true, interrupted, reason: { error, message: `${d.target.url} not reached: ${error}` } };
    }
  }

  // Runs one delivery to its end: delivered, given up, or interrupted by stop (then it stays pending).
  async function deliver(d: Delivery): Promise<Outcome> {
    const spec = d.target.delivery;
    for (;;) {
      if (d.attempts > 0) {
        try {
          // d.attempts is the retry about to be made (1-based); the schedule is the in-memory channel's dispatcher's,
          // which is what `npm start` and the dev overlay stand for (triggers.ts, DataPlane).
          await sleep(backoffMs(spec, d.attempts, 'eventing'), undefined, { signal: stopping.signal });
        } catch {
          return { kind: 'interrupted' };
        }
      }
      const result = await limiter.run(() => attempt(d), stopping.signal);
      if (result === undefined) return { kind: 'interrupted' };
      if (result.ok) {
        d.attempts++;
        return { kind: 'delivered' };
      }
      if (result.interrupted) return { kind: 'interrupted' };
      d.attempts++;
      if (!result.retryable || d.attempts > spec.retry) return { kind: 'failed', reason: result.reason };
      counters.retried++;
      log.debug({ trigger: d.target.name, eventId: d.event.attributes.id, attempt: d.attempts, reason: result.reason.message }, 'delivery failed; retrying');
    }
  }

  /**
   * Ingests a subscriber's reply as Knative's Broker does: a new event, sent to the ingress by the Broker under the
   * Trigger's OIDC identity (knative/eventing#7480, #7481: the filter sends Reply and DLS requests as the Trigger) and
   * so admitted only by an EventPolicy that names the Trigger (`from: - ref: {kind: Trigger, name: …}`), with that
   * policy's filters; then routed, journaled and answered like any accepted event. A reply not admitted, or not a
   * CloudEvent, fails the delivery for good (Knative answers 403, and 502 for a body that is not an event: the
   * input goes to the dead-letter sink); one that cannot be stored now fails it for a retry, and the subscriber,
   * handed the input again, answers the same reply (a reply is sent again with its answer; the functions' replies
   * are idempotent, EmitOptions in functions/core/function-host.ts).
   */
  async function ingestReply(d: Delivery, headers: Readonly<Record<string, string>>, body: Buffer): Promise<ReplyOutcome> {
    const fail = (retryable: boolean, status: number, message: string): ReplyOutcome => ({ ok: false, retryable, reason: { status, message: `${d.target.url} replied: ${message}` } });
    let events: BrokerEvent[];
    try {
      events = decodeRequest(headers, body, limits);
    } catch (err) {
      if (!(err instanceof IngressError)) throw err;
      return fail(false, 502, `a reply that is not a CloudEvent (${err.message})`);
    }
    if (events.length !== 1) return fail(false, 502, 'a batch, where a reply is one event');
    const ev = events[0]!;
    if (identities !== undefined && admittingOf(replyPolicies.get(d.target.name) ?? [], ev.attributes) === undefined) {
      counters.rejected++;
      log.warn({ trigger: d.target.name, eventType: ev.attributes.type, source: ev.attributes.source, eventId: ev.attributes.id }, 'refused a reply its Trigger may not send');
      return fail(false, 403, `Trigger ${d.target.name} may not send this event (${String(ev.attributes.type)} from ${String(ev.attributes.source)})`);
    }
    if (closed) return fail(true, 503, 'the broker is stopping');
    const withTrace = withHopTraceContext(ev, headers);
    const traced = arrivalTime && withTrace.attributes.knativearrivaltime === undefined
      ? { ...withTrace, attributes: { ...withTrace.attributes, knativearrivaltime: new Date().toISOString() } }
      : withTrace;
    const deliveries = deliveriesOf(traced);
    if (pending.size + deliveries.length > maxPending) return fail(true, 503, `${pending.size} deliveries pending`);
    if (journal) {
      try {
        await journal.accept([journalEntry(traced, deliveries)]);
      } catch (err) {
        log.error({ err, trigger: d.target.name }, 'a reply could not be journaled; the delivery is retried');
        return fail(true, 503, 'the broker cannot store events now');
      }
      if (closed) return fail(true, 503, 'the broker is stopping');
    }
    accept(traced, deliveries);
    return { ok: true };
  }

  function notifyIdle(): void {
    if (pending.size > 0) return;
    for (const wake of idleWaiters) wake();
    idleWaiters.clear();
  }

  async function settle(d: Delivery, outcome: Outcome): Promise<void> {
    if (outcome.kind === 'interrupted') return;
    const ids = { trigger: d.target.name, eventId: d.event.attributes.id, eventType: d.event.attributes.type, attempts: d.attempts };
    if (outcome.kind === 'delivered') {
      counters.delivered++;
      countRoute(d.target.name, 'delivered');
      log.debug(ids, 'delivered');
    } else {
      countRoute(d.target.name, 'failed');
      if (d.target.delivery.deadLetter) {
        try {
          const { entry, duplicate } = await store.add({ trigger: d.target.name, destination: d.target.url, attempts: d.attempts, reason: outcome.reason, event: storeEvent(d.event) });
          if (!duplicate) {
            counters.deadLettered++;
            metrics.deadLetter(d.event.attributes.type, outcome.reason);
          }
          log.warn({ ...ids, deadLetter: entry.id, duplicate, reason: outcome.reason }, 'delivery gave up; event kept in the dead-letter store');
        } catch (err) {
          // The event must not vanish silently: the whole event goes to the log (a full store keeps what it has).
          counters.dropped++;
          const full = err instanceof DeadLetterStoreFullError;
          log.error({ ...ids, err, reason: outcome.reason, event: storeEvent(d.event) }, full ? 'delivery gave up and the dead-letter store is full' : 'delivery gave up and the dead-letter store could not be written');
        }
      } else {
        counters.dropped++;
        log.warn({ ...ids, reason: outcome.reason }, 'delivery gave up; the delivery spec has no dead-letter sink, so the event is dropped');
      }
    }
    if (d.journaled) journal?.done(d.key);
    pending.delete(d.key);
    if (d.loaded && --loadedLeft === 0 && !closed) await rm(pendingFile, { force: true });
  }

  function launch(d: Delivery): void {
    pending.set(d.key, d);
    const run = (chaos.active ? chaos.hold(d.target.name).then(() => deliver(d)) : deliver(d))
      .then((outcome) => settle(d, outcome))
      .catch((err: unknown) => log.error({ err, trigger: d.target.name, eventId: d.event.attributes.id }, 'delivery crashed'))
      .finally(() => {
        running.delete(run);
        notifyIdle();
      });
    running.add(run);
  }

  function targetsOf(ev: BrokerEvent): Target[] {
    const out: Target[] = readyRoutes.filter((r) => matches(r, ev.attributes)).map((r) => ({ name: r.name, url: r.url, delivery: r.delivery }));
    if (forwardTarget && isEmittedType(ev.attributes.type)) out.push(forwardTarget);
    return out;
  }

  function targetByName(name: string): Target | undefined {
    if (name === FORWARD_ROUTE) return forwardTarget;
    const route = readyRoutes.find((r) => r.name === name);
    return route ? { name: route.name, url: route.url, delivery: route.delivery } : undefined;
  }

  // An event's deliveries, one per matching Trigger (and the forward sink), before anything is launched or journaled.
  function deliveriesOf(ev: BrokerEvent): Delivery[] {
    return targetsOf(ev).map((target) => ({ key: randomUUID(), target, event: ev, attempts: 0, loaded: false, journaled: journal !== undefined }));
  }

  function journalEntry(event: BrokerEvent, deliveries: readonly Delivery[]): JournaledEvent {
    return { event: storeEvent(event), deliveries: deliveries.map((d) => ({ key: d.key, target: d.target.name, url: d.target.url })) };
  }

  function accept(ev: BrokerEvent, deliveries: readonly Delivery[]): void {
    counters.received++;
    remember(ev);
    if (deliveries.length === 0) log.debug({ eventId: ev.attributes.id, eventType: ev.attributes.type }, 'no trigger matches; event accepted and not delivered');
    for (const d of deliveries) {
      launch(d);
      // The twin is launched at once: it may race the original, as a redelivery by a real Broker can.
      if (chaos.duplicates()) launch({ ...d, key: randomUUID(), attempts: 0, loaded: false, journaled: false });
    }
    try {
      opts.onEvent?.(ev);
    } catch (err) {
      log.warn({ err }, 'onEvent hook threw');
    }
  }

  async function ingress(req: BoundedIncomingMessage, res: ServerResponse): Promise<void> {
    const [path, search] = (req.url ?? '/').split('?');
    if (req.method === 'GET' && (path === '/healthz' || path === '/readyz')) {
      const ok = !closed && (opts.ready ? await opts.ready() : true);
      send(res, ok ? 200 : 503, { status: ok ? 'ok' : 'unavailable' });
      return;
    }
    const page = req.method === 'GET' && (path === '/metrics' || ((path === '/status' || path === '/status/runbook') && opts.statusPage !== undefined));
    if (path?.startsWith(ADMIN_PREFIX) || page) {
      req.resume();
      if (!addressedToLoopback(req.headers.host)) {
        send(res, 403, { error: 'the admin API answers only requests addressed to localhost' });
        return;
      }
      if (path === '/metrics') metrics.serve(req, res);
      else if (page) await opts.statusPage!(res, path);
      else await admin(req.method ?? 'GET', path.slice(ADMIN_PREFIX.length), new URLSearchParams(search ?? ''), res);
      return;
    }
    if (req.method !== 'POST') {
      req.resume();
      send(res, 405, { error: 'CloudEvents are POSTed' }, { allow: 'POST' });
      return;
    }
    const headers = headerRecord(req);
    // Who is sending comes first, as in Knative: an unknown sender's body is never read.
    const sender = identities === undefined ? undefined : identities.get(bearerOf(headers.authorization) ?? '');
    if (identities !== undefined && sender === undefined) {
      counters.rejected++;
      log.info({ authorization: headers.authorization === undefined ? 'none' : 'unknown token' }, 'refused a request without a known sender token');
      await sendRefusalAfterBody(req, res, { status: 401, error: 'UNAUTHENTICATED', reason: 'a bearer token of a known sender is required' });
      return;
    }
    let events: BrokerEvent[];
    try {
      const body = await readBoundedBody(req, requestLimit(headers['content-type'], limits));
      if (!Buffer.isBuffer(body)) {
        counters.rejected++;
        log.info({ status: body.status, reason: body.reason }, 'refused a request');
        await sendRefusalAfterBody(req, res, body);
        return;
      }
      events = decodeRequest(headers, body, limits);
    } catch (err) {
      counters.rejected++;
      if (err instanceof IngressError) {
        log.info({ status: err.status, reason: err.message }, 'refused a request');
        send(res, err.status, { error: err.message });
        return;
      }
      throw err;
    }
    if (closed) {
      counters.rejected++;
      send(res, 503, { error: 'the broker is stopping' }, { 'retry-after': '1' });
      return;
    }
    if (sender !== undefined) {
      const { subject } = sender;
      const refused = events.findIndex((ev) => admittingOf(sender.policies, ev.attributes) === undefined);
      if (refused !== -1) {
        counters.rejected++;
        const ev = events[refused]!;
        log.warn({ subject, eventType: ev.attributes.type, source: ev.attributes.source, eventId: ev.attributes.id }, 'refused an event its sender may not send');
        send(res, 403, { error: `${subject} may not send this event (${String(ev.attributes.type)} from ${String(ev.attributes.source)})${events.length > 1 ? `: batch[${refused}]` : ''}` });
        return;
      }
    }
    const now = new Date().toISOString();
    const traced = events.map((ev) => {
      const withTrace = withHopTraceContext(ev, headers);
      return arrivalTime && withTrace.attributes.knativearrivaltime === undefined ? { ...withTrace, attributes: { ...withTrace.attributes, knativearrivaltime: now } } : withTrace;
    });
    const planned = traced.map((ev) => ({ ev, deliveries: deliveriesOf(ev) }));
    const needed = planned.reduce((n, p) => n + p.deliveries.length, 0);
    if (pending.size + needed > maxPending) {
      counters.rejected++;
      log.warn({ pending: pending.size, maxPending }, 'too many pending deliveries; asking the sender to retry');
      send(res, 503, { error: `${pending.size} deliveries pending; try again` }, { 'retry-after': '1' });
      return;
    }
    if (journal) {
      // Durable before the answer: a 202 is a promise that the event is delivered even if this process is killed now.
      try {
        await journal.accept(planned.map((p) => journalEntry(p.ev, p.deliveries)));
      } catch (err) {
        counters.rejected++;
        log.error({ err }, 'accepted events could not be journaled; asking the sender to retry');
        send(res, 503, { error: 'the broker cannot store events now; try again' }, { 'retry-after': '1' });
        return;
      }
      // Stop began while the journal was written: the deliveries would miss the pending-deliveries file.
      if (closed) {
        counters.rejected++;
        send(res, 503, { error: 'the broker is stopping' }, { 'retry-after': '1' });
        return;
      }
    }
    for (const p of planned) accept(p.ev, p.deliveries);
    send(res, 202);
  }

  // A delivery found at start for a Trigger that is gone: kept where a person will look, or, when the store is full,
  // logged whole and counted as dropped (a full store must not stop the Broker from starting).
  async function keepOrLog(entry: Parameters<typeof store.add>[0]): Promise<void> {
    try {
      if (!(await store.add(entry)).duplicate) {
        counters.deadLettered++;
        metrics.deadLetter(entry.event.attributes.type, entry.reason);
      }
    } catch (err) {
      if (!(err instanceof DeadLetterStoreFullError)) throw err;
      counters.dropped++;
      log.error({ err, trigger: entry.trigger, event: entry.event }, 'a delivery for a trigger that is gone could not be kept: the dead-letter store is full');
    }
  }

  // Deliveries persisted by the previous broker on this store go out again first.
  async function loadPending(): Promise<void> {
    let text: string;
    try {
      text = await readFile(pendingFile, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    const file = JSON.parse(text) as PendingFile;
    const loaded: Delivery[] = [];
    for (const entry of file.deliveries) {
      const event = loadEvent(entry.event);
      const target = targetByName(entry.target);
      if (!target) {
        // The Trigger is gone from the manifests: keep the event where a person will look.
        await keepOrLog({
          trigger: entry.target,
          destination: entry.url,
          attempts: entry.attempts,
          reason: { message: `persisted delivery for trigger ${entry.target}, which no longer exists or has no local URL` },
          event: entry.event,
        });
        continue;
      }
      loaded.push({ key: randomUUID(), target, event, attempts: entry.attempts, loaded: journal === undefined, journaled: journal !== undefined });
    }
    if (journal) {
      // Journaled first, then the file goes: a kill from here on finds them in the journal.
      await journal.accept(loaded.map((d) => journalEntry(d.event, [d])));
      await rm(pendingFile, { force: true });
    } else {
      loadedLeft = loaded.length;
    }
    for (const d of loaded) launch(d);
    log.info({ deliveries: file.deliveries.length, file: pendingFile }, 're-queued deliveries persisted at the last stop');
    if (!journal && loadedLeft === 0) await rm(pendingFile, { force: true });
  }

  // Deliveries the journal holds unfinished: the last Broker on this store was killed before it could stop.
  async function recoverJournaled(): Promise<void> {
    if (!journal || journal.unfinished.length === 0) return;
    for (const entry of journal.unfinished) {
      const event = loadEvent(entry.event);
      for (const jd of entry.deliveries) {
        const target = targetByName(jd.target);
        if (!target) {
          await keepOrLog({
            trigger: jd.target,
            destination: jd.url,
            attempts: 0,
            reason: { message: `journaled delivery for trigger ${jd.target}, which no longer exists or has no local URL` },
            event: entry.event,
          });
          journal.done(jd.key);
          continue;
        }
        counters.recovered++;
        launch({ key: jd.key, target, event, attempts: 0, loaded: false, journaled: true });
      }
    }
    log.warn({ deliveries: counters.recovered, tornLines: journal.tornLines }, 'the last broker on this store did not stop cleanly; delivering again what it had not finished');
  }

  async function persistPending(): Promise<number> {
    const deliveries = [...pending.values()].map((d) => ({ target: d.target.name, url: d.target.url, attempts: d.attempts, event: storeEvent(d.event) }));
    if (deliveries.length === 0) {
      await rm(pendingFile, { force: true });
      return 0;
    }
    const file: PendingFile = { version: 1, savedAt: new Date().toISOString(), deliveries };
    await mkdir(dirname(pendingFile), { recursive: true });
    const tmp = `${pendingFile}.${randomUUID().slice(0, 8)}.tmp`;
    await writeFile(tmp, `${JSON.stringify(file)}\n`, { mode: 0o600 });
    await rename(tmp, pendingFile);
    return deliveries.length;
  }

  function statsNow(): BrokerStats {
    return { ...counters, ...chaos.counters, pending: pending.size, inFlight: limiter.active, routes: structuredClone(perRoute) };
  }

  async function replay(id: string): Promise<ReplayResult> {
    const entry = await store.get(id);
    if (!entry) return { outcome: 'not-found', id };
    const target = targetByName(entry.trigger) ?? { name: entry.trigger, url: entry.destination, delivery: table.delivery };
    const d: Delivery = { key: randomUUID(), target, event: loadEvent(entry.event), attempts: 0, loaded: false, journaled: false };
    const outcome = await deliver(d);
    if (outcome.kind === 'delivered') {
      countRoute(target.name, 'delivered');
      await store.remove(id);
      log.info({ deadLetter: id, trigger: target.name }, 'dead letter replayed and delivered');
      return { outcome: 'delivered', id, attempts: d.attempts };
    }
    const reason: DeadLetterReason = outcome.kind === 'failed' ? outcome.reason : { message: 'replay interrupted: the broker is stopping' };
    await store.put({ ...entry, attempts: entry.attempts + d.attempts, replays: entry.replays + 1, reason });
    return { outcome: 'failed', id, attempts: d.attempts, reason };
  }

  // The admin API sessionctl uses (JSON): dead letters to list (in pages), read, delete and replay, and the counters.
  // The deployed dead-letter receiver serves the same routes but replay (functions/dead-letters/handle.ts).
  async function admin(method: string, route: string, query: URLSearchParams, res: ServerResponse): Promise<void> {
    const parts = route.split('/').filter((p) => p !== '').map((p) => decodeURIComponent(p));
    const [collection, id, action] = parts;
    const known = (entryId: string) => isDeadLetterId(entryId);
    if (method === 'GET' && collection === 'stats' && parts.length === 1) {
      send(res, 200, { ...statsNow(), deadLetters: store.count(), deadLetterBytes: store.usedBytes(), deadLetterMaxBytes: Number.isFinite(store.maxBytes) ? store.maxBytes : null });
    } else if (method === 'GET' && collection === 'dead-letters' && parts.length === 1) {
      const after = query.get('after') ?? undefined;
      const page: DeadLetterPage = await store.page({ ...(after ? { after } : {}), limit: ADMIN_PAGE_ENTRIES, maxBytes: ADMIN_PAGE_BYTES });
      send(res, 200, page);
    } else if (method === 'GET' && collection === 'dead-letters' && id !== undefined && parts.length === 2) {
      const entry = known(id) ? await store.get(id) : undefined;
      if (entry) send(res, 200, entry);
      else send(res, 404, { error: `no dead letter ${JSON.stringify(id)}` });
    } else if (method === 'DELETE' && collection === 'dead-letters' && id !== undefined && parts.length === 2) {
      if (known(id) && (await store.remove(id))) send(res, 200, { deleted: id });
      else send(res, 404, { error: `no dead letter ${JSON.stringify(id)}` });
    } else if (method === 'POST' && collection === 'dead-letters' && id !== undefined && action === 'replay' && parts.length === 3) {
      const result: ReplayResult = known(id) ? await replay(id) : { outcome: 'not-found', id };
      send(res, result.outcome === 'not-found' ? 404 : 200, result);
    } else {
      send(res, 404, { error: `no admin resource ${method} ${ADMIN_PREFIX}${route}` });
    }
  }

  const server = createServer<typeof BoundedIncomingMessage>({ IncomingMessage: BoundedIncomingMessage }, (req, res) => {
    ingress(req, res).catch((err: unknown) => {
      log.error({ err }, 'ingress failed');
      send(res, 500, { error: 'internal error' });
    });
  });
  try {
    await new Promise<void>((resolveListen, reject) => {
      server.once('error', reject);
      server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => resolveListen());
    });
  } catch (err) {
    await journal?.close();
    throw err;
  }
  const { port } = server.address() as AddressInfo;
  const url = `${reachableOrigin(opts.host ?? '127.0.0.1', port)}/`;
  await recoverJournaled();
  await loadPending();
  log.info({ url, triggers: readyRoutes.length, deadLetterDir, forward: opts.forward }, 'local broker listening');

  let stopped: Promise<StopReport> | undefined;
  async function stop(graceMs: number): Promise<StopReport> {
    closed = true;
    const serverClosed = new Promise<void>((resolveClose) => server.close(() => resolveClose()));
    server.closeIdleConnections();
    if (pending.size > 0) {
      const drained = new Promise<void>((wake) => idleWaiters.add(wake));
      const timer = sleep(graceMs, undefined, { ref: false });
      await Promise.race([drained, timer]);
    }
    stopping.abort();
    await Promise.allSettled([...running]);
    const persisted = await persistPending();
    if (persisted > 0) log.info({ persisted, file: pendingFile }, 'pending deliveries persisted for the next start');
    // Everything unfinished is in the pending-deliveries file now; a journal kept too would deliver it twice.
    await journal?.clearAndClose();
    server.closeAllConnections();
    await serverClosed;
    forwardClient?.close();
    await metrics.shutdown();
    return { persisted };
  }

  return {
    url,
    port,
    table,
    get received(): BrokerEvent[] {
      return [...recent.slice(oldest), ...recent.slice(0, oldest)];
    },
    deadLetters: {
      dir: deadLetterDir,
      list: () => store.list(),
      usage: () => ({ usedBytes: store.usedBytes(), maxBytes: store.maxBytes }),
      get: (id) => store.get(id),
      replay,
      remove: (id) => store.remove(id),
    },
    stats: statsNow,
    idle(timeoutMs = 30_000) {
      if (pending.size === 0) return Promise.resolve();
      return new Promise<void>((resolveIdle, reject) => {
        const timer = setTimeout(() => {
          idleWaiters.delete(wake);
          reject(new Error(`local broker: ${pending.size} deliveries still pending after ${timeoutMs} ms`));
        }, timeoutMs);
        const wake = () => {
          clearTimeout(timer);
          resolveIdle();
        };
        idleWaiters.add(wake);
      });
    },
    stop(stopOpts) {
      stopped ??= stop(stopOpts?.graceMs ?? opts.stopGraceMs ?? DEFAULT_STOP_GRACE_MS);
      return stopped;
    },
  };
}
