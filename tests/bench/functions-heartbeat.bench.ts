// heartbeat-timeout and its deadline engine under load (part of `npm run bench:functions`). A benchmark, not a test:
// it prints figures with the machine and exits 1 if a target is missed.
//
// (a) Detection lag: BENCH_SESSIONS (default 1,000,000) sessions are tracked in a private redis-server; heartbeats are
//     applied through the core at BENCH_HEARTBEATS_PER_S (default 100,000/s) while the deadline engine runs as its
//     own process (functions/heartbeat-timeout/engine.ts) and emits to a real HTTP event sink. BENCH_EXPIRING
//     (default 20,000) of them beat every second with a 3 s window and stop at random moments spread over
//     BENCH_SPREAD_MS, so their deadlines come due throughout. Lag = the emitted event's time (set when the engine
//     sends it) − the deadline. Targets: p99 ≤ 10 ms; no false expiry (a session still beating); no missed expiry
//     (none emitted within 2 s of the deadline).
// (b) Throughput: the real functions-framework process of heartbeat-timeout, blasted over keep-alive connections for
//     BENCH_HTTP_SECONDS, first with one binary-mode heartbeat per request (as the Broker delivers), then with
//     batches of BENCH_HTTP_BATCH (default 100) over BENCH_HTTP_BATCH_CONNECTIONS (default 8) connections in
//     CloudEvents' batched content mode (as a producer of heartbeats posts them straight to the function). Target:
//     ≥ 10,000 events/s, no errors; both figures are printed.
import { Agent, request } from 'node:http';
import { cpus, loadavg, totalmem } from 'node:os';
import { performance } from 'node:perf_hooks';
import { Worker, isMainThread, parentPort } from 'node:worker_threads';
import { setTimeout as sleep } from 'node:timers/promises';
import { EventType } from '../../functions/core/contract/events.ts';
import { KeySpace } from '../../functions/core/redis/keys.ts';
import { Scripts } from '../../functions/core/redis/scripts.ts';
import { createRedisClient, connectRedis } from '../../functions/core/redis/connect.ts';
import { SessionStore, eventFingerprint } from '../../functions/core/session-store.ts';
import { startDeadlineEngine, startHeartbeatFunction } from '../../functions/heartbeat-timeout/heartbeat-test-support.ts';
import { startEventSink } from '../support/event-sink.ts';
import { startRedis } from '../support/redis-harness.ts';

const SESSIONS = Number(process.env.BENCH_SESSIONS ?? 1_000_000);
const EXPIRING = Number(process.env.BENCH_EXPIRING ?? 20_000);
const HEARTBEATS_PER_S = Number(process.env.BENCH_HEARTBEATS_PER_S ?? 100_000);
const SPREAD_MS = Number(process.env.BENCH_SPREAD_MS ?? 20_000);
const TICK_MS = Number(process.env.BENCH_TICK_MS ?? 5);
const HTTP_SECONDS = Number(process.env.BENCH_HTTP_SECONDS ?? 10);
const HTTP_CONNECTIONS = Number(process.env.BENCH_HTTP_CONNECTIONS ?? 64);
const HTTP_BATCH = Number(process.env.BENCH_HTTP_BATCH ?? 100);
const HTTP_BATCH_CONNECTIONS = Number(process.env.BENCH_HTTP_BATCH_CONNECTIONS ?? 8);
const BUCKETS = 32;
const KEEP_WINDOW_MS = 60_000;
const EXPIRING_INTERVAL_MS = 1000;
const EXPIRING_WINDOW_MS = 3 * EXPIRING_INTERVAL_MS;
const MISSED_AFTER_MS = 2000;
const TARGET_P99_MS = 10;
const TARGET_EVENTS_PER_S = 10_000;
// BENCH_CPU_PROF_DIR=dir: the deadline engine and the function write a V8 CPU profile there when they stop.
const CPU_PROF_DIR = process.env.BENCH_CPU_PROF_DIR;

