// The read-only views of the session core: `sessions` (the deadline index and the destroy watchdog, O(buckets),
// never a SCAN), `inspect` (one session, with its current activity score) and `stuck` (destroys that stopped
// making progress). They read Redis directly, exactly as the functions do, so they work with or without a Broker.
import { DEFAULT_SCORING_POLICY, idleDecision, type IdleDecision } from '../../functions/activity-score/scoring.ts';
import { contextFromFields } from '../../functions/activity-score/idle-judgement.ts';
import { SESSION_ID_PATTERN } from '../../functions/core/contract/events.ts';
import { parseMigrationMember, type Cause, type SessionState, type SessionView, type Stage } from '../../functions/core/session-store.ts';
import type { Command, CommandContext } from './command.ts';
import { connectCore, type CoreConnection } from './connections.ts';
import { NotFoundError, RuntimeFailure, UsageError } from './errors.ts';
import { bytes, duration, fields, instant, parseCount, parseDuration, relative, table } from './format.ts';

/** One row of `sessions`. */
export interface SessionRow {
  sessionId: string;
  state: SessionState;
  incarnation: number;
  /** Liveness deadline (epoch ms) of an active session. */
  deadline?: number;
  /** deadline minus now, ms (negative: overdue, about to be expired). */
  deadlineInMs?: number;
  holdUntil?: number;
  node?: string;
  tenant?: string;
  /** Destroy stage and cause of a session being destroyed. */
  stage?: Stage;
  cause?: Cause;
  lastProgressAt?: number;
  /** When its destroy gave up the GPU release (release_failed): it waits for `sessionctl retry` or `resolve`. */
  releaseFailedAt?: number;
}

/** One row of `stuck`. */
export interface StuckRow {
  sessionId: string;
  /** destroy: a session's destroy; migration: the release of the allocation a migration left behind. */
  kind: 'destroy' | 'migration';
  incarnation?: number;
  stage?: Stage;
  cause?: Cause;
  releaseAttempt?: number;
  node?: string;
  lastProgressAt: number;
  stalledForMs: number;
  /** stalled: the watchdog keeps resuming it; release_failed: it gave up after its release budget, and waits for
   *  `sessionctl retry` or `sessionctl resolve`. */
  status: 'stalled' | 'release_failed';
}

const DEFAULT_LIMIT = 100;
const SESSION_ID = new RegExp(SESSION_ID_PATTERN);

async function withCore<T>(ctx: CommandContext, use: (core: CoreConnection) => Promise<T>): Promise<T> {
  const core = await connectCore(ctx.env);
  try {
    return await use(core);
  } finally {
    core.close();
  }
}

/** The session id positional of a command; UsageError if missing or not a valid session id. */
export function sessionIdArgument(ctx: CommandContext, command: string): string {
  const [sessionId, ...extra] = ctx.positionals;
  if (sessionId === undefined) throw new UsageError(`${command} needs a session id: sessionctl ${command} <sessionId>`);
  if (extra.length > 0) throw new UsageError(`${command} takes one session id, got also ${extra.join(' ')}`);
  if (!SESSION_ID.test(sessionId)) throw new UsageError(`${JSON.stringify(sessionId)} is not a session id (letters, digits, then . _ : -; at most 128)`);
  return sessionId;
}

function noPositionals(ctx: CommandContext, command: string): void {
  if (ctx.positionals.length > 0) throw new UsageError(`${command} takes no arguments, got ${ctx.positionals.join(' ')}`);
}

// The earliest `limit` deadlines over every bucket: each bucket's head is enough, since the index is sorted.
async function earliestActive(core: CoreConnection, limit: number): Promise<{ sessionId: string; deadline: number }[]> {
  const perBucket = await Promise.all(
    core.keys.allBuckets().map(async (b) => {
      const flat = await core.redis.zrange(b.deadlines, '0', String(limit - 1), 'WITHSCORES');
      const out: { sessionId: string; deadline: number }[] = [];
      for (let i = 0; i + 1 < flat.length; i += 2) out.push({ sessionId: flat[i]!, deadline: Number(flat[i + 1]) });
      return out;
    }),
  );
  return perBucket.flat().sort((a, b) => a.deadline - b.deadline || a.sessionId.localeCompare(b.sessionId)).slice(0, limit);
}

