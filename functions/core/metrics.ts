// The metric catalogue: every metric this system exposes, in one place — its Prometheus name, type, unit, labels
// (each a closed list of values: never a session id, tenant, node or URL; runtimes by their registered name), help
// text and, for histograms, bucket edges placed on the targets (10 ms detection, 18 ms destroy), since a latency
// read from buckets is only as good as its edges and the alerts compare bucket counts at the target edge.
//
// And the recorder that writes them through the OpenTelemetry metrics API. Hot paths stay cheap: counters are plain
// numbers in cells made once per label combination (an increment allocates nothing and hashes nothing) that
// asynchronous OpenTelemetry counters read at collection; histograms get attribute objects built once per label
// combination. The SDK, its readers and exporters are set up in metrics-provider.ts.
import type { Attributes, Meter, ObservableResult } from '@opentelemetry/api';
import { EventType } from './contract/events.ts';
import type { Cause, Stage } from './session-store.ts';

/** Prefix of every metric name. */
export const METRIC_PREFIX = 'sessionreaper_';

/** The label value a value outside its label's list is recorded under (a runtime not registered, a new code). */
export const OTHER = 'other';

/** Label-value lists: each label of the catalogue takes its values from one of these, or from the registered runtimes. */
export const EVENT_TYPES = Object.values(EventType).map((t) => t.replace('dev.sessionreaper.', ''));
export const OUTCOME_CLASSES = ['2xx', '4xx', '5xx'] as const;
export const CAUSES = ['closed', 'expired', 'idle', 'completed', 'forced'] as const satisfies readonly Cause[];
export const STAGES = ['claimed', 'gpu_release_requested', 'gpu_released', 'state_purged'] as const satisfies readonly Stage[];
/** What a destroy trigger came to (destroy-dispatch's claim codes, lower-cased). */
export const TRIGGER_OUTCOMES = ['claimed', 'resumed', 'stale', 'revived', 'ended', 'unknown', 'marked', 'not_owner', 'unverified'] as const;
export const DESTROY_OUTCOMES = ['destroyed', 'gave_up'] as const;
export const DESTROY_FAILURE_REASONS = ['release_retryable', 'release_refused', 'gave_up', 'hook_failed', 'throttled'] as const;
export const RELEASE_OUTCOMES = ['released', 'gone', 'superseded', 'failed_retryable', 'failed', 'breaker_open'] as const;
export const OFFLOAD_OUTCOMES = ['done', 'failed_retryable', 'failed'] as const;
export const BREAKER_STATES = ['closed', 'half_open', 'open'] as const;
export const ADMISSIONS = ['admitted', 'waiting', 'throttled'] as const;
export const SESSION_STATES = ['active', 'destroying', 'release_failed'] as const;
export const DEAD_LETTER_REASONS = ['http_4xx', 'http_5xx', 'timeout', 'unreachable', 'other'] as const;
/** Event-loop delay statistics (a gauge: `quantile` is a summary's label, and promtool refuses it elsewhere). */
export const LOOP_STATS = ['p50', 'p99', 'max'] as const;
export const ANSWER_OUTCOMES = ['booked', 'duplicate', 'ignored'] as const;
/** What the reconciler's release of an orphan (an allocation no session owns) came to (OrphanOutcome). */
export const ORPHAN_OUTCOMES = ['released', 'gone', 'failed'] as const;
/** What the idle checker's demote request came to (requestDemote's codes, lower-cased). */
export const DEMOTE_REQUEST_OUTCOMES = ['requested', 'pending', 'already', 'refused', 'resident', 'unknown', 'held', 'ended', 'stale'] as const;
/** The Lua scripts (functions/core/redis/lua/*.lua, without the key count), as Scripts names them. */
export const SCRIPT_NAMES = [
  'admitOrWait', 'advanceStage', 'beginOffloadCall', 'beginReleaseCall', 'claimDestroy', 'claimDue', 'claimExpired', 'claimIdleChecks', 'claimStalled',
  'completeDestroy', 'grantHold', 'heartbeat', 'heldSessionOwners', 'openOutQuiet', 'openSession', 'purgeSession', 'recordActivity', 'recordIdleVerdict', 'recordRelease', 'releaseSlotAndAdmitNext',
  'releaseTarget', 'requestDemote', 'requestRestore', 'scheduleIdleCheck', 'settleFailedDestroy', 'settleOffloadCall', 'settleOrphan', 'settleReleaseCall',
  'sightOrphan', 'takeReleaseToken',
] as const;

