// The CloudEvent contract, v1: the one place every event type and its data schema are defined. The published
// JSON Schemas (schemas/v1/*.json), the TypeScript types and the runtime validation all derive from these
// TypeBox schemas, so they cannot drift apart.
import { Type, type Static, type TObject, type TProperties, type TSchema, type TUnsafe } from '@sinclair/typebox';

/** Every type name in the contract starts with this. */
export const TYPE_PREFIX = 'dev.sessionreaper.';

/** Where the published JSON Schemas of contract v1 live; each schema's `$id` is this plus its file name. */
export const SCHEMA_BASE_URL = 'https://sessionreaper.dev/schemas/v1/';

/** The full CloudEvent `type` of every event in the contract. */
export const EventType = {
  SessionOpened: 'dev.sessionreaper.session.opened',
  SessionHeartbeat: 'dev.sessionreaper.session.heartbeat',
  SessionActivity: 'dev.sessionreaper.session.activity',
  SessionHold: 'dev.sessionreaper.session.hold',
  InferenceCompleted: 'dev.sessionreaper.inference.completed',
  SessionClosed: 'dev.sessionreaper.session.closed',
  SessionDestroyRequested: 'dev.sessionreaper.session.destroy.requested',
  SessionExpired: 'dev.sessionreaper.session.expired',
  SessionIdle: 'dev.sessionreaper.session.idle',
  GpuReleaseRequested: 'dev.sessionreaper.gpu.release.requested',
  GpuReleased: 'dev.sessionreaper.gpu.released',
  GpuReleaseFailed: 'dev.sessionreaper.gpu.release.failed',
  SessionDestroyed: 'dev.sessionreaper.session.destroyed',
  SessionDestroyFailed: 'dev.sessionreaper.session.destroy.failed',
  DestroyResume: 'dev.sessionreaper.destroy.resume',
  GpuOrphanReleased: 'dev.sessionreaper.gpu.orphan.released',
  GpuDemoteRequested: 'dev.sessionreaper.gpu.demote.requested',
  GpuDemoted: 'dev.sessionreaper.gpu.demoted',
  GpuRestoreRequested: 'dev.sessionreaper.gpu.restore.requested',
  GpuRestored: 'dev.sessionreaper.gpu.restored',
} as const;

/** The file name a type's published schema has, e.g. `dev.sessionreaper.session.opened.schema.json`. */
export function schemaFileOf(type: string): string {
  return `${type}.schema.json`;
}

/** The `$id` of a type's published schema; emitted events carry it as their `dataschema`. */
export function schemaIdOf(type: string): string {
  return `${SCHEMA_BASE_URL}${schemaFileOf(type)}`;
}

// Enumerations are plain `enum` keywords rather than TypeBox unions of literals: validation errors then say
// "must be one of ..." instead of reporting the first branch of an anyOf.
function stringEnum<const V extends readonly [string, ...string[]]>(values: V, description: string): TUnsafe<V[number]> {
  return Type.Unsafe<V[number]>({ type: 'string', enum: [...values], description });
}

// Every event's data is a closed object: unknown properties are rejected, so a misspelt optional field fails
// loudly instead of being ignored. The examples are type-checked against the schema they illustrate.
function eventData<P extends TProperties>(type: string, description: string, properties: P, examples: [Static<TObject<P>>, ...Static<TObject<P>>[]]): TObject<P> {
  return Type.Object(properties, {
    $id: schemaIdOf(type),
    title: type,
    description: `${description} Unknown properties are rejected.`,
    additionalProperties: false,
    examples,
  });
}

/** Pattern every session id matches: it is used in Redis keys and logs, so it is short and plain. */
export const SESSION_ID_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$';

const SessionId = Type.String({
  pattern: SESSION_ID_PATTERN,
  description: 'The session: 1 to 128 characters, letters and digits, then also `.`, `_`, `:` or `-`.',
});

/** Largest GPU byte count one event may carry (4 TiB): far above any one session, and low enough that the ledger's
 *  64-bit counters cannot overflow inside a script (which would leave it half applied). */
export const MAX_GPU_BYTES = 4 * 1024 ** 4;

/** Longest interval or duration an inbound event may name: one week, in ms. */
export const MAX_DURATION_MS = 7 * 24 * 3600 * 1000;

const Incarnation = Type.Integer({
  minimum: 1,
  maximum: Number.MAX_SAFE_INTEGER,
  description: 'Which life of the session id this is: a reused id gets a larger one, so late events about an old one are recognised. Handed out by session-reaper, never below its Redis clock in ms, so unique even after Redis lost its data.',
});