function rowOf(view: SessionView, now: number): SessionRow {
  const row: SessionRow = { sessionId: view.sessionId, state: view.state, incarnation: view.incarnation };
  if (view.deadline !== undefined) {
    row.deadline = view.deadline;
    row.deadlineInMs = view.deadline - now;
  }
  if (view.holdUntil !== undefined && view.holdUntil > 0) row.holdUntil = view.holdUntil;
  if (view.placement?.node) row.node = view.placement.node;
  if (view.tenant) row.tenant = view.tenant;
  if (view.stage !== undefined) row.stage = view.stage;
  if (view.cause !== undefined) row.cause = view.cause;
  if (view.releaseFailedAt !== undefined) row.releaseFailedAt = view.releaseFailedAt;
  return row;
}

/** `sessions [--state active|destroying] [--limit N]`: active sessions by deadline, then destroys in flight. */
export const sessionsCommand: Command = (ctx) => {
  noPositionals(ctx, 'sessions');
  const state = ctx.options.state;
  if (state !== undefined && state !== 'active' && state !== 'destroying') throw new UsageError(`--state must be active or destroying, got ${JSON.stringify(state)}`);
  const limit = ctx.options.limit === undefined ? DEFAULT_LIMIT : parseCount(ctx.options.limit, '--limit');
  return withCore(ctx, async (core) => {
    const now = ctx.now();
    const rows: SessionRow[] = [];
    const totals: { active?: number; destroying?: number } = {};
    if (state !== 'destroying') {
      const [head, count] = await Promise.all([earliestActive(core, limit), core.store.activeCount()]);
      totals.active = count;
      const views = await Promise.all(head.map((h) => core.store.inspect(h.sessionId)));
      // A session destroyed between the two reads is simply left out: the listing is a snapshot, not a transaction.
      for (const view of views) if (view?.state === 'active') rows.push(rowOf(view, now));
    }
    if (state !== 'active') {
      // Those that gave up left the watchdog; they are still being destroyed, waiting for an operator.
      const failed = (await core.store.failedDestroys()).map((f) => ({ member: f.sessionId, lastProgressAt: f.failedAt }));
      const inFlight = [...(await core.store.destroysInFlight(Number.MAX_SAFE_INTEGER)).filter((m) => parseMigrationMember(m.member) === undefined), ...failed];
      totals.destroying = inFlight.length;
      const shown = inFlight.slice(0, limit);
      const views = await Promise.all(shown.map((m) => core.store.inspect(m.member)));
      views.forEach((view, i) => {
        if (view?.state === 'destroying') rows.push({ ...rowOf(view, now), lastProgressAt: shown[i]!.lastProgressAt });
      });
    }
    const human = [
      rows.length === 0
        ? 'no sessions'
        : table(
            ['SESSION', 'STATE', 'INC', 'DEADLINE', 'NODE', 'STAGE'],
            rows.map((r) => [
              r.sessionId,
              r.state,
              r.incarnation,
              r.deadline === undefined ? '-' : relative(r.deadline, now),
              r.node ?? '-',
              r.stage === undefined
                ? (r.holdUntil !== undefined && r.holdUntil > now ? `held ${relative(r.holdUntil, now)}` : '-')
                : `${r.stage} (${r.cause ?? '?'})${r.releaseFailedAt === undefined ? '' : ', gave up'}`,
            ]),
          ),
      '',
      [
        totals.active === undefined ? undefined : `${totals.active} active`,
        totals.destroying === undefined ? undefined : `${totals.destroying} destroying`,
      ]
        .filter((t) => t !== undefined)
        .join(', ') + (rows.length < (totals.active ?? 0) + (totals.destroying ?? 0) ? ` (showing at most ${limit} of each; --limit N for more)` : ''),
    ].join('\n');
    return { json: { now, totals, sessions: rows }, human };
  });
};

/** The activity-score view of a session: the current score under the default policy, and the idle decision. */
export interface ActivityView {
  score: number;
  components: IdleDecision['components'];
  /** Weights applied; semantic is 0 until two messages were compared (no semantic evidence yet). */
  weights: IdleDecision['weights'];
  threshold: number;
  idle: boolean;
  reason: IdleDecision['reason'];
  idleAt?: number;
  belowSince?: number;
  lastEventAt: number;
}

async function activityOf(core: CoreConnection, view: SessionView, now: number): Promise<ActivityView | { error: string } | undefined> {
  if (view.state === 'destroyed') return undefined;
  const { fields: stored } = await core.store.readContext(view.sessionId);
  let ctx;
  try {
    ctx = contextFromFields(stored);
  } catch (err) {
    return { error: `the stored activity context cannot be read: ${(err as Error).message}` };
  }
  if (!ctx) return undefined;
  const holdUntil = view.holdUntil !== undefined && view.holdUntil > 0 ? view.holdUntil : undefined;
  const d = idleDecision(ctx, now, DEFAULT_SCORING_POLICY, { holdUntil });
  return {
    score: d.score,
    components: d.components,
    weights: d.weights,
    threshold: d.threshold,
    idle: d.idle,
    reason: d.reason,
    ...(d.idleAt === undefined ? {} : { idleAt: d.idleAt }),
    ...(d.belowSince === undefined ? {} : { belowSince: d.belowSince }),
    lastEventAt: ctx.lastEventAt,
  };
}

