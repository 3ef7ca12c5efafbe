// A simulated GPU inference runtime that implements the release API of
// functions/gpu-release/runtime-api.openapi.yaml, plus the simulator-only endpoints tagged `x-simulator` there.
// It exists so the release path can be exercised over real HTTP, with faults injected on purpose: errors, rate
// limits, hangs (lost responses) and mangled bodies, drawn from a seeded PRNG so a test run is reproducible.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { once } from 'node:events';
import { randomInt } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Type, type Static } from '@sinclair/typebox';
import { readSettings, LogLevelSetting } from '../../functions/core/config.ts';
import { seededRandom } from '../../functions/core/seeded-random.ts';
import { ApiRefusal } from '../../functions/core/errors.ts';

/** Session ids the API accepts, as the OpenAPI document's SessionId schema states them. */
export const SESSION_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

const GiB = 1024 ** 3;
const MAX_BODY_BYTES = 64 * 1024;
const REQUEST_LOG_LIMIT = 1000;
/** Most sessions in one page of GET /v1/sessions (the OpenAPI document's SessionPage). */
const LIST_PAGE_LIMIT = 256;

/** Fault settings; each rate is the fraction of API requests (release, memory, listing) that get that fault. */
export interface SimFaults {
  /** Fixed delay before each API request is handled. */
  latencyMs: number;
  /** Extra delay drawn uniformly from [0, latencyJitterMs) per API request. */
  latencyJitterMs: number;
  /** Fraction answered 503 without being applied. */
  errorRate: number;
  /** Fraction answered 429 with Retry-After, without being applied. */
  rateLimitRate: number;
  /** Seconds sent in Retry-After with each 429. */
  retryAfterSeconds: number;
  /** Fraction applied and then never answered: the response is lost, so the client times out. */
  hangRate: number;
  /** Fraction applied and then answered with a truncated JSON body under the real status. */
  malformedRate: number;
  /** When true every API request is answered 503 (the runtime is down); rates are ignored meanwhile. */
  down: boolean;
}

/** One scripted fault for the next API request: a named fault, 'ok' for none, or an HTTP status to answer with. */
export type ScriptedFault = 'ok' | 'error' | 'rateLimit' | 'hang' | 'malformed' | number;

/** Options of startSimRuntime; fault settings may be given here and changed later with setFaults. */
export interface SimRuntimeOptions extends Partial<SimFaults> {
  /** Interface to listen on; default 127.0.0.1. */
  host?: string;
  /** Port to listen on; default 0 (a free port). */
  port?: number;
  /** Path prefix the API is served under, e.g. '/rt'; default '' (none). */
  basePath?: string;
  /** GPU memory the runtime has; default 80 GiB. */
  totalBytes?: number;
  /** Seed of the PRNG that draws faults and jitter; default a random one. */
  seed?: number;
  /** How long a 200 release response is kept for replay under its Idempotency-Key; default 24 h. */
  idempotencyTtlMs?: number;
  /** Whether GET /v1/sessions lists what is held (default true); false answers it 501, as a runtime without it. */
  listing?: boolean;
}

/** What the runtime holds for one session. */
export interface SimSessionRecord {
  sessionId: string;
  incarnation: number;
  bytes: number;
}

/** Counters that let a test prove every allocation was freed exactly once. */
export interface SimStats {
  /** Per `sessionId:incarnation`, how many releases really freed memory (first 200s, not replays). */
  releases: Record<string, number>;
  totalAllocated: number;
  /** Bytes freed by release calls. */
  totalFreed: number;
  /** Bytes dropped because a newer incarnation's allocation replaced an older one. */
  totalSuperseded: number;
  /** Release requests answered from the idempotency store. */
  replays: number;
  /** API requests received (release, memory and listing), answered or not. */
  received: number;
  /** API requests left unanswered on purpose (hang faults). */
  hangs: number;
  /** API requests answered, by HTTP status. */
  requests: Record<string, number>;
  usedBytes: number;
  sessions: number;
}

/** One API request as the simulator saw it, for tests that check what went over the wire. */
export interface SimRequestRecord {
  method: string;
  /** The path exactly as sent, percent-encoding intact. */
  rawPath: string;
  idempotencyKey: string | undefined;
  traceparent: string | undefined;
  tracestate: string | undefined;
  fault: Exclude<ScriptedFault, number> | 'status';
  /** The status answered; undefined while pending or when hung. */
  status: number | undefined;
}

