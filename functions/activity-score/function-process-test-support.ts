// Test support: runs a function as the real process its container starts in production (the function's index.ts,
// which serves it; env settings), and sends it CloudEvents over HTTP in binary or structured mode.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CloudEvent, HTTP } from 'cloudevents';
import { freePort } from '../../tests/support/redis-harness.ts';
import { diesWithParent } from '../../tools/local-stack/parent-death.ts';

const REPO_ROOT = join(import.meta.dirname, '..', '..');

/** A function process under test. */
export interface FunctionProcess {
  /** Base URL, e.g. http://127.0.0.1:PORT/ */
  readonly url: string;
  /** Everything the process wrote so far (stdout and stderr), for failure messages. */
  output(): string;
  /** Sends SIGTERM and waits for the exit (SIGKILL after a while). */
  stop(): Promise<void>;
}

/** Starts `functions/<name>/index.ts` with `env`, waiting until it answers /healthz. */
export async function startFunctionProcess(name: string, env: Record<string, string>): Promise<FunctionProcess> {
  const port = await freePort();
  let output = '';
  const child: ChildProcess = spawn(...diesWithParent(process.execPath, [join('functions', name, 'index.ts')]), {
    cwd: REPO_ROOT,
    env: {
      ...process.env,
      ...env,
      PORT: String(port),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  const url = `http://127.0.0.1:${port}/`;
  const until = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode} at start:\n${output}`);
    try {
      await fetch(`${url}healthz`, { signal: AbortSignal.timeout(5000) });
      break;
    } catch {
      if (Date.now() > until) {
        child.kill('SIGKILL');
        throw new Error(`${name} did not answer within 30 s:\n${output}`);
      }
      await sleep(50);
    }
  }
  return {
    url,
    output: () => output,
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** How an event goes over the wire. */
export type Mode = 'binary' | 'structured';

/** Posts one CloudEvent to a function; returns the status and the parsed JSON body (undefined when empty). */
export async function postEvent(
  url: string,
  mode: Mode,
  attrs: { type: string; id: string; source?: string; time?: string; data: unknown },
): Promise<{ status: number; body: unknown }> {
  const ce = new CloudEvent({ specversion: '1.0', source: attrs.source ?? '/tests', datacontenttype: 'application/json', ...attrs });
  const message = mode === 'binary' ? HTTP.binary(ce) : HTTP.structured(ce);
  const res = await fetch(url, { method: 'POST', headers: message.headers as Record<string, string>, body: message.body as string });
  const text = await res.text();
  return { status: res.status, body: text === '' ? undefined : (JSON.parse(text) as unknown) };
}

/** Posts a raw body with raw headers (for malformed requests); the answer's body is JSON when it parses, else text. */
export async function postRaw(url: string, headers: Record<string, string>, body: string): Promise<{ status: number; body: unknown }> {
  const res = await fetch(url, { method: 'POST', headers, body });
  const text = await res.text();
  try {
    return { status: res.status, body: text === '' ? undefined : (JSON.parse(text) as unknown) };
  } catch {
    return { status: res.status, body: text };
  }
}
