// The idle checker: reaches the idle verdict on sessions that went quiet, when no event arrives to prompt it.
// activity-score schedules each session's next check in the idle index (idle-index.ts); the checker sleeps until the
// earliest scheduled check of any bucket (re-reading the bucket heads every poll to learn of earlier ones), claims
// the due checks atomically (so any number of replicas can run, and each check is made by one of them), re-judges
// each session from its stored context, its hold and the current load tier, and emits `session.idle` when it is
// idle, or schedules the next check when it is not. A check whose checker died comes due again when its lease ends.
// The outage rule holds here too (core/blind-windows.ts): quiet time in a span in which session-reaper could not hear
// the session's bucket (recorded by the deadline engine) does not count, and while the bucket is unheard now its
// checks wait, so an outage that swallowed a user's activity never makes the session look idle.
//
// It is self-contained so it can run in any long-running process (the deadline engine hosts it):
//   const checker = new IdleChecker(core.deps, { settings: readActivityScoreSettings(process.env) });
//   checker.start();  ...  await checker.stop();
import { setTimeout as sleep } from 'node:timers/promises';
import { blindTimeWithin, wallTimeOf, type BlindState } from '../core/blind-windows.ts';
import { EventType } from '../core/contract/events.ts';
import type { CoreDeps } from '../core/function-host.ts';
import { BLIND_RETENTION_MS } from '../core/session-store.ts';
import { IdleIndex, type ClaimedCheck } from './idle-index.ts';
import { adapterFor } from '../core/runtime-adapters/index.ts';
import { drawReleaseToken, placementForEvent, type SessionView } from '../core/session-store.ts';
import { contextFromFields, idleEventData, judgeDemote, judgeIdleness } from './idle-judgement.ts';
import { createMemoryProbe, LoadMonitor } from './load-monitor.ts';
import type { LoadTier } from './load-policy.ts';
import { ActivityContextDecodeError, type ActivityContext } from './scoring.ts';
import type { ActivityScoreSettings } from './settings.ts';

/** What the checker uses from its host process: the core's deps fit. */
export type IdleCheckerDeps = Pick<CoreDeps, 'redis' | 'store' | 'logger' | 'config' | 'now' | 'emit' | 'runtimes' | 'outboundPolicy' | 'metrics'>;

/** How the checker runs. */
export interface IdleCheckerOptions {
  settings: ActivityScoreSettings;
  /** The load tier source; by default one of its own, which also takes its turn evaluating the tier. */
  load?: LoadMonitor;
  /** Most checks claimed from one bucket at a time. Default 128. */
  batchSize?: number;
  /** Called each time a pass completes, succeeded or failed: the liveness probe's evidence (RoundWatch). */
  onRound?: () => void;
}

/** What one pass did. */
export interface IdleCheckReport {
  /** Checks claimed and judged. */
  checked: number;
  /** session.idle events emitted. */
  idle: number;
  /** Sessions not idle yet, checked again later (demoted ones included). */
  rescheduled: number;
  /** Quiet sessions whose demote was requested (gpu.demote.requested): their KV leaves the GPU until their user is back. */
  demoted: number;
  /** Sessions dropped from the index (ended, unknown, or never to be idle). */
  cleared: number;
  /** Checks that failed (left leased: they come due again when the lease ends). */
  failed: number;
  /** The earliest check still scheduled after this pass, if any. */
  nextDueAt?: number;
}

type Outcome = 'idle' | 'rescheduled' | 'demoted' | 'cleared';

/** Finds idle sessions from the idle index (see the top of this file). */
export class IdleChecker {
  readonly index: IdleIndex;
  readonly load: LoadMonitor;
  readonly #deps: IdleCheckerDeps;
  readonly #settings: ActivityScoreSettings;
  readonly #batchSize: number;
  readonly #ownsLoad: boolean;
  readonly #onRound: () => void;
  #running: { stop: AbortController; done: Promise<void> } | undefined;

  constructor(deps: IdleCheckerDeps, opts: IdleCheckerOptions) {
    this.#deps = deps;
    this.#settings = opts.settings;
    this.#batchSize = opts.batchSize ?? 128;
    this.#onRound = opts.onRound ?? (() => undefined);
    this.index = new IdleIndex(deps.redis, deps.config.REDIS_KEY_PREFIX, deps.config.INDEX_BUCKETS);
    this.#ownsLoad = opts.load === undefined;
    this.load =
      opts.load ??
      new LoadMonitor(deps.redis, {
        prefix: deps.config.REDIS_KEY_PREFIX,
        policy: opts.settings.loadPolicy,
        runtimeTtlMs: opts.settings.runtimeTtlMs,
        registry: deps.runtimes,
        runtime: createMemoryProbe(deps.config, deps.logger, { registry: deps.runtimes, addressPolicy: deps.outboundPolicy }),
        logger: deps.logger,
        now: () => deps.now(),
      });
  }

