// One clock for every replica: Redis's. Deadlines, holds, leases and watchdog times are compared inside Lua scripts
// with a `now` the caller sends; if each replica sent its own wall clock, one running seconds ahead would expire
// sessions early and another behind would find them late. So a process's clock is its own monotonic clock anchored to
// Redis `TIME`: re-anchored every `resyncMs`, corrected by half the round trip, and never moving backwards. Scripts
// stay deterministic (tests drive them with a clock of their own), and replicas agree to within a round trip.
// Redis Cluster: the anchor is whichever node answers TIME; the nodes' own clocks should be NTP-synced.

/** What the clock reads: Redis's TIME (seconds, microseconds), as ioredis returns it. */
export interface TimeSource {
  time(): Promise<readonly (number | string)[]>;
}

/** A process clock anchored to Redis TIME. */
export class RedisClock {
  readonly #redis: TimeSource;
  readonly #resyncMs: number;
  /** Redis time minus the local clock, ms (0 until the first sync: the local clock). */
  #offset = 0;
  #last = 0;
  #timer: NodeJS.Timeout | undefined;
  #syncing: Promise<void> | undefined;

  constructor(redis: TimeSource, opts: { resyncMs?: number } = {}) {
    this.#redis = redis;
    this.#resyncMs = opts.resyncMs ?? 30_000;
  }

  /** Milliseconds since the epoch on Redis's clock, as best known; never less than a value returned before. */
  now = (): number => {
    const t = Math.round(performance.timeOrigin + performance.now() + this.#offset);
    this.#last = Math.max(this.#last, t);
    return this.#last;
  };

  /** How far the local clock is behind Redis (ms), as last measured. */
  get offsetMs(): number {
    return this.#offset;
  }

  /** Anchors the clock to Redis TIME now (one round trip). A failure keeps the last anchor. */
  sync(): Promise<void> {
    this.#syncing ??= (async () => {
      const sent = performance.now();
      const [seconds, micros] = await this.#redis.time();
      const received = performance.now();
      const redisMs = Number(seconds) * 1000 + Number(micros) / 1000;
      // Redis read its clock about half-way through the round trip, give or take half of it: an offset within that
      // (and the ms the clock is read in) cannot be told from none, so the local clock is kept, as it is when Redis
      // runs on the same machine.
      const measured = redisMs + (received - sent) / 2 - (performance.timeOrigin + received);
      this.#offset = Math.abs(measured) <= (received - sent) / 2 + 1 ? 0 : measured;
    })().finally(() => {
      this.#syncing = undefined;
    });
    return this.#syncing;
  }

  /** Re-anchors every resyncMs until stop(); failures are passed to `onError` and the last anchor is kept. */
  start(onError: (err: unknown) => void): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => void this.sync().catch(onError), this.#resyncMs);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }
}
