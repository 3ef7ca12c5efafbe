// Helpers sessionctl's tests share: run the real CLI as a child process (exactly as `npx sessionctl` does), seed
// sessions through the SessionStore, and start a local Broker with a tiny recording subscriber.
import { spawn } from 'node:child_process';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { startLocalBroker, type LocalBroker } from '../local-broker/broker.ts';
import { tempStoreDir } from '../local-broker/test-support.ts';
import type { Placement } from '../../functions/core/session-store.ts';
import { fp, type TestCore } from '../../tests/support/core.ts';
import { freePort } from '../../tests/support/redis-harness.ts';

const CLI = join(import.meta.dirname, 'cli.ts');

/** What one run of the CLI printed and how it ended. */
export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * The environment the CLI gets: only what it is given, so the test machine's REDIS_* never leak in, and no
 * `npm start` stack file, so a stack a developer happens to be running is never picked up.
 */
export function cliEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', LOG_LEVEL: 'silent', SESSIONCTL_STACK_FILE: '/nonexistent/stack.json', ...extra };
}

/** The Redis settings of a test core, as the CLI reads them. */
export { coreEnv } from '../../tests/support/core.ts';

/** Runs `sessionctl <args>` with Node (the test runner's own, Node 24) and waits for it to exit. */
export function sessionctl(args: readonly string[], env: NodeJS.ProcessEnv, opts: { onStdout?: (chunk: string, child: { kill(signal: NodeJS.Signals): void }) => void } = {}): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk;
      opts.onStdout?.(stdout, child);
    });
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Parses the one JSON document a --json run printed, failing with its output when it is not one. */
export function jsonOf<T>(run: CliRun): T {
  try {
    return JSON.parse(run.stdout) as T;
  } catch {
    throw new Error(`not one JSON document (exit ${run.code}):\n${run.stdout}\nstderr:\n${run.stderr}`);
  }
}

/** A placement on a named node. */
export function placementOn(node: string, gpuBytes = 1000): Placement {
  return { node, runtimeUrl: `http://${node}.test:8000`, gpuBytes };
}

/** Opens a session with a long window (10 min), so it stays active for the whole test. */
export function openLongLived(core: TestCore, sessionId: string, now: number, placement: Placement, windowMs = 600_000) {
  return core.store.open({ sessionId, fingerprint: fp('open'), now, liveFrom: now, windowMs, placement, tenant: 'acme', model: 'llama-test' });
}

/** One event as a subscriber got it over HTTP. */
export interface DeliveredEvent {
  headers: IncomingHttpHeaders;
  body: string;
}

/** A local Broker whose subscribers all point at one in-test server, which records events and answers `answer()`. */
export interface TestBroker {
  broker: LocalBroker;
  delivered: DeliveredEvent[];
  /** The status the subscriber answers with; change it to make deliveries fail or succeed. */
  answer: { status: number };
  stop(): Promise<void>;
}

/** Starts a local Broker from the deployed manifests, every function served by one recording subscriber. */
export async function startTestBroker(label: string): Promise<TestBroker> {
  const delivered: DeliveredEvent[] = [];
  const answer = { status: 200 };
  const server: Server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8').on('data', (c: string) => (body += c));
    req.on('end', () => {
      delivered.push({ headers: req.headers, body });
      res.writeHead(answer.status, { 'content-type': 'text/plain' }).end(answer.status >= 300 ? `refused by the test subscriber (${answer.status})` : '');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  const broker = await startLocalBroker({
    subscribers: { 'heartbeat-timeout': url, 'activity-score': url, 'destroy-dispatch': url, 'gpu-release': url },
    deadLetterDir: tempStoreDir(label),
    deliveryOverride: { backoffDelayMs: 5, timeoutMs: 2000 },
  });
  return {
    broker,
    delivered,
    answer,
    async stop() {
      await broker.stop({ graceMs: 0 });
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A Redis URL nothing listens on: the Redis that is down. */
export const UNREACHABLE_REDIS = 'redis://127.0.0.1:1';

/** A Broker URL nothing listens on (a port just freed; fetch refuses well-known ports such as 1 outright). */
export async function unreachableBroker(): Promise<string> {
  return `http://127.0.0.1:${await freePort()}/`;
}
