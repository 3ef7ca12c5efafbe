// destroy-dispatch over HTTP: functions-framework serves the host's handler (the `http` signature, so malformed
// events can be answered 400; see functions/core/function-host.ts).
import * as ff from '@google-cloud/functions-framework';
import { createFunctionHost } from '../core/function-host.ts';
import { destroyDispatch } from './definition.ts';

const host = createFunctionHost(destroyDispatch(process.env));

ff.http('destroy-dispatch', host.handler);

process.once('SIGTERM', () => {
  void host.core.close();
});
