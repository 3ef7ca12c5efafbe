// heartbeat-timeout's process: functions-framework and the request bounds on the main thread (functions/framework/
// serve.ts; the `http` signature, so malformed events can be answered 400: see functions/core/function-host.ts), the
// function host in a worker thread (functions/framework/worker-host.ts says why). The deadline engine is engine.ts.
import { serveHostInWorker } from '../framework/worker-host.ts';

await serveHostInWorker(new URL('./host.ts', import.meta.url));
