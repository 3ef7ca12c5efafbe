// The demo of `npm start`: a simulated inference pipeline that opens sessions and lives them the way users do —
// typing with pauses, sending messages, waiting for the model, long tool calls under a hold — and ends them the
// ways sessions end: the user closes the tab (session.closed), the work is done (inference.completed with release),
// the user walks away with the tab open (activity stops, heartbeats go on: the system finds the session idle), or
// the client vanishes (heartbeats stop: the session expires). It also plays the inference runtime: it allocates each
// incarnation's GPU memory on the simulated runtime, as a real runtime does when it loads a session.
//
// With a real engine (`engine`: the reference llama.cpp engine of `npm start -- --engine llama`), a share of the
// sessions is placed there instead, never more at once than the engine has sequences: their turns are real
// completions that fill real KV cells, measured against the engine's own reading (demo-engine.ts).
//
// What each simulated user does is planned up front from the seed (demo-behaviour.ts, shared with the reclamation
// bench); this file plays the plans against the Broker in real time.
//
// What ends a session is decided by the system, not the script: a session meant to be closed may be judged idle
// first, and the report counts what the system did. The demo ends once each of its sessions was destroyed.
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { CloudEvent, HTTP } from 'cloudevents';
import { EventType, type ActivityKind } from '../../functions/core/contract/events.ts';
import type { BrokerEvent } from '../local-broker/wire.ts';
import { seededRandom } from '../../functions/core/seeded-random.ts';
import { planDemo, type DemoEnding, type DemoSessionPlan, type DemoTurnPlan } from './demo-behaviour.ts';
import { createDemoEngine, type DemoEngineFigures, type DemoEngineOptions } from './demo-engine.ts';

export type { DemoEnding } from './demo-behaviour.ts';

/** The demo's shape. */
export interface DemoOptions {
  /** The Broker ingress to send events to. */
  brokerUrl: string;
  /** The pipeline's bearer token for the Broker (its identity, which the EventPolicies admit). */
  token: string;
  /** The runtime sessions are placed on (placement.runtimeUrl) and whose memory the demo allocates. */
  runtimeUrl: string;
  /** Sessions to open. */
  sessions: number;
  /** About how long the sessions' behaviour lasts, ms; sessions open over the first third of it. */
  durationMs: number;
  /** Reads a session's state, to learn the incarnation the system gave it. */
  lookup: (sessionId: string) => Promise<{ state: string; incarnation: number } | null>;
  /** Heartbeat interval the sessions promise, ms. Default 1000. */
  heartbeatIntervalMs?: number;
  /** Heartbeats that may be missed. Default 3. */
  missedBeats?: number;
  /** The tenant sessions belong to (its idle policy applies; every event names it). Default 'demo'. */
  tenant?: string;
  /** Seed of the behaviour; the same seed gives the same plans. Default: random. */
  seed?: number;
  /** How long to wait, after the behaviour, for the last sessions to be destroyed, ms. Default 60000. */
  drainTimeoutMs?: number;
  /** Called with problems the demo works around (a refused send, a failed allocation). */
  onProblem?: (message: string) => void;
  /**
   * How many times a send is tried before the demo gives up on it (a 503 or no answer; 200 ms more wait each time).
   * Default 5. A pipeline with a durable outbox never gives up: the chaos run sets it high, as its Broker restarts.
   */
  sendAttempts?: number;
  /** Called once the Broker accepted an event: its type, the sessions it is about, and its CloudEvent time. */
  onAccepted?: (type: string, sessionIds: readonly string[], at: number, data: Record<string, unknown>) => void;
  /** A real engine to place a share of the sessions on (their turns then run real completions there). */
  engine?: DemoEngineOptions;
}

/** How the demo went. */
export interface DemoOutcome {
  planned: number;
  started: number;
  /** Sessions destroyed. */
  ended: number;
  /** Sessions not destroyed when the demo finished (stopped early, or the drain timed out). */
  open: number;
  /** Planned endings, for the record. */
  plannedEndings: Record<DemoEnding, number>;
  /** Whether stop() ended the demo before its sessions did. */
  stopped: boolean;
  /** Each session: how it was meant to end, and how the system ended it (undefined: not ended). */
  sessions: Array<{ sessionId: string; planned: DemoEnding; cause: string | undefined; livedMs: number | undefined }>;
  /** What the demo did and measured on the real engine, when it had one. */
  engine?: DemoEngineFigures;
}

