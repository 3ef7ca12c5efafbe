// The storm guard: a mass expiry (after a Redis outage, a node drain) must not stampede the GPU runtimes. Before a
// release is requested it needs a slot on its GPU node (a distributed concurrency limit) and a token from its
// runtime's bucket (a distributed rate limit), both kept in Redis and shared by every replica. A destroy refused
// either one fails with ReleaseThrottledError (503): the Broker redelivers it later with backoff, so excess
// destroys wait their turn and none is dropped.
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

/** The outcome of asking for a node slot. */
export type SlotOutcome = { code: 'ACQUIRED' | 'HELD'; inFlight: number } | { code: 'BUSY'; inFlight: number; retryInMs: number };

/** The outcome of asking for a runtime token. */
export type TokenOutcome = { code: 'TAKEN'; tokensLeft: number } | { code: 'EMPTY'; retryInMs: number };

/** What admit granted: a new slot (and a token), or the slot the member already held (no new token). */
export type Admission = 'ACQUIRED' | 'HELD';

const text = (v: unknown): string => (typeof v === 'string' ? v : Buffer.isBuffer(v) ? v.toString('utf8') : String(v));
const int = (v: unknown): number => Number(v);

/** The in-flight member of one destroy's release: one per session incarnation. */
export function releaseMember(sessionId: string, incarnation: number): string {
  return `${sessionId}:${incarnation}`;
}

/** The default lease of a slot: twice the longest a release can take through gpu-release's retry budget. */
export function defaultLeaseMs(runtimeTimeoutMs: number, releaseRetries: number): number {
  return 2 * runtimeTimeoutMs * (releaseRetries + 1);
}

/** The distributed limits on GPU release requests: per-node concurrency and per-runtime rate. */
export class StormGuard {
  readonly limits: Readonly<StormGuardLimits>;
  readonly #redis: RedisClient;
  readonly #keys: KeySpace;
  #scripts: Promise<Scripts> | undefined;

  constructor(redis: RedisClient, keys: KeySpace, limits: StormGuardLimits) {
    for (const [name, value] of Object.entries(limits)) {
      if (!(typeof value === 'number' && Number.isFinite(value) && value > 0)) throw new RangeError(`storm guard ${name} must be a positive number, got ${String(value)}`);
    }
    if (limits.burst < 1) throw new RangeError(`storm guard burst must be at least 1, got ${limits.burst}`);
    this.#redis = redis;
    this.#keys = keys;
    this.limits = Object.freeze({ ...limits });
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

  /** Takes (or renews) the member's in-flight slot on a node. */
  async acquireSlot(node: string, member: string, now: number): Promise<SlotOutcome> {
    const scripts = await this.#ready();
    const r = await scripts.run('acquireReleaseSlot', [this.#keys.nodeInflight(node)], [member, now, this.limits.leaseMs, this.limits.nodeMaxInflight]);
    const code = text(r[0]);
    if (code === 'ACQUIRED' || code === 'HELD') return { code, inFlight: int(r[1]) };
    return { code: 'BUSY', inFlight: int(r[1]), retryInMs: int(r[2]) };
  }

  /** Takes one token from a runtime's bucket. */
  async takeToken(runtimeUrl: string, now: number): Promise<TokenOutcome> {
    const scripts = await this.#ready();
    const r = await scripts.run('takeReleaseToken', [this.#keys.runtimeTokens(runtimeUrl)], [now, this.limits.ratePerS, this.limits.burst]);
    if (text(r[0]) === 'TAKEN') return { code: 'TAKEN', tokensLeft: int(r[1]) };
    return { code: 'EMPTY', retryInMs: int(r[1]) };
  }

  /**
   * Admits one release request, or throws ReleaseThrottledError. A member that already holds a live slot is
   * admitted again without a token: it is the same release being re-sent (a redelivery), not a new one. A new
   * slot whose runtime has no token is given back at once, so waiting destroys never hoard a node's slots.
   */
  async admit(member: string, placement: Pick<Placement, 'node' | 'runtimeUrl'>, now: number): Promise<Admission> {
    const slot = await this.acquireSlot(placement.node, member, now);
    if (slot.code === 'BUSY') throw new ReleaseThrottledError('node', placement.node, slot.retryInMs);
    if (slot.code === 'HELD') return 'HELD';
    const token = await this.takeToken(placement.runtimeUrl, now);
    if (token.code === 'EMPTY') {
      await this.releaseSlot(placement.node, member);
      throw new ReleaseThrottledError('runtime', placement.runtimeUrl, token.retryInMs);
    }
    return 'ACQUIRED';
  }

  /** Frees a member's slot on a node (idempotent: freeing a slot not held changes nothing). */
  async releaseSlot(node: string, member: string): Promise<void> {
    await this.#redis.zrem(this.#keys.nodeInflight(node), member);
  }

  /** The members holding a live slot on a node, soonest lease end first (operators and tests). */
  async inFlight(node: string, now: number): Promise<string[]> {
    return this.#redis.zrangebyscore(this.#keys.nodeInflight(node), `(${now}`, '+inf');
  }
}
