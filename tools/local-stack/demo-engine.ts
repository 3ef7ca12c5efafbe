// The demo's sessions on the reference llama.cpp engine (runtimes/llama-engine, `npm start -- --engine llama`): which
// sessions go there, their turns as real completions that fill real KV cells, and how many bytes those turns added to
// the engine's own reading (GET /v1/memory usedBytes, llama.cpp's state size). The report sets that figure beside
// the bytes session-reaper booked as freed when the sessions ended.
//
// The engine holds at most `sequences` sessions at once and refuses another (507), so the demo places a session
// there only while it has fewer than that many open on it; a refusal all the same is reported and worked around (the
// session lives on without completions). A turn's completion is measured alone: the demo runs one completion at a
// time, reading the engine before and after it, and counts the rise only when nothing else can have changed the
// engine's KV in between — no release of an engine session in flight (seen on the Broker: gpu.release.requested
// before the engine is called, gpu.released or gpu.release.failed after it answered) and the engine's listing of
// every other session the same before and after. A completion it cannot measure so is counted apart, and its
// session is left out of the comparison rather than guessed at.
//
// A completion answered 409 `session_demoted` means session-reaper moved the session's KV off the engine; it restores
// it after the user's activity the demo sent just before the turn, so the demo waits briefly and tries again (a few
// times), counting each wait.
import { setTimeout as sleep } from 'node:timers/promises';
import { EventType } from '../../functions/core/contract/events.ts';
import type { BrokerEvent } from '../local-broker/wire.ts';

/** Where and how the demo uses the engine. */
export interface DemoEngineOptions {
  /** The engine's base URL, registered as a runtime: the sessions placed there name it as placement.runtimeUrl. */
  url: string;
  /** Sessions the engine holds at once (its ENGINE_SEQUENCES): the demo never has more than this many open there. */
  sequences: number;
  /** The share of sessions offered to the engine while it has a free sequence (the rest go to the simulator). Default 0.5. */
  share?: number;
  /** Tokens each turn's completion generates. Default 4. */
  maxTokens?: number;
  /** The node the engine's sessions are placed on, a ledger node of their own. Default 'llama-engine'. */
  node?: string;
}

/** What the demo did and measured on the engine for one session incarnation. */
export interface DemoEngineSession {
  sessionId: string;
  incarnation: number;
  /** Completions the engine answered with 200. */
  completions: number;
  /** Of those, the completions whose rise of the engine's reading was measured alone. */
  measuredCompletions: number;
  /** The sum of those rises, bytes: KV the session's turns added to the engine's own reading. */
  filledBytes: number;
  /** Completions whose rise could not be measured alone (another change to the engine's KV, a lost answer). */
  unmeasured: number;
  /** Tokens the session held after its last completion (the engine's contextTokens). */
  contextTokens: number;
  /** Waits for a demoted session to be restored (409 session_demoted answers). */
  demotedWaits: number;
  /** Why the engine refused the session, if it did (it then held nothing for it). */
  refused?: string;
}

/** The demo's figures on the engine. */
export interface DemoEngineFigures {
  url: string;
  node: string;
  sequences: number;
  /** Sessions the demo placed on the engine. */
  placed: number;
  /** Sessions placed there now and not destroyed yet. */
  open: number;
  /** Sessions the engine refused (no free sequence): they lived on without completions. */
  refused: number;
  completions: number;
  measuredCompletions: number;
  filledBytes: number;
  demotedWaits: number;
  sessions: DemoEngineSession[];
}

/** A demo session as the engine turns see it. */
export interface EngineTurnSession {
  readonly id: string;
  readonly incarnation: number;
  /** False once the session ended or the demo stops. */
  live(): boolean;
  /** Waits up to `ms`, waking early when the session ended or the demo stops; false when it should not go on. */
  pause(ms: number): Promise<boolean>;
}

