// What the reconciler keeps in Redis about allocations runtimes hold that no session owns: each change is one named
// Lua script (heldSessionOwners, sightOrphan, settleOrphan), every key built by KeySpace. It holds no state itself.
import type { RedisClient } from './redis/connect.ts';
import type { KeySpace } from './redis/keys.ts';
import type { Scripts } from './redis/scripts.ts';
import { UnexpectedReplyError } from './session-store.ts';

/** A session incarnation as a runtime names it. */
export interface HeldIncarnation {
  sessionId: string;
  incarnation: number;
}

/** Where one unowned allocation stands (sightOrphan). */
export type OrphanSighting =
  | { code: 'OWNED' }
  | { code: 'WAITING'; firstSeen: number }
  | { code: 'DUE'; firstSeen: number; claimedAt: number }
  | { code: 'CLAIMED'; claimedAt: number };

/** What the runtime answered to an orphan's release, as settleOrphan books it. */
export type OrphanOutcome = 'released' | 'gone' | 'failed';

/** What booking a release answer did (settleOrphan). */
export type OrphanSettlement = { code: 'BOOKED'; firstSeen: number } | { code: 'FORGOTTEN' | 'RETRY' | 'NOT_CLAIMED' };

/** How long to wait and remember, in ms (the reconciler's settings). */
export interface OrphanTimes {
  /** How long an allocation must stay unowned before it is released (RECONCILE_GRACE_MS). */
  graceMs: number;
  /** How long a sighting outlives the last pass that saw it. */
  ttlMs: number;
  /** How long a claim holds before another pass may retake it. */
  claimMs: number;
}

/** Most allocations checked by one heldSessionOwners call: bounds the time Redis spends in one script. */
const MAX_OWNER_BATCH = 256;

const str = (v: unknown): string => (typeof v === 'string' ? v : typeof v === 'number' ? String(v) : Buffer.isBuffer(v) ? v.toString('utf8') : '');
const num = (v: unknown): number => {
  const n = Number(str(v));
  if (!Number.isFinite(n)) throw new UnexpectedReplyError(`expected a number in script reply, got ${JSON.stringify(v)}`);
  return n;
};

/** Typed access to the reconciler's scripts. */
export class OrphanStore {
  readonly redis: RedisClient;
  readonly keys: KeySpace;
  readonly #scripts: Scripts;

  constructor(redis: RedisClient, keys: KeySpace, scripts: Scripts) {
    this.redis = redis;
    this.keys = keys;
    this.#scripts = scripts;
  }

  /** Whether a session owns each held incarnation: one read-only script call per bucket touched, answers in order. */
  async owned(held: readonly HeldIncarnation[]): Promise<boolean[]> {
    const byBucket = new Map<number, number[]>();
    held.forEach((h, index) => {
      const bucket = this.keys.bucketOf(h.sessionId);
      const group = byBucket.get(bucket);
      if (group) group.push(index);
      else byBucket.set(bucket, [index]);
    });
    const out = new Array<boolean>(held.length).fill(false);
    const calls: Promise<void>[] = [];
    for (const [bucket, indexes] of byBucket) {
      for (let start = 0; start < indexes.length; start += MAX_OWNER_BATCH) {
        const slice = indexes.slice(start, start + MAX_OWNER_BATCH);
        const args: (string | number)[] = [this.keys.sessionRecordPrefix(bucket)];
        for (const i of slice) args.push(held[i]!.sessionId, held[i]!.incarnation);
        calls.push(
          this.#scripts.run('heldSessionOwners', [this.keys.bucket(bucket).migrations, this.keys.bucket(bucket).quiet], args).then((r) => {
            if (r.length !== slice.length) throw new UnexpectedReplyError(`heldSessionOwners answered ${r.length} entries for ${slice.length}`);
            slice.forEach((i, k) => (out[i] = num(r[k]) === 1));
          }),
        );
      }
    }
    await Promise.all(calls);
    return out;
  }

  /** Notes a sighting of an unowned allocation on `runtime` and, once it is due, claims it for one release. */
  async sight(runtime: string, held: HeldIncarnation, now: number, times: OrphanTimes): Promise<OrphanSighting> {
    const k = this.keys.session(held.sessionId);
    const r = await this.#scripts.run(
      'sightOrphan',
      [k.session, k.migrations, this.keys.orphanSighting(runtime, held.sessionId, held.incarnation), k.quiet],
      [held.sessionId, held.incarnation, now, times.graceMs, times.ttlMs, times.claimMs],
    );
    const code = str(r[0]);
    switch (code) {
      case 'OWNED':
        return { code };
      case 'WAITING':
        return { code, firstSeen: num(r[1]) };
      case 'DUE':
        return { code, firstSeen: num(r[1]), claimedAt: num(r[2]) };
      case 'CLAIMED':
        return { code, claimedAt: num(r[1]) };
    }
    throw new UnexpectedReplyError(`sightOrphan replied ${code}`);
  }

  /** Books the answer to a claimed orphan's release, once: in the ledger of the session's bucket when released. */
  async settle(runtime: string, held: HeldIncarnation, claimedAt: number, outcome: OrphanOutcome, freedBytes: number): Promise<OrphanSettlement> {
    const k = this.keys.session(held.sessionId);
    const r = await this.#scripts.run(
      'settleOrphan',
      [this.keys.orphanSighting(runtime, held.sessionId, held.incarnation), k.ledger],
      [String(claimedAt), outcome, runtime, freedBytes],
    );
    const code = str(r[0]);
    if (code === 'BOOKED') return { code, firstSeen: num(r[1]) };
    if (code === 'FORGOTTEN' || code === 'RETRY' || code === 'NOT_CLAIMED') return { code };
    throw new UnexpectedReplyError(`settleOrphan replied ${code}`);
  }

  /** Takes the reconcile lease for `ms` if no one holds it: true when this caller reconciles this interval. */
  async takeLease(holder: string, ms: number): Promise<boolean> {
    // One atomic command, as the load monitor's evaluation lease: nothing to read first.
    return (await this.redis.set(this.keys.reconcileLease(), holder, 'PX', ms, 'NX')) !== null;
  }
}
