// The outage rule's ingest side, judged for the whole fleet by the deadline engine: has session-reaper stopped
// hearing heartbeats (the Broker, its dispatcher or heartbeat-timeout down) while sessions are due to send them?
// Heartbeat calls note in their bucket when one ran (`hb`) and a running mean of the gaps between those notes (`hg`;
// core/redis/lua/heartbeat-n.lua; each process asks at most every 50 ms a bucket, so `hb` trails the last heartbeat
// by up to 100 ms with several replicas), and every due claim answers its bucket's marks and how many sessions it
// indexes.
// An ingest outage silences every bucket at once, so the fleet's marks are what is judged: its latest heartbeat, and
// its mean gap (the buckets' rates added up). One session dying, or a bucket whose last session left, moves neither.
// A pure function of those marks and the clock, so every engine replica reaches the same verdict.

/** What one bucket's last due claim said about its heartbeats. */
export interface BucketHeard {
  /** When a heartbeat call last ran in the bucket (ms), if ever. */
  hb: number | null;
  /** The running mean gap between its heartbeat calls (ms), once there were two. */
  hg: number | null;
  /** Sessions in its deadline index. */
  n: number;
}

/** The verdict passed to every due claim (claim-due-5.lua). */
export interface IngestVerdict {
  /** Since when nothing has been heard while heartbeats were due: expiries after it wait. Null: heard. */
  holdFrom: number | null;
  /** When heartbeats were last heard (ms): an open hold is closed at it, as a blind window. */
  heardAt: number | null;
}

/** Fewer sessions than this say too little about their heartbeats' rhythm for a silence to mean an outage. */
export const MIN_SESSIONS_TO_JUDGE = 20;

/**
 * How many times the fleet's mean gap its heartbeats must stay away to count as unheard: heartbeats that arrive at
 * random at that mean rate stay away that long by chance with probability e^-20.
 */
export const SILENCE_FACTOR = 20;

export interface IngestSettings {
  /** INGEST_SILENCE_MS: the least silence judged (0: silences are not judged). */
  silenceMs: number;
  /** BLIND_HOLD_MAX_MS: the longest a silence holds expiries; past it the senders are taken to have stopped. */
  holdMaxMs: number;
}

/**
 * Judges the fleet's silence at `now` from every bucket's last marks. `quietSince`: the last time the engine saw no
 * session indexed at all (a fleet that was empty a moment ago owes no heartbeats from before).
 */
export function judgeIngest(buckets: readonly (BucketHeard | undefined)[], now: number, settings: IngestSettings, quietSince: number | null): IngestVerdict {
  let heardAt: number | null = null;
  let sessions = 0;
  let rate = 0;
  for (const b of buckets) {
    if (!b) continue;
    if (b.hb !== null && (heardAt === null || b.hb > heardAt)) heardAt = b.hb;
    sessions += b.n;
    // Only buckets that index sessions owe heartbeats; a gap under a millisecond is a batch, counted as 1 ms.
    if (b.n > 0 && b.hg !== null) rate += 1 / Math.max(1, b.hg);
  }
  if (settings.silenceMs === 0 || sessions < MIN_SESSIONS_TO_JUDGE || rate === 0 || heardAt === null) return { holdFrom: null, heardAt };
  const since = Math.max(heardAt, quietSince ?? -Infinity);
  if (now - since <= Math.max(settings.silenceMs, SILENCE_FACTOR / rate)) return { holdFrom: null, heardAt };
  // Held as long as allowed: the span counts as blind, and expiries resume.
  if (now - since > settings.holdMaxMs) return { holdFrom: null, heardAt: since + settings.holdMaxMs };
  return { holdFrom: since, heardAt };
}
