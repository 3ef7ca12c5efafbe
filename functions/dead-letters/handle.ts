// The dead-letter receiver's handler: what the Broker's data plane sends to a deadLetterSink, kept whole on disk, and
// the admin API sessionctl reads them through. It reads no environment and no globals: the store, the logger and the
// limits come in (index.ts wires them from the settings), so the tests serve it on a port as it is.
//
// What Knative sends. After the last retry the dispatcher POSTs the original event to the sink with three extensions
// added (knative/eventing pkg/kncloudevents/event_dispatcher.go, dispatchExecutionInfoTransformers, and
// pkg/channel/attributes/knative_error.go): `knativeerrordest` (the URL that failed: the Trigger's subscriber; the
// dispatcher unwraps the broker filter's answer to name it), `knativeerrorcode` (the last HTTP status; 500 when no
// answer came) and `knativeerrordata` (the answer's body, base64, cut at 1024 characters). eventing-kafka-broker's
// dispatcher adds the same three, the body base64 as well (data-plane/dispatcher/src/test/java/dev/knative/eventing/
// kafka/broker/dispatcher/impl/RecordDispatcherTest.java, failedEventsShouldBeEnhancedWithErrorExtensionsPriorToSendingToDls).
// Binary or structured mode: both are read.
//
// What it answers, and what the sender then does:
//  - 201 kept, 200 already kept (the same destination, source and id: a redelivered dead letter is stored once);
//  - 400 not a CloudEvent (a reason says why), 413 over MAX_EVENT_BYTES, 415 compressed: nothing kept;
//  - 507 the store is at its byte cap: nothing kept, nothing evicted (an operator may be replaying what is kept), the
//    refusal counted (GET /admin/stats, `refusedFull`) and logged with the event's identity;
//  - 503 the disk failed otherwise: nothing kept.
//  Knative's dispatcher retries the dead-letter sink with the Trigger's own retry settings and, when that fails too,
//  logs the failure and gives the event up (event_dispatcher.go, send: "unable to complete request to either ...");
//  eventing-kafka-broker records failedToSendToDeadLetterSink (RecordDispatcherImpl.java, onDeadLetterSinkFailure),
//  whose offset manager commits the record as done (OffsetManager.java, failedToSendToDeadLetterSink). So past the cap an outage's later dead letters are lost, logged by the data plane and
//  counted here: the cap is what bounds the disk, and docs/deploy.md says how to watch it.
//
// The admin API (JSON), the local Broker's (tools/local-broker/broker.ts) but for replay: GET /admin/stats,
// GET /admin/dead-letters (paged: ?after=<next>), GET and DELETE /admin/dead-letters/:id. POST .../replay answers
// 501: the Broker admits an event only from a sender its EventPolicies let send that type, so a replay is sent as
// that sender (docs/deploy.md, "Dead letters"), not by this receiver. The admin API answers only requests addressed
// to a loopback name (a kubectl port-forward, or inside the pod); the mesh admits no GET at all
// (istio/base/dead-letters.yaml).
import type { ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { refuseDeclaredBody, sendRefusal, tooLarge, type BoundedIncomingMessage } from '../core/bounded-request.ts';
import { IngressError, decodeRequest, storeEvent, type BrokerEvent } from '../core/cloudevent-wire.ts';
import { shortType } from '../core/metrics.ts';
import { DeadLetterStoreFullError, isDeadLetterId, type DeadLetterReason, type DeadLetterStore, type NewDeadLetter } from '../core/dead-letter-store.ts';
import { isLoopbackName } from '../core/listen-host.ts';

/** Path prefix of the admin API. */
export const ADMIN_PREFIX = '/admin/';
/** Dead letters per page of GET /admin/dead-letters, and about how many bytes. */
export const ADMIN_PAGE_ENTRIES = 500;
export const ADMIN_PAGE_BYTES = 8 * 1_048_576;

/** The extensions Knative adds to a dead letter (knative/eventing pkg/channel/attributes/knative_error.go). */
export const KNATIVE_ERROR_DEST = 'knativeerrordest';
export const KNATIVE_ERROR_CODE = 'knativeerrorcode';
export const KNATIVE_ERROR_DATA = 'knativeerrordata';

/** What the receiver needs: its store, its logger and the largest event it takes. */
export interface DeadLetterReceiverDeps {
  store: DeadLetterStore;
  logger: Logger;
  maxEventBytes: number;
  /** sessionreaper_dead_letters_total (functions/core/metrics.ts): each dead letter kept, by type and reason class. */
  deadLetters?: { add(n: number, type?: string, reason?: string): void };
}

/** The class of why a delivery failed, from the last status Knative recorded (knativeerrorcode). */
export function reasonClass(status: number | undefined): string {
  if (status === undefined) return 'other';
  return status >= 500 ? 'http_5xx' : status >= 400 ? 'http_4xx' : 'other';
}

/** Counters since start (GET /admin/stats adds the store's entries, bytes and cap). */
export interface ReceiverCounters {
  /** Dead letters kept (201). */
  stored: number;
  /** Dead letters already kept, answered 200. */
  duplicates: number;
  /** Dead letters refused at the byte cap (507): lost unless the sender's retries find room. */
  refusedFull: number;
  /** Requests refused as malformed, too large or compressed (400, 413, 415). */
  malformed: number;
  /** Dead letters the disk failed to keep (503). */
  failed: number;
}

/** The receiver: a request handler and its counters. */
export interface DeadLetterReceiver {
  handle(req: BoundedIncomingMessage, res: ServerResponse): Promise<void>;
  counters(): ReceiverCounters;
}

function send(res: ServerResponse, status: number, body?: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) return;
  if (body === undefined) res.writeHead(status, headers).end();
  else res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(body));
}

