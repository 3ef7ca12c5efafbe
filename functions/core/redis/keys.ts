// The one place that names Redis keys. Every session belongs to one of `buckets` buckets, and every key of that
// session AND its bucket's shared structures (deadline index, ledger, placements) carry the bucket's hash tag, so
// one Lua script can change a session and its index atomically on a single Redis and on Redis Cluster alike.

/** FNV-1a 32-bit: a stable, dependency-free hash to spread session ids over buckets. */
function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** Keys of one bucket's shared structures. */
export interface BucketKeys {
  readonly bucket: number;
  /** ZSET session id -> deadline (ms) of every ACTIVE session in the bucket: the deadline index. */
  readonly deadlines: string;
  /** ZSET session id -> time (ms) of the last progress of every session being destroyed: the stall watchdog. */
  readonly destroying: string;
  /** HASH counters: `inc` (last incarnation handed out), `pid` (last placement id). */
  readonly meta: string;
  /** HASH interned placements: `id:<pid>` -> JSON [node, runtimeUrl]; `key:<node> <runtimeUrl>` -> pid. */
  readonly placements: string;
  /**
   * HASH GPU ledger counters per node: `reg|rel|held|allocs|frees|confirmed|ignored|estimated|estimatedBytes:<node>`, demote before destroy's
   * `offloaded|demotes|demoteFreed|restores|restored:<node>`; and per runtime name,
   * the reconciler's `orphans|orphanBytes:<runtime>` (allocations no session owned, released, and their bytes).
   */
  readonly ledger: string;
  /** HASH allocations left behind by a migration: `<sessionId>:<incarnation>` -> `<pid>|<bytes>`. */
  readonly migrations: string;
  /** ZSET session id -> when its idleness is next judged (activity-score's idle checker). */
  readonly idle: string;
  /**
   * ZSET session id -> when its destroy gave up (ms): destroys whose GPU release failed RELEASE_MAX_ATTEMPTS times.
   * They left the stall watchdog and wait here for an operator (`sessionctl retry` or `sessionctl resolve`).
   */
  readonly failed: string;
  /**
   * HASH what the bucket's liveness was heard through, for the outage rule (lua/includes/blind.lua): `seen` (when a
   * deadline engine last claimed in it, ms), `hb` (when a heartbeat was last noted applied, ms: at most 50 ms apart per
   * replica, heartbeat-n.lua), `hg` (the running mean gap between those notes, ms), `bs` (since when no heartbeat has
   * been heard while some were due: an open blind window) and `bx` (the `hb` at which a blind window was given up
   * after BLIND_HOLD_MAX_MS).
   */
  readonly watch: string;
  /** ZSET `<start>:<end>` -> end (ms): the spans in which session-reaper could not hear this bucket's heartbeats. */
  readonly blind: string;
  /**
   * HASH session id -> the record of an ACTIVE session that holds only what its open wrote, packed in one value (a
   * quiet record: lua/includes/quiet.lua). Every script that may reach a quiet record declares it among its KEYS.
   */
  readonly quiet: string;
}

/** Keys of one session (and its bucket). */
export interface SessionKeys extends BucketKeys {
  readonly sessionId: string;
  /**
   * HASH the session record; after destruction, a tombstone with a TTL. Absent while the record is quiet (a field of
   * the bucket's `quiet` hash instead).
   */
  readonly session: string;
  /** HASH the activity-score context of the session. */
  readonly context: string;
  /** SET `<incarnation>:<hook>` of the OnDestroy hooks that succeeded (destroy-dispatch). */
  readonly destroyHooks: string;
  /**
   * HASH (expires) the end of a session seen before its open: `c` cause, `at` when it was sent (ms), `tn` tenant. An
   * open sent before `at` is ended at once, so a close the Broker delivered first is not lost.
   */
  readonly endMarker: string;
  /**
   * HASH (expires) the runtime call of each release: `<incarnation>` -> `<token>|calling|<lease until ms>`,
   * `<token>|answered|<freed bytes>` or `<token>|failed|`, so each release attempt reaches the runtime once.
   */
  readonly releaseCalls: string;
}

/** Fleet-wide load figures, under one hash tag of their own (they span buckets). */
export interface LoadKeys {
  /** STRING events scored during one epoch second, by all replicas (expires). */
  events(second: number): string;
  /** ZSET runtime base URL -> when a session on it was last scored (ms). */
  readonly runtimes: string;
  /** STRING the current load tier (expires, so a fleet whose evaluators stopped falls back to normal). */
  readonly tier: string;
  /** STRING the evaluation lease, so one process per interval polls the runtimes. */
  readonly evaluating: string;
}

