// The deadline engine's process: the long-running second entry point of heartbeat-timeout (same image, started as
// `node functions/heartbeat-timeout/engine.ts`; see knative/base/deadline-engine.yaml). It serves GET /healthz on PORT
// for the readiness probe and stops cleanly on SIGTERM/SIGINT.
//
// Its core is named 'deadline-engine', not 'heartbeat-timeout': that is the Deployment's name and its
// OTEL_SERVICE_NAME in the manifests, it separates the engine's logs and spans from the request-driven function's,
// and it makes the source of what it emits `/session-reaper/deadline-engine` — the same for every replica, so the
// deterministic event ids still deduplicate across replicas.
import { createServer } from 'node:http';
import { createCore } from '../core/function-host.ts';
import { DeadlineEngine } from './deadline-engine.ts';

const core = createCore({ name: 'deadline-engine' });
const { logger } = core.deps;
const engine = new DeadlineEngine({ deps: core.deps, ready: () => core.ready() });
const port = Number(process.env.PORT ?? 8080);

const server = createServer((req, res) => {
  if (req.method === 'GET' && (req.url === '/healthz' || req.url === '/readyz')) {
    void core.healthy().then((ok) => {
      res.writeHead(ok ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify({ status: ok ? 'ok' : 'unavailable', function: 'deadline-engine' }));
    });
    return;
  }
  res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'NOT_FOUND' }));
});

server.listen(port, () => {
  logger.info({ port }, 'deadline engine health endpoint listening');
  engine.start();
});

let stopping = false;
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  logger.info({ signal }, 'stopping the deadline engine');
  server.close();
  try {
    await engine.stop();
  } finally {
    await core.close();
  }
}

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    shutdown(signal).then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'deadline engine did not stop cleanly');
        process.exit(1);
      },
    );
  });
}
