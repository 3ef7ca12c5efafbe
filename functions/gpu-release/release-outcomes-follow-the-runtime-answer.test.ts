import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startSimRuntime, type SimRuntime } from '../../runtimes/sim-gpu-runtime/server.ts';
import { createRuntimeClient, RuntimeReleaseError, runtimeEndpoint, type RuntimeClient } from '../core/runtime-client.ts';
import { testClientOptions, rejection } from './runtime-client-test-support.ts';

const GiB = 1024 ** 3;

function pick(r: { traceparent: string | undefined; tracestate: string | undefined } | undefined): Record<string, unknown> {
  return { traceparent: r?.traceparent, tracestate: r?.tracestate };
}

describe('release outcomes follow the runtime answer', () => {
  let sim: SimRuntime;
  let client: RuntimeClient;

  before(async () => {
    sim = await startSimRuntime({ basePath: '/rt', seed: 1 });
    client = createRuntimeClient(testClientOptions({ retries: 0 }));
  });
  after(async () => {
    client.shutdown();
    await sim.stop();
  });

  it('reports a 200 as released with the bytes the runtime freed', async () => {
    sim.allocate('chat-1', 3, 2 * GiB);
    const result = await client.release(sim.url, 'chat-1', 3);
    assert.deepEqual(result, { outcome: 'released', freedBytes: 2 * GiB, status: 200, attempts: 1 });
    assert.equal(sim.session('chat-1'), undefined);
  });

  it('reports a 404 session_not_found as gone with 0 bytes', async () => {
    const result = await client.release(sim.url, 'never-allocated', 1);
    assert.deepEqual(result, { outcome: 'gone', freedBytes: 0, status: 404, attempts: 1 });
  });

  it('reports a 409 as superseded and leaves the newer incarnation held', async () => {
    sim.allocate('chat-2', 5, GiB);
    const result = await client.release(sim.url, 'chat-2', 4);
    assert.deepEqual(result, { outcome: 'superseded', freedBytes: 0, status: 409, attempts: 1 });
    assert.deepEqual(sim.session('chat-2'), { sessionId: 'chat-2', incarnation: 5, bytes: GiB });
  });

  it('percent-encodes ids with ":" and "." into one path segment and keys the request by id and incarnation', async () => {
    sim.allocate('tenant-a:chat.42', 7, GiB);
    const result = await client.release(`${sim.url}/`, 'tenant-a:chat.42', 7);
    assert.equal(result.outcome, 'released');
    const sent = sim.requestLog().at(-1);
    assert.equal(sent?.rawPath, '/rt/v1/sessions/tenant-a%3Achat.42/release');
    assert.equal(sent.idempotencyKey, 'tenant-a:chat.42:7');
  });

  it('sends the caller traceparent and tracestate, and drops a malformed traceparent', async () => {
    const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    await client.release(sim.url, 'traced', 1, { traceparent, tracestate: 'vendor=abc' });
    assert.deepEqual(pick(sim.requestLog().at(-1)), { traceparent, tracestate: 'vendor=abc' });
    await client.memory(sim.url, { traceparent });
    assert.deepEqual(pick(sim.requestLog().at(-1)), { traceparent, tracestate: undefined });
    await client.release(sim.url, 'traced', 1, { traceparent: 'not-a-trace', tracestate: 'vendor=abc' });
    assert.deepEqual(pick(sim.requestLog().at(-1)), { traceparent: undefined, tracestate: undefined });
  });

  it('treats a 404 without the API problem code (wrong path prefix) as an error, never as gone', async () => {
    sim.allocate('chat-3', 1, GiB);
    const err = await rejection(client.release(`${new URL(sim.url).origin}/wrong`, 'chat-3', 1));
    assert.equal(err.reason, 'http_status');
    assert.equal(err.status, 404);
    assert.equal(err.retryable, false);
    assert.equal(sim.session('chat-3')?.bytes, GiB);
  });

  it('fails a 200 with a malformed body instead of reporting a release', async () => {
    sim.allocate('chat-4', 1, GiB);
    sim.queueFaults('malformed');
    const err = await rejection(client.release(sim.url, 'chat-4', 1));
    assert.equal(err.reason, 'budget_exhausted');
    assert.ok(err.cause instanceof RuntimeReleaseError);
    assert.equal(err.cause.reason, 'bad_response');
    assert.equal(err.status, 200);
    assert.equal(err.retryable, true);
  });

  it('does not retry a status that cannot succeed as sent', async () => {
    const retrying = createRuntimeClient(testClientOptions({ retries: 3 }));
    try {
      sim.queueFaults(403);
      const before = sim.stats().received;
      const err = await rejection(retrying.release(sim.url, 'chat-5', 1));
      assert.equal(err.reason, 'http_status');
      assert.equal(err.status, 403);
      assert.equal(err.retryable, false);
      assert.equal(err.attempts, 1);
      assert.equal(sim.stats().received - before, 1);
    } finally {
      retrying.shutdown();
    }
  });

  it('refuses arguments the API cannot carry without calling the runtime', async () => {
    const before = sim.stats().received;
    for (const call of [
      () => client.release(sim.url, 'bad/id', 1),
      () => client.release(sim.url, 'chat-6', -1),
      () => client.release(sim.url, 'chat-6', 1.5),
      () => client.release('ftp://example.com', 'chat-6', 1),
      () => client.release('http://user:pw@127.0.0.1:1', 'chat-6', 1),
      () => client.release('not a url', 'chat-6', 1),
    ]) {
      const err = await rejection(call());
      assert.equal(err.reason, 'invalid_request');
      assert.equal(err.retryable, false);
    }
    assert.equal(sim.stats().received, before);
  });

  it('reads the memory summary, which falls by exactly what a release freed', async () => {
    sim.allocate('mem-1', 1, 3 * GiB);
    sim.allocate('mem-2', 1, 5 * GiB);
    const before = await client.memory(sim.url);
    assert.deepEqual(before, sim.memory());
    assert.equal(before.totalBytes, 80 * GiB);
    const { freedBytes } = await client.release(sim.url, 'mem-1', 1);
    const afterRelease = await client.memory(sim.url);
    assert.equal(before.usedBytes - afterRelease.usedBytes, freedBytes);
    assert.equal(freedBytes, 3 * GiB);
    assert.equal(afterRelease.sessions, before.sessions - 1);
  });

  it('fails a malformed memory summary', async () => {
    sim.queueFaults('malformed');
    const err = await rejection(client.memory(sim.url));
    assert.equal((err.cause as RuntimeReleaseError).reason, 'bad_response');
  });

  it('files every form of one base URL under one endpoint key', () => {
    assert.equal(runtimeEndpoint('http://h:8000/rt/'), 'http://h:8000/rt');
    assert.equal(runtimeEndpoint('http://H:8000/rt'), 'http://h:8000/rt');
    assert.equal(runtimeEndpoint('http://h:80'), 'http://h');
    assert.notEqual(runtimeEndpoint('http://h:8000/a'), runtimeEndpoint('http://h:8000/b'));
  });
});