/** A running simulator. */
export interface SimRuntime {
  /** Base URL of the API, including basePath, without a trailing slash. */
  url: string;
  port: number;
  /** Stops listening and drops every open connection, hung ones included. */
  stop(): Promise<void>;
  /** Changes fault settings from now on. */
  setFaults(faults: Partial<SimFaults>): void;
  /** Queues faults for the next API requests, in order, ahead of the rates. */
  queueFaults(...faults: ScriptedFault[]): void;
  faults(): Readonly<SimFaults>;
  /** Registers memory for a session incarnation, as POST .../allocate does; throws when it is refused. */
  allocate(sessionId: string, incarnation: number, bytes: number): SimSessionRecord;
  session(sessionId: string): SimSessionRecord | undefined;
  memory(): { totalBytes: number; usedBytes: number; sessions: number };
  stats(): SimStats;
  requestLog(): readonly SimRequestRecord[];
}

/** Settings of the runnable simulator (index.ts), read from the environment like the core configuration. */
export const SimSettingsSchema = Type.Object({
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 8080, description: 'Port to listen on (0: a free one).' }),
  SIM_HOST: Type.String({ default: '0.0.0.0', description: 'Interface to listen on.' }),
  SIM_BASE_PATH: Type.String({ default: '', pattern: '^(/[A-Za-z0-9._~-]+)*$', description: "Path prefix the API is served under, e.g. '/rt'." }),
  SIM_TOTAL_BYTES: Type.Integer({ minimum: 1, default: 80 * GiB, description: 'GPU memory the simulated runtime has.' }),
  SIM_LATENCY_MS: Type.Integer({ minimum: 0, default: 0, description: 'Fixed delay before each API request is handled.' }),
  SIM_LATENCY_JITTER_MS: Type.Integer({ minimum: 0, default: 0, description: 'Random extra delay, up to this, per API request.' }),
  SIM_ERROR_RATE: Type.Number({ minimum: 0, maximum: 1, default: 0, description: 'Fraction of API requests answered 503.' }),
  SIM_RATE_LIMIT_RATE: Type.Number({ minimum: 0, maximum: 1, default: 0, description: 'Fraction of API requests answered 429.' }),
  SIM_RETRY_AFTER_SECONDS: Type.Integer({ minimum: 0, default: 1, description: 'Retry-After sent with each 429.' }),
  SIM_HANG_RATE: Type.Number({ minimum: 0, maximum: 1, default: 0, description: 'Fraction of API requests applied but never answered.' }),
  SIM_MALFORMED_RATE: Type.Number({ minimum: 0, maximum: 1, default: 0, description: 'Fraction of API requests answered with a truncated body.' }),
  SIM_SEED: Type.Integer({ minimum: 0, maximum: 0xffffffff, default: 0, description: 'PRNG seed for faults and jitter; 0 picks a random one.' }),
  SIM_IDEMPOTENCY_TTL_MS: Type.Integer({ minimum: 1, default: 86_400_000, description: 'How long release responses are kept for replay.' }),
  LOG_LEVEL: LogLevelSetting(),
});

/** The simulator's validated settings. */
export type SimSettings = Readonly<Static<typeof SimSettingsSchema>>;

/** Reads and validates the simulator's PORT, SIM_* and LOG_LEVEL settings from an environment map. */
export function readSimSettings(env: NodeJS.ProcessEnv): SimSettings {
  return readSettings(SimSettingsSchema, env);
}

/** Turns validated settings into startSimRuntime options. */
export function simOptionsFromSettings(s: SimSettings): SimRuntimeOptions {
  return {
    port: s.PORT,
    host: s.SIM_HOST,
    basePath: s.SIM_BASE_PATH,
    totalBytes: s.SIM_TOTAL_BYTES,
    latencyMs: s.SIM_LATENCY_MS,
    latencyJitterMs: s.SIM_LATENCY_JITTER_MS,
    errorRate: s.SIM_ERROR_RATE,
    rateLimitRate: s.SIM_RATE_LIMIT_RATE,
    retryAfterSeconds: s.SIM_RETRY_AFTER_SECONDS,
    hangRate: s.SIM_HANG_RATE,
    malformedRate: s.SIM_MALFORMED_RATE,
    idempotencyTtlMs: s.SIM_IDEMPOTENCY_TTL_MS,
    ...(s.SIM_SEED === 0 ? {} : { seed: s.SIM_SEED }),
  };
}

