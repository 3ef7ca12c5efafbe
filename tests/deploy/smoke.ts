// The end-to-end smoke test skaffold's verify stage runs in the cluster (tests/deploy/smoke-job.yaml): it opens
// a session on the simulated runtime, closes it, and waits for the session.destroyed that the smoke-test Trigger
// delivers back to this process. It passes only if the whole path works: Broker, Triggers, heartbeat-timeout,
// destroy-dispatch, gpu-release, Redis and the runtime. Only fetch and the cloudevents SDK.
//
// Environment (SMOKE_VARIABLES): BROKER_URL (the Broker ingress; K_SINK when unset), RUNTIME_URL (the runtime the
// session claims to run on), PORT (where session.destroyed arrives, default 8080), SMOKE_TIMEOUT_MS (default 60000),
// and its identity for the Broker, which the dev overlay's EventPolicy admits as the pipeline: SMOKE_TOKEN_AUDIENCE
// and SMOKE_SERVICE_ACCOUNT (a token requested from the API server with the pod's own ServiceAccount credentials),
// or SMOKE_TOKEN_FILE (a token file, where something mounts one).
//
// Why a token request and not a projected token volume: skaffold verify replaces the Job's container with the
// verify container of skaffold.yaml (name, image, command, args and env only; GoogleContainerTools/skaffold v2,
// pkg/skaffold/verify/k8sjob/verify.go, createJobFromManifestPath), so a volumeMount declared in the Job manifest
// never reaches the container that runs. The ServiceAccount admission plugin mounts the pod's own credentials into
// every container when the pod is created, after skaffold's replacement.
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage } from 'node:http';
import { CloudEvent, HTTP } from 'cloudevents';

const TYPE_PREFIX = 'dev.sessionreaper.';
const SOURCE = '//session-reaper/smoke-test';

/** The variables the smoke test reads: those the container skaffold runs must set, and those it may. */
export const SMOKE_VARIABLES = {
  required: ['BROKER_URL', 'RUNTIME_URL', 'PORT', 'SMOKE_TIMEOUT_MS', 'SMOKE_TOKEN_AUDIENCE', 'SMOKE_SERVICE_ACCOUNT'],
  optional: ['K_SINK', 'SMOKE_TOKEN_FILE'],
} as const;

/** Where the kubelet mounts a pod's own ServiceAccount credentials (automountServiceAccountToken). */
export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/** Where the smoke test's sender token comes from. */
export type TokenSource = { file: string } | { audience: string; serviceAccount: string };

/** What a smoke run needs from its environment. */
export interface SmokeSettings {
  brokerUrl: string;
  runtimeUrl: string;
  port: number;
  timeoutMs: number;
  /** Where the sender token comes from, when the Broker checks senders. */
  token: TokenSource | undefined;
}

/** Reads the smoke test's settings, failing with the variable's name when one is missing or malformed. */
export function readSmokeSettings(env: NodeJS.ProcessEnv): SmokeSettings {
  const brokerUrl = env.BROKER_URL ?? env.K_SINK ?? '';
  if (!/^https?:\/\//.test(brokerUrl)) throw new Error('BROKER_URL (or K_SINK) must be an http(s) URL of the Broker ingress');
  const runtimeUrl = env.RUNTIME_URL ?? 'http://sim-gpu-runtime.session-reaper.svc.cluster.local';
  const port = Number(env.PORT ?? '8080');
  const timeoutMs = Number(env.SMOKE_TIMEOUT_MS ?? '60000');
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`PORT=${env.PORT} is not a port`);
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) throw new Error(`SMOKE_TIMEOUT_MS=${env.SMOKE_TIMEOUT_MS} is not a positive integer`);
  const audience = env.SMOKE_TOKEN_AUDIENCE || undefined;
  const serviceAccount = env.SMOKE_SERVICE_ACCOUNT || undefined;
  if ((audience === undefined) !== (serviceAccount === undefined)) throw new Error('SMOKE_TOKEN_AUDIENCE and SMOKE_SERVICE_ACCOUNT are set together');
  const token: TokenSource | undefined = env.SMOKE_TOKEN_FILE ? { file: env.SMOKE_TOKEN_FILE } : audience && serviceAccount ? { audience, serviceAccount } : undefined;
  return { brokerUrl, runtimeUrl, port, timeoutMs, token };
}

/**
 * A token of `serviceAccount` for `audience`, from the API server's TokenRequest API, authenticated by the pod's own
 * ServiceAccount credentials in `dir` (the API server's CA reaches fetch through NODE_EXTRA_CA_CERTS).
 */
