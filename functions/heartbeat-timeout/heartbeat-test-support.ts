// Test and benchmark support for heartbeat-timeout: the real function process (its index.ts) and the real
// deadline engine process, started with a given environment, and CloudEvents sent to them over HTTP.
import { spawn, type ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { CloudEvent, HTTP } from 'cloudevents';
import { freePort } from '../../tests/support/redis-harness.ts';
import { diesWithParent } from '../../tools/local-stack/parent-death.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** A started process answering HTTP on `url`. */
export interface RunningProcess {
  readonly url: string;
  readonly child: ChildProcess;
  /** Everything it wrote to stderr and stdout, for failure messages. */
  output(): string;
  /** Sends SIGTERM and waits for the exit. */
  stop(): Promise<void>;
}

async function startProcess(args: string[], env: Record<string, string>, what: string): Promise<RunningProcess> {
  const port = await freePort();
  const child = spawn(...diesWithParent(process.execPath, args), {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'warn', ...env, PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const keep = (chunk: Buffer) => {
    out = (out + chunk.toString('utf8')).slice(-20_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  // A crashed test or benchmark must not leave the process running.
  const orphanGuard = () => child.kill('SIGKILL');
  process.once('exit', orphanGuard);
  child.once('exit', () => process.off('exit', orphanGuard));
  const url = `http://127.0.0.1:${port}/`;
  const until = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode}: ${out}`);
    try {
      await fetch(`${url}healthz`, { signal: AbortSignal.timeout(2000) });
      break;
    } catch {
      if (Date.now() > until) {
        child.kill('SIGKILL');
        throw new Error(`${what} did not answer on ${url}: ${out}`);
      }
      await sleep(100);
    }
  }
  return {
    url,
    child,
    output: () => out,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(killer);
    },
  };
}

/** Starts heartbeat-timeout as deployed (its index.ts serves it), with the given environment. */
export function startHeartbeatFunction(env: Record<string, string>): Promise<RunningProcess> {
  return startProcess(['functions/heartbeat-timeout/index.ts'], env, 'heartbeat-timeout');
}

/** Starts the deadline engine process (functions/heartbeat-timeout/engine.ts) with the given environment. */
export function startDeadlineEngine(env: Record<string, string>): Promise<RunningProcess> {
  return startProcess(['functions/heartbeat-timeout/engine.ts'], env, 'deadline engine');
}

/** An inbound CloudEvent as a producer would send it. */
export function inboundEvent(type: string, data: object, attrs: { id?: string; source?: string; time?: string } = {}): CloudEvent<object> {
  return new CloudEvent<object>({
    specversion: '1.0',
    id: attrs.id ?? crypto.randomUUID(),
    source: attrs.source ?? '/tests/inference-pipeline',
    type,
    time: attrs.time ?? new Date().toISOString(),
    datacontenttype: 'application/json',
    data,
  });
}

/** POSTs an event in binary or structured mode; resolves with the status and the parsed JSON answer (if any). */
export async function postEvent(url: string, event: CloudEvent<object>, mode: 'binary' | 'structured'): Promise<{ status: number; body: unknown }> {
  const message = mode === 'binary' ? HTTP.binary(event) : HTTP.structured(event);
  const res = await fetch(url, {
    method: 'POST',
    headers: message.headers as Record<string, string>,
    body: message.body as string,
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  return { status: res.status, body: text === '' ? undefined : (JSON.parse(text) as unknown) };
}

/** POSTs events as one batch (CloudEvents' batched content mode); resolves with the status and the parsed answer. */
export async function postBatch(url: string, events: readonly CloudEvent<object>[]): Promise<{ status: number; body: unknown }> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/cloudevents-batch+json' },
    body: JSON.stringify(events.map((e) => e.toJSON())),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  return { status: res.status, body: text === '' ? undefined : (JSON.parse(text) as unknown) };
}
