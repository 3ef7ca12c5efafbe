// The GPU runtimes session-reaper may call, registered by the operator (RUNTIMES), never named by an event alone:
// a session.opened must place the session on a registered runtime (and, where the entry lists them, on one of its
// nodes) or it is refused with 400, and every call to a runtime (a release, a memory report) goes only to a
// registered one. An entry names one runtime by its base URL, or a family of them by a URL whose host starts with
// one wildcard label (`http://*.vllm.inference.svc.cluster.local:8000` matches `http://vllm-0.vllm.inference…:8000`).
//
// RUNTIMES is a JSON array, e.g.
//   [{"name": "vllm-a100", "url": "http://*.vllm.inference.svc.cluster.local:8000", "nodes": ["gpu-a100-*"]},
//    {"name": "sim", "url": "http://127.0.0.1:8081"}]
// `name` is what logs and metrics call the runtime (bounded: never a URL); `nodes` (optional) are node names, with
// `*` matching any run of characters.
//
// `kind` (optional) says which API the runtime speaks, and so which adapter (functions/core/runtime-adapters/) calls
// it: 'native' (the default: session-reaper's runtime API, gpu-release/runtime-api.openapi.yaml), 'llamacpp'
// (llama-server's slots), 'sglang' (SGLang's sessions) or 'vllm' (vLLM: memory only; see the README). Each kind's
// options are checked here, once, at start:
//   llamacpp: slots (required: llama-server's --parallel), bytesPerToken (required: the model's KV bytes per token),
//             slotSavePath (true when the server runs with --slot-save-path; without it every slot action is 501)
//   sglang:   bytesPerToken (optional: without it freed bytes are unknown, reported as 0 and estimated)
//   vllm:     globalReleaseAction: 'none' (default) or 'reset_prefix_cache' (resets the WHOLE prefix cache of the
//             engine on every release: every session on it loses its cached prefix; needs VLLM_SERVER_DEV_MODE=1)
import { ConfigError } from './config.ts';

/** The API kinds a runtime may speak, one adapter each. */
export const RUNTIME_KINDS = ['native', 'llamacpp', 'sglang', 'vllm'] as const;
/** The API a runtime speaks. */
export type RuntimeKind = (typeof RUNTIME_KINDS)[number];

/** A registered runtime's kind and that kind's validated options. */
export type EngineSettings =
  | { readonly kind: 'native' }
  | { readonly kind: 'llamacpp'; readonly slots: number; readonly bytesPerToken: number; readonly slotSavePath: boolean }
  | { readonly kind: 'sglang'; readonly bytesPerToken?: number }
  | { readonly kind: 'vllm'; readonly globalReleaseAction: 'none' | 'reset_prefix_cache' };

/** One runtime (or family of runtimes) as the operator registered it. */
export interface RuntimeEntry {
  /** Short name for logs and metrics: 1 to 63 characters of [a-z0-9-]. */
  readonly name: string;
  /** Base URL; the host may start with a `*` label. */
  readonly url: string;
  /** Nodes the runtime may serve sessions on; any node when absent. */
  readonly nodes?: readonly string[];
  /** The API it speaks; 'native' when absent. */
  readonly kind?: RuntimeKind;
  /** llamacpp: llama-server's slot count (--parallel). */
  readonly slots?: number;
  /** llamacpp, sglang: the model's KV cache bytes per token. */
  readonly bytesPerToken?: number;
  /** llamacpp: the server runs with --slot-save-path. */
  readonly slotSavePath?: boolean;
  /** vllm: what a release does ('none' or the engine-wide 'reset_prefix_cache'). */
  readonly globalReleaseAction?: 'none' | 'reset_prefix_cache';
}

/** What a registered runtime URL resolved to. */
export interface RegisteredRuntime {
  /** The entry's name. */
  readonly name: string;
  /** The normalised endpoint (origin and path, no trailing slash): what is called and what breakers are keyed by. */
  readonly endpoint: string;
  /** The API it speaks and that kind's options. */
  readonly engine: EngineSettings;
}

/** Why a runtime URL was not accepted. */
export type RuntimeRefusal = 'not_a_url' | 'not_registered' | 'node_not_registered';

/** A runtime URL that cannot be a runtime's base URL at all (scheme, credentials, query, fragment). */
export class RuntimeUrlError extends Error {
  override name = 'RuntimeUrlError';
}

