// Turns an inbound HTTP request into a typed, validated contract event, or a ContractError naming the field at
// fault. The cloudevents SDK decodes the envelope, but it is lenient where we must not be (it invents a missing
// id or time, silently replaces an unparseable time with now, and matches content types byte for byte), so the
// envelope's required attributes, the size and the body's JSON are checked here first.
import { CloudEvent, HTTP, ValidationError } from 'cloudevents';
import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import ajvFormats from 'ajv-formats';
import { ContractError } from '../errors.ts';
import { EventTypes, OWN_SOURCE_PREFIX, SESSION_ID_PATTERN, isContractType, isEmittedType, requiresTime, sendersOf, sourceOf, WORKLOADS, type ContractType, type DataOf, type Workload } from './events.ts';

/** An HTTP request as a server hands it over; the body may be raw, text, or already decoded JSON. */
export interface RawRequest {
  headers: Record<string, string | string[] | undefined>;
  body: Buffer | string | object | undefined;
  /** The unparsed body, when the framework kept it (functions-framework does): preferred for size and decoding. */
  rawBody?: Buffer;
  /**
   * The body as the server decoded it already (the functions' server, serve.ts, with decodeBody; its bytes are
   * rawBody): used as it is, so a body is decoded once.
   */
  decoded?: { value: object | undefined };
}

/** A decoded contract event; a union over types, so `switch (ev.type)` narrows `ev.data`. */
export type InboundEvent<T extends ContractType = ContractType> = T extends ContractType
  ? {
      readonly type: T;
      readonly data: DataOf<T>;
      readonly id: string;
      readonly source: string;
      /** The event's own time attribute (normalised to ISO 8601 UTC), when the producer set one. */
      readonly time?: string;
      /**
       * The tenant the event speaks for: its `tenant` extension attribute (for session.opened, also its data's
       * tenant; the two must agree). A session opened with a tenant belongs to it, and an event about the session
       * naming another tenant, or none, is refused (OwnershipError, 403).
       */
      readonly tenant?: string;
      /** W3C trace context: the event's distributed-tracing extension, else the request's traceparent header. */
      readonly traceparent?: string;
      readonly tracestate?: string;
      /** The decoded envelope, for logging: its attributes (in binary mode the SDK is not given the data; read `data`). */
      readonly ce: CloudEvent<unknown>;
    }
  : never;

/** What parseInbound enforces beyond the contract itself. */
export interface ParseOptions<A extends readonly ContractType[] = readonly ContractType[]> {
  /** Largest accepted event: body bytes plus CloudEvent attribute headers (MAX_EVENT_BYTES). */
  maxBytes: number;
  /** Largest accepted batch body (MAX_BATCH_BYTES); batches are refused when absent. */
  maxBatchBytes?: number;
  /** The types this function consumes; any other type is UNKNOWN_TYPE. All contract types when absent. */
  accept?: A;
}

const REQUIRED_ATTRIBUTES = ['specversion', 'id', 'source', 'type'] as const;
const STRUCTURED_MEDIA_TYPE = 'application/cloudevents+json';
const BATCH_MEDIA_TYPE = 'application/cloudevents-batch+json';
/** Most events one batch may hold. */
export const MAX_BATCH_EVENTS = 1000;
const TRACEPARENT_PATTERN = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;
const ajv = new Ajv2020({ allErrors: false, strict: true });
ajvFormats.default(ajv, ['date-time', 'uri']);
// The envelope's time is held to the same RFC 3339 rule as instants in data; the SDK would silently replace it.
const isRfc3339 = ajv.compile<string>({ type: 'string', format: 'date-time' });
// Compiled once at load: a compile per event would cost more than the rest of the handler.
const validators = new Map<string, ValidateFunction>(Object.entries(EventTypes).map(([type, schema]) => [type, ajv.compile(schema)]));

/**
 * When an event says it happened: its own `time`, never later than `now` (a sender whose clock runs ahead must not
 * push a deadline out, nor end what it opens next), and `now` when it carries none.
 */
