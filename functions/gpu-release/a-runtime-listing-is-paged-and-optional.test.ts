// The runtime client's listing (GET /v1/sessions) against the simulator: pages follow `next` to the end, a runtime
// without a listing is told apart from a failing one, and a listing that cannot be trusted is an error.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startSimRuntime, type SimRuntime } from '../../runtimes/sim-gpu-runtime/server.ts';
import { createRuntimeClient, type HeldSession } from '../core/runtime-client.ts';
import { rejection, testClientOptions } from './runtime-client-test-support.ts';

describe('a runtime listing is paged and optional', () => {
  let sim: SimRuntime;
  let unlisted: SimRuntime;

  before(async () => {
    [sim, unlisted] = await Promise.all([startSimRuntime({ seed: 11, basePath: '/rt' }), startSimRuntime({ seed: 12, listing: false })]);
  });
  after(async () => {
    await Promise.all([sim.stop(), unlisted.stop()]);
  });

  it('pages through every session held, in id order, following next', async () => {
    const ids = Array.from({ length: 7 }, (_, n) => `list:${String(n).padStart(2, '0')}`);
    for (const [n, id] of ids.entries()) sim.allocate(id, n + 1, 100 + n);
    const client = createRuntimeClient(testClientOptions());
    try {
      const seen: HeldSession[] = [];
      let after: string | undefined;
      let pages = 0;
      for (;;) {
        const page = await client.listSessions(sim.url, { limit: 3, ...(after === undefined ? {} : { after }) });
        assert.ok(!('unsupported' in page));
        pages += 1;
        seen.push(...page.sessions);
        if (page.next === undefined) break;
        after = page.next;
      }
      assert.equal(pages, 3);
      assert.deepEqual(seen, ids.map((sessionId, n) => ({ sessionId, incarnation: n + 1, bytes: 100 + n })));
    } finally {
      client.shutdown();
    }
  });

  it('says a runtime answering 501 has no listing, and retries a runtime that is only unavailable', async () => {
    const client = createRuntimeClient(testClientOptions());
    try {
      assert.deepEqual(await client.listSessions(unlisted.url), { unsupported: true, status: 501 });
      sim.queueFaults('error');
      const page = await client.listSessions(sim.url, { limit: 1 });
      assert.ok(!('unsupported' in page) && page.sessions.length === 1, 'the 503 was retried');
    } finally {
      client.shutdown();
    }
  });

  it('refuses a page that does not move forward', async () => {
    const client = createRuntimeClient(testClientOptions({
      retries: 0,
      fetchImpl: () => Promise.resolve(new Response(JSON.stringify({ sessions: [], next: 'a' }), { status: 200 })),
    }));
    try {
      const err = await rejection(client.listSessions('http://runtime.test:8000', { after: 'b' }));
      assert.equal(err.status, 200);
      assert.match(err.message, /is not a session page/);
    } finally {
      client.shutdown();
    }
  });
});
