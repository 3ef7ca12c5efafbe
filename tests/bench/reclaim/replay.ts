// Replays rebuilt trace sessions in virtual time through a reclamation policy and measures what it costs: GPU KV held
// by sessions that are over, KV held while users think, follow-ups that find their session gone (and the prompt
// tokens they must prefill again), demotes and restores, and, under a fixed KV pool, turns that find no room.
//
// Each turn becomes the events the pipeline sends: `session.activity` (kind `message`) when the request arrives and
// `inference.completed` once the output is decoded (output tokens / tokensPerSecond later). After each event the
// policy says when the idle checker should first look (activity-score's handler schedules that in the idle index);
// at each look the policy says destroy, demote or look again later, as the idle checker decides. The engine applies
// what destroy-dispatch and gpu-release would: a destroy frees the session's KV (a later turn must prefill again), a
// demote moves it off the GPU, and the user's next turn brings it back (a restore). Virtual time only: a whole hour
// of trace replays in well under a second for the fixed policies.
//
// Rules the engine holds every policy to:
// - a session with a turn in flight is never reclaimed (the verdict is re-asked when the turn completes);
// - a session's KV is its context after its latest turn, (input + output tokens) × bytesPerToken, reserved in full
//   when the turn arrives;
// - a follow-up that finds its session destroyed re-prefills what the KV held, at most its own prompt;
// - with a pool, a turn that finds no room evicts the least recently active resident sessions not in flight (as an
//   engine's cache would), and the follow-ups of evicted sessions re-prefill too; a turn that cannot fit even then
//   is counted as refused and admitted over the pool.
import type { Session } from './sessions.ts';

/** How the replay turns tokens into time and bytes, which quiet spells it judges, and the pool, if any. */
export interface ReplayOptions {
  /** Decode speed: inference.completed comes outputTokens / tokensPerSecond after the request. */
  readonly tokensPerSecond: number;
  /** GPU KV bytes per context token (see DEFAULT_BYTES_PER_TOKEN). */
  readonly bytesPerToken: number;
  /** GPU KV pool in bytes; undefined = unbounded. */
  readonly poolBytes?: number | undefined;
  /** Only quiet spells opened by turns arriving in [judgedFromMs, judgedUntilMs) are counted (the held-back half). */
  readonly judgedFromMs?: number;
  readonly judgedUntilMs?: number;
  /** A session that sent no further turn counts as rightly reclaimed when its GPU KV was freed within this long. */
  readonly accuracyWithinMs?: number;
}

/**
 * KV bytes per token of a 7B-class model with grouped-query attention (Llama-3-8B / Mistral-7B shape):
 * 2 (K and V) × 32 layers × 8 KV heads × 128 head dim × 2 bytes (f16) = 131,072 B/token (128 KiB).
 */
export const DEFAULT_BYTES_PER_TOKEN = 2 * 32 * 8 * 128 * 2;

/** Decode speed assumed per session: 50 tokens/s. */
export const DEFAULT_TOKENS_PER_SECOND = 50;

/** The accuracy's window: a session that sent no further turn is rightly reclaimed if freed within 5 minutes. */
export const DEFAULT_ACCURACY_WITHIN_MS = 300_000;

/** What the idle checker sees of the session's placement when it looks. */
export interface CheckView {
  /** Whether the session's KV is on the GPU (not demoted). */
  readonly resident: boolean;
  /** The load tier in force (activity-score's; `normal` unless a pool is under pressure). */
  readonly tier: LoadTierName;
}

/** activity-score's load tiers, named here so that fixed policies need not import the function. */
export type LoadTierName = 'normal' | 'low' | 'medium' | 'high';

/** A look's verdict: destroy now, demote now, and when to look again (undefined: never, unless an event comes). */
export interface CheckVerdict {
  readonly destroy: boolean;
  readonly demote: boolean;
  readonly nextCheckAt: number | undefined;
}

/** One session as a policy sees it: its events, and the checker's looks. */
export interface SessionReclaimer {
  /** The user's turn arrived (session.activity, kind message; its text where the workload has one). */
  onTurn(at: number, text?: string): void;
  /** The model finished the turn (inference.completed, release false; first an `output` activity where the workload has a reply). */
  onCompleted(at: number, reply?: string): void;
  /** The user typed, edited or moved the cursor (synthetic workloads only). */
  onActivity(at: number, kind: 'input' | 'edit' | 'cursor', text?: string): void;
  /** The pipeline held the session until `untilMs` (session.hold: a long tool call; synthetic workloads only). */
  onHold(at: number, untilMs: number): void;
  /** When the checker should first look after the latest event (what the handler schedules in the idle index), under the tier in force. */
  firstCheckAt(now: number, tier: LoadTierName): number | undefined;
  /** The checker looks at `now`. */
  check(now: number, view: CheckView): CheckVerdict;
}

