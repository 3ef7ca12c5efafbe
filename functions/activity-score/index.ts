// activity-score's process: functions-framework and the request bounds on the main thread (functions/framework/
// serve.ts; the `http` signature: see the host), the function host in a worker thread (functions/framework/
// worker-host.ts says why). The idle checker is not run here (this function scales to zero); a long-running process
// hosts it.
import { serveHostInWorker } from '../framework/worker-host.ts';

await serveHostInWorker(new URL('./host.ts', import.meta.url));
