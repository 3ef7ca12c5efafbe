// The session core: every state change of a session is one named Lua script (functions/core/redis/lua), so any
// replica may handle any event, duplicates and redeliveries change nothing, and an event for an older incarnation
// never touches a newer one. This module turns script replies into typed results; it holds no state of its own.
import { createHash, randomBytes } from 'node:crypto';
import { parseSpans, type BlindState } from './blind-windows.ts';
import type { RedisClient } from './redis/connect.ts';
import type { KeySpace, SessionKeys } from './redis/keys.ts';
import type { Scripts } from './redis/scripts.ts';

/** Destroy stages, in order; a destroy is checkpointed at each. */
export const STAGES = ['claimed', 'gpu_release_requested', 'gpu_released', 'state_purged', 'completed'] as const;
export type Stage = (typeof STAGES)[number];
export type Cause = 'closed' | 'expired' | 'idle' | 'completed' | 'forced';
export type SessionState = 'active' | 'destroying' | 'destroyed';

/**
 * What a migration's pending release is called in its bucket's destroy watchdog. Session ids start with a letter or
 * a digit, so this prefix keeps migrations and sessions apart (includes/session.lua's MIGRATION_MEMBER_PREFIX).
 */
export const MIGRATION_MEMBER_PREFIX = '!m:';

/** The watchdog member of the release a migration of `sessionId` left behind for `incarnation`. */
export function migrationMember(sessionId: string, incarnation: number): string {
  return `${MIGRATION_MEMBER_PREFIX}${sessionId}:${incarnation}`;
}

/** The session and incarnation of a migration's watchdog member, or undefined for a session's own member. */
export function parseMigrationMember(member: string): { sessionId: string; incarnation: number } | undefined {
  if (!member.startsWith(MIGRATION_MEMBER_PREFIX)) return undefined;
  const m = /^(.+):(\d+)$/.exec(member.slice(MIGRATION_MEMBER_PREFIX.length));
  return m?.[1] && m[2] ? { sessionId: m[1], incarnation: Number(m[2]) } : undefined;
}

/**
 * A fresh release token: 128 random bits, base64url (22 characters). Drawn when a release attempt is requested and
 * stored with it; only a gpu.released or gpu.release.failed echoing it answers that attempt.
 */
export function drawReleaseToken(): string {
  return randomBytes(16).toString('base64url');
}

/** Identifies a CloudEvent for idempotence: a duplicate is the same `source` + `id`. */
export function eventFingerprint(source: string, id: string): string {
  return createHash('sha1').update(source).update('\n').update(id).digest('base64url').slice(0, 12);
}

/**
 * One CloudEvent may have two effects on a session (inference.completed is scored by activity-score and ends the
 * session in destroy-dispatch), and each must be deduplicated on its own: claims record their fingerprints in the
 * session's ring under their own namespace, so one consumer's record never makes the other's effect a duplicate.
 */
function claimFingerprint(fingerprint: string): string {
  return fingerprint === '' ? '' : `c${fingerprint}`;
}

/** Where a session's GPU memory lives. */
export interface Placement {
  node: string;
  runtimeUrl: string;
  gpuBytes: number;
  /** llama-server: the slot the session is pinned to (contract Placement.slot). */
  slot?: number | undefined;
  /** SGLang: the engine's own session id (contract Placement.engineSessionId). */
  engineSessionId?: string | undefined;
}

/** A placement as an event carries it: only the engine address parts it has. */
export function placementForEvent(p: Placement): Placement {
  const { node, runtimeUrl, gpuBytes, slot, engineSessionId } = p;
  return { node, runtimeUrl, gpuBytes, ...(slot === undefined ? {} : { slot }), ...(engineSessionId === undefined ? {} : { engineSessionId }) };
}

/** Where a session lives inside its engine, beyond its id: what a release of it must name. */
export interface EngineAddress {
  slot?: number;
  engineSessionId?: string;
}

/** The engine address as the session record keeps it: `<slot>/<engineSessionId>`, '' when there is none. */
export function encodeEngineAddress(p: Pick<Placement, 'slot' | 'engineSessionId'>): string {
  if (p.slot === undefined && p.engineSessionId === undefined) return '';
  return `${p.slot ?? ''}/${p.engineSessionId ?? ''}`;
}

/** The engine address a record's `ea` holds (see encodeEngineAddress). */
export function decodeEngineAddress(text: string): EngineAddress {
  const sep = text.indexOf('/');
  if (sep < 0) return {};
  const [slot, engineSessionId] = [text.slice(0, sep), text.slice(sep + 1)];
  return { ...(slot === '' ? {} : { slot: Number(slot) }), ...(engineSessionId === '' ? {} : { engineSessionId }) };
}

export type OpenResult =
  | { code: 'OPENED'; incarnation: number; deadline: number; endedBy?: Cause }
  | { code: 'REOPENED'; incarnation: number; deadline: number; previousIncarnation: number; endedBy?: Cause }
  | { code: 'REFRESHED'; incarnation: number; deadline: number }
  | { code: 'MIGRATED'; incarnation: number; deadline: number; previous: { incarnation: number; placement: Placement; token: string } }
  | { code: 'DUPLICATE' | 'STALE' | 'BUSY' | 'NOT_OWNER'; incarnation: number };

export type LivenessResult =
  | { code: 'REFRESHED'; incarnation: number; deadline: number }
  | { code: 'UNKNOWN' }
  | { code: 'ENDED'; incarnation: number; state: SessionState }
  | { code: 'NOT_OWNER'; incarnation: number };

export type HoldResult =
  | { code: 'HELD'; incarnation: number; holdUntil: number; deadline: number }
  | { code: 'DUPLICATE'; incarnation: number }
  | { code: 'UNKNOWN' }
  | { code: 'ENDED'; incarnation: number; state: SessionState }
  | { code: 'NOT_OWNER'; incarnation: number };

/** Where a session's KV is in demote before destroy (record field `dm`); absent: on the GPU. */
export type OffloadStage = 'demoting' | 'demoted' | 'restoring';

/** The two offload operations: demote (KV off the GPU, kept) and restore (back). */
export type OffloadOp = 'demote' | 'restore';

function offloadStageOf(v: unknown): OffloadStage | undefined {
  const text = v === undefined || v === null ? '' : str(v);
  if (text === '') return undefined;
  if (text === 'demoting' || text === 'demoted' || text === 'restoring') return text;
  throw new UnexpectedReplyError(`unknown offload stage ${text}`);
}

export type ActivityResult =
  | { code: 'APPLIED'; incarnation: number; deadline: number; holdUntil: number; version: number; offload?: OffloadStage }
  | { code: 'CONFLICT'; incarnation: number; version: number }
  | { code: 'DUPLICATE'; incarnation: number; offload?: OffloadStage }
  | { code: 'UNKNOWN' }
  | { code: 'ENDED'; incarnation: number; state: SessionState }
  | { code: 'NOT_OWNER'; incarnation: number };

/** The GPU release attempt a destroy recorded: its number and token (0 and '' before any was requested). */
export interface ReleaseAttempt {
  attempt: number;
  token: string;
}

export type ClaimResult =
  | {
    code: 'CLAIMED' | 'ALREADY' | 'DUPLICATE'; incarnation: number; stage: Stage; cause: Cause; placement: Placement; release: ReleaseAttempt;
    /** The destroy gave up its GPU release (release_failed) and waits for an operator. */
    gaveUp: boolean;
  }
  | { code: 'STALE' | 'REVIVED' | 'ENDED' | 'NOT_OWNER' | 'UNVERIFIED'; incarnation: number }
  | { code: 'UNKNOWN' | 'MARKED' };

/** What the deadline engine's claim of a bucket's due sessions took (claimDue). */
export interface DueClaims {
  /** Sessions claimed as expired, in deadline order. */
  claimed: { sessionId: string; incarnation: number; deadline: number }[];
  /** Due entries whose session had already ended (closed meanwhile); removed from the index. */
  skipped: number;
  /**
   * Due ids whose record the script did not find: a stray entry, or on Redis Cluster a record a resharding has
   * moved already. Left in the index, for the caller to settle with claimExpired, whose declared keys Redis
   * redirects (and which removes a true stray).
   */
  unresolved: string[];
  /** The bucket's earliest deadline after the claims, or null when no session is left in its index (or its due ones are held). */
  head: number | null;
  /** Due sessions whose silence overlapped a blind window: their deadline moved past it (the outage rule). */
  deferred: number;
  /** Since when no heartbeat has been heard in the bucket while some were due; sessions due after it are held. */
  holdFrom: number | null;
  /** The blind window this claim recorded, if any. */
  blind: { from: number; to: number } | null;
  /** The bucket's heartbeat marks and how many sessions it indexes, for the engine's verdict on the fleet. */
  heard: { hb: number | null; hg: number | null; n: number };
}