export function eventTimeOf(event: { time?: string | undefined }, now: number): number {
  const at = event.time === undefined ? Number.NaN : Date.parse(event.time);
  return Number.isFinite(at) ? Math.min(at, now) : now;
}

/** Decodes and validates an inbound request (binary or structured CloudEvent); throws ContractError if malformed. */
export function parseInbound<const A extends readonly ContractType[]>(req: RawRequest, opts: ParseOptions<A> & { accept: A }): InboundEvent<A[number]>;
export function parseInbound(req: RawRequest, opts: ParseOptions): InboundEvent;
export function parseInbound(req: RawRequest, opts: ParseOptions): InboundEvent {
  const headers = normaliseHeaders(req.headers);
  const { bytes, body } = bodyOf(req);
  checkSize(headers, bytes, opts.maxBytes);

  const mediaType = mediaTypeOf(headers['content-type']);
  const structured = mediaType !== undefined && mediaType.startsWith('application/cloudevents');
  if (structured && mediaType !== STRUCTURED_MEDIA_TYPE) {
    throw new ContractError('NOT_A_CLOUDEVENT', 'content-type', `only single events in ${STRUCTURED_MEDIA_TYPE} are accepted, not ${mediaType}`);
  }
  return finish(structured ? decodeStructured(headers, body) : decodeBinary(headers, body, mediaType), headers, structured, opts);
}

/**
 * Decodes a request's body before any JSON parser of a framework sees it: its JSON value (undefined when empty), or
 * the refusal (400) naming what is wrong: a JSON media type (or none), UTF-8, and JSON. A framework's own parser
 * would answer these itself, in its own words (an HTML page with a stack trace, in Express's development mode), not
 * the contract's.
 */
export function decodeBody(headers: RawRequest['headers'], body: Buffer): { value: object | undefined } | { refusal: ContractError } {
  const contentType = normaliseHeaders(headers)['content-type'];
  if (contentType !== undefined && !isJsonMediaType(mediaTypeOf(contentType))) {
    return { refusal: new ContractError('INVALID_FIELD', 'ce.datacontenttype', 'data must be JSON (application/json)') };
  }
  const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(contentType ?? '')?.[1]?.toLowerCase();
  if (charset !== undefined && charset !== 'utf-8' && charset !== 'utf8') return { refusal: new ContractError('BAD_JSON', 'body', 'must be UTF-8') };
  if (body.length === 0) return { value: undefined };
  let value: unknown;
  try {
    value = decodeJson(body, 'body');
  } catch (err) {
    if (err instanceof ContractError) return { refusal: err };
    throw err;
  }
  // Only an object (an event, or binary mode's data) or an array (a batch) can be one; a framework's strict JSON
  // parser refuses the rest in its own words.
  if (typeof value !== 'object' || value === null) {
    return {
      refusal: mediaTypeOf(contentType)?.startsWith('application/cloudevents')
        ? new ContractError('NOT_A_CLOUDEVENT', 'body', 'a structured CloudEvent must be a JSON object')
        : new ContractError('INVALID_FIELD', 'data', 'must be a JSON object'),
    };
  }
  return { value };
}

// A request's body as bytes (what its size is measured on) and as what to decode: its value when the server decoded
// it already, else the bytes themselves.
function bodyOf(req: RawRequest): { bytes: RawRequest['body']; body: RawRequest['body'] } {
  const bytes = req.rawBody ?? req.body;
  return { bytes, body: req.decoded ? req.decoded.value : bytes };
}

/** Whether a request is a batch: CloudEvents' HTTP batched content mode (a JSON array of structured events). */
export function isBatchRequest(headers: RawRequest['headers']): boolean {
  const contentType = headers['content-type'];
  return mediaTypeOf(Array.isArray(contentType) ? contentType[0] : contentType) === BATCH_MEDIA_TYPE;
}

/**
 * Decodes and validates a batch (CloudEvents HTTP batched content mode): every event is checked before any is
 * returned, so a malformed one refuses the whole batch, and its ContractError's field names it (`batch[3].data…`).
 */
