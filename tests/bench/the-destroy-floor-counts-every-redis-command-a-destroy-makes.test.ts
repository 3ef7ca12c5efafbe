// The destroy bench reads a destroy's CPU against a floor built from the exchanges a destroy makes
// (machine-floor.ts, DESTROY_PATH), so the floor is only as true as that count. This counts, on a private
// redis-server with nothing else connected, the commands the real handlers send for one destroy as the Broker drives
// it: destroy-dispatch on session.closed (claim, admission, the runtime's rate token, checkpoint), gpu-release on
// gpu.release.requested (begin and settle the runtime call, against a simulated runtime), destroy-dispatch on
// gpu.released (booking, purge and read together, then the slot and the completion). A change of the destroy's path
// that changes them fails here until DESTROY_REDIS says so. Which of them share a round trip MONITOR cannot tell: the
// three sent together are checked by their order, and `pipelined` is read from the code (released() in
// functions/destroy-dispatch/handle.ts sends them in one settled([...])).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, test } from 'node:test';
import { CloudEvent, HTTP } from 'cloudevents';
import { Redis } from 'ioredis';
import { EventType, type GpuReleaseRequested } from '../../functions/core/contract/events.ts';
import { parseInbound } from '../../functions/core/contract/parse.ts';
import { createCore, type CoreDeps } from '../../functions/core/function-host.ts';
import { createGpuReleaseDeps, GPU_RELEASE_ACCEPTS, handle as handleRelease, readGpuReleaseSettings, type GpuReleaseDeps } from '../../functions/gpu-release/handle.ts';
import { handle as handleDestroy } from '../../functions/destroy-dispatch/handle.ts';
import { events, startHarness, type Harness } from '../../functions/destroy-dispatch/destroy-dispatch-test-support.ts';
import { startSimRuntime, type SimRuntime } from '../../runtimes/sim-gpu-runtime/server.ts';
import { loadScriptSources } from '../../functions/core/redis/scripts.ts';
import { startRedis, type RedisProcess } from '../support/redis-harness.ts';
import { DESTROY_PATH, DESTROY_REDIS } from './machine-floor.ts';

let redis: RedisProcess;
let sim: SimRuntime;
let h: Harness;
let release: { deps: CoreDeps & GpuReleaseDeps; close: () => Promise<void> };
let monitorClient: Redis;

before(async () => {
  [redis, sim] = await Promise.all([startRedis(), startSimRuntime({ seed: 5 })]);
  // MONITOR is a single server's command (not Cluster's), on a connection of its own.
  monitorClient = new Redis(redis.url, { lazyConnect: true });
  await monitorClient.connect();
  const env = { REDIS_URL: redis.url, REDIS_CLUSTER_NODES: '', OUTBOUND_ALLOWED_CIDRS: '127.0.0.0/8', RUNTIMES: JSON.stringify([{ name: 'sim', url: sim.url }]) };
  h = await startHarness('single', { env });
  const core = createCore({ name: 'gpu-release', env: { ...h.env, LOG_LEVEL: 'silent' } });
  await core.ready();
  const deps = Object.assign(Object.create(core.deps) as CoreDeps, createGpuReleaseDeps(core, readGpuReleaseSettings({})));
  release = {
    deps,
    close: async () => {
      deps.runtime.shutdown();
      await core.close();
    },
  };
});

after(async () => {
  monitorClient?.disconnect();
  await release?.close();
  await h?.close();
  await Promise.all([sim?.stop(), redis?.stop()]);
});

// The scripts by the SHA1 EVALSHA names them by, so a count that changes says which.
const scriptNames = new Map(loadScriptSources().map((s) => [createHash('sha1').update(s.lua).digest('hex'), s.name]));

// The commands clients sent while `work` ran, as MONITOR reports them (those a script runs show as 'lua': not sent).
// A command MONITOR reports is processed; an ECHO sent after the work and seen back marks the end of its commands.
// TIME is left out: a core's clock asks Redis for it every 30 s, whatever it is doing (redis-clock.ts).
async function commandsOf(work: () => Promise<unknown>): Promise<string[]> {
  const monitor = await monitorClient.monitor();
  const seen: string[] = [];
  let marked: () => void = () => undefined;
  const mark = `floor-mark-${Math.random()}`;
  const end = new Promise<void>((resolve) => (marked = resolve));
  const onCommand = (_time: string, args: string[], source: string) => {
    const name = args[0]!.toLowerCase();
    if (name === 'echo' && args[1] === mark) marked();
    else if (source !== 'lua' && name !== 'time') seen.push(name === 'evalsha' ? (scriptNames.get(args[1]!) ?? 'evalsha') : name);
  };
  monitor.on('monitor', onCommand);
  try {
    await work();
    await h.deps.redis.echo(mark);
    await end;
  } finally {
    // Nothing the monitor still reports (the next phase's connections) joins this count.
    monitor.off('monitor', onCommand);
    monitor.disconnect();
  }
  return [...seen];
}

// One destroy driven as the Broker drives it; the commands each request sent.
async function destroyOnce(sessionId: string): Promise<{ closed: string[]; called: string[]; released: string[] }> {
  const placement = { node: 'gpu-node-a', runtimeUrl: sim.url, gpuBytes: 1 << 20 };
  h.setNow(Date.now());
  const incarnation = await h.open(sessionId, placement);
  const alloc = await fetch(`${sim.url}/v1/sessions/${sessionId}/allocate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ incarnation, bytes: placement.gpuBytes }) });
  assert.equal(alloc.status, 201);

  const closed = await commandsOf(() => handleDestroy(events.closed(sessionId), h.deps));
  const [asked] = h.emitted(EventType.GpuReleaseRequested, sessionId);
  assert.ok(asked, 'the close asked for the release');
  const ce = new CloudEvent({ specversion: '1.0', id: asked.event.id, source: asked.event.source, type: EventType.GpuReleaseRequested, datacontenttype: 'application/json', data: asked.event.data as GpuReleaseRequested });
  const message = HTTP.binary(ce);
  const requested = parseInbound({ headers: message.headers, body: message.body as string }, { maxBytes: 1 << 20, accept: GPU_RELEASE_ACCEPTS });
  const called = await commandsOf(() => handleRelease(requested, release.deps));
  const [freed] = h.emitted(EventType.GpuReleased, sessionId);
  assert.ok(freed, 'the runtime freed it');
  const { token, freedBytes } = freed.event.data as { token: string; freedBytes: number };

  const released = await commandsOf(() => handleDestroy(events.released(sessionId, incarnation, placement.node, freedBytes, { token }), h.deps));
  assert.equal(h.emitted(EventType.SessionDestroyed, sessionId).length, 1, 'and the session was destroyed');
  return { closed, called, released };
}

test('a destroy sends Redis the commands the floor counts, request by request', async () => {
  // The first one also loads the scripts into this new Redis.
  await destroyOnce('floor-warm');
  const sent = await destroyOnce('floor-1');
  const counts = { closed: sent.closed.length, called: sent.called.length, released: sent.released.length };
  assert.deepEqual(counts, DESTROY_REDIS.commands, `commands sent: ${JSON.stringify(sent)}`);
  // The booking, the purge and the read for session.destroyed go out together (the hmget is that read).
  assert.deepEqual(sent.released.slice(0, 3), ['recordRelease', 'purgeSession', 'hmget']);
  assert.equal(DESTROY_PATH.redisRoundTrips, counts.closed + counts.called + counts.released - DESTROY_REDIS.pipelined);
});