function headerRecord(req: BoundedIncomingMessage): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(req.headers)) if (v !== undefined) out[k.toLowerCase()] = Array.isArray(v) ? v.join(', ') : v;
  return out;
}

// The Trigger a destination names: the broker filter's path is /triggers/<namespace>/<name>/<uid> (knative/eventing
// pkg/reconciler/sugar/trigger/path); a subscriber's URL names none, so its host stands in.
function triggerOf(destination: URL | undefined): string {
  if (!destination) return '-';
  const m = /^\/triggers\/[^/]+\/([^/]+)\//.exec(destination.pathname);
  return m?.[1] ?? destination.host;
}

function parseUrl(text: string): URL | undefined {
  try {
    return new URL(text);
  } catch {
    return undefined;
  }
}

/** Why the event died, from Knative's error extensions (each may be missing: it is said so, never guessed). */
export function reasonOf(ev: BrokerEvent): { destination: string; trigger: string; reason: DeadLetterReason } {
  const attrs = ev.attributes;
  const dest = typeof attrs[KNATIVE_ERROR_DEST] === 'string' ? attrs[KNATIVE_ERROR_DEST] : undefined;
  const codeText = attrs[KNATIVE_ERROR_CODE];
  const code = codeText !== undefined && /^\d{3}$/.test(String(codeText)) ? Number(codeText) : undefined;
  const data = attrs[KNATIVE_ERROR_DATA];
  // base64 of the answer, possibly cut mid-quantum at 1024 characters: Buffer decodes what is whole.
  const body = typeof data === 'string' && data !== '' ? Buffer.from(data, 'base64').toString('utf8') : undefined;
  const url = dest === undefined ? undefined : parseUrl(dest);
  const message =
    dest === undefined
      ? `no ${KNATIVE_ERROR_DEST}: not marked by a Knative dispatcher`
      : code !== undefined
        ? `${dest} answered HTTP ${code}`
        : `${dest} failed (no ${KNATIVE_ERROR_CODE})`;
  return {
    destination: dest ?? '-',
    trigger: triggerOf(url),
    reason: { ...(code !== undefined ? { status: code } : {}), ...(body !== undefined ? { body } : {}), message },
  };
}

function addressedToLoopback(hostHeader: string | undefined): boolean {
  return hostHeader !== undefined && isLoopbackName(hostHeader.trim().replace(/:\d+$/, ''));
}