export function parseInboundBatch<const A extends readonly ContractType[]>(req: RawRequest, opts: ParseOptions<A> & { accept: A }): InboundEvent<A[number]>[];
export function parseInboundBatch(req: RawRequest, opts: ParseOptions): InboundEvent[] {
  const headers = normaliseHeaders(req.headers);
  const { bytes: raw, body } = bodyOf(req);
  const events = decodeJson(body, 'body');
  if (!Array.isArray(events)) throw new ContractError('NOT_A_CLOUDEVENT', 'body', `a ${BATCH_MEDIA_TYPE} body must be a JSON array of structured CloudEvents`);
  if (events.length === 0) throw new ContractError('NOT_A_CLOUDEVENT', 'body', 'the batch holds no event');
  if (events.length > MAX_BATCH_EVENTS) {
    throw new ContractError('TOO_LARGE', 'body', `the batch holds ${events.length} events; at most ${MAX_BATCH_EVENTS} are accepted`);
  }
  // A cap on the whole batch, not events x MAX_EVENT_BYTES: what a request may make a process hold is the batch.
  const bytes = byteLengthOf(raw);
  const cap = opts.maxBatchBytes ?? 0;
  if (bytes > cap) throw new ContractError('TOO_LARGE', 'body', `the batch is ${bytes} bytes; at most ${cap} are accepted`);
  return events.map((event: unknown, i) => {
    try {
      if (!isPlainObject(event)) throw new ContractError('NOT_A_CLOUDEVENT', 'event', 'a structured CloudEvent must be a JSON object');
      return finish(decodeStructured(headers, event), headers, true, opts);
    } catch (err) {
      if (!(err instanceof ContractError)) throw err;
      throw new ContractError(err.code, `batch[${i}].${err.field}`, err.reason, { cause: err });
    }
  });
}

function finish(decoded: Decoded, headers: Record<string, string>, structured: boolean, opts: ParseOptions): InboundEvent {
  const { message, data, rawTime } = decoded;
  const ce = decodeEnvelope(message);
  if (rawTime !== undefined && !isRfc3339(rawTime)) {
    throw new ContractError('INVALID_FIELD', 'ce.time', 'must be an RFC 3339 date-time');
  }
  const type = ce.type;
  if (!isContractType(type)) throw new ContractError('UNKNOWN_TYPE', 'ce.type', `${type} is not a type of the contract`);
  if (opts.accept && !opts.accept.includes(type)) throw new ContractError('UNKNOWN_TYPE', 'ce.type', `${type} is not consumed here`);
  if (rawTime === undefined && requiresTime(type)) {
    throw new ContractError('MISSING_FIELD', 'ce.time', `is required for ${type}: it fences the event against a reopened or moved session`);
  }
  if (structured && ce.datacontenttype !== undefined && !isJsonMediaType(mediaTypeOf(ce.datacontenttype))) {
    throw new ContractError('INVALID_FIELD', 'ce.datacontenttype', 'data must be JSON (application/json)');
  }

  checkSource(type, ce.source);
  const valid = validateData(type, data);
  const tenant = tenantOf(ce, valid);
  const traceparent = traceparentOf(ce, headers);
  return {
    type,
    data: valid,
    id: ce.id,
    source: ce.source,
    time: rawTime === undefined ? undefined : ce.time,
    tenant,
    traceparent,
    tracestate: traceparent === undefined ? undefined : tracestateOf(ce, headers, traceparent),
    ce,
  } as InboundEvent;
}

const ownSources: ReadonlyMap<string, Workload> = new Map(WORKLOADS.map((w) => [sourceOf(w), w]));

/**
 * Only session-reaper speaks for itself: an emitted (internal) type must carry the source of one of the workloads the
 * catalogue names as its senders, and an inbound type may not claim a source of ours. The Broker's EventPolicies
 * enforce who may send what; this is the same rule again, where the event is consumed.
 */
