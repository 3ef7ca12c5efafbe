// The reference engine's state: one llama.cpp context whose KV cache is split in N sequences (node-llama-cpp creates
// them with kvUnified=false, so each sequence owns its own range of cells), and the sessions that hold them. Every
// operation that changes the KV cache runs alone (one queue), so a before/after reading of the engine's state size
// around it measures that operation and nothing else: that difference is what release and demote report as freed.
//
// Bytes: the engine's own reading is llama.cpp's llama_state_get_size (node-llama-cpp `context.stateSize`), the size
// of the context's serialized state, which counts the occupied KV cells only (ggml-org/llama.cpp
// src/llama-kv-cache.cpp state_write: per stream a cell count, per cell its position and sequence ids, per layer the
// K and V rows of those cells) plus the last logits. Erasing a sequence's cells lowers it by their K/V rows and
// metadata. llama.cpp allocates the whole KV buffer when the context is created and never returns it to the OS
// (llama_kv_cache's constructor allocates and clears it; seq_rm only marks cells free), so "freed" means KV capacity
// returned to the engine's pool, not memory returned to the device or the OS.
import { mkdtemp, rm, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LlamaContext, LlamaContextSequence, LlamaModel, Llama, LlamaLogLevel, Token } from './llama-api.ts';
import { loadNodeLlamaCpp } from './llama-api.ts';
import { ApiRefusal } from '../../functions/core/errors.ts';

/** A refused engine operation with the HTTP status and problem code it is answered with. */
export class EngineRefusal extends ApiRefusal {
  override name = 'EngineRefusal';
}

/** What the engine holds for one session: its KV in a sequence (resident) or in a file (demoted). */
export interface SessionView {
  sessionId: string;
  incarnation: number;
  state: 'resident' | 'demoted';
  /** Tokens in the KV cache (resident) or in the saved state (demoted). */
  tokens: number;
  /** KV bytes of those tokens, computed as tokens × kvBytesPerToken (llama.cpp has no per-sequence size reading). */
  bytes: number;
  /** Size of the demoted state's file, as llama.cpp reported writing it; 0 when resident. */
  offloadedBytes: number;
  /**
   * Operations that changed this session's KV (completions, demotes, restores) since it was first held: an observer
   * that reads the engine before and after its own call knows from it whether anything else touched the session.
   */
  operations: number;
}

interface Resident {
  kind: 'resident';
  incarnation: number;
  sequence: LlamaContextSequence;
}

interface Demoted {
  kind: 'demoted';
  incarnation: number;
  file: string;
  fileBytes: number;
  tokens: number;
}

type Held = Resident | Demoted;

/** Options of startEngine. */
export interface EngineOptions {
  modelPath: string;
  /** Sessions that can hold KV at once: the context's sequences. */
  sequences: number;
  /** KV cells of each sequence (node-llama-cpp's contextSize is per sequence, padded up). */
  contextTokens: number;
  /** Threads llama.cpp evaluates with (0: as many as the machine has). */
  threads: number;
  /** Where demoted sessions' state files go; a fresh temporary directory (removed on close) when undefined. */
  stateDir?: string;
  /** Receives llama.cpp's and node-llama-cpp's own log lines. */
  log?: (level: LlamaLogLevel, message: string) => void;
}

/** The running engine: its operations throw EngineRefusal for the outcomes the API answers with a problem. */
export interface Engine {
  /** The model's KV bytes per token, from its GGUF dimensions and the cache's element type. */
  readonly kvBytesPerToken: number;
  /** KV capacity of the whole context: cells × kvBytesPerToken. */
  readonly totalBytes: number;
  /** Cells each session may hold. */
  readonly contextTokens: number;
  readonly vocabularySize: number;
  /** llama_state_get_size now. */
  stateSize(): number;
  memory(): { totalBytes: number; usedBytes: number; sessions: number };
  session(sessionId: string): SessionView | undefined;
  sessions(): SessionView[];
  complete(sessionId: string, incarnation: number, prompt: Token[] | string, maxTokens: number): Promise<{ tokens: Token[]; text: string; contextTokens: number }>;
  /** Erases the incarnation's KV (or drops its demoted file): freedBytes is the drop of stateSize. */
  release(sessionId: string, incarnation: number): Promise<{ freedBytes: number; offloadedBytes: number }>;
  /** Saves the incarnation's KV to a file, then erases it. */
  demote(sessionId: string, incarnation: number): Promise<{ offloadedBytes: number; freedBytes: number }>;
  /** Loads a demoted incarnation's file back into a free sequence. */
  restore(sessionId: string, incarnation: number): Promise<{ restoredBytes: number; tokens: number }>;
  close(): Promise<void>;
}