/**
 * The outage rule as a due claim applies it (lua/includes/blind.lua, claim-due-5.lua): what counts as unwatched, and
 * the deadline engine's verdict on the fleet's heartbeats (functions/heartbeat-timeout/ingest-silence.ts). Without it
 * claimDue and claimExpired apply no rule.
 */
export interface OutageRule {
  /** A bucket no engine claimed in for longer than this was unwatched (> 0). */
  blindGapMs: number;
  /** Since when the fleet's heartbeats are unheard (null or absent: heard): sessions due after it are held. */
  holdFrom?: number | null;
  /** When heartbeats were last heard: a hold still kept is closed there. */
  heardAt?: number | null;
}

/** How long blind windows are kept: longer than any liveness window a session may set (100 beats of a day's interval). */
export const BLIND_RETENTION_MS = 100 * 86_400_000;

export type ExpiryClaim = { code: 'CLAIMED'; incarnation: number; deadline: number } | { code: 'NOT_DUE'; deadline: number } | { code: 'GONE' };

export type AdvanceResult =
  | { code: 'ADVANCED'; stage: Stage }
  | { code: 'REISSUED'; attempt: number }
  | { code: 'EXHAUSTED' | 'GAVE_UP'; attempts: number }
  | { code: 'ALREADY'; stage: Stage }
  | { code: 'STALE'; incarnation: number }
  | { code: 'NOT_DESTROYING'; state: SessionState }
  | { code: 'UNKNOWN' };

export type ReleaseResult =
  | { code: 'RELEASED' | 'MIGRATION_RELEASED'; node: string; registeredBytes: number }
  | { code: 'DUPLICATE'; stage: Stage }
  | { code: 'STALE'; incarnation: number }
  | { code: 'NOT_REQUESTED'; stage: Stage }
  | { code: 'NOT_DESTROYING' | 'UNKNOWN' | 'TOKEN_MISMATCH' };

/** What a gpu.release.requested may make gpu-release call (releaseTarget). */
export type ReleaseTarget =
  | { code: 'PENDING'; kind: 'destroy' | 'migration'; node: string; runtimeUrl: string; attempt: number }
  | { code: 'NOT_PENDING'; why: 'unknown' | 'stale' | 'live' | 'not_requested' | 'released' | 'token_mismatch' };

/** What gpu-release's delivery of a release request may do about the runtime call (beginReleaseCall). */
export type ReleaseCall =
  | { code: 'CALL'; kind: 'destroy' | 'migration'; node: string; runtimeUrl: string; attempt: number; address: EngineAddress }
  | { code: 'IN_FLIGHT'; leaseUntil: number }
  | { code: 'ANSWERED'; freedBytes: number; node: string; estimated: boolean }
  | { code: 'FAILED' }
  | Extract<ReleaseTarget, { code: 'NOT_PENDING' }>;

/** What requestDemote / requestRestore decided (request-demote-2.lua, request-restore-2.lua). */
export type OffloadRequest =
  | { code: 'REQUESTED' | 'PENDING'; token: string }
  | { code: 'ALREADY'; stage: OffloadStage }
  | { code: 'REFUSED' | 'RESIDENT' | 'UNKNOWN' }
  | { code: 'HELD'; holdUntil: number }
  | { code: 'ENDED'; state: SessionState }
  | { code: 'STALE'; incarnation: number };

/** An offload call's answer as the call record keeps it: bytes offloaded (demote) or restored, GPU bytes freed. */
export interface OffloadAnswer {
  bytes: number;
  freedBytes: number;
  estimated: boolean;
}

/** What gpu-release's delivery of a demote or restore request may do about the runtime call (beginOffloadCall). */
export type OffloadCall =
  | { code: 'CALL'; node: string; runtimeUrl: string; address: EngineAddress }
  | { code: 'IN_FLIGHT'; leaseUntil: number }
  | { code: 'ANSWERED'; answer: OffloadAnswer }
  | { code: 'FAILED' | 'NOTHING' }
  | { code: 'NOT_PENDING'; why: 'unknown' | 'stale' | 'ended' | 'superseded' | 'held' };

function withOffload<R extends { code: string }>(result: R, stage: unknown): R & { offload?: OffloadStage } {
  const offload = offloadStageOf(stage);
  return offload === undefined ? result : { ...result, offload };
}

function offloadAnswerOf(text: string): OffloadAnswer {
  const m = /^(\d+):(\d+)(e?)$/.exec(text);
  if (!m) throw new UnexpectedReplyError(`offload answer ${text}`);
  return { bytes: Number(m[1]), freedBytes: Number(m[2]), estimated: m[3] === 'e' };
}

export type FailedDestroySettlement =
  | { code: 'RETRYING'; incarnation: number }
  | { code: 'RESOLVED'; incarnation: number; node: string; bytes: number }
  | { code: 'NOT_FAILED'; state: SessionState }
  | { code: 'UNKNOWN' };

export type PurgeResult =
  | { code: 'PURGED' | 'COMPLETED' }
  | { code: 'ALREADY'; stage: Stage }
  | { code: 'NOT_READY'; stage: Stage }
  | { code: 'STALE'; incarnation: number }
  | { code: 'NOT_DESTROYING'; state: SessionState }
  | { code: 'UNKNOWN' };

export type StallClaim =
  | { code: 'STALLED'; sessionId: string; incarnation: number; stage: Stage; cause: Cause; placement: Placement; attempt: number }
  | { code: 'MIGRATION'; sessionId: string; incarnation: number; placement: Placement; token: string }
  | { code: 'NOT_STALLED' | 'GONE' };

/** What `inspect` shows of a session (sessionctl, tests, the destroy pipeline). */
export interface SessionView {
  sessionId: string;
  bucket: number;
  state: SessionState;
  incarnation: number;
  deadline?: number;
  holdUntil?: number;
  windowMs?: number;
  placement?: Placement;
  tenant?: string;
  model?: string;
  openedAt?: number;
  cause?: Cause;
  extraCauses: Cause[];
  stage?: Stage;
  releaseAttempt?: number;
  /** The token of the recorded release attempt: what its gpu.released must echo to be booked. */
  releaseToken?: string;
  confirmedFreedBytes?: number;
  /** When the destroy gave up its GPU release (release_failed), waiting for an operator to retry or resolve it. */
  releaseFailedAt?: number;
  /** Demote before destroy: where the KV is (absent: on the GPU), bytes kept off the GPU, demotes booked. */
  offload?: OffloadStage;
  offloadedBytes?: number;
  demotes?: number;
  /** When the runtime refused a demote for good: none is asked again in this incarnation. */
  demoteRefusedAt?: number;
  timeline: { stage: Stage; at: number }[];
  claimedAt?: number;
  completedAt?: number;
  /** Remaining tombstone life (ms) once destroyed. */
  tombstoneTtlMs?: number;
}

/** What finishing a destroy reads of a session's record: the fields session.destroyed is made of. */
export type DestroyRecord = Pick<SessionView, 'state' | 'incarnation' | 'cause' | 'extraCauses' | 'stage' | 'timeline' | 'claimedAt'> & {
  /** When the cause was triggered, by event time (for an expiry, the deadline): where end-to-end reclaim latency starts. */
  causeAt?: number;
};

/** The record fields a DestroyRecord is made of (`s` first: a record without it is unknown). */
const DESTROY_RECORD_FIELDS = ['s', 'i', 'c', 'xc', 'st', 'tl', 'ca', 'ct'] as const;

/** The DestroyRecord part of a session record's fields (inspect's view starts from it). */
/** The release attempt a session's view records (its number and token), or undefined when it records none. */
export function releaseAttemptOf(view: Pick<SessionView, 'releaseAttempt' | 'releaseToken'>): ReleaseAttempt | undefined {
  return view.releaseAttempt === undefined || !view.releaseToken ? undefined : { attempt: view.releaseAttempt, token: view.releaseToken };
}