// Our own instants always come from Date#toISOString, so they are held to that exact shape: UTC, milliseconds.
const EmittedInstant = (description: string) =>
  Type.String({ format: 'date-time', pattern: '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}\\.\\d{3}Z$', description: `${description} RFC 3339, UTC, with milliseconds.` });

const DurationMs = (minimum: number, description: string, maximum: number = Number.MAX_SAFE_INTEGER) =>
  Type.Integer({ minimum, maximum, description: `${description} Integer milliseconds.` });

const GpuBytes = (description: string) => Type.Integer({ minimum: 0, maximum: MAX_GPU_BYTES, description: `${description} At most 4 TiB.` });

/** Pattern of a release token: what destroy-dispatch (or heartbeat-timeout, for a migration) drew when it requested
 *  one release attempt; only an answer that echoes it is booked. */
export const RELEASE_TOKEN_PATTERN = '^[A-Za-z0-9_-]{16,64}$';

const ReleaseToken = Type.String({
  pattern: RELEASE_TOKEN_PATTERN,
  description: 'The release attempt\'s token, drawn when the attempt was requested; gpu.released and gpu.release.failed echo it, and an answer with another token is ignored.',
})

const ShortText = (description: string, maxLength = 256) => Type.String({ minLength: 1, maxLength, description });

/** Where a session's model runs: the node and the inference runtime that holds its GPU memory. */
export const Placement = Type.Object(
  {
    node: Type.String({ minLength: 1, maxLength: 253, description: 'Kubernetes node name the runtime runs on.' }),
    runtimeUrl: Type.String({
      format: 'uri', pattern: '^https?://', maxLength: 2048,
      description: 'Base URL (http or https) of the inference runtime holding the session; it must be one the operator registered (RUNTIMES), and it is never called from an event: gpu-release takes the address a session was opened with from Redis.',
    }),
    gpuBytes: Type.Optional(GpuBytes('GPU memory the session holds, in bytes, when the pipeline knows it.')),
    slot: Type.Optional(Type.Integer({
      minimum: 0, maximum: 4095,
      description: 'llama-server slot (id_slot) the session is pinned to, for a runtime registered with kind llamacpp: its release erases this slot. Opening a live session again with another slot moves it (a migration).',
    })),
    engineSessionId: Type.Optional(Type.String({
      pattern: SESSION_ID_PATTERN,
      description: "The engine's own id of the session, for a runtime registered with kind sglang, when it is not sessionId: its release closes this session.",
    })),
  },
  { additionalProperties: false, description: 'Where the session runs.' },
);

/** What a session.activity reports the user or model did. */
export const ACTIVITY_KINDS = ['input', 'edit', 'cursor', 'message', 'output'] as const;
/** Why a session is destroyed. */
export const DESTROY_CAUSES = ['closed', 'expired', 'idle', 'completed', 'forced'] as const;
/** The steps of a destroy, in order; the timeline of session.destroyed and destroy.resume name them. */
export const DESTROY_STAGES = ['claimed', 'gpu_release_requested', 'gpu_released', 'state_purged', 'completed'] as const;
/** How loaded the cluster's GPUs are, which sets how eagerly idle sessions are reclaimed. */
export const LOAD_TIERS = ['low', 'medium', 'high'] as const;
/** Why the GPU memory of a session is to be freed. */
export const RELEASE_REASONS = ['destroy', 'migration'] as const;

export type ActivityKind = (typeof ACTIVITY_KINDS)[number];
export type DestroyCause = (typeof DESTROY_CAUSES)[number];
export type DestroyStage = (typeof DESTROY_STAGES)[number];
export type LoadTier = (typeof LOAD_TIERS)[number];
export type ReleaseReason = (typeof RELEASE_REASONS)[number];

const Cause = stringEnum(DESTROY_CAUSES, 'Why the session was destroyed.');
const Stage = stringEnum(DESTROY_STAGES, 'A step of the destroy.');
const Score = (description: string) => Type.Number({ minimum: 0, maximum: 1, description });

// ---- Inbound: sent by the inference pipeline or an operator ----

export const SessionOpenedData = eventData(
  EventType.SessionOpened,
  'A session started and holds GPU memory; its liveness deadline starts now.',
  {
    sessionId: SessionId,
    placement: Placement,
    heartbeatIntervalMs: Type.Optional(
      Type.Integer({ minimum: 100, maximum: 86_400_000, default: 30_000, description: 'How often the pipeline promises a heartbeat. Integer milliseconds, at most a day; when absent, DEFAULT_HEARTBEAT_INTERVAL_MS (30000).' }),
    ),
    missedBeats: Type.Optional(
      Type.Integer({ minimum: 1, maximum: 100, default: 3, description: 'Heartbeats that may be missed before the session is dead; when absent, DEFAULT_MISSED_BEATS (3).' }),
    ),
    tenant: Type.Optional(ShortText('Tenant the session belongs to: it owns the session (later events about it must name the same tenant in their `tenant` attribute), and it picks the idle policy.', 128)),
    model: Type.Optional(ShortText('Model the session runs, for logs and metrics.', 128)),
  },
  [
    {
      sessionId: 'sess-7f3a9c',
      placement: { node: 'gpu-node-a100-3', runtimeUrl: 'http://vllm-0.inference.svc.cluster.local:8000', gpuBytes: 17_179_869_184 },
      heartbeatIntervalMs: 10_000,
      missedBeats: 3,
      tenant: 'acme',
      model: 'llama-3.1-8b-instruct',
    },
  ],
);