/** A label whose values are the registered runtimes' names (RUNTIMES), plus OTHER. */
export const RUNTIME = 'runtime-names';

type LabelValues = readonly string[] | typeof RUNTIME;

/** One metric of the catalogue. */
export interface MetricSpec {
  /** The name as Prometheus exposes it: units in the name, counters end in `_total`. */
  readonly name: string;
  readonly type: 'counter' | 'histogram' | 'gauge';
  readonly unit: 'seconds' | 'bytes' | 'ratio' | 'count';
  readonly help: string;
  /** Each label and the closed list its values come from. */
  readonly labels: Readonly<Record<string, LabelValues>>;
  /** Histograms: the upper bucket edges, seconds. */
  readonly buckets?: readonly number[];
  /** The processes that record it: gauges of shared state are read from Redis by the deadline engine alone. */
  readonly recordedBy: readonly string[];
}

/** The detection-lag target: a dead session is known within 10 ms of its deadline. */
export const DETECTION_TARGET_SECONDS = 0.01;
/** The destroy target: claim to destroyed within 18 ms. */
export const DESTROY_TARGET_SECONDS = 0.018;
/** The end-to-end target: ending event to destroyed, detection and destroy together. */
export const RECLAIM_TARGET_SECONDS = 0.028;

const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.018, 0.028, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120] as const;
const CALL_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30] as const;
// A destroy's wait for a release slot: none at all for most (the 0 edge counts those exactly), seconds to minutes
// behind a storm on one node.
const QUEUE_WAIT_BUCKETS = [0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300] as const;
const SCRIPT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1] as const;

const FUNCTIONS = ['heartbeat-timeout', 'activity-score', 'destroy-dispatch', 'gpu-release'];

const m = <S extends MetricSpec>(spec: S): S => spec;

