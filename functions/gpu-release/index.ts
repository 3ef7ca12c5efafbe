// gpu-release's process: the host's handler served behind the request bounds (functions/framework/serve.ts; the
// `http` signature: see the host).
import { createFunctionHost } from '../core/function-host.ts';
import { stopOnSignals } from '../core/process-lifecycle.ts';
import { serveHost } from '../framework/serve.ts';
import { createGpuReleaseDeps, GPU_RELEASE_ACCEPTS, handle, readGpuReleaseSettings } from './handle.ts';

/** The running gpu-release function: its HTTP handler, its core and its dependencies. */
export const host = createFunctionHost({
  name: 'gpu-release',
  accept: GPU_RELEASE_ACCEPTS,
  extend: (core) => createGpuReleaseDeps(core, readGpuReleaseSettings(process.env)),
  handle,
});

const server = await serveHost(host);

stopOnSignals(host.core.deps.logger, 'gpu-release', async () => {
  host.deps.runtime.shutdown();
  try {
    await server.close();
  } finally {
    await host.core.close();
  }
});
