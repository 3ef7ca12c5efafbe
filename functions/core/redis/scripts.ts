// Loads the named Lua scripts (lua/<name>-<numberOfKeys>.lua), inlines their `-- @include "x"` helpers, defines
// them as commands on a client, and compiles each once on every master so that a broken script stops the process
// at start instead of failing the first event that needs it.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { RedisClient } from './connect.ts';

const LUA_DIR = join(import.meta.dirname, 'lua');
const FILE_NAME = /^([a-z][a-z-]*[a-z])-(\d+)\.lua$/;
const INCLUDE = /^-- @include "([a-z-]+)"$/m;

/** One script as sent to Redis. */
export interface ScriptSource {
  /** camelCase command name, e.g. `openSession` for open-session-7.lua. */
  readonly name: string;
  /** How many KEYS it takes. */
  readonly numberOfKeys: number;
  readonly lua: string;
}

/** A script file that cannot be loaded (bad name, missing header or include). */
export class ScriptLoadError extends Error {
  override name = 'ScriptLoadError';
}

function camel(kebab: string): string {
  return kebab.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

function inline(lua: string, file: string, dir: string): string {
  let out = lua;
  for (let m = INCLUDE.exec(out); m; m = INCLUDE.exec(out)) {
    let body: string;
    try {
      body = readFileSync(join(dir, 'includes', `${m[1]}.lua`), 'utf8');
    } catch (cause) {
      throw new ScriptLoadError(`${file}: include "${m[1]}" not found`, { cause });
    }
    out = out.replace(m[0], () => body);
  }
  return out;
}

/** Reads every script of the folder, checking that each opens with a header documenting KEYS, ARGV and returns. */
export function loadScriptSources(dir: string = LUA_DIR): ScriptSource[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.lua'))
    .sort()
    .map((file) => {
      const m = FILE_NAME.exec(file);
      if (!m?.[1] || !m[2]) throw new ScriptLoadError(`${file}: script files are named <name>-<numberOfKeys>.lua`);
      const lua = readFileSync(join(dir, file), 'utf8');
      for (const section of ['KEYS[1]', 'ARGV[1]', 'Returns']) {
        if (!lua.slice(0, 4000).includes(section)) throw new ScriptLoadError(`${file}: header does not document ${section}`);
      }
      return { name: camel(m[1]), numberOfKeys: Number(m[2]), lua: inline(lua, file, dir) };
    });
}

type ScriptFn = (...keysAndArgs: (string | number)[]) => Promise<unknown>;

/** The scripts defined on one client, callable by name. */
/** Told how long each script call took, round trip included (the metric catalogue's scriptDuration). */
export interface ScriptTiming {
  record(seconds: number, script: string): void;
}

export class Scripts {
  readonly #client: RedisClient;
  readonly #sources: ReadonlyMap<string, ScriptSource>;
  readonly #timing: ScriptTiming | undefined;

  private constructor(client: RedisClient, sources: ScriptSource[], timing: ScriptTiming | undefined) {
    this.#client = client;
    this.#sources = new Map(sources.map((s) => [s.name, s]));
    this.#timing = timing;
  }

  /** Defines every script on the client (EVALSHA with EVAL fallback, per ioredis) and compiles each on every master. */
  static async register(client: RedisClient, sources: ScriptSource[] = loadScriptSources(), timing?: ScriptTiming): Promise<Scripts> {
    for (const s of sources) client.defineCommand(s.name, { numberOfKeys: s.numberOfKeys, lua: s.lua });
    const masters = 'nodes' in client && typeof client.nodes === 'function' ? client.nodes('master') : [client];
    for (const node of masters) {
      for (const s of sources) {
        try {
          await node.script('LOAD', s.lua);
        } catch (cause) {
          throw new ScriptLoadError(`Redis refused script ${s.name}: ${(cause as Error).message}`, { cause });
        }
      }
    }
    return new Scripts(client, sources, timing);
  }

  /** Runs a script; `keys` must be exactly the number its file name declares (any number for a batch script). */
  async run(name: string, keys: readonly string[], args: readonly (string | number)[]): Promise<unknown[]> {
    const source = this.#sources.get(name);
    if (!source) throw new ScriptLoadError(`no script named ${name}`);
    if (keys.length !== source.numberOfKeys) {
      throw new ScriptLoadError(`${name} takes ${source.numberOfKeys} keys, got ${keys.length}`);
    }
    const fn = (this.#client as unknown as Record<string, ScriptFn>)[name];
    if (!fn) throw new ScriptLoadError(`script ${name} is not defined on this client`);
    const started = this.#timing === undefined ? 0 : performance.now();
    let reply: unknown;
    try {
      reply = await fn.call(this.#client, ...keys, ...args);
    } finally {
      this.#timing?.record((performance.now() - started) / 1000, name);
    }
    if (!Array.isArray(reply)) throw new ScriptLoadError(`${name} returned ${typeof reply}, expected an array`);
    return reply as unknown[];
  }
}
