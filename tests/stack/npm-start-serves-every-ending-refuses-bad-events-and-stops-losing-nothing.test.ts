// `npm start -- --no-demo` as a user runs it: /healthz says 503 until every part is up, then 200; every ending
// (closed, expired, idle, completed, forced, a hold respected) destroys its session once and frees its memory;
// every event the system emits reaches the --forward sink; malformed events are refused (400), oversized ones too
// (413), and one whose data breaks the contract is accepted by the Broker, refused by its function, kept as a dead
// letter with the reason, and changes nothing. Ctrl-C (and SIGTERM) stop it with exit 0, and the deliveries it could
// not finish are kept and go out on the next start.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CloudEvent, HTTP } from 'cloudevents';
import { auditLedger } from '../../functions/core/ledger.ts';
import type { RedisClient } from '../../functions/core/redis/connect.ts';
import { KeySpace } from '../../functions/core/redis/keys.ts';
import type { SessionStore } from '../../functions/core/session-store.ts';
import { openDeadLetterStore } from '../../functions/core/dead-letter-store.ts';
import { startEventSink, type EventSink } from '../support/event-sink.ts';
import { until } from '../support/until.ts';
import { missingEntryFiles, stackStore } from '../support/stack.ts';
import { readStackFile, spawnStart, stopWith, twoFreePorts, waitHealthy, type StackFile, type StartedProcess } from './npm-start-process.ts';

const T = 'dev.sessionreaper.';
const GPU_BYTES = 1 << 20;
const missing = missingEntryFiles();


