// The deadline engine's process: the long-running second entry point of heartbeat-timeout (same image, started as
// `node functions/heartbeat-timeout/engine.ts`; see knative/base/deadline-engine.yaml). It serves GET /healthz on PORT
// for the readiness probe and GET /livez for the liveness probe, and stops cleanly on SIGTERM/SIGINT. Beside the deadline engine it runs the reconciler
// (reconciler.ts), which releases GPU memory runtimes hold for no session, unless RECONCILE_INTERVAL_MS is 0.
//
// Its core is named 'deadline-engine', not 'heartbeat-timeout': that is the Deployment's name and its
// OTEL_SERVICE_NAME in the manifests, it separates the engine's logs and spans from the request-driven function's,
// and it makes the source of what it emits `/session-reaper/deadline-engine` — the same for every replica, so the
// deterministic event ids still deduplicate across replicas.
import { createCore } from '../core/function-host.ts';
import { RoundWatch, runLongRunning } from '../core/process-lifecycle.ts';
import { DeadlineEngine } from './deadline-engine.ts';
import { createEngineReconciler } from './engine-reconciler.ts';
import { observeSharedState } from './engine-gauges.ts';

// Live while a poll round completed within the last minute. A round ends within about a second when Redis is down
// (every call is bounded by CORE_TIMEOUT_MS ≤ 1 s, and the back-off between rounds by 2 s), and rounds come every
// DEADLINE_POLL_MS ≤ 100 ms otherwise; a destroy storm can stretch one round to several seconds while it waits for
// emission slots. A minute without one is a wedged loop, which the kubelet restarts (the other replicas go on).
const LIVENESS_STALL_MS = 60_000;

const core = createCore({ name: 'deadline-engine' });
const watch = new RoundWatch(LIVENESS_STALL_MS);
const engine = new DeadlineEngine({ deps: core.deps, ready: () => core.ready(), onRound: () => watch.round() });
const reconciling = createEngineReconciler(core, process.env);
// The shared-state gauges (live sessions, the ledger, queues) are this process's alone: see engine-gauges.ts.
const stopGauges = observeSharedState(core.deps, () => core.ready());
runLongRunning({
  name: 'deadline-engine',
  label: 'the deadline engine',
  core,
  watch,
  worker: {
    start() {
      engine.start();
      reconciling?.reconciler.start();
    },
    async stop() {
      await Promise.all([engine.stop(), reconciling?.reconciler.stop()]);
      stopGauges();
      reconciling?.runtime.shutdown();
    },
  },
  port: Number(process.env.PORT ?? 8080),
});
