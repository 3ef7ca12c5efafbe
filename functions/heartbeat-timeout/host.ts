// heartbeat-timeout's function host, built in its process's worker thread (functions/framework/worker-host.ts).
import { createFunctionHost } from '../core/function-host.ts';
import type { WorkerHostModule } from '../framework/worker-host.ts';
import { ACCEPTS, handle } from './handle.ts';

export const startHost: WorkerHostModule['startHost'] = () => ({
  host: createFunctionHost({ name: 'heartbeat-timeout', accept: ACCEPTS, extend: () => ({}), handle, batches: true }),
});