describe('npm start', { skip: missing.length ? `entry points missing: ${missing.join(', ')}` : false, timeout: 120_000 }, () => {
  let started: StartedProcess;
  let sink: EventSink;
  let info: StackFile;
  let ingress: string;
  let healthAnswers: number[];
  let redis: RedisClient;
  let store: SessionStore;
  let ports: [number, number];
  let pipelineToken: string;
  const opened: string[] = []; // sessionId:incarnation

  before(async () => {
    sink = await startEventSink();
    ports = await twoFreePorts();
    started = spawnStart(['--no-demo', '--port', String(ports[0]), '--runtime-port', String(ports[1]), '--forward', sink.url]);
    healthAnswers = await waitHealthy(started, ports[0]);
    // The Broker answers 200 a moment before start.ts has printed where everything is; on a loaded machine, longer.
    await until('the start banner', () => Promise.resolve(started.output().includes('Ready.')), 30_000);
    info = readStackFile(started.stateDir);
    ingress = `http://127.0.0.1:${ports[0]}/`;
    pipelineToken = readFileSync(info.tokenFiles['inference-pipeline']!, 'utf8').trim();
    ({ redis, store } = await stackStore(info));
  });

  after(async () => {
    redis?.disconnect();
    if (started && started.proc.exitCode === null) await stopWith(started, 'SIGKILL').catch(() => undefined);
    await sink?.close();
    if (started && !process.env.SR_KEEP_STATE) rmSync(started.stateDir, { recursive: true, force: true });
  });

  // As the pipeline, with its token from the stack's token folder, as a user's own pipeline would send.
  async function post(headers: Record<string, string>, body: string | Buffer): Promise<{ status: number; text: string }> {
    const res = await fetch(ingress, { method: 'POST', headers: { authorization: `Bearer ${pipelineToken}`, ...headers }, body });
    return { status: res.status, text: await res.text() };
  }

  // As the pipeline (an operator for session.destroy.requested, the one type an operator sends), naming `tenant`.
  async function send(type: string, data: Record<string, unknown>, opts: { mode?: 'binary' | 'structured'; tenant?: string } = {}): Promise<void> {
    const ce = new CloudEvent({ type: T + type, source: '/tests/stack', id: randomUUID(), data, datacontenttype: 'application/json', ...(opts.tenant === undefined ? {} : { tenant: opts.tenant }) });
    const { headers, body } = opts.mode === 'structured' ? HTTP.structured(ce) : HTTP.binary(ce);
    const as: Record<string, string> = type === 'session.destroy.requested' ? { authorization: `Bearer ${readFileSync(info.tokenFiles.operator!, 'utf8').trim()}` } : {};
    const res = await post({ ...(headers as Record<string, string>), ...as }, body as string);
    assert.equal(res.status, 202, `${type} accepted by the Broker: ${res.text}`);
  }

  async function open(sessionId: string, extra: Record<string, unknown> = {}): Promise<number> {
    await send('session.opened', { sessionId, placement: { node: 'gpu-node-1', runtimeUrl: info.runtimeUrl, gpuBytes: GPU_BYTES }, heartbeatIntervalMs: 60_000, ...extra }, { mode: 'structured' });
    const view = await until(`${sessionId} opened`, async () => {
      const v = await store.inspect(sessionId);
      return v?.state === 'active' ? v : undefined;
    });
    opened.push(`${sessionId}:${view.incarnation}`);
    const res = await fetch(`${info.runtimeUrl}/v1/sessions/${encodeURIComponent(sessionId)}/allocate`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ incarnation: view.incarnation, bytes: GPU_BYTES }),
    });
    assert.equal(res.status, 201, 'the runtime allocates');
    return view.incarnation;
  }

  const destroyed = (sessionId: string) =>
    sink
      .waitForEvent(({ event: e }) => e.type === `${T}session.destroyed` && (e.data as { sessionId: string }).sessionId === sessionId, { timeoutMs: 40_000 })
      .then((r) => r.event.data as { cause: string; incarnation: number; timeline: { stage: string; at: string }[] });

  test('its /healthz answers 503 until every part is up, then 200, and it says where everything is', () => {
    assert.ok(healthAnswers.includes(503), `503 while starting (answers: ${healthAnswers.join(', ')})`);
    assert.equal(healthAnswers.at(-1), 200);
    assert.deepEqual([...new Set(healthAnswers)].sort(), [200, 503]);
    for (const where of [`http://localhost:${ports[0]}/`, `http://localhost:${ports[0]}/healthz`, `http://localhost:${ports[0]}/status`, info.runtimeUrl, info.redisUrl, info.deadLetterDir]) {
      assert.ok(started.output().includes(where), `the start banner names ${where}`);
    }
  });

  test('the status page it names is served, from the stack file too', async () => {
    assert.equal(info.statusUrl, `http://localhost:${ports[0]}/status`);
    const res = await fetch(info.statusUrl);
    assert.equal(res.status, 200);
    assert.match(await res.text(), /<title>session-reaper · status<\/title>[\s\S]*data-figure="destroys-closed"/);
  });

  test('every ending destroys its session once and frees its memory, and the forward sink gets what the system emits', async () => {
    const closed = (async () => {
      const inc = await open('stack-closed');
      await send('session.heartbeat', { sessionId: 'stack-closed' });
      await send('session.closed', { sessionId: 'stack-closed', reason: 'user left' });
      const d = await destroyed('stack-closed');
      assert.equal(d.cause, 'closed');
      assert.equal(d.incarnation, inc);
      assert.deepEqual(d.timeline.map((t) => t.stage), ['claimed', 'gpu_release_requested', 'gpu_released', 'state_purged', 'completed']);
    })();
    const expired = (async () => {
      await open('stack-expired', { heartbeatIntervalMs: 200, missedBeats: 2 });
      assert.equal((await destroyed('stack-expired')).cause, 'expired');
    })();
    const held = (async () => {
      // A 3 s liveness window, so the hold surely lands before it closes, even on a loaded machine.
      await open('stack-held', { heartbeatIntervalMs: 1000, missedBeats: 3 });
      const heldAt = Date.now();
      await send('session.hold', { sessionId: 'stack-held', durationMs: 5000, reason: 'long tool call' });
      const d = await destroyed('stack-held');
      assert.equal(d.cause, 'expired');
      assert.ok(Date.parse(d.timeline[0]!.at) >= heldAt + 4000, 'not reclaimed during the hold');
    })();
    const idle = (async () => {
      // The 'demo' tenant's idle policy (short grace) is part of what npm start configures.
      await open('stack-idle', { tenant: 'demo' });
      await send('session.activity', { sessionId: 'stack-idle', kind: 'message', text: 'hello there' }, { tenant: 'demo' });
      assert.equal((await destroyed('stack-idle')).cause, 'idle');
    })();
    const completed = (async () => {
      await open('stack-completed');
      await send('inference.completed', { sessionId: 'stack-completed', requestId: 'r-1', release: true });
      assert.equal((await destroyed('stack-completed')).cause, 'completed');
    })();
    const forced = (async () => {
      await open('stack-forced');
      await send('session.destroy.requested', { sessionId: 'stack-forced', reason: 'operator' });
      assert.equal((await destroyed('stack-forced')).cause, 'forced');
    })();
    await Promise.all([closed, expired, held, idle, completed, forced]);

    // Each incarnation destroyed once: one distinct destroyed event id per session.
    const ids = new Map<string, Set<string>>();
    for (const { event: e } of sink.events.filter((x) => x.event.type === `${T}session.destroyed`)) {
      const d = e.data as { sessionId: string; incarnation: number };
      const key = `${d.sessionId}:${d.incarnation}`;
      ids.set(key, (ids.get(key) ?? new Set()).add(e.id));
    }
    assert.deepEqual([...ids.keys()].sort(), [...opened].sort());
    for (const [key, set] of ids) assert.equal(set.size, 1, `${key} destroyed once`);
    // The forward sink got the other emitted types too, as CloudEvents.
    const types = new Set(sink.events.map((x) => x.event.type));
    for (const type of ['session.expired', 'session.idle', 'gpu.release.requested', 'gpu.released']) assert.ok(types.has(T + type), `${type} forwarded`);
    assert.ok(!types.has(`${T}session.opened`), 'inbound events are not forwarded, only what the system emits');

    const stats = (await (await fetch(`${info.runtimeUrl}/sim/stats`)).json()) as { releases: Record<string, number>; totalAllocated: number; totalFreed: number; usedBytes: number };
    for (const key of opened) assert.equal(stats.releases[key], 1, `${key} freed once on the runtime`);
    assert.equal(stats.totalFreed, stats.totalAllocated);
    assert.equal(stats.usedBytes, 0);
    const audit = await auditLedger(redis, new KeySpace(info.keyPrefix, 32));
    assert.deepEqual(audit.problems, []);
    assert.equal(audit.totals.registeredBytes, opened.length * GPU_BYTES);
    assert.equal(audit.totals.releasedBytes, audit.totals.registeredBytes);
  });

  test('malformed requests are refused with 400 and oversized ones with 413', async () => {
    const notAnEvent = await post({ 'content-type': 'application/json' }, JSON.stringify({ sessionId: 'x' }));
    assert.equal(notAnEvent.status, 400, 'JSON without CloudEvent attributes');
    const noType = await post({ 'content-type': 'application/cloudevents+json' }, JSON.stringify({ specversion: '1.0', id: 'a', source: '/x', data: {} }));
    assert.equal(noType.status, 400, 'a structured event without a type');
    assert.match(noType.text, /type/);
    const badJson = await post({ 'content-type': 'application/cloudevents+json' }, '{"specversion": "1.0",');
    assert.equal(badJson.status, 400, 'a structured event that is not JSON');
    const big = new CloudEvent({ type: `${T}session.activity`, source: '/tests/stack', id: randomUUID(), datacontenttype: 'application/json', data: { sessionId: 'stack-big', kind: 'message', text: 'x'.repeat(2 * 1024 * 1024) } });
    const { headers, body } = HTTP.binary(big);
    assert.equal((await post(headers as Record<string, string>, body as string)).status, 413);
  });

  test('an event whose data breaks the contract is accepted, refused by its function, kept as a dead letter with the reason, and changes nothing', async () => {
    const inc = await open('stack-intact');
    const before = await store.inspect('stack-intact');
    await send('session.closed', { sessionId: 'stack-intact', notInTheContract: true });
    const deadLetters = await openDeadLetterStore(info.deadLetterDir);
    const dead = await until('the dead letter', async () => (await deadLetters.list()).find((d) => d.trigger === 'destroy-dispatch-session-closed'));
    assert.equal(dead.reason.status, 400);
    assert.equal(dead.attempts, 1, 'a 400 is not retried');
    assert.match(dead.reason.body ?? '', /notInTheContract/);
    const after = await store.inspect('stack-intact');
    assert.equal(after?.state, 'active');
    assert.equal(after?.incarnation, inc);
    assert.equal(after?.deadline, before?.deadline);
    await send('session.closed', { sessionId: 'stack-intact' });
    assert.equal((await destroyed('stack-intact')).cause, 'closed');
  });

  test('Ctrl-C stops it with exit 0, and deliveries it could not finish go out after the next start, which SIGTERM stops', async () => {
    // The outside sink stops answering: forwarded events stay in flight when the stop comes.
    sink.hangNext(1000);
    const before = sink.requests.length;
    await open('stack-last');
    await send('session.closed', { sessionId: 'stack-last' });
    await until('a forwarded event in flight', () => Promise.resolve(sink.requests.length > before));
    redis.disconnect(); // its Redis stops with the stack
    assert.equal(await stopWith(started, 'ctrl-c'), 0, started.output());
    assert.match(started.output(), /Stopped\. \d+ pending deliveries kept for the next start\./);
    assert.ok(!existsSync(join(started.stateDir, 'stack.json')), 'the stack file is removed');
    const pendingFile = join(info.deadLetterDir, '.pending-deliveries.json');
    const kept = JSON.parse(readFileSync(pendingFile, 'utf8')) as { deliveries: { target: string; event: { attributes: { id: string; type: string } } }[] };
    assert.ok(kept.deliveries.length > 0);
    await assert.rejects(fetch(`http://127.0.0.1:${ports[1]}/v1/memory`), 'the runtime is stopped too');

    // The next start on the same state directory delivers them (to the sink it is told to forward to now).
    const second = await startEventSink();
    try {
      const next = spawnStart(['--no-demo', '--port', String(ports[0]), '--runtime-port', String(ports[1]), '--forward', second.url], { stateDir: started.stateDir, viaNode: true });
      try {
        await waitHealthy(next, ports[0]);
        const keptIds = kept.deliveries.filter((d) => d.target === 'forward').map((d) => d.event.attributes.id);
        await second.waitForEvents(keptIds.length, { timeoutMs: 30_000 });
        await until('every kept delivery', () => Promise.resolve(keptIds.every((id) => second.events.some((e) => e.event.id === id))));
        // The rest settles too: a release whose call the first stop cut short is called again once its lease is over.
        await until('nothing pending at the Broker', async () => {
          const stats = (await (await fetch(`http://127.0.0.1:${ports[0]}/admin/stats`)).json()) as { pending: number; inFlight: number };
          return stats.pending === 0 && stats.inFlight === 0;
        }, 60_000, 100);
        assert.equal(await stopWith(next, 'SIGTERM'), 0, next.output());
        assert.match(next.output(), /Stopped\. Nothing pending\./);
      } finally {
        if (next.proc.exitCode === null) next.proc.kill('SIGKILL');
      }
    } finally {
      await second.close();
    }
  });
});
