// The reconciler: makes GPU memory leak-proof against lost state. Every other path frees memory because Redis says a
// session ended; if Redis lost a record (a failover that dropped writes, a flushed instance) or a session.opened never
// arrived, the runtime keeps the memory and nothing would ever ask for it back. So, every RECONCILE_INTERVAL_MS, one
// deadline engine replica (whoever takes the lease) asks each registered runtime that can list its sessions (the
// optional GET /v1/sessions) what it holds, and compares that with Redis:
//   - an incarnation a session owns (its record holds it ACTIVE or DESTROYING, or a migration's release of it is
//     pending) is never touched: the destroy pipeline frees it;
//   - one nobody owns is remembered (first seen, in Redis, expiring when the runtime stops listing it) and, once it
//     stayed unowned for RECONCILE_GRACE_MS, released through the runtime client (the same breaker and retry rules
//     as gpu-release), booked once under `orphans:<runtime>`/`orphanBytes:<runtime>` in the ledger, logged, and
//     announced with gpu.orphan.released. Ownership is checked again, atomically with the claim, right before the
//     release, so a session whose opened arrived during the grace keeps its memory.
// A runtime that answers 404, 405 or 501 to the listing has none: it is skipped (logged once).
//
// Which runtimes: every registered one named by its URL, and those a wildcard entry admits that activity-score's load
// monitor saw sessions on recently (a wildcard family cannot be listed from its pattern).
import type { CoreDeps } from '../core/function-host.ts';
import { EventType } from '../core/contract/events.ts';
import type { Logger } from '../core/log.ts';
import type { OrphanOutcome, OrphanStore, OrphanTimes } from '../core/orphan-store.ts';
import { loadKeys } from '../core/redis/keys.ts';
import { publicDescription, RuntimeReleaseError, type HeldSession, type RuntimeClient } from '../core/runtime-client.ts';
import type { RuntimeRegistry } from '../core/runtime-registry.ts';

/** Most pages read from one runtime per pass (256 sessions each): bounds one pass, whatever a runtime claims. */
const MAX_PAGES_PER_RUNTIME = 1000;
/** Most recently used wildcard-family runtimes reconciled per pass, as the load monitor polls. */
const MAX_SEEN_RUNTIMES = 256;
/** Most runtimes remembered as having no listing (so each is logged once, not once per pass). */
const MAX_UNSUPPORTED_REMEMBERED = 1024;

/** What the reconciler uses from the core. */
export interface ReconcilerDeps {
  readonly logger: Logger;
  readonly runtimes: RuntimeRegistry;
  now(): number;
  emit: CoreDeps['emit'];
  /** sessionreaper_orphan_releases_total is recorded through it. */
  metrics: Pick<CoreDeps['metrics'], 'orphanReleases'>;
}

/** How the reconciler is built. */
export interface ReconcilerOptions {
  deps: ReconcilerDeps;
  /** Connects Redis and answers the reconciler's store; retried at the next interval while Redis is unreachable. */
  ready: () => Promise<OrphanStore>;
  /** Lists runtimes' sessions and releases orphans (one breaker per runtime, bounded retries). */
  runtime: Pick<RuntimeClient, 'listSessions' | 'release'>;
  /** RECONCILE_INTERVAL_MS. */
  intervalMs: number;
  /** RECONCILE_GRACE_MS. */
  graceMs: number;
  /** Who holds the lease (for operators reading Redis); default a random id. */
  holder?: string;
}

/** What one pass did (runOnce's answer, also logged when it released anything). */
export interface ReconcileReport {
  /** Runtimes listed to the end (or to the page limit). */
  runtimes: number;
  /** Runtimes without a listing (404, 405, 501). */
  unsupported: number;
  /** Runtimes whose listing failed (unreachable, breaker open); tried again next pass. */
  unreachable: number;
  /** Allocations listed. */
  listed: number;
  /** Allocations no session owned, still within the grace period (or claimed by a pass in flight). */
  waiting: number;
  /** Orphans released and booked by this pass. */
  released: number;
  freedBytes: number;
  /** Releases that failed; the claim is lifted and the next pass tries again. */
  failures: number;
}