export function checkSource(type: ContractType, source: string): void {
  if (isEmittedType(type)) {
    const allowed = sendersOf(type);
    const workload = ownSources.get(source);
    if (workload === undefined || !allowed.includes(workload)) {
      throw new ContractError('FORBIDDEN_SOURCE', 'ce.source', `${type} is sent only by session-reaper itself (${allowed.map((w) => sourceOf(w as Workload)).join(', ')})`);
    }
  } else if (source.startsWith(OWN_SOURCE_PREFIX)) {
    throw new ContractError('FORBIDDEN_SOURCE', 'ce.source', `sources under ${OWN_SOURCE_PREFIX} are session-reaper's own; an inbound event may not claim one`);
  }
}

const MAX_TENANT_CHARS = 128;

// The tenant an event speaks for: the `tenant` extension attribute, or for session.opened its data's tenant.
function tenantOf(ce: CloudEvent<unknown>, data: object): string | undefined {
  const attribute: unknown = ce['tenant'];
  if (attribute !== undefined && (typeof attribute !== 'string' || attribute.length === 0 || attribute.length > MAX_TENANT_CHARS)) {
    throw new ContractError('INVALID_FIELD', 'ce.tenant', `must be a string of 1 to ${MAX_TENANT_CHARS} characters`);
  }
  const named = 'tenant' in data && typeof data.tenant === 'string' ? data.tenant : undefined;
  if (attribute !== undefined && named !== undefined && attribute !== named) {
    throw new ContractError('INVALID_FIELD', 'ce.tenant', 'must be the tenant the data names');
  }
  return attribute ?? named;
}

/** Validates the data of an event of the given type against its schema; returns it typed, or throws ContractError. */
export function validateData<T extends ContractType>(type: T, data: unknown): DataOf<T> {
  const validate = validators.get(type);
  if (!validate) throw new ContractError('UNKNOWN_TYPE', 'ce.type', `${String(type)} is not a type of the contract`);
  if (data === undefined) throw new ContractError('MISSING_FIELD', 'data', 'the event has no data');
  if (!isPlainObject(data)) throw new ContractError('INVALID_FIELD', 'data', 'must be a JSON object');
  if (validate(data)) return data as DataOf<T>;
  const first = validate.errors?.[0];
  throw first ? contractErrorOf(first) : new ContractError('INVALID_FIELD', 'data', 'does not match the schema');
}

// Turns the first Ajv error into the field and code a producer can act on.
function contractErrorOf(error: ErrorObject): ContractError {
  const segments = error.instancePath.split('/').slice(1).map((s) => s.replaceAll('~1', '/').replaceAll('~0', '~'));
  const params = error.params as Record<string, unknown>;
  if (error.keyword === 'required') {
    return new ContractError('MISSING_FIELD', fieldOf([...segments, String(params.missingProperty)]), 'is required');
  }
  if (error.keyword === 'additionalProperties') {
    return new ContractError('UNKNOWN_FIELD', fieldOf([...segments, String(params.additionalProperty)]), 'is not a property of this event');
  }
  const field = fieldOf(segments);
  const reason =
    error.keyword === 'enum'
      ? `must be one of ${(params.allowedValues as unknown[]).join(', ')}`
      : error.keyword === 'format'
        ? `must be ${params.format === 'date-time' ? 'an RFC 3339 date-time' : 'a valid URI'}`
        : (error.message ?? 'is invalid');
  if (segments.length === 1 && segments[0] === 'sessionId') {
    return new ContractError('BAD_SESSION_ID', field, `must be a string matching ${SESSION_ID_PATTERN}`);
  }
  return new ContractError('INVALID_FIELD', field, reason);
}

// ['placement', 'runtimeUrl'] -> data.placement.runtimeUrl; ['timeline', '0', 'at'] -> data.timeline[0].at
function fieldOf(segments: readonly string[]): string {
  return segments.reduce((path, s) => (/^\d+$/.test(s) ? `${path}[${s}]` : `${path}.${s}`), 'data');
}

interface Decoded {
  /** What the SDK is given: headers with a content type it recognises, and a body already parsed. */
  message: { headers: Record<string, string>; body: unknown };
  data: unknown;
  rawTime: unknown;
}