/** Every metric, by the name the code records it under. */
export const CATALOGUE = {
  eventsProcessed: m({
    name: 'sessionreaper_events_processed_total', type: 'counter', unit: 'count', labels: { type: EVENT_TYPES, outcome: OUTCOME_CLASSES },
    help: 'CloudEvents a function handled, by type (without dev.sessionreaper.) and the class of its answer: 2xx acknowledged, 4xx refused (never redelivered), 5xx redelivered.',
    recordedBy: FUNCTIONS,
  }),
  sessionsOpened: m({
    name: 'sessionreaper_sessions_opened_total', type: 'counter', unit: 'count', labels: {},
    help: 'Sessions registered by a session.opened (a new incarnation: a first open or a migration), not counting redeliveries.',
    recordedBy: ['heartbeat-timeout'],
  }),
  detectionLag: m({
    name: 'sessionreaper_detection_lag_seconds', type: 'histogram', unit: 'seconds', labels: {}, buckets: LATENCY_BUCKETS,
    help: 'How long after its deadline the deadline engine claimed a dead session (session.expired lagMs); target 10 ms.',
    recordedBy: ['deadline-engine'],
  }),
  expiriesClaimed: m({
    name: 'sessionreaper_expiries_total', type: 'counter', unit: 'count', labels: {},
    help: 'Dead sessions the deadline engine claimed and announced with session.expired.',
    recordedBy: ['deadline-engine'],
  }),
  engineRounds: m({
    name: 'sessionreaper_deadline_engine_rounds_total', type: 'counter', unit: 'count', labels: {},
    help: 'Poll rounds the deadline engine completed (successful or not): a flat rate means a stalled engine.',
    recordedBy: ['deadline-engine'],
  }),
  destroyDuration: m({
    name: 'sessionreaper_destroy_duration_seconds', type: 'histogram', unit: 'seconds', labels: { cause: CAUSES }, buckets: LATENCY_BUCKETS,
    help: 'A destroy from its claim to session.destroyed, by cause; target 18 ms.',
    recordedBy: ['destroy-dispatch'],
  }),
  reclaimLatency: m({
    name: 'sessionreaper_reclaim_latency_seconds', type: 'histogram', unit: 'seconds', labels: { cause: CAUSES }, buckets: LATENCY_BUCKETS,
    help: 'End to end: from the ending event (the close, completion or verdict sent; for an expiry, the deadline) to session.destroyed, by cause; target 28 ms.',
    recordedBy: ['destroy-dispatch'],
  }),
  destroyTriggers: m({
    name: 'sessionreaper_destroy_triggers_total', type: 'counter', unit: 'count', labels: { cause: CAUSES, outcome: TRIGGER_OUTCOMES },
    help: 'Triggers of a destroy and what each came to: claimed it; resumed one claimed already (a duplicate or later cause, suppressed, and every session.expired, which the engine claimed); stale, revived, ended or unknown (not applied); marked (an end that beat its open); not_owner; unverified (a session.idle the idle checker did not record: ignored).',
    recordedBy: ['destroy-dispatch'],
  }),
  destroys: m({
    name: 'sessionreaper_destroys_total', type: 'counter', unit: 'count', labels: { cause: CAUSES, outcome: DESTROY_OUTCOMES },
    help: 'Destroys that ended, by cause: destroyed (session.destroyed, counted once per incarnation) or gave_up (its GPU release failed every attempt; waits for an operator).',
    recordedBy: ['destroy-dispatch'],
  }),
  destroyFailures: m({
    name: 'sessionreaper_destroy_failures_total', type: 'counter', unit: 'count', labels: { stage: STAGES, reason: DESTROY_FAILURE_REASONS },
    help: 'Steps of a destroy that failed, by the stage it was at and why: the release failed (retryable, or refused for good), the destroy gave up, an OnDestroy hook failed, the runtime rate limit throttled it.',
    recordedBy: ['destroy-dispatch'],
  }),
  releaseAnswers: m({
    name: 'sessionreaper_release_answers_total', type: 'counter', unit: 'count', labels: { outcome: ANSWER_OUTCOMES },
    help: 'gpu.released answers destroy-dispatch received: booked in the ledger, a duplicate of one booked, or ignored (stale, forged: answering no release of ours).',
    recordedBy: ['destroy-dispatch'],
  }),
  stormGuardAdmissions: m({
    name: 'sessionreaper_storm_guard_admissions_total', type: 'counter', unit: 'count', labels: { outcome: ADMISSIONS },
    help: 'Storm-guard decisions on a GPU release: admitted (a slot taken, or renewed by a redelivery), queued behind its node\'s in-flight limit, or throttled by its runtime\'s rate limit.',
    recordedBy: ['destroy-dispatch'],
  }),
  stormGuardQueueWait: m({
    name: 'sessionreaper_storm_guard_queue_wait_seconds', type: 'histogram', unit: 'seconds', labels: {}, buckets: QUEUE_WAIT_BUCKETS,
    help: 'How long a destroy waited in its node\'s storm-guard queue, from queued to admitted to a release slot (0 when a slot was free at once); once per admission for good (a slot given back for want of a runtime token is asked for, and counted, again).',
    recordedBy: ['destroy-dispatch'],
  }),
  releaseRequests: m({
    name: 'sessionreaper_gpu_release_requests_total', type: 'counter', unit: 'count', labels: { runtime: RUNTIME, outcome: RELEASE_OUTCOMES },
    help: 'Release calls gpu-release made to a runtime, by registered runtime and outcome (released, gone: 404, superseded: 409, failed_retryable, failed for good, breaker_open).',
    recordedBy: ['gpu-release'],
  }),
  releaseDuration: m({
    name: 'sessionreaper_gpu_release_duration_seconds', type: 'histogram', unit: 'seconds', labels: { runtime: RUNTIME, outcome: RELEASE_OUTCOMES }, buckets: CALL_BUCKETS,
    help: 'One release call to a runtime, retries and backoffs included, by registered runtime and outcome.',
    recordedBy: ['gpu-release'],
  }),
  releaseRetries: m({
    name: 'sessionreaper_gpu_release_retries_total', type: 'counter', unit: 'count', labels: { runtime: RUNTIME },
    help: 'HTTP attempts beyond the first that release calls needed, by registered runtime.',
    recordedBy: ['gpu-release'],
  }),
  demotes: m({
    name: 'sessionreaper_gpu_demotes_total', type: 'counter', unit: 'count', labels: { runtime: RUNTIME, outcome: OFFLOAD_OUTCOMES },
    help: 'Demote calls (a quiet session\'s KV moved off the GPU), by registered runtime and outcome.',
    recordedBy: ['gpu-release'],
  }),
  restores: m({
    name: 'sessionreaper_gpu_restores_total', type: 'counter', unit: 'count', labels: { runtime: RUNTIME, outcome: OFFLOAD_OUTCOMES },
    help: 'Restore calls (a demoted session\'s KV brought back), by registered runtime and outcome.',
    recordedBy: ['gpu-release'],
  }),
  breakerState: m({
    name: 'sessionreaper_breaker_state', type: 'gauge', unit: 'count', labels: { runtime: RUNTIME, state: BREAKER_STATES },
    help: 'Breakers of this process per registered runtime in each state (closed, half_open, open); a process holds one per runtime endpoint it calls.',
    recordedBy: ['gpu-release', 'deadline-engine'],
  }),
  breakerTransitions: m({
    name: 'sessionreaper_breaker_transitions_total', type: 'counter', unit: 'count', labels: { runtime: RUNTIME, to: BREAKER_STATES },
    help: 'Breaker state changes per registered runtime, by the state entered.',
    recordedBy: ['gpu-release', 'deadline-engine'],
  }),
  deadLetters: m({
    name: 'sessionreaper_dead_letters_total', type: 'counter', unit: 'count', labels: { type: EVENT_TYPES, reason: DEAD_LETTER_REASONS },
    help: 'Events the Broker gave up delivering and the dead-letter receiver kept (the local Broker: its own store), by type and why the last delivery failed.',
    recordedBy: ['dead-letters', 'local-broker'],
  }),
  orphanReleases: m({
    name: 'sessionreaper_orphan_releases_total', type: 'counter', unit: 'count', labels: { runtime: RUNTIME, outcome: ORPHAN_OUTCOMES },
    help: 'Releases the reconciler asked of a runtime for GPU memory no session owned past its grace, by registered runtime and outcome (released, gone: 404, failed: tried again next pass).',
    recordedBy: ['deadline-engine'],
  }),
  demoteRequests: m({
    name: 'sessionreaper_demote_requests_total', type: 'counter', unit: 'count', labels: { outcome: DEMOTE_REQUEST_OUTCOMES },
    help: 'Demotes the idle checker asked for (a quiet session past its predicted return), by what the request came to: requested, pending (sent again), or not made (already offloaded, refused before, resident, unknown, held, ended, stale).',
    recordedBy: ['idle-checker'],
  }),
  scriptDuration: m({
    name: 'sessionreaper_redis_script_duration_seconds', type: 'histogram', unit: 'seconds', labels: { script: SCRIPT_NAMES }, buckets: SCRIPT_BUCKETS,
    help: 'One Redis Lua script call, round trip included, by script.',
    recordedBy: [...FUNCTIONS, 'deadline-engine', 'idle-checker'],
  }),
  emitRetries: m({
    name: 'sessionreaper_emit_retries_total', type: 'counter', unit: 'count', labels: {},
    help: 'Attempts beyond the first that sending an event to the Broker needed.',
    recordedBy: [...FUNCTIONS, 'deadline-engine', 'idle-checker'],
  }),
  emitFailures: m({
    name: 'sessionreaper_emit_failures_total', type: 'counter', unit: 'count', labels: {},
    help: 'Events that could not be sent to the Broker within the retry budget (the handler failed and its input is redelivered).',
    recordedBy: [...FUNCTIONS, 'deadline-engine', 'idle-checker'],
  }),
  eventLoopDelay: m({
    name: 'sessionreaper_event_loop_delay_seconds', type: 'gauge', unit: 'seconds', labels: { stat: LOOP_STATS },
    help: 'The deadline engine\'s event-loop delay since the last collection, at the median, the 99th percentile and the maximum.',
    recordedBy: ['deadline-engine'],
  }),
  // Shared state, read from Redis by the deadline engine (one always-on process), not counted in each pod.
  sessions: m({
    name: 'sessionreaper_sessions', type: 'gauge', unit: 'count', labels: { state: SESSION_STATES },
    help: 'Sessions now: active (in the deadline index), destroying (destroys in flight), release_failed (gave up, waiting for an operator).',
    recordedBy: ['deadline-engine'],
  }),
  deadlinesOverdue: m({
    name: 'sessionreaper_deadlines_overdue', type: 'gauge', unit: 'count', labels: {},
    help: 'Active sessions whose deadline passed more than a second ago and that no engine has claimed.',
    recordedBy: ['deadline-engine'],
  }),
  gpuRegisteredBytes: m({
    name: 'sessionreaper_gpu_registered_bytes', type: 'gauge', unit: 'bytes', labels: {},
    help: 'GPU bytes registered by session.opened since the ledger began (all nodes).',
    recordedBy: ['deadline-engine'],
  }),
  gpuFreedBytes: m({
    name: 'sessionreaper_gpu_freed_bytes', type: 'gauge', unit: 'bytes', labels: {},
    help: 'GPU bytes booked as freed (runtime-confirmed releases and operator resolves) since the ledger began.',
    recordedBy: ['deadline-engine'],
  }),
  gpuHeldBytes: m({
    name: 'sessionreaper_gpu_held_bytes', type: 'gauge', unit: 'bytes', labels: {},
    help: 'GPU bytes held now by sessions not yet released.',
    recordedBy: ['deadline-engine'],
  }),
  gpuOffloadedBytes: m({
    name: 'sessionreaper_gpu_offloaded_bytes', type: 'gauge', unit: 'bytes', labels: {},
    help: 'KV bytes demoted sessions keep off the GPU now.',
    recordedBy: ['deadline-engine'],
  }),
  ledgerViolations: m({
    name: 'sessionreaper_ledger_violations', type: 'gauge', unit: 'count', labels: {},
    help: 'Problems the ledger audit finds (a node where registered differs from released + held, a negative holding, more releases than allocations): must stay 0.',
    recordedBy: ['deadline-engine'],
  }),
  stormGuardQueued: m({
    name: 'sessionreaper_storm_guard_queue_depth', type: 'gauge', unit: 'count', labels: {},
    help: 'Destroys waiting in the storm guard\'s per-node queues for a release slot (all nodes).',
    recordedBy: ['deadline-engine'],
  }),
  oldestPendingRelease: m({
    name: 'sessionreaper_oldest_pending_release_seconds', type: 'gauge', unit: 'seconds', labels: {},
    help: 'Age of the oldest destroy (or migration release) in flight since its last progress; 0 when none.',
    recordedBy: ['deadline-engine'],
  }),
} as const satisfies Record<string, MetricSpec>;

