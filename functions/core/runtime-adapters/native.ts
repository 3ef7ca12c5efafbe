// The native kind: session-reaper's own runtime API (functions/gpu-release/runtime-api.openapi.yaml), spoken by the
// simulator, the reference llama.cpp engine and any runtime that implements it. Release, listing and memory are the
// runtime client's long-standing calls; demote and restore are the API's optional operations, which a runtime that
// lacks them answers 501 (a typed 'unsupported' refusal here, never retried).
import { RuntimeReleaseError, SESSION_ID_PATTERN, type RuntimeAnswer } from '../runtime-client.ts';
import { badAnswer, field, isCount, type DemoteResult, type EngineAdapter, type RestoreResult } from './adapter.ts';

function checkTarget(sessionId: string, incarnation: number): void {
  if (!SESSION_ID_PATTERN.test(sessionId)) throw new RuntimeReleaseError(`session id ${JSON.stringify(sessionId)} does not match ${SESSION_ID_PATTERN.source}`, { reason: 'invalid_request', retryable: false });
  if (!isCount(incarnation)) throw new RuntimeReleaseError(`incarnation must be an integer >= 0, got ${String(incarnation)}`, { reason: 'invalid_request', retryable: false });
}

// 501 (or 404/405 from a runtime that routes no such path) says the optional operation is not implemented.
function refusalOf(answer: RuntimeAnswer, op: string): RuntimeReleaseError {
  if (answer.status === 501 || answer.status === 405 || (answer.status === 404 && field(answer.body, 'code') !== 'session_not_found')) {
    return new RuntimeReleaseError(`the runtime does not implement ${op} (HTTP ${answer.status})`, { reason: 'unsupported', retryable: false, status: answer.status });
  }
  return answer.statusError();
}

/** A demote's or restore's Idempotency-Key: `{sessionId}:{incarnation}:{op}`, and `:{token}` for one request of many. */
export function offloadKey(sessionId: string, incarnation: number, op: 'demote' | 'restore', requestToken?: string): string {
  return `${sessionId}:${incarnation}:${op}${requestToken === undefined ? '' : `:${requestToken}`}`;
}

/** The native API's adapter. */
export const nativeAdapter: EngineAdapter = {
  kind: 'native',
  capabilities: { release: true, demote: true, restore: true, list: true, memory: true, exactBytes: true },

  release: (http, runtimeUrl, target, ctx) => http.release(runtimeUrl, target.sessionId, target.incarnation, ctx),

  async demote(http, runtimeUrl, { sessionId, incarnation, requestToken }, ctx): Promise<DemoteResult> {
    checkTarget(sessionId, incarnation);
    const { value, attempts } = await http.call(runtimeUrl, {
      op: 'demote', method: 'POST', path: `/v1/sessions/${encodeURIComponent(sessionId)}/demote`, json: { incarnation },
      // The same key on every attempt of one request, as for a release: a retry after a lost answer is not a second
      // demote. Each request its own (its token): an incarnation demoted again after a restore must not be answered
      // from the first demote's stored reply.
      headers: { 'idempotency-key': offloadKey(sessionId, incarnation, 'demote', requestToken) }, logFields: { sessionId, incarnation },
    }, (a) => {
      if (a.status !== 200) throw refusalOf(a, 'demote');
      const [offloadedBytes, freedBytes] = [field(a.body, 'offloadedBytes'), field(a.body, 'freedBytes')];
      if (!isCount(offloadedBytes) || !isCount(freedBytes)) throw badAnswer(a.url, a.status, 'a demote answer {offloadedBytes, freedBytes}');
      return { offloadedBytes, freedBytes };
    }, ctx);
    return { ...value, exact: true, attempts };
  },

  async restore(http, runtimeUrl, { sessionId, incarnation, requestToken }, ctx): Promise<RestoreResult> {
    checkTarget(sessionId, incarnation);
    const { value, attempts } = await http.call(runtimeUrl, {
      op: 'restore', method: 'POST', path: `/v1/sessions/${encodeURIComponent(sessionId)}/restore`, json: { incarnation },
      headers: { 'idempotency-key': offloadKey(sessionId, incarnation, 'restore', requestToken) }, logFields: { sessionId, incarnation },
    }, (a) => {
      if (a.status !== 200) throw refusalOf(a, 'restore');
      const restoredBytes = field(a.body, 'restoredBytes');
      if (!isCount(restoredBytes)) throw badAnswer(a.url, a.status, 'a restore answer {restoredBytes}');
      return restoredBytes;
    }, ctx);
    return { restoredBytes: value, exact: true, attempts };
  },

  memory: (http, runtimeUrl, ctx) => http.memory(runtimeUrl, ctx),
  listSessions: (http, runtimeUrl, page, ctx) => http.listSessions(runtimeUrl, page, ctx),
};
