// destroy-dispatch's process: the host's handler served behind the request bounds (functions/framework/serve.ts;
// the `http` signature, so malformed events can be answered 400: see functions/core/function-host.ts).
import { createFunctionHost } from '../core/function-host.ts';
import { serveHost } from '../framework/serve.ts';
import { destroyDispatch } from './definition.ts';

const host = createFunctionHost(destroyDispatch(process.env));

const server = await serveHost(host);

process.once('SIGTERM', () => {
  void server.close().finally(() => host.core.close());
});