/** A reclamation policy: one reclaimer per session. */
export interface ReclaimPolicy {
  readonly name: string;
  /** Only the oracle reads the session's future turns; every other policy must ignore them. */
  start(session: Session): SessionReclaimer;
  /** Evaluates the load tier every this many ms from the event rate and pool pressure; undefined = always normal. */
  readonly loadTier?: { everyMs: number; evaluate(eventsPerSecond: number, memory: ReadonlyArray<{ totalBytes: number; usedBytes: number }>, previous: LoadTierName): LoadTierName };
}

/** What one replay measured, over the judged quiet spells (and, for pool figures, the judged arrivals). */
export interface ReplayMetrics {
  readonly policy: string;
  /** Quiet spells judged: after a turn completed, until the next turn or for good. */
  spells: number;
  /** Judged spells that ended with a follow-up turn. */
  followUps: number;
  /** Judged spells after a session's last turn. */
  finals: number;
  /** GPU KV byte-seconds held after a session's last turn completed, until freed (destroyed, demoted or evicted). */
  wasteByteSeconds: number;
  /** GPU KV byte-seconds held in spells that ended with a follow-up (the price of being ready). */
  gapByteSeconds: number;
  /** Follow-ups that found their session destroyed by the policy, and the tokens they prefilled again. */
  premature: number;
  /** Of those, the ones whose quiet was a tool call under a hold (synthetic workloads: the rest were users thinking). */
  prematureToolCalls: number;
  /** Sessions ended by their pipeline (closed, released, heartbeats gone) before the policy ended them (synthetic). */
  endedByPipeline: number;
  prematureRefillTokens: number;
  /** Follow-ups that found their session evicted by the pool, and the tokens they prefilled again. */
  evicted: number;
  evictedRefillTokens: number;
  /** Demotes (GPU → host) and the bytes they moved; restores (host → GPU) and theirs; demoted sessions never restored. */
  demotes: number;
  demotedBytes: number;
  restores: number;
  restoredBytes: number;
  /** Host byte-seconds holding demoted KV. */
  offloadedByteSeconds: number;
  /** Judged arrivals that found no room in the pool (an eviction was needed), and those that could not fit at all. */
  noRoomTurns: number;
  refusedTurns: number;
  /** Looks at which the policy would have reclaimed a session with a turn in flight (held off by the engine). */
  inFlightVerdicts: number;
  /** Accuracy's parts: follow-ups that found their KV kept (resident or demoted); finals freed within the window. */
  returnsKept: number;
  finalsFreedInTime: number;
  /** Highest GPU KV bytes resident at once (all spells, judged or not). */
  peakResidentBytes: number;
}

/** Total prompt tokens prefilled again: after the policy's destroys and the pool's evictions. */
export function refillTokens(m: ReplayMetrics): number {
  return m.prematureRefillTokens + m.evictedRefillTokens;
}

/**
 * The accuracy the design documents quote, defined here: the share of judged quiet spells decided right, where a
 * spell that ended in a follow-up is right when the follow-up found its KV kept (on the GPU or demoted, not
 * destroyed or evicted), and a spell after a session's last turn is right when its GPU KV was freed within the
 * accuracy window (5 minutes by default) of the turn's completion.
 */
export function accuracy(m: ReplayMetrics): number {
  return m.spells === 0 ? 1 : (m.returnsKept + m.finalsFreedInTime) / m.spells;
}

type KvState = 'none' | 'resident' | 'demoted' | 'destroyed';

interface SessionRun {
  readonly session: Session;
  readonly reclaimer: SessionReclaimer;
  state: KvState;
  evictedByPool: boolean;
  kvTokens: number;
  inFlight: number;
  /** Index of the next turn to arrive. */
  nextTurn: number;
  lastEventAt: number;
  /** Version of the scheduled check; a check event carrying another is stale. */
  checkVersion: number;
  /** The open quiet spell, if the session is quiet. */
  spell: Spell | undefined;
  /** When the current demote began (host bytes held since). */
  demotedAt: number;
}

interface Spell {
  readonly startAt: number;
  readonly bytes: number;
  readonly judged: boolean;
  readonly final: boolean;
  /** When the GPU KV was freed during the spell (destroy, demote or eviction). */
  freedAt: number | undefined;
}

