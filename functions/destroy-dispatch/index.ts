// destroy-dispatch's process: the host's handler served behind the request bounds (functions/framework/serve.ts;
// the `http` signature, so malformed events can be answered 400: see functions/core/function-host.ts).
import { createFunctionHost } from '../core/function-host.ts';
import { stopOnSignals } from '../core/process-lifecycle.ts';
import { serveHost } from '../framework/serve.ts';
import { destroyDispatch } from './definition.ts';

const host = createFunctionHost(destroyDispatch(process.env));

const server = await serveHost(host);

stopOnSignals(host.core.deps.logger, 'destroy-dispatch', async () => {
  try {
    await server.close();
  } finally {
    await host.core.close();
  }
});