export type MetricKey = keyof typeof CATALOGUE;

/** The OpenTelemetry instrument name of a catalogue metric: the Prometheus name without `_total`, which exporters add to counters. */
export function instrumentName(spec: MetricSpec): string {
  return spec.type === 'counter' ? spec.name.replace(/_total$/, '') : spec.name;
}

const UCUM: Record<MetricSpec['unit'], string> = { seconds: 's', bytes: 'By', ratio: '1', count: '' };

/** A counter cell: one label combination, bumped without allocating. */
export class CounterCell {
  value = 0;
  readonly attributes: Attributes;
  constructor(attributes: Attributes) {
    this.attributes = attributes;
  }
  /** Adds `n` (1 by default). */
  add(n = 1): void {
    this.value += n;
  }
}

// Label values to cells, one Map level per label; the lists are closed, so every level is made up front.
type Tree<T> = Map<string, Tree<T> | T>;

function valuesOf(list: LabelValues, runtimes: readonly string[]): string[] {
  const values = list === RUNTIME ? [...runtimes] : [...list];
  if (!values.includes(OTHER)) values.push(OTHER);
  return values;
}

function buildTree<T>(names: readonly string[], lists: readonly string[][], make: (attrs: Attributes) => T, at = 0, attrs: Attributes = {}): Tree<T> | T {
  if (at === names.length) return make(Object.freeze({ ...attrs }));
  const tree: Tree<T> = new Map();
  for (const v of lists[at]!) tree.set(v, buildTree(names, lists, make, at + 1, { ...attrs, [names[at]!]: v }));
  return tree;
}