export async function requestToken(audience: string, serviceAccount: string, dir = SERVICE_ACCOUNT_DIR, apiServer = 'https://kubernetes.default.svc'): Promise<string> {
  const namespace = readFileSync(`${dir}/namespace`, 'utf8').trim();
  const bearer = readFileSync(`${dir}/token`, 'utf8').trim();
  const res = await fetch(`${apiServer}/api/v1/namespaces/${namespace}/serviceaccounts/${serviceAccount}/token`, {
    method: 'POST',
    headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json' },
    body: JSON.stringify({ apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest', spec: { audiences: [audience], expirationSeconds: 600 } }),
  });
  if (!res.ok) throw new Error(`the API server answered ${res.status} to the token request for ${serviceAccount}: ${await res.text()}`);
  const token = ((await res.json()) as { status?: { token?: string } }).status?.token;
  if (!token) throw new Error(`the API server issued no token for ${serviceAccount}`);
  return token;
}

/** The sender token of a run: read from its file, or requested once (it outlives the run's timeout). */
export async function tokenOf(source: TokenSource | undefined): Promise<string | undefined> {
  if (source === undefined) return undefined;
  if ('file' in source) return readFileSync(source.file, 'utf8').trim();
  return requestToken(source.audience, source.serviceAccount);
}

/** Sends one event to the Broker in binary mode; a non-2xx answer is an error. */
export async function sendEvent(brokerUrl: string, type: string, data: Record<string, unknown>, subject: string, token?: string): Promise<void> {
  const event = new CloudEvent({ type: `${TYPE_PREFIX}${type}`, source: SOURCE, subject, datacontenttype: 'application/json', data });
  const message = HTTP.binary(event);
  const headers = { ...(message.headers as Record<string, string>) };
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  const response = await fetch(brokerUrl, { method: 'POST', headers, body: message.body as string });
  if (!response.ok) throw new Error(`Broker answered ${response.status} to ${event.type}: ${await response.text()}`);
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

/** Opens and closes one session, resolving with session.destroyed's data once it arrives for that session. */
export async function runSmoke(settings: SmokeSettings, log: (line: Record<string, unknown>) => void): Promise<Record<string, unknown>> {
  const sessionId = `smoke-${randomUUID()}`;
  let settle: (data: Record<string, unknown>) => void = () => undefined;
  const destroyed = new Promise<Record<string, unknown>>((resolve) => {
    settle = resolve;
  });
  const server = createServer((req, res) => {
    readBody(req)
      .then((body) => {
        const event = HTTP.toEvent({ headers: req.headers, body });
        const events = Array.isArray(event) ? event : [event];
        for (const e of events) {
          const data = e.data as Record<string, unknown> | undefined;
          if (e.type === `${TYPE_PREFIX}session.destroyed` && data?.sessionId === sessionId) settle(data);
        }
        res.writeHead(202).end();
      })
      .catch((err: unknown) => {
        log({ msg: 'unreadable delivery', error: String(err) });
        res.writeHead(400).end();
      });
  });
  await new Promise<void>((resolve) => server.listen(settings.port, resolve));
  const timer = new Promise<never>((_, reject) => {
    setTimeout(() => reject(new Error(`no session.destroyed for ${sessionId} within ${settings.timeoutMs} ms`)), settings.timeoutMs).unref();
  });
  try {
    const token = await tokenOf(settings.token);
    log({ msg: 'opening session', sessionId });
    await sendEvent(settings.brokerUrl, 'session.opened', { sessionId, placement: { node: 'smoke-test', runtimeUrl: settings.runtimeUrl }, heartbeatIntervalMs: 60_000 }, sessionId, token);
    log({ msg: 'closing session', sessionId });
    await sendEvent(settings.brokerUrl, 'session.closed', { sessionId, reason: 'smoke test' }, sessionId, token);
    return await Promise.race([destroyed, timer]);
  } finally {
    server.close();
  }
}

// Run as a program (the Job's command), not when imported.
if (import.meta.main) {
  const log = (line: Record<string, unknown>) => process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), ...line })}\n`);
  runSmoke(readSmokeSettings(process.env), log).then(
    (data) => {
      log({ msg: 'session destroyed: smoke test passed', data });
      process.exitCode = 0;
    },
    (err: unknown) => {
      log({ msg: 'smoke test failed', error: err instanceof Error ? err.message : String(err) });
      process.exitCode = 1;
    },
  );
}
