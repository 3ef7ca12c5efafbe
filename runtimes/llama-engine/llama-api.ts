// The part of node-llama-cpp's v3 API the engine uses, typed here and loaded with a dynamic import, so the repository's
// typecheck and test run pass without the engine's package installed (it lives in this folder's own node_modules,
// installed on demand; see README.md). Each member names where node-llama-cpp defines it (the installed
// dist/*.d.ts of node-llama-cpp@3.22.1; source in withcatai/node-llama-cpp src/).
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

/** A token id of the model's vocabulary. */
export type Token = number;

/** bindings/types.d.ts LlamaLogLevel (a string enum). */
export type LlamaLogLevel = 'disabled' | 'fatal' | 'error' | 'warn' | 'info' | 'log' | 'debug';

/** evaluator/LlamaContext/LlamaContext.d.ts LlamaContextSequence: one sequence (its own KV cells) of a context. */
export interface LlamaContextSequence {
  /** Tokens held in the KV cache: the next write position. */
  readonly nextTokenIndex: number;
  /** Cells this sequence may hold (the per-sequence context size). */
  readonly contextSize: number;
  /** Evaluates `tokens`, then yields generated tokens until the caller stops iterating. */
  evaluate(tokens: Token[], options?: { temperature?: number; seed?: number }): AsyncGenerator<Token, void>;
  /** Evaluates `tokens` into the KV cache without sampling. */
  evaluateWithoutGeneratingNewTokens(tokens: Token[]): Promise<void>;
  /** Erases every token of the sequence from the KV cache (llama_memory_seq_rm on all its positions). */
  clearHistory(): Promise<void>;
  /** Writes the sequence's KV cells and tokens to a file (llama_state_seq_save_file); answers the bytes written. */
  saveStateToFile(filePath: string): Promise<{ fileSize: number }>;
  /** Reads a file written by saveStateToFile back into this sequence (llama_state_seq_load_file). */
  loadStateFromFile(filePath: string, acceptRisk: { acceptRisk: true }): Promise<void>;
}

/** evaluator/LlamaContext/LlamaContext.d.ts LlamaContext: one llama.cpp context, its KV cache split in sequences. */
export interface LlamaContext {
  /** llama_state_get_size: the bytes of the context's serialized state; grows and shrinks with occupied KV cells. */
  readonly stateSize: number;
  /** Per-sequence context size, after padding. */
  readonly contextSize: number;
  /** ggml type of the K and V caches (bindings/types.d.ts GgmlType: 0 = F32, 1 = F16). */
  readonly kvCacheKeyType: number;
  readonly kvCacheValueType: number;
  /** llama_n_ctx: KV cells of the whole context (every sequence's together). */
  getAllocatedContextSize(): number;
  getSequence(): LlamaContextSequence;
  dispose(): Promise<void>;
}

/** evaluator/LlamaModel/LlamaModel.d.ts LlamaModel. */
export interface LlamaModel {
  readonly trainContextSize: number;
  /** The GGUF metadata, keyed by dotted path segments (gguf/types/GgufFileInfoTypes.d.ts). */
  readonly fileInfo: { metadata: Record<string, unknown> };
  tokenize(text: string): Token[];
  detokenize(tokens: readonly Token[]): string;
  createContext(options: { contextSize: number; sequences: number; threads?: number }): Promise<LlamaContext>;
  dispose(): Promise<void>;
}

/** bindings/Llama.d.ts Llama: the loaded native binding. */
export interface Llama {
  readonly gpu: string | false;
  loadModel(options: { modelPath: string }): Promise<LlamaModel>;
  dispose(): Promise<void>;
}

/** What the engine imports from the package (bindings/getLlama.d.ts getLlama). */
export interface NodeLlamaCpp {
  getLlama(options: { gpu: false; build: 'never'; logLevel?: LlamaLogLevel; logger?: (level: LlamaLogLevel, message: string) => void }): Promise<Llama>;
}

/** Where node-llama-cpp resolves from this folder, or undefined when its package is not installed here. */
export function nodeLlamaCppEntry(): string | undefined {
  try {
    return createRequire(import.meta.url).resolve('node-llama-cpp');
  } catch {
    return undefined;
  }
}

/** Loads node-llama-cpp from this folder's node_modules; throws, saying how to install it, when it is missing. */
export async function loadNodeLlamaCpp(): Promise<NodeLlamaCpp> {
  const entry = nodeLlamaCppEntry();
  if (entry === undefined) throw new Error('node-llama-cpp is not installed: run `npm --prefix runtimes/llama-engine run setup` (see runtimes/llama-engine/README.md)');
  return (await import(pathToFileURL(entry).href)) as NodeLlamaCpp;
}
