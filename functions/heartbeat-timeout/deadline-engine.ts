// The deadline engine: emits session.expired the moment a session's liveness deadline passes, and resumes destroys
// (and migration releases) that stalled.
//
// How it finds due deadlines without scanning: every bucket's ACTIVE sessions sit in a sorted set scored by deadline
// (the deadline index), so a bucket's earliest deadline is its head, read in O(log n). The engine keeps the heads
// of all buckets and sets ONE precise timer for the earliest; when it fires, only buckets whose head is due are read
// and their due sessions are claimed by one Lua script per bucket (claimDue: ZRANGEBYSCORE -inf..now, O(log n + k) for
// k due sessions, and the claims, in one atomic step and one round trip), so any number of engine replicas can
// race: each session is claimed by exactly one.
// Nothing here relies on keyspace notifications (lost while disconnected, and late under load).
//
// Heartbeats and holds only ever move a deadline later (ZADD GT), so a cached head is a lower bound of the true one:
// the timer may fire early (then nothing is due, the head is re-read and the timer re-armed), never late. Only a new
// session (session.opened) can put an earlier deadline into a bucket, and the engine learns of it by re-reading the
// heads every DEADLINE_POLL_MS: one claimDue per bucket, pipelined (it claims whatever is due and answers the head),
// i.e. O(buckets · log n) per poll and independent of how many sessions exist, where a scan would be O(n). Because
// no liveness window is shorter than 100 ms (heartbeatIntervalMs ≥ 100) and DEADLINE_POLL_MS ≤ 100 ms, a new
// session's deadline is always learned before it falls due.
//
// Claims in different buckets run concurrently (one per bucket at a time), so a deadline never waits for another
// bucket's round trip to Redis.
//
// The outage rule (core/redis/lua/includes/blind.lua): a live session is never expired because session-reaper could
// not hear its heartbeats. Each claim notes in Redis that its bucket is watched, and a bucket left unwatched for
// longer than BLIND_GAP_MS (Redis down, or no engine running) was blind for that span. The claims also answer each
// bucket's heartbeat marks, from which the engine judges whether the whole fleet went silent far beyond its usual
// rhythm (the Broker or heartbeat-timeout down; ingest-silence.ts), and passes that verdict to every claim: while it
// lasts, expiries wait, and once heard again the silent span is blind too. Each claim moves every due deadline past
// the blind time in its session's silence before it expires anything. The marks live in Redis, so the rule holds
// across replicas and across the engine's own restarts.
import type { Config } from '../core/config.ts';
import { EventType } from '../core/contract/events.ts';
import type { CoreDeps } from '../core/function-host.ts';
import type { Logger } from '../core/log.ts';
import type { OutageRule, SessionStore } from '../core/session-store.ts';
import { judgeIngest, type BucketHeard, type IngestVerdict } from './ingest-silence.ts';

/** What the engine uses from the core: a subset of CoreDeps, so a core's deps can be passed as they are. */
export interface DeadlineEngineDeps {
  readonly config: Pick<Config, 'INDEX_BUCKETS' | 'DEADLINE_POLL_MS' | 'DESTROY_STALL_MS' | 'BLIND_GAP_MS' | 'INGEST_SILENCE_MS' | 'BLIND_HOLD_MAX_MS'>;
  readonly logger: Logger;
  /** The session core; may throw until `ready` resolved. */
  readonly store: SessionStore;
  now(): number;
  emit: CoreDeps['emit'];
  /** Detection lag, expiries and rounds are recorded here. */
  readonly metrics: Pick<CoreDeps['metrics'], 'detectionLag' | 'expiriesClaimed' | 'engineRounds'>;
}

