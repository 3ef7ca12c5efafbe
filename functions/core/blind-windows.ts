// The outage rule's windows, read by the parts that judge silence outside the deadline engine (the idle checker): the
// spans in which session-reaper could not hear a bucket (recorded by the engine's due claims in the bucket's `blind`
// ZSET, core/redis/lua/includes/blind.lua), and since when the bucket is unheard, if it is now. A session's quiet time
// counts only outside them, as its liveness silence does.

/** One blind span, ms. */
export interface BlindSpan {
  from: number;
  to: number;
}

/** What a bucket's outage rule says: its blind spans (merged, in order) and since when it is unheard now, if it is. */
export interface BlindState {
  spans: BlindSpan[];
  holdFrom: number | null;
}

/** Spans merged where they overlap (a Redis outage is both unwatched and unheard), in order of start. */
export function mergeSpans(spans: readonly BlindSpan[]): BlindSpan[] {
  const merged: BlindSpan[] = [];
  for (const s of [...spans].sort((a, b) => a.from - b.from)) {
    const last = merged.at(-1);
    if (last && s.from <= last.to) last.to = Math.max(last.to, s.to);
    else merged.push({ ...s });
  }
  return merged;
}

/** How much of (from, to) the merged spans cover: the part of a silence nobody could hear. */
export function blindTimeWithin(spans: readonly BlindSpan[], from: number, to: number): number {
  let total = 0;
  for (const s of spans) total += Math.max(0, Math.min(s.to, to) - Math.max(s.from, from));
  return total;
}

/** Parses the members of a bucket's blind ZSET (`<from>:<to>`), ignoring anything else. */
export function parseSpans(members: readonly string[]): BlindSpan[] {
  const spans: BlindSpan[] = [];
  for (const m of members) {
    const match = /^(\d+):(\d+)$/.exec(m);
    if (match) spans.push({ from: Number(match[1]), to: Number(match[2]) });
  }
  return mergeSpans(spans);
}

/**
 * The wall time at which a session's own clock, started at `from` and stopped during the spans, reads `t`: the walk
 * lua/includes/blind.lua's extendedDeadline makes (each span after `from` that begins before the time reached so far
 * pushes it out by its length).
 */
export function wallTimeOf(spans: readonly BlindSpan[], from: number, t: number): number {
  let wall = t;
  for (const s of spans) {
    if (s.from >= wall) break;
    if (s.to > from) wall += s.to - Math.max(s.from, from);
  }
  return wall;
}