const emptyReport = (): ReconcileReport => ({ runtimes: 0, unsupported: 0, unreachable: 0, listed: 0, waiting: 0, released: 0, freedBytes: 0, failures: 0 });

/** Finds and releases GPU memory that runtimes hold for no session (see the top of this file). */
export class Reconciler {
  readonly #opts: ReconcilerOptions;
  readonly #log: Logger;
  readonly #times: OrphanTimes;
  readonly #holder: string;
  /** Runtimes already logged as having no listing: said once per process, not once per pass. */
  readonly #unsupportedLogged = new Set<string>();
  #timer: NodeJS.Timeout | undefined;
  #pass: Promise<unknown> = Promise.resolve();
  #started = false;

  constructor(opts: ReconcilerOptions) {
    if (!(opts.intervalMs > 0) || !(opts.graceMs > 0)) throw new RangeError('intervalMs and graceMs must be > 0');
    this.#opts = opts;
    this.#log = opts.deps.logger.child({ component: 'reconciler' });
    this.#holder = opts.holder ?? crypto.randomUUID();
    // A sighting outlives a few passes that miss it (a runtime briefly unreachable), then goes: bounded by what the
    // runtimes list. A claim holds one interval: a releaser that died is replaced at the next pass but one.
    this.#times = { graceMs: opts.graceMs, ttlMs: opts.graceMs + 3 * opts.intervalMs, claimMs: opts.intervalMs };
  }

