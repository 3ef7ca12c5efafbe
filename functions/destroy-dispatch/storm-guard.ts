// The storm guard: a mass expiry (after a Redis outage, a node drain) must not stampede the GPU runtimes. Before a
// release is requested it needs a slot on its GPU node (a distributed concurrency limit) and a token from its
// runtime's bucket (a distributed rate limit), both kept in Redis and shared by every replica. A destroy refused a
// slot joins its node's wait queue and its trigger is acknowledged: whoever frees a slot hands it to the oldest
// waiter in the same script, so excess destroys wait their turn without spending the Broker's retry budget. A
// destroy refused a token fails with ReleaseThrottledError (503): a rate is about time, and the Broker's backoff
// is the tool that waits it out. Either way none is dropped (the stall watchdog resumes anything stranded).
import { setTimeout as sleep } from 'node:timers/promises';
import { TransientError, BackpressureError } from '../core/errors.ts';
import type { RedisClient } from '../core/redis/connect.ts';
import type { KeySpace } from '../core/redis/keys.ts';
import { ScriptLoadError, Scripts } from '../core/redis/scripts.ts';
import type { Placement } from '../core/session-store.ts';

/** How hard the guard holds the runtimes back. */
export interface StormGuardLimits {
  /** Releases one GPU node may have in flight at once (NODE_MAX_INFLIGHT_RELEASES). */
  nodeMaxInflight: number;
  /** Release requests per second one runtime receives on average (RUNTIME_RELEASE_RATE_PER_S). */
  ratePerS: number;
  /** Release requests one runtime may receive at once after a quiet spell (RUNTIME_RELEASE_BURST). */
  burst: number;
  /** How long an in-flight slot is held without news of its release before it frees itself, ms. */
  leaseMs: number;
}

/** Which limit refused a release. */
export type ThrottleScope = 'node' | 'runtime';

/** A release that must wait its turn: answered 503, so the Broker redelivers the destroy later. */
export class ReleaseThrottledError extends BackpressureError {
  override name = 'ReleaseThrottledError';
  /** The limit that refused it. */
  readonly scope: ThrottleScope;
  /** The node or runtime URL the limit is for. */
  readonly target: string;
  /** How long until the limit may admit it, ms (a hint: other destroys may take the turn first). */
  readonly retryInMs: number;

  constructor(scope: ThrottleScope, target: string, retryInMs: number) {
    super(
      scope === 'node'
        ? `GPU node ${target} has its most releases in flight; retry in about ${retryInMs} ms`
        : `runtime ${target} is at its release rate; retry in about ${retryInMs} ms`,
      { cause: undefined },
    );
    this.scope = scope;
    this.target = target;
    this.retryInMs = retryInMs;
  }
}

/**
 * The outcome of asking for a node slot. `handed` are waiters (release members) that were given a free slot by the
 * same step, oldest first: the caller must continue their destroys. `waitedMs`: how long the member waited in the
 * queue for the slot it acquired (0: one was free).
 */
export type SlotOutcome =
  | { code: 'ACQUIRED'; inFlight: number; waitedMs: number; handed: string[] }
  | { code: 'HELD'; inFlight: number; handed: string[] }
  | { code: 'WAITING'; position: number; handed: string[] };

/** The outcome of freeing a node slot: the waiters handed the free slots, oldest first. */
export interface FreedSlot {
  code: 'FREED' | 'NOT_HELD';
  inFlight: number;
  handed: string[];
}

/** The outcome of asking for a runtime token. */
export type TokenOutcome = { code: 'TAKEN'; tokensLeft: number } | { code: 'EMPTY'; retryInMs: number };

/**
 * What admit decided: a new slot (and a token), the slot the member already held (no new token), or a place in the
 * node's wait queue; `handed` as in SlotOutcome.
 */
export type Admission = SlotOutcome | { code: 'THROTTLED'; retryInMs: number; handed: string[] };

const text = (v: unknown): string => (typeof v === 'string' ? v : Buffer.isBuffer(v) ? v.toString('utf8') : String(v));
const int = (v: unknown): number => Number(v);