const two = (x: number) => x.toFixed(2);

/** `inspect <sessionId>`: everything the core knows of a session, its activity score and its destroy timeline. */
export const inspectCommand: Command = (ctx) => {
  const sessionId = sessionIdArgument(ctx, 'inspect');
  return withCore(ctx, async (core) => {
    const view = await core.store.inspect(sessionId);
    if (!view) throw new NotFoundError(`no session ${sessionId} (never opened, or its tombstone expired)`);
    const now = ctx.now();
    const activity = await activityOf(core, view, now);
    const at = (t: number | undefined) => (t === undefined || t <= 0 ? undefined : instant(t, now));
    const activityLine =
      activity === undefined
        ? undefined
        : 'error' in activity
          ? activity.error
          : `${two(activity.score)} (behavior ${two(activity.components.behavior)}, semantic ${activity.weights.semantic > 0 ? two(activity.components.semantic) : 'n/a'}, timing ${two(activity.components.timing)}); ` +
            `threshold ${two(activity.threshold)}, ${activity.idle ? 'idle' : 'not idle'} (${activity.reason})` +
            (activity.idleAt !== undefined && !activity.idle ? `, idle ${relative(activity.idleAt, now)} if nothing happens` : '');
    const summary = fields([
      ['session', view.sessionId],
      ['state', view.state],
      ['incarnation', view.incarnation],
      ['bucket', view.bucket],
      ['deadline', at(view.deadline)],
      ['hold until', at(view.holdUntil)],
      ['window', view.windowMs === undefined ? undefined : duration(view.windowMs)],
      ['node', view.placement?.node || undefined],
      ['runtime', view.placement?.runtimeUrl || undefined],
      ['gpu bytes', view.placement === undefined ? undefined : `${view.placement.gpuBytes} (${bytes(view.placement.gpuBytes)})`],
      ['tenant', view.tenant],
      ['model', view.model],
      ['opened', at(view.openedAt)],
      ['activity score', activityLine],
      ['cause', view.cause === undefined ? undefined : [view.cause, ...view.extraCauses].join(', then ')],
      ['stage', view.stage],
      ['release attempt', view.releaseAttempt],
      ['freed bytes', view.confirmedFreedBytes],
      ['offload', view.offload === undefined ? undefined : `${view.offload}${view.offloadedBytes === undefined ? '' : `, ${view.offloadedBytes} bytes kept off the GPU`}`],
      ['demotes', view.demotes],
      ['demote refused', at(view.demoteRefusedAt)],
      ['claimed', at(view.claimedAt)],
      ['completed', at(view.completedAt)],
      ['tombstone', view.tombstoneTtlMs === undefined ? undefined : `expires in ${duration(view.tombstoneTtlMs)}`],
    ]);
    const start = view.timeline[0]?.at;
    const timeline =
      view.timeline.length === 0 || start === undefined
        ? ''
        : `\n\ntimeline:\n${table(['STAGE', 'AT', 'AFTER'], view.timeline.map((t) => [t.stage, new Date(t.at).toISOString(), `+${t.at - start} ms`]))}`;
    return { json: { now, session: view, activity: activity ?? null }, human: summary + timeline };
  });
};

