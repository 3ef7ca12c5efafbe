// Lexical continuity: the fallback the semantic signal uses when a message carries no embedding.
//
// Choice: cosine similarity of binary character-trigram sets (the Ochiai coefficient, |A∩B| / √(|A|·|B|)), with each
// word padded by spaces before it is cut into trigrams. Why:
// - trigrams survive inflection and typos ("deploy" / "deployment" / "deplyo" share most of theirs) and need no
//   tokenizer, stemmer or stop-word list, so they work the same for any language written with letters or digits;
// - cosine divides by the geometric mean of the two sizes where Jaccard divides by the union, so a short follow-up
//   ("and the tests?") after a long message is not scored as unrelated merely for being short;
// - a set is a bounded thing to keep between events: we store a bottom-k sketch (the k smallest 32-bit hashes) and
//   the set's size, from which the overlap of two sets is estimated without bias (exact while both sets fit in k).
// Unrelated texts in one language still share common trigrams ("the", "ing"), so the caller subtracts a small
// noise floor (ScoringPolicy.semantic.lexicalFloor) before using the value.

/** Hashes kept per text: enough for a good overlap estimate, small enough to store with every session. */
export const LEXICAL_SKETCH_SIZE = 128;

/** Longest prefix of a text that is read; bounds the work one event can cause. */
export const LEXICAL_MAX_TEXT_CHARS = 20_000;

/** A bounded summary of a text's trigram set: its distinct-trigram count and its smallest hashes, ascending. */
export interface TrigramSketch {
  /** Distinct trigrams (by hash) in the whole text. */
  size: number;
  /** The min(size, LEXICAL_SKETCH_SIZE) smallest trigram hashes, ascending, unsigned 32-bit. */
  hashes: number[];
}

// FNV-1a, 32-bit: tiny, fast, well spread for short strings; collisions only blur the estimate slightly.
function fnv1a(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}

/** Builds the trigram sketch of a text; a text with no letters or digits gives an empty sketch. */
export function sketchText(text: string, sketchSize: number = LEXICAL_SKETCH_SIZE): TrigramSketch {
  const words = text.slice(0, LEXICAL_MAX_TEXT_CHARS).normalize('NFKC').toLowerCase().split(/[^\p{L}\p{N}]+/u);
  const hashes = new Set<number>();
  for (const word of words) {
    if (word === '') continue;
    const chars = Array.from(` ${word} `);
    for (let i = 0; i + 3 <= chars.length; i++) hashes.add(fnv1a(chars.slice(i, i + 3).join('')));
  }
  const sorted = [...hashes].sort((a, b) => a - b);
  return { size: sorted.length, hashes: sorted.slice(0, sketchSize) };
}

/** Checks that a value is a well-formed sketch (sizes agree, hashes ascending unsigned 32-bit integers). */
export function isTrigramSketch(sketch: TrigramSketch): boolean {
  const { size, hashes } = sketch;
  if (!Number.isSafeInteger(size) || size < hashes.length || (size > 0 && hashes.length === 0)) return false;
  for (let i = 0; i < hashes.length; i++) {
    const h = hashes[i]!;
    if (!Number.isInteger(h) || h < 0 || h > 0xffffffff) return false;
    if (i > 0 && h <= hashes[i - 1]!) return false;
  }
  return true;
}

/**
 * Estimates the Jaccard index of the two full sets from their sketches: exact when both sketches hold their whole
 * set, otherwise the share of the k smallest hashes of the union that both sets contain (bottom-k estimator, k being
 * the length of the shorter truncated sketch).
 */
function jaccard(a: TrigramSketch, b: TrigramSketch): number {
  // A complete sketch shows its whole set, so only a truncated one limits how far the merged order is known.
  const known = (s: TrigramSketch) => (s.hashes.length === s.size ? Number.POSITIVE_INFINITY : s.hashes.length);
  const k = Math.min(known(a), known(b));
  let i = 0;
  let j = 0;
  let taken = 0;
  let shared = 0;
  while (taken < k && (i < a.hashes.length || j < b.hashes.length)) {
    const x = a.hashes[i] ?? Number.POSITIVE_INFINITY;
    const y = b.hashes[j] ?? Number.POSITIVE_INFINITY;
    if (x === y) {
      shared++;
      i++;
      j++;
    } else if (x < y) {
      i++;
    } else {
      j++;
    }
    taken++;
  }
  return taken === 0 ? 0 : shared / taken;
}

/**
 * Cosine similarity in [0, 1] of the trigram sets two sketches summarise; undefined when either text had no
 * trigrams, since there is then nothing to compare.
 */
export function lexicalSimilarity(a: TrigramSketch, b: TrigramSketch): number | undefined {
  if (a.size === 0 || b.size === 0) return undefined;
  const j = jaccard(a, b);
  // |A∩B| = J·(|A|+|B|)/(1+J), from J = |A∩B| / (|A|+|B|−|A∩B|).
  const shared = (j * (a.size + b.size)) / (1 + j);
  const cosine = shared / Math.sqrt(a.size * b.size);
  return Math.min(1, Math.max(0, cosine));
}