// GgmlType values node-llama-cpp reports for the KV cache (bindings/types.d.ts GgmlType) and their element sizes.
const KV_ELEMENT_BYTES: Record<number, number> = { 0: 4, 1: 2, 30: 2 };

function metaNumber(metadata: Record<string, unknown>, path: string): number | undefined {
  let node: unknown = metadata;
  for (const part of path.split('.')) {
    if (typeof node !== 'object' || node === null) return undefined;
    node = (node as Record<string, unknown>)[part];
  }
  return typeof node === 'number' ? node : undefined;
}

/**
 * KV bytes one token takes across all layers: K and V rows of kvHeads × headDim elements per layer
 * (ggml-org/llama.cpp src/llama-kv-cache.cpp: per layer k/v tensors of n_embd_k_gqa × kv_size, with
 * n_embd_k_gqa = head_dim × n_head_kv), read from the model's GGUF keys of its architecture.
 */
function modelKvBytesPerToken(model: LlamaModel, context: LlamaContext): number {
  const meta = model.fileInfo.metadata;
  const arch = (meta.general as Record<string, unknown> | undefined)?.architecture;
  if (typeof arch !== 'string') throw new Error('the model has no general.architecture');
  const layers = metaNumber(meta, `${arch}.block_count`);
  const embedding = metaNumber(meta, `${arch}.embedding_length`);
  const heads = metaNumber(meta, `${arch}.attention.head_count`);
  const kvHeads = metaNumber(meta, `${arch}.attention.head_count_kv`) ?? heads;
  if (layers === undefined || embedding === undefined || heads === undefined || kvHeads === undefined) throw new Error(`the model lacks ${arch} dimensions`);
  const keyLength = metaNumber(meta, `${arch}.attention.key_length`) ?? embedding / heads;
  const valueLength = metaNumber(meta, `${arch}.attention.value_length`) ?? embedding / heads;
  const k = KV_ELEMENT_BYTES[context.kvCacheKeyType];
  const v = KV_ELEMENT_BYTES[context.kvCacheValueType];
  if (k === undefined || v === undefined) throw new Error(`KV cache types ${context.kvCacheKeyType}/${context.kvCacheValueType} are not F32, F16 or BF16`);
  return layers * kvHeads * (keyLength * k + valueLength * v);
}

