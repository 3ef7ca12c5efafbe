// OnDestroy hooks: run in order at their stage, once per incarnation; a failing hook answers 503 so the Broker
// redelivers and it runs again, the GPU release is requested regardless, and session.destroyed waits for every
// hook. The default hooks do real work: a POST to the router, a DEL of the conversation cache keys.
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { EventType } from '../core/contract/events.ts';
import { TOPOLOGIES, uniquePrefix } from '../../tests/support/redis.ts';
import { events, placementA, startHarness, T0, type Harness } from './destroy-dispatch-test-support.ts';
import { DestroyHooks, purgeConversationCacheHook, type HookStage } from './hooks.ts';
import { releaseMember } from './storm-guard.ts';

/** A hook that records its calls and fails while `failures` says so. */
function recording(calls: string[], failures: Map<string, number>) {
  return (name: string, stage: HookStage) => ({
    name,
    stage,
    run(ctx: { sessionId: string; stage: HookStage }) {
      calls.push(`${ctx.sessionId}:${name}@${ctx.stage}`);
      const left = failures.get(name) ?? 0;
      if (left > 0) {
        failures.set(name, left - 1);
        return Promise.reject(new Error(`${name} is down`));
      }
      return Promise.resolve();
    },
  });
}

/** A real HTTP server standing in for the inference router. */
async function startRouter() {
  const bodies: unknown[] = [];
  let status = 204;
  /** Called as each request arrives, e.g. to note what the event sink had received by then. */
  let observe: () => void = () => undefined;
  const server = createServer((req: IncomingMessage, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      observe();
      bodies.push({ path: req.url, idempotencyKey: req.headers['idempotency-key'], body: JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown });
      res.writeHead(status).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/deregister`,
    bodies,
    answer(code: number) {
      status = code;
    },
    onRequest(fn: () => void) {
      observe = fn;
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describe('the hook registry', () => {
  test('refuses a second hook of the same name, a name that is not kebab-case, and an unknown stage', () => {
    const hooks = new DestroyHooks().registerHook({ name: 'one', stage: 'claimed', run: () => Promise.resolve() });
    assert.throws(() => hooks.registerHook({ name: 'one', stage: 'gpu_released', run: () => Promise.resolve() }), /registered already/);
    assert.throws(() => hooks.registerHook({ name: 'Not Kebab', stage: 'claimed', run: () => Promise.resolve() }), /kebab-case/);
    assert.throws(() => hooks.registerHook({ name: 'two', stage: 'completed' as HookStage, run: () => Promise.resolve() }), /not one of/);
    assert.throws(() => purgeConversationCacheHook([' ', '']), /at least one key template/);
    assert.deepEqual(hooks.at('claimed').map((h) => h.name), ['one']);
  });
});

for (const topology of TOPOLOGIES) {
  describe(`OnDestroy hooks on ${topology} Redis`, () => {
    const calls: string[] = [];
    const failures = new Map<string, number>();
    let h: Harness;
    before(async () => {
      const hook = recording(calls, failures);
      const hooks = new DestroyHooks()
        .registerHook(hook('deregister', 'claimed'))
        .registerHook(hook('drain', 'claimed'))
        .registerHook(hook('audit', 'gpu_released'))
        .registerHook(hook('cleanup', 'state_purged'));
      h = await startHarness(topology, { hooks });
    });
    after(async () => {
      await h.close();
    });
    const callsOf = (sessionId: string) => calls.filter((c) => c.startsWith(`${sessionId}:`)).map((c) => c.slice(sessionId.length + 1));

    test('hooks run in registration order at their stage, and once per incarnation however often events repeat', async () => {
      h.setNow(T0);
      const inc = await h.open('hooks-1');
      const closed = events.closed('hooks-1');
      assert.equal(await h.replica.deliver(closed), 'ok');
      assert.deepEqual(callsOf('hooks-1'), ['deregister@claimed', 'drain@claimed']);
      assert.equal(await h.replica.deliver(closed), 'ok');
      const released = events.released('hooks-1', inc);
      assert.equal(await h.replica.deliver(released), 'ok');
      assert.equal(await h.replica.deliver(released), 'ok');
      assert.deepEqual(callsOf('hooks-1'), ['deregister@claimed', 'drain@claimed', 'audit@gpu_released', 'cleanup@state_purged']);
      assert.equal(h.emitted(EventType.SessionDestroyed, 'hooks-1').length, 1);
    });

    test('a failing claimed hook answers 503 but the release is requested; redelivery runs it again until it succeeds', async () => {
      h.setNow(T0);
      const inc = await h.open('hooks-2');
      failures.set('drain', 2);
      const closed = events.closed('hooks-2');
      assert.equal(await h.replica.deliver(closed), 503);
      assert.deepEqual(h.emitted(EventType.GpuReleaseRequested, 'hooks-2').map((e) => e.event.id), [`hooks-2/${inc}/release/1`], 'the release went out regardless');
      assert.equal((await h.deps.store.inspect('hooks-2'))?.stage, 'gpu_release_requested');
      assert.equal(await h.replica.deliver(closed), 503);
      assert.equal(await h.replica.deliver(closed), 'ok');
      assert.deepEqual(callsOf('hooks-2'), ['deregister@claimed', 'drain@claimed', 'drain@claimed', 'drain@claimed'], 'a hook that succeeded is not run again');
      assert.deepEqual(new Set(h.emitted(EventType.GpuReleaseRequested, 'hooks-2').map((e) => e.event.id)), new Set([`hooks-2/${inc}/release/1`]));
    });

    test('a hook still failing when the release is confirmed holds back session.destroyed, never the release booking', async () => {
      h.setNow(T0);
      const inc = await h.open('hooks-3');
      failures.set('deregister', 100);
      assert.equal(await h.replica.deliver(events.closed('hooks-3')), 503);
      const released = events.released('hooks-3', inc);
      assert.equal(await h.replica.deliver(released), 503);
      const view = await h.deps.store.inspect('hooks-3');
      assert.equal(view?.stage, 'gpu_released', 'the release is booked');
      assert.ok(!(await h.deps.stormGuard.inFlight(placementA.node, h.now())).includes(releaseMember('hooks-3', inc)), 'and its slot freed');
      assert.equal(h.emitted(EventType.SessionDestroyed, 'hooks-3').length, 0);

      failures.set('deregister', 0);
      assert.equal(await h.replica.deliver(released), 'ok');
      assert.equal(h.emitted(EventType.SessionDestroyed, 'hooks-3').length, 1);
      assert.deepEqual(callsOf('hooks-3').slice(-4), ['deregister@claimed', 'drain@claimed', 'audit@gpu_released', 'cleanup@state_purged']);
    });

    test('a failing state_purged hook leaves the destroy at state_purged until the watchdog resumes it', async () => {
      h.setNow(T0);
      const inc = await h.open('hooks-4');
      failures.set('cleanup', 1);
      assert.equal(await h.replica.deliver(events.closed('hooks-4')), 'ok');
      assert.equal(await h.replica.deliver(events.released('hooks-4', inc)), 503);
      assert.equal((await h.deps.store.inspect('hooks-4'))?.stage, 'state_purged');
      assert.equal(await h.replica.deliver(events.resume('hooks-4', inc, 'state_purged')), 'ok');
      assert.equal(h.emitted(EventType.SessionDestroyed, 'hooks-4').length, 1);
      assert.deepEqual(callsOf('hooks-4'), ['deregister@claimed', 'drain@claimed', 'audit@gpu_released', 'cleanup@state_purged', 'cleanup@state_purged']);
    });
  });

  describe(`the default hooks on ${topology} Redis`, () => {
    let h: Harness;
    let router: Awaited<ReturnType<typeof startRouter>>;
    const prefix = uniquePrefix();
    before(async () => {
      router = await startRouter();
      // The cache keys live under the test's prefix, so its cleanup removes whatever a failing test leaves.
      h = await startHarness(topology, {
        prefix,
        env: { ROUTER_DEREGISTER_URL: router.url, ROUTER_DEREGISTER_TIMEOUT_MS: '2000', OUTBOUND_ALLOWED_CIDRS: '127.0.0.0/8', CONVERSATION_CACHE_KEYS: `${prefix}:conv:{sessionId}, ${prefix}:conv:{sessionId}:{incarnation}` },
      });
    });
    after(async () => {
      await h.close();
      await router.close();
    });

    test('the router is told the session is gone before its release is requested, and its conversation cache is deleted', async () => {
      h.setNow(T0);
      const inc = await h.open('default-1');
      const cacheKeys = [`${prefix}:conv:default-1`, `${prefix}:conv:default-1:${inc}`];
      for (const key of cacheKeys) await h.deps.redis.set(key, 'cached conversation');
      await h.deps.redis.set(`${prefix}:conv:default-2`, 'another session');
      const releasesSeenByRouter: number[] = [];
      router.onRequest(() => releasesSeenByRouter.push(h.emitted(EventType.GpuReleaseRequested, 'default-1').length));

      assert.equal(await h.replica.deliver(events.closed('default-1')), 'ok');
      assert.deepEqual(router.bodies, [
        {
          path: '/deregister',
          idempotencyKey: `default-1:${inc}`,
          body: { sessionId: 'default-1', incarnation: inc, node: placementA.node, runtimeUrl: placementA.runtimeUrl, cause: 'closed' },
        },
      ]);
      assert.deepEqual(releasesSeenByRouter, [0], 'the router heard of it before the release was requested');
      assert.equal(h.emitted(EventType.GpuReleaseRequested, 'default-1').length, 1);
      for (const key of cacheKeys) assert.equal(await h.deps.redis.exists(key), 1, 'the cache is kept until the state is purged');

      assert.equal(await h.replica.deliver(events.released('default-1', inc)), 'ok');
      for (const key of cacheKeys) assert.equal(await h.deps.redis.exists(key), 0);
      assert.equal(await h.deps.redis.exists(`${prefix}:conv:default-2`), 1, "another session's cache is untouched");
      assert.equal(h.emitted(EventType.SessionDestroyed, 'default-1').length, 1);
      assert.equal(router.bodies.length, 1);
    });

    test('a router answering 500 fails the hook (503) after the release was requested; 404 counts as done', async () => {
      h.setNow(T0);
      const inc = await h.open('default-3');
      router.answer(500);
      const closed = events.closed('default-3');
      assert.equal(await h.replica.deliver(closed), 503);
      assert.equal(h.emitted(EventType.GpuReleaseRequested, 'default-3').length, 1);
      router.answer(404);
      assert.equal(await h.replica.deliver(closed), 'ok');
      router.answer(204);
      assert.equal(await h.replica.deliver(events.released('default-3', inc)), 'ok');
      assert.equal(h.emitted(EventType.SessionDestroyed, 'default-3').length, 1);
    });
  });
}