const keepId = (i: number) => `k-${String(i).padStart(7, '0')}`;
const expId = (i: number) => `x-${String(i).padStart(6, '0')}`;
const fmt = (n: number) => Math.round(n).toLocaleString('en');

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/** What the sink thread reports of each session.expired it accepted. */
interface Expiry {
  id: string;
  time: string;
  data: { sessionId: string; deadline: string; lagMs: number };
}

/** A real HTTP event sink in its own thread, so its answers never wait for the heartbeat driver's event loop. */
async function startSinkThread(): Promise<{ url: string; expiries(): Promise<Expiry[]>; close(): Promise<void> }> {
  const worker = new Worker(new URL(import.meta.url), { workerData: { role: 'sink' } });
  const next = <T>() => new Promise<T>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  const { url } = await next<{ url: string }>();
  return {
    url,
    async expiries() {
      const reply = next<Expiry[]>();
      worker.postMessage('collect');
      return reply;
    },
    async close() {
      const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
      worker.postMessage('close');
      await exited;
    },
  };
}

async function sinkThread(): Promise<void> {
  const sink = await startEventSink();
  parentPort?.on('message', (msg: string) => {
    if (msg === 'collect') {
      parentPort?.postMessage(
        sink.events.filter((e) => e.event.type === EventType.SessionExpired).map((e): Expiry => ({ id: e.event.id, time: e.event.time ?? '', data: e.event.data as Expiry['data'] })),
      );
    } else {
      void sink.close().then(() => parentPort?.close());
    }
  });
  parentPort?.postMessage({ url: sink.url });
}