/** The demo's use of the engine. */
export interface DemoEngine {
  readonly url: string;
  readonly node: string;
  readonly share: number;
  /**
   * Takes one of the engine's sequences for a new session when one is free: answers the bytes its placement declares
   * (the KV a session can fill: contextTokens × kvBytesPerToken), or undefined when the engine is full or unknown.
   */
  claim(): Promise<number | undefined>;
  /** Gives back the sequence claimed for a session that never opened. */
  unclaim(): void;
  /** Records that a session opened on the engine with this incarnation. */
  opened(sessionId: string, incarnation: number): void;
  /** One turn: a real completion of `prompt`, measured. False when the session should stop its turns on the engine. */
  turn(s: EngineTurnSession, prompt: string): Promise<boolean>;
  /** Feeds the engine turns the events the Broker accepted (release traffic, destroyed sessions). */
  observe(event: BrokerEvent): void;
  figures(): DemoEngineFigures;
}

interface Held {
  figures: DemoEngineSession;
  /** session-reaper asked for its release: no more completions (one would give a released session new KV). */
  releasing: boolean;
  /** Its turns stopped (refused, context full, superseded). */
  done: boolean;
  destroyed: boolean;
}

// How long a turn waits for a demoted session to be restored, and for in-flight releases to finish before measuring.
const DEMOTED_RETRIES = 10;
const DEMOTED_WAIT_MS = 200;
const QUIET_WAIT_MS = 3000;
const CALL_TIMEOUT_MS = 30_000;