function lookup<T>(root: Tree<T> | T, depth: number, a?: string, b?: string): T {
  if (depth === 0) return root as T;
  const first = root as Tree<T>;
  const next = first.get(a!) ?? first.get(OTHER)!;
  if (depth === 1) return next as T;
  const second = next as Tree<T>;
  return (second.get(b!) ?? second.get(OTHER)!) as T;
}

function leaves<T>(root: Tree<T> | T, depth: number, out: T[] = []): T[] {
  if (depth === 0) out.push(root as T);
  else for (const child of (root as Tree<T>).values()) leaves(child, depth - 1, out);
  return out;
}

/** A counter of the catalogue: cells per label combination (at most two labels), read by an observable counter. */
export class CatalogueCounter {
  readonly #root: Tree<CounterCell> | CounterCell;
  readonly #depth: number;
  readonly #cells: CounterCell[];

  /** `exported`: whether this process reports it (it records it): a counter no process of this kind moves is left out. */
  readonly spec: MetricSpec;

  constructor(meter: Meter, spec: MetricSpec, runtimes: readonly string[], exported = true) {
    this.spec = spec;
    const names = Object.keys(spec.labels);
    this.#depth = names.length;
    this.#root = buildTree(names, names.map((n) => valuesOf(spec.labels[n]!, runtimes)), (attrs) => new CounterCell(attrs));
    this.#cells = leaves(this.#root, this.#depth);
    const cells = this.#cells;
    if (!exported) return;
    meter
      .createObservableCounter(instrumentName(spec), { description: spec.help, unit: UCUM[spec.unit] })
      .addCallback((result: ObservableResult) => {
        for (const c of cells) result.observe(c.value, c.attributes);
      });
  }

