// CloudEvents as the local Broker and the dead-letter receiver carry them: attributes plus the data's exact bytes.
// Like Knative's Broker it validates the envelope only and never reinterprets data, so an event whose data breaks the
// contract still reaches its function, which refuses it (400) and so sends it to the dead-letter store with the
// reason. In core because both deployables read CloudEvents this way: the local Broker (tools/local-broker) and
// the deployed dead-letter receiver (functions/dead-letters), whose image carries core but not the local Broker.
import { CloudEvent } from 'cloudevents';

/** An attribute value: CloudEvents allows strings, integers and booleans. */
export type AttributeValue = string | number | boolean;

/** One event in flight: its context attributes (extensions included) and its data as received. */
export interface BrokerEvent {
  readonly attributes: Readonly<Record<string, AttributeValue>>;
  readonly data: Buffer | undefined;
}

/** A BrokerEvent as JSON (the dead-letter store and the pending-deliveries file). */
export interface StoredEvent {
  attributes: Record<string, AttributeValue>;
  data_base64?: string;
}

/** Size limits of the ingress. */
export interface IngressLimits {
  /** Largest event: data bytes plus attribute names and values. */
  maxEventBytes: number;
  /** Largest batched request body. */
  maxBatchBytes: number;
}

/** A request the ingress refuses: 400 (not a CloudEvent) or 413 (too large). */
export class IngressError extends Error {
  override name = 'IngressError';
  readonly status: 400 | 413;
  constructor(status: 400 | 413, message: string) {
    super(message);
    this.status = status;
  }
}

const REQUIRED = ['specversion', 'id', 'source', 'type'] as const;
const BATCH_MEDIA_TYPE = 'application/cloudevents-batch+json';
const STRUCTURED_MEDIA_TYPE = 'application/cloudevents+json';
const TRACEPARENT = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;
const utf8 = new TextDecoder('utf-8', { fatal: true });

function mediaType(value: string | undefined): string | undefined {
  return value?.split(';')[0]?.trim().toLowerCase() || undefined;
}

/** True for JSON media types: application/json, text/json and any +json suffix. */
export function isJsonMediaType(value: string | undefined): boolean {
  const m = mediaType(value);
  return m === 'application/json' || m === 'text/json' || (m?.endsWith('+json') ?? false);
}

/** The bytes an event weighs against the limit: data plus every attribute's name and value. */
export function eventBytes(ev: BrokerEvent): number {
  let bytes = ev.data?.length ?? 0;
  for (const [k, v] of Object.entries(ev.attributes)) bytes += Buffer.byteLength(k) + Buffer.byteLength(String(v));
  return bytes;
}

// Required attributes are checked here because the SDK invents a missing id, time and specversion; the SDK's
// strict constructor then checks the rest of the envelope (source as URI-reference, time, extension names...).
function validateEnvelope(attributes: Record<string, AttributeValue>, where: string): void {
  for (const name of REQUIRED) {
    const value = attributes[name];
    if (typeof value !== 'string' || value === '') throw new IngressError(400, `${where}: the required attribute ${name} is missing or not a non-empty string`);
  }
  if (attributes.specversion !== '1.0') throw new IngressError(400, `${where}: specversion ${String(attributes.specversion)} is not supported (only 1.0)`);
  try {
    new CloudEvent({ ...attributes }, true);
  } catch (err) {
    const first = (err as { errors?: unknown[] }).errors?.[0] as { instancePath?: unknown; message?: unknown } | undefined;
    const detail =
      typeof first?.instancePath === 'string' && typeof first.message === 'string'
        ? `${first.instancePath.slice(1)} ${first.message}`
        : ((err as Error).message.split('\n')[0] ?? 'invalid');
    throw new IngressError(400, `${where}: not a valid CloudEvent: ${detail}`);
  }
}

function parseJson(body: Buffer, what: string): unknown {
  try {
    return JSON.parse(utf8.decode(body));
  } catch {
    throw new IngressError(400, `${what} is not valid UTF-8 JSON`);
  }
}

