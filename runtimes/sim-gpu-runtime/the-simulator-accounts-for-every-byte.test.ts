import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startSimRuntime, SimRefusal, type SimRuntime } from './server.ts';

const GiB = 1024 ** 3;

async function post(sim: SimRuntime, path: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: Record<string, unknown>; headers: Headers }> {
  const res = await fetch(`${sim.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Record<string, unknown>, headers: res.headers };
}

function release(sim: SimRuntime, id: string, incarnation: number, key = `${id}:${incarnation}`) {
  return post(sim, `/v1/sessions/${encodeURIComponent(id)}/release`, { incarnation }, { 'idempotency-key': key });
}

async function get(sim: SimRuntime, path: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${sim.url}${path}`);
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

describe('the simulator accounts for every byte', () => {
  let sim: SimRuntime;
  before(async () => {
    sim = await startSimRuntime({ seed: 11, totalBytes: 10 * GiB });
  });
  after(async () => {
    await sim.stop();
  });

  it('lowers usedBytes by exactly the allocation a release frees', async () => {
    const a = await post(sim, '/v1/sessions/acct-1/allocate', { incarnation: 1, bytes: 3 * GiB });
    assert.equal(a.status, 201);
    assert.deepEqual(a.body, { sessionId: 'acct-1', incarnation: 1, bytes: 3 * GiB, usedBytes: 3 * GiB });
    await post(sim, '/v1/sessions/acct-2/allocate', { incarnation: 1, bytes: 2 * GiB });
    assert.deepEqual((await get(sim, '/v1/memory')).body, { totalBytes: 10 * GiB, usedBytes: 5 * GiB, sessions: 2 });

    const r = await release(sim, 'acct-1', 1);
    assert.deepEqual({ status: r.status, body: r.body }, { status: 200, body: { freedBytes: 3 * GiB } });
    assert.deepEqual((await get(sim, '/v1/memory')).body, { totalBytes: 10 * GiB, usedBytes: 2 * GiB, sessions: 1 });
    assert.equal((await get(sim, '/v1/sessions/acct-1')).status, 404);
  });

  it('replays the stored 200 for a repeated Idempotency-Key without freeing again', async () => {
    sim.allocate('acct-3', 4, GiB);
    const first = await release(sim, 'acct-3', 4);
    const again = await release(sim, 'acct-3', 4);
    assert.deepEqual(again.body, first.body);
    assert.equal(again.status, 200);
    assert.equal(again.headers.get('idempotent-replayed'), 'true');
    assert.equal(first.headers.get('idempotent-replayed'), null);
    const stats = sim.stats();
    assert.equal(stats.releases['acct-3:4'], 1);
    assert.equal(stats.replays, 1);
  });

  it('answers 404 for what it does not hold and 409 for an older incarnation than it holds', async () => {
    sim.allocate('acct-4', 5, GiB);
    assert.equal((await release(sim, 'acct-4', 4)).body.code, 'incarnation_superseded');
    assert.equal((await release(sim, 'acct-4', 4)).body.heldIncarnation, 5);
    assert.equal((await release(sim, 'acct-4', 6)).body.code, 'session_not_found');
    assert.equal((await release(sim, 'nobody', 1)).status, 404);
    assert.equal(sim.session('acct-4')?.bytes, GiB, 'neither answer freed anything');
  });

  it('grows a held incarnation, replaces an older one, and refuses a stale or released one', async () => {
    sim.allocate('acct-5', 1, GiB);
    assert.equal(sim.allocate('acct-5', 1, GiB).bytes, 2 * GiB);
    const supersededBefore = sim.stats().totalSuperseded;
    assert.deepEqual(sim.allocate('acct-5', 2, GiB), { sessionId: 'acct-5', incarnation: 2, bytes: GiB });
    assert.equal(sim.stats().totalSuperseded - supersededBefore, 2 * GiB);
    assert.throws(() => sim.allocate('acct-5', 1, GiB), (e: unknown) => e instanceof SimRefusal && e.status === 409);
    await release(sim, 'acct-5', 2);
    const again = await post(sim, '/v1/sessions/acct-5/allocate', { incarnation: 2, bytes: GiB });
    assert.deepEqual([again.status, again.body.code], [409, 'incarnation_released']);
  });

  it('refuses an allocation beyond its memory with 507 and changes nothing', async () => {
    const before = sim.memory();
    const r = await post(sim, '/v1/sessions/acct-6/allocate', { incarnation: 1, bytes: before.totalBytes - before.usedBytes + 1 });
    assert.deepEqual([r.status, r.body.code], [507, 'insufficient_memory']);
    assert.deepEqual(sim.memory(), before);
  });

  it('requires the Idempotency-Key to be the session id and incarnation', async () => {
    sim.allocate('acct-7', 1, GiB);
    const missing = await post(sim, '/v1/sessions/acct-7/release', { incarnation: 1 });
    assert.deepEqual([missing.status, missing.body.code], [400, 'idempotency_key_required']);
    const wrong = await release(sim, 'acct-7', 1, 'acct-7:2');
    assert.deepEqual([wrong.status, wrong.body.code], [400, 'idempotency_key_mismatch']);
    const badBody = await post(sim, '/v1/sessions/acct-7/release', { incarnation: 'one' }, { 'idempotency-key': 'acct-7:1' });
    assert.deepEqual([badBody.status, badBody.body.code], [400, 'invalid_request']);
    const badId = await release(sim, 'acct/7', 1);
    assert.deepEqual([badId.status, badId.body.code], [400, 'invalid_session_id']);
    assert.equal(sim.session('acct-7')?.bytes, GiB);
  });

  it('balances its books: allocated = freed + superseded + used, with one release per freed key', () => {
    const s = sim.stats();
    assert.equal(s.totalAllocated, s.totalFreed + s.totalSuperseded + s.usedBytes);
    assert.ok(Object.values(s.releases).every((n) => n === 1));
    assert.equal(s.received, Object.values(s.requests).reduce((a, b) => a + b, 0) + s.hangs);
  });

  it('answers 405 with Allow for a wrong method and 404 route_not_found off the API', async () => {
    const res = await fetch(`${sim.url}/v1/memory`, { method: 'DELETE' });
    assert.equal(res.status, 405);
    assert.equal(res.headers.get('allow'), 'GET');
    await res.body?.cancel();
    const off = await get(sim, '/v2/memory');
    assert.deepEqual([off.status, off.body.code], [404, 'route_not_found']);
  });
});

describe('the simulator injects faults on request', () => {
  it('draws the same faults from the same seed', async () => {
    const draw = async (seed: number) => {
      const sim = await startSimRuntime({ seed, errorRate: 0.3, rateLimitRate: 0.2 });
      try {
        const statuses: number[] = [];
        for (let i = 0; i < 30; i++) statuses.push((await get(sim, '/v1/memory')).status);
        return statuses;
      } finally {
        await sim.stop();
      }
    };
    const [a, b, c] = [await draw(99), await draw(99), await draw(100)];
    assert.deepEqual(a, b);
    assert.notDeepEqual(a, c);
    assert.ok(a.includes(503) && a.includes(429) && a.includes(200));
  });

  it('answers 503 to everything while down, and normally again once recovered', async () => {
    const sim = await startSimRuntime({ seed: 1 });
    try {
      sim.allocate('down-1', 1, GiB);
      sim.setFaults({ down: true });
      for (let i = 0; i < 5; i++) assert.equal((await release(sim, 'down-1', 1)).status, 503);
      assert.equal(sim.session('down-1')?.bytes, GiB, 'a 503 applies nothing');
      sim.setFaults({ down: false });
      assert.equal((await release(sim, 'down-1', 1)).status, 200);
    } finally {
      await sim.stop();
    }
  });

  it('sends Retry-After with each 429', async () => {
    const sim = await startSimRuntime({ seed: 1, rateLimitRate: 1, retryAfterSeconds: 7 });
    try {
      const res = await fetch(`${sim.url}/v1/memory`);
      assert.equal(res.status, 429);
      assert.equal(res.headers.get('retry-after'), '7');
      await res.body?.cancel();
    } finally {
      await sim.stop();
    }
  });

  it('applies a hung release and keeps the answer for the retry', async () => {
    const sim = await startSimRuntime({ seed: 1 });
    try {
      sim.allocate('hang-1', 1, GiB);
      sim.queueFaults('hang');
      const lost = fetch(`${sim.url}/v1/sessions/hang-1/release`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': 'hang-1:1' },
        body: JSON.stringify({ incarnation: 1 }),
        signal: AbortSignal.timeout(200),
      });
      await assert.rejects(lost, { name: 'TimeoutError' });
      assert.equal(sim.stats().hangs, 1);
      assert.equal(sim.session('hang-1'), undefined, 'applied although never answered');
      const retried = await release(sim, 'hang-1', 1);
      assert.deepEqual([retried.status, retried.body.freedBytes, retried.headers.get('idempotent-replayed')], [200, GiB, 'true']);
      assert.equal(sim.stats().releases['hang-1:1'], 1);
    } finally {
      await sim.stop();
    }
  });

  it('serves the API under a base path, and nothing outside it', async () => {
    const sim = await startSimRuntime({ seed: 1, basePath: '/rt/' });
    try {
      assert.match(sim.url, /\/rt$/);
      assert.equal((await get(sim, '/v1/memory')).status, 200);
      const outside = await fetch(`${new URL(sim.url).origin}/v1/memory`);
      assert.equal(outside.status, 404);
      await outside.body?.cancel();
    } finally {
      await sim.stop();
    }
  });

  it('validates fault settings, and changes them over HTTP', async () => {
    const sim = await startSimRuntime({ seed: 1 });
    try {
      assert.throws(() => sim.setFaults({ errorRate: 1.5 }), RangeError);
      assert.throws(() => sim.setFaults({ errorRate: 0.6, hangRate: 0.6 }), RangeError);
      assert.throws(() => sim.setFaults({ latencyMs: -1 }), RangeError);
      const res = await fetch(`${sim.url}/sim/faults`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ down: true, unknown: 1 }) });
      assert.equal(res.status, 200);
      await res.body?.cancel();
      assert.equal(sim.faults().down, true);
      assert.equal((await get(sim, '/v1/memory')).status, 503);
      await assert.rejects(startSimRuntime({ errorRate: 2 }), RangeError);
    } finally {
      await sim.stop();
    }
  });
});