  /** The cell of one label combination (in the catalogue's label order); a value outside its list is OTHER. */
  cell(a?: string, b?: string): CounterCell {
    return lookup(this.#root, this.#depth, a, b);
  }

  /** Adds `n` to one label combination. */
  add(n: number, a?: string, b?: string): void {
    lookup(this.#root, this.#depth, a, b).value += n;
  }

  /** The sum over every cell (tests, the status page). */
  total(): number {
    return this.#cells.reduce((s, c) => s + c.value, 0);
  }
}

/** A histogram of the catalogue, with its bucket edges and an attribute object per label combination made once. */
export class CatalogueHistogram {
  readonly #root: Tree<Attributes> | Attributes;
  readonly #depth: number;
  readonly #histogram;

  readonly spec: MetricSpec;

  constructor(meter: Meter, spec: MetricSpec, runtimes: readonly string[]) {
    this.spec = spec;
    const names = Object.keys(spec.labels);
    this.#depth = names.length;
    this.#root = buildTree(names, names.map((n) => valuesOf(spec.labels[n]!, runtimes)), (attrs) => attrs);
    this.#histogram = meter.createHistogram(instrumentName(spec), {
      description: spec.help, unit: UCUM[spec.unit], advice: { explicitBucketBoundaries: [...(spec.buckets ?? [])] },
    });
  }