/** How the engine is built. */
export interface DeadlineEngineOptions {
  deps: DeadlineEngineDeps;
  /** Connects Redis and loads the scripts (Core.ready); retried with back-off while Redis is unreachable. */
  ready: () => Promise<void>;
  /** Most due sessions (and stalled destroys) taken from one bucket per round. Default 256. */
  batchSize?: number;
  /** Most emissions in flight at once; claims wait for a free slot beyond it. Default 256. */
  maxInFlightEmits?: number;
  /** Longest wait between retries while Redis is unreachable, ms. Default 2000. */
  maxBackoffMs?: number;
  /** Called each time a poll round completes, succeeded or failed: the liveness probe's evidence (RoundWatch). */
  onRound?: () => void;
}

/** What one pass did (runOnce's answer, also logged). */
export interface PassReport {
  /** Sessions claimed as expired (session.expired emitted or attempted). */
  expired: number;
  /** Due entries that were refreshed between the read and the claim, or claimed by another replica. */
  skipped: number;
  /** Stalled destroys for which destroy.resume was emitted (or attempted). */
  resumed: number;
  /** Stalled migration releases re-requested. */
  migrationsReissued: number;
  /** Emissions that failed; their claims stand and the watchdog picks them up after DESTROY_STALL_MS. */
  emitFailures: number;
  /** Due sessions whose deadline the outage rule moved past a blind window instead of expiring them. */
  deferred: number;
  /** Blind windows recorded (one per bucket that recorded one). */
  blind: { from: number; to: number }[];
}

const DEFAULT_BATCH = 256;
const DEFAULT_MAX_IN_FLIGHT = 256;
const DEFAULT_MAX_BACKOFF_MS = 2000;
/** Longest single timer (Node's limit is 2^31 - 1 ms); the poll re-arms long before anyway. */
const MAX_TIMER_MS = 2 ** 31 - 1;

function emptyReport(): PassReport {
  return { expired: 0, skipped: 0, resumed: 0, migrationsReissued: 0, emitFailures: 0, deferred: 0, blind: [] };
}

/** Watches the deadline index and the destroy watchdog of every bucket. */
export class DeadlineEngine {
  readonly #deps: DeadlineEngineDeps;
  readonly #ready: () => Promise<void>;
  readonly #batch: number;
  readonly #maxInFlight: number;
  readonly #maxBackoffMs: number;
  readonly #onRound: () => void;
  readonly #log: Logger;
  /** Cached earliest deadline per bucket (null: empty or unknown); a lower bound of the true head, see the file comment. */
  readonly #heads: (number | null)[];
  #pollTimer: NodeJS.Timeout | undefined;
  #wakeTimer: NodeJS.Timeout | undefined;
  /** Polls (and runOnce) run one at a time: this is the tail of their chain. */
  #chain: Promise<unknown> = Promise.resolve();
  /**
   * Buckets with a claim in flight. Claims in different buckets overlap: a deadline falling due while another
   * bucket's claim waits on Redis is claimed at once rather than after it. One bucket has one claim at a time, so
   * its cached head is only ever written by the claim that read it.
   */
  readonly #claiming = new Set<number>();
  readonly #wakeClaims = new Set<Promise<void>>();
  readonly #emits = new Set<Promise<void>>();
  #slotsInUse = 0;
  readonly #slotWaiters: (() => void)[] = [];
  /** BLIND_GAP_MS, or 0 when the outage rule is off. */
  readonly #blindGapMs: number;
  /** Each bucket's heartbeat marks, as its last claim answered them. */
  readonly #heard: (BucketHeard | undefined)[];
  /** The last time a poll found no session indexed at all. */
  #quietSince: number | null = null;
  /** The fleet's current ingest verdict (logged when it changes). */
  #verdict: IngestVerdict = { holdFrom: null, heardAt: null };
  /**
   * How often a running engine reads the destroy watchdog: a tenth of DESTROY_STALL_MS, at most every second and at
   * least every poll. A stall is seconds long (two minutes by default), so reading the watchdog of every bucket on
   * every 100 ms poll, as the deadlines need, was half of the engine's calls to Redis for nothing.
   */
  readonly #watchEveryMs: number;
  #lastWatchAt: number | null = null;
  #started = false;
  #failures = 0;
  #lastFailureLogAt = 0;