function fromStructured(raw: unknown, where: string): BrokerEvent {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new IngressError(400, `${where}: a structured CloudEvent must be a JSON object`);
  const attributes: Record<string, AttributeValue> = {};
  let data: Buffer | undefined;
  for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
    if (k === 'data' || k === 'data_base64') continue;
    if (v === null || v === undefined) continue;
    if (typeof v !== 'string' && typeof v !== 'boolean' && !(typeof v === 'number' && Number.isSafeInteger(v))) {
      throw new IngressError(400, `${where}: attribute ${k} must be a string, an integer or a boolean`);
    }
    attributes[k] = v;
  }
  const obj = raw as { data?: unknown; data_base64?: unknown };
  if (obj.data_base64 !== undefined && obj.data_base64 !== null) {
    if (typeof obj.data_base64 !== 'string') throw new IngressError(400, `${where}: data_base64 must be a string`);
    data = Buffer.from(obj.data_base64, 'base64');
  } else if ('data' in obj && obj.data !== undefined) {
    const contentType = typeof attributes.datacontenttype === 'string' ? attributes.datacontenttype : undefined;
    // In the JSON format, data without a datacontenttype is JSON.
    if (contentType === undefined) attributes.datacontenttype = 'application/json';
    data = Buffer.from(contentType === undefined || isJsonMediaType(contentType) || typeof obj.data !== 'string' ? JSON.stringify(obj.data) : obj.data);
  }
  validateEnvelope(attributes, where);
  return { attributes, data };
}

function fromBinary(headers: Readonly<Record<string, string>>, body: Buffer): BrokerEvent {
  const attributes: Record<string, AttributeValue> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (name.startsWith('ce-') && name.length > 3) attributes[name.slice(3)] = value;
  }
  const contentType = headers['content-type'];
  if (contentType !== undefined && contentType !== '') attributes.datacontenttype = contentType;
  validateEnvelope(attributes, 'event');
  return { attributes, data: body.length === 0 ? undefined : body };
}

function checkSize(ev: BrokerEvent, limits: IngressLimits, where: string): void {
  const bytes = eventBytes(ev);
  if (bytes > limits.maxEventBytes) throw new IngressError(413, `${where} is ${bytes} bytes; at most ${limits.maxEventBytes} are accepted per event`);
}

/** The body limit of a request with this content type: batches may be larger than one event. */
export function requestLimit(contentType: string | undefined, limits: IngressLimits): number {
  return mediaType(contentType) === BATCH_MEDIA_TYPE ? limits.maxBatchBytes : limits.maxEventBytes;
}

/** Decodes a request in binary, structured or batched mode into events; throws IngressError (400 or 413). */
export function decodeRequest(headers: Readonly<Record<string, string>>, body: Buffer, limits: IngressLimits): BrokerEvent[] {
  const mt = mediaType(headers['content-type']);
  if (mt === BATCH_MEDIA_TYPE) {
    if (body.length > limits.maxBatchBytes) throw new IngressError(413, `the batch is ${body.length} bytes; at most ${limits.maxBatchBytes} are accepted`);
    const list = parseJson(body, 'the batch');
    if (!Array.isArray(list)) throw new IngressError(400, 'a batch must be a JSON array of structured CloudEvents');
    if (list.length === 0) throw new IngressError(400, 'the batch is empty');
    return list.map((raw, i) => {
      const ev = fromStructured(raw, `event [${i}] of the batch`);
      checkSize(ev, limits, `event [${i}] of the batch`);
      return ev;
    });
  }
  if (body.length > limits.maxEventBytes) throw new IngressError(413, `the request is ${body.length} bytes; at most ${limits.maxEventBytes} are accepted per event`);
  let ev: BrokerEvent;
  if (mt !== undefined && mt.startsWith('application/cloudevents')) {
    if (mt !== STRUCTURED_MEDIA_TYPE) throw new IngressError(400, `${mt} is not a CloudEvents format the Broker reads (JSON only)`);
    ev = fromStructured(parseJson(body, 'the structured event'), 'event');
  } else if (headers['ce-specversion'] !== undefined || headers['ce-id'] !== undefined) {
    ev = fromBinary(headers, body);
  } else {
    throw new IngressError(400, 'not a CloudEvent: no ce-* headers (binary mode) and not application/cloudevents+json (structured mode)');
  }
  checkSize(ev, limits, 'the event');
  return [ev];
}