export const SessionHeartbeatData = eventData(
  EventType.SessionHeartbeat,
  'The session is alive; pushes its liveness deadline out by heartbeatIntervalMs x missedBeats.',
  {
    sessionId: SessionId,
    seq: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER, description: 'Sequence number of the heartbeat, for tracing only; order is not enforced.' })),
  },
  [{ sessionId: 'sess-7f3a9c', seq: 42 }],
);

export const SessionActivityData = eventData(
  EventType.SessionActivity,
  'The user or the model did something in the session; feeds the idle score and refreshes liveness.',
  {
    sessionId: SessionId,
    kind: stringEnum(ACTIVITY_KINDS, 'What happened.'),
    at: Type.Optional(Type.String({ format: 'date-time', description: 'When it happened (RFC 3339); the CloudEvent time when absent.' })),
    text: Type.Optional(Type.String({ maxLength: 65_536, description: 'Text of the activity (at most 65536 characters), for the semantic idle signal.' })),
    embedding: Type.Optional(
      Type.Array(Type.Number({ minimum: -1e6, maximum: 1e6 }), { minItems: 1, maxItems: 8192, description: 'Embedding of the activity text: 1 to 8192 numbers, each within ±1e6.' }),
    ),
  },
  [{ sessionId: 'sess-7f3a9c', kind: 'message', at: '2026-11-21T06:45:04.123Z', text: 'Summarise the last report, please.', embedding: [0.12, -0.03, 0.88] }],
);

export const SessionHoldData = eventData(
  EventType.SessionHold,
  'An explicit grant that the session is busy (e.g. a long tool call): it must not expire or be judged idle for durationMs.',
  {
    sessionId: SessionId,
    durationMs: DurationMs(1, 'How long the hold lasts from now (capped at MAX_HOLD_MS; at most a week may be asked).', MAX_DURATION_MS),
    reason: ShortText('Why the session is busy, for logs.'),
  },
  [{ sessionId: 'sess-7f3a9c', durationMs: 120_000, reason: 'batch tool call' }],
);

export const InferenceCompletedData = eventData(
  EventType.InferenceCompleted,
  'An inference request of the session finished; with release=true the session is done and is destroyed.',
  {
    sessionId: SessionId,
    requestId: ShortText('The inference request that finished.'),
    release: Type.Boolean({ description: 'True when the session needs its GPU memory no more.' }),
  },
  [{ sessionId: 'sess-7f3a9c', requestId: 'req-0192', release: false }],
);

export const SessionClosedData = eventData(
  EventType.SessionClosed,
  'The session was closed by its owner; it is destroyed.',
  {
    sessionId: SessionId,
    reason: Type.Optional(ShortText('Why the session was closed, for logs.')),
  },
  [{ sessionId: 'sess-7f3a9c', reason: 'user signed out' }],
);

export const SessionDestroyRequestedData = eventData(
  EventType.SessionDestroyRequested,
  'An operator forces the destroy of a session (CLI or runbook).',
  {
    sessionId: SessionId,
    reason: Type.Optional(ShortText('Why the operator forces the destroy, for the audit log.')),
  },
  [{ sessionId: 'sess-7f3a9c', reason: 'stuck runtime, incident 1234' }],
);

// ---- Emitted by the system ----

export const SessionExpiredData = eventData(
  EventType.SessionExpired,
  'The session missed its liveness deadline; it is destroyed.',
  {
    sessionId: SessionId,
    incarnation: Incarnation,
    deadline: EmittedInstant('When the session was due to be seen again.'),
    detectedAt: EmittedInstant('When the deadline engine noticed the deadline had passed.'),
    lagMs: DurationMs(0, 'detectedAt minus deadline.'),
  },
  [{ sessionId: 'sess-7f3a9c', incarnation: 1, deadline: '2026-11-21T06:45:04.123Z', detectedAt: '2026-11-21T06:45:04.131Z', lagMs: 8 }],
);