/** A refused simulator operation, carrying the HTTP status and problem code it is answered with. */
export class SimRefusal extends ApiRefusal {
  override name = 'SimRefusal';
}


const DEFAULT_FAULTS: SimFaults = {
  latencyMs: 0,
  latencyJitterMs: 0,
  errorRate: 0,
  rateLimitRate: 0,
  retryAfterSeconds: 1,
  hangRate: 0,
  malformedRate: 0,
  down: false,
};

function checkFaults(f: SimFaults): void {
  for (const name of ['errorRate', 'rateLimitRate', 'hangRate', 'malformedRate'] as const) {
    if (!(f[name] >= 0 && f[name] <= 1)) throw new RangeError(`${name} must be within [0, 1], got ${f[name]}`);
  }
  if (f.errorRate + f.rateLimitRate + f.hangRate + f.malformedRate > 1) {
    throw new RangeError('errorRate + rateLimitRate + hangRate + malformedRate must not exceed 1');
  }
  for (const name of ['latencyMs', 'latencyJitterMs', 'retryAfterSeconds'] as const) {
    if (!Number.isInteger(f[name]) || f[name] < 0) throw new RangeError(`${name} must be an integer >= 0, got ${f[name]}`);
  }
  if (typeof f.down !== 'boolean') throw new RangeError('down must be a boolean');
}

function pickFaultKeys(input: Partial<SimFaults>): Partial<SimFaults> {
  const out: Partial<SimFaults> = {};
  for (const key of Object.keys(DEFAULT_FAULTS) as (keyof SimFaults)[]) {
    if (input[key] !== undefined) Object.assign(out, { [key]: input[key] });
  }
  return out;
}

interface Reply {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
}

interface StoredReply {
  reply: Reply;
  expiresAt: number;
}

function problem(status: number, code: string, title: string, extra: Record<string, unknown> = {}): Reply {
  return { status, body: { code, title, status, ...extra }, headers: { 'content-type': 'application/problem+json' } };
}