const Kind = { arrive: 0, complete: 1, check: 2, side: 3, end: 4 } as const;
type EventKind = (typeof Kind)[keyof typeof Kind];

interface QueuedEvent {
  at: number;
  seq: number;
  kind: EventKind;
  run: SessionRun;
  /** Turn index (arrive, complete), check version (check) or side event index (side). */
  n: number;
}

// A binary min-heap on (at, seq): equal times keep insertion order, so a turn arriving at the moment of a check
// is seen first (the user wins a tie, as claim-destroy refuses an idle verdict older than the latest activity).
class EventQueue {
  readonly #items: QueuedEvent[] = [];
  #seq = 0;
  get size(): number {
    return this.#items.length;
  }
  push(at: number, kind: EventKind, run: SessionRun, n: number): void {
    const items = this.#items;
    const item = { at, seq: this.#seq++, kind, run, n };
    items.push(item);
    let i = items.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(item, items[parent]!)) break;
      items[i] = items[parent]!;
      i = parent;
    }
    items[i] = item;
  }
  pop(): QueuedEvent | undefined {
    const items = this.#items;
    const top = items[0];
    const last = items.pop();
    if (top === undefined || last === undefined || items.length === 0) return top;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= items.length) break;
      const r = l + 1;
      const c = r < items.length && before(items[r]!, items[l]!) ? r : l;
      if (!before(items[c]!, last)) break;
      items[i] = items[c]!;
      i = c;
    }
    items[i] = last;
    return top;
  }
}

const before = (a: QueuedEvent, b: QueuedEvent): boolean => a.at < b.at || (a.at === b.at && a.seq < b.seq);

function emptyMetrics(policy: string): ReplayMetrics {
  return {
    policy, spells: 0, followUps: 0, finals: 0, wasteByteSeconds: 0, gapByteSeconds: 0, premature: 0, prematureToolCalls: 0, endedByPipeline: 0, prematureRefillTokens: 0, evicted: 0,
    evictedRefillTokens: 0, demotes: 0, demotedBytes: 0, restores: 0, restoredBytes: 0, offloadedByteSeconds: 0, noRoomTurns: 0, refusedTurns: 0,
    inFlightVerdicts: 0, returnsKept: 0, finalsFreedInTime: 0, peakResidentBytes: 0,
  };
}

// Every turn as [session position, turn position], in trace order; computed once per list of sessions (the bench
// replays the same list through many policies).
const arrivalOrders = new WeakMap<readonly Session[], ReadonlyArray<readonly [number, number]>>();
function arrivalOrder(sessions: readonly Session[]): ReadonlyArray<readonly [number, number]> {
  let order = arrivalOrders.get(sessions);
  if (order === undefined) {
    const all: Array<readonly [number, number]> = [];
    sessions.forEach((session, s) => session.turns.forEach((_, i) => all.push([s, i])));
    const turnOf = ([s, i]: readonly [number, number]) => sessions[s]!.turns[i]!;
    order = all.sort((a, b) => turnOf(a).arrivalMs - turnOf(b).arrivalMs || turnOf(a).index - turnOf(b).index);
    arrivalOrders.set(sessions, order);
  }
  return order;
}

