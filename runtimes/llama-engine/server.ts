// The reference engine's HTTP face: session-reaper's native runtime API (functions/gpu-release/runtime-api.openapi.yaml)
// over a real llama.cpp context (engine.ts). Release, listing and memory behave as that document and the simulator
// (runtimes/sim-gpu-runtime/server.ts) do: Idempotency-Key `{sessionId}:{incarnation}` required and checked, 200s
// stored and replayed with `Idempotent-Replayed: true`, 404 `session_not_found` and 409 `incarnation_superseded`
// recomputed on each request. Besides: demote and restore (the optional pair of the same document) and an
// engine-only `complete` that opens a session and fills its KV, as a client's turn would.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { once } from 'node:events';
import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { readSettings, LogLevelSetting } from '../../functions/core/config.ts';
import { EngineRefusal, type Engine } from './engine.ts';
import { defaultModelCacheDir } from './tiny-model.ts';

/** Session ids the API accepts, as the OpenAPI document's SessionId schema states them. */
export const SESSION_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
const MAX_BODY_BYTES = 64 * 1024;
const LIST_PAGE_LIMIT = 256;

/** Settings of the runnable engine (index.ts), read once from the environment and validated like the core's. */
export const EngineSettingsSchema = Type.Object({
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 8080, description: 'Port to listen on (0: a free one).' }),
  ENGINE_HOST: Type.String({ default: '127.0.0.1', description: 'Interface to listen on (a reference engine for one machine: loopback).' }),
  ENGINE_MODEL_PATH: Type.String({ default: '', description: 'A GGUF model to load; empty: the generated tiny model (tiny-model.ts).' }),
  ENGINE_CACHE_DIR: Type.String({ default: '', description: 'Where the tiny model is generated; empty: $XDG_CACHE_HOME/session-reaper or ~/.cache/session-reaper.' }),
  ENGINE_STATE_DIR: Type.String({ default: '', description: "Where demoted sessions' KV files go; empty: a temporary directory removed at stop." }),
  ENGINE_SEQUENCES: Type.Integer({ minimum: 1, maximum: 64, default: 4, description: 'Sessions that can hold KV at once (the context sequences).' }),
  ENGINE_CONTEXT_TOKENS: Type.Integer({ minimum: 16, maximum: 32768, default: 256, description: 'KV cells per session (padded up by node-llama-cpp).' }),
  ENGINE_THREADS: Type.Integer({ minimum: 0, maximum: 256, default: 2, description: 'Threads llama.cpp evaluates with (0: all).' }),
  ENGINE_MAX_GENERATE: Type.Integer({ minimum: 0, maximum: 4096, default: 64, description: 'Most tokens one complete call may generate.' }),
  ENGINE_IDEMPOTENCY_TTL_MS: Type.Integer({ minimum: 1, default: 86_400_000, description: 'How long 200 answers are kept for replay.' }),
  LOG_LEVEL: LogLevelSetting(),
});

/** The engine's validated settings. */
export type EngineSettings = Readonly<Static<typeof EngineSettingsSchema>>;

/** Reads and validates PORT, ENGINE_* and LOG_LEVEL from an environment map; throws ConfigError naming a bad one. */
export function readEngineSettings(env: NodeJS.ProcessEnv): EngineSettings {
  return readSettings(EngineSettingsSchema, env);
}

/** The directory the tiny model is generated in for these settings and environment. */
export function modelCacheDir(settings: EngineSettings, env: NodeJS.ProcessEnv): string {
  return settings.ENGINE_CACHE_DIR !== '' ? settings.ENGINE_CACHE_DIR : defaultModelCacheDir(env);
}

// The body of the engine-only complete call.
const CompleteRequest = Type.Object(
  {
    incarnation: Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER }),
    prompt: Type.Union([Type.String({ minLength: 1, maxLength: 16384 }), Type.Array(Type.Integer({ minimum: 0 }), { minItems: 1, maxItems: 32768 })]),
    maxTokens: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  { additionalProperties: false },
);

const IncarnationRequest = Type.Object({ incarnation: Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER }) }, { additionalProperties: false });

interface Reply {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
}