function isNonNegativeInteger(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new SimRefusal(413, 'body_too_large', `body exceeds ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch {
    throw new SimRefusal(400, 'invalid_json', 'body is not valid JSON');
  }
}

function field(body: unknown, name: string): unknown {
  return typeof body === 'object' && body !== null ? (body as Record<string, unknown>)[name] : undefined;
}

function decodeSessionId(segment: string): string {
  let id: string;
  try {
    id = decodeURIComponent(segment);
  } catch {
    throw new SimRefusal(400, 'invalid_session_id', 'session id is not valid percent-encoding');
  }
  if (!SESSION_ID_PATTERN.test(id)) throw new SimRefusal(400, 'invalid_session_id', `session id must match ${SESSION_ID_PATTERN.source}`);
  return id;
}

/** Starts a simulated runtime listening on host:port and resolves once it accepts connections. */
export async function startSimRuntime(opts: SimRuntimeOptions = {}): Promise<SimRuntime> {
  const totalBytes = opts.totalBytes ?? 80 * GiB;
  if (!isNonNegativeInteger(totalBytes) || totalBytes === 0) throw new RangeError('totalBytes must be a positive integer');
  const basePath = (opts.basePath ?? '').replace(/\/+$/, '');
  if (basePath !== '' && !/^(\/[A-Za-z0-9._~-]+)+$/.test(basePath)) throw new RangeError(`basePath ${basePath} is not a plain path`);
  const idempotencyTtlMs = opts.idempotencyTtlMs ?? 86_400_000;
  const random = seededRandom(opts.seed ?? randomInt(1, 0xffffffff));
  let faults: SimFaults = { ...DEFAULT_FAULTS, ...pickFaultKeys(opts) };
  checkFaults(faults);
  const script: ScriptedFault[] = [];

  const sessions = new Map<string, SimSessionRecord>();
  // Insertion order is expiry order (one TTL for all), so expired entries are always at the front.
  const idempotencyStore = new Map<string, StoredReply>();
  let usedBytes = 0;
  const stats = { releases: {} as Record<string, number>, totalAllocated: 0, totalFreed: 0, totalSuperseded: 0, replays: 0, received: 0, hangs: 0, requests: {} as Record<string, number> };
  const requestLog: SimRequestRecord[] = [];

  function storedReply(key: string): Reply | undefined {
    const now = Date.now();
    for (const [k, v] of idempotencyStore) {
      if (v.expiresAt > now) break;
      idempotencyStore.delete(k);
    }
    return idempotencyStore.get(key)?.reply;
  }

  function allocate(sessionId: string, incarnation: number, bytes: number): SimSessionRecord {
    if (!SESSION_ID_PATTERN.test(sessionId)) throw new SimRefusal(400, 'invalid_session_id', `session id must match ${SESSION_ID_PATTERN.source}`);
    if (!isNonNegativeInteger(incarnation)) throw new SimRefusal(400, 'invalid_request', 'incarnation must be an integer >= 0');
    if (!isNonNegativeInteger(bytes) || bytes === 0) throw new SimRefusal(400, 'invalid_request', 'bytes must be an integer >= 1');
    const key = `${sessionId}:${incarnation}`;
    if (storedReply(key) !== undefined) throw new SimRefusal(409, 'incarnation_released', `${key} was already released`);
    const held = sessions.get(sessionId);
    if (held && held.incarnation > incarnation) {
      throw new SimRefusal(409, 'incarnation_superseded', `runtime holds newer incarnation ${held.incarnation}`, { heldIncarnation: held.incarnation });
    }
    const same = held?.incarnation === incarnation;
    const replacedBytes = held && !same ? held.bytes : 0;
    if (usedBytes - replacedBytes + bytes > totalBytes) {
      throw new SimRefusal(507, 'insufficient_memory', `${bytes} bytes requested, ${totalBytes - usedBytes + replacedBytes} free`);
    }
    // A newer incarnation means the session was restarted: its old KV cache is gone with the old process.
    usedBytes -= replacedBytes;
    stats.totalSuperseded += replacedBytes;
    const record = { sessionId, incarnation, bytes: (same ? held.bytes : 0) + bytes };
    sessions.set(sessionId, record);
    usedBytes += bytes;
    stats.totalAllocated += bytes;
    return { ...record };
  }

  function release(sessionId: string, idempotencyKey: string | undefined, body: unknown): Reply {
    const incarnation = field(body, 'incarnation');
    if (!isNonNegativeInteger(incarnation)) return problem(400, 'invalid_request', 'incarnation must be an integer >= 0');
    const key = `${sessionId}:${incarnation}`;
    if (idempotencyKey === undefined) return problem(400, 'idempotency_key_required', 'Idempotency-Key header is required');
    if (idempotencyKey !== key) return problem(400, 'idempotency_key_mismatch', `Idempotency-Key must be ${key}`);
    const stored = storedReply(key);
    if (stored) {
      stats.replays++;
      return { ...stored, headers: { ...stored.headers, 'idempotent-replayed': 'true' } };
    }
    const held = sessions.get(sessionId);
    if (!held || held.incarnation < incarnation) {
      return problem(404, 'session_not_found', `runtime holds no allocation for ${key}`);
    }
    if (held.incarnation > incarnation) {
      return problem(409, 'incarnation_superseded', `runtime holds newer incarnation ${held.incarnation}`, { heldIncarnation: held.incarnation });
    }
    sessions.delete(sessionId);
    usedBytes -= held.bytes;
    stats.totalFreed += held.bytes;
    stats.releases[key] = (stats.releases[key] ?? 0) + 1;
    const reply: Reply = { status: 200, body: { freedBytes: held.bytes } };
    // Only state-changing answers are stored: 404 and 409 are recomputed, being idempotent by nature.
    idempotencyStore.set(key, { reply, expiresAt: Date.now() + idempotencyTtlMs });
    return reply;
  }

  // One page of the sessions held, in id order after `after` (the optional listing of the OpenAPI document).
  function listSessions(query: URLSearchParams): Reply {
    if (opts.listing === false) return problem(501, 'not_implemented', 'this runtime does not list its sessions');
    const limitText = query.get('limit');
    const limit = limitText === null ? LIST_PAGE_LIMIT : Number(limitText);
    if (!Number.isInteger(limit) || limit < 1 || limit > LIST_PAGE_LIMIT) {
      return problem(400, 'invalid_request', `limit must be an integer within [1, ${LIST_PAGE_LIMIT}]`);
    }
    const after = query.get('after');
    if (after !== null && !SESSION_ID_PATTERN.test(after)) return problem(400, 'invalid_session_id', `after must match ${SESSION_ID_PATTERN.source}`);
    const ids = [...sessions.keys()].filter((id) => after === null || id > after).sort();
    const page = ids.slice(0, limit);
    const next = ids.length > limit ? page.at(-1) : undefined;
    return { status: 200, body: { sessions: page.map((id) => ({ ...sessions.get(id) })), ...(next === undefined ? {} : { next }) } };
  }

  function memory(): { totalBytes: number; usedBytes: number; sessions: number } {
    return { totalBytes, usedBytes, sessions: sessions.size };
  }

  function drawFault(): Exclude<ScriptedFault, 'ok'> | 'ok' {
    const scripted = script.shift();
    if (scripted !== undefined) return scripted;
    if (faults.down) return 'error';
    const r = random();
    let edge = faults.errorRate;
    if (r < edge) return 'error';
    if (r < (edge += faults.rateLimitRate)) return 'rateLimit';
    if (r < (edge += faults.hangRate)) return 'hang';
    if (r < edge + faults.malformedRate) return 'malformed';
    return 'ok';
  }

  function send(res: ServerResponse, reply: Reply, mangle = false): void {
    if (res.destroyed) return;
    let text = JSON.stringify(reply.body);
    if (mangle) text = text.slice(0, Math.max(1, Math.floor(text.length / 2)));
    res.writeHead(reply.status, { 'content-type': 'application/json', ...reply.headers, 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }

  // The API plane (release, memory, listing) gets latency and faults; the simulator-only plane answers straight away so
  // tests can set up and inspect state reliably.
  async function handleApi(req: IncomingMessage, res: ServerResponse, rawPath: string, apply: () => Promise<Reply>): Promise<void> {
    stats.received++;
    const header = (name: string) => {
      const v = req.headers[name];
      return Array.isArray(v) ? v.join(',') : v;
    };
    const drawn = drawFault();
    const record: SimRequestRecord = {
      method: req.method ?? '',
      rawPath,
      idempotencyKey: header('idempotency-key'),
      traceparent: header('traceparent'),
      tracestate: header('tracestate'),
      fault: typeof drawn === 'number' ? 'status' : drawn,
      status: undefined,
    };
    requestLog.push(record);
    if (requestLog.length > REQUEST_LOG_LIMIT) requestLog.shift();
    const delay = faults.latencyMs + Math.floor(random() * faults.latencyJitterMs);
    if (delay > 0) await sleep(delay);
    let reply: Reply;
    if (typeof drawn === 'number') reply = problem(drawn, 'injected_fault', `fault injected: status ${drawn}`);
    else if (drawn === 'error') reply = problem(503, 'unavailable', 'runtime unavailable (injected fault)');
    else if (drawn === 'rateLimit') {
      reply = problem(429, 'rate_limited', 'too many requests (injected fault)');
      reply.headers = { ...reply.headers, 'retry-after': String(faults.retryAfterSeconds) };
    } else {
      // Applied even if the client has already given up: a real runtime would not notice either.
      try {
        reply = await apply();
      } catch (err) {
        if (!(err instanceof SimRefusal)) throw err;
        reply = problem(err.status, err.code, err.message, err.extra);
      }
      if (drawn === 'hang') {
        stats.hangs++;
        return;
      }
    }
    if (res.destroyed) return;
    record.status = reply.status;
    stats.requests[reply.status] = (stats.requests[reply.status] ?? 0) + 1;
    send(res, reply, drawn === 'malformed');
  }

  async function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const rawPath = (req.url ?? '/').split('?')[0] ?? '/';
    if (basePath !== '' && !(rawPath === basePath || rawPath.startsWith(`${basePath}/`))) {
      return send(res, problem(404, 'route_not_found', `no route for ${rawPath}`));
    }
    const path = rawPath.slice(basePath.length);
    const method = req.method ?? 'GET';
    const parts = path.split('/');
    // parts of "/v1/sessions/{id}/release" are ['', 'v1', 'sessions', id, 'release']
    const only = (allowed: string): boolean => {
      if (method === allowed) return true;
      send(res, { ...problem(405, 'method_not_allowed', `use ${allowed}`), headers: { 'content-type': 'application/problem+json', allow: allowed } });
      return false;
    };
    try {
      if (parts.length === 5 && parts[1] === 'v1' && parts[2] === 'sessions' && parts[4] === 'release') {
        if (!only('POST')) return;
        const key = req.headers['idempotency-key'];
        return await handleApi(req, res, rawPath, async () => {
          const sessionId = decodeSessionId(parts[3] ?? '');
          return release(sessionId, Array.isArray(key) ? key.join(',') : key, await readJson(req));
        });
      }
      if (path === '/v1/sessions') {
        if (!only('GET')) return;
        const query = new URL(req.url ?? '/', 'http://sim').searchParams;
        return await handleApi(req, res, rawPath, () => Promise.resolve(listSessions(query)));
      }
      if (path === '/v1/memory') {
        if (!only('GET')) return;
        return await handleApi(req, res, rawPath, () => Promise.resolve({ status: 200, body: memory() }));
      }
      if (parts.length === 5 && parts[1] === 'v1' && parts[2] === 'sessions' && parts[4] === 'allocate') {
        if (!only('POST')) return;
        const sessionId = decodeSessionId(parts[3] ?? '');
        const body = await readJson(req);
        const record = allocate(sessionId, field(body, 'incarnation') as number, field(body, 'bytes') as number);
        return send(res, { status: 201, body: { ...record, usedBytes } });
      }
      if (parts.length === 4 && parts[1] === 'v1' && parts[2] === 'sessions') {
        if (!only('GET')) return;
        const sessionId = decodeSessionId(parts[3] ?? '');
        const held = sessions.get(sessionId);
        return send(res, held ? { status: 200, body: held } : problem(404, 'session_not_found', `runtime holds nothing for ${sessionId}`));
      }
      if (path === '/sim/stats') {
        if (!only('GET')) return;
        return send(res, { status: 200, body: snapshotStats() });
      }
      if (path === '/sim/faults') {
        if (method === 'GET') return send(res, { status: 200, body: faults });
        if (!only('PUT')) return;
        const body = await readJson(req);
        if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new SimRefusal(400, 'invalid_request', 'body must be an object');
        try {
          setFaults(body);
        } catch (err) {
          throw new SimRefusal(400, 'invalid_faults', (err as Error).message);
        }
        return send(res, { status: 200, body: faults });
      }
      return send(res, problem(404, 'route_not_found', `no route for ${rawPath}`));
    } catch (err) {
      if (err instanceof SimRefusal) return send(res, problem(err.status, err.code, err.message, err.extra));
      return send(res, problem(500, 'internal', String(err)));
    }
  }

  function snapshotStats(): SimStats {
    return structuredClone({ ...stats, usedBytes, sessions: sessions.size });
  }

  function setFaults(next: Partial<SimFaults>): void {
    const merged = { ...faults, ...pickFaultKeys(next) };
    checkFaults(merged);
    faults = merged;
  }

  const server: Server = createServer((req, res) => {
    void route(req, res);
  });
  server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1');
  await once(server, 'listening');
  const { port, address, family } = server.address() as AddressInfo;
  const host = family === 'IPv6' ? `[${address}]` : address === '0.0.0.0' ? '127.0.0.1' : address;

  return {
    url: `http://${host}:${port}${basePath}`,
    port,
    async stop() {
      const closed = once(server, 'close');
      server.close();
      server.closeAllConnections();
      await closed;
    },
    setFaults,
    queueFaults(...next) {
      script.push(...next);
    },
    faults: () => ({ ...faults }),
    allocate,
    session: (id) => {
      const held = sessions.get(id);
      return held && { ...held };
    },
    memory,
    stats: snapshotStats,
    requestLog: () => requestLog.map((r) => ({ ...r })),
  };
}