/** The load keys under a prefix; they do not depend on the bucket count. */
export function loadKeys(prefix: string): LoadKeys {
  const tag = `${prefix}:{load}`;
  return { events: (second) => `${tag}:events:${second}`, runtimes: `${tag}:runtimes`, tier: `${tag}:tier`, evaluating: `${tag}:evaluating` };
}

/** Builds every key this system uses from a prefix and a fixed bucket count. */
export class KeySpace {
  readonly prefix: string;
  readonly buckets: number;

  constructor(prefix: string, buckets: number) {
    if (!Number.isInteger(buckets) || buckets < 1) throw new RangeError(`buckets must be a positive integer, got ${buckets}`);
    this.prefix = prefix;
    this.buckets = buckets;
  }

  /** The bucket a session id lives in. */
  bucketOf(sessionId: string): number {
    return fnv1a(sessionId) % this.buckets;
  }

  /** Keys shared by all sessions of one bucket. */
  bucket(bucket: number): BucketKeys {
    const tag = `${this.prefix}:{${bucket}}`;
    return {
      bucket,
      deadlines: `${tag}:deadlines`,
      destroying: `${tag}:destroying`,
      meta: `${tag}:meta`,
      placements: `${tag}:placements`,
      ledger: `${tag}:ledger`,
      migrations: `${tag}:migrations`,
      idle: `${tag}:idle`,
      failed: `${tag}:failed`,
      watch: `${tag}:watch`,
      blind: `${tag}:blind`,
      quiet: `${tag}:quiet`,
    };
  }

  /** All keys of one session. */
  session(sessionId: string): SessionKeys {
    const b = this.bucket(this.bucketOf(sessionId));
    const tag = `${this.prefix}:{${b.bucket}}`;
    // Distinct infixes (`:s:`, `:ctx:`, `:dh:`, `:end:`, `:rc:`): an id may contain ':', but never one that makes
    // another's key.
    return {
      ...b, sessionId, session: `${tag}:s:${sessionId}`, context: `${tag}:ctx:${sessionId}`, destroyHooks: `${tag}:dh:${sessionId}`,
      endMarker: `${tag}:end:${sessionId}`, releaseCalls: `${tag}:rc:${sessionId}`,
    };
  }

  /**
   * What every session record key of a bucket starts with: the hottest scripts (heartbeats, due claims) are sent it
   * and build the keys themselves, from ids they are sent or read from an index.
   */
  sessionRecordPrefix(bucket: number): string {
    return `${this.prefix}:{${bucket}}:s:`;
  }

  /** Every bucket, for the deadline engine and ledger audits (O(buckets), never a SCAN). */
  allBuckets(): BucketKeys[] {
    return Array.from({ length: this.buckets }, (_, b) => this.bucket(b));
  }

  /**
   * Reconciler: HASH `f` (first seen, ms) and `c` (claimed for release at, ms) of one allocation a runtime reported
   * and no session owns, in the session's bucket (so one script can check ownership and note it); it expires, so
   * what a runtime stops reporting is forgotten. Runtime names are [a-z0-9-] and incarnations digits, so the id,
   * last, cannot make another sighting's key.
   */
  orphanSighting(runtime: string, sessionId: string, incarnation: number): string {
    return `${this.prefix}:{${this.bucketOf(sessionId)}}:orph:${runtime}:${incarnation}:${sessionId}`;
  }

  /** Reconciler: STRING the lease (SET NX PX) that lets one deadline engine replica reconcile per interval. */
  reconcileLease(): string {
    return `${this.prefix}:{reconcile}:lease`;
  }

  /** Storm guard: in-flight GPU releases on one GPU node (its own hash tag: it spans buckets). */
  nodeInflight(node: string): string {
    return `${this.prefix}:{node:${node}}:inflight`;
  }

  /** Storm guard: destroys waiting for an in-flight slot on one GPU node, oldest first (same hash tag as its slots). */
  nodeWaiting(node: string): string {
    return `${this.prefix}:{node:${node}}:waiting`;
  }

  /** Storm guard: token bucket of one runtime endpoint. */
  runtimeTokens(runtimeUrl: string): string {
    return `${this.prefix}:{rt:${runtimeUrl}}:tokens`;
  }
}