export const SessionIdleData = eventData(
  EventType.SessionIdle,
  'The session is judged idle: its idle score crossed the threshold for the current load; it is destroyed.',
  {
    sessionId: SessionId,
    incarnation: Incarnation,
    score: Score('Combined idle score, 0 (busy) to 1 (idle).'),
    components: Type.Object(
      {
        behavior: Score('Idle signal from the kinds and rhythm of activity.'),
        semantic: Score('Idle signal from the meaning of recent text (e.g. a goodbye).'),
        timing: Score('Idle signal from time since the last activity.'),
      },
      { additionalProperties: false, description: 'The signals the score combines, each 0 to 1.' },
    ),
    threshold: Type.Optional(Score('Score at or above which a session is idle under the current load.')),
    loadTier: Type.Optional(stringEnum(LOAD_TIERS, 'GPU load tier that chose the threshold.')),
  },
  [{ sessionId: 'sess-7f3a9c', incarnation: 1, score: 0.91, components: { behavior: 0.95, semantic: 0.8, timing: 0.97 }, threshold: 0.85, loadTier: 'high' }],
);

export const GpuReleaseRequestedData = eventData(
  EventType.GpuReleaseRequested,
  'The GPU memory of the session is to be freed by its inference runtime. The placement is for observers only: gpu-release calls the runtime the session was opened with, as Redis holds it.',
  {
    sessionId: SessionId,
    incarnation: Incarnation,
    placement: Placement,
    attempt: Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER, description: 'Which attempt at this release this is, from 1.' }),
    token: ReleaseToken,
    reason: Type.Optional(stringEnum(RELEASE_REASONS, 'Why the memory is freed; destroy when absent.')),
  },
  [
    {
      sessionId: 'sess-7f3a9c',
      incarnation: 1,
      placement: { node: 'gpu-node-a100-3', runtimeUrl: 'http://vllm-0.inference.svc.cluster.local:8000', gpuBytes: 17_179_869_184 },
      attempt: 1,
      token: 'q3Zp0c8Wm1tYb6Nf2LxR-A',
      reason: 'destroy',
    },
  ],
);

export const GpuReleasedData = eventData(
  EventType.GpuReleased,
  'The inference runtime freed the GPU memory of the session.',
  {
    sessionId: SessionId,
    incarnation: Incarnation,
    node: Type.String({ minLength: 1, maxLength: 253, description: 'Node whose GPU memory was freed.' }),
    freedBytes: GpuBytes('KV cache capacity the runtime returned to its own pool, in bytes (0 when the runtime no longer held the session); not memory returned to the GPU driver.'),
    token: ReleaseToken,
    estimated: Type.Optional(Type.Literal(true, { description: 'Present when freedBytes is an estimate: the engine reports no freed figure (SGLang: a metrics delta; vLLM: 0).' })),
  },
  [{ sessionId: 'sess-7f3a9c', incarnation: 1, node: 'gpu-node-a100-3', freedBytes: 17_179_869_184, token: 'q3Zp0c8Wm1tYb6Nf2LxR-A' }],
);

export const GpuReleaseFailedData = eventData(
  EventType.GpuReleaseFailed,
  'Freeing the GPU memory of the session failed.',
  {
    sessionId: SessionId,
    incarnation: Incarnation,
    node: Type.String({ minLength: 1, maxLength: 253, description: 'Node whose GPU memory could not be freed.' }),
    error: Type.String({ minLength: 1, maxLength: 2048, description: 'What went wrong, for the operator: a fixed description of the failure (never the runtime\'s reply or address).' }),
    retryable: Type.Boolean({ description: 'True when trying again may succeed (timeout, 5xx); false when it cannot.' }),
    token: ReleaseToken,
  },
  [{ sessionId: 'sess-7f3a9c', incarnation: 1, node: 'gpu-node-a100-3', error: 'runtime answered 503 three times', retryable: true, token: 'q3Zp0c8Wm1tYb6Nf2LxR-A' }],
);

export const SessionDestroyedData = eventData(
  EventType.SessionDestroyed,
  'The session is gone: GPU memory freed and state purged, exactly once per incarnation.',
  {
    sessionId: SessionId,
    incarnation: Incarnation,
    cause: Cause,
    timeline: Type.Array(
      Type.Object({ stage: Stage, at: EmittedInstant('When the stage was reached.') }, { additionalProperties: false }),
      { minItems: 1, maxItems: 64, description: 'The stages of the destroy in the order they were reached.' },
    ),
    durationMs: DurationMs(0, 'From the destroy being claimed to its completion.'),
    extraCauses: Type.Optional(Type.Array(Cause, { uniqueItems: true, maxItems: DESTROY_CAUSES.length, description: 'Other causes that arrived while the destroy ran.' })),
  },
  [
    {
      sessionId: 'sess-7f3a9c',
      incarnation: 1,
      cause: 'expired',
      timeline: [
        { stage: 'claimed', at: '2026-11-21T06:45:04.131Z' },
        { stage: 'gpu_release_requested', at: '2026-11-21T06:45:04.135Z' },
        { stage: 'gpu_released', at: '2026-11-21T06:45:04.190Z' },
        { stage: 'state_purged', at: '2026-11-21T06:45:04.193Z' },
        { stage: 'completed', at: '2026-11-21T06:45:04.194Z' },
      ],
      durationMs: 63,
      extraCauses: ['closed'],
    },
  ],
);