  constructor(opts: DeadlineEngineOptions) {
    this.#deps = opts.deps;
    this.#ready = opts.ready;
    this.#batch = opts.batchSize ?? DEFAULT_BATCH;
    this.#maxInFlight = opts.maxInFlightEmits ?? DEFAULT_MAX_IN_FLIGHT;
    this.#maxBackoffMs = opts.maxBackoffMs ?? DEFAULT_MAX_BACKOFF_MS;
    this.#onRound = opts.onRound ?? (() => undefined);
    this.#log = opts.deps.logger.child({ component: 'deadline-engine' });
    this.#heads = new Array<number | null>(opts.deps.config.INDEX_BUCKETS).fill(null);
    this.#heard = new Array<BucketHeard | undefined>(opts.deps.config.INDEX_BUCKETS).fill(undefined);
    this.#blindGapMs = opts.deps.config.BLIND_GAP_MS;
    const { DEADLINE_POLL_MS, DESTROY_STALL_MS } = opts.deps.config;
    this.#watchEveryMs = Math.max(DEADLINE_POLL_MS, Math.min(1000, DESTROY_STALL_MS / 10));
  }

  /** Whether the engine is running (started and not stopped). */
  get running(): boolean {
    return this.#started;
  }

  /** Whether the last call to Redis succeeded (false after a failure, until one succeeds again). */
  get connected(): boolean {
    return this.#failures === 0;
  }

