// activity-score's long-running second entry point: the idle checker. activity-score itself is a scale-to-zero
// Knative Service that only runs when events arrive, but a session goes idle precisely when none arrive, so the
// due idle checks are claimed by this process (any number of replicas; claims are atomic). Started as
// `node functions/activity-score/idle-checker-main.ts`; serves GET /healthz (readiness) and GET /livez (liveness) on
// PORT and stops on SIGTERM/SIGINT.
import { createCore } from '../core/function-host.ts';
import { RoundWatch, runLongRunning } from '../core/process-lifecycle.ts';
import { IdleChecker } from './idle-checker.ts';
import { readActivityScoreSettings } from './settings.ts';

const core = createCore({ name: 'idle-checker' });
const settings = readActivityScoreSettings(process.env);
// Live while a pass completed recently: passes come at least every IDLE_POLL_MS and end within about a second when
// Redis is down (every call is bounded by CORE_TIMEOUT_MS), so three polls, and never less than a minute, without
// one is a wedged loop, which the kubelet restarts.
const watch = new RoundWatch(Math.max(60_000, 3 * settings.idlePollMs));
const checker = new IdleChecker(core.deps, { settings, onRound: () => watch.round() });
runLongRunning({ name: 'idle-checker', label: 'the idle checker', core, worker: checker, watch, port: Number(process.env.PORT ?? 8080) });
