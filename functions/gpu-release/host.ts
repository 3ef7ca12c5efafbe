// gpu-release's function host, built in its process's worker thread (functions/framework/worker-host.ts).
import { createFunctionHost } from '../core/function-host.ts';
import type { WorkerHostModule } from '../framework/worker-host.ts';
import { createGpuReleaseDeps, GPU_RELEASE_ACCEPTS, handle, readGpuReleaseSettings } from './handle.ts';

export const startHost: WorkerHostModule['startHost'] = (env) => {
  const host = createFunctionHost({
    name: 'gpu-release',
    accept: GPU_RELEASE_ACCEPTS,
    extend: (core) => createGpuReleaseDeps(core, readGpuReleaseSettings(env)),
    handle,
  });
  return { host, beforeStop: () => host.deps.runtime.shutdown() };
};
