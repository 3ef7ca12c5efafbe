// What the attacks share: CloudEvents sent as some sender (a token, or none) to the local Broker or straight to a
// function, and a snapshot of everything an attack must leave unchanged (a session's record, the GPU ledger, the
// runtime's allocations, the Broker's dead letters) to compare after it.
import { randomUUID } from 'node:crypto';
import { CloudEvent, HTTP } from 'cloudevents';
import { auditLedger, type LedgerAudit } from '../../functions/core/ledger.ts';
import type { SessionStore, SessionView } from '../../functions/core/session-store.ts';
import { postRaw } from '../../functions/activity-score/function-process-test-support.ts';

/** A CloudEvent as an attacker sends it: any type, source and attributes. */
export function forge(type: string, data: unknown, attrs: Record<string, string> = {}): CloudEvent<unknown> {
  return new CloudEvent({ specversion: '1.0', id: randomUUID(), source: '/attacker', type, datacontenttype: 'application/json', data, ...attrs }, false);
}

/** Posts an event in binary mode, with a bearer token when given; the status and the parsed body. */
export function post(url: string, ce: CloudEvent<unknown>, token?: string): Promise<{ status: number; body: unknown }> {
  const message = HTTP.binary(ce);
  const headers = { ...(message.headers as Record<string, string>), ...(token === undefined ? {} : { authorization: `Bearer ${token}` }) };
  return postRaw(url, headers, message.body as string);
}

/** What an attack on a session must not change. */
export interface Snapshot {
  view: SessionView | null;
  ledger: LedgerAudit;
}

/** The session's record and the GPU ledger now. */
export async function snapshot(store: SessionStore, sessionId: string): Promise<Snapshot> {
  return { view: await store.inspect(sessionId), ledger: await auditLedger(store.redis, store.keys) };
}

/** Resolves once `check` holds, polling; fails after a generous limit meant only to stop a hung test. */
export async function until<T>(what: string, check: () => Promise<T | undefined | false>, limitMs = 30_000): Promise<T> {
  const deadline = Date.now() + limitMs;
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
