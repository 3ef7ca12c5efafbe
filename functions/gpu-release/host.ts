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
  // Its runtime calls and retry waits are cut short as soon as a stop begins (each answered 503, redelivered), so the
  // requests in flight finish within the stop's deadline rather than after a runtime's timeouts.
  return { host, stopping: () => host.deps.runtime.shutdown() };
};