function destroyRecordOf(fields: Partial<Record<string, string>>): DestroyRecord {
  const record: DestroyRecord = {
    state: STATE_OF[fields.s ?? ''] ?? 'active',
    incarnation: Number(fields.i),
    extraCauses: fields.xc ? (fields.xc.split(',') as Cause[]) : [],
    timeline: parseTimeline(fields.tl),
  };
  if (fields.c) record.cause = fields.c as Cause;
  if (fields.st) record.stage = fields.st as Stage;
  if (fields.ca) record.claimedAt = Number(fields.ca);
  if (fields.ct) record.causeAt = Number(fields.ct);
  return record;
}

/** Most heartbeats applied by one script call: bounds the time Redis spends in one script. */
const MAX_HEARTBEAT_BATCH = 256;

/**
 * How often this process asks a bucket's heartbeat call to note the bucket heard (heartbeat-n.lua's marks, which the
 * outage rule reads): the script itself takes calls closer than this for one moment (its literal 50), so asking more
 * often only cost Redis a read of the marks on every call. With several replicas a bucket's `hb` may trail its last
 * heartbeat by up to twice this (a replica that asked within it found another's mark fresh), against the seconds the
 * outage rule judges silences in (INGEST_SILENCE_MS, 5 s by default).
 */
const HEARD_MARK_MS = 50;

/** One heartbeat as heartbeat-n.lua takes it. */
interface HeartbeatItem {
  readonly sessionId: string;
  readonly liveFrom: number;
  /** The tenant the heartbeat names ('' or absent for none). */
  readonly tenant?: string | undefined;
}

interface PendingHeartbeat extends HeartbeatItem {
  tenant: string;
  now: number;
  resolve: (r: LivenessResult) => void;
  reject: (err: unknown) => void;
}

const STATE_OF: Record<string, SessionState> = { A: 'active', D: 'destroying', X: 'destroyed' };

/** A script reply that does not match its documented shape: a bug or a version skew, never retried silently. */
export class UnexpectedReplyError extends Error {
  override name = 'UnexpectedReplyError';
}

/** A session record a script could not read (a field it needs is missing or not a number): damaged data, not a retry. */
export class UnreadableRecordError extends UnexpectedReplyError {
  override name = 'UnreadableRecordError';
}

const num = (v: unknown): number => {
  const n = typeof v === 'number' ? v : Number(v);
  if (!Number.isFinite(n)) throw new UnexpectedReplyError(`expected a number in script reply, got ${JSON.stringify(v)}`);
  return n;
};
/** A placement from its interned JSON `[node, runtimeUrl]` (empty when there is none). */
function placementOf(raw: string | null, gpuBytes: number): Placement {
  const [node, runtimeUrl] = raw ? (JSON.parse(raw) as [string, string]) : ['', ''];
  return { node, runtimeUrl, gpuBytes };
}

const str = (v: unknown): string => {
  if (typeof v === 'string') return v;
  if (typeof v === 'number') return String(v);
  if (Buffer.isBuffer(v)) return v.toString('utf8');
  return '';
};

/**
 * Whether a session id can travel in heartbeat-n.lua's space-separated list: never empty, never with a space (the
 * contract's SESSION_ID_PATTERN allows neither, so only a caller that skipped it is refused).
 */
const sendableId = (id: string): boolean => id.length > 0 && !id.includes(' ');

/**
 * One heartbeat's answer in heartbeat-n.lua's reply: incarnation (an integer, or a quiet record's digits), then the
 * deadline or a negative code.
 */
function livenessOf(incarnation: unknown, deadline: unknown): LivenessResult {
  const d = num(deadline);
  if (d > 0) return { code: 'REFRESHED', incarnation: num(incarnation), deadline: d };
  if (d === -1) return { code: 'UNKNOWN' };
  if (d === -2) return { code: 'NOT_OWNER', incarnation: num(incarnation) };
  if (d === -3) return { code: 'ENDED', incarnation: num(incarnation), state: 'destroying' };
  if (d === -4) return { code: 'ENDED', incarnation: num(incarnation), state: 'destroyed' };
  if (d === -5) throw new UnreadableRecordError('its session record has no numeric incarnation or window: nothing of it was changed');
  throw new UnexpectedReplyError(`heartbeat replied deadline ${d}`);
}

export function parseTimeline(raw: string | undefined | null): { stage: Stage; at: number }[] {
  if (!raw) return [];
  return raw.split(',').map((entry) => {
    const at = entry.lastIndexOf('@');
    return { stage: entry.slice(0, at) as Stage, at: Number(entry.slice(at + 1)) };
  });
}

/**
 * A quiet record's fields from its packed value (the quiet hash's format, lua/includes/quiet.lua): `i w p g od f`, then
 * `\x1f<name>=<value>` for each of `tn`, `m`, `ea`, `ro` it holds; a quiet record is ACTIVE.
 */
export function unpackQuietRecord(packed: string): Record<string, string> {
  const [core = '', ...extras] = packed.split('\x1f');
  const fields: Record<string, string> = { s: 'A' };
  const names = ['i', 'w', 'p', 'g', 'od', 'f'];
  core.split(' ').forEach((v, k) => {
    const name = names[k];
    if (name !== undefined && v !== '') fields[name] = v;
  });
  for (const extra of extras) {
    const eq = extra.indexOf('=');
    if (eq > 0) fields[extra.slice(0, eq)] = extra.slice(eq + 1);
  }
  return fields;
}

/** Typed access to the session core in Redis. */
export class SessionStore {
  readonly redis: RedisClient;
  readonly keys: KeySpace;
  readonly #scripts: Scripts;
  readonly #tombstoneTtlMs: number;
  /** Release attempts a destroy may make before it gives up (RELEASE_MAX_ATTEMPTS); no limit when absent. */
  readonly #releaseMaxAttempts: number | undefined;
  /** Whether open leaves a record that holds only what it wrote quiet (SESSION_RECORD_PACKING). */
  readonly #quietRecords: boolean;
  #pendingHeartbeats = new Map<number, PendingHeartbeat[]>();
  #pendingCount = 0;
  #flushScheduled = false;
  /** Per bucket, the `now` of the last heartbeat call this process asked to note the bucket heard. */
  #heardMarkedAt = new Map<number, number>();

  /**
   * `quietRecords` (SESSION_RECORD_PACKING; default false): open packs a record that holds only what it wrote into its
   * bucket's quiet hash (lua/includes/quiet.lua). Every script reads both forms whatever it is.
   */
  constructor(redis: RedisClient, keys: KeySpace, scripts: Scripts, opts: { tombstoneTtlMs: number; releaseMaxAttempts?: number; quietRecords?: boolean }) {
    this.redis = redis;
    this.keys = keys;
    this.#scripts = scripts;
    this.#tombstoneTtlMs = opts.tombstoneTtlMs;
    this.#releaseMaxAttempts = opts.releaseMaxAttempts;
    this.#quietRecords = opts.quietRecords ?? false;
  }