function problem(status: number, code: string, title: string, extra: Record<string, unknown> = {}): Reply {
  return { status, body: { code, title, status, ...extra }, headers: { 'content-type': 'application/problem+json' } };
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new EngineRefusal(413, 'body_too_large', `body over ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch {
    throw new EngineRefusal(400, 'invalid_json', 'body is not JSON');
  }
}

function checked<T extends ReturnType<typeof Type.Object>>(schema: T, body: unknown): Static<T> {
  const first = Value.Errors(schema, body).First();
  if (first) throw new EngineRefusal(400, 'invalid_request', `${first.path || 'body'}: ${first.message}`);
  return body as Static<T>;
}

function decodeSessionId(segment: string): string {
  let id: string;
  try {
    id = decodeURIComponent(segment);
  } catch {
    throw new EngineRefusal(400, 'invalid_session_id', 'session id is not valid percent-encoding');
  }
  if (!SESSION_ID_PATTERN.test(id)) throw new EngineRefusal(400, 'invalid_session_id', `session id must match ${SESSION_ID_PATTERN.source}`);
  return id;
}

/** Options of serveEngine. */
export interface EngineServerOptions {
  host?: string;
  port?: number;
  /** Most tokens one complete call may generate. */
  maxGenerate?: number;
  /** How long a 200 of release, demote or restore is kept for replay under its key; default 24 h. */
  idempotencyTtlMs?: number;
}

/** A listening engine server. */
export interface EngineServer {
  url: string;
  port: number;
  /** Stops listening and drops open connections; the engine itself is closed by its owner. */
  stop(): Promise<void>;
}

/**
 * Serves `engine` over HTTP. Idempotency: a release's key must be exactly `{sessionId}:{incarnation}` (the OpenAPI
 * document). Demote and restore may happen more than once to one incarnation (demoted when idle, restored on the next
 * turn, demoted again), so their key, optional, must start with `{sessionId}:{incarnation}` and should be unique per
 * attempt series (e.g. `chat-42:3:demote:2`); each operation keeps its own store, so a release is never answered
 * with a demote's stored reply.
 */
export async function serveEngine(engine: Engine, opts: EngineServerOptions = {}): Promise<EngineServer> {
  const ttl = opts.idempotencyTtlMs ?? 86_400_000;
  const maxGenerate = opts.maxGenerate ?? 64;
  // Insertion order is expiry order (one TTL for all), so expired entries are always at the front.
  const stored = new Map<string, { reply: Reply; expiresAt: number }>();

  function storedReply(key: string): Reply | undefined {
    const now = Date.now();
    for (const [k, v] of stored) {
      if (v.expiresAt > now) break;
      stored.delete(k);
    }
    return stored.get(key)?.reply;
  }

  // Runs a state-changing operation under its idempotency rules; only 200s are stored, as the document says.
  async function idempotent(op: 'release' | 'demote' | 'restore', sessionId: string, incarnation: number, key: string | undefined, apply: () => Promise<Reply>): Promise<Reply> {
    const base = `${sessionId}:${incarnation}`;
    if (op === 'release') {
      if (key === undefined) return problem(400, 'idempotency_key_required', 'Idempotency-Key header is required');
      if (key !== base) return problem(400, 'idempotency_key_mismatch', `Idempotency-Key must be ${base}`);
    } else if (key !== undefined && key !== base && !key.startsWith(`${base}:`)) {
      return problem(400, 'idempotency_key_mismatch', `Idempotency-Key must start with ${base}`);
    }
    const storeKey = key === undefined ? undefined : `${op} ${key}`;
    const replay = storeKey === undefined ? undefined : storedReply(storeKey);
    if (replay) return { ...replay, headers: { ...replay.headers, 'idempotent-replayed': 'true' } };
    const reply = await apply();
    if (reply.status === 200 && storeKey !== undefined) stored.set(storeKey, { reply, expiresAt: Date.now() + ttl });
    return reply;
  }

  function listSessions(query: URLSearchParams): Reply {
    const limitText = query.get('limit');
    const limit = limitText === null ? LIST_PAGE_LIMIT : Number(limitText);
    if (!Number.isInteger(limit) || limit < 1 || limit > LIST_PAGE_LIMIT) return problem(400, 'invalid_request', `limit must be an integer within [1, ${LIST_PAGE_LIMIT}]`);
    const after = query.get('after');
    if (after !== null && !SESSION_ID_PATTERN.test(after)) return problem(400, 'invalid_session_id', `after must match ${SESSION_ID_PATTERN.source}`);
    const all = engine
      .sessions()
      .filter((s) => after === null || s.sessionId > after)
      .sort((a, b) => (a.sessionId < b.sessionId ? -1 : 1));
    const page = all.slice(0, limit);
    const next = all.length > limit ? page.at(-1)?.sessionId : undefined;
    return { status: 200, body: { sessions: page, ...(next === undefined ? {} : { next }) } };
  }

  function send(res: ServerResponse, reply: Reply): void {
    if (res.destroyed) return;
    const text = JSON.stringify(reply.body);
    res.writeHead(reply.status, { 'content-type': 'application/json', ...reply.headers, 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }

  async function route(req: IncomingMessage): Promise<Reply> {
    const url = new URL(req.url ?? '/', 'http://engine');
    const rawPath = (req.url ?? '/').split('?')[0] ?? '/';
    const parts = rawPath.split('/');
    const method = req.method ?? 'GET';
    const only = (allowed: string): Reply | undefined => (method === allowed ? undefined : { ...problem(405, 'method_not_allowed', `use ${allowed}`), headers: { 'content-type': 'application/problem+json', allow: allowed } });
    const header = (name: string): string | undefined => {
      const v = req.headers[name];
      return Array.isArray(v) ? v.join(',') : v;
    };
    // parts of "/v1/sessions/{id}/release" are ['', 'v1', 'sessions', id, 'release']
    if (parts.length === 5 && parts[1] === 'v1' && parts[2] === 'sessions') {
      const op = parts[4];
      if (op === 'release' || op === 'demote' || op === 'restore') {
        const refused = only('POST');
        if (refused) return refused;
        const sessionId = decodeSessionId(parts[3] ?? '');
        const { incarnation } = checked(IncarnationRequest, await readJson(req));
        return idempotent(op, sessionId, incarnation, header('idempotency-key'), async () => {
          if (op === 'release') {
            const r = await engine.release(sessionId, incarnation);
            // offloadedBytes: the demoted copy this release dropped (0 when the session was resident).
            return { status: 200, body: { freedBytes: r.freedBytes, offloadedBytes: r.offloadedBytes } };
          }
          if (op === 'demote') return { status: 200, body: await engine.demote(sessionId, incarnation) };
          const r = await engine.restore(sessionId, incarnation);
          return { status: 200, body: { restoredBytes: r.restoredBytes } };
        });
      }
      if (op === 'complete') {
        const refused = only('POST');
        if (refused) return refused;
        const sessionId = decodeSessionId(parts[3] ?? '');
        const body = checked(CompleteRequest, await readJson(req));
        const maxTokens = body.maxTokens ?? 8;
        if (maxTokens > maxGenerate) return problem(400, 'invalid_request', `maxTokens must be at most ${maxGenerate}`);
        if (Array.isArray(body.prompt) && body.prompt.some((t) => t >= engine.vocabularySize)) return problem(400, 'invalid_request', `token ids must be below ${engine.vocabularySize}`);
        const r = await engine.complete(sessionId, body.incarnation, body.prompt, maxTokens);
        return { status: 200, body: { sessionId, incarnation: body.incarnation, ...r } };
      }
    }
    if (parts.length === 4 && parts[1] === 'v1' && parts[2] === 'sessions') {
      const refused = only('GET');
      if (refused) return refused;
      const sessionId = decodeSessionId(parts[3] ?? '');
      const s = engine.session(sessionId);
      return s ? { status: 200, body: s } : problem(404, 'session_not_found', `engine holds nothing for ${sessionId}`);
    }
    if (rawPath === '/v1/sessions') return only('GET') ?? listSessions(url.searchParams);
    if (rawPath === '/v1/memory') return only('GET') ?? { status: 200, body: engine.memory() };
    if (rawPath === '/v1/engine') {
      // Engine-only: what the memory figures are made of, for tests and the demo's report.
      return only('GET') ?? { status: 200, body: { kvBytesPerToken: engine.kvBytesPerToken, contextTokens: engine.contextTokens, vocabularySize: engine.vocabularySize, stateSize: engine.stateSize() } };
    }
    return problem(404, 'route_not_found', `no route for ${rawPath}`);
  }

  const server: Server = createServer((req, res) => {
    route(req).then(
      (reply) => send(res, reply),
      (err: unknown) => send(res, err instanceof EngineRefusal ? problem(err.status, err.code, err.message, err.extra) : problem(500, 'internal', String(err))),
    );
  });
  server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1');
  await once(server, 'listening');
  const { port, address, family } = server.address() as AddressInfo;
  const host = family === 'IPv6' ? `[${address}]` : address === '0.0.0.0' ? '127.0.0.1' : address;
  return {
    url: `http://${host}:${port}`,
    port,
    async stop() {
      const closed = once(server, 'close');
      server.close();
      server.closeAllConnections();
      await closed;
    },
  };
}