/** A running demo. */
export interface DemoPipeline {
  /** The run's session id prefix (demo-<run>-). */
  readonly prefix: string;
  /** Resolves once every session was destroyed, the drain timed out, or stop() was called. */
  readonly done: Promise<DemoOutcome>;
  /** Feeds the demo the events the Broker accepted (it watches for its sessions' session.destroyed). */
  observe(event: BrokerEvent): void;
  progress(): { started: number; planned: number; ended: number };
  /** The demo's figures on the real engine so far; undefined without one. */
  engine(): DemoEngineFigures | undefined;
  /** Stops sending; resolves once every session's script has returned. */
  stop(): Promise<void>;
}

const SOURCE = '/demo/inference-pipeline';
const GiB = 1024 ** 3;
const MODELS = ['llama-3.1-8b-instruct', 'mistral-7b-instruct', 'qwen2.5-14b-instruct', 'llama-3.1-70b-instruct'] as const;
const MODEL_GIB: Record<(typeof MODELS)[number], number> = { 'llama-3.1-8b-instruct': 2, 'mistral-7b-instruct': 2, 'qwen2.5-14b-instruct': 4, 'llama-3.1-70b-instruct': 8 };
// The model the reference engine serves: a generated tiny llama (runtimes/llama-engine/tiny-model.ts).
const ENGINE_MODEL = 'tiny-llama-generated';


interface DemoSession {
  id: string;
  ending: DemoEnding;
  plan: DemoSessionPlan;
  incarnation?: number;
  /** Placed on the real engine: its turns run completions there and it allocates nothing on the simulator. */
  onEngine: boolean;
  heartbeating: boolean;
  ended: boolean;
  cause?: string;
  openedAt?: number;
  endedAt?: number;
  wake: () => void;
  endedSignal: Promise<void>;
}

