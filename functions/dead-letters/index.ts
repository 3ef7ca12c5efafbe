// The dead-letter receiver's process: settings read once, the store opened on its volume, the handler served.
// A plain node:http server, not functions-framework's (functions/framework/serve.ts): the framework serves one
// handler for contract events, while this takes any CloudEvent whatever its data and also serves the admin API.
// Bodies are bounded before they are read (BoundedIncomingMessage), as the functions' and the local Broker's are.
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pino } from 'pino';
import { BoundedIncomingMessage } from '../core/bounded-request.ts';
import { ConfigError } from '../core/config.ts';
import { openDeadLetterStore } from '../core/dead-letter-store.ts';
import { createLogger } from '../core/log.ts';
import { exitAfterFlush, stopOnSignals } from '../core/process-lifecycle.ts';
import { createDeadLetterReceiver } from './handle.ts';
import { initMetrics } from '../core/metrics-provider.ts';
import { readDeadLetterSettings, type DeadLetterSettings } from './settings.ts';

const NAME = 'dead-letters';

// A bad setting stops the process at start, naming the variable.
async function settingsOrExit(): Promise<DeadLetterSettings> {
  try {
    return readDeadLetterSettings(process.env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    const log = pino({ name: NAME });
    log.fatal({ err: err.message }, 'bad settings');
    return exitAfterFlush(log, 1);
  }
}

const s = await settingsOrExit();
const log = createLogger({ service: NAME, level: s.LOG_LEVEL });
// Opened before listening: the index is rebuilt from the volume first, so the pod turns ready only once it can
// tell a redelivery from a new dead letter and knows how full it is.
const store = await openDeadLetterStore(s.DEAD_LETTER_DIR, { maxBytes: s.DEAD_LETTER_MAX_BYTES });
const metrics = initMetrics({ serviceName: NAME, listenHost: s.LISTEN_HOST, logger: log });
const receiver = createDeadLetterReceiver({ store, logger: log, maxEventBytes: s.MAX_EVENT_BYTES, deadLetters: metrics.instruments.deadLetters });
const server = createServer<typeof BoundedIncomingMessage>({ IncomingMessage: BoundedIncomingMessage }, (req, res) => {
  receiver.handle(req, res).catch((err: unknown) => {
    log.error({ err }, 'request failed');
    if (!res.headersSent) res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'internal error' }));
  });
});
await new Promise<void>((resolve, reject) => {
  server.once('error', reject);
  server.listen(s.PORT, s.LISTEN_HOST, () => resolve());
});
log.info(
  { port: (server.address() as AddressInfo).port, dir: store.dir, deadLetters: store.count(), usedBytes: store.usedBytes(), maxBytes: store.maxBytes },
  'dead-letter receiver listening',
);

stopOnSignals(log, NAME, async () => {
  // Requests in flight finish (each is one file write); idle keep-alive connections close now.
  await new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeIdleConnections();
  });
  await metrics.shutdown();
});