export const SessionDestroyFailedData = eventData(
  EventType.SessionDestroyFailed,
  'The destroy gave up: the GPU release failed RELEASE_MAX_ATTEMPTS times. The session stays out of service, its memory is counted as held, and it waits for an operator (sessionctl stuck, retry, resolve).',
  {
    sessionId: SessionId,
    incarnation: Incarnation,
    cause: Cause,
    node: Type.String({ minLength: 1, maxLength: 253, description: 'Node whose GPU memory could not be freed.' }),
    gpuBytes: Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER, description: 'Bytes registered for the allocation, still counted as held.' }),
    attempts: Type.Integer({ minimum: 1, maximum: 1_000_000, description: 'Release attempts made.' }),
  },
  [{ sessionId: 'sess-7f3a9c', incarnation: 1, cause: 'closed', node: 'gpu-node-a100-3', gpuBytes: 4294967296, attempts: 5 }],
);

export const DestroyResumeData = eventData(
  EventType.DestroyResume,
  'A destroy made no progress for DESTROY_STALL_MS; destroy-dispatch resumes it from the stage it reached.',
  {
    sessionId: SessionId,
    incarnation: Incarnation,
    stage: Stage,
  },
  [{ sessionId: 'sess-7f3a9c', incarnation: 1, stage: 'gpu_release_requested' }],
);

export const GpuOrphanReleasedData = eventData(
  EventType.GpuOrphanReleased,
  'The reconciler freed GPU memory that a runtime held for a session incarnation no session owned (its record was lost, or never written) for longer than RECONCILE_GRACE_MS. For observers: no session record changes.',
  {
    sessionId: SessionId,
    incarnation: Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER, description: 'The incarnation the runtime reported holding (the runtime API allows 0).' }),
    runtime: Type.String({ pattern: '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$', description: 'Name of the registered runtime (RUNTIMES) that held it: a name, never its URL.' }),
    freedBytes: GpuBytes('GPU memory the runtime freed, in bytes.'),
    firstSeenAt: EmittedInstant('When the reconciler first saw the allocation with no owner.'),
    releasedAt: EmittedInstant('When the runtime confirmed the release.'),
  },
  [{ sessionId: 'sess-7f3a9c', incarnation: 4, runtime: 'vllm-a100', freedBytes: 17_179_869_184, firstSeenAt: '2026-11-21T06:40:00.000Z', releasedAt: '2026-11-21T06:45:00.012Z' }],
);

// ---- Demote before destroy: a quiet session's KV is moved off the GPU, and a new turn brings it back ----

const OffloadToken = Type.String({
  pattern: RELEASE_TOKEN_PATTERN,
  description: 'The demote or restore request\'s token, drawn when it was requested; the answer echoes it, and only a call made under the token still pending is booked.',
});

export const GpuDemoteRequestedData = eventData(
  EventType.GpuDemoteRequested,
  'A live session has been quiet past the moment its own rhythm predicted its next turn (and at least DEMOTE_QUIET_MS): its KV cache is to be moved off the GPU, kept by the runtime to be restored, and its GPU KV freed. The placement is for observers only: gpu-release calls the runtime the session was opened with, as Redis holds it.',
  {
    sessionId: SessionId,
    incarnation: Incarnation,
    placement: Placement,
    token: OffloadToken,
  },
  [{ sessionId: 'sess-7f3a9c', incarnation: 1, placement: { node: 'gpu-node-a100-3', runtimeUrl: 'http://llama-0.inference.svc.cluster.local:8080', slot: 2 }, token: 'dM3q0c8Wm1tYb6Nf2LxR-A' }],
);

export const GpuDemotedData = eventData(
  EventType.GpuDemoted,
  'The runtime moved the session\'s KV cache off the GPU: offloadedBytes are kept elsewhere (host memory or disk) to be restored, freedBytes of KV capacity went back to the runtime\'s pool. The ledger counts both apart from releases.',
  {
    sessionId: SessionId,
    incarnation: Incarnation,
    node: Type.String({ minLength: 1, maxLength: 253, description: 'Node whose runtime holds the session.' }),
    offloadedBytes: GpuBytes('Bytes of KV state the runtime now keeps off the GPU for the session.'),
    freedBytes: GpuBytes('KV cache capacity the runtime returned to its own pool, in bytes.'),
    token: OffloadToken,
    estimated: Type.Optional(Type.Literal(true, { description: 'Present when the figures are estimates rather than the engine\'s own.' })),
  },
  [{ sessionId: 'sess-7f3a9c', incarnation: 1, node: 'gpu-node-a100-3', offloadedBytes: 1_048_640, freedBytes: 1_048_576, token: 'dM3q0c8Wm1tYb6Nf2LxR-A' }],
);