  /** Records one value, in seconds (or the metric's unit), for one label combination. */
  record(value: number, a?: string, b?: string): void {
    this.#histogram.record(value, lookup(this.#root, this.#depth, a, b));
  }
}

/** A gauge of the catalogue: its owner observes it at collection through `observe`. */
export class CatalogueGauge {
  readonly #root: Tree<Attributes> | Attributes;
  readonly #depth: number;
  readonly instrument;

  readonly spec: MetricSpec;

  constructor(meter: Meter, spec: MetricSpec, runtimes: readonly string[]) {
    this.spec = spec;
    const names = Object.keys(spec.labels);
    this.#depth = names.length;
    this.#root = buildTree(names, names.map((n) => valuesOf(spec.labels[n]!, runtimes)), (attrs) => attrs);
    this.instrument = meter.createObservableGauge(instrumentName(spec), { description: spec.help, unit: UCUM[spec.unit] });
  }

  /** The attributes of one label combination, for ObservableResult.observe. */
  attributes(a?: string, b?: string): Attributes {
    return lookup(this.#root, this.#depth, a, b);
  }
}

type Instruments = {
  readonly [K in MetricKey]: (typeof CATALOGUE)[K]['type'] extends 'counter' ? CatalogueCounter : (typeof CATALOGUE)[K]['type'] extends 'histogram' ? CatalogueHistogram : CatalogueGauge;
};

/**
 * Every instrument of the catalogue for one process, made once; `runtimes` are the registered runtimes' names. Counters
 * are reported (as 0 until moved) only by the process kinds that record them (`recordedBy`; all when `process` is
 * absent), so a metric's series come from its recorders alone.
 */
export function createInstruments(meter: Meter, runtimes: readonly string[], process?: string): Instruments {
  const out: Record<string, CatalogueCounter | CatalogueHistogram | CatalogueGauge> = {};
  for (const [key, spec] of Object.entries(CATALOGUE) as [MetricKey, MetricSpec][]) {
    out[key] = spec.type === 'counter' ? new CatalogueCounter(meter, spec, runtimes, process === undefined || spec.recordedBy.includes(process)) : spec.type === 'histogram' ? new CatalogueHistogram(meter, spec, runtimes) : new CatalogueGauge(meter, spec, runtimes);
  }
  return out as Instruments;
}

/** The class of an HTTP status, as eventsProcessed labels it. */
export function outcomeClass(status: number): (typeof OUTCOME_CLASSES)[number] {
  return status >= 500 ? '5xx' : status >= 400 ? '4xx' : '2xx';
}

const SHORT_TYPES = new Map<string, string>(Object.values(EventType).map((t) => [t, t.replace('dev.sessionreaper.', '')]));

/** An event type as the catalogue labels it: without `dev.sessionreaper.` (a lookup: nothing is allocated), else OTHER. */
export function shortType(type: string): string {
  return SHORT_TYPES.get(type) ?? OTHER;
}