/** Loads the model, creates the context and its sequences, and resolves once the engine can serve. */
export async function startEngine(opts: EngineOptions): Promise<Engine> {
  const lib = await loadNodeLlamaCpp();
  // gpu: false is "Disable any GPU support and only use the CPU"; build: 'never' fails instead of compiling
  // llama.cpp when no prebuilt binary fits (bindings/getLlama.d.ts).
  const llama: Llama = await lib.getLlama({ gpu: false, build: 'never', logLevel: 'warn', ...(opts.log ? { logger: opts.log } : {}) });
  let model: LlamaModel | undefined;
  let context: LlamaContext | undefined;
  try {
    model = await llama.loadModel({ modelPath: opts.modelPath });
    if (opts.contextTokens > model.trainContextSize) throw new RangeError(`contextTokens ${opts.contextTokens} exceeds the model's trained context ${model.trainContextSize}`);
    context = await model.createContext({ contextSize: opts.contextTokens, sequences: opts.sequences, threads: opts.threads });
  } catch (err) {
    await context?.dispose();
    await model?.dispose();
    await llama.dispose();
    throw err;
  }
  const ctx = context;
  const mdl = model;
  // All sequences are taken once and pooled here: node-llama-cpp returns a disposed sequence's id to its own pool
  // asynchronously (LlamaContext._reclaimUnusedSequenceId runs under a lock later), so a session opened right after
  // a release could find none free. A cleared sequence is as good as a new one.
  const free: LlamaContextSequence[] = Array.from({ length: opts.sequences }, () => ctx.getSequence());
  const held = new Map<string, Held>();
  const ownStateDir = opts.stateDir === undefined;
  const stateDir = opts.stateDir ?? (await mkdtemp(join(tmpdir(), 'llama-engine-state-')));
  const kvBytesPerToken = modelKvBytesPerToken(mdl, ctx);
  const totalBytes = ctx.getAllocatedContextSize() * kvBytesPerToken;
  const vocabularySize = (mdl.fileInfo.metadata.tokenizer as { ggml?: { tokens?: unknown[] } } | undefined)?.ggml?.tokens?.length ?? 0;
  let fileCounter = 0;
  let closed = false;

  // One operation at a time: KV changes and the state-size readings around them must not interleave.
  let queue: Promise<unknown> = Promise.resolve();
  function serially<T>(op: () => Promise<T>): Promise<T> {
    const run = queue.then(() => {
      if (closed) throw new EngineRefusal(503, 'unavailable', 'the engine is stopping');
      return op();
    });
    queue = run.catch(() => undefined);
    return run;
  }

  // The record for this incarnation, or the refusal the API answers: 404 when nothing (or only an older incarnation)
  // is held, 409 when a newer incarnation is held.
  function heldFor(sessionId: string, incarnation: number): Held {
    const h = held.get(sessionId);
    if (!h || h.incarnation < incarnation) throw new EngineRefusal(404, 'session_not_found', `engine holds nothing for ${sessionId}:${incarnation}`);
    if (h.incarnation > incarnation) throw new EngineRefusal(409, 'incarnation_superseded', `engine holds newer incarnation ${h.incarnation}`, { heldIncarnation: h.incarnation });
    return h;
  }

  // Operations on each held session's KV (SessionView.operations), forgotten with the session.
  const operations = new Map<string, number>();
  const operated = (sessionId: string) => operations.set(sessionId, (operations.get(sessionId) ?? 0) + 1);

  function view(sessionId: string, h: Held): SessionView {
    const tokens = h.kind === 'resident' ? h.sequence.nextTokenIndex : h.tokens;
    return {
      sessionId, incarnation: h.incarnation, state: h.kind, tokens, bytes: h.kind === 'resident' ? tokens * kvBytesPerToken : 0,
      offloadedBytes: h.kind === 'demoted' ? h.fileBytes : 0, operations: operations.get(sessionId) ?? 0,
    };
  }

  async function dropFile(file: string): Promise<void> {
    await unlink(file).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }

  // Erases a resident session's KV and returns its sequence to the pool; answers the measured drop of the state size.
  async function erase(h: Resident): Promise<number> {
    const before = ctx.stateSize;
    await h.sequence.clearHistory();
    const freed = before - ctx.stateSize;
    free.push(h.sequence);
    return freed;
  }

  return {
    kvBytesPerToken,
    totalBytes,
    contextTokens: ctx.contextSize,
    vocabularySize,
    stateSize: () => ctx.stateSize,
    memory: () => ({ totalBytes, usedBytes: ctx.stateSize, sessions: [...held.values()].filter((h) => h.kind === 'resident').length }),
    session(sessionId) {
      const h = held.get(sessionId);
      return h && view(sessionId, h);
    },
    sessions: () => [...held.entries()].map(([id, h]) => view(id, h)),

    complete(sessionId, incarnation, prompt, maxTokens) {
      return serially(async () => {
        const tokens = typeof prompt === 'string' ? mdl.tokenize(prompt) : prompt;
        if (tokens.length === 0) throw new EngineRefusal(400, 'invalid_request', 'the prompt has no tokens');
        let h = held.get(sessionId);
        if (h && h.incarnation > incarnation) throw new EngineRefusal(409, 'incarnation_superseded', `engine holds newer incarnation ${h.incarnation}`, { heldIncarnation: h.incarnation });
        if (h?.kind === 'demoted' && h.incarnation === incarnation) throw new EngineRefusal(409, 'session_demoted', `${sessionId}:${incarnation} is demoted; restore it first`);
        if (h && h.incarnation < incarnation) {
          // A newer incarnation: the session was restarted, so the old incarnation's KV goes.
          if (h.kind === 'resident') await erase(h);
          else await dropFile(h.file);
          held.delete(sessionId);
          operations.delete(sessionId);
          h = undefined;
        }
        let sequence: LlamaContextSequence;
        if (h?.kind === 'resident') sequence = h.sequence;
        else {
          const next = free.pop();
          if (next === undefined) throw new EngineRefusal(507, 'insufficient_memory', `all ${opts.sequences} sequences are held`);
          sequence = next;
        }
        // Context shift would silently erase the session's oldest tokens; refuse instead.
        if (sequence.nextTokenIndex + tokens.length + maxTokens > sequence.contextSize) {
          if (h === undefined) free.push(sequence);
          throw new EngineRefusal(507, 'insufficient_memory', `${sequence.nextTokenIndex} + ${tokens.length} + ${maxTokens} tokens exceed the session's ${sequence.contextSize} cells`);
        }
        if (h === undefined) held.set(sessionId, { kind: 'resident', incarnation, sequence });
        operated(sessionId);
        const generated: Token[] = [];
        if (maxTokens === 0) await sequence.evaluateWithoutGeneratingNewTokens(tokens);
        else {
          for await (const t of sequence.evaluate(tokens, { temperature: 0 })) {
            generated.push(t);
            if (generated.length >= maxTokens) break;
          }
        }
        return { tokens: generated, text: mdl.detokenize(generated), contextTokens: sequence.nextTokenIndex };
      });
    },

    release(sessionId, incarnation) {
      return serially(async () => {
        const h = heldFor(sessionId, incarnation);
        held.delete(sessionId);
        operations.delete(sessionId);
        if (h.kind === 'demoted') {
          await dropFile(h.file);
          return { freedBytes: 0, offloadedBytes: h.fileBytes };
        }
        return { freedBytes: await erase(h), offloadedBytes: 0 };
      });
    },

    demote(sessionId, incarnation) {
      return serially(async () => {
        const h = heldFor(sessionId, incarnation);
        if (h.kind === 'demoted') throw new EngineRefusal(409, 'already_demoted', `${sessionId}:${incarnation} is already demoted`);
        const file = join(stateDir, `${++fileCounter}.kv`);
        const tokens = h.sequence.nextTokenIndex;
        const { fileSize } = await h.sequence.saveStateToFile(file);
        const freedBytes = await erase(h);
        held.set(sessionId, { kind: 'demoted', incarnation, file, fileBytes: fileSize, tokens });
        operated(sessionId);
        return { offloadedBytes: fileSize, freedBytes };
      });
    },

    restore(sessionId, incarnation) {
      return serially(async () => {
        const h = heldFor(sessionId, incarnation);
        if (h.kind === 'resident') throw new EngineRefusal(409, 'not_demoted', `${sessionId}:${incarnation} is resident`);
        const sequence = free.pop();
        if (sequence === undefined) throw new EngineRefusal(507, 'insufficient_memory', `all ${opts.sequences} sequences are held`);
        const before = ctx.stateSize;
        try {
          await sequence.loadStateFromFile(h.file, { acceptRisk: true });
        } catch (err) {
          free.push(sequence);
          throw err;
        }
        const restoredBytes = ctx.stateSize - before;
        await dropFile(h.file);
        held.set(sessionId, { kind: 'resident', incarnation, sequence });
        operated(sessionId);
        return { restoredBytes, tokens: sequence.nextTokenIndex };
      });
    },

    async close() {
      await serially(() => Promise.resolve());
      closed = true;
      await ctx.dispose();
      await mdl.dispose();
      await llama.dispose();
      if (ownStateDir) await rm(stateDir, { recursive: true, force: true });
    },
  };
}
