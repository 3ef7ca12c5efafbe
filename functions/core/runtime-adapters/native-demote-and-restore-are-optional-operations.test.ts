// The native kind's new optional operations (functions/gpu-release/runtime-api.openapi.yaml): POST
// /v1/sessions/{id}/demote answers {offloadedBytes, freedBytes}, /restore answers {restoredBytes}; a runtime without
// them answers 501, which is a typed refusal, not retried.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { rejection } from '../../gpu-release/runtime-client-test-support.ts';
import { engineClientFor, startFakeEngine } from './engine-test-support.ts';

describe('native demote and restore', () => {
  it('send the incarnation with an idempotency key and report the runtime\'s bytes as exact', async () => {
    const engine = await startFakeEngine((req) => {
      if (req.path === '/v1/sessions/chat-1/demote') return { status: 200, json: { offloadedBytes: 900, freedBytes: 1000 } };
      if (req.path === '/v1/sessions/chat-1/restore') return { status: 200, json: { restoredBytes: 900 } };
      return { status: 404, json: { code: 'not_found' } };
    });
    const client = engineClientFor(engine.url, {});
    try {
      assert.deepEqual(await client.demote(engine.url, 'chat-1', 5), { offloadedBytes: 900, freedBytes: 1000, exact: true, attempts: 1 });
      assert.deepEqual(await client.restore(engine.url, 'chat-1', 5), { restoredBytes: 900, exact: true, attempts: 1 });
      assert.deepEqual(engine.requests[0]?.body, { incarnation: 5 });
    } finally {
      client.shutdown();
      await engine.close();
    }
  });

  it('a runtime that answers 501 refuses for good after one request', async () => {
    const engine = await startFakeEngine(() => ({ status: 501, json: { code: 'not_implemented' } }));
    const client = engineClientFor(engine.url, { kind: 'native' });
    try {
      const err = await rejection(client.demote(engine.url, 'chat-1', 5));
      assert.deepEqual({ reason: err.reason, retryable: err.retryable }, { reason: 'unsupported', retryable: false });
      assert.equal(engine.requests.length, 1);
    } finally {
      client.shutdown();
      await engine.close();
    }
  });
});
