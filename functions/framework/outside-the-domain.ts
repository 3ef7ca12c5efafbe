// Today the work this runs is only the forwarding of a request to the function host's worker thread (worker-host.ts):
// that keeps the host's promises away from the domain's async hook altogether, which a drain loop in the same thread
// could not (below). What follows is why the loop was built, and what it still does for the main thread.
//
// functions-framework runs every request's function inside a `domain` of its own (function_wrappers.js,
// wrapHttpFunction: `domain.create()`, then `d.run(...)`), so that an exception thrown anywhere while serving it can
// be answered 500. Node's domain module (deprecated since Node 4) follows a domain through async hooks: while one is
// active, every promise, timer and socket request created is bound to it, with a destroy hook registered for each
// (node:domain's `init`, `registerDestroyHook`). A function does all its work in promises (Redis round trips, HTTP
// calls, spans), so that bookkeeping was 18-29 % of destroy-dispatch's and gpu-release's CPU in issue 16's profiles.
//
// The handler does not need it: the function host catches every error of its own work and answers it (a 4xx for the
// event, a 5xx for the Broker to redeliver), and the promise it returns still reaches the framework, which answers a
// rejection with its crash response as before. So a function's work is started from a drain loop begun when this
// module loads, outside any request's domain: a promise's continuation runs in the async context in which it was
// awaited, and the loop awaits outside the domain, so nothing the work creates is bound to one. The framework is used
// as documented (its `http` signature) and nothing of it is patched; only where our own work runs changes.
//
// The work runs in the loop's async context, not the request's: an AsyncLocalStorage store set before the handler
// (the framework's own execution-id store, an OpenTelemetry context set by HTTP instrumentation) is not seen by it.
// Nothing here reads one: the function host starts each event's span from the event's own traceparent.
//
// What is given up: an exception thrown synchronously from a callback of our work (not from a promise) is no longer
// turned into that request's 500: it is an uncaught exception, which stops the process (Node's default; nothing here
// catches one), as in any Node server; the Broker redelivers the event to another replica or the restarted one.

/** Runs work in the async context in which it was constructed, in the order it was given, without blocking. */
export class OutsideTheDomain {
  #jobs: (() => void)[] = [];
  #wake: (() => void) | undefined;

  /** Must be constructed outside any domain: at module load, as `outsideTheDomain` below is. */
  constructor() {
    // Each job catches its own errors, so the loop cannot end; were it to, every request would hang unanswered, so
    // it stops the process instead (an uncaught exception).
    this.#drain().catch((err: unknown) => {
      queueMicrotask(() => {
        throw err;
      });
    });
  }

  async #drain(): Promise<never> {
    for (;;) {
      // Awaited here, outside any domain: what follows runs in this loop's context, whoever woke it. Only when no
      // job is waiting: one given while the last ones ran (from inside one of them) found the wake-up spent.
      if (this.#jobs.length === 0) {
        await new Promise<void>((resolve) => {
          this.#wake = resolve;
        });
      }
      this.#wake = undefined;
      const jobs = this.#jobs;
      this.#jobs = [];
      for (const job of jobs) job();
    }
  }

  /** Runs `work` on the next turn of the drain loop; its result, or its error (thrown or rejected), comes back. */
  run<T>(work: () => T | Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#jobs.push(() => {
        try {
          Promise.resolve(work()).then(resolve, reject);
        } catch (err) {
          // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors -- passed on as thrown, as an async function would
          reject(err);
        }
      });
      this.#wake?.();
    });
  }
}

/** The process's one loop outside functions-framework's per-request domains (constructed at module load). */
export const outsideTheDomain = new OutsideTheDomain();
