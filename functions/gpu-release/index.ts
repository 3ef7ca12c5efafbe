// Entry point of gpu-release for functions-framework (FUNCTION_TARGET=gpu-release, signature http: see the host).
import * as ff from '@google-cloud/functions-framework';
import { createFunctionHost } from '../core/function-host.ts';
import { createGpuReleaseDeps, GPU_RELEASE_ACCEPTS, handle, readGpuReleaseSettings } from './handle.ts';

/** The running gpu-release function: its HTTP handler, its core and its dependencies. */
export const host = createFunctionHost({
  name: 'gpu-release',
  accept: GPU_RELEASE_ACCEPTS,
  extend: (core) => createGpuReleaseDeps(core, readGpuReleaseSettings(process.env)),
  handle,
});

ff.http('gpu-release', host.handler);

process.once('SIGTERM', () => {
  host.deps.runtime.shutdown();
  void host.core.close();
});
