// Shared by the adapter tests: a small HTTP server on loopback whose routes a test writes to reproduce an engine's
// documented wire behaviour, recording every request it gets, and an engine client over the real runtime client.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { testClientOptions } from '../../gpu-release/runtime-client-test-support.ts';
import { createRuntimeClient } from '../runtime-client.ts';
import { RuntimeRegistry, type RuntimeEntry } from '../runtime-registry.ts';
import { createEngineClient, type EngineClient } from './index.ts';

/** One request the fake engine received. */
export interface SeenRequest {
  method: string;
  path: string;
  query: URLSearchParams;
  body: unknown;
}

/** A route's answer: status, and a JSON body, a text body, or none. */
export interface FakeAnswer {
  status: number;
  json?: unknown;
  text?: string;
}

/** A fake engine on a free loopback port. */
export interface FakeEngine {
  url: string;
  requests: SeenRequest[];
  close(): Promise<void>;
}

async function readBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  const text = Buffer.concat(chunks).toString('utf8');
  if (text === '') return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

/** Starts a fake engine whose `route` answers each request. */
export async function startFakeEngine(route: (req: SeenRequest) => FakeAnswer): Promise<FakeEngine> {
  const requests: SeenRequest[] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://x');
      const seen = { method: req.method ?? 'GET', path: url.pathname, query: url.searchParams, body: await readBody(req) };
      requests.push(seen);
      const answer = route(seen);
      if (answer.json !== undefined) {
        res.writeHead(answer.status, { 'content-type': 'application/json' }).end(JSON.stringify(answer.json));
      } else {
        res.writeHead(answer.status, { 'content-type': 'text/plain' }).end(answer.text ?? '');
      }
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

/** An engine client for one runtime registered as `entry` (its url is filled in), with quick test retries. */
export function engineClientFor(url: string, entry: Omit<RuntimeEntry, 'url' | 'name'>): EngineClient {
  const registry = new RuntimeRegistry([{ name: 'engine', url, ...entry }]);
  return createEngineClient(createRuntimeClient(testClientOptions({ registry, retries: 2 })), registry);
}