function dataOf(event: BrokerEvent): Record<string, unknown> | undefined {
  if (event.data === undefined) return undefined;
  try {
    const parsed = JSON.parse(event.data.toString('utf8')) as unknown;
    return typeof parsed === 'object' && parsed !== null ? (parsed as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** Creates the demo's use of the engine; `onProblem` hears what it works around. */
export function createDemoEngine(opts: DemoEngineOptions, onProblem: (message: string) => void, stopping: AbortSignal): DemoEngine {
  const url = opts.url.replace(/\/+$/, '');
  const node = opts.node ?? 'llama-engine';
  const maxTokens = opts.maxTokens ?? 4;
  const sessions = new Map<string, Held>();
  let claimed = 0;
  let placed = 0;
  // Releases of engine sessions between gpu.release.requested and its answer (by release token), and a count of
  // every one requested, so a measurement can tell whether one started while it ran.
  const releasesInFlight = new Map<string, string>();
  let releasesRequested = 0;
  // One completion at a time, so each is measured alone.
  let lock: Promise<unknown> = Promise.resolve();
  let info: Promise<{ kvBytesPerToken: number; contextTokens: number } | undefined> | undefined;

  async function json(path: string, init?: RequestInit): Promise<{ status: number; body: Record<string, unknown> }> {
    const res = await fetch(`${url}${path}`, { ...init, signal: AbortSignal.timeout(CALL_TIMEOUT_MS) });
    const text = await res.text();
    let body: Record<string, unknown> = {};
    try {
      body = JSON.parse(text) as Record<string, unknown>;
    } catch {
      // a body that is not JSON: the status says enough
    }
    return { status: res.status, body };
  }

  function engineInfo(): Promise<{ kvBytesPerToken: number; contextTokens: number } | undefined> {
    info ??= json('/v1/engine').then(
      ({ status, body }) => {
        const [kv, cells] = [body.kvBytesPerToken, body.contextTokens];
        if (status === 200 && typeof kv === 'number' && typeof cells === 'number') return { kvBytesPerToken: kv, contextTokens: cells };
        onProblem(`the llama engine did not describe itself (HTTP ${status}); no session goes there`);
        return undefined;
      },
      (err: unknown) => {
        onProblem(`the llama engine did not answer (${(err as Error).message}); no session goes there`);
        return undefined;
      },
    );
    return info;
  }

  // The engine's own reading, and its listing of every session (id → what it holds), or undefined when unreadable.
  async function reading(): Promise<number | undefined> {
    try {
      const { status, body } = await json('/v1/memory');
      return status === 200 && typeof body.usedBytes === 'number' ? body.usedBytes : undefined;
    } catch {
      return undefined;
    }
  }
  async function listing(): Promise<Map<string, string> | undefined> {
    try {
      const { status, body } = await json('/v1/sessions?limit=256');
      if (status !== 200 || !Array.isArray(body.sessions) || body.next !== undefined) return undefined;
      const entries = body.sessions as Array<Record<string, unknown>>;
      return new Map(entries.map((e) => [String(e.sessionId), `${String(e.incarnation)}/${String(e.state)}/${String(e.tokens)}/${String(e.offloadedBytes)}/${String(e.operations)}`]));
    } catch {
      return undefined;
    }
  }
  // Whether two listings agree on every session but one.
  function sameBut(a: Map<string, string>, b: Map<string, string>, except: string): boolean {
    const others = (m: Map<string, string>) => [...m].filter(([id]) => id !== except);
    const [x, y] = [others(a), others(b)];
    return x.length === y.length && x.every(([id, v]) => b.get(id) === v);
  }

  // Waits (bounded) until no release of an engine session is in flight.
  async function quiet(s: EngineTurnSession): Promise<void> {
    const until = Date.now() + QUIET_WAIT_MS;
    while (releasesInFlight.size > 0 && Date.now() < until && s.live()) await sleep(20);
  }

  function serially<T>(op: () => Promise<T>): Promise<T> {
    const run = lock.then(op);
    lock = run.catch(() => undefined);
    return run;
  }

  type Outcome = 'done' | 'stop' | 'demoted';

  // One completion, measured when it can be.
  function completeOnce(s: EngineTurnSession, h: Held, prompt: string): Promise<Outcome> {
    return serially(async (): Promise<Outcome> => {
      if (!s.live() || h.releasing || stopping.aborted) return 'stop';
      await quiet(s);
      const requestedBefore = releasesRequested;
      const inFlightBefore = releasesInFlight.size;
      const before = await listing();
      const usedBefore = await reading();
      // Checked again right before the call: a completion after session-reaper released the session would give a
      // destroyed session fresh KV that nothing releases.
      if (!s.live() || h.releasing) return 'stop';
      let answer: { status: number; body: Record<string, unknown> };
      try {
        answer = await json(`/v1/sessions/${encodeURIComponent(s.id)}/complete`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ incarnation: s.incarnation, prompt, maxTokens }),
        });
      } catch (err) {
        // The engine may still run it: its rise is unknown.
        h.figures.unmeasured++;
        onProblem(`${s.id}: the llama engine did not answer a completion (${(err as Error).message})`);
        return 'done';
      }
      const f = h.figures;
      if (answer.status === 200) {
        const usedAfter = await reading();
        const after = await listing();
        f.completions++;
        if (typeof answer.body.contextTokens === 'number') f.contextTokens = answer.body.contextTokens;
        // Alone: no release in flight, no other session changed, and nothing but this turn touched this one between the
        // readings (the engine counts each session's operations: a demote and restore of it in between would not show
        // in its cells, but in its count).
        const mine = (m: Map<string, string> | undefined) => m?.get(s.id)?.split('/');
        const [was, is] = [mine(before), mine(after)];
        const residentThroughout = (was === undefined || was[1] === 'resident') && is?.[1] === 'resident' && Number(is[4]) === (was === undefined ? 0 : Number(was[4])) + 1;
        const alone = inFlightBefore === 0 && releasesRequested === requestedBefore && before !== undefined && after !== undefined && sameBut(before, after, s.id) && residentThroughout;
        if (alone && usedBefore !== undefined && usedAfter !== undefined) {
          f.measuredCompletions++;
          f.filledBytes += usedAfter - usedBefore;
        } else h.figures.unmeasured++;
        return 'done';
      }
      const code = typeof answer.body.code === 'string' ? answer.body.code : `HTTP ${answer.status}`;
      const title = typeof answer.body.title === 'string' ? answer.body.title : '';
      if (answer.status === 409 && code === 'session_demoted') return 'demoted';
      if (answer.status === 507 && f.completions === 0) {
        f.refused = code;
        onProblem(`${s.id}: the llama engine refused the session (${code}: ${title}); it goes on without completions`);
        return 'stop';
      }
      onProblem(`${s.id}: the llama engine refused a completion (${code}: ${title}); no more turns on it`);
      return 'stop';
    });
  }

  return {
    url,
    node,
    share: opts.share ?? 0.5,

    async claim() {
      if (claimed >= opts.sequences) return undefined;
      claimed++;
      const known = await engineInfo();
      if (known === undefined) {
        claimed--;
        return undefined;
      }
      return known.contextTokens * known.kvBytesPerToken;
    },

    unclaim() {
      claimed = Math.max(0, claimed - 1);
    },

    opened(sessionId, incarnation) {
      placed++;
      sessions.set(sessionId, {
        figures: { sessionId, incarnation, completions: 0, measuredCompletions: 0, filledBytes: 0, unmeasured: 0, contextTokens: 0, demotedWaits: 0 },
        releasing: false,
        done: false,
        destroyed: false,
      });
    },

    async turn(s, prompt) {
      const h = sessions.get(s.id);
      if (h === undefined || h.done) return false;
      const known = await engineInfo();
      // No context shift on the engine: a turn that would not fit in the session's cells is not sent.
      if (known === undefined || h.figures.contextTokens + Buffer.byteLength(prompt) + 2 + maxTokens > known.contextTokens) {
        h.done = true;
        return false;
      }
      for (let attempt = 0; ; attempt++) {
        const outcome = await completeOnce(s, h, prompt);
        if (outcome === 'done') return true;
        if (outcome === 'stop') {
          h.done = true;
          return false;
        }
        if (attempt >= DEMOTED_RETRIES) {
          onProblem(`${s.id}: still demoted after ${attempt} waits; this turn goes without a completion`);
          return true;
        }
        h.figures.demotedWaits++;
        if (!(await s.pause(DEMOTED_WAIT_MS))) return false;
      }
    },

    observe(event) {
      const type = event.attributes.type;
      if (type !== EventType.GpuReleaseRequested && type !== EventType.GpuReleased && type !== EventType.GpuReleaseFailed && type !== EventType.SessionDestroyed) return;
      const data = dataOf(event);
      const sessionId = typeof data?.sessionId === 'string' ? data.sessionId : undefined;
      const token = typeof data?.token === 'string' ? data.token : undefined;
      const h = sessionId === undefined ? undefined : sessions.get(sessionId);
      const ours = h !== undefined && data?.incarnation === h.figures.incarnation;
      if (type === EventType.GpuReleaseRequested) {
        const placement = data?.placement as Record<string, unknown> | undefined;
        if (ours) h.releasing = true;
        if (typeof placement?.runtimeUrl === 'string' && placement.runtimeUrl.replace(/\/+$/, '') === url && token !== undefined && sessionId !== undefined) {
          releasesRequested++;
          releasesInFlight.set(token, sessionId);
        }
      } else if (type === EventType.SessionDestroyed) {
        if (sessionId !== undefined) for (const [t, id] of releasesInFlight) if (id === sessionId) releasesInFlight.delete(t);
        if (ours && !h.destroyed) {
          h.destroyed = true;
          h.releasing = true;
          claimed = Math.max(0, claimed - 1);
        }
      } else if (token !== undefined) releasesInFlight.delete(token);
    },

    figures() {
      const all = [...sessions.values()];
      const sum = (f: (h: Held) => number) => all.reduce((n, h) => n + f(h), 0);
      return {
        url,
        node,
        sequences: opts.sequences,
        placed,
        open: all.filter((h) => !h.destroyed).length,
        refused: all.filter((h) => h.figures.refused !== undefined).length,
        completions: sum((h) => h.figures.completions),
        measuredCompletions: sum((h) => h.figures.measuredCompletions),
        filledBytes: sum((h) => h.figures.filledBytes),
        demotedWaits: sum((h) => h.figures.demotedWaits),
        sessions: all.map((h) => ({ ...h.figures })),
      };
    },
  };
}