function decodeStructured(headers: Record<string, string>, body: RawRequest['body']): Decoded {
  const envelope = decodeJson(body, 'body');
  if (!isPlainObject(envelope)) throw new ContractError('NOT_A_CLOUDEVENT', 'body', 'a structured CloudEvent must be a JSON object');
  for (const name of REQUIRED_ATTRIBUTES) requireAttribute(name, envelope[name]);
  if ('data_base64' in envelope) throw new ContractError('INVALID_FIELD', 'data', 'must be a JSON object, not base64 binary data');
  return {
    message: { headers: { ...headers, 'content-type': STRUCTURED_MEDIA_TYPE }, body: envelope },
    data: envelope.data,
    rawTime: envelope.time,
  };
}

function decodeBinary(headers: Record<string, string>, body: RawRequest['body'], mediaType: string | undefined): Decoded {
  for (const name of REQUIRED_ATTRIBUTES) requireAttribute(name, headers[`ce-${name}`]);
  // A binary event without a content type is taken to carry JSON, the only data this contract has.
  if (mediaType !== undefined && !isJsonMediaType(mediaType)) {
    throw new ContractError('INVALID_FIELD', 'ce.datacontenttype', 'data must be JSON (application/json)');
  }
  const data = isEmpty(body) ? undefined : decodeJson(body, 'data');
  // The SDK is given the headers only: the data is decoded and validated here, and handing it over too would only
  // run the SDK's JSON parser on it again, which builds two ValidationErrors (stack traces and all) on every call,
  // thrown or not; that was a tenth of a function's CPU per event.
  return {
    message: { headers: { ...headers, 'content-type': 'application/json' }, body: undefined },
    data,
    rawTime: headers['ce-time'],
  };
}

function requireAttribute(name: (typeof REQUIRED_ATTRIBUTES)[number], value: unknown): void {
  if (value === undefined || value === null || value === '') {
    throw new ContractError('NOT_A_CLOUDEVENT', `ce.${name}`, `the required CloudEvent attribute ${name} is missing or empty`);
  }
  if (typeof value !== 'string') throw new ContractError('NOT_A_CLOUDEVENT', `ce.${name}`, 'must be a string');
  if (name === 'specversion' && value !== '1.0') throw new ContractError('NOT_A_CLOUDEVENT', 'ce.specversion', 'only CloudEvents 1.0 is accepted');
}

// Lets the SDK map headers and extensions to attributes, then validates the result against the CloudEvents spec.
function decodeEnvelope(message: Decoded['message']): CloudEvent<unknown> {
  let decoded: CloudEvent<unknown>;
  try {
    const event = HTTP.toEvent(message);
    if (!(event instanceof CloudEvent)) throw new ValidationError('batches are not accepted');
    decoded = event;
    decoded.validate();
  } catch (err) {
    if (err instanceof TypeError) throw new ContractError('NOT_A_CLOUDEVENT', attributeOf(err), reasonOf(err), { cause: err });
    throw err;
  }
  checkExtensionValues(decoded);
  return decoded;
}

const SPEC_ATTRIBUTES = new Set(['specversion', 'id', 'source', 'type', 'time', 'datacontenttype', 'dataschema', 'subject', 'data', 'data_base64', 'datacontentencoding', 'schemaurl']);

// The SDK checks extension values only when it builds an event strictly, which decoding does not do.
function checkExtensionValues(ce: CloudEvent<unknown>): void {
  for (const [name, value] of Object.entries(ce)) {
    if (SPEC_ATTRIBUTES.has(name) || value === undefined) continue;
    const valid = typeof value === 'string' || typeof value === 'boolean' || (typeof value === 'number' && Number.isSafeInteger(value));
    if (!valid) throw new ContractError('NOT_A_CLOUDEVENT', `ce.${name}`, 'an extension must be a string, an integer or a boolean');
  }
}

