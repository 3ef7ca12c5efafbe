// Supervision as Knative does it: kill -9 of destroy-dispatch in a running stack does not stop the stack. The process
// is restarted on the same port (a new pid, healthy again, the restart counted), and a session closed while it was
// down is destroyed once it is back: the Broker's delivery to the dead port fails and is retried per its Trigger.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CloudEvent } from 'cloudevents';
import { startEventSink } from '../support/event-sink.ts';
import { sendAsPipeline, stackStore, startStack, type Stack, type SupervisedName } from '../support/stack.ts';
import { until } from '../support/until.ts';

async function send(stack: Pick<Stack, 'brokerUrl' | 'tokens'>, ev: CloudEvent<unknown>): Promise<void> {
  assert.equal(await sendAsPipeline(stack, ev), 202);
}

// Awaits a condition by polling it; what is polled is cheap, and the bound is generous for a loaded 2-core machine.

function event(sessionId: string, type: 'opened' | 'closed', runtimeUrl: string): CloudEvent<unknown> {
  const data = type === 'opened' ? { sessionId, placement: { node: 'sim-node', runtimeUrl, gpuBytes: 4096 } } : { sessionId };
  return new CloudEvent({ id: `${sessionId}-${type}`, source: '/tests/stack/supervision', type: `dev.sessionreaper.session.${type}`, datacontenttype: 'application/json', data });
}

test('a function killed with SIGKILL is restarted on its port, counted, and a session closed meanwhile is still destroyed', { timeout: 180_000 }, async () => {
  const outside = await startEventSink();
  const exits: Array<{ name: SupervisedName; code: number | null }> = [];
  const restarted: Array<{ name: SupervisedName; pid: number }> = [];
  const stack = await startStack({
    forward: outside.url,
    deliveryOverride: { backoffDelayMs: 100 },
    env: { DEADLINE_POLL_MS: '50' },
    onProcessExit: (name, code) => exits.push({ name, code }),
    onProcessRestarted: (name, pid) => restarted.push({ name, pid }),
  });
  try {
    const before = stack.pids()['destroy-dispatch'];
    assert.ok(before !== undefined);
    const sessionId = `supervised-${process.pid}`;
    await send(stack, event(sessionId, 'opened', stack.runtimeUrl));
    await stack.broker.idle(30_000);

    stack.kill('destroy-dispatch', 'SIGKILL');
    await until('the crash to be seen', () => (exits.length > 0 ? true : undefined), 60_000);
    // Closed while destroy-dispatch is down or starting: the delivery waits in the Broker's retries.
    await send(stack, event(sessionId, 'closed', stack.runtimeUrl));

    const status = await until('destroy-dispatch to run again', () => {
      const s = stack.processes()['destroy-dispatch'];
      return s.state === 'running' && s.pid !== before ? s : undefined;
    }, 60_000);
    assert.equal(status.restarts, 1);
    assert.equal(stack.pids()['destroy-dispatch'], status.pid);
    assert.deepEqual(exits.map((e) => e.name), ['destroy-dispatch']);
    assert.deepEqual(restarted, [{ name: 'destroy-dispatch', pid: status.pid }]);
    const health = await fetch(`http://127.0.0.1:${stack.ports['destroy-dispatch']}/healthz`);
    assert.equal(health.status, 200, 'healthy on the port it had');

    const destroyed = await outside.waitForEvent((e) => e.event.type === 'dev.sessionreaper.session.destroyed', { timeoutMs: 60_000 });
    assert.equal((destroyed.event.data as { sessionId: string }).sessionId, sessionId);
    assert.deepEqual(await stack.broker.deadLetters.list(), [], 'nothing was given up on');
    assert.ok(stack.logs['destroy-dispatch'].some((line) => line.includes('restarting in')), 'its log says it was restarted');
  } finally {
    await stack.stop();
    await outside.close();
  }
});

test('a Broker run as its own process and killed with SIGKILL is restarted on the ingress port and carries sessions again', { timeout: 180_000 }, async () => {
  const outside = await startEventSink();
  const stack = await startStack({ brokerProcess: true, forward: outside.url, env: { DEADLINE_POLL_MS: '50' } });
  try {
    const before = stack.pids()['local-broker'];
    assert.ok(before !== undefined, 'the Broker runs as a process of its own');
    stack.kill('local-broker', 'SIGKILL');
    const status = await until('the Broker to run again', () => {
      const s = stack.processes()['local-broker'];
      return s?.state === 'running' && s.pid !== before ? s : undefined;
    }, 60_000);
    assert.equal(status.restarts, 1);
    const sessionId = `broker-restarted-${process.pid}`;
    const { redis, store } = await stackStore(stack);
    try {
      await send(stack, event(sessionId, 'opened', stack.runtimeUrl));
      // No in-process Broker to ask whether it is idle: the session core says when the opening has landed.
      await until('the session to be open', async () => ((await store.inspect(sessionId)) !== null ? true : undefined), 60_000);
    } finally {
      redis.disconnect();
    }
    await send(stack, event(sessionId, 'closed', stack.runtimeUrl));
    const destroyed = await outside.waitForEvent((e) => e.event.type === 'dev.sessionreaper.session.destroyed', { timeoutMs: 60_000 });
    assert.equal((destroyed.event.data as { sessionId: string }).sessionId, sessionId);
  } finally {
    await stack.stop();
    await outside.close();
  }
});