/** Replays the sessions through the policy and returns what it measured. */
export function replay(sessions: readonly Session[], policy: ReclaimPolicy, options: ReplayOptions): ReplayMetrics {
  const { tokensPerSecond, bytesPerToken, poolBytes } = options;
  if (!(tokensPerSecond > 0) || !(bytesPerToken > 0)) throw new Error('tokensPerSecond and bytesPerToken must be positive');
  const judgedFrom = options.judgedFromMs ?? Number.NEGATIVE_INFINITY;
  const judgedUntil = options.judgedUntilMs ?? Number.POSITIVE_INFINITY;
  const accuracyWithin = options.accuracyWithinMs ?? DEFAULT_ACCURACY_WITHIN_MS;
  const m = emptyMetrics(policy.name);
  const queue = new EventQueue();
  // Resident sessions not in flight, least recently active first (Map keeps insertion order): the pool's eviction order.
  const idleResident = new Map<SessionRun, true>();
  let residentBytes = 0;

  // Arrivals go in first, in trace order, so that at equal times they come before anything scheduled later.
  const runs = sessions.map(
    (session): SessionRun => ({
      session, reclaimer: policy.start(session), state: 'none', evictedByPool: false, kvTokens: 0, inFlight: 0, nextTurn: 0, lastEventAt: 0,
      checkVersion: 0, spell: undefined, demotedAt: 0,
    }),
  );
  const arrivals = arrivalOrder(sessions);
  for (const [s, i] of arrivals) queue.push(sessions[s]!.turns[i]!.arrivalMs, Kind.arrive, runs[s]!, i);
  // A synthetic workload's typing and holds, and the ends its pipeline sends.
  for (const run of runs) {
    const extras = run.session.synthetic;
    if (extras === undefined) continue;
    extras.events.forEach((e, i) => queue.push(e.atMs, Kind.side, run, i));
    if (extras.endAtMs !== undefined) queue.push(extras.endAtMs, Kind.end, run, 0);
  }

  // The load tier, evaluated every `everyMs` of virtual time up to each event (state only changes at events).
  let tier: LoadTierName = 'normal';
  let nextTierAt = arrivals.length > 0 ? sessions[arrivals[0]![0]]!.turns[arrivals[0]![1]]!.arrivalMs : 0;
  const eventTimes: number[] = [];
  let eventTimesHead = 0;
  const advanceTier = (to: number) => {
    const load = policy.loadTier;
    if (load === undefined) return;
    while (nextTierAt <= to) {
      // Every event recorded so far happened at or before this tick (ticks up to the last event were evaluated then).
      while (eventTimesHead < eventTimes.length && eventTimes[eventTimesHead]! <= nextTierAt - load.everyMs) eventTimesHead++;
      const count = eventTimes.length - eventTimesHead;
      const memory = poolBytes === undefined ? [] : [{ totalBytes: poolBytes, usedBytes: Math.min(poolBytes, residentBytes) }];
      tier = load.evaluate(count / (load.everyMs / 1000), memory, tier);
      nextTierAt += load.everyMs;
      if (eventTimesHead > 4096) {
        eventTimes.splice(0, eventTimesHead);
        eventTimesHead = 0;
      }
    }
  };

  const schedule = (run: SessionRun, at: number | undefined) => {
    run.checkVersion++;
    if (at !== undefined) queue.push(at, Kind.check, run, run.checkVersion);
  };
  const addResident = (bytes: number) => {
    residentBytes += bytes;
    if (residentBytes > m.peakResidentBytes) m.peakResidentBytes = residentBytes;
  };
  // Frees the session's GPU KV in its open spell (books the spell's GPU byte-seconds up to now).
  const freeGpu = (run: SessionRun, now: number) => {
    addResident(-run.kvTokens * bytesPerToken);
    idleResident.delete(run);
    const spell = run.spell;
    if (spell !== undefined && spell.freedAt === undefined) {
      spell.freedAt = now;
      if (spell.judged && spell.final) {
        m.wasteByteSeconds += (spell.bytes * Math.max(0, now - spell.startAt)) / 1000;
        if (now - spell.startAt <= accuracyWithin) m.finalsFreedInTime++;
      }
    }
  };
  const destroy = (run: SessionRun, now: number, byPool: boolean) => {
    if (run.state === 'resident') freeGpu(run, now);
    if (run.state === 'demoted' && run.spell?.judged === true) m.offloadedByteSeconds += (run.kvTokens * bytesPerToken * (now - run.demotedAt)) / 1000;
    run.state = 'destroyed';
    run.evictedByPool = byPool;
    schedule(run, undefined);
  };
  // Evicts the least recently active resident sessions not in flight until `needed` more bytes fit in the pool.
  const makeRoom = (needed: number, judged: boolean, now: number) => {
    if (poolBytes === undefined || residentBytes + needed <= poolBytes) return;
    if (judged) m.noRoomTurns++;
    for (const victim of idleResident.keys()) {
      if (residentBytes + needed <= poolBytes) break;
      destroy(victim, now, true);
    }
    if (residentBytes + needed > poolBytes && judged) m.refusedTurns++;
  };
  let now = 0;

  for (let event = queue.pop(); event !== undefined; event = queue.pop()) {
    now = event.at;
    advanceTier(now);
    const run = event.run;
    switch (event.kind) {
      case Kind.arrive: {
        const turn = run.session.turns[event.n]!;
        eventTimes.push(now);
        const judged = now >= judgedFrom && now < judgedUntil;
        const spell = run.spell;
        run.spell = undefined;
        // The spell this arrival ends was a gap the user came back from.
        if (spell !== undefined && spell.judged) {
          m.gapByteSeconds += (spell.bytes * Math.max(0, (spell.freedAt ?? now) - spell.startAt)) / 1000;
          if (run.state === 'resident' || run.state === 'demoted') m.returnsKept++;
        }
        const spellJudged = spell?.judged ?? false;
        if (run.state === 'destroyed') {
          const tokens = Math.min(run.kvTokens, turn.inputTokens);
          if (run.evictedByPool) {
            if (spellJudged) {
              m.evicted++;
              m.evictedRefillTokens += tokens;
            }
          } else if (spellJudged) {
            m.premature++;
            m.prematureRefillTokens += tokens;
            if (run.session.synthetic?.quietCauses[event.n - 1] === 'tool call') m.prematureToolCalls++;
          }
        }
        const needed = (turn.inputTokens + turn.outputTokens) * bytesPerToken;
        if (run.state === 'resident') {
          addResident(-run.kvTokens * bytesPerToken);
          idleResident.delete(run);
        } else if (run.state === 'demoted') {
          if (spellJudged) {
            m.restores++;
            m.restoredBytes += run.kvTokens * bytesPerToken;
            m.offloadedByteSeconds += (run.kvTokens * bytesPerToken * (now - run.demotedAt)) / 1000;
          }
        }
        makeRoom(needed, judged, now);
        run.state = 'resident';
        run.evictedByPool = false;
        run.kvTokens = turn.inputTokens + turn.outputTokens;
        addResident(needed);
        run.inFlight++;
        run.nextTurn = event.n + 1;
        run.lastEventAt = now;
        run.reclaimer.onTurn(now, run.session.synthetic?.prompts[event.n]);
        schedule(run, run.reclaimer.firstCheckAt(now, tier));
        queue.push(now + (turn.outputTokens / tokensPerSecond) * 1000, Kind.complete, run, event.n);
        break;
      }
      case Kind.complete: {
        eventTimes.push(now);
        run.inFlight--;
        run.lastEventAt = now;
        run.reclaimer.onCompleted(now, run.session.synthetic?.replies[event.n]);
        if (run.inFlight === 0 && run.state === 'resident') {
          // The turn that opened this spell is the latest one that arrived.
          const opener = run.session.turns[run.nextTurn - 1]!;
          const final = run.nextTurn === run.session.turns.length;
          const judged = opener.arrivalMs >= judgedFrom && opener.arrivalMs < judgedUntil;
          run.spell = { startAt: now, bytes: run.kvTokens * bytesPerToken, judged, final, freedAt: undefined };
          if (judged) {
            m.spells++;
            if (final) m.finals++;
            else m.followUps++;
          }
          idleResident.set(run, true);
        }
        schedule(run, run.reclaimer.firstCheckAt(now, tier));
        break;
      }
      case Kind.side: {
        // Activity on a session already ended is ignored, as activity-score ignores it.
        if (run.state === 'destroyed' || run.state === 'none') break;
        const side = run.session.synthetic!.events[event.n]!;
        eventTimes.push(now);
        run.lastEventAt = now;
        if (side.kind === 'hold') run.reclaimer.onHold(now, now + (side.holdMs ?? 0));
        else run.reclaimer.onActivity(now, side.kind, side.text);
        schedule(run, run.reclaimer.firstCheckAt(now, tier));
        break;
      }
      case Kind.end: {
        if (run.state === 'destroyed' || run.state === 'none') break;
        if (run.spell?.judged === true) m.endedByPipeline++;
        destroy(run, now, false);
        break;
      }
      case Kind.check: {
        if (event.n !== run.checkVersion || run.state === 'destroyed' || run.state === 'none') break;
        const verdict = run.reclaimer.check(now, { resident: run.state === 'resident', tier });
        if (run.inFlight > 0) {
          // Never reclaimed mid-turn: the completion re-asks.
          if (verdict.destroy || verdict.demote) m.inFlightVerdicts++;
          break;
        }
        if (verdict.destroy) {
          destroy(run, now, false);
          break;
        }
        if (verdict.demote && run.state === 'resident') {
          freeGpu(run, now);
          run.state = 'demoted';
          run.demotedAt = now;
          if (run.spell?.judged === true) {
            m.demotes++;
            m.demotedBytes += run.kvTokens * bytesPerToken;
          }
        }
        schedule(run, verdict.nextCheckAt === undefined ? undefined : Math.max(verdict.nextCheckAt, now + 1));
        break;
      }
    }
  }
  // A policy that never reclaims leaves sessions resident: their waste is booked up to the last event.
  for (const run of idleResident.keys()) freeGpu(run, now);
  return m;
}