  /** Starts watching: the first poll runs at once and catches up on everything already overdue. */
  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#log.info({ buckets: this.#heads.length, pollMs: this.#deps.config.DEADLINE_POLL_MS, stallMs: this.#deps.config.DESTROY_STALL_MS }, 'deadline engine started');
    this.#onPoll();
  }

  /** Stops the timers; resolves once the claims in progress and every emission they started have finished. */
  async stop(): Promise<void> {
    if (!this.#started) return;
    this.#started = false;
    clearTimeout(this.#pollTimer);
    clearTimeout(this.#wakeTimer);
    this.#pollTimer = this.#wakeTimer = undefined;
    await this.#chain;
    while (this.#wakeClaims.size > 0) await Promise.allSettled([...this.#wakeClaims]);
    await this.#drainEmits();
    this.#log.info('deadline engine stopped');
  }

  /**
   * One full pass at `now` (claim in every bucket, run the watchdog), waiting for its emissions: for tests and
   * tools. Throws if Redis is unreachable.
   */
  async runOnce(now: number = this.#deps.now()): Promise<PassReport> {
    const report = await this.#exclusive(async () => {
      await this.#ready();
      // A running engine's wake-up claims finish first, so the pass claims in every bucket.
      await Promise.allSettled([...this.#wakeClaims]);
      return this.#poll(now, true);
    });
    await this.#drainEmits();
    return report;
  }

  // ---- scheduling ----

  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#chain.then(fn);
    this.#chain = run.catch(() => undefined);
    return run;
  }

  /** Every DEADLINE_POLL_MS (longer, backing off, while Redis is unreachable): a poll, then the wake-up re-armed. */
  #onPoll(): void {
    this.#pollTimer = undefined;
    if (!this.#started) return;
    void this.#exclusive(async () => {
      let now = this.#deps.now();
      let failed = false;
      try {
        await this.#ready();
        // Read after connecting: a poll that waited out an outage in ready() claims against the time it runs, not
        // the time it started (which would leave due deadlines unclaimed until the next poll).
        now = this.#deps.now();
        await this.#poll(now, this.#lastWatchAt === null || now - this.#lastWatchAt >= this.#watchEveryMs);
        this.#succeeded();
      } catch (err) {
        failed = true;
        this.#failed(err, now);
      }
      this.#onRound();
      this.#deps.metrics.engineRounds.add(1);
      if (!this.#started) return;
      const poll = this.#deps.config.DEADLINE_POLL_MS;
      // Exponential back-off with full jitter, so replicas do not hammer a recovering Redis in step.
      const delay = failed ? Math.max(poll, Math.random() * Math.min(this.#maxBackoffMs, poll * 2 ** Math.min(this.#failures, 16))) : poll;
      this.#pollTimer = setTimeout(() => this.#onPoll(), delay);
      this.#armWake();
    });
  }

  /** At the earliest cached head: claims in every bucket whose head is due and has no claim in flight. */
  #onWake(): void {
    this.#wakeTimer = undefined;
    if (!this.#started) return;
    const now = this.#deps.now();
    this.#heads.forEach((head, bucket) => {
      if (head === null || head > now || this.#claiming.has(bucket)) return;
      const claim = this.#claimBucket(bucket, now, emptyReport()).then(
        () => this.#succeeded(),
        (err: unknown) => {
          // Unknown until the next poll (which backs off while Redis stays unreachable): a head left due would
          // re-arm the wake-up at once, and the engine would spin against a Redis that is down.
          this.#heads[bucket] = null;
          this.#failed(err, now);
        },
      ).finally(() => {
        this.#wakeClaims.delete(claim);
        this.#armWake();
      });
      this.#wakeClaims.add(claim);
    });
    this.#armWake();
  }

  /**
   * Sets the one precise timer at the earliest cached head of the buckets with no claim in flight (theirs is re-armed
   * when the claim answers). A head already due fires at once: a bucket with more due than a batch is claimed again.
   */
  #armWake(): void {
    clearTimeout(this.#wakeTimer);
    this.#wakeTimer = undefined;
    if (!this.#started) return;
    let earliest: number | null = null;
    this.#heads.forEach((head, bucket) => {
      if (head !== null && !this.#claiming.has(bucket) && (earliest === null || head < earliest)) earliest = head;
    });
    if (earliest === null) return;
    // Rounded up: a timer that fired a fraction early would find nothing due yet. Timers run on libuv's monotonic
    // clock and deadlines on the wall clock, so one may still fire a hair early; the wake-up then re-arms for the
    // remaining millisecond and claims nothing in between.
    const delay = Math.max(0, Math.ceil(earliest - this.#deps.now()));
    this.#wakeTimer = setTimeout(() => this.#onWake(), Math.min(delay, MAX_TIMER_MS));
  }

  #succeeded(): void {
    if (this.#failures > 0) this.#log.info({ afterFailures: this.#failures }, 'deadline engine reaches Redis again');
    this.#failures = 0;
  }

  #failed(err: unknown, now: number): void {
    this.#failures += 1;
    // One line on the first failure and then at most one every 10 s, not one per retry.
    if (this.#failures === 1 || now - this.#lastFailureLogAt >= 10_000) {
      this.#lastFailureLogAt = now;
      this.#log.warn({ err, failures: this.#failures }, 'deadline engine could not reach Redis (unreachable?); backing off');
    }
  }

  // ---- one poll ----

  /**
   * Claims in every bucket without a claim in flight (claimDue answers each head, so this is also how the engine
   * learns of new sessions' earlier deadlines) and, with `watch`, runs the watchdog: one round trip.
   */
  async #poll(now: number, watch: boolean): Promise<PassReport> {
    const report = emptyReport();
    const store = this.#deps.store;
    const buckets = [...this.#heads.keys()];
    this.#judgeIngest(now);
    // Settled, not raced: a poll that fails still waits for its other claims, so none runs on untracked (past
    // stop(), or answering a head no one re-arms the wake-up for).
    // Each bucket's wake-up is re-armed as soon as its own claim answers, not once the whole poll has: a deadline
    // that falls due while the poll's other calls are still waiting on Redis is claimed then, not after them.
    const outcomes = await Promise.allSettled([
      ...buckets.filter((b) => !this.#claiming.has(b)).map((b) => this.#claimBucket(b, now, report).then(() => this.#armWake())),
      ...(watch ? buckets.map((b) => this.#watchBucket(store, b, now, report)) : []),
    ]);
    const failure = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    if (failure) throw failure.reason;
    if (watch) this.#lastWatchAt = now;
    this.#noteOutage(report);
    if (this.#heard.every((h) => h !== undefined && h.n === 0)) this.#quietSince = now;
    if (report.expired + report.resumed + report.migrationsReissued > 0) this.#log.debug({ ...report }, 'deadline engine poll');
    return report;
  }

  /** A bucket's claim, marked in flight while it waits on Redis. */
  async #claimBucket(bucket: number, now: number, report: PassReport): Promise<void> {
    this.#claiming.add(bucket);
    try {
      await this.#ready();
      await this.#expireBucket(this.#deps.store, bucket, now, report);
    } finally {
      this.#claiming.delete(bucket);
    }
  }

  /** Claims up to a batch of a bucket's due sessions and emits session.expired for each claim won. */
  async #expireBucket(store: SessionStore, bucket: number, now: number, report: PassReport): Promise<void> {
    // One script call claims what is due and answers the bucket's next deadline: when nothing was due (the cached
    // head was stale, a heartbeat moved it) that is the new head, and either way the timer is re-armed without
    // waiting for the next poll.
    const rule = this.#rule();
    const { claimed, skipped, unresolved, head, deferred, blind, heard } = await store.claimDue(bucket, now, this.#batch, rule);
    report.skipped += skipped;
    report.deferred += deferred;
    this.#heard[bucket] = heard;
    if (blind) report.blind.push(blind);
    // Rare: a stray entry, or a record a Cluster resharding moved; one claim each with declared keys settles them.
    for (const sessionId of unresolved) {
      const one = await store.claimExpired(sessionId, now, rule);
      if (one.code === 'CLAIMED') claimed.push({ sessionId, incarnation: one.incarnation, deadline: one.deadline });
      else report.skipped += 1;
    }
    this.#heads[bucket] = head;
    report.expired += claimed.length;
    for (const { deadline } of claimed) this.#deps.metrics.detectionLag.record(Math.max(0, now - deadline) / 1000);
    this.#deps.metrics.expiriesClaimed.add(claimed.length);
    await Promise.all(
      claimed.map(({ sessionId, incarnation, deadline }) =>
        this.#emitTracked(report, sessionId, () =>
          this.#deps.emit(
            EventType.SessionExpired,
            { sessionId, incarnation, deadline: new Date(deadline).toISOString(), detectedAt: new Date(now).toISOString(), lagMs: Math.max(0, now - deadline) },
            `${sessionId}/${incarnation}/expired`,
          ),
        ),
      ),
    );
  }

  /** The rule as the claims apply it now: unwatched spans, and the fleet's current ingest verdict. */
  #rule(): OutageRule | undefined {
    return this.#blindGapMs > 0 ? { blindGapMs: this.#blindGapMs, ...this.#verdict } : undefined;
  }

  /** Judges the fleet's heartbeats from the marks the last claims answered, logging when the verdict changes. */
  #judgeIngest(now: number): void {
    if (this.#blindGapMs === 0) return;
    const { INGEST_SILENCE_MS, BLIND_HOLD_MAX_MS } = this.#deps.config;
    const was = this.#verdict.holdFrom;
    this.#verdict = judgeIngest(this.#heard, now, { silenceMs: INGEST_SILENCE_MS, holdMaxMs: BLIND_HOLD_MAX_MS }, this.#quietSince);
    const is = this.#verdict.holdFrom;
    if (is !== null && was !== is) {
      this.#log.warn({ unheardSince: new Date(is).toISOString() }, 'no heartbeat heard for far longer than the fleet\'s rhythm: expiries wait until heartbeats are heard again');
    } else if (is === null && was !== null) {
      this.#log.warn({ unheardSince: new Date(was).toISOString(), heardAt: this.#verdict.heardAt === null ? undefined : new Date(this.#verdict.heardAt).toISOString() }, 'heartbeats heard again (or held as long as BLIND_HOLD_MAX_MS allows): expiries resume, past the unheard span');
    }
  }

  /** Logs, once per poll, what the outage rule did: blind windows recorded, deadlines moved. */
  #noteOutage(report: PassReport): void {
    if (report.blind.length > 0) {
      const from = Math.min(...report.blind.map((b) => b.from));
      const to = Math.max(...report.blind.map((b) => b.to));
      this.#log.warn(
        { buckets: report.blind.length, blindFrom: new Date(from).toISOString(), blindTo: new Date(to).toISOString(), blindMs: to - from },
        'session-reaper could not hear sessions for a while: their silence in that span does not count towards their liveness',
      );
    }
    if (report.deferred > 0) this.#log.info({ deferred: report.deferred }, 'moved due deadlines past a blind window instead of expiring them');
  }

  /** Resumes a bucket's destroys (and migration releases) that made no progress for DESTROY_STALL_MS. */
  async #watchBucket(store: SessionStore, bucket: number, now: number, report: PassReport): Promise<void> {
    const stallMs = this.#deps.config.DESTROY_STALL_MS;
    const members = await store.stalledMembers(bucket, now - stallMs, this.#batch);
    await Promise.all(
      members.map(async (member) => {
        const claim = await store.claimStalled(member, now, stallMs);
        if (claim.code === 'STALLED') {
          report.resumed += 1;
          const { sessionId, incarnation, stage } = claim;
          this.#log.info({ sessionId, incarnation, stage, cause: claim.cause }, 'resuming a stalled destroy');
          await this.#emitTracked(report, sessionId, () =>
            this.#deps.emit(EventType.DestroyResume, { sessionId, incarnation, stage }, `${sessionId}/${incarnation}/resume/${now}`),
          );
        } else if (claim.code === 'MIGRATION') {
          report.migrationsReissued += 1;
          const { sessionId, incarnation, placement } = claim;
          // No attempt counter is kept for a migration's release, so the attempt is the index of the stall period:
          // it only grows (claimStalled lets a member be re-claimed once per DESTROY_STALL_MS), it is > 1 for any
          // real clock (attempt 1 is heartbeat-timeout's first request), and the event id stays deterministic.
          const attempt = Math.max(2, Math.floor(now / stallMs));
          this.#log.info({ sessionId, incarnation, node: placement.node, attempt }, 're-requesting a stalled migration release');
          await this.#emitTracked(report, sessionId, () =>
            this.#deps.emit(
              EventType.GpuReleaseRequested,
              { sessionId, incarnation, placement, attempt, token: claim.token, reason: 'migration' },
              `${sessionId}/${incarnation}/release/${attempt}`,
            ),
          );
        }
      }),
    );
  }

  // ---- emissions ----

  /**
   * Starts an emission without holding up the pass (a slow Broker must not delay the next deadline), waiting only
   * for a free slot. A failed emission is logged: its claim stands, and the session sits in the destroy watchdog,
   * which emits destroy.resume for it after DESTROY_STALL_MS.
   */
  async #emitTracked(report: PassReport, sessionId: string, send: () => Promise<void>): Promise<void> {
    await this.#acquireSlot();
    const sent = send()
      .catch((err: unknown) => {
        report.emitFailures += 1;
        this.#log.warn({ err, sessionId }, 'emission failed; the destroy watchdog resumes this session after DESTROY_STALL_MS');
      })
      .finally(() => {
        this.#emits.delete(sent);
        this.#releaseSlot();
      });
    this.#emits.add(sent);
  }

  // A FIFO semaphore: a freed slot is handed to the longest waiter, so a burst of thousands of claims (a mass
  // expiry) waits in O(1) per emission rather than every waiter re-racing every emission in flight.
  #acquireSlot(): Promise<void> {
    if (this.#slotsInUse < this.#maxInFlight) {
      this.#slotsInUse += 1;
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => this.#slotWaiters.push(resolve));
  }

  #releaseSlot(): void {
    const next = this.#slotWaiters.shift();
    if (next) next();
    else this.#slotsInUse -= 1;
  }

  async #drainEmits(): Promise<void> {
    while (this.#emits.size > 0) await Promise.allSettled([...this.#emits]);
  }
}