/** Where the storm guard records each admission's wait in its node's queue (sessionreaper_storm_guard_queue_wait_seconds). */
export interface QueueWaitRecorder {
  record(seconds: number): void;
}

/** The in-flight member of one destroy's release: one per session incarnation. */
export function releaseMember(sessionId: string, incarnation: number): string {
  return `${sessionId}:${incarnation}`;
}

/** The session and incarnation of a release member (a session id may itself contain ':'). */
export function parseReleaseMember(member: string): { sessionId: string; incarnation: number } | undefined {
  const at = member.lastIndexOf(':');
  const incarnation = Number(member.slice(at + 1));
  if (at <= 0 || !Number.isSafeInteger(incarnation) || incarnation < 1) return undefined;
  return { sessionId: member.slice(0, at), incarnation };
}

/**
 * Deliveries of one gpu.release.requested the default slot lease covers: the first and the 2 Broker retries of
 * knative/base's gpu-release Trigger.
 */
export const DEFAULT_RELEASE_DELIVERIES = 3;

/**
 * The default lease of a slot: for every delivery of the release event, twice the longest one delivery's runtime
 * calls can take through gpu-release's retry budget, which also covers the delivery's own overhead and the Broker's
 * wait before the next one (1-4 s). With the defaults, 3 x 2 x 5 s x 4 = 120 s, past the Trigger's 93-96 s window
 * (tests/deploy checks the deployed lease against the rendered Trigger; the local stack runs on these defaults).
 */
export function defaultLeaseMs(runtimeTimeoutMs: number, releaseRetries: number, deliveries = DEFAULT_RELEASE_DELIVERIES): number {
  return deliveries * 2 * runtimeTimeoutMs * (releaseRetries + 1);
}

/** The distributed limits on GPU release requests: per-node concurrency and per-runtime rate. */
export class StormGuard {
  readonly limits: Readonly<StormGuardLimits>;
  readonly #redis: RedisClient;
  readonly #keys: KeySpace;
  readonly #queueWait: QueueWaitRecorder | undefined;
  #scripts: Promise<Scripts> | undefined;

  /** `queueWait` is told, in seconds, how long each destroy admitted to a slot waited for it (0: a slot was free). */
  constructor(redis: RedisClient, keys: KeySpace, limits: StormGuardLimits, queueWait?: QueueWaitRecorder) {
    for (const [name, value] of Object.entries(limits)) {
      if (!(typeof value === 'number' && Number.isFinite(value) && value > 0)) throw new RangeError(`storm guard ${name} must be a positive number, got ${String(value)}`);
    }
    if (limits.burst < 1) throw new RangeError(`storm guard burst must be at least 1, got ${limits.burst}`);
    this.#redis = redis;
    this.#keys = keys;
    this.limits = Object.freeze({ ...limits });
    this.#queueWait = queueWait;
  }