/** Creates the receiver over an open store. */
export function createDeadLetterReceiver(deps: DeadLetterReceiverDeps): DeadLetterReceiver {
  const { store, logger: log, maxEventBytes } = deps;
  const counters: ReceiverCounters = { stored: 0, duplicates: 0, refusedFull: 0, malformed: 0, failed: 0 };
  const limits = { maxEventBytes, maxBatchBytes: maxEventBytes };

  async function receive(req: BoundedIncomingMessage, res: ServerResponse): Promise<void> {
    const declared = refuseDeclaredBody(req, maxEventBytes);
    if (declared) {
      counters.malformed++;
      log.warn({ status: declared.status, reason: declared.reason }, 'refused a dead letter before reading it');
      sendRefusal(req, res, declared);
      return;
    }
    const body = await req.collect(maxEventBytes);
    if (body === undefined) {
      counters.malformed++;
      log.warn({ status: 413, limit: maxEventBytes }, 'refused a dead letter past its limit');
      sendRefusal(req, res, tooLarge(maxEventBytes));
      return;
    }
    const headers = headerRecord(req);
    let ev: BrokerEvent;
    try {
      if ((headers['content-type'] ?? '').toLowerCase().startsWith('application/cloudevents-batch')) {
        throw new IngressError(400, 'a dead letter is one event, not a batch');
      }
      const events = decodeRequest(headers, body, limits);
      ev = events[0]!;
    } catch (err) {
      if (!(err instanceof IngressError)) throw err;
      counters.malformed++;
      log.warn({ status: err.status, reason: err.message }, 'refused a malformed dead letter');
      send(res, err.status, { error: err.status === 413 ? 'TOO_LARGE' : 'MALFORMED', reason: err.message });
      return;
    }
    const { destination, trigger, reason } = reasonOf(ev);
    const ids = { eventId: ev.attributes.id, eventType: ev.attributes.type, source: ev.attributes.source, destination, status: reason.status };
    const entry: NewDeadLetter = { trigger, destination, attempts: 0, reason, event: storeEvent(ev) };
    try {
      const { entry: kept, duplicate } = await store.add(entry);
      if (duplicate) {
        counters.duplicates++;
        log.info({ ...ids, deadLetter: kept.id }, 'dead letter already kept; not stored again');
        send(res, 200, { id: kept.id, duplicate: true });
      } else {
        counters.stored++;
        deps.deadLetters?.add(1, shortType(String(ev.attributes.type)), reasonClass(reason.status));
        log.warn({ ...ids, deadLetter: kept.id, reason: reason.message }, 'dead letter kept');
        send(res, 201, { id: kept.id });
      }
    } catch (err) {
      const full = err instanceof DeadLetterStoreFullError || (err as NodeJS.ErrnoException).code === 'ENOSPC';
      if (full) {
        counters.refusedFull++;
        log.error({ ...ids, usedBytes: store.usedBytes(), maxBytes: store.maxBytes, refusedFull: counters.refusedFull }, 'dead-letter store full: dead letter refused (507), nothing evicted');
        send(res, 507, { error: 'STORE_FULL', reason: (err as Error).message, usedBytes: store.usedBytes(), maxBytes: store.maxBytes });
        return;
      }
      counters.failed++;
      log.error({ ...ids, err }, 'dead letter could not be written; the sender may retry');
      send(res, 503, { error: 'UNAVAILABLE', reason: 'the store could not be written' }, { 'retry-after': '1' });
    }
  }

  async function admin(method: string, route: string, query: URLSearchParams, res: ServerResponse): Promise<void> {
    const parts = route.split('/').filter((p) => p !== '').map((p) => decodeURIComponent(p));
    const [collection, id, action] = parts;
    if (method === 'GET' && collection === 'stats' && parts.length === 1) {
      send(res, 200, { ...counters, deadLetters: store.count(), usedBytes: store.usedBytes(), maxBytes: store.maxBytes });
    } else if (method === 'GET' && collection === 'dead-letters' && parts.length === 1) {
      const after = query.get('after') ?? undefined;
      send(res, 200, await store.page({ ...(after ? { after } : {}), limit: ADMIN_PAGE_ENTRIES, maxBytes: ADMIN_PAGE_BYTES }));
    } else if (method === 'GET' && collection === 'dead-letters' && id !== undefined && parts.length === 2) {
      const entry = isDeadLetterId(id) ? await store.get(id) : undefined;
      if (entry) send(res, 200, entry);
      else send(res, 404, { error: `no dead letter ${JSON.stringify(id)}` });
    } else if (method === 'DELETE' && collection === 'dead-letters' && id !== undefined && parts.length === 2) {
      if (isDeadLetterId(id) && (await store.remove(id))) {
        log.info({ deadLetter: id }, 'dead letter deleted');
        send(res, 200, { deleted: id });
      } else send(res, 404, { error: `no dead letter ${JSON.stringify(id)}` });
    } else if (method === 'POST' && collection === 'dead-letters' && id !== undefined && action === 'replay' && parts.length === 3) {
      send(res, 501, {
        error: 'NOT_IMPLEMENTED',
        reason:
          "the Broker admits an event only from a sender its EventPolicies let send it, and this receiver is none: post the event to the Broker as its original sender, then delete it here (docs/deploy.md, 'Dead letters')",
      });
    } else {
      send(res, 404, { error: `no admin resource ${method} ${ADMIN_PREFIX}${route}` });
    }
  }

  return {
    counters: () => ({ ...counters }),
    async handle(req, res) {
      const [path = '/', search] = (req.url ?? '/').split('?');
      if (req.method === 'GET' && (path === '/healthz' || path === '/livez')) {
        req.resume();
        // Ready once the store is open (the server listens only then). A full store stays ready: its 507 is what
        // tells the sender, and an unready pod would only turn that into connection failures.
        send(res, 200, { status: 'ok', usedBytes: store.usedBytes(), maxBytes: store.maxBytes });
        return;
      }
      if (path.startsWith(ADMIN_PREFIX)) {
        req.resume();
        if (!addressedToLoopback(req.headers.host)) {
          send(res, 403, { error: 'the admin API answers only requests addressed to localhost (kubectl port-forward)' });
          return;
        }
        await admin(req.method ?? 'GET', path.slice(ADMIN_PREFIX.length), new URLSearchParams(search ?? ''), res);
        return;
      }
      if (path !== '/') {
        req.resume();
        send(res, 404, { error: 'dead letters are POSTed to /' });
        return;
      }
      if (req.method !== 'POST') {
        req.resume();
        send(res, 405, { error: 'dead letters are POSTed' }, { allow: 'POST' });
        return;
      }
      await receive(req, res);
    },
  };
}