  /** Starts reconciling every intervalMs (the first pass one interval after start: let the session core settle). */
  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#log.info({ intervalMs: this.#opts.intervalMs, graceMs: this.#opts.graceMs }, 'reconciler started');
    this.#schedule();
  }

  /** Stops the timer; resolves once a pass in progress has finished. */
  async stop(): Promise<void> {
    if (!this.#started) return;
    this.#started = false;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#pass;
  }

  /** One pass at `now`, without the lease: for tests and tools. Throws if Redis is unreachable. */
  async runOnce(now: number = this.#opts.deps.now()): Promise<ReconcileReport> {
    const pass = this.#pass.then(() => this.#reconcile(now));
    this.#pass = pass.catch(() => undefined);
    return pass;
  }

  #schedule(): void {
    if (!this.#started) return;
    this.#timer = setTimeout(() => {
      // Chained after any runOnce in flight: passes never overlap in one process.
      this.#pass = this.#pass.then(() => this.#tick()).finally(() => this.#schedule());
    }, this.#opts.intervalMs);
  }

  /** A scheduled pass: only by the replica that takes this interval's lease. Failures are logged, never thrown. */
  async #tick(): Promise<void> {
    try {
      const store = await this.#opts.ready();
      // A little shorter than the interval, so the holder's next tick finds it free however its timer drifts.
      const leaseMs = this.#opts.intervalMs - Math.min(100, Math.floor(this.#opts.intervalMs / 10));
      if (!(await store.takeLease(this.#holder, leaseMs))) return;
      await this.#reconcile(this.#opts.deps.now());
    } catch (err) {
      this.#log.warn({ err }, 'reconcile pass failed; trying again next interval');
    }
  }

  async #reconcile(now: number): Promise<ReconcileReport> {
    const store = await this.#opts.ready();
    const report = emptyReport();
    for (const endpoint of await this.#runtimesToList(store)) {
      const name = this.#opts.deps.runtimes.lookup(endpoint)?.name;
      if (name === undefined) continue;
      await this.#reconcileRuntime(store, endpoint, name, now, report);
    }
    if (report.released > 0 || report.failures > 0) this.#log.info({ ...report }, 'reconcile pass');
    else this.#log.debug({ ...report }, 'reconcile pass');
    return report;
  }

  async #runtimesToList(store: OrphanStore): Promise<string[]> {
    const registry = this.#opts.deps.runtimes;
    const seen = await store.redis.zrevrange(loadKeys(store.keys.prefix).runtimes, 0, MAX_SEEN_RUNTIMES - 1);
    return [...new Set([...registry.fixedEndpoints(), ...seen.filter((url) => registry.lookup(url) !== undefined)])];
  }

  /** Pages through one runtime's listing, looking closer at what no session owns. */
  async #reconcileRuntime(store: OrphanStore, endpoint: string, name: string, now: number, report: ReconcileReport): Promise<void> {
    let after: string | undefined;
    for (let page = 0; page < MAX_PAGES_PER_RUNTIME; page++) {
      let listed;
      try {
        listed = await this.#opts.runtime.listSessions(endpoint, after === undefined ? {} : { after });
      } catch (err) {
        if (!(err instanceof RuntimeReleaseError)) throw err;
        report.unreachable += 1;
        this.#log.warn({ runtime: name, error: publicDescription(err) }, 'could not list the sessions of a runtime; reconciling it next pass');
        return;
      }
      if ('unsupported' in listed) {
        report.unsupported += 1;
        if (!this.#unsupportedLogged.has(endpoint)) {
          // Bounded like everything kept per runtime: members of a wildcard family come and go.
          if (this.#unsupportedLogged.size >= MAX_UNSUPPORTED_REMEMBERED) this.#unsupportedLogged.clear();
          this.#unsupportedLogged.add(endpoint);
          this.#log.info({ runtime: name, status: listed.status }, 'runtime does not list its sessions; it is not reconciled');
        }
        return;
      }
      this.#unsupportedLogged.delete(endpoint);
      report.listed += listed.sessions.length;
      const owned = await store.owned(listed.sessions);
      const unowned = listed.sessions.filter((_, i) => !owned[i]);
      await Promise.all(unowned.map((held) => this.#unowned(store, endpoint, name, held, now, report)));
      if (listed.next === undefined) break;
      after = listed.next;
    }
    report.runtimes += 1;
  }

  /** One allocation no session owned at the listing: noted, and released once unowned past the grace period. */
  async #unowned(store: OrphanStore, endpoint: string, name: string, held: HeldSession, now: number, report: ReconcileReport): Promise<void> {
    const sighting = await store.sight(name, held, now, this.#times);
    if (sighting.code === 'OWNED') return;
    if (sighting.code !== 'DUE') {
      report.waiting += 1;
      return;
    }
    const { sessionId, incarnation } = held;
    let outcome: OrphanOutcome;
    let freedBytes = 0;
    try {
      const released = await this.#opts.runtime.release(endpoint, sessionId, incarnation);
      outcome = released.outcome === 'released' ? 'released' : 'gone';
      freedBytes = released.freedBytes;
    } catch (err) {
      if (!(err instanceof RuntimeReleaseError)) throw err;
      outcome = 'failed';
      report.failures += 1;
      this.#log.warn({ sessionId, incarnation, runtime: name, error: publicDescription(err) }, 'could not release GPU memory no session owns; trying again next pass');
    }
    this.#opts.deps.metrics.orphanReleases.add(1, name, outcome);
    const settled = await store.settle(name, held, sighting.claimedAt, outcome, freedBytes);
    if (settled.code !== 'BOOKED') return;
    report.released += 1;
    report.freedBytes += freedBytes;
    const releasedAt = Math.max(now, this.#opts.deps.now());
    this.#log.warn(
      { sessionId, incarnation, runtime: name, freedBytes, orphanedForMs: releasedAt - settled.firstSeen },
      'released GPU memory that no session owned (orphan)',
    );
    try {
      await this.#opts.deps.emit(
        EventType.GpuOrphanReleased,
        { sessionId, incarnation, runtime: name, freedBytes, firstSeenAt: new Date(settled.firstSeen).toISOString(), releasedAt: new Date(releasedAt).toISOString() },
        `${sessionId}/${incarnation}/orphan/${name}`,
      );
    } catch (err) {
      // The release is booked and logged; the event is for observers, so it is not worth holding the pass for.
      this.#log.warn({ err, sessionId, incarnation, runtime: name }, 'could not emit gpu.orphan.released');
    }
  }
}