  /**
   * A session's record as a hash of its fields, wherever it is kept: its own hash, or quiet in its bucket's hash
   * (lua/includes/quiet.lua); empty when it has none. The record key first, as the scripts read it (it wins over a
   * quiet field); on a miss the quiet field, and on a miss there the record key once more, since a script may have
   * opened a quiet record out between the first two reads. (Not one MULTI: on Redis Cluster a multi-key read in a
   * slot being migrated is refused.)
   */
  async #recordOf(k: SessionKeys): Promise<Record<string, string>> {
    const own = await this.redis.hgetall(k.session);
    if (own.s !== undefined) return own;
    const packed = await this.redis.hget(k.quiet, k.sessionId);
    if (packed !== null) return unpackQuietRecord(packed);
    return this.redis.hgetall(k.session);
  }

  /**
   * Named fields of a session's record (`s` first), in one HMGET where it has a hash of its own, as every session
   * being destroyed has (the claim opened it out); only a miss looks further, with #recordOf.
   */
  async #recordFields(k: SessionKeys, fields: readonly string[]): Promise<(string | null)[]> {
    const values = await this.redis.hmget(k.session, ...fields);
    if (values[0] !== null) return values;
    const record = await this.#recordOf(k);
    return fields.map((f) => record[f] ?? null);
  }

  async #placement(k: SessionKeys, pid: unknown, gpuBytes = 0): Promise<Placement> {
    return placementOf(pid ? await this.redis.hget(k.placements, `id:${str(pid)}`) : null, gpuBytes);
  }

  /** Applies a session.opened. */
  async open(input: {
    sessionId: string;
    fingerprint: string;
    now: number;
    liveFrom: number;
    windowMs: number;
    placement: Placement;
    /** The tenant the opened names: the new session's owner, and a live session's must be the same. */
    tenant?: string | undefined;
    model?: string | undefined;
  }): Promise<OpenResult> {
    const k = this.keys.session(input.sessionId);
    // Should this opened move the session, the old allocation's release is booked only with this token.
    const migrationToken = drawReleaseToken();
    const r = await this.#scripts.run(
      'openSession',
      [k.session, k.deadlines, k.meta, k.placements, k.ledger, k.migrations, k.destroying, k.endMarker, k.watch, k.quiet],
      [input.sessionId, input.fingerprint, input.now, Math.min(input.liveFrom, input.now), input.windowMs,
        input.placement.node, input.placement.runtimeUrl, input.placement.gpuBytes, input.tenant ?? '', input.model ?? '', migrationToken,
        encodeEngineAddress(input.placement), this.#quietRecords ? '1' : ''],
    );
    const code = str(r[0]);
    switch (code) {
      case 'REFRESHED':
        return { code, incarnation: num(r[1]), deadline: num(r[2]) };
      case 'OPENED':
      case 'REOPENED': {
        const endedBy = str(r[4]);
        return {
          code, incarnation: num(r[1]), deadline: num(r[2]), ...(code === 'REOPENED' ? { previousIncarnation: num(r[3]) } : {}),
          ...(endedBy === '' ? {} : { endedBy: endedBy as Cause }),
        } as OpenResult;
      }
      case 'MIGRATED':
        return {
          code, incarnation: num(r[1]), deadline: num(r[2]),
          previous: { incarnation: num(r[3]), placement: { node: str(r[4]), runtimeUrl: str(r[5]), gpuBytes: num(r[6]) }, token: migrationToken },
        };
      case 'DUPLICATE':
      case 'STALE':
      case 'BUSY':
      case 'NOT_OWNER':
        return { code, incarnation: num(r[1]) };
    }
    throw new UnexpectedReplyError(`openSession replied ${code}`);
  }

  #liveness(code: string, r: unknown[]): { code: 'UNKNOWN' } | { code: 'ENDED'; incarnation: number; state: SessionState } | { code: 'NOT_OWNER'; incarnation: number } | undefined {
    if (code === 'UNKNOWN') return { code };
    if (code === 'ENDED') return { code, incarnation: num(r[1]), state: STATE_OF[str(r[2])] ?? 'destroyed' };
    if (code === 'NOT_OWNER') return { code, incarnation: num(r[1]) };
    return undefined;
  }

  /**
   * Applies a session.heartbeat: the deadline moves to liveFrom + window, never earlier. Heartbeats that arrive in
   * the same event-loop turn are applied together: on a single Redis in one script call for all their buckets, on
   * Redis Cluster in one call per bucket (see heartbeat-n.lua).
   */
  heartbeat(sessionId: string, liveFrom: number, now: number, tenant = ''): Promise<LivenessResult> {
    // Refused alone, before it joins a batch that one such id would spoil (the ids travel space-separated).
    if (!sendableId(sessionId)) return Promise.reject(new TypeError(`session id ${JSON.stringify(sessionId)} is empty or contains a space`));
    const bucket = this.keys.bucketOf(sessionId);
    let group = this.#pendingHeartbeats.get(bucket);
    if (!group) {
      group = [];
      this.#pendingHeartbeats.set(bucket, group);
    }
    const pending = group;
    const result = new Promise<LivenessResult>((resolve, reject) => pending.push({ sessionId, liveFrom: Math.min(liveFrom, now), tenant, now, resolve, reject }));
    this.#pendingCount += 1;
    // A full call goes at once: a bucket's group on Cluster, everything pending on a single Redis.
    if (this.redis.isCluster ? pending.length >= MAX_HEARTBEAT_BATCH : this.#pendingCount >= MAX_HEARTBEAT_BATCH) this.#flushHeartbeats(this.redis.isCluster ? bucket : undefined);
    else if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      setImmediate(() => {
        this.#flushScheduled = false;
        this.#flushHeartbeats();
      });
    }
    return result;
  }

  /**
   * Sends the pending heartbeats (of one bucket only, when named); `now` of each call is when the latest of its
   * heartbeats was received.
   */
  #flushHeartbeats(bucket?: number): void {
    let groups: Map<number, PendingHeartbeat[]>;
    if (bucket === undefined) {
      groups = this.#pendingHeartbeats;
      this.#pendingHeartbeats = new Map();
      this.#pendingCount = 0;
    } else {
      const group = this.#pendingHeartbeats.get(bucket) ?? [];
      this.#pendingHeartbeats.delete(bucket);
      this.#pendingCount -= group.length;
      groups = new Map([[bucket, group]]);
    }
    for (const call of this.#packHeartbeats(groups)) {
      let now = 0;
      for (const part of call) for (const h of part.members) if (h.now > now) now = h.now;
      this.#heartbeatCall(now, call, (h) => h).then(
        (results) => {
          let i = 0;
          for (const part of call) {
            for (const h of part.members) {
              const r = results[i++]!;
              if (r instanceof Error) h.reject(r);
              else h.resolve(r);
            }
          }
        },
        (err: unknown) => {
          for (const part of call) for (const h of part.members) h.reject(err);
        },
      );
    }
  }

  /**
   * Packs heartbeats grouped by bucket into script calls of at most MAX_HEARTBEAT_BATCH heartbeats: on a single
   * Redis as many buckets' groups as fit, on Redis Cluster (where a script's keys share one slot) one bucket's.
   */
  #packHeartbeats<T>(groups: ReadonlyMap<number, readonly T[]>): { bucket: number; members: readonly T[] }[][] {
    const calls: { bucket: number; members: readonly T[] }[][] = [];
    let call: { bucket: number; members: readonly T[] }[] = [];
    let size = 0;
    for (const [bucket, members] of groups) {
      for (let start = 0; start < members.length; ) {
        if (size === MAX_HEARTBEAT_BATCH || (this.redis.isCluster && size > 0)) {
          calls.push(call);
          call = [];
          size = 0;
        }
        const take = Math.min(members.length - start, MAX_HEARTBEAT_BATCH - size);
        call.push({ bucket, members: take === members.length ? members : members.slice(start, start + take) });
        size += take;
        start += take;
      }
    }
    if (size > 0) calls.push(call);
    return calls;
  }

  /**
   * One heartbeat-n.lua call: groups of one bucket's heartbeats each, read through `item` (so that neither caller
   * copies its heartbeats into another shape first: this runs for every heartbeat there is). Answers in order.
   */
  async #heartbeatCall<T>(
    now: number, call: readonly { bucket: number; members: readonly T[] }[], item: (m: T) => HeartbeatItem,
  ): Promise<(LivenessResult | UnreadableRecordError)[]> {
    // Per group, the ids in one argument and the ages in another: per-argument handling, here and in Redis, was most
    // of a heartbeat's cost. Tenants follow one per heartbeat only when one of the call names a tenant.
    const keys: string[] = [];
    const args: string[] = [String(now), this.redis.isCluster ? '1' : '0'];
    let count = 0;
    let tenants = false;
    // The buckets this call asks to note heard, each with what this process had noted before (see the rejection below).
    const asked: { bucket: number; before: number | undefined }[] = [];
    for (const { bucket, members } of call) {
      const b = this.keys.bucket(bucket);
      keys.push(b.deadlines, b.watch, b.quiet);
      let ids = '';
      let ages = '';
      for (let i = 0; i < members.length; i++) {
        const h = item(members[i]!);
        const sep = i === 0 ? '' : ' ';
        ids += sep + h.sessionId;
        ages += sep + String(now - Math.min(h.liveFrom, now));
        if (!tenants && (h.tenant ?? '') !== '') tenants = true;
      }
      // Asked again HEARD_MARK_MS after the last time, or at once if this process's clock went back.
      const marked = this.#heardMarkedAt.get(bucket);
      const mark = marked === undefined || now - marked >= HEARD_MARK_MS || now < marked;
      if (mark) {
        asked.push({ bucket, before: marked });
        this.#heardMarkedAt.set(bucket, now);
      }
      args.push(this.keys.sessionRecordPrefix(bucket), ids, ages, mark ? '1' : '');
      count += members.length;
    }
    if (tenants) for (const { members } of call) for (const m of members) args.push(item(m).tenant ?? '');
    let r: unknown[];
    try {
      r = await this.#scripts.run('heartbeat', keys, args);
    } catch (err) {
      // A call that failed wrote no mark: the next call asks again, rather than 50 ms later (unless another call has
      // asked since).
      for (const { bucket, before } of asked) {
        if (this.#heardMarkedAt.get(bucket) !== now) continue;
        if (before === undefined) this.#heardMarkedAt.delete(bucket);
        else this.#heardMarkedAt.set(bucket, before);
      }
      throw err;
    }
    if (r.length !== 2 * count) throw new UnexpectedReplyError(`heartbeat replied ${r.length} values for ${count} heartbeats`);
    // A record that could not be read fails its own heartbeat, not the call's others.
    const out = new Array<LivenessResult | UnreadableRecordError>(count);
    let i = 0;
    for (const { members } of call) {
      for (const m of members) {
        try {
          out[i] = livenessOf(r[2 * i], r[2 * i + 1]);
        } catch (err) {
          if (!(err instanceof UnreadableRecordError)) throw err;
          out[i] = new UnreadableRecordError(`heartbeat of session ${item(m).sessionId}: ${err.message}`);
        }
        i++;
      }
    }
    return out;
  }

  /**
   * Applies many heartbeats at once (a batched delivery): one script call on a single Redis (or one per
   * MAX_HEARTBEAT_BATCH heartbeats), one per bucket touched on Redis Cluster; results in order.
   */
  async heartbeatMany(items: readonly HeartbeatItem[], now: number): Promise<LivenessResult[]> {
    // Grouped by bucket as indices into `items`.
    const byBucket = new Map<number, number[]>();
    for (let i = 0; i < items.length; i++) {
      const id = items[i]!.sessionId;
      if (!sendableId(id)) throw new TypeError(`session id ${JSON.stringify(id)} is empty or contains a space`);
      const bucket = this.keys.bucketOf(id);
      const group = byBucket.get(bucket);
      if (group) group.push(i);
      else byBucket.set(bucket, [i]);
    }
    const out = new Array<LivenessResult>(items.length);
    let unreadable: UnreadableRecordError | undefined;
    await Promise.all(
      this.#packHeartbeats(byBucket).map((call) =>
        this.#heartbeatCall(now, call, (i) => items[i]!).then((rs) => {
          let j = 0;
          for (const part of call) {
            for (const i of part.members) {
              const r = rs[j++]!;
              // A batch is answered whole: one unreadable record fails it, after every call has been applied.
              if (r instanceof Error) unreadable ??= r;
              else out[i] = r;
            }
          }
        }),
      ),
    );
    if (unreadable) throw unreadable;
    return out;
  }

  /** Applies a session.hold: no reclamation for silence or idleness until now + durationMs. */
  async hold(sessionId: string, fingerprint: string, now: number, durationMs: number, tenant = ''): Promise<HoldResult> {
    const k = this.keys.session(sessionId);
    const r = await this.#scripts.run('grantHold', [k.session, k.deadlines, k.quiet], [sessionId, fingerprint, now, durationMs, tenant]);
    const code = str(r[0]);
    if (code === 'HELD') return { code, incarnation: num(r[1]), holdUntil: num(r[2]), deadline: num(r[3]) };
    if (code === 'DUPLICATE') return { code, incarnation: num(r[1]) };
    const other = this.#liveness(code, r);
    if (other) return other;
    throw new UnexpectedReplyError(`grantHold replied ${code}`);
  }

  /** A bucket's outage-rule state: its blind spans ending after `since` and since when it is unheard now, if it is. */
  async blindState(bucket: number, since: number): Promise<BlindState> {
    const b = this.keys.bucket(bucket);
    const [members, holdFrom] = await Promise.all([this.redis.zrangebyscore(b.blind, `(${since}`, '+inf'), this.redis.hget(b.watch, 'bs')]);
    return { spans: parseSpans(members), holdFrom: holdFrom === null ? null : Number(holdFrom) };
  }

  /** Reads the activity context (and its version) for a compare-and-set update. */
  async readContext(sessionId: string): Promise<{ version: number; fields: Record<string, string> }> {
    const fields = await this.redis.hgetall(this.keys.session(sessionId).context);
    return { version: Number(fields.v ?? '0'), fields };
  }

  /** Applies a scored activity: liveness refresh plus the new context, if the context is still at `expectedVersion`. */
  async recordActivity(input: {
    sessionId: string;
    fingerprint: string;
    liveFrom: number;
    now: number;
    expectedVersion: number;
    lastActivityAt: number;
    context: Record<string, string>;
    /** The tenant the event names ('' or absent for none). */
    tenant?: string | undefined;
  }): Promise<ActivityResult> {
    const k = this.keys.session(input.sessionId);
    const pairs = Object.entries(input.context).flatMap(([f, v]) => [f, v]);
    const r = await this.#scripts.run(
      'recordActivity',
      [k.session, k.deadlines, k.context, k.quiet],
      [input.sessionId, input.fingerprint, Math.min(input.liveFrom, input.now), String(input.expectedVersion), input.lastActivityAt, input.tenant ?? '', ...pairs],
    );
    const code = str(r[0]);
    if (code === 'APPLIED') return withOffload({ code: 'APPLIED' as const, incarnation: num(r[1]), deadline: num(r[2]), holdUntil: num(r[3]), version: num(r[4]) }, r[5]);
    if (code === 'CONFLICT') return { code, incarnation: num(r[1]), version: num(r[2]) };
    if (code === 'DUPLICATE') return withOffload({ code: 'DUPLICATE' as const, incarnation: num(r[1]) }, r[2]);
    const other = this.#liveness(code, r);
    if (other) return other;
    throw new UnexpectedReplyError(`recordActivity replied ${code}`);
  }

  /** Claims the destroy of a session's current (or the named) incarnation; the first trigger wins. */
  async claimDestroy(input: {
    sessionId: string;
    fingerprint: string;
    incarnation?: number | undefined;
    cause: Cause;
    now: number;
    /**
     * For cause 'idle': the session.idle's event id. Only a verdict the idle checker recorded (recordIdleVerdict)
     * claims a destroy or becomes a cause of one, judged at the time recorded with it; any other is UNVERIFIED and
     * changes nothing (but see `resume`).
     */
    idleVerdict?: string | undefined;
    /**
     * The stall watchdog's resume of a destroy (destroy.resume), which claims again under the destroy's own cause: an
     * idle destroy is resumed though the resume names no verdict.
     */
    resume?: boolean;
    /** When the trigger was sent (its CloudEvent time), if known: one sent before a reopen is STALE. */
    sentAt?: number | undefined;
    /**
     * For the pipeline's triggers (closed, completed): the tenant the event names ('' for none), which must own the
     * session. Absent for our own triggers and an operator's, which may end any session.
     */
    owner?: string | undefined;
    /** When the cause was triggered, by event time (default: now); the earliest trigger is the destroy's cause. */
    causeAt?: number | undefined;
    /**
     * The pipeline's ends: one that finds no session yet (the Broker delivered it before the open) waits in a marker
     * for the tombstone TTL, and ends the open it was sent after (MARKED). Needs `sentAt` and `owner`.
     */
    waitForOpen?: boolean;
  }): Promise<ClaimResult> {
    const k = this.keys.session(input.sessionId);
    const r = await this.#scripts.run(
      'claimDestroy',
      [k.session, k.deadlines, k.destroying, k.context, k.endMarker, k.placements, k.quiet],
      [input.sessionId, claimFingerprint(input.fingerprint), input.incarnation ?? '', input.cause, input.now, input.resume === true ? '1' : '', input.sentAt ?? '',
        input.owner === undefined ? '' : `t:${input.owner}`, input.causeAt ?? '', input.waitForOpen === true ? this.#tombstoneTtlMs : '', input.idleVerdict ?? ''],
    );
    const code = str(r[0]);
    switch (code) {
      case 'CLAIMED':
      case 'ALREADY':
      case 'DUPLICATE': {
        return {
          code, incarnation: num(r[1]), stage: str(r[2]) as Stage, cause: str(r[3]) as Cause,
          // The placement comes with the claim (one round trip: the destroy asks for its release next).
          placement: placementOf(str(r[9]), Number(str(r[8]) || 0)),
          release: { attempt: num(r[5] ?? 0), token: str(r[6]) },
          gaveUp: str(r[7]) === '1',
        };
      }
      case 'STALE':
      case 'REVIVED':
      case 'ENDED':
      case 'NOT_OWNER':
      case 'UNVERIFIED':
        return { code, incarnation: num(r[1]) };
      case 'UNKNOWN':
      case 'MARKED':
        return { code };
    }
    throw new UnexpectedReplyError(`claimDestroy replied ${code}`);
  }

  /**
   * Records the session.idle the idle checker is about to emit (its event id) as one of the session's idle verdicts,
   * reached at `at`, which the claim of that event then requires and judges at that time (claim-destroy-7.lua):
   * RECORDED, or ENDED / UNKNOWN when the session is no longer the active incarnation judged (emit nothing then).
   */
  async recordIdleVerdict(sessionId: string, incarnation: number, eventId: string, at: number): Promise<'RECORDED' | 'ENDED' | 'UNKNOWN'> {
    const k = this.keys.session(sessionId);
    const r = await this.#scripts.run('recordIdleVerdict', [k.session, k.context, k.quiet], [incarnation, eventId, at]);
    const code = str(r[0]);
    if (code === 'RECORDED' || code === 'ENDED' || code === 'UNKNOWN') return code;
    throw new UnexpectedReplyError(`recordIdleVerdict replied ${code}`);
  }

  /**
   * The deadline engine's claim of up to `limit` due sessions of a bucket, with the bucket's next deadline: one
   * script call, so a wake-up costs one round trip however many sessions fall due together.
   */
  async claimDue(bucket: number, now: number, limit: number, rule?: OutageRule): Promise<DueClaims> {
    const b = this.keys.bucket(bucket);
    const r = await this.#scripts.run('claimDue', [b.deadlines, b.destroying, b.watch, b.blind, b.quiet], [
      now, limit, this.keys.sessionRecordPrefix(bucket), rule?.blindGapMs ?? 0, rule?.holdFrom ?? '', rule?.heardAt ?? '', BLIND_RETENTION_MS,
    ]);
    const optional = (v: unknown) => (str(v) === '' ? null : Number(str(v)));
    const unresolvedCount = num(r[9]);
    const unresolved = r.slice(10, 10 + unresolvedCount).map(str);
    const claimed: DueClaims['claimed'] = [];
    for (let i = 10 + unresolvedCount; i + 2 < r.length; i += 3) claimed.push({ sessionId: str(r[i]), incarnation: num(r[i + 1]), deadline: num(r[i + 2]) });
    const from = optional(r[4]);
    const to = optional(r[5]);
    return {
      claimed, skipped: num(r[1]), unresolved, head: optional(r[0]), deferred: num(r[2]), holdFrom: optional(r[3]),
      blind: from === null || to === null ? null : { from, to },
      heard: { n: num(r[6]), hb: optional(r[7]), hg: optional(r[8]) },
    };
  }

  /**
   * The atomic claim of one due session, with declared keys (the engine claims a bucket's at once with claimDue);
   * with `rule`, the outage rule applies to it as in claimDue.
   */
  async claimExpired(sessionId: string, now: number, rule?: OutageRule): Promise<ExpiryClaim> {
    const k = this.keys.session(sessionId);
    const r = await this.#scripts.run('claimExpired', [k.session, k.deadlines, k.destroying, k.watch, k.blind, k.quiet], [sessionId, now, rule ? 1 : 0, BLIND_RETENTION_MS]);
    const code = str(r[0]);
    if (code === 'CLAIMED') return { code, incarnation: num(r[1]), deadline: num(r[2]) };
    if (code === 'NOT_DUE') return { code, deadline: num(r[1]) };
    if (code === 'GONE') return { code };
    throw new UnexpectedReplyError(`claimExpired replied ${code}`);
  }

  /**
   * Checkpoints a destroy at `stage` (forward only); with `release`, records the GPU release attempt and its token
   * (a higher attempt at the same stage re-issues the release).
   */
  async advance(sessionId: string, incarnation: number, stage: Stage, now: number, release?: ReleaseAttempt): Promise<AdvanceResult> {
    const k = this.keys.session(sessionId);
    const r = await this.#scripts.run(
      'advanceStage',
      [k.session, k.destroying, k.failed, k.quiet],
      [sessionId, incarnation, stage, now, release?.attempt ?? '', release?.token ?? '', this.#releaseMaxAttempts ?? ''],
    );
    const code = str(r[0]);
    switch (code) {
      case 'EXHAUSTED':
      case 'GAVE_UP':
        return { code, attempts: num(r[1]) };
      case 'ADVANCED':
      case 'ALREADY':
        return { code, stage: str(r[1]) as Stage };
      case 'REISSUED':
        return { code, attempt: num(r[1]) };
      case 'STALE':
        return { code, incarnation: num(r[1]) };
      case 'NOT_DESTROYING':
        return { code, state: STATE_OF[str(r[1])] ?? 'active' };
      case 'UNKNOWN':
        return { code };
    }
    throw new UnexpectedReplyError(`advanceStage replied ${code}`);
  }

  /**
   * Books a runtime-confirmed GPU release in the ledger, exactly once per allocation, and only as the answer to the
   * release requested under `token`. `estimated`: the runtime's figure is an estimate, counted apart in the ledger.
   */
  async recordRelease(sessionId: string, incarnation: number, freedBytes: number, now: number, node: string, token: string, estimated = false): Promise<ReleaseResult> {
    const k = this.keys.session(sessionId);
    const r = await this.#scripts.run(
      'recordRelease',
      [k.session, k.destroying, k.ledger, k.migrations, k.placements, k.failed, k.quiet],
      [sessionId, incarnation, freedBytes, now, node, token, estimated ? '1' : '0'],
    );
    const code = str(r[0]);
    switch (code) {
      case 'RELEASED':
      case 'MIGRATION_RELEASED':
        return { code, node: str(r[1]), registeredBytes: num(r[2]) };
      case 'DUPLICATE':
        return { code, stage: str(r[1]) as Stage };
      case 'STALE':
        return { code, incarnation: num(r[1]) };
      case 'NOT_REQUESTED':
        return { code, stage: str(r[1]) as Stage };
      case 'NOT_DESTROYING':
      case 'UNKNOWN':
      case 'TOKEN_MISMATCH':
        return { code };
    }
    throw new UnexpectedReplyError(`recordRelease replied ${code}`);
  }

  /**
   * What a gpu.release.requested carrying `token` may make gpu-release call: the runtime the session (or its
   * migration's old allocation) was opened with, while that very release is pending; else why nothing may be called.
   */
  async releaseTarget(sessionId: string, incarnation: number, token: string): Promise<ReleaseTarget> {
    const k = this.keys.session(sessionId);
    const r = await this.#scripts.run('releaseTarget', [k.session, k.migrations, k.placements, k.quiet], [sessionId, incarnation, token]);
    const code = str(r[0]);
    if (code === 'PENDING') {
      const kind = str(r[1]);
      if (kind !== 'destroy' && kind !== 'migration') throw new UnexpectedReplyError(`releaseTarget replied kind ${kind}`);
      return { code, kind, node: str(r[2]), runtimeUrl: str(r[3]), attempt: num(r[4]) };
    }
    if (code === 'NOT_PENDING') return { code, why: str(r[1]) as Extract<ReleaseTarget, { code: 'NOT_PENDING' }>['why'] };
    throw new UnexpectedReplyError(`releaseTarget replied ${code}`);
  }

  /**
   * Takes the one runtime call a release attempt gets (the attempt pending under `token`): CALL for this delivery,
   * or what an earlier one made of it. The call is leased for `leaseMs`; settleReleaseCall records its outcome.
   */
  async beginReleaseCall(sessionId: string, incarnation: number, token: string, now: number, leaseMs: number, failedBlocksMs = 0): Promise<ReleaseCall> {
    const k = this.keys.session(sessionId);
    const r = await this.#scripts.run('beginReleaseCall', [k.session, k.migrations, k.placements, k.releaseCalls, k.quiet], [sessionId, incarnation, token, now, leaseMs, failedBlocksMs]);
    const code = str(r[0]);
    switch (code) {
      case 'CALL': {
        const kind = str(r[1]);
        if (kind !== 'destroy' && kind !== 'migration') throw new UnexpectedReplyError(`beginReleaseCall replied kind ${kind}`);
        return { code, kind, node: str(r[2]), runtimeUrl: str(r[3]), attempt: num(r[4]), address: decodeEngineAddress(str(r[5] ?? '')) };
      }
      case 'IN_FLIGHT':
        return { code, leaseUntil: num(r[1]) };
      case 'ANSWERED':
        return { code, freedBytes: num(r[1]), node: str(r[2]), estimated: num(r[3] ?? 0) === 1 };
      case 'FAILED':
        return { code };
      case 'NOT_PENDING':
        return { code, why: str(r[1]) as Extract<ReleaseTarget, { code: 'NOT_PENDING' }>['why'] };
    }
    throw new UnexpectedReplyError(`beginReleaseCall replied ${code}`);
  }

  /** Records what came of a runtime call taken with beginReleaseCall; false when the call is no longer this token's. */
  async settleReleaseCall(sessionId: string, incarnation: number, token: string, outcome: { answered: number; estimated?: boolean } | { failedAt: number } | 'retry'): Promise<boolean> {
    const k = this.keys.session(sessionId);
    const args = outcome === 'retry' ? ['retry', ''] : 'answered' in outcome ? ['answered', `${outcome.answered}${outcome.estimated === true ? 'e' : ''}`] : ['failed', outcome.failedAt];
    const r = await this.#scripts.run('settleReleaseCall', [k.releaseCalls], [incarnation, token, ...args]);
    return str(r[0]) === 'SETTLED';
  }

  /** Asks for a live session's KV to be demoted under `token` (used only when a new demote is requested). */
  async requestDemote(sessionId: string, incarnation: number, token: string, now: number): Promise<OffloadRequest> {
    return this.#offloadRequest('requestDemote', sessionId, incarnation, token, now);
  }

  /** Asks for an offloaded session's KV to be restored under `token` (used only when a new restore is requested). */
  async requestRestore(sessionId: string, incarnation: number, token: string, now: number): Promise<OffloadRequest> {
    return this.#offloadRequest('requestRestore', sessionId, incarnation, token, now);
  }

  async #offloadRequest(script: 'requestDemote' | 'requestRestore', sessionId: string, incarnation: number, token: string, now: number): Promise<OffloadRequest> {
    const k = this.keys.session(sessionId);
    const r = await this.#scripts.run(script, [k.session, k.quiet], [sessionId, incarnation, token, now]);
    const code = str(r[0]);
    switch (code) {
      case 'REQUESTED':
      case 'PENDING':
        return { code, token: str(r[1]) };
      case 'ALREADY': {
        const stage = offloadStageOf(r[1]);
        if (stage === undefined) throw new UnexpectedReplyError(`${script} replied ALREADY without a stage`);
        return { code, stage };
      }
      case 'REFUSED':
      case 'RESIDENT':
      case 'UNKNOWN':
        return { code };
      case 'HELD':
        return { code, holdUntil: num(r[1]) };
      case 'ENDED':
        return { code, state: STATE_OF[str(r[1])] ?? 'destroyed' };
      case 'STALE':
        return { code, incarnation: num(r[1]) };
    }
    throw new UnexpectedReplyError(`${script} replied ${code}`);
  }

  /**
   * Takes the one runtime call a demote or restore request gets, in the call record releases use too (so no two
   * calls for one allocation run at once); settleOffloadCall records and books its outcome.
   */
  async beginOffloadCall(sessionId: string, incarnation: number, op: OffloadOp, token: string, now: number, leaseMs: number): Promise<OffloadCall> {
    const k = this.keys.session(sessionId);
    const r = await this.#scripts.run('beginOffloadCall', [k.session, k.placements, k.releaseCalls, k.quiet], [sessionId, incarnation, op, token, now, leaseMs]);
    const code = str(r[0]);
    switch (code) {
      case 'CALL':
        return { code, node: str(r[1]), runtimeUrl: str(r[2]), address: decodeEngineAddress(str(r[3] ?? '')) };
      case 'IN_FLIGHT':
        return { code, leaseUntil: num(r[1]) };
      case 'ANSWERED':
        return { code, answer: offloadAnswerOf(str(r[1])) };
      case 'FAILED':
      case 'NOTHING':
        return { code };
      case 'NOT_PENDING':
        return { code, why: str(r[1]) as Extract<OffloadCall, { code: 'NOT_PENDING' }>['why'] };
    }
    throw new UnexpectedReplyError(`beginOffloadCall replied ${code}`);
  }

  /**
   * Records what came of an offload call and books it in the same step (settle-offload-call-5.lua); false when the
   * call is no longer this token's (nothing changes).
   */
  async settleOffloadCall(sessionId: string, incarnation: number, op: OffloadOp, token: string, now: number, outcome: OffloadAnswer | 'failed' | 'retry'): Promise<boolean> {
    const k = this.keys.session(sessionId);
    const args = typeof outcome === 'string' ? [outcome, now] : ['answered', now, outcome.bytes, outcome.freedBytes, outcome.estimated ? '1' : '0'];
    const r = await this.#scripts.run('settleOffloadCall', [k.session, k.releaseCalls, k.ledger, k.placements, k.quiet], [sessionId, incarnation, op, token, ...args]);
    return str(r[0]) === 'SETTLED';
  }

  /** The GPU release attempt a destroy has recorded (its number and token), or undefined when none. */
  async releaseAttempt(sessionId: string, incarnation: number): Promise<ReleaseAttempt | undefined> {
    const [s, i, ga, gt] = await this.#recordFields(this.keys.session(sessionId), ['s', 'i', 'ga', 'gt']);
    if (!s || Number(i) !== incarnation) return undefined;
    return releaseAttemptOf({ releaseAttempt: ga === null ? undefined : Number(ga), releaseToken: gt ?? undefined });
  }

  #purgeLike(name: string, r: unknown[]): PurgeResult {
    const code = str(r[0]);
    switch (code) {
      case 'PURGED':
      case 'COMPLETED':
      case 'UNKNOWN':
        return { code };
      case 'ALREADY':
        return { code, stage: (str(r[1]) || 'completed') as Stage };
      case 'NOT_READY':
        return { code, stage: str(r[1]) as Stage };
      case 'STALE':
        return { code, incarnation: num(r[1]) };
      case 'NOT_DESTROYING':
        return { code, state: STATE_OF[str(r[1])] ?? 'active' };
    }
    throw new UnexpectedReplyError(`${name} replied ${code}`);
  }

  /** Drops the session's working state once its GPU memory is released (stage state_purged). */
  async purge(sessionId: string, incarnation: number, now: number): Promise<PurgeResult> {
    const k = this.keys.session(sessionId);
    return this.#purgeLike('purgeSession', await this.#scripts.run('purgeSession', [k.session, k.context, k.destroying, k.quiet], [sessionId, incarnation, now]));
  }

  /** Ends the destroy: the record becomes a tombstone that expires after the tombstone TTL. */
  async complete(sessionId: string, incarnation: number, now: number): Promise<PurgeResult> {
    const k = this.keys.session(sessionId);
    return this.#purgeLike(
      'completeDestroy',
      await this.#scripts.run('completeDestroy', [k.session, k.destroying, k.placements, k.failed, k.quiet], [sessionId, incarnation, now, this.#tombstoneTtlMs]),
    );
  }

  /** The watchdog's claim of a stalled destroy or migration release, so exactly one replica resumes it. */
  async claimStalled(member: string, now: number, stallMs: number): Promise<StallClaim> {
    const migration = parseMigrationMember(member);
    const sessionId = migration?.sessionId ?? member;
    const k = this.keys.session(sessionId);
    const r = await this.#scripts.run(
      'claimStalled',
      [k.session, k.destroying, k.migrations, k.placements, k.quiet],
      [member, now, stallMs, sessionId, migration === undefined ? '' : String(migration.incarnation)],
    );
    const code = str(r[0]);
    if (code === 'STALLED') {
      return {
        code, sessionId, incarnation: num(r[1]), stage: str(r[2]) as Stage, cause: str(r[3]) as Cause,
        placement: { node: str(r[4]), runtimeUrl: str(r[5]), gpuBytes: num(r[6]) }, attempt: num(r[7]),
      };
    }
    if (code === 'MIGRATION') {
      return { code, sessionId, incarnation: num(r[1]), placement: { node: str(r[2]), runtimeUrl: str(r[3]), gpuBytes: num(r[4]) }, token: str(r[5]) };
    }
    if (code === 'NOT_STALLED' || code === 'GONE') return { code };
    throw new UnexpectedReplyError(`claimStalled replied ${code}`);
  }

  /**
   * An operator's answer to a destroy that gave up its release: 'retry' (a fresh release budget, resumed by the
   * watchdog at once) or 'resolve' (the memory is written off as freed; the watchdog finishes the destroy).
   */
  async settleFailedDestroy(sessionId: string, action: 'retry' | 'resolve', now: number): Promise<FailedDestroySettlement> {
    const k = this.keys.session(sessionId);
    const r = await this.#scripts.run('settleFailedDestroy', [k.session, k.destroying, k.failed, k.ledger, k.placements, k.quiet], [sessionId, action, now]);
    const code = str(r[0]);
    switch (code) {
      case 'RETRYING':
        return { code, incarnation: num(r[1]) };
      case 'RESOLVED':
        return { code, incarnation: num(r[1]), node: str(r[2]), bytes: num(r[3]) };
      case 'NOT_FAILED':
        return { code, state: STATE_OF[str(r[1])] ?? 'active' };
      case 'UNKNOWN':
        return { code };
    }
    throw new UnexpectedReplyError(`settleFailedDestroy replied ${code}`);
  }

  /** Destroys that gave up their GPU release (every bucket), oldest first: id and when it gave up. */
  async failedDestroys(): Promise<{ sessionId: string; failedAt: number }[]> {
    const all = await Promise.all(this.keys.allBuckets().map((b) => this.redis.zrange(b.failed, '0', '-1', 'WITHSCORES')));
    const out: { sessionId: string; failedAt: number }[] = [];
    for (const r of all) for (let i = 0; i + 1 < r.length; i += 2) out.push({ sessionId: r[i]!, failedAt: Number(r[i + 1]) });
    return out.sort((a, b) => a.failedAt - b.failedAt);
  }

  /** Everything known about a session, or null if its id is unknown (never opened, or its tombstone expired). */
  async inspect(sessionId: string): Promise<SessionView | null> {
    const k = this.keys.session(sessionId);
    const [fields, deadline, ttl] = await Promise.all([
      this.#recordOf(k),
      this.redis.zscore(k.deadlines, sessionId),
      this.redis.pttl(k.session),
    ]);
    if (!fields.s) return null;
    const opt = (f: string) => (fields[f] === undefined ? undefined : Number(fields[f]));
    const placement = fields.p ? { ...(await this.#placement(k, fields.p, Number(fields.g ?? 0))), ...decodeEngineAddress(fields.ea ?? '') } : undefined;
    const view: SessionView = { sessionId, bucket: k.bucket, ...destroyRecordOf(fields) };
    const set = <K extends keyof SessionView>(key: K, value: SessionView[K] | undefined) => {
      if (value !== undefined) view[key] = value;
    };
    set('deadline', deadline === null ? undefined : Number(deadline));
    set('holdUntil', opt('h'));
    set('windowMs', opt('w'));
    // A tombstone's placement is forgotten once no allocation names it any more.
    set('placement', placement?.node ? placement : undefined);
    set('tenant', fields.tn);
    set('model', fields.m);
    // `od` is the offset from the incarnation; records written before it keep the time itself as `o`.
    set('openedAt', opt('o') ?? (fields.od === undefined ? undefined : Number(fields.i) + Number(fields.od)));
    set('releaseAttempt', opt('ga'));
    set('releaseToken', fields.gt);
    set('confirmedFreedBytes', opt('gr'));
    set('releaseFailedAt', opt('rf'));
    set('offload', offloadStageOf(fields.dm));
    set('offloadedBytes', opt('ob'));
    set('demotes', opt('dc'));
    set('demoteRefusedAt', opt('dx'));
    set('completedAt', opt('t'));
    set('tombstoneTtlMs', fields.s === 'X' && ttl > 0 ? ttl : undefined);
    return view;
  }

  /**
   * The part of a session's record that finishing its destroy needs, in one HMGET (inspect also reads the deadline
   * index, the TTL and the placement), or null if the id is unknown.
   */
  async destroyRecord(sessionId: string): Promise<DestroyRecord | null> {
    const values = await this.#recordFields(this.keys.session(sessionId), DESTROY_RECORD_FIELDS);
    if (!values[0]) return null;
    return destroyRecordOf(Object.fromEntries(DESTROY_RECORD_FIELDS.map((f, i) => [f, values[i] ?? undefined])));
  }

  /** Watchdog members of a bucket whose last progress is at or before `before`. */
  async stalledMembers(bucket: number, before: number, limit: number): Promise<string[]> {
    return this.redis.zrangebyscore(this.keys.bucket(bucket).destroying, '-inf', before, 'LIMIT', '0', String(limit));
  }

  /** Every destroy in flight (and pending migration release), oldest progress first, for operators. */
  async destroysInFlight(limit = 1000): Promise<{ bucket: number; member: string; lastProgressAt: number }[]> {
    const perBucket = await Promise.all(
      this.keys.allBuckets().map(async (b) => {
        const flat = await this.redis.zrange(b.destroying, '0', String(limit - 1), 'WITHSCORES');
        const out: { bucket: number; member: string; lastProgressAt: number }[] = [];
        for (let i = 0; i + 1 < flat.length; i += 2) out.push({ bucket: b.bucket, member: flat[i]!, lastProgressAt: Number(flat[i + 1]) });
        return out;
      }),
    );
    return perBucket.flat().sort((a, b) => a.lastProgressAt - b.lastProgressAt).slice(0, limit);
  }

  /**
   * Opens out the quiet records of one bucket (open-out-quiet-1.lua): full HSCAN passes over its quiet hash, each
   * page opened out as it comes, until a pass ends with the hash empty or `passes` passes are done (records a replica
   * still packs meanwhile are taken while the passes last). What `sessionctl unpack` runs before a downgrade. Returns
   * how many were opened out, how many stale quiet fields were dropped (their session has a record key, which wins),
   * and how many the bucket still holds.
   */
  async openOutQuiet(bucket: number, passes = 3): Promise<{ opened: number; dropped: number; left: number }> {
    const b = this.keys.bucket(bucket);
    const prefix = this.keys.sessionRecordPrefix(bucket);
    let opened = 0;
    let dropped = 0;
    for (let pass = 0; pass < passes && (await this.redis.hlen(b.quiet)) > 0; pass++) {
      // The cursor is followed to its end: a page may be empty while the hash is not (HSCAN walks the table's slots,
      // and those this pass emptied stay until Redis shrinks the table), and every field there at the pass's start is
      // returned at least once.
      let cursor = '0';
      do {
        const [next, flat] = await this.redis.hscan(b.quiet, cursor, 'COUNT', '500');
        cursor = next;
        const ids = flat.filter((_, i) => i % 2 === 0);
        if (ids.length === 0) continue;
        const r = await this.#scripts.run('openOutQuiet', [b.quiet], [prefix, ...ids]);
        opened += num(r[0]);
        dropped += num(r[1]);
      } while (cursor !== '0');
    }
    return { opened, dropped, left: await this.redis.hlen(b.quiet) };
  }

  /** Number of quiet records across all buckets (HLEN per bucket: O(buckets)). */
  async quietCount(): Promise<number> {
    const counts = await Promise.all(this.keys.allBuckets().map((b) => this.redis.hlen(b.quiet)));
    return counts.reduce((a, b) => a + b, 0);
  }

  /** Number of ACTIVE sessions across all buckets (ZCARD per bucket: O(buckets)). */
  async activeCount(): Promise<number> {
    const counts = await Promise.all(this.keys.allBuckets().map((b) => this.redis.zcard(b.deadlines)));
    return counts.reduce((a, b) => a + b, 0);
  }
}
