// What the engine's tests share: whether the engine's package is installed (they skip, saying how to install it,
// when it is not), a real engine on the generated tiny model behind a real HTTP server, and small request helpers.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nodeLlamaCppEntry } from './llama-api.ts';
import { startEngine, type Engine } from './engine.ts';
import { serveEngine, type EngineServer } from './server.ts';
import { ensureTinyModel } from './tiny-model.ts';

/** A skip reason for node:test when node-llama-cpp is not installed in runtimes/llama-engine, else false. */
export const skipWithoutEngine: string | false =
  nodeLlamaCppEntry() === undefined ? 'node-llama-cpp is not installed in runtimes/llama-engine: run `npm --prefix runtimes/llama-engine run setup` to run these tests' : false;

/** Generated models are kept across runs here, so only the first run pays the (small) generation cost. */
export const TEST_MODEL_CACHE = join(tmpdir(), 'session-reaper-llama-engine-models');

/** A running engine with its server and its own directory for demoted state. */
export interface TestEngine {
  engine: Engine;
  server: EngineServer;
  stateDir: string;
  stop(): Promise<void>;
}

/** Starts a real engine (tiny model, `sequences` sessions of `contextTokens` cells) and serves it on a free port. */
export async function startTestEngine(sequences = 4, contextTokens = 128): Promise<TestEngine> {
  const { path } = await ensureTinyModel(TEST_MODEL_CACHE);
  const stateDir = await mkdtemp(join(tmpdir(), 'llama-engine-test-state-'));
  // llama.cpp's errors reach the test output; its warnings do not (one is expected: see README.md, "What did not work").
  const log = (level: string, message: string) => {
    if (level === 'error' || level === 'fatal') process.stderr.write(`[llama.cpp ${level}] ${message}\n`);
  };
  const engine = await startEngine({ modelPath: path, sequences, contextTokens, threads: 2, stateDir, log });
  const server = await serveEngine(engine, { maxGenerate: 32 });
  return {
    engine,
    server,
    stateDir,
    async stop() {
      await server.stop();
      await engine.close();
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}

/** An answer: status, parsed body and headers. */
export interface Answer {
  status: number;
  body: Record<string, unknown>;
  headers: Headers;
}

/** POSTs JSON to the engine. */
export async function post(url: string, path: string, body: unknown, headers: Record<string, string> = {}): Promise<Answer> {
  const res = await fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Record<string, unknown>, headers: res.headers };
}

/** GETs JSON from the engine. */
export async function get(url: string, path: string): Promise<Answer> {
  const res = await fetch(`${url}${path}`);
  return { status: res.status, body: (await res.json()) as Record<string, unknown>, headers: res.headers };
}

/** The engine's own memory reading over the API: usedBytes is llama_state_get_size. */
export async function usedBytes(url: string): Promise<number> {
  return (await get(url, '/v1/memory')).body.usedBytes as number;
}

/** Runs one completion of `prompt` for a session incarnation, generating `maxTokens` tokens. */
export function complete(url: string, id: string, incarnation: number, prompt: string | number[], maxTokens = 4): Promise<Answer> {
  return post(url, `/v1/sessions/${encodeURIComponent(id)}/complete`, { incarnation, prompt, maxTokens });
}

/** Releases a session incarnation with the key the OpenAPI document requires. */
export function release(url: string, id: string, incarnation: number, key = `${id}:${incarnation}`): Promise<Answer> {
  return post(url, `/v1/sessions/${encodeURIComponent(id)}/release`, { incarnation }, { 'idempotency-key': key });
}

/** Tokens a session holds, as the engine reports them (its sequence's nextTokenIndex). */
export async function tokensHeld(url: string, id: string): Promise<number> {
  return (await get(url, `/v1/sessions/${encodeURIComponent(id)}`)).body.tokens as number;
}
