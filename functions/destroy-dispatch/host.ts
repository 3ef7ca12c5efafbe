// destroy-dispatch's function host, built in its process's worker thread (functions/framework/worker-host.ts).
import { createFunctionHost } from '../core/function-host.ts';
import type { WorkerHostModule } from '../framework/worker-host.ts';
import { destroyDispatch } from './definition.ts';

export const startHost: WorkerHostModule['startHost'] = (env) => ({ host: createFunctionHost(destroyDispatch(env)) });