/**
 * Whether a message's headers say it carries a CloudEvent: a `ce-specversion` (binary mode) or a CloudEvents media type
 * (structured or batched mode), as the CloudEvents SDK's ReadEncoding tells a reply from an empty answer.
 */
export function carriesCloudEvent(headers: Readonly<Record<string, string>>): boolean {
  if (headers['ce-specversion'] !== undefined) return true;
  const mt = mediaType(headers['content-type']);
  return mt === STRUCTURED_MEDIA_TYPE || mt === BATCH_MEDIA_TYPE;
}

/** Adds trace context from the request's W3C headers to an event that carries none, so the trace survives the hop. */
export function withHopTraceContext(ev: BrokerEvent, headers: Readonly<Record<string, string>>): BrokerEvent {
  if (typeof ev.attributes.traceparent === 'string') return ev;
  const traceparent = headers.traceparent;
  if (traceparent === undefined || !TRACEPARENT.test(traceparent)) return ev;
  const tracestate = headers.tracestate;
  return { ...ev, attributes: { ...ev.attributes, traceparent, ...(tracestate ? { tracestate } : {}) } };
}

// Header values must be visible ASCII; anything else is percent-encoded (the CloudEvents HTTP binding's rule).
function headerValue(value: AttributeValue): string {
  return String(value).replace(/[^\x20-\x7e]/gu, (c) => encodeURIComponent(c));
}

/** The binary-mode request of an event: ce-* headers, content-type, W3C trace headers, and the data as body. */
export function toBinaryRequest(ev: BrokerEvent): { headers: Record<string, string>; body: Buffer | undefined } {
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(ev.attributes)) {
    if (k === 'datacontenttype') headers['content-type'] = headerValue(v);
    else headers[`ce-${k}`] = headerValue(v);
  }
  if (typeof ev.attributes.traceparent === 'string') headers.traceparent = headerValue(ev.attributes.traceparent);
  if (typeof ev.attributes.tracestate === 'string') headers.tracestate = headerValue(ev.attributes.tracestate);
  return { headers, body: ev.data };
}

/** A BrokerEvent as JSON. */
export function storeEvent(ev: BrokerEvent): StoredEvent {
  return { attributes: { ...ev.attributes }, ...(ev.data === undefined ? {} : { data_base64: ev.data.toString('base64') }) };
}

/** A BrokerEvent back from JSON. */
export function loadEvent(stored: StoredEvent): BrokerEvent {
  return { attributes: stored.attributes, data: stored.data_base64 === undefined ? undefined : Buffer.from(stored.data_base64, 'base64') };
}

/** The event as a CloudEvents SDK object (data parsed when it is JSON), for inspection. */
export function toCloudEvent(ev: BrokerEvent): CloudEvent<unknown> {
  let data: unknown = ev.data;
  const contentType = typeof ev.attributes.datacontenttype === 'string' ? ev.attributes.datacontenttype : undefined;
  if (ev.data !== undefined && isJsonMediaType(contentType)) {
    try {
      data = JSON.parse(ev.data.toString('utf8'));
    } catch {
      data = ev.data.toString('utf8');
    }
  } else if (ev.data !== undefined && mediaType(contentType)?.startsWith('text/')) {
    data = ev.data.toString('utf8');
  }
  return new CloudEvent<unknown>({ ...ev.attributes, ...(data === undefined ? {} : { data }) }, false);
}
