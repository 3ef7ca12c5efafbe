// activity-score's long-running second entry point: the idle checker. activity-score itself is a scale-to-zero
// Knative Service that only runs when events arrive, but a session goes idle precisely when none arrive, so the
// due idle checks are claimed by this process (any number of replicas; claims are atomic). Started as
// `node functions/activity-score/idle-checker-main.ts`; serves GET /healthz on PORT and stops on SIGTERM/SIGINT.
import { createCore } from '../core/function-host.ts';
import { runLongRunning } from '../core/process-lifecycle.ts';
import { IdleChecker } from './idle-checker.ts';
import { readActivityScoreSettings } from './settings.ts';

const core = createCore({ name: 'idle-checker' });
const checker = new IdleChecker(core.deps, { settings: readActivityScoreSettings(process.env) });
runLongRunning({ name: 'idle-checker', label: 'the idle checker', core, worker: checker, port: Number(process.env.PORT ?? 8080) });
