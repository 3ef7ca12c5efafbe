// Rebuilds chat sessions from the Mooncake trace, which has no session id: a follow-up turn re-sends the earlier
// turns as its prefix, and the trace's hash_ids are a prefix chain of 512-token blocks, so request B continues an
// earlier request A when A's *full* blocks (hash_ids[0 .. floor(A.input_length / 512) - 1], at least 2 of them) are a
// prefix of B's hash_ids (tests/fixtures/traces/README.md). Each request is linked to its longest such predecessor,
// then the most recent; a session is one tree of links, its turns in arrival order.
import { readFile } from 'node:fs/promises';

/** The trace's block size in tokens. */
export const BLOCK_TOKENS = 512;

/** Fewest full blocks a predecessor must have: block 0 is the system prompt every request shares. */
export const MIN_SHARED_BLOCKS = 2;

/** Where the shipped trace lies. */
export const MOONCAKE_TRACE_URL = new URL('../../fixtures/traces/mooncake_conversation_trace.jsonl', import.meta.url);

/** One request of the trace, numbered by its line (arrival order). */
export interface TraceRequest {
  readonly index: number;
  /** Milliseconds since the trace started (resolution about a second). */
  readonly arrivalMs: number;
  readonly inputTokens: number;
  readonly outputTokens: number;
  readonly hashIds: readonly number[];
}

/** A rebuilt conversation: its requests in arrival order, each with the request it continues. */
export interface Session {
  readonly id: number;
  readonly turns: readonly TraceRequest[];
  /** parents[i] is the index (in the trace) of the request turns[i] continues; undefined for the first turn. */
  readonly parents: readonly (number | undefined)[];
  /** What the trace lacks and a synthetic workload carries (synthetic.ts): events between turns, and how it ends. */
  readonly synthetic?: SyntheticExtras;
}

/** A user's activity between turns that is not a turn: typing (before a message), the model's output, a hold. */
export interface SideEvent {
  readonly atMs: number;
  readonly kind: 'input' | 'edit' | 'cursor' | 'hold';
  readonly text?: string;
  /** For a hold: how long it lasts (ms). */
  readonly holdMs?: number;
}

/** A synthetic session's extra events and its ground truth. */
export interface SyntheticExtras {
  /** Events other than the turns, in time order. */
  readonly events: readonly SideEvent[];
  /** Each turn's message text and its answer's (sent as `output` activity when the answer completes). */
  readonly prompts: readonly string[];
  readonly replies: readonly string[];
  /** What the quiet after each turn is, in truth: the user thinking (and typing) or a tool call under a hold. */
  readonly quietCauses: readonly ('thinking' | 'tool call')[];
  /** When the session is ended by what its pipeline sends (close, release, heartbeats gone): for every policy alike. */
  readonly endAtMs?: number;
}

/** The links and the sessions they make. */
export interface RebuiltTrace {
  readonly requests: readonly TraceRequest[];
  /** The request each request continues (by trace index), or undefined. */
  readonly parentOf: readonly (number | undefined)[];
  /** The session of each request. */
  readonly sessionOf: readonly number[];
  /** Sessions ordered by their first turn's arrival. */
  readonly sessions: readonly Session[];
}

/** Parses the trace's JSON lines; a malformed line throws, naming its number. */
export function parseTrace(text: string): TraceRequest[] {
  const requests: TraceRequest[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const raw = JSON.parse(line) as { timestamp?: unknown; input_length?: unknown; output_length?: unknown; hash_ids?: unknown };
    const { timestamp, input_length: input, output_length: output, hash_ids: hashIds } = raw;
    if (
      typeof timestamp !== 'number' || typeof input !== 'number' || typeof output !== 'number' ||
      !Array.isArray(hashIds) || !hashIds.every((h) => typeof h === 'number')
    ) {
      throw new Error(`trace line ${requests.length + 1} is not a request: ${line.slice(0, 120)}`);
    }
    requests.push({ index: requests.length, arrivalMs: timestamp, inputTokens: input, outputTokens: output, hashIds });
  }
  for (let i = 1; i < requests.length; i++) {
    if (requests[i]!.arrivalMs < requests[i - 1]!.arrivalMs) throw new Error(`trace line ${i + 1} arrives before the line above it`);
  }
  return requests;
}

/** Reads and parses the shipped Mooncake trace. */
export async function loadMooncakeTrace(): Promise<TraceRequest[]> {
  return parseTrace(await readFile(MOONCAKE_TRACE_URL, 'utf8'));
}

/** How many of a request's blocks are full, i.e. can be a later request's shared prefix. */
export function fullBlocks(request: Pick<TraceRequest, 'inputTokens' | 'hashIds'>): number {
  return Math.min(request.hashIds.length, Math.floor(request.inputTokens / BLOCK_TOKENS));
}

// A trie of block-id prefixes; `last` is the latest request whose full blocks end at this node.
interface PrefixNode {
  children: Map<number, PrefixNode>;
  last?: number;
}

/**
 * The request each request continues: the earlier request (in arrival order) with the most full blocks that are a
 * prefix of its hash_ids, the most recent among equals; undefined when none has at least MIN_SHARED_BLOCKS.
 */
export function linkPredecessors(requests: readonly TraceRequest[]): (number | undefined)[] {
  const root: PrefixNode = { children: new Map() };
  const parentOf: (number | undefined)[] = [];
  for (const request of requests) {
    let node = root;
    let parent: number | undefined;
    for (let depth = 1; depth <= request.hashIds.length; depth++) {
      const child = node.children.get(request.hashIds[depth - 1]!);
      if (child === undefined) break;
      node = child;
      if (depth >= MIN_SHARED_BLOCKS && node.last !== undefined) parent = node.last;
    }
    parentOf.push(parent);
    const full = fullBlocks(request);
    if (full < MIN_SHARED_BLOCKS) continue;
    node = root;
    for (let depth = 1; depth <= full; depth++) {
      const id = request.hashIds[depth - 1]!;
      let child = node.children.get(id);
      if (child === undefined) {
        child = { children: new Map() };
        node.children.set(id, child);
      }
      node = child;
    }
    node.last = request.index;
  }
  return parentOf;
}

/** Links every request to its predecessor and groups the links into sessions. */
export function rebuildSessions(requests: readonly TraceRequest[]): RebuiltTrace {
  requests.forEach((r, i) => {
    if (r.index !== i) throw new Error(`request ${i} carries index ${r.index}: number requests by their line`);
  });
  const parentOf = linkPredecessors(requests);
  const sessionOf: number[] = [];
  const turns: TraceRequest[][] = [];
  const parents: (number | undefined)[][] = [];
  for (const request of requests) {
    const parent = parentOf[request.index];
    const session = parent === undefined ? turns.length : sessionOf[parent]!;
    if (session === turns.length) {
      turns.push([]);
      parents.push([]);
    }
    sessionOf.push(session);
    turns[session]!.push(request);
    parents[session]!.push(parent);
  }
  const sessions = turns.map((t, id) => ({ id, turns: t, parents: parents[id]! }));
  return { requests, parentOf, sessionOf, sessions };
}