  // The members a slot script handed a slot, from its flat (member, waited ms) pairs, each wait recorded: the
  // admission happens in the script, and only its reply says how long each waited. (A member acquiring a slot for
  // itself is recorded by admit, once it also has its token.)
  #admitted(pairs: unknown[]): string[] {
    const members: string[] = [];
    for (let i = 0; i + 1 < pairs.length; i += 2) {
      members.push(text(pairs[i]));
      this.#queueWait?.record(int(pairs[i + 1]) / 1000);
    }
    return members;
  }

  // The session store keeps its Scripts private; registering again on the same client is idempotent and happens
  // once per process, on first use (Redis is connected by then: the host readies the core before any handler).
  #ready(): Promise<Scripts> {
    this.#scripts ??= Scripts.register(this.#redis).catch((err: unknown) => {
      this.#scripts = undefined;
      // A script Redis refused to compile is a bug (500); anything else is Redis being unreachable (503).
      if (err instanceof ScriptLoadError && (err.cause as Error | undefined)?.name !== 'ReplyError') {
        throw new TransientError('Redis is not reachable to load the storm guard scripts', { cause: err });
      }
      throw err;
    });
    return this.#scripts;
  }

  /** Takes (or renews) the member's in-flight slot on a node, or queues the member for one. */
  async acquireSlot(node: string, member: string, now: number): Promise<SlotOutcome> {
    const scripts = await this.#ready();
    const r = await scripts.run('admitOrWait', this.#slotKeys(node), [member, now, this.limits.leaseMs, this.limits.nodeMaxInflight]);
    const code = text(r[0]);
    if (code === 'HELD') return { code, inFlight: int(r[1]), handed: [] };
    const handed = this.#admitted(r.slice(3));
    if (code === 'ACQUIRED') return { code, inFlight: int(r[1]), waitedMs: int(r[2]), handed };
    return { code: 'WAITING', position: int(r[1]), handed };
  }

  /** Takes one token from a runtime's bucket. */
  async takeToken(runtimeUrl: string, now: number): Promise<TokenOutcome> {
    const scripts = await this.#ready();
    const r = await scripts.run('takeReleaseToken', [this.#keys.runtimeTokens(runtimeUrl)], [now, this.limits.ratePerS, this.limits.burst]);
    if (text(r[0]) === 'TAKEN') return { code: 'TAKEN', tokensLeft: int(r[1]) };
    return { code: 'EMPTY', retryInMs: int(r[1]) };
  }

  /**
   * Takes a token for a waiter that was handed a slot, waiting for the bucket to refill for up to two refills (at
   * least a second): its trigger was acknowledged, so no Broker redelivery waits for it. False when none came.
   */
  async awaitToken(runtimeUrl: string, now: () => number): Promise<boolean> {
    const patienceMs = Math.max(1000, 2000 / this.limits.ratePerS);
    for (let waitedMs = 0; ; ) {
      const token = await this.takeToken(runtimeUrl, now());
      if (token.code === 'TAKEN') return true;
      const pause = Math.max(1, token.retryInMs);
      if (waitedMs + pause > patienceMs) return false;
      await sleep(pause);
      waitedMs += pause;
    }
  }

  /**
   * Admits one release request, queues it, or refuses it for want of a token (THROTTLED: the caller answers 503).
   * A member that already holds a live slot is admitted again without a token: it is the same release being
   * re-sent (a redelivery), or a waiter handed its slot, which took its token then (awaitToken). A new slot whose runtime has no token is given back at once
   * (to the next waiter), so destroys held back by the rate never hoard a node's slots.
   */
  async admit(member: string, placement: Pick<Placement, 'node' | 'runtimeUrl'>, now: number): Promise<Admission> {
    const slot = await this.acquireSlot(placement.node, member, now);
    if (slot.code !== 'ACQUIRED') return slot;
    const token = await this.takeToken(placement.runtimeUrl, now);
    if (token.code === 'EMPTY') {
      const freed = await this.releaseSlot(placement.node, member, now);
      return { code: 'THROTTLED', retryInMs: token.retryInMs, handed: [...slot.handed, ...freed.handed] };
    }
    // Recorded once admitted for good: a slot given back for want of a token is no admission (it is asked for again).
    this.#queueWait?.record(slot.waitedMs / 1000);
    return slot;
  }

  /**
   * Frees a member's slot on a node and hands the free slots to the oldest waiters, in one step (idempotent:
   * freeing a slot not held frees nothing, but still fills free slots).
   */
  async releaseSlot(node: string, member: string, now: number): Promise<FreedSlot> {
    const scripts = await this.#ready();
    const r = await scripts.run('releaseSlotAndAdmitNext', this.#slotKeys(node), [member, now, this.limits.leaseMs, this.limits.nodeMaxInflight]);
    return { code: text(r[0]) === 'FREED' ? 'FREED' : 'NOT_HELD', inFlight: int(r[1]), handed: this.#admitted(r.slice(2)) };
  }

  /** The destroys waiting for a slot on a node, oldest first (operators and tests). */
  async waiting(node: string): Promise<string[]> {
    return this.#redis.zrange(this.#keys.nodeWaiting(node), '0', '-1');
  }

  #slotKeys(node: string): string[] {
    return [this.#keys.nodeInflight(node), this.#keys.nodeWaiting(node)];
  }

  /** The members holding a live slot on a node, soonest lease end first (operators and tests). */
  async inFlight(node: string, now: number): Promise<string[]> {
    return this.#redis.zrangebyscore(this.#keys.nodeInflight(node), `(${now}`, '+inf');
  }
}