// The SDK's ValidationError carries its own Ajv errors (`/source`) or names a bad extension in its message.
function attributeOf(err: TypeError): string {
  const errors = err instanceof ValidationError ? (err.errors as Array<{ instancePath?: string } | string>) : [];
  const first = errors[0];
  if (typeof first === 'object' && typeof first.instancePath === 'string' && first.instancePath !== '') {
    return `ce.${first.instancePath.slice(1).split('/')[0]}`;
  }
  const named = /attribute name: "([^"]*)"|extension name: (\S+)|cannot set (\w+)/.exec(err.message);
  return named ? `ce.${named[1] ?? named[2] ?? named[3]}` : 'ce';
}

function reasonOf(err: TypeError): string {
  const first: unknown = err instanceof ValidationError ? (err.errors as unknown[])[0] : undefined;
  if (typeof first === 'object' && first !== null && 'message' in first && typeof first.message === 'string') return first.message;
  const [line = err.message] = err.message.split('\n');
  return line.trim();
}

function traceparentOf(ce: CloudEvent<unknown>, headers: Record<string, string>): string | undefined {
  for (const candidate of [ce['traceparent'], headers.traceparent]) {
    if (typeof candidate === 'string' && TRACEPARENT_PATTERN.test(candidate)) return candidate;
  }
  return undefined;
}

// tracestate is only meaningful next to the traceparent it came with.
function tracestateOf(ce: CloudEvent<unknown>, headers: Record<string, string>, traceparent: string): string | undefined {
  const tracestate = ce['traceparent'] === traceparent ? ce['tracestate'] : headers.tracestate;
  return typeof tracestate === 'string' && tracestate !== '' ? tracestate : undefined;
}

// Lower-cases names (HTTP headers are case-insensitive) and joins repeated headers, as Node does for most.
function normaliseHeaders(headers: RawRequest['headers']): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    out[name.toLowerCase()] = Array.isArray(value) ? value.join(', ') : value;
  }
  return out;
}

// The limit covers what makes up the event: its body and, in binary mode, its attribute headers. Other
// headers (auth, mesh, tracing) belong to the hop, and Node already caps their total size.
function checkSize(headers: Record<string, string>, body: RawRequest['body'], maxBytes: number): void {
  let bytes = byteLengthOf(body);
  for (const [name, value] of Object.entries(headers)) {
    if (name.startsWith('ce-') || name === 'content-type') bytes += Buffer.byteLength(name) + Buffer.byteLength(value);
  }
  if (bytes > maxBytes) throw new ContractError('TOO_LARGE', 'event', `the event is ${bytes} bytes; at most ${maxBytes} are accepted`);
}

function byteLengthOf(body: RawRequest['body']): number {
  if (body === undefined || body === null) return 0;
  if (Buffer.isBuffer(body)) return body.length;
  if (typeof body === 'string') return Buffer.byteLength(body);
  return Buffer.byteLength(JSON.stringify(body));
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function decodeJson(body: RawRequest['body'], field: 'body' | 'data'): unknown {
  if (body === undefined || body === null) throw new ContractError(field === 'body' ? 'NOT_A_CLOUDEVENT' : 'MISSING_FIELD', field, 'the request has no body');
  if (!Buffer.isBuffer(body) && typeof body !== 'string') return body;
  let text: string;
  try {
    text = typeof body === 'string' ? body : utf8.decode(body);
  } catch (err) {
    throw new ContractError('BAD_JSON', field, 'is not valid UTF-8', { cause: err });
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new ContractError('BAD_JSON', field, `is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
}

function isEmpty(body: RawRequest['body']): boolean {
  if (body === undefined || body === null) return true;
  if (Buffer.isBuffer(body) || typeof body === 'string') return body.length === 0;
  return false;
}

function mediaTypeOf(contentType: string | undefined): string | undefined {
  if (contentType === undefined) return undefined;
  const [type = ''] = contentType.split(';');
  return type.trim().toLowerCase();
}

function isJsonMediaType(mediaType: string | undefined): boolean {
  return mediaType === 'application/json' || (mediaType !== undefined && /^[a-z0-9.+-]+\/[a-z0-9.+-]+\+json$/.test(mediaType));
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !Buffer.isBuffer(value);
}
