// heartbeat-timeout's process: the host's handler served behind the request bounds (functions/framework/serve.ts;
// the `http` signature, so malformed events can be answered 400: see functions/core/function-host.ts). The deadline
// engine is engine.ts.
import { createFunctionHost } from '../core/function-host.ts';
import { stopOnSignals } from '../core/process-lifecycle.ts';
import { serveHost } from '../framework/serve.ts';
import { ACCEPTS, handle } from './handle.ts';

const host = createFunctionHost({ name: 'heartbeat-timeout', accept: ACCEPTS, extend: () => ({}), handle, batches: true });

const server = await serveHost(host);

stopOnSignals(host.core.deps.logger, 'heartbeat-timeout', async () => {
  try {
    await server.close();
  } finally {
    await host.core.close();
  }
});