export const GpuRestoreRequestedData = eventData(
  EventType.GpuRestoreRequested,
  'The user of a demoted session is back (user activity arrived): its KV cache is to be brought back onto the GPU. The placement is for observers only.',
  {
    sessionId: SessionId,
    incarnation: Incarnation,
    placement: Placement,
    token: OffloadToken,
  },
  [{ sessionId: 'sess-7f3a9c', incarnation: 1, placement: { node: 'gpu-node-a100-3', runtimeUrl: 'http://llama-0.inference.svc.cluster.local:8080', slot: 2 }, token: 'rS9q0c8Wm1tYb6Nf2LxR-A' }],
);

export const GpuRestoredData = eventData(
  EventType.GpuRestored,
  'The runtime brought the session\'s KV cache back onto the GPU; its next turn continues on it. restoredBytes is 0 when nothing was offloaded any more (the demote never took place).',
  {
    sessionId: SessionId,
    incarnation: Incarnation,
    node: Type.String({ minLength: 1, maxLength: 253, description: 'Node whose runtime holds the session.' }),
    restoredBytes: GpuBytes('KV cache bytes the runtime loaded back.'),
    token: OffloadToken,
  },
  [{ sessionId: 'sess-7f3a9c', incarnation: 1, node: 'gpu-node-a100-3', restoredBytes: 1_048_576, token: 'rS9q0c8Wm1tYb6Nf2LxR-A' }],
);

/** The data schema of every event type, keyed by full type name. */
export const EventTypes = {
  [EventType.SessionOpened]: SessionOpenedData,
  [EventType.SessionHeartbeat]: SessionHeartbeatData,
  [EventType.SessionActivity]: SessionActivityData,
  [EventType.SessionHold]: SessionHoldData,
  [EventType.InferenceCompleted]: InferenceCompletedData,
  [EventType.SessionClosed]: SessionClosedData,
  [EventType.SessionDestroyRequested]: SessionDestroyRequestedData,
  [EventType.SessionExpired]: SessionExpiredData,
  [EventType.SessionIdle]: SessionIdleData,
  [EventType.GpuReleaseRequested]: GpuReleaseRequestedData,
  [EventType.GpuReleased]: GpuReleasedData,
  [EventType.GpuReleaseFailed]: GpuReleaseFailedData,
  [EventType.SessionDestroyed]: SessionDestroyedData,
  [EventType.SessionDestroyFailed]: SessionDestroyFailedData,
  [EventType.DestroyResume]: DestroyResumeData,
  [EventType.GpuOrphanReleased]: GpuOrphanReleasedData,
  [EventType.GpuDemoteRequested]: GpuDemoteRequestedData,
  [EventType.GpuDemoted]: GpuDemotedData,
  [EventType.GpuRestoreRequested]: GpuRestoreRequestedData,
  [EventType.GpuRestored]: GpuRestoredData,
} as const satisfies Record<string, TSchema>;

/** Any full type name in the contract. */
export type ContractType = keyof typeof EventTypes;
/** The data of an event of type T. */
export type DataOf<T extends ContractType> = Static<(typeof EventTypes)[T]>;

export type Placement = Static<typeof Placement>;
export type SessionOpened = Static<typeof SessionOpenedData>;
export type SessionHeartbeat = Static<typeof SessionHeartbeatData>;
export type SessionActivity = Static<typeof SessionActivityData>;
export type SessionHold = Static<typeof SessionHoldData>;
export type InferenceCompleted = Static<typeof InferenceCompletedData>;
export type SessionClosed = Static<typeof SessionClosedData>;
export type SessionDestroyRequested = Static<typeof SessionDestroyRequestedData>;
export type SessionExpired = Static<typeof SessionExpiredData>;
export type SessionIdle = Static<typeof SessionIdleData>;
export type GpuReleaseRequested = Static<typeof GpuReleaseRequestedData>;
export type GpuReleased = Static<typeof GpuReleasedData>;
export type GpuReleaseFailed = Static<typeof GpuReleaseFailedData>;
export type SessionDestroyed = Static<typeof SessionDestroyedData>;
export type DestroyResume = Static<typeof DestroyResumeData>;
export type GpuOrphanReleased = Static<typeof GpuOrphanReleasedData>;
export type GpuDemoteRequested = Static<typeof GpuDemoteRequestedData>;
export type GpuDemoted = Static<typeof GpuDemotedData>;
export type GpuRestoreRequested = Static<typeof GpuRestoreRequestedData>;
export type GpuRestored = Static<typeof GpuRestoredData>;

