// The idle-check index: per bucket, a sorted set from session id to the moment activity-score should next judge
// whether the session is idle. activity-score is scale-to-zero, so a session that goes quiet produces no event to
// react to; this index is what wakes the idle checker at the right time instead of a scan of every session.
// Each bucket's index carries the bucket's hash tag, so it sits in the same slot as the session's context and one
// script can compare the context version and update the index atomically (on Redis Cluster too).
import { KeySpace } from '../core/redis/keys.ts';
import type { RedisClient } from '../core/redis/connect.ts';
import { Scripts } from '../core/redis/scripts.ts';
import { UnexpectedReplyError } from '../core/session-store.ts';

/**
 * The key of one bucket's idle-check index. KeySpace (core/redis/keys.ts) has no method for it yet; this follows its
 * scheme (`<prefix>:{<bucket>}:<name>`) so it can move there unchanged.
 */
export function idleIndexKey(prefix: string, bucket: number): string {
  return new KeySpace(prefix, bucket + 1).bucket(bucket).idle;
}

/** What scheduling did. */
export type ScheduleResult = { code: 'SCHEDULED'; at: number } | { code: 'CLEARED' } | { code: 'STALE'; version: number };

/** One claimed idle check: the session and when it was due. */
export interface ClaimedCheck {
  sessionId: string;
  dueAt: number;
}

const num = (v: unknown): number => {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new UnexpectedReplyError(`expected a number in an idle-index reply, got ${JSON.stringify(v)}`);
  return n;
};

/** Typed access to the idle-check index (scripts schedule-idle-check-2.lua and claim-idle-checks-1.lua). */
export class IdleIndex {
  readonly keys: KeySpace;
  readonly #redis: RedisClient;
  #scripts: Promise<Scripts> | undefined;

  constructor(redis: RedisClient, prefix: string, buckets: number) {
    this.#redis = redis;
    this.keys = new KeySpace(prefix, buckets);
  }

  // Registered on first use: Redis may not be reachable when the process starts.
  #run(name: string, keys: string[], args: (string | number)[]): Promise<unknown[]> {
    this.#scripts ??= Scripts.register(this.#redis).catch((err: unknown) => {
      this.#scripts = undefined;
      throw err;
    });
    return this.#scripts.then((scripts) => scripts.run(name, keys, args));
  }

  /** The index key of a bucket. */
  bucketKey(bucket: number): string {
    return this.keys.bucket(bucket).idle;
  }

  /** Sets when the session's idleness is next judged (undefined: never), if its context is still at `version`. */
  async schedule(sessionId: string, version: number, at: number | undefined): Promise<ScheduleResult> {
    const k = this.keys.session(sessionId);
    const r = await this.#run('scheduleIdleCheck', [k.context, this.bucketKey(k.bucket)], [sessionId, String(version), at === undefined ? '' : Math.round(at)]);
    const code = String(r[0]);
    if (code === 'SCHEDULED') return { code, at: num(r[1]) };
    if (code === 'CLEARED') return { code };
    if (code === 'STALE') return { code, version: num(r[1]) };
    throw new UnexpectedReplyError(`scheduleIdleCheck replied ${code}`);
  }

  /** Claims up to `limit` due checks of a bucket, reserving each until `leaseUntil`. */
  async claimDue(bucket: number, now: number, limit: number, leaseUntil: number): Promise<ClaimedCheck[]> {
    const r = await this.#run('claimIdleChecks', [this.bucketKey(bucket)], [Math.floor(now), limit, Math.round(leaseUntil)]);
    const out: ClaimedCheck[] = [];
    for (let i = 0; i + 1 < r.length; i += 2) out.push({ sessionId: String(r[i]), dueAt: num(r[i + 1]) });
    return out;
  }

  /** When the session's next check is scheduled, if it is. */
  async scheduledAt(sessionId: string): Promise<number | undefined> {
    const k = this.keys.session(sessionId);
    const score = await this.#redis.zscore(this.bucketKey(k.bucket), sessionId);
    return score === null ? undefined : Number(score);
  }

  /** The earliest scheduled check of every bucket (undefined for an empty bucket): O(buckets × log n). */
  async heads(): Promise<(number | undefined)[]> {
    return Promise.all(
      Array.from({ length: this.keys.buckets }, async (_, bucket) => {
        const head = await this.#redis.zrange(this.bucketKey(bucket), '0', '0', 'WITHSCORES');
        return head[1] === undefined ? undefined : Number(head[1]);
      }),
    );
  }
}