// A runtime base URL, parsed and checked: http or https, no credentials, query or fragment.
function parseRuntimeUrl(runtimeUrl: string): URL {
  let url: URL;
  try {
    url = new URL(runtimeUrl);
  } catch (cause) {
    throw new RuntimeUrlError('the runtime URL is not a URL', { cause });
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new RuntimeUrlError(`a runtime URL must be http or https, not ${url.protocol}`);
  if (url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '') {
    throw new RuntimeUrlError('a runtime URL must not carry credentials, a query or a fragment');
  }
  return url;
}

const endpointOf = (url: URL): string => `${url.origin}${url.pathname.replace(/\/+$/, '')}`;

/** The normalised endpoint of a runtime base URL: origin plus path without trailing slash. */
export function runtimeEndpoint(runtimeUrl: string): string {
  return endpointOf(parseRuntimeUrl(runtimeUrl));
}

interface CompiledEntry {
  name: string;
  protocol: string;
  /** Exact host, or the suffix after the wildcard label (starting with '.'). */
  host: string;
  wildcard: boolean;
  port: string;
  path: string;
  nodes: RegExp[] | undefined;
  /** The endpoint of an entry that names one runtime (no wildcard). */
  endpoint: string | undefined;
  engine: EngineSettings;
}

/** A runtime's name: 1 to 63 characters of a-z, 0-9 and -, neither first nor last a -. */
export const RUNTIME_NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i;

function globToRegExp(glob: string): RegExp {
  return new RegExp(`^${glob.split('*').map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
}

const MAX_BYTES_PER_TOKEN = 2 ** 30;
const MAX_SLOTS = 4096;

const isPositiveInt = (v: unknown, max: number): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 1 && v <= max;

// The kind's options, checked once: a runtime registered with options its kind does not read, or without one it
// needs, stops the process naming the field, instead of failing at the first release.
function engineOf(where: string, fields: Record<string, unknown>): EngineSettings {
  const { kind = 'native', slots, bytesPerToken, slotSavePath, globalReleaseAction } = fields;
  if (typeof kind !== 'string' || !(RUNTIME_KINDS as readonly string[]).includes(kind)) throw new ConfigError(`${where}.kind must be one of ${RUNTIME_KINDS.join(', ')}`);
  const allowed: Record<RuntimeKind, string[]> = { native: [], llamacpp: ['slots', 'bytesPerToken', 'slotSavePath'], sglang: ['bytesPerToken'], vllm: ['globalReleaseAction'] };
  for (const [option, value] of Object.entries({ slots, bytesPerToken, slotSavePath, globalReleaseAction })) {
    if (value !== undefined && !allowed[kind as RuntimeKind].includes(option)) throw new ConfigError(`${where}.${option} is not an option of kind ${kind}`);
  }
  if (bytesPerToken !== undefined && !isPositiveInt(bytesPerToken, MAX_BYTES_PER_TOKEN)) throw new ConfigError(`${where}.bytesPerToken must be an integer within [1, ${MAX_BYTES_PER_TOKEN}]`);
  switch (kind as RuntimeKind) {
    case 'native':
      return { kind: 'native' };
    case 'llamacpp':
      if (!isPositiveInt(slots, MAX_SLOTS)) throw new ConfigError(`${where}.slots must be llama-server's slot count (--parallel), an integer within [1, ${MAX_SLOTS}]`);
      if (bytesPerToken === undefined) throw new ConfigError(`${where}.bytesPerToken is required for kind llamacpp: the model's KV bytes per token (2 x layers x KV heads x head dim x dtype bytes)`);
      if (slotSavePath !== undefined && typeof slotSavePath !== 'boolean') throw new ConfigError(`${where}.slotSavePath must be true or false`);
      return { kind: 'llamacpp', slots, bytesPerToken: bytesPerToken, slotSavePath: slotSavePath === true };
    case 'sglang':
      return bytesPerToken === undefined ? { kind: 'sglang' } : { kind: 'sglang', bytesPerToken: bytesPerToken };
    case 'vllm':
      if (globalReleaseAction !== undefined && globalReleaseAction !== 'none' && globalReleaseAction !== 'reset_prefix_cache') {
        throw new ConfigError(`${where}.globalReleaseAction must be 'none' or 'reset_prefix_cache'`);
      }
      return { kind: 'vllm', globalReleaseAction: globalReleaseAction ?? 'none' };
  }
}

function compile(entry: unknown, index: number): CompiledEntry {
  const where = `RUNTIMES[${index}]`;
  if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw new ConfigError(`${where} must be an object {name, url, nodes?, kind?}`);
  const { name, url, nodes, kind, slots, bytesPerToken, slotSavePath, globalReleaseAction, ...rest } = entry as Record<string, unknown>;
  const unknown = Object.keys(rest);
  if (unknown.length > 0) throw new ConfigError(`${where} has unknown field ${unknown[0]}`);
  const engine = engineOf(where, { kind, slots, bytesPerToken, slotSavePath, globalReleaseAction });
  if (typeof name !== 'string' || !RUNTIME_NAME.test(name)) throw new ConfigError(`${where}.name must be 1-63 characters of a-z, 0-9 and -`);
  if (typeof url !== 'string') throw new ConfigError(`${where}.url must be a string`);
  const wildcard = /^https?:\/\/\*\./.test(url);
  // The wildcard label is swapped for a plain one so the URL parser can check the rest.
  let parsed: URL;
  try {
    parsed = new URL(wildcard ? url.replace('*.', 'x.') : url);
  } catch {
    throw new ConfigError(`${where}.url is not a URL`);
  }
  let endpoint: string;
  try {
    endpoint = runtimeEndpoint(parsed.href);
  } catch (err) {
    throw new ConfigError(`${where}.url: ${(err as Error).message}`);
  }
  if (url.indexOf('*', wildcard ? url.indexOf('*') + 1 : 0) !== -1) throw new ConfigError(`${where}.url may hold one wildcard, as the whole first label of its host`);
  if (nodes !== undefined && (!Array.isArray(nodes) || nodes.length === 0 || !nodes.every((n) => typeof n === 'string' && n.length > 0 && n.length <= 253))) {
    throw new ConfigError(`${where}.nodes must be a non-empty array of node names (with * as a wildcard)`);
  }
  return {
    name,
    protocol: parsed.protocol,
    host: wildcard ? parsed.hostname.slice(1) : parsed.hostname,
    wildcard,
    port: parsed.port,
    path: parsed.pathname.replace(/\/+$/, ''),
    nodes: (nodes as string[] | undefined)?.map(globToRegExp),
    endpoint: wildcard ? undefined : endpoint,
    engine,
  };
}

/** The registered runtimes; built once from RUNTIMES. */
export class RuntimeRegistry {
  readonly #entries: readonly CompiledEntry[];

  constructor(entries: readonly RuntimeEntry[]) {
    this.#entries = entries.map(compile);
    const names = new Set<string>();
    for (const e of this.#entries) {
      if (names.has(e.name)) throw new ConfigError(`RUNTIMES names ${e.name} twice`);
      names.add(e.name);
    }
  }

  /** Parses RUNTIMES (a JSON array; empty text: no runtime registered). */
  static parse(text: string): RuntimeRegistry {
    if (text.trim() === '') return new RuntimeRegistry([]);
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      throw new ConfigError(`RUNTIMES is not JSON: ${(err as Error).message}`);
    }
    if (!Array.isArray(parsed)) throw new ConfigError('RUNTIMES must be a JSON array of {name, url, nodes?, kind?}');
    return new RuntimeRegistry(parsed as RuntimeEntry[]);
  }

  /** The registered runtime a URL names (and, when `node` is given, whose entry admits that node), else why not. */
  resolve(runtimeUrl: string, node?: string): RegisteredRuntime | { refused: RuntimeRefusal } {
    let url: URL;
    try {
      url = parseRuntimeUrl(runtimeUrl);
    } catch {
      return { refused: 'not_a_url' };
    }
    let nodeRefused = false;
    for (const e of this.#entries) {
      if (!this.#urlMatches(e, url)) continue;
      if (node !== undefined && e.nodes !== undefined && !e.nodes.some((n) => n.test(node))) {
        nodeRefused = true;
        continue;
      }
      return { name: e.name, endpoint: endpointOf(url), engine: e.engine };
    }
    return { refused: nodeRefused ? 'node_not_registered' : 'not_registered' };
  }

  /** The registered runtime a URL names, or undefined. */
  lookup(runtimeUrl: string): RegisteredRuntime | undefined {
    const r = this.resolve(runtimeUrl);
    return 'refused' in r ? undefined : r;
  }

  /** The registered runtimes' names, in registration order: the values a metric's `runtime` label takes. */
  names(): string[] {
    return this.#entries.map((e) => e.name);
  }

  /** The endpoints of the entries that name one runtime (no wildcard): these can be polled without a session on them. */
  fixedEndpoints(): string[] {
    return this.#entries.flatMap((e) => (e.endpoint === undefined ? [] : [e.endpoint]));
  }

  #urlMatches(e: CompiledEntry, url: URL): boolean {
    if (url.protocol !== e.protocol || url.port !== e.port || url.pathname.replace(/\/+$/, '') !== e.path) return false;
    if (!e.wildcard) return url.hostname === e.host;
    if (!url.hostname.endsWith(e.host)) return false;
    return LABEL.test(url.hostname.slice(0, url.hostname.length - e.host.length));
  }
}
