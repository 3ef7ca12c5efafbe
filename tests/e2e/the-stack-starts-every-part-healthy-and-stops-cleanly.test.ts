// The stack launcher starts every part of the system as its own process on loopback ports, reports ready only once
// every part answers its health check, carries a session from opened to destroyed through the local Broker, sends
// a contract-breaking event to the dead-letter store with its function's reason, and stops every process it started. Skipped, saying why, only while an entry file it runs does not exist yet.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CloudEvent, HTTP } from 'cloudevents';
import { startEventSink } from '../support/event-sink.ts';
import { missingEntryFiles, startStack } from '../support/stack.ts';

async function send(url: string, ev: CloudEvent<unknown>, token: string): Promise<number> {
  const m = HTTP.binary(ev);
  const res = await fetch(url, { method: 'POST', headers: { ...(m.headers as Record<string, string>), authorization: `Bearer ${token}` }, body: m.body as string });
  await res.body?.cancel();
  return res.status;
}

test('the stack starts every part healthy, carries a session to its destroy, dead-letters a contract-breaking event, and stops every process', { timeout: 120_000 }, async (t) => {
  const missing = missingEntryFiles();
  if (missing.length > 0) {
    t.skip(`the stack's entry files do not all exist yet: ${missing.join(', ')}`);
    return;
  }
  const outside = await startEventSink();
  const stack = await startStack({ forward: outside.url, deliveryOverride: { backoffDelayMs: 20 }, env: { DEADLINE_POLL_MS: '20' } });
  try {
    for (const [part, port] of Object.entries(stack.ports)) {
      const path = part === 'sim-gpu-runtime' ? '/v1/memory' : '/healthz';
      const res = await fetch(`http://127.0.0.1:${port}${path}`);
      assert.equal(res.status, 200, `${part} is healthy`);
    }
    assert.equal((await fetch(new URL('/healthz', stack.brokerUrl))).status, 200, 'the Broker reports the whole stack ready');

    const sessionId = `stack-${process.pid}`;
    const opened = new CloudEvent({
      id: `${sessionId}-opened`,
      source: '/tests/stack',
      type: 'dev.sessionreaper.session.opened',
      datacontenttype: 'application/json',
      data: { sessionId, placement: { node: 'sim-node', runtimeUrl: stack.runtimeUrl, gpuBytes: 1024 } },
    });
    const closed = new CloudEvent({ id: `${sessionId}-closed`, source: '/tests/stack', type: 'dev.sessionreaper.session.closed', datacontenttype: 'application/json', data: { sessionId } });
    assert.equal(await send(stack.brokerUrl, opened, stack.tokens['inference-pipeline']), 202);
    await stack.broker.idle();
    assert.equal(await send(stack.brokerUrl, closed, stack.tokens['inference-pipeline']), 202);
    const destroyed = await outside.waitForEvent((e) => e.event.type === 'dev.sessionreaper.session.destroyed', { timeoutMs: 30_000 }).catch((err: unknown) => {
      const logs = Object.entries(stack.logs).map(([name, lines]) => `--- ${name}\n${lines.slice(-15).join('\n')}`).join('\n');
      throw new Error(`${(err as Error).message}\nprocess logs:\n${logs}`, { cause: err });
    });
    assert.equal((destroyed.event.data as { sessionId: string }).sessionId, sessionId);
    assert.deepEqual(await stack.broker.deadLetters.list(), [], 'nothing died on the way');

    // An event that breaks the contract passes the Broker (202), is refused by its function (400, no retries)
    // and lands in the dead-letter store with the function's reason.
    const broken = new CloudEvent({ id: `${sessionId}-broken`, source: '/tests/stack', type: 'dev.sessionreaper.session.closed', datacontenttype: 'application/json', data: { sessionId: 42 } });
    assert.equal(await send(stack.brokerUrl, broken, stack.tokens['inference-pipeline']), 202);
    await stack.broker.idle();
    const [dead, ...more] = await stack.broker.deadLetters.list();
    assert.equal(more.length, 0);
    assert.equal(dead?.trigger, 'destroy-dispatch-session-closed');
    assert.equal(dead?.attempts, 1);
    assert.equal(dead?.reason.status, 400);
    assert.match(dead?.reason.body ?? '', /sessionId/);
  } finally {
    await stack.stop();
    await outside.close();
  }
  for (const [part, port] of Object.entries(stack.ports)) {
    await assert.rejects(fetch(`http://127.0.0.1:${port}/healthz`), `${part} is stopped`);
  }
});