/** The functions of the system, by their one name (framework target, Knative Service, image). */
export type FunctionName = 'heartbeat-timeout' | 'activity-score' | 'destroy-dispatch' | 'gpu-release';

/**
 * Every workload of session-reaper that sends events: the four functions and the two long-running parts. Each has
 * its own ServiceAccount of that name (the identity the Broker's EventPolicies admit) and sends with the CloudEvent
 * `source` `/session-reaper/<name>` (sourceOf), which the functions check.
 */
export const WORKLOADS = ['heartbeat-timeout', 'activity-score', 'destroy-dispatch', 'gpu-release', 'deadline-engine', 'idle-checker'] as const satisfies readonly (
  FunctionName | 'deadline-engine' | 'idle-checker'
)[];
export type Workload = (typeof WORKLOADS)[number];

/** Who may send an event type: one of our workloads, the inference pipeline, or an operator. */
export type Sender = Workload | 'inference-pipeline' | 'operator';

/** What every source of ours starts with; no inbound event may claim it (only session-reaper speaks for itself). */
export const OWN_SOURCE_PREFIX = '/session-reaper/';

/** The CloudEvent `source` of everything a workload emits. */
export function sourceOf(workload: Workload): string {
  return `${OWN_SOURCE_PREFIX}${workload}`;
}

/** One row of the event catalogue: who sends a type, who consumes it, and what it means. */
export interface CatalogueEntry {
  type: ContractType;
  /** inbound: sent to the system from outside; emitted: produced by one of its workloads. */
  direction: 'inbound' | 'emitted';
  /** Who produces it, in words (the README's event table). */
  producer: FunctionName | 'inference pipeline' | 'operator';
  /**
   * Exactly who may send it: the Broker's EventPolicies admit these identities for this type and no other, and a
   * function refuses an emitted type whose source is not one of these workloads' (tests/deploy checks both).
   */
  senders: readonly Sender[];
  consumers: readonly FunctionName[];
  summary: string;
  /**
   * The CloudEvent `time` is required: it fences the event (an end sent before a reopen ends the older incarnation;
   * an open sent before the one that set the placement never moves it back), so a redelivery without it could act on
   * the wrong incarnation.
   */
  requiresTime?: true;
}

