// Loads the named Lua scripts (lua/<name>-<numberOfKeys>.lua, or lua/<name>-n.lua for one whose caller says how many
// keys it passes), inlines their `-- @include "x"` helpers, compiles each once on every master so that a broken script
// stops the process at start instead of failing the first event that needs it, and runs them with the built-in
// EVALSHA (EVAL when Redis has lost one).
//
// None is defined on the client as a command (ioredis's defineCommand): ioredis copies every defined command onto
// each Pipeline it builds (Pipeline.js's constructor: two properties and a SHA entry per script), and with
// auto-pipelining it builds one per batch of commands, which at a function's few commands per tick is one per
// command: with 28 scripts that copy was 3-5 % of destroy-dispatch's CPU (issue 16's profiles). And a defined
// command cannot take a variable key count on Redis Cluster (see #evalWithKeys).
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { RedisClient } from './connect.ts';

const LUA_DIR = join(import.meta.dirname, 'lua');
const FILE_NAME = /^([a-z][a-z-]*[a-z])-(\d+|n)\.lua$/;
const INCLUDE = /^-- @include "([a-z-]+)"$/m;

/** One script as sent to Redis. */
export interface ScriptSource {
  /** camelCase command name, e.g. `openSession` for open-session-10.lua. */
  readonly name: string;
  /** How many KEYS it takes; null for a `-n` script, which takes as many as each call passes. */
  readonly numberOfKeys: number | null;
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
      if (!m?.[1] || !m[2]) throw new ScriptLoadError(`${file}: script files are named <name>-<numberOfKeys>.lua or <name>-n.lua`);
      const lua = readFileSync(join(dir, file), 'utf8');
      for (const section of ['KEYS[1]', 'ARGV[1]', 'Returns']) {
        if (!lua.slice(0, 4000).includes(section)) throw new ScriptLoadError(`${file}: header does not document ${section}`);
      }
      return { name: camel(m[1]), numberOfKeys: m[2] === 'n' ? null : Number(m[2]), lua: inline(lua, file, dir) };
    });
}

/** Told how long each script call took, round trip included (the metric catalogue's scriptDuration). */
export interface ScriptTiming {
  record(seconds: number, script: string): void;
}

/** The scripts, compiled on every master of one client, runnable by name. */
export class Scripts {
  readonly #client: RedisClient;
  readonly #sources: ReadonlyMap<string, ScriptSource>;
  readonly #timing: ScriptTiming | undefined;
  /** The SHA1 of each script, by name: what EVALSHA names it by. */
  readonly #shas: ReadonlyMap<string, string>;

  private constructor(client: RedisClient, sources: ScriptSource[], timing: ScriptTiming | undefined) {
    this.#client = client;
    this.#sources = new Map(sources.map((s) => [s.name, s]));
    this.#shas = new Map(sources.map((s) => [s.name, createHash('sha1').update(s.lua).digest('hex')]));
    this.#timing = timing;
  }

  /** Compiles each script on every master; run() then sends them by SHA1. */
  static async register(client: RedisClient, sources: ScriptSource[] = loadScriptSources(), timing?: ScriptTiming): Promise<Scripts> {
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

  /**
   * Runs a script through the built-in EVALSHA (EVAL if Redis lost it: a restart, a failover). Not a command defined
   * on the client (see the file's head): besides its cost, a defined command would take a `-n` script's variable key
   * count as its first argument, and on Redis Cluster ioredis groups auto-pipelined custom commands by the slot of
   * that first argument, which must therefore be a key. EVALSHA's keys are known to ioredis, so it routes (and
   * auto-pipelines) them by their slot: ioredis 6 groups an auto-pipelined command by its first key
   * (autoPipelining.js, getFirstKeyForCommand); older auto-pipelining grouped by the first argument, which for
   * EVALSHA is the SHA1, so keep ioredis at 6 or later (session-scripts.test.ts runs every script on a cluster).
   */
  async #evalWithKeys(source: ScriptSource, keys: readonly string[], args: readonly (string | number)[]): Promise<unknown> {
    try {
      return await this.#client.evalsha(this.#shas.get(source.name)!, keys.length, ...keys, ...args);
    } catch (err) {
      if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
      return await this.#client.eval(source.lua, keys.length, ...keys, ...args);
    }
  }

  /** Runs a script; `keys` must be exactly the number its file name declares (any number for a `-n` script). */
  async run(name: string, keys: readonly string[], args: readonly (string | number)[]): Promise<unknown[]> {
    const source = this.#sources.get(name);
    if (!source) throw new ScriptLoadError(`no script named ${name}`);
    if (source.numberOfKeys !== null && keys.length !== source.numberOfKeys) throw new ScriptLoadError(`${name} takes ${source.numberOfKeys} keys, got ${keys.length}`);
    const started = this.#timing === undefined ? 0 : performance.now();
    let reply: unknown;
    try {
      reply = await this.#evalWithKeys(source, keys, args);
    } finally {
      this.#timing?.record((performance.now() - started) / 1000, name);
    }
    if (!Array.isArray(reply)) throw new ScriptLoadError(`${name} returned ${typeof reply}, expected an array`);
    return reply as unknown[];
  }
}
