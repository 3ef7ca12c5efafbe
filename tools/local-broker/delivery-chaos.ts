// Deliveries as a real Broker makes them, for tests and the chaos run: Knative's Brokers deliver at least once (a
// delivery may arrive twice, even concurrently, e.g. after a dispatcher restart or a lost acknowledgement), in no
// guaranteed order, and after varying latency. The local Broker is otherwise exact (once, in order, at once), which
// would let a handler that is not idempotent or that assumes order pass every local test. Every draw comes from one
// seeded generator (core/seeded-random.ts), so a seed replays the same choices for the same sequence of deliveries.
import { randomInt } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { seededRandom } from '../../functions/core/seeded-random.ts';

/** How far deliveries depart from exactly once, in order, at once. Every field defaults to off (0). */
export interface DeliveryChaos {
  /** Probability in [0, 1] that a delivery is sent twice (the second one launched at once, so possibly concurrent). */
  duplicate?: number;
  /** Deliveries to a subscriber are held in a window of this many ms, then sent in a shuffled order. */
  reorderMs?: number;
  /** Each delivery is held a further random 0..delayMs ms before its first attempt. */
  delayMs?: number;
  /** Seed of every draw. Default: a random one (the Broker logs it, so a run can be replayed). */
  seed?: number;
}

/** What the chaos did, counted since start (part of the Broker's stats). */
export interface ChaosCounters {
  /** Deliveries sent a second time. */
  duplicated: number;
  /** Deliveries released from a reorder window at another place than the one they arrived at. */
  reordered: number;
  /** Deliveries given an extra delay. */
  delayed: number;
}

/** The chaos of one Broker. */
export interface DeliveryChaosRunner {
  /** Whether any option is on. */
  readonly active: boolean;
  readonly seed: number;
  readonly counters: ChaosCounters;
  /** Draws whether the next delivery gets a duplicate (and counts it). */
  duplicates(): boolean;
  /** Resolves when a delivery to `route` may make its first attempt: after its reorder window and extra delay. */
  hold(route: string): Promise<void>;
}

/** Checks the options; throws a RangeError naming the one that is out of range. */
export function checkDeliveryChaos(opts: DeliveryChaos): void {
  const { duplicate = 0, reorderMs = 0, delayMs = 0, seed } = opts;
  if (!(duplicate >= 0 && duplicate <= 1)) throw new RangeError(`chaos.duplicate must be a probability from 0 to 1, not ${duplicate}`);
  for (const [name, ms] of [['reorderMs', reorderMs], ['delayMs', delayMs]] as const) {
    if (!Number.isSafeInteger(ms) || ms < 0) throw new RangeError(`chaos.${name} must be a whole number of ms, 0 or more, not ${ms}`);
  }
  if (seed !== undefined && !Number.isSafeInteger(seed)) throw new RangeError(`chaos.seed must be a whole number, not ${seed}`);
}

/**
 * Makes the chaos of one Broker. When `signal` aborts (the Broker stops), every held delivery is released at once,
 * so that it meets the stop as any other pending delivery does (persisted for the next start).
 */
export function createDeliveryChaos(opts: DeliveryChaos = {}, signal: AbortSignal): DeliveryChaosRunner {
  checkDeliveryChaos(opts);
  const duplicate = opts.duplicate ?? 0;
  const reorderMs = opts.reorderMs ?? 0;
  const delayMs = opts.delayMs ?? 0;
  const seed = opts.seed ?? randomInt(0, 2 ** 32);
  const random = seededRandom(seed);
  const counters: ChaosCounters = { duplicated: 0, reordered: 0, delayed: 0 };
  // One open window per route: the deliveries that arrived since its first one, each waiting for its release.
  const windows = new Map<string, { release: Array<() => void>; timer: NodeJS.Timeout }>();

  function flush(route: string): void {
    const window = windows.get(route);
    if (!window) return;
    windows.delete(route);
    clearTimeout(window.timer);
    const order = window.release.map((release, arrived) => ({ release, arrived }));
    // Fisher-Yates with the seeded generator.
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    order.forEach(({ release, arrived }, at) => {
      if (at !== arrived) counters.reordered++;
      release();
    });
  }
  signal.addEventListener('abort', () => {
    for (const route of [...windows.keys()]) flush(route);
  }, { once: true });

  function reorder(route: string): Promise<void> {
    if (signal.aborted) return Promise.resolve();
    let window = windows.get(route);
    if (!window) {
      window = { release: [], timer: setTimeout(() => flush(route), reorderMs) };
      windows.set(route, window);
    }
    const { release } = window;
    return new Promise((resolve) => release.push(resolve));
  }

  return {
    active: duplicate > 0 || reorderMs > 0 || delayMs > 0,
    seed,
    counters,
    duplicates() {
      if (duplicate === 0 || random() >= duplicate) return false;
      counters.duplicated++;
      return true;
    },
    async hold(route) {
      if (reorderMs > 0) await reorder(route);
      if (delayMs === 0) return;
      const ms = Math.floor(random() * (delayMs + 1));
      if (ms === 0) return;
      counters.delayed++;
      // Cut short by stop: the delivery then meets the stop (it is persisted).
      await sleep(ms, undefined, { signal }).catch(() => undefined);
    },
  };
}