  /** Judges every check due at `now` across all buckets, under the tier stored in Redis now. */
  async runOnce(now: number = this.#deps.now()): Promise<IdleCheckReport> {
    const report: IdleCheckReport = { checked: 0, idle: 0, rescheduled: 0, demoted: 0, cleared: 0, failed: 0 };
    const [tier, heads] = await Promise.all([this.load.refresh(), this.index.heads()]);
    const leaseUntil = now + this.#settings.idleLeaseMs;
    await Promise.all(
      heads.map(async (head, bucket) => {
        if (head === undefined || head > now) return;
        const blind = this.#deps.config.BLIND_GAP_MS > 0 ? await this.#deps.store.blindState(bucket, now - BLIND_RETENTION_MS) : undefined;
        for (;;) {
          const claimed = await this.index.claimDue(bucket, now, this.#batchSize, leaseUntil);
          const outcomes = await Promise.all(claimed.map((check) => this.#judge(check, now, tier, blind)));
          for (const outcome of outcomes) {
            report.checked++;
            if (outcome === undefined) report.failed++;
            else if (outcome === 'demoted') {
              report.demoted++;
              report.rescheduled++;
            } else report[outcome]++;
          }
          if (claimed.length < this.#batchSize) return;
        }
      }),
    );
    const after = (await this.index.heads()).filter((h): h is number => h !== undefined);
    if (after.length > 0) report.nextDueAt = Math.min(...after);
    return report;
  }

  // One claimed check; undefined when it failed (it stays leased and comes due again).
  async #judge(check: ClaimedCheck, now: number, tier: LoadTier, blind: BlindState | undefined): Promise<Outcome | undefined> {
    const { sessionId } = check;
    try {
      const [session, stored] = await Promise.all([this.#deps.store.inspect(sessionId), this.#deps.store.readContext(sessionId)]);
      let ctx: ActivityContext | undefined;
      try {
        ctx = contextFromFields(stored.fields);
      } catch (err) {
        if (!(err instanceof ActivityContextDecodeError)) throw err;
        this.#deps.logger.warn({ sessionId, err: err.message }, 'stored activity context unreadable; idle check dropped until the next activity');
      }
      if (session === null || session.state !== 'active' || ctx === undefined) {
        await this.index.schedule(sessionId, stored.version, undefined);
        return 'cleared';
      }
      // Unheard now: whatever the user did meanwhile may not have reached us; look again when the lease ends.
      if (blind !== undefined && blind.holdFrom !== null && blind.holdFrom < now) {
        const result = await this.index.schedule(sessionId, stored.version, now + this.#settings.idleLeaseMs);
        return result.code === 'CLEARED' ? 'cleared' : 'rescheduled';
      }
      // Judged on the session's own clock, which stood still while nobody could hear it; its times are converted
      // back to the wall clock by the same walk.
      const spans = blind?.spans ?? [];
      const lost = blindTimeWithin(spans, ctx.lastEventAt, now);
      // The hold's end on that clock too, so a blind span inside the hold is not taken off twice.
      const holdUntil = session.holdUntil === undefined ? undefined : session.holdUntil - blindTimeWithin(spans, ctx.lastEventAt, session.holdUntil);
      // A demoted session's KV is off the GPU already: waiting for its user costs no GPU memory (DEMOTED_IDLE_GRACE_MS).
      const judgement = judgeIdleness(this.#settings, ctx, now - lost, { tenant: session.tenant, tier, holdUntil, demoted: session.offload === 'demoted' });
      const { decision } = judgement;
      if (decision.idle) {
        // The id is the idle moment on the session's clock: the same at every re-check, whatever span is recorded since.
        const idleAtSession = Math.round(decision.idleAt ?? now - lost);
        const idleAt = wallTimeOf(spans, ctx.lastEventAt, idleAtSession);
        const eventId = `${sessionId}/${session.incarnation}/idle/${idleAtSession}`;
        // Recorded before it is emitted: destroy-dispatch applies only a session.idle recorded so (none forged).
        if ((await this.#deps.store.recordIdleVerdict(sessionId, session.incarnation, eventId, now)) !== 'RECORDED') {
          await this.index.schedule(sessionId, stored.version, undefined);
          return 'cleared';
        }
        await this.#deps.emit(EventType.SessionIdle, idleEventData(sessionId, session.incarnation, decision, tier), eventId);
        this.#deps.logger.info({ sessionId, incarnation: session.incarnation, reason: decision.reason, score: decision.score, threshold: decision.threshold, tier, idleAt, lagMs: now - idleAt }, 'session idle');
        // Looked at again after a lease: destroyed by then (dropped), or still idle (said again, same id).
        await this.index.schedule(sessionId, stored.version, now + this.#settings.idleLeaseMs);
        return 'idle';
      }
      // Demote before destroy: quiet past its predicted return (or, under memory pressure, quiet PRESSURE_DEMOTE_QUIET_MS),
      // the KV leaves the GPU; or look again when that could be due. A restore still pending (its request dead-lettered
      // behind a demote in flight) is sent again.
      if (session.offload === 'restoring') await this.#resendRestore(session, now);
      let nextCheckAt = judgement.nextCheckAt;
      let demoted = false;
      const demote = this.#demotable(session) ? judgeDemote(this.#settings, ctx, now - lost, tier, holdUntil) : undefined;
      if (demote?.demote === true) demoted = await this.#demote(session, now);
      else if (demote?.nextCheckAt !== undefined) nextCheckAt = nextCheckAt === undefined ? demote.nextCheckAt : Math.min(nextCheckAt, demote.nextCheckAt);
      const result = await this.index.schedule(sessionId, stored.version, nextCheckAt === undefined ? undefined : wallTimeOf(spans, ctx.lastEventAt, nextCheckAt));
      if (result.code === 'CLEARED') return 'cleared';
      return demoted ? 'demoted' : 'rescheduled';
    } catch (err) {
      this.#deps.logger.warn({ sessionId, err: (err as Error).message }, 'idle check failed; retried when its lease ends');
      return undefined;
    }
  }

  // Whether a live session may be demoted: demotes are on, its KV is on the GPU (or its demote is still pending: its
  // request, which may have been lost, is sent again under the same token), no demote of it was refused, and its
  // runtime's kind can demote (RUNTIMES; an unregistered runtime is never called).
  #demotable(session: SessionView): boolean {
    if (this.#settings.demoteQuietMs <= 0 || (session.offload !== undefined && session.offload !== 'demoting')) return false;
    if (session.demoteRefusedAt !== undefined || !session.placement) return false;
    const runtime = this.#deps.runtimes.lookup(session.placement.runtimeUrl);
    return runtime !== undefined && adapterFor(runtime.engine).capabilities.demote;
  }

  // Requests the demote (request-demote-2.lua: one pending at a time, never while held) and emits it; a demote still
  // pending from an earlier check whose event may have been lost is emitted again under its own token.
  async #demote(session: SessionView, now: number): Promise<boolean> {
    const { sessionId, incarnation } = session;
    const r = await this.#deps.store.requestDemote(sessionId, incarnation, drawReleaseToken(), now);
    this.#deps.metrics.demoteRequests.add(1, r.code.toLowerCase());
    if ((r.code !== 'REQUESTED' && r.code !== 'PENDING') || !session.placement) return false;
    await this.#deps.emit(
      EventType.GpuDemoteRequested,
      { sessionId, incarnation, token: r.token, placement: placementForEvent(session.placement) },
      `${sessionId}/${incarnation}/demote/${r.token}`,
    );
    this.#deps.logger.info({ sessionId, incarnation, node: session.placement.node }, 'quiet session past its predicted return: demote requested');
    return true;
  }

  async #resendRestore(session: SessionView, now: number): Promise<void> {
    const { sessionId, incarnation } = session;
    const r = await this.#deps.store.requestRestore(sessionId, incarnation, drawReleaseToken(), now);
    if (r.code !== 'PENDING' || !session.placement) return;
    await this.#deps.emit(EventType.GpuRestoreRequested, { sessionId, incarnation, token: r.token, placement: placementForEvent(session.placement) }, `${sessionId}/${incarnation}/restore/${r.token}`);
  }

  /** Runs passes until stop(): at the earliest due check, and at least every IDLE_POLL_MS. */
  start(): void {
    if (this.#running) return;
    const stop = new AbortController();
    if (this.#ownsLoad) this.load.start();
    const pollMs = this.#settings.idlePollMs;
    const loop = async () => {
      while (!stop.signal.aborted) {
        let waitMs = pollMs;
        try {
          const report = await this.runOnce();
          if (report.nextDueAt !== undefined) waitMs = Math.min(pollMs, Math.max(1, report.nextDueAt - this.#deps.now()));
        } catch (err) {
          this.#deps.logger.warn({ err: (err as Error).message }, 'idle check pass failed; trying again');
        }
        this.#onRound();
        try {
          await sleep(waitMs, undefined, { signal: stop.signal });
        } catch {
          return;
        }
      }
    };
    this.#running = { stop, done: loop() };
  }

  /** Stops the loop after the pass in progress (and the load monitor it owns). */
  async stop(): Promise<void> {
    const running = this.#running;
    this.#running = undefined;
    if (running) {
      running.stop.abort();
      await running.done;
    }
    if (this.#ownsLoad) await this.load.stop();
  }
}