async function main(): Promise<void> {
  const server = await startRedis();
  const redis = createRedisClient({ REDIS_URL: server.url, REDIS_CLUSTER_NODES: '', REDIS_PASSWORD: '', REDIS_TLS: false, CORE_TIMEOUT_MS: 30_000 });
  await connectRedis(redis);
  const store = new SessionStore(redis, new KeySpace('sr', BUCKETS), await Scripts.register(redis), { tombstoneTtlMs: 86_400_000 });
  const version = /redis_version:(\S+)/.exec(await redis.info('server'))?.[1];
  console.log(
    `bench:functions heartbeat-timeout — Node ${process.version}, Redis ${version}, ${cpus().length} × ${cpus()[0]?.model}, ` +
      `${(totalmem() / 2 ** 30).toFixed(0)} GiB, load average at start ${loadavg()[0]?.toFixed(2)}`,
  );
  let failed = false;
  const miss = (what: string) => {
    console.log(`  MISSED: ${what}`);
    failed = true;
  };

  // ---------------- (a) detection lag with the engine running ----------------
  const sink = await startSinkThread();
  const placement = (i: number) => ({ node: `gpu-node-${i % 8}`, runtimeUrl: `http://runtime-${i % 8}.inference.svc:8000`, gpuBytes: 2 ** 31 });

  async function openAll(count: number, id: (i: number) => string, windowMs: number, deadlines?: Float64Array, liveFrom?: (i: number, now: number) => number): Promise<number> {
    const started = performance.now();
    const WAVE = 8000;
    for (let base = 0; base < count; base += WAVE) {
      const now = Date.now();
      const wave: Promise<unknown>[] = [];
      for (let i = base; i < Math.min(count, base + WAVE); i++) {
        const opened = store.open({ sessionId: id(i), fingerprint: eventFingerprint('bench', id(i)), now, liveFrom: liveFrom?.(i, now) ?? now, windowMs, placement: placement(i) });
        wave.push(deadlines ? opened.then((r) => (deadlines[i] = 'deadline' in r ? r.deadline : Number.NaN)) : opened);
      }
      await Promise.all(wave);
    }
    return performance.now() - started;
  }

  const openMs = await openAll(SESSIONS, keepId, KEEP_WINDOW_MS);
  console.log(`(a) ${fmt(SESSIONS)} sessions opened through the core in ${(openMs / 1000).toFixed(1)} s (${fmt((SESSIONS / openMs) * 1000)}/s), window ${KEEP_WINDOW_MS / 1000} s`);

  const engine = await startDeadlineEngine({ REDIS_URL: server.url, INDEX_BUCKETS: String(BUCKETS), K_SINK: sink.url, LOG_LEVEL: process.env.BENCH_ENGINE_LOG_LEVEL ?? 'warn', ...(CPU_PROF_DIR ? { NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${CPU_PROF_DIR}` } : {}) });

  // The sessions due to expire: beating every second until their stop time, then silent. Each one's open is dated
  // one interval before its first beat, as if it had been beating all along, so that even those that stop before
  // their first beat fall due at their own moments rather than all at once, at their shared opening instant.
  const expectedDeadline = new Float64Array(EXPIRING);
  await openAll(EXPIRING, expId, EXPIRING_WINDOW_MS, expectedDeadline, (i, now) => now - EXPIRING_INTERVAL_MS + (i / EXPIRING) * EXPIRING_INTERVAL_MS);
  const phaseStart = Date.now();
  const stopAt = Float64Array.from({ length: EXPIRING }, () => phaseStart + Math.random() * SPREAD_MS);
  // Every expiring session beats at the same interval, so a FIFO of (session, next beat) is also in time order.
  const beatQueue: { i: number; at: number }[] = Array.from({ length: EXPIRING }, (_, i) => ({ i, at: phaseStart + (i / EXPIRING) * EXPIRING_INTERVAL_MS }));
  let queueHead = 0;
  let expiringRefused = 0;
  let heartbeatErrors = 0;
  let firstHeartbeatError: string | undefined;
  let keepRefused = 0;
  let cursor = 0;
  let sent = 0;
  const rateStart = performance.now();
  const inFlight = new Set<Promise<void>>();
  const phaseEnd = phaseStart + SPREAD_MS + EXPIRING_WINDOW_MS;

  while (Date.now() < phaseEnd) {
    const now = Date.now();
    const owed = Math.floor(((performance.now() - rateStart) / 1000) * HEARTBEATS_PER_S) - sent;
    if (owed > 0) {
      const wave: { sessionId: string; liveFrom: number }[] = [];
      const expiringInWave: number[] = [];
      // Expiring sessions due for their beat come first; the rest of the wave walks the live sessions.
      while (queueHead < beatQueue.length && beatQueue[queueHead]!.at <= now && wave.length < owed) {
        const { i } = beatQueue[queueHead++]!;
        if (now >= stopAt[i]!) continue;
        wave.push({ sessionId: expId(i), liveFrom: now });
        expiringInWave.push(i);
        beatQueue.push({ i, at: now + EXPIRING_INTERVAL_MS });
      }
      if (queueHead > 65_536) {
        beatQueue.splice(0, queueHead);
        queueHead = 0;
      }
      while (wave.length < owed) {
        wave.push({ sessionId: keepId(cursor), liveFrom: now });
        cursor = (cursor + 1) % SESSIONS;
      }
      sent += wave.length;
      const applied = store.heartbeatMany(wave, now).then((results) => {
        results.forEach((r, k) => {
          if (k < expiringInWave.length) {
            const i = expiringInWave[k]!;
            if (r.code === 'REFRESHED') expectedDeadline[i] = Math.max(expectedDeadline[i]!, r.deadline);
            else expiringRefused += 1;
          } else if (r.code !== 'REFRESHED') keepRefused += 1;
        });
      }, (err: unknown) => {
        heartbeatErrors += wave.length;
        firstHeartbeatError ??= String(err);
      });
      inFlight.add(applied);
      void applied.finally(() => inFlight.delete(applied));
      // Bounded in flight: a driver that falls behind slows down instead of queueing without limit.
      while (inFlight.size > 8) await Promise.race(inFlight);
    }
    await sleep(TICK_MS);
  }
  await Promise.all(inFlight);
  const heartbeatRate = (sent / (performance.now() - rateStart)) * 1000;
  // Everything expected is due by now; allow the miss threshold, then judge.
  const lastDeadline = expectedDeadline.reduce((a, b) => Math.max(a, b), 0);
  await sleep(Math.max(0, lastDeadline + MISSED_AFTER_MS + 200 - Date.now()));

  const lags: number[] = [];
  const detectLags: number[] = [];
  const firstExpiry = new Map<string, { id: string; emittedAt: number; deadline: number }>();
  let falseExpiries = 0;
  let duplicates = 0;
  let redelivered = 0;
  for (const event of await sink.expiries()) {
    const data = event.data;
    if (data.sessionId.startsWith('k-')) {
      falseExpiries += 1;
      continue;
    }
    const known = firstExpiry.get(data.sessionId);
    if (known) {
      // The same event id again is an at-least-once redelivery (an emission retried after a timeout); a second id
      // would be a second claim, which must never happen.
      if (known.id === event.id) redelivered += 1;
      else duplicates += 1;
      continue;
    }
    const emittedAt = Date.parse(event.time);
    const deadline = Date.parse(data.deadline);
    firstExpiry.set(data.sessionId, { id: event.id, emittedAt, deadline });
    lags.push(emittedAt - deadline);
    detectLags.push(data.lagMs);
  }
  let missed = 0;
  let early = 0;
  for (let i = 0; i < EXPIRING; i++) {
    const seen = firstExpiry.get(expId(i));
    if (!seen || seen.emittedAt > expectedDeadline[i]! + MISSED_AFTER_MS) missed += 1;
    // Expired on an older deadline than its last applied heartbeat set: it was still beating.
    else if (seen.deadline < expectedDeadline[i]!) early += 1;
  }
  lags.sort((a, b) => a - b);
  detectLags.sort((a, b) => a - b);
  console.log(
    `(a) heartbeats applied through the core at ${fmt(heartbeatRate)}/s for ${((phaseEnd - phaseStart) / 1000).toFixed(0)} s over ${fmt(SESSIONS + EXPIRING)} tracked sessions; ` +
      `${fmt(EXPIRING)} stopped beating at times spread over ${SPREAD_MS / 1000} s`,
  );
  console.log(
    `    detection lag (emit time − deadline) over ${fmt(lags.length)} expiries: p50 ${percentile(lags, 50)} ms, p99 ${percentile(lags, 99)} ms, max ${lags.at(-1)} ms ` +
      `(claim time − deadline: p50 ${percentile(detectLags, 50)} ms, p99 ${percentile(detectLags, 99)} ms)`,
  );
  console.log(`    false expiries ${falseExpiries + early}, missed expiries ${missed}, duplicate expiries ${duplicates} (same-id redeliveries ${redelivered}); heartbeats refused: ${keepRefused} live, ${expiringRefused} expiring; heartbeat calls failed: ${heartbeatErrors}${firstHeartbeatError ? ` (${firstHeartbeatError})` : ''}`);
  if (heartbeatRate < HEARTBEATS_PER_S * 0.95) miss(`heartbeat rate ${fmt(HEARTBEATS_PER_S)}/s (reached ${fmt(heartbeatRate)}/s)`);
  if (!(percentile(lags, 99) <= TARGET_P99_MS)) miss(`p99 detection lag ≤ ${TARGET_P99_MS} ms`);
  if (falseExpiries + early > 0) miss('no false expiry');
  if (missed > 0) miss('no missed expiry');
  if (heartbeatErrors > 0) miss('every heartbeat applied');
  if (duplicates > 0) miss('exactly one expiry per session');
  if (process.env.BENCH_VERBOSE) console.log((await store.destroysInFlight(1_000_000)).length, 'claimed;', engine.output());
  await engine.stop();
  await sink.close();

  // ---------------- (b) heartbeat events/s through one function instance over HTTP ----------------
  const fnSink = await startEventSink();
  const fn = await startHeartbeatFunction({ REDIS_URL: server.url, INDEX_BUCKETS: String(BUCKETS), K_SINK: fnSink.url, LOG_LEVEL: 'warn', ...(CPU_PROF_DIR ? { NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${CPU_PROF_DIR}` } : {}) });
  const target = new URL(fn.url);
  const agent = new Agent({ keepAlive: true, maxSockets: HTTP_CONNECTIONS });
  const statuses = new Map<string, number>();
  let ok = 0;
  let seq = 0;

  /** One request: a binary-mode heartbeat, or `batch` heartbeats in batched content mode. Counts events applied. */
  function send(batch: number): Promise<void> {
    const first = seq;
    seq += batch;
    const time = new Date().toISOString();
    const event = (n: number) => ({ specversion: '1.0', id: `bench-${n}`, source: '/bench/inference-pipeline', type: EventType.SessionHeartbeat, time, data: { sessionId: keepId(n % SESSIONS), seq: n } });
    const body = batch === 1 ? JSON.stringify(event(first).data) : JSON.stringify(Array.from({ length: batch }, (_, k) => event(first + k)));
    const headers: Record<string, string | number> = batch === 1
      ? { 'content-type': 'application/json', 'ce-specversion': '1.0', 'ce-id': `bench-${first}`, 'ce-source': '/bench/inference-pipeline', 'ce-type': EventType.SessionHeartbeat, 'ce-time': time }
      : { 'content-type': 'application/cloudevents-batch+json' };
    headers['content-length'] = Buffer.byteLength(body);
    return new Promise<void>((resolve) => {
      const req = request({ host: target.hostname, port: target.port, path: '/', method: 'POST', agent, headers }, (res) => {
        res.resume();
        res.on('end', () => {
          if (res.statusCode === 204) ok += batch;
          else statuses.set(String(res.statusCode), (statuses.get(String(res.statusCode)) ?? 0) + 1);
          resolve();
        });
      });
      req.on('error', (err) => {
        statuses.set(err.message, (statuses.get(err.message) ?? 0) + 1);
        resolve();
      });
      req.end(body);
    });
  }

  /** Events/s answered 204 over `seconds`, after a warm-up (JIT, connections, Redis scripts); errors counted. */
  async function blast(batch: number, connections: number, seconds: number): Promise<{ eventsPerS: number; ok: number; errors: number }> {
    const warmUntil = Date.now() + 2000;
    await Promise.all(Array.from({ length: connections }, async () => {
      while (Date.now() < warmUntil) await send(batch);
    }));
    ok = 0;
    statuses.clear();
    const start = performance.now();
    const until = Date.now() + seconds * 1000;
    await Promise.all(Array.from({ length: connections }, async () => {
      while (Date.now() < until) await send(batch);
    }));
    const ms = performance.now() - start;
    return { eventsPerS: (ok / ms) * 1000, ok, errors: [...statuses.values()].reduce((x, y) => x + y, 0) };
  }

  const single = await blast(1, HTTP_CONNECTIONS, HTTP_SECONDS);
  console.log(
    `(b) ${fmt(single.eventsPerS)} heartbeat events/s through one heartbeat-timeout instance over HTTP, one event per request as the Broker delivers ` +
      `(binary mode, ${HTTP_CONNECTIONS} keep-alive connections, ${HTTP_SECONDS} s, ${fmt(single.ok)} answered 204); errors ${single.errors}`,
  );
  const batched = await blast(HTTP_BATCH, HTTP_BATCH_CONNECTIONS, HTTP_SECONDS);
  console.log(
    `    ${fmt(batched.eventsPerS)} heartbeat events/s in batches of ${HTTP_BATCH} as a producer posts them straight to the function ` +
      `(batched content mode, ${HTTP_BATCH_CONNECTIONS} keep-alive connections, ${HTTP_SECONDS} s, ${fmt(batched.ok)} applied); errors ${batched.errors}`,
  );
  if (Math.max(single.eventsPerS, batched.eventsPerS) < TARGET_EVENTS_PER_S) miss(`${fmt(TARGET_EVENTS_PER_S)} heartbeat events/s`);
  if (single.errors + batched.errors > 0) miss(`no errors ${JSON.stringify(Object.fromEntries(statuses))}`);
  agent.destroy();
  await fn.stop();
  await fnSink.close();
  redis.disconnect();
  await server.stop();
  console.log(failed ? 'bench:functions heartbeat-timeout: a target was missed' : 'bench:functions heartbeat-timeout: all targets met');
  process.exitCode = failed ? 1 : 0;
}

if (isMainThread) await main();
else await sinkThread();
