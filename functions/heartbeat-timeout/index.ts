// heartbeat-timeout over HTTP: functions-framework serves the host's handler (the `http` signature, so malformed
// events can be answered 400; see functions/core/function-host.ts). The deadline engine is engine.ts.
import * as ff from '@google-cloud/functions-framework';
import { createFunctionHost } from '../core/function-host.ts';
import { ACCEPTS, handle } from './handle.ts';

const host = createFunctionHost({ name: 'heartbeat-timeout', accept: ACCEPTS, extend: () => ({}), handle, batches: true });

ff.http('heartbeat-timeout', host.handler);

process.once('SIGTERM', () => {
  void host.core.close();
});
