// Helpers the local Broker's tests share: a throw-away store directory, events of the contract's types, sending
// over real HTTP with the CloudEvents SDK's encodings, and the Broker run as its own process.
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CloudEvent, HTTP } from 'cloudevents';
import { diesWithParent } from '../local-stack/parent-death.ts';

/** A fresh directory for one test's dead letters; removed when the process exits. */
export function tempStoreDir(label: string): string {
  const dir = mkdtempSync(join(tmpdir(), `sr-broker-${label}-`));
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  return join(dir, 'dead-letters');
}

let seq = 0;
/** A CloudEvent of a given type with small JSON data and a unique id. */
export function eventOf(type: string, extra: Record<string, string> = {}): CloudEvent<{ sessionId: string }> {
  seq += 1;
  return new CloudEvent({ specversion: '1.0', id: `test-${process.pid}-${seq}`, source: '/tests/local-broker', type, datacontenttype: 'application/json', data: { sessionId: `s-${seq}` }, ...extra });
}

/** POSTs a message (headers and body) and returns the answer's status and text. */
export async function post(url: string, headers: Record<string, string>, body: string | Buffer | undefined): Promise<{ status: number; text: string }> {
  const res = await fetch(url, { method: 'POST', headers, ...(body === undefined ? {} : { body }) });
  return { status: res.status, text: await res.text() };
}

function headersOf(message: { headers: Record<string, unknown> }): Record<string, string> {
  return Object.fromEntries(Object.entries(message.headers).map(([k, v]) => [k, String(v)]));
}

/** Sends an event in binary mode; extra headers (e.g. a W3C traceparent) are added to the request. */
export function sendBinary(url: string, ev: CloudEvent<unknown>, extra: Record<string, string> = {}): Promise<{ status: number; text: string }> {
  const m = HTTP.binary(ev);
  return post(url, { ...headersOf(m), ...extra }, m.body as string | undefined);
}

/** Sends an event in structured mode. */
export function sendStructured(url: string, ev: CloudEvent<unknown>): Promise<{ status: number; text: string }> {
  const m = HTTP.structured(ev);
  return post(url, headersOf(m), m.body as string);
}

/** Sends events as one batch (application/cloudevents-batch+json). */
export function sendBatch(url: string, evs: readonly CloudEvent<unknown>[]): Promise<{ status: number; text: string }> {
  return post(url, { 'content-type': 'application/cloudevents-batch+json' }, JSON.stringify(evs.map((e) => e.toJSON())));
}

/** Polls until `check` holds, failing with `what` after timeoutMs. */
export async function eventually(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

const BROKER_ENTRY = join(import.meta.dirname, 'index.ts');

/** The Broker as its own process (index.ts), configured by `env` alone; its output is kept for assertion messages. */
export function runBrokerProcess(env: Record<string, string>): {
  proc: ChildProcessByStdio<null, Readable, Readable>;
  exited: Promise<number | null>;
  output: () => string;
} {
  const proc = spawn(...diesWithParent(process.execPath, [BROKER_ENTRY]), { env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'warn', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  proc.stdout.on('data', (c: Buffer) => (output += c.toString()));
  proc.stderr.on('data', (c: Buffer) => (output += c.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  return { proc, exited, output: () => output };
}