/** Starts the demo: sessions open over the first third of the duration and live out their plans. */
export function startDemoPipeline(opts: DemoOptions): DemoPipeline {
  const random = seededRandom(opts.seed ?? Math.floor(Math.random() * 2 ** 32));
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
  const heartbeatIntervalMs = opts.heartbeatIntervalMs ?? 1000;
  const missedBeats = opts.missedBeats ?? 3;
  const tenant = opts.tenant ?? 'demo';
  const prefix = `demo-${randomUUID().slice(0, 6)}-`;
  const stopping = new AbortController();
  const engine = opts.engine === undefined ? undefined : createDemoEngine(opts.engine, (message) => opts.onProblem?.(message), stopping.signal);
  const sessions = new Map<string, DemoSession>();
  const plannedEndings: Record<DemoEnding, number> = { closes: 0, completes: 0, 'walks-away': 0, vanishes: 0 };
  let started = 0;
  let ended = 0;
  let seq = 0;
  let stopRequested = false;

  const sendAttempts = opts.sendAttempts ?? 5;
  async function post(headers: Record<string, string>, body: string, what: string): Promise<boolean> {
    for (let attempt = 1; ; attempt++) {
      try {
        const res = await fetch(opts.brokerUrl, { method: 'POST', headers: { ...headers, authorization: `Bearer ${opts.token}` }, body, signal: AbortSignal.timeout(10_000) });
        await res.body?.cancel();
        if (res.status === 202) return true;
        if (res.status !== 503 || attempt >= sendAttempts || stopping.signal.aborted) {
          opts.onProblem?.(`${what}: the Broker answered ${res.status}`);
          return false;
        }
      } catch (err) {
        if (attempt >= sendAttempts || stopping.signal.aborted) {
          opts.onProblem?.(`${what}: ${(err as Error).message}`);
          return false;
        }
      }
      await sleep(200 * Math.min(attempt, 5));
    }
  }

  function event(type: string, data: Record<string, unknown>): CloudEvent<Record<string, unknown>> {
    // Every event names the tenant: a session belongs to the tenant that opened it, and events about it must say so.
    return new CloudEvent({ type, source: SOURCE, id: randomUUID(), time: new Date().toISOString(), datacontenttype: 'application/json', tenant, data });
  }

  async function send(type: string, data: Record<string, unknown>): Promise<boolean> {
    const ce = event(type, data);
    const message = HTTP.binary(ce);
    const ok = await post(message.headers as Record<string, string>, message.body as string, type);
    if (ok) opts.onAccepted?.(type, [String(data.sessionId)], Date.parse(ce.time!), data);
    return ok;
  }

  // Every session's heartbeat goes out together, as one batched request: how a gateway would send them.
  async function beat(): Promise<void> {
    const alive = [...sessions.values()].filter((s) => s.heartbeating && !s.ended);
    if (alive.length === 0) return;
    const at = new Date();
    const batch = alive.map((s) => ({ ...event(EventType.SessionHeartbeat, { sessionId: s.id, seq: seq++ }).toJSON(), time: at.toISOString() }));
    if (await post({ 'content-type': 'application/cloudevents-batch+json' }, JSON.stringify(batch), 'heartbeats')) {
      opts.onAccepted?.(EventType.SessionHeartbeat, alive.map((s) => s.id), at.getTime(), {});
    }
  }
  const heartbeats = setInterval(() => void beat(), heartbeatIntervalMs);

  // Waits, but wakes early when the session ended or the demo stops; false when it should not go on.
  async function pause(s: DemoSession, ms: number): Promise<boolean> {
    if (s.ended || stopping.signal.aborted) return false;
    await Promise.race([sleep(ms, undefined, { ref: false }), s.endedSignal, new Promise((wake) => stopping.signal.addEventListener('abort', wake, { once: true }))]);
    return !s.ended && !stopping.signal.aborted;
  }

  async function activity(s: DemoSession, kind: ActivityKind, text?: string): Promise<boolean> {
    if (s.ended || stopping.signal.aborted) return false;
    return send(EventType.SessionActivity, { sessionId: s.id, kind, ...(text === undefined ? {} : { text }) });
  }

  async function open(s: DemoSession): Promise<boolean> {
    const simModel = pick(MODELS);
    let model: string = simModel;
    let gpuBytes = MODEL_GIB[simModel] * GiB;
    let node = `sim-gpu-${Math.floor(random() * 4)}`;
    let runtimeUrl = opts.runtimeUrl;
    // A share of the sessions goes to the real engine while it has a sequence free; it declares the KV it can fill.
    const engineBytes = engine !== undefined && random() < engine.share ? await engine.claim() : undefined;
    if (engine !== undefined && engineBytes !== undefined) {
      s.onEngine = true;
      [model, gpuBytes, node, runtimeUrl] = [ENGINE_MODEL, engineBytes, engine.node, engine.url];
    }
    const ok = await send(EventType.SessionOpened, {
      sessionId: s.id,
      placement: { node, runtimeUrl, gpuBytes },
      heartbeatIntervalMs,
      missedBeats,
      tenant,
      model,
    });
    if (!ok) {
      if (s.onEngine) engine?.unclaim();
      return false;
    }
    const until = Date.now() + 15_000;
    while (Date.now() < until && !stopping.signal.aborted) {
      const view = await opts.lookup(s.id);
      if (view?.state === 'active') {
        s.incarnation = view.incarnation;
        break;
      }
      await sleep(25);
    }
    if (s.incarnation === undefined) {
      opts.onProblem?.(`${s.id}: not opened within 15 s`);
      if (s.onEngine) engine?.unclaim();
      return false;
    }
    s.heartbeating = true;
    s.openedAt = Date.now();
    // On the engine the session's KV comes from its turns' completions; nothing is allocated on the simulator.
    if (s.onEngine) {
      engine?.opened(s.id, s.incarnation);
      return true;
    }
    // Playing the runtime: it loads the session and takes its GPU memory under the incarnation it was given.
    const allocate = () => fetch(`${opts.runtimeUrl}/v1/sessions/${encodeURIComponent(s.id)}/allocate`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ incarnation: s.incarnation, bytes: gpuBytes }),
      signal: AbortSignal.timeout(5000),
    }).catch((err: unknown) => err as Error);
    let res = await allocate();
    for (let attempt = 2; attempt <= sendAttempts && (res instanceof Error || res.status >= 500) && !stopping.signal.aborted; attempt++) {
      await sleep(200 * Math.min(attempt, 5));
      res = await allocate();
    }
    if (res instanceof Error || res.status !== 201) {
      opts.onProblem?.(`${s.id}: the runtime did not allocate (${res instanceof Error ? res.message : `HTTP ${res.status}`})`);
    }
    if (!(res instanceof Error)) await res.body?.cancel();
    return true;
  }

  // One exchange as planned: the user types (with edits and cursor moves), sends, and the model answers.
  async function turn(s: DemoSession, plan: DemoTurnPlan, n: number): Promise<boolean> {
    for (const step of plan.typing) {
      if (!(await activity(s, step.kind, step.text)) || !(await pause(s, step.pauseAfterMs))) return false;
    }
    if (!(await activity(s, 'message', plan.prompt))) return false;
    // On the engine the model really answers: a completion fills the session's KV (a refusal ends its completions only).
    if (s.onEngine && engine !== undefined) {
      const incarnation = s.incarnation!;
      await engine.turn({ id: s.id, incarnation, live: () => !s.ended && !stopping.signal.aborted, pause: (ms) => pause(s, ms) }, plan.prompt);
    }
    if (!(await pause(s, plan.answerMs))) return false;
    if (!(await activity(s, 'output', plan.reply))) return false;
    return send(EventType.InferenceCompleted, { sessionId: s.id, requestId: `${s.id}-r${n}`, release: false });
  }

  // A long tool call: the pipeline asks for a hold, then blocks (no heartbeats) until the tool returns.
  async function toolCall(s: DemoSession, plan: NonNullable<DemoTurnPlan['toolCall']>): Promise<boolean> {
    if (!(await send(EventType.SessionHold, { sessionId: s.id, durationMs: plan.holdMs, reason: `long tool call: ${plan.tool}` }))) return false;
    s.heartbeating = false;
    // Heartbeats resume half a window before the hold ends, so the first lands before it even when delivered late.
    const goOn = await pause(s, plan.resumeAfterMs);
    s.heartbeating = !s.ended;
    return goOn;
  }

  async function live(s: DemoSession): Promise<void> {
    if (!(await pause(s, s.plan.startDelayMs))) return;
    started++;
    if (!(await open(s))) {
      // Never opened: nothing to wait for.
      s.ended = true;
      s.wake();
      return;
    }
    let n = 0;
    for (const planned of s.plan.turns) {
      if (!(await turn(s, planned, ++n))) return;
      if (planned.toolCall !== undefined && !(await toolCall(s, planned.toolCall))) return;
      // Think time before the next message.
      if (!(await pause(s, planned.thinkMs))) return;
    }
    switch (s.ending) {
      case 'closes':
        await send(EventType.SessionClosed, { sessionId: s.id, reason: s.plan.closeReason });
        break;
      case 'completes':
        await send(EventType.InferenceCompleted, { sessionId: s.id, requestId: `${s.id}-final`, release: true });
        break;
      case 'walks-away':
        // The tab stays open: heartbeats go on, activity stops.
        break;
      case 'vanishes':
        s.heartbeating = false;
        break;
    }
  }

  const plans = planDemo(random, { sessions: opts.sessions, durationMs: opts.durationMs, heartbeatIntervalMs, missedBeats });
  const scripts: Promise<void>[] = [];
  plans.forEach((plan, i) => {
    let wake = () => {};
    const endedSignal = new Promise<void>((resolveEnded) => (wake = resolveEnded));
    const s: DemoSession = { id: `${prefix}${String(i + 1).padStart(3, '0')}`, ending: plan.ending, plan, onEngine: false, heartbeating: false, ended: false, wake, endedSignal };
    plannedEndings[s.ending]++;
    sessions.set(s.id, s);
    scripts.push(
      live(s).catch((err: unknown) => {
        opts.onProblem?.(`${s.id}: ${(err as Error).message}`);
      }),
    );
  });

  const allEnded = Promise.all([...sessions.values()].map((s) => s.endedSignal));
  const done = (async (): Promise<DemoOutcome> => {
    const stopped = new Promise<void>((wake) => stopping.signal.addEventListener('abort', () => wake(), { once: true }));
    await Promise.race([Promise.all(scripts), stopped]);
    const drain = sleep(opts.drainTimeoutMs ?? 60_000, undefined, { ref: false });
    await Promise.race([allEnded, stopped, drain]);
    clearInterval(heartbeats);
    if (!stopping.signal.aborted) stopping.abort();
    await Promise.all(scripts);
    const open = [...sessions.values()].filter((s) => !s.ended).length;
    const list = [...sessions.values()].map((s) => ({
      sessionId: s.id,
      planned: s.ending,
      cause: s.cause,
      livedMs: s.openedAt !== undefined && s.endedAt !== undefined ? s.endedAt - s.openedAt : undefined,
    }));
    return { planned: opts.sessions, started, ended, open, plannedEndings, stopped: stopRequested, sessions: list, ...(engine === undefined ? {} : { engine: engine.figures() }) };
  })();

  return {
    prefix,
    done,
    observe(ev) {
      engine?.observe(ev);
      if (ev.attributes.type !== EventType.SessionDestroyed || ev.data === undefined) return;
      let data: { sessionId?: unknown; incarnation?: unknown; cause?: unknown };
      try {
        data = JSON.parse(ev.data.toString('utf8')) as typeof data;
      } catch {
        return;
      }
      const s = typeof data.sessionId === 'string' ? sessions.get(data.sessionId) : undefined;
      if (!s || s.ended || (s.incarnation !== undefined && data.incarnation !== s.incarnation)) return;
      s.ended = true;
      s.heartbeating = false;
      s.cause = typeof data.cause === 'string' ? data.cause : undefined;
      s.endedAt = Date.now();
      ended++;
      s.wake();
    },
    progress: () => ({ started, planned: opts.sessions, ended }),
    engine: () => engine?.figures(),
    async stop() {
      stopRequested = true;
      if (!stopping.signal.aborted) stopping.abort();
      await done;
    },
  };
}