/** `stuck [--older-than 30s]`: destroys (and migration releases) whose last progress is older than the threshold. */
export const stuckCommand: Command = (ctx) => {
  noPositionals(ctx, 'stuck');
  const olderThan = ctx.options['older-than'] === undefined ? undefined : parseDuration(ctx.options['older-than'], '--older-than');
  const limit = ctx.options.limit === undefined ? 1000 : parseCount(ctx.options.limit, '--limit');
  return withCore(ctx, async (core) => {
    const olderThanMs = olderThan ?? core.config.DESTROY_STALL_MS;
    const now = ctx.now();
    // Those that gave up come first: nothing resumes them but an operator.
    const failed = (await core.store.failedDestroys()).map((f) => ({ member: f.sessionId, lastProgressAt: f.failedAt, status: 'release_failed' as const }));
    const stalled = (await core.store.destroysInFlight(Number.MAX_SAFE_INTEGER))
      .filter((m) => m.lastProgressAt <= now - olderThanMs)
      .map((m) => ({ ...m, status: 'stalled' as const }));
    const rows = await Promise.all(
      [...failed, ...stalled].slice(0, limit).map(async (m): Promise<StuckRow> => {
        const base = { lastProgressAt: m.lastProgressAt, stalledForMs: now - m.lastProgressAt, status: m.status };
        const migration = parseMigrationMember(m.member);
        if (migration) return { sessionId: migration.sessionId, kind: 'migration', incarnation: migration.incarnation, ...base };
        const view = await core.store.inspect(m.member);
        const row: StuckRow = { sessionId: m.member, kind: 'destroy', ...base };
        if (view) {
          row.incarnation = view.incarnation;
          if (view.stage !== undefined) row.stage = view.stage;
          if (view.cause !== undefined) row.cause = view.cause;
          if (view.releaseAttempt !== undefined) row.releaseAttempt = view.releaseAttempt;
          if (view.placement?.node) row.node = view.placement.node;
        }
        return row;
      }),
    );
    const human =
      rows.length === 0
        ? `no destroy has been without progress for ${duration(olderThanMs)} or more`
        : table(
            ['SESSION', 'KIND', 'STATUS', 'INC', 'STAGE', 'CAUSE', 'ATTEMPT', 'NODE', 'NO PROGRESS FOR'],
            rows.map((r) => [r.sessionId, r.kind, r.status, r.incarnation ?? '-', r.stage ?? '-', r.cause ?? '-', r.releaseAttempt ?? '-', r.node ?? '-', duration(r.stalledForMs)]),
          ) + (failed.length > 0 ? '\n\nrelease_failed: `sessionctl retry <id>` requests the release again; `sessionctl resolve <id>` books it as freed.' : '');
    return { json: { now, olderThanMs, stuck: rows }, human };
  });
};

/**
 * `retry <sessionId>` / `resolve <sessionId>`: an operator's answer to a destroy that gave up its GPU release. retry
 * gives it a fresh release budget (the deadline engine's watchdog requests a new attempt at its next pass); resolve
 * books the memory as freed without the runtime's word (the runtime was wiped, or the node is gone) and lets the
 * watchdog finish the destroy.
 */
export function settleFailedCommand(action: 'retry' | 'resolve'): Command {
  return (ctx) => {
    const sessionId = sessionIdArgument(ctx, action);
    return withCore(ctx, async (core) => {
      const r = await core.store.settleFailedDestroy(sessionId, action, ctx.now());
      if (r.code === 'UNKNOWN') throw new NotFoundError(`no session ${sessionId} (never opened, or its tombstone expired)`);
      if (r.code === 'NOT_FAILED') throw new UsageError(`the destroy of ${sessionId} has not given up its release (the session is ${r.state}); see sessionctl stuck`);
      const human =
        r.code === 'RETRYING'
          ? `${sessionId} (incarnation ${r.incarnation}): release budget restarted; the watchdog requests a new release attempt`
          : `${sessionId} (incarnation ${r.incarnation}): ${bytes(r.bytes)} on ${r.node} booked as freed; the watchdog finishes the destroy`;
      return { json: r, human };
    });
  };
}

/**
 * `unpack`: opens out every quiet record (a session kept as a field of its bucket's quiet hash, README "Quiet
 * records") into a hash of its own, bucket by bucket: what an operator runs before the fleet goes back to a version
 * without quiet records, once SESSION_RECORD_PACKING=false has reached every replica. Records a replica still packs
 * meanwhile are taken while they last; any left make it fail (exit 1), so a downgrade script stops there.
 */
export const unpackCommand: Command = (ctx) => {
  noPositionals(ctx, 'unpack');
  return withCore(ctx, async (core) => {
    const buckets: { bucket: number; opened: number; dropped: number; left: number }[] = [];
    for (const b of core.keys.allBuckets()) buckets.push({ bucket: b.bucket, ...(await core.store.openOutQuiet(b.bucket)) });
    const total = (f: 'opened' | 'dropped') => buckets.reduce((n, b) => n + b[f], 0);
    const [opened, dropped] = [total('opened'), total('dropped')];
    // Counted again over every bucket once all are done: a replica still packing refills buckets done before.
    const left = await core.store.quietCount();
    if (left > 0) {
      throw new RuntimeFailure(`${left} quiet records are left after ${opened} were opened out: a replica still packs them (SESSION_RECORD_PACKING=true); run unpack again once none does`);
    }
    const human = `${opened} quiet records opened out into hashes of their own${dropped > 0 ? `, ${dropped} stale quiet fields dropped (their session has a record of its own)` : ''}; none is left`;
    return { json: { opened, dropped, left, buckets }, human };
  });
};