/** Every event type with its senders and consumers; the README's event table and the schema index come from it. */
export const catalogue = [
  { type: EventType.SessionOpened, direction: 'inbound', producer: 'inference pipeline', senders: ['inference-pipeline'], consumers: ['heartbeat-timeout'], summary: 'A session started; its liveness deadline starts.', requiresTime: true },
  { type: EventType.SessionHeartbeat, direction: 'inbound', producer: 'inference pipeline', senders: ['inference-pipeline'], consumers: ['heartbeat-timeout'], summary: 'The session is alive; its deadline moves out.' },
  { type: EventType.SessionActivity, direction: 'inbound', producer: 'inference pipeline', senders: ['inference-pipeline'], consumers: ['activity-score'], summary: 'User or model activity; feeds the idle score and refreshes liveness.' },
  { type: EventType.SessionHold, direction: 'inbound', producer: 'inference pipeline', senders: ['inference-pipeline'], consumers: ['heartbeat-timeout'], summary: 'The session is busy for a while: no expiry, no idle verdict.' },
  { type: EventType.InferenceCompleted, direction: 'inbound', producer: 'inference pipeline', senders: ['inference-pipeline'], consumers: ['activity-score', 'destroy-dispatch'], summary: 'A request finished; with release=true the session is destroyed.', requiresTime: true },
  { type: EventType.SessionClosed, direction: 'inbound', producer: 'inference pipeline', senders: ['inference-pipeline'], consumers: ['destroy-dispatch'], summary: 'The owner closed the session; it is destroyed.', requiresTime: true },
  { type: EventType.SessionDestroyRequested, direction: 'inbound', producer: 'operator', senders: ['operator'], consumers: ['destroy-dispatch'], summary: 'An operator forces the destroy of a session.' },
  { type: EventType.SessionExpired, direction: 'emitted', producer: 'heartbeat-timeout', senders: ['deadline-engine'], consumers: ['destroy-dispatch'], summary: 'The session missed its liveness deadline.' },
  { type: EventType.SessionIdle, direction: 'emitted', producer: 'activity-score', senders: ['idle-checker'], consumers: ['destroy-dispatch'], summary: 'The idle score crossed the threshold for the current load.' },
  { type: EventType.GpuReleaseRequested, direction: 'emitted', producer: 'destroy-dispatch', senders: ['destroy-dispatch', 'heartbeat-timeout', 'deadline-engine'], consumers: ['gpu-release'], summary: 'Free the GPU memory of the session on its runtime (heartbeat-timeout also sends it for the old placement of a migrated session, and the deadline engine again when that release stalled).' },
  { type: EventType.GpuReleased, direction: 'emitted', producer: 'gpu-release', senders: ['gpu-release'], consumers: ['destroy-dispatch'], summary: 'The runtime freed the GPU memory.' },
  { type: EventType.GpuReleaseFailed, direction: 'emitted', producer: 'gpu-release', senders: ['gpu-release'], consumers: ['destroy-dispatch'], summary: 'Freeing the GPU memory failed (retryable or not).' },
  { type: EventType.SessionDestroyed, direction: 'emitted', producer: 'destroy-dispatch', senders: ['destroy-dispatch'], consumers: [], summary: 'The session is gone, with the timeline of its destroy; for observers.' },
  { type: EventType.SessionDestroyFailed, direction: 'emitted', producer: 'destroy-dispatch', senders: ['destroy-dispatch'], consumers: [], summary: 'A destroy gave up after RELEASE_MAX_ATTEMPTS failed GPU releases and waits for an operator; for observers and alerts.' },
  { type: EventType.DestroyResume, direction: 'emitted', producer: 'heartbeat-timeout', senders: ['deadline-engine'], consumers: ['destroy-dispatch'], summary: 'The deadline engine (heartbeat-timeout) resumes a stalled destroy from the stage it reached.' },
  { type: EventType.GpuOrphanReleased, direction: 'emitted', producer: 'heartbeat-timeout', senders: ['deadline-engine'], consumers: [], summary: "The deadline engine's reconciler freed GPU memory a runtime held that no session owned past the grace period; for observers." },
  { type: EventType.GpuDemoteRequested, direction: 'emitted', producer: 'activity-score', senders: ['idle-checker'], consumers: ['gpu-release'], summary: "The idle checker (activity-score) demotes a quiet session: move its KV off the GPU until its user is back." },
  { type: EventType.GpuDemoted, direction: 'emitted', producer: 'gpu-release', senders: ['gpu-release'], consumers: [], summary: 'The runtime moved the KV off the GPU (bytes offloaded and freed); for observers.' },
  { type: EventType.GpuRestoreRequested, direction: 'emitted', producer: 'activity-score', senders: ['activity-score', 'idle-checker'], consumers: ['gpu-release'], summary: 'User activity on a demoted session: bring its KV back onto the GPU (the idle checker sends a pending one again).' },
  { type: EventType.GpuRestored, direction: 'emitted', producer: 'gpu-release', senders: ['gpu-release'], consumers: [], summary: 'The runtime brought the KV back; for observers.' },
] as const satisfies readonly CatalogueEntry[];

/** Types sent to the system from outside it. */
export type InboundType = Extract<(typeof catalogue)[number], { direction: 'inbound' }>['type'];
/** Types the system's functions emit (built with buildEvent). */
export type EmittedType = Extract<(typeof catalogue)[number], { direction: 'emitted' }>['type'];

const contractTypes: ReadonlySet<string> = new Set(Object.keys(EventTypes));
const emittedTypes: ReadonlySet<string> = new Set(catalogue.filter((entry) => entry.direction === 'emitted').map((entry) => entry.type));

/** True when a string is a type of the contract. */
export function isContractType(type: unknown): type is ContractType {
  return typeof type === 'string' && contractTypes.has(type);
}

/** True when a string is a type the system itself emits. */
export function isEmittedType(type: unknown): type is EmittedType {
  return typeof type === 'string' && emittedTypes.has(type);
}


const sendersOfType = new Map<string, readonly Sender[]>(catalogue.map((entry) => [entry.type, entry.senders]));

const timedTypes: ReadonlySet<string> = new Set(catalogue.filter((entry: CatalogueEntry) => entry.requiresTime === true).map((entry) => entry.type));

/** Whether a type must carry its CloudEvent `time` (the catalogue's requiresTime). */
export function requiresTime(type: string): boolean {
  return timedTypes.has(type);
}

/** Who may send a type (the catalogue's senders); empty for a type outside the contract. */
export function sendersOf(type: string): readonly Sender[] {
  return sendersOfType.get(type) ?? [];
}

/** The types a sender may send, in catalogue order. */
export function typesSentBy(sender: Sender): ContractType[] {
  return catalogue.filter((entry) => (entry.senders as readonly Sender[]).includes(sender)).map((entry) => entry.type);
}
