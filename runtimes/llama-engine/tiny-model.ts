// Generates the reference engine's model: a llama-architecture GGUF with random weights, small enough to create in
// milliseconds and run on a CPU. Its output is gibberish, but llama.cpp builds a real KV cache for it, whose size per
// token follows exactly from the dimensions below; that cache is what the engine's release and demote act on.
// Nothing is downloaded: the file is written here, deterministically (a seeded PRNG), into a cache directory.
//
// The format is written by hand rather than with llama.cpp's gguf-py, so generating needs neither Python packages nor
// a clone of the llama.cpp source. Sources of every rule followed:
// - GGUF v3 layout (header, metadata key/values, tensor infos, 0x00 padding to general.alignment, default 32, tensor
//   data with offsets relative to the data section): ggml-org/ggml docs/gguf.md.
// - Keys the llama loader requires (context_length, embedding_length, block_count, feed_forward_length,
//   attention.head_count, attention.layer_norm_rms_epsilon) and the per-layer tensors it expects, with ggml shapes
//   {ne0, ne1}: ggml-org/llama.cpp src/llama-model.cpp (load_hparams) and src/models/llama.cpp; `output.weight` is
//   optional there ("if output is NULL, init from the input tok embed") and is left out. An extra tensor fails the
//   load ("wrong number of tensors"), so exactly these are written.
// - The SPM ("llama") tokenizer with the 256 byte tokens <0x00>..<0xFF> (token type 6) so that any text tokenizes
//   through byte fallback, and the default special ids unk=0, bos=1, eos=2: ggml-org/llama.cpp src/llama-vocab.cpp.
import { createHash } from 'node:crypto';
import { mkdir, rename, stat, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { seededRandom } from '../../functions/core/seeded-random.ts';

/** The dimensions of the generated model; the KV cache holds 2 × layers × kvHeads × headDim values per token. */
export interface TinyModelSpec {
  layers: number;
  embedding: number;
  heads: number;
  kvHeads: number;
  feedForward: number;
  /** Context length the model declares it was trained for (the engine's per-session context must not exceed it). */
  trainedContext: number;
  seed: number;
}

/** The default model: 2 layers, 64-wide, 4 heads of 16; 512 bytes of f16 KV cache per token. */
export const TINY_MODEL: Readonly<TinyModelSpec> = Object.freeze({ layers: 2, embedding: 64, heads: 4, kvHeads: 4, feedForward: 128, trainedContext: 2048, seed: 13 });

// Bumped whenever tinyModelBytes writes different bytes for the same spec, so a cached file of an older generator is
// never reused.
const GENERATOR_REVISION = 2;

/** Tokens of the byte-level vocabulary: <unk>, <s>, </s>, then one token per byte value. */
export const TINY_VOCAB_SIZE = 3 + 256;

// GGUF metadata value types and ggml tensor types (ggml-org/ggml docs/gguf.md).
const GGUF_UINT32 = 4;
const GGUF_INT32 = 5;
const GGUF_FLOAT32 = 6;
const GGUF_BOOL = 7;
const GGUF_STRING = 8;
const GGUF_ARRAY = 9;
const GGML_TYPE_F32 = 0;
const ALIGNMENT = 32;
// llama.cpp's token types (src/llama-vocab.cpp, LLAMA_TOKEN_ATTR via llama_token_type): normal 1, unknown 2,
// control 3, byte 6.
const TOKEN_UNKNOWN = 2;
const TOKEN_CONTROL = 3;
const TOKEN_BYTE = 6;

type MetaValue = { type: 'bool'; value: boolean } | { type: 'u32'; value: number } | { type: 'f32'; value: number } | { type: 'str'; value: string } | { type: 'strs'; value: string[] } | { type: 'f32s'; value: number[] } | { type: 'i32s'; value: number[] };

interface Tensor {
  name: string;
  /** ggml order: ne0 (the row length) first. */
  shape: number[];
  data: Float32Array;
}

// Grows as it is written; GGUF is little-endian.
class ByteWriter {
  #buf = Buffer.alloc(1 << 16);
  #len = 0;
  get length(): number {
    return this.#len;
  }
  #room(n: number): void {
    if (this.#len + n <= this.#buf.length) return;
    const next = Buffer.alloc(Math.max(this.#buf.length * 2, this.#len + n));
    this.#buf.copy(next, 0, 0, this.#len);
    this.#buf = next;
  }
  u32(v: number): void {
    this.#room(4);
    this.#len = this.#buf.writeUInt32LE(v, this.#len);
  }
  i32(v: number): void {
    this.#room(4);
    this.#len = this.#buf.writeInt32LE(v, this.#len);
  }
  u64(v: number): void {
    this.#room(8);
    this.#len = this.#buf.writeBigUInt64LE(BigInt(v), this.#len);
  }
  f32(v: number): void {
    this.#room(4);
    this.#len = this.#buf.writeFloatLE(v, this.#len);
  }
  str(s: string): void {
    const bytes = Buffer.from(s, 'utf8');
    this.u64(bytes.length);
    this.bytes(bytes);
  }
  bytes(b: Uint8Array): void {
    this.#room(b.length);
    this.#buf.set(b, this.#len);
    this.#len += b.length;
  }
  padTo(alignment: number): void {
    const pad = (alignment - (this.#len % alignment)) % alignment;
    this.#room(pad);
    this.#buf.fill(0, this.#len, this.#len + pad);
    this.#len += pad;
  }
  result(): Buffer {
    return this.#buf.subarray(0, this.#len);
  }
}

function writeMeta(w: ByteWriter, key: string, v: MetaValue): void {
  w.str(key);
  switch (v.type) {
    case 'bool':
      w.u32(GGUF_BOOL);
      w.bytes(Uint8Array.of(v.value ? 1 : 0));
      return;
    case 'u32':
      w.u32(GGUF_UINT32);
      w.u32(v.value);
      return;
    case 'f32':
      w.u32(GGUF_FLOAT32);
      w.f32(v.value);
      return;
    case 'str':
      w.u32(GGUF_STRING);
      w.str(v.value);
      return;
    case 'strs':
      w.u32(GGUF_ARRAY);
      w.u32(GGUF_STRING);
      w.u64(v.value.length);
      for (const s of v.value) w.str(s);
      return;
    case 'f32s':
      w.u32(GGUF_ARRAY);
      w.u32(GGUF_FLOAT32);
      w.u64(v.value.length);
      for (const x of v.value) w.f32(x);
      return;
    case 'i32s':
      w.u32(GGUF_ARRAY);
      w.u32(GGUF_INT32);
      w.u64(v.value.length);
      for (const x of v.value) w.i32(x);
      return;
  }
}

/** The GGUF bytes of a random-weight llama model with a byte-level SPM vocabulary; the same spec gives the same bytes. */
export function tinyModelBytes(spec: TinyModelSpec = TINY_MODEL): Buffer {
  const { layers, embedding, heads, kvHeads, feedForward, trainedContext } = spec;
  if (embedding % heads !== 0) throw new RangeError('embedding must be a multiple of heads');
  if (heads % kvHeads !== 0) throw new RangeError('heads must be a multiple of kvHeads');
  const headDim = embedding / heads;
  const random = seededRandom(spec.seed);
  // Small uniform weights keep activations finite through the layers; norms are 1 so they pass values through.
  const filled = (n: number, scale: number) => Float32Array.from({ length: n }, () => (random() * 2 - 1) * scale);
  const ones = (n: number) => new Float32Array(n).fill(1);
  const w = 1 / Math.sqrt(embedding);
  const tensors: Tensor[] = [
    { name: 'token_embd.weight', shape: [embedding, TINY_VOCAB_SIZE], data: filled(embedding * TINY_VOCAB_SIZE, 1) },
    { name: 'output_norm.weight', shape: [embedding], data: ones(embedding) },
  ];
  for (let i = 0; i < layers; i++) {
    const kv = kvHeads * headDim;
    tensors.push(
      { name: `blk.${i}.attn_norm.weight`, shape: [embedding], data: ones(embedding) },
      { name: `blk.${i}.attn_q.weight`, shape: [embedding, embedding], data: filled(embedding * embedding, w) },
      { name: `blk.${i}.attn_k.weight`, shape: [embedding, kv], data: filled(embedding * kv, w) },
      { name: `blk.${i}.attn_v.weight`, shape: [embedding, kv], data: filled(embedding * kv, w) },
      { name: `blk.${i}.attn_output.weight`, shape: [embedding, embedding], data: filled(embedding * embedding, w) },
      { name: `blk.${i}.ffn_norm.weight`, shape: [embedding], data: ones(embedding) },
      { name: `blk.${i}.ffn_gate.weight`, shape: [embedding, feedForward], data: filled(embedding * feedForward, w) },
      { name: `blk.${i}.ffn_up.weight`, shape: [embedding, feedForward], data: filled(embedding * feedForward, w) },
      { name: `blk.${i}.ffn_down.weight`, shape: [feedForward, embedding], data: filled(feedForward * embedding, 1 / Math.sqrt(feedForward)) },
    );
  }

  const tokens = ['<unk>', '<s>', '</s>', ...Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`)];
  const meta: [string, MetaValue][] = [
    ['general.architecture', { type: 'str', value: 'llama' }],
    ['general.name', { type: 'str', value: `session-reaper tiny llama (random, seed ${spec.seed})` }],
    ['llama.context_length', { type: 'u32', value: trainedContext }],
    ['llama.embedding_length', { type: 'u32', value: embedding }],
    ['llama.block_count', { type: 'u32', value: layers }],
    ['llama.feed_forward_length', { type: 'u32', value: feedForward }],
    ['llama.attention.head_count', { type: 'u32', value: heads }],
    ['llama.attention.head_count_kv', { type: 'u32', value: kvHeads }],
    ['llama.attention.layer_norm_rms_epsilon', { type: 'f32', value: 1e-5 }],
    // The llama graph asserts n_rot == head dim (src/models/llama.cpp), so rotate the whole head.
    ['llama.rope.dimension_count', { type: 'u32', value: headDim }],
    ['tokenizer.ggml.model', { type: 'str', value: 'llama' }],
    ['tokenizer.ggml.tokens', { type: 'strs', value: tokens }],
    ['tokenizer.ggml.scores', { type: 'f32s', value: tokens.map(() => 0) }],
    ['tokenizer.ggml.token_type', { type: 'i32s', value: tokens.map((_, i) => (i === 0 ? TOKEN_UNKNOWN : i < 3 ? TOKEN_CONTROL : TOKEN_BYTE)) }],
    // No "▁" before the first word, so text round-trips through tokenize and detokenize unchanged (llama-vocab.cpp
    // reads tokenizer.ggml.add_space_prefix; node-llama-cpp warns at load when a round trip changes the text).
    ['tokenizer.ggml.add_space_prefix', { type: 'bool', value: false }],
    ['tokenizer.ggml.unknown_token_id', { type: 'u32', value: 0 }],
    ['tokenizer.ggml.bos_token_id', { type: 'u32', value: 1 }],
    ['tokenizer.ggml.eos_token_id', { type: 'u32', value: 2 }],
  ];

  const out = new ByteWriter();
  out.bytes(Buffer.from('GGUF', 'ascii'));
  out.u32(3);
  out.u64(tensors.length);
  out.u64(meta.length);
  for (const [key, value] of meta) writeMeta(out, key, value);
  let offset = 0;
  for (const t of tensors) {
    out.str(t.name);
    out.u32(t.shape.length);
    for (const d of t.shape) out.u64(d);
    out.u32(GGML_TYPE_F32);
    out.u64(offset);
    offset += Math.ceil(t.data.byteLength / ALIGNMENT) * ALIGNMENT;
  }
  out.padTo(ALIGNMENT);
  for (const t of tensors) {
    out.bytes(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    out.padTo(ALIGNMENT);
  }
  return out.result();
}

/** f16 KV cache bytes one token takes in every layer together: K and V rows of kvHeads × headDim halves each. */
export function kvBytesPerToken(spec: TinyModelSpec = TINY_MODEL): number {
  return 2 * spec.layers * spec.kvHeads * (spec.embedding / spec.heads) * 2;
}

/**
 * The path of the model file for `spec` in `cacheDir`, generated first if it is not there yet. The name carries a
 * hash of the spec, so a changed spec never reuses an old file; the file is written under a temporary name and
 * renamed, so a concurrent or interrupted generation never leaves a torn model behind.
 */
export async function ensureTinyModel(cacheDir: string, spec: TinyModelSpec = TINY_MODEL): Promise<{ path: string; generated: boolean; ms: number }> {
  const started = performance.now();
  const tag = createHash('sha256').update(JSON.stringify({ ...spec, revision: GENERATOR_REVISION })).digest('hex').slice(0, 12);
  const path = join(cacheDir, `tiny-llama-${tag}.gguf`);
  try {
    await stat(path);
    return { path, generated: false, ms: performance.now() - started };
  } catch {
    // Not there yet: generate it below.
  }
  await mkdir(cacheDir, { recursive: true });
  const temp = `${path}.${process.pid}.tmp`;
  await writeFile(temp, tinyModelBytes(spec));
  await rename(temp, path);
  return { path, generated: true, ms: performance.now() - started };
}

/** Where generated models are cached unless told otherwise: $XDG_CACHE_HOME (or ~/.cache)/session-reaper. */
export function defaultModelCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'session-reaper');
}

// `npx node runtimes/llama-engine/tiny-model.ts [DIR]`: generates the model into DIR (default the engine's cache) once
// and prints its path, e.g. to serve it with a llama-server (README, "Inference engines").
if (import.meta.main) {
  const dir = process.argv[2] ?? defaultModelCacheDir();
  const { path } = await ensureTinyModel(dir);
  process.stdout.write(`${path}\n`);
}
