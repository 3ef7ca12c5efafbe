// Test support: a process served the way every function's is (serveHostInWorker: functions-framework on the main
// thread, the host in a worker thread), with a host of its own that can be told to answer in each way a function host
// answers, to take its time, or to die, which no real host can be made to do on demand. Run as a process, this file
// serves; imported by the worker, it only exports the host.
import { isMainThread } from 'node:worker_threads';
import { setTimeout as sleep } from 'node:timers/promises';
import type { HostRequest, HostResponse } from '../core/function-host.ts';
import { createLogger } from '../core/log.ts';
import type { WorkerHostModule } from './worker-protocol.ts';

export const startHost: WorkerHostModule['startHost'] = (env) => {
  if (env.FIXTURE_FAIL_START === '1') throw new Error('FIXTURE_FAIL_START="1" is invalid: the fixture was told to fail');
  const logger = createLogger({ service: 'worker-host-fixture', level: 'info' });
  const handler = async (req: HostRequest, res: HostResponse): Promise<void> => {
    if (req.method === 'GET') {
      res.status(200).json({ status: 'ok' });
      return;
    }
    switch (req.path) {
      case '/json':
        res.status(202).json({ echo: req.decodedBody?.value ?? null, bytes: req.rawBody?.length ?? 0, prefer: req.headers.prefer ?? null, query: req.query ?? null });
        return;
      case '/raw':
        res.status(200).set({ 'ce-id': 'reply-1', 'content-type': 'application/octet-stream' }).end(new Uint8Array([0, 1, 2, 255]));
        return;
      case '/empty':
        res.status(204).end();
        return;
      case '/slow':
        logger.info('fixture slow request started');
        await sleep(300);
        res.status(200).json({ slow: true });
        return;
      case '/reject':
        throw new Error('the fixture rejected');
      case '/crash':
        // Lines still in the log's asynchronous stream when the thread dies must come out all the same.
        for (let i = 0; i < 500; i++) logger.info(`fixture line ${i} before the crash`);
        // Thrown outside any promise: an uncaught exception, which ends the worker thread.
        setImmediate(() => {
          throw new Error('the fixture crashed');
        });
        return new Promise<void>(() => undefined);
      case '/exit':
        process.exit(7);
    }
    res.status(404).json({ error: 'NOT_FOUND' });
  };
  const host = {
    name: 'worker-host-fixture', batches: false, handler: handler as never,
    core: {
      deps: { config: { LISTEN_HOST: '127.0.0.1', MAX_EVENT_BYTES: 65_536, MAX_BATCH_BYTES: 1_048_576, LOG_LEVEL: 'info' as const }, logger },
      close: () => Promise.resolve(void logger.info('fixture host closed')),
    },
  };
  const beforeClose = (): void => {
    logger.info('fixture host before close');
    if (env.FIXTURE_EXIT_ON_CLOSE === '1') process.exit(3);
  };
  return { host, stopping: () => void logger.info('fixture host stopping'), beforeClose };
};

// Served only when run as a process; the worker that imports this module for its host loads no server.
if (isMainThread) {
  const { serveHostInWorker } = await import('./worker-host.ts');
  await serveHostInWorker(new URL(import.meta.url));
}
