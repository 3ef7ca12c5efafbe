// `npm start`: the whole system on one machine — a private redis-server (or REDIS_URL), the simulated GPU runtime,
// each function as its own functions-framework process, the deadline engine, the idle checker, and the local Broker
// on http://localhost:8080/ — plus, unless --no-demo, a simulated inference pipeline whose run ends in a report.
// Ctrl-C or SIGTERM stops everything in order; deliveries still pending are finished or kept for the next start.
// A part that crashes is restarted (stack.ts) and the run goes on; if this process is killed its children die with
// it, and if whatever started it (npm) dies it stops itself. With `--engine llama` the demo places a share of its
// sessions on the real llama.cpp engine, and the report sets the KV bytes freed there beside the engine's own reading.
/* eslint-disable no-console -- this is the terminal front end of the local stack: talking to the user is its job */
import { appendFileSync, chmodSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { pino } from 'pino';
import { auditLedger, type LedgerAudit } from '../../functions/core/ledger.ts';
import { connectRedis, createRedisClient, type RedisClient } from '../../functions/core/redis/connect.ts';
import { KeySpace } from '../../functions/core/redis/keys.ts';
import { Scripts } from '../../functions/core/redis/scripts.ts';
import { SessionStore } from '../../functions/core/session-store.ts';
import type { BrokerEvent } from '../local-broker/wire.ts';
import { parseStartFlags, UsageError, USAGE, type StartFlags } from './flags.ts';
import { startDemoPipeline, type DemoOutcome, type DemoPipeline } from './demo-pipeline.ts';
import { progressLine, startProgress, type Progress } from './progress.ts';
import { buildReport, createRunRecorder, engineFigures, formatReport, gpuFigures, type RuntimeCounters, type StackReport } from './report.ts';
import { prometheusInstalled, startLocalPrometheus, type LocalPrometheus } from './local-prometheus.ts';
import { freePort } from './redis-server.ts';
import { startStack, type Stack } from './stack.ts';

// The demo's sessions belong to the 'demo' tenant, whose idle verdict comes after seconds rather than a minute, so a
// user who walks away is reclaimed while you watch; the load policy's floor on the grace is lowered to allow that.
// Every other tenant keeps the defaults.
const DEMO_TENANT = 'demo';
const DEMO_ENV = {
  TENANT_POLICIES: JSON.stringify({ [DEMO_TENANT]: { graceMs: 2000, timing: { floorMs: 4000, priorGapMs: 2000 } } }),
  LOAD_POLICY: JSON.stringify({ minGraceMs: 1000 }),
};

// With the real engine, demote before destroy runs on the demo's time scale (README, "Demote before destroy"): a demo
// user who pauses past their rhythm has their session's KV moved off the engine's KV cache, and back when they type
// again; a demoted session keeps the demo tenant's short grace (the deployed 10 min would outlast the demo). The
// simulator does not offer demote (it answers 501, read as a refusal for good: each of its sessions is asked once).
const ENGINE_DEMO_ENV = { ...DEMO_ENV, DEMOTE_QUIET_MS: '1500', DEMOTED_IDLE_GRACE_MS: '0' };

// A supervisor (or a test harness) commonly sends SIGTERM and SIGKILLs 5 s later; the whole stop fits in that: the
// Broker gets 2 s to finish its deliveries (the rest are kept for the next start, nothing is lost), and a stop that
// still hangs is cut short, its children then dying with this process.
const BROKER_STOP_GRACE_MS = 2000;
const SHUTDOWN_DEADLINE_MS = 4500;

// The simulated runtime stands for a node of eight 80 GiB GPUs, room for a demo of a hundred sessions.
const SIM_GPU_BYTES = 8 * 80 * 1024 ** 3;

// The llama engine's sequences (ENGINE_SEQUENCES: sessions holding KV at once); the demo keeps within them.
const ENGINE_SEQUENCES = 4;

// The engine's own reading of its KV in use (GET /v1/memory usedBytes), or undefined when it does not answer.
async function engineUsedBytes(engineUrl: string): Promise<number | undefined> {
  try {
    const res = await fetch(`${engineUrl}/v1/memory`, { signal: AbortSignal.timeout(3000) });
    if (!res.ok) return undefined;
    const memory = (await res.json()) as { usedBytes?: unknown };
    return typeof memory.usedBytes === 'number' ? memory.usedBytes : undefined;
  } catch {
    return undefined;
  }
}

async function runtimeCounters(runtimeUrl: string): Promise<RuntimeCounters | undefined> {
  try {
    const res = await fetch(`${runtimeUrl}/sim/stats`, { signal: AbortSignal.timeout(3000) });
    if (!res.ok) return undefined;
    const stats = (await res.json()) as RuntimeCounters;
    return { totalAllocated: stats.totalAllocated, totalFreed: stats.totalFreed, usedBytes: stats.usedBytes };
  } catch {
    return undefined;
  }
}

async function main(): Promise<number> {
  let flags: StartFlags;
  try {
    flags = parseStartFlags(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    console.error(`npm start: ${err.message}\n\n${USAGE}`);
    return 2;
  }
  if (flags.help) {
    console.log(USAGE);
    return 0;
  }

  const logDir = join(flags.stateDir, 'logs');
  mkdirSync(logDir, { recursive: true });
  const stateFile = join(flags.stateDir, 'stack.json');
  const recorder = createRunRecorder();
  let demo: DemoPipeline | undefined;
  const observers: Array<(ev: BrokerEvent) => void> = [(ev) => recorder.observe(ev)];
  const brokerLog = pino({ name: 'local-broker', level: 'info' }, pino.destination({ dest: join(logDir, 'local-broker.log'), mkdir: true, sync: true }));
  const startedAt = Date.now();
  // Set once the stack runs; the signal handlers and the demo reach them through here.
  const live: { progress?: Progress; shutdown?: (code: number, why: string) => Promise<void> } = {};
  let signalled: string | undefined;
  let signalledAt = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    // A Ctrl-C reaches this process twice at once: from the terminal, and passed on by npm. Only a later one forces.
    if (signalled !== undefined && Date.now() - signalledAt < 1000) return;
    if (signalled !== undefined) {
      console.error(`\n${signal} again: exiting without waiting`);
      process.exit(130);
    }
    signalled = signal;
    signalledAt = Date.now();
    void live.shutdown?.(0, signal);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // Orphaned (whatever started us, npm, was killed and could not pass a signal on): stop rather than run on unseen,
  // holding ports. Watched from the first moment; while the stack starts, the stop waits for it as a signal does.
  const parent = process.ppid;
  const orphanWatch = setInterval(() => {
    if (process.ppid === parent) return;
    clearInterval(orphanWatch);
    signalled ??= 'the parent process exited';
    signalledAt = Date.now();
    void live.shutdown?.(0, 'the parent process exited');
  }, 250);
  orphanWatch.unref();

  console.log(`session-reaper: starting the local stack (state in ${relative(process.cwd(), flags.stateDir) || '.'})…`);
  let stack: Stack;
  try {
    stack = await startStack({
      brokerPort: flags.port,
      runtimePort: flags.runtimePort,
      keyPrefix: process.env.REDIS_KEY_PREFIX || 'sr',
      redisDataDir: join(flags.stateDir, 'redis'),
      deadLetterDir: join(flags.stateDir, 'dead-letters'),
      logLevel: 'info',
      logger: brokerLog,
      env: flags.engine === undefined ? DEMO_ENV : ENGINE_DEMO_ENV,
      runtimeEnv: { SIM_TOTAL_BYTES: String(SIM_GPU_BYTES) },
      onEvent: (ev) => observers.forEach((observe) => observe(ev)),
      // Knative would restart the pod and carry on; so does the stack. The user is told, above the progress line.
      onProcessExit: (name, code) => {
        live.progress?.clear();
        console.error(`session-reaper: ${name} exited unexpectedly (${String(code)}); restarting it`);
      },
      onProcessRestarted: (name, pid, restarts) => {
        live.progress?.clear();
        console.error(`session-reaper: ${name} restarted (pid ${pid}, restart ${restarts})`);
      },
      stopGraceMs: BROKER_STOP_GRACE_MS,
      ...(flags.forward !== undefined ? { forward: flags.forward } : {}),
      ...(flags.brokerChaos !== undefined ? { brokerChaos: flags.brokerChaos } : {}),
      host: flags.host,
      runtimes: flags.runtimes,
      ...(flags.engine !== undefined ? { engine: flags.engine, engineEnv: { ENGINE_SEQUENCES: String(ENGINE_SEQUENCES) } } : {}),
      allowedCidrs: flags.allowCidrs,
      tokenDir: join(flags.stateDir, 'tokens'),
    });
  } catch (err) {
    console.error(`session-reaper: the stack did not start: ${(err as Error).message}`);
    return 1;
  }
  const running = stack;
  // --prometheus: started once the stack serves, stopped beside it; without the binary, said and skipped.
  let prometheus: LocalPrometheus | undefined;
  if (flags.prometheusPort !== undefined) {
    if (!prometheusInstalled()) console.error('session-reaper: --prometheus: no prometheus on PATH (sudo apt-get install prometheus); going on without it');
    else {
      try {
        prometheus = await startLocalPrometheus({
          dir: join(flags.stateDir, 'prometheus'), host: flags.host === '0.0.0.0' ? '127.0.0.1' : flags.host,
          port: flags.prometheusPort === 0 ? await freePort() : flags.prometheusPort, metricsUrls: running.metricsUrls,
        });
      } catch (err) {
        console.error(`session-reaper: --prometheus: ${(err as Error).message}; going on without it`);
      }
    }
  }
  running.setPrometheusUrl(prometheus?.url);
  const ingress = running.brokerUrl.replace('://127.0.0.1:', '://localhost:');
  // Readable by this user only: it holds the Redis password and where the senders' tokens are.
  writeFileSync(
    stateFile,
    `${JSON.stringify({
      pid: process.pid, ingressUrl: ingress, runtimeUrl: running.runtimeUrl, redisUrl: running.redisUrl, redisPassword: running.redisPassword,
      keyPrefix: running.keyPrefix, deadLetterDir: running.deadLetterDir, ports: running.ports, tokenFiles: running.tokenFiles,
      metricsUrls: running.metricsUrls, statusUrl: `${ingress}status`,
      ...(prometheus === undefined ? {} : { prometheusUrl: prometheus.url }),
      startedAt: new Date(startedAt).toISOString(),
    }, null, 2)}\n`,
    { mode: 0o600 },
  );
  chmodSync(stateFile, 0o600);

  const redis: RedisClient = createRedisClient({ REDIS_URL: running.redisUrl, REDIS_CLUSTER_NODES: '', REDIS_PASSWORD: running.redisPassword, REDIS_TLS: false, CORE_TIMEOUT_MS: 5000 });
  await connectRedis(redis);
  const keys = new KeySpace(running.keyPrefix, 32);
  const ledgerAtStart: LedgerAudit = await auditLedger(redis, keys);
  const engineUrl = running.engineUrl;
  const engineAtStart = engineUrl === undefined ? undefined : await engineUsedBytes(engineUrl);
  // The engine's reading for the progress line, refreshed in the background (the line is drawn synchronously).
  let engineNow = engineAtStart;
  if (engineUrl !== undefined) {
    setInterval(() => void engineUsedBytes(engineUrl).then((b) => (engineNow = b ?? engineNow)), 1000).unref();
  }

  const writeReport = (kind: 'demo' | 'stop', r: StackReport, demoOutcome?: DemoOutcome) => {
    if (flags.reportFile !== undefined) writeFileSync(flags.reportFile, `${JSON.stringify({ kind, report: r, ...(demoOutcome ? { demo: demoOutcome } : {}) }, null, 2)}\n`);
  };

  const restartCounts = () => Object.fromEntries(Object.entries(running.processes()).map(([name, p]) => [name, p.restarts]));

  async function report(): Promise<StackReport> {
    const live = recorder.live();
    const ledgerNow = await auditLedger(redis, keys);
    const gpu = gpuFigures(ledgerAtStart, ledgerNow, await runtimeCounters(running.runtimeUrl), Math.max(0, live.opened - live.ended));
    const stored = (await running.broker.deadLetters.list()).length;
    const engine = engineUrl === undefined
      ? undefined
      : engineFigures(engineUrl, recorder.runtimeSessions(engineUrl), ledgerAtStart, ledgerNow, { atStart: engineAtStart, now: await engineUsedBytes(engineUrl) }, demo?.engine());
    return buildReport(recorder, gpu, running.broker.stats(), stored, restartCounts(), engine);
  }

  console.log(
    [
      '',
      `  ingress (Broker)   ${ingress}   ← POST CloudEvents: binary, structured or batched`,
      `  health             ${ingress}healthz`,
      `  status page        ${ingress}status   ← live figures, charts and the alerts' states (open it in a browser)`,
      `  GPU runtime (sim)  ${running.runtimeUrl}   (stats: ${running.runtimeUrl}/sim/stats)`,
      ...(running.engineUrl !== undefined ? [`  llama engine       ${running.engineUrl}   (runtime \`llama\`: real KV caches; memory: ${running.engineUrl}/v1/memory)`] : []),
      `  Redis              ${running.redisUrl}   key prefix ${running.keyPrefix}   (password in ${relative(process.cwd(), stateFile)})`,
      `  sender tokens      ${relative(process.cwd(), join(flags.stateDir, 'tokens'))}/   ← send as the pipeline: -H "Authorization: Bearer $(cat ${relative(process.cwd(), running.tokenFiles['inference-pipeline'])})"`,
      `  dead letters       ${running.deadLetterDir}`,
      `  metrics            ${running.metricsUrls['deadline-engine'] ?? '(off)'}   ← the deadline engine's; every process's is in ${relative(process.cwd(), stateFile)} (metricsUrls)`,
      ...(prometheus !== undefined ? [`  prometheus         ${prometheus.url}/alerts   ← the deployed alert rules, on this stack's metrics`] : []),
      `  logs               ${logDir}`,
      ...(flags.forward !== undefined ? [`  forwarding to      ${flags.forward}`] : []),
      '',
      flags.demo
        ? `Ready. Demo: ${flags.sessions} sessions over ~${flags.durationMs / 1000} s${engineUrl !== undefined ? `, some on the llama engine (at most ${ENGINE_SEQUENCES} at once)` : ''}. Ctrl-C stops.`
        : 'Ready. Serving (no demo). Ctrl-C stops.',
    ].join('\n'),
  );

  let stopping: Promise<void> | undefined;
  let exitCode = 0;
  let demoReport: StackReport | undefined;
  live.shutdown = (code, why) =>
    (stopping ??= (async () => {
      exitCode = Math.max(exitCode, code);
      live.progress?.stop();
      setTimeout(() => {
        console.error(`session-reaper: the stop took over ${SHUTDOWN_DEADLINE_MS} ms; exiting now`);
        process.exit(exitCode === 0 ? 1 : exitCode);
      }, SHUTDOWN_DEADLINE_MS).unref();
      if (code !== 0) console.error(`session-reaper: ${why}`);
      console.log(`\nStopping (${why})…`);
      await demo?.stop();
      // The report is taken once the demo has stopped sending and before anything stops, while Redis can be read.
      if (!flags.exitAfterDemo || demoReport === undefined) {
        try {
          const r = await report();
          writeReport('stop', r);
          console.log(`\n${formatReport(r, 'report at stop')}\n`);
        } catch (err) {
          console.error(`session-reaper: no report: ${(err as Error).message}`);
        }
      }
      await Promise.all([running.stop(), prometheus?.stop()]);
      const { persisted } = await running.broker.stop();
      redis.disconnect();
      const header = `--- run started ${new Date(startedAt).toISOString()}, its last lines ---`;
      for (const [name, lines] of Object.entries(running.logs)) appendFileSync(join(logDir, `${name}.log`), `${header}\n${lines.join('\n')}\n`);
      rmSync(stateFile, { force: true });
      console.log(persisted > 0 ? `Stopped. ${persisted} pending deliveries kept for the next start.` : 'Stopped. Nothing pending.');
      if (code !== 0 && why.includes('exited')) console.error(`See ${logDir} for each process's last output.`);
    })());
  // A signal that came while the stack was starting.
  if (signalled !== undefined) void live.shutdown(0, signalled);

  live.progress = startProgress(process.stdout, () =>
    progressLine(Date.now() - startedAt, recorder.live(), {
      demo: demo?.progress(),
      pendingDeliveries: running.broker.stats().pending,
      deadLetters: running.broker.stats().deadLettered,
      restarts: restartCounts(),
      ...(engineUrl !== undefined ? { engine: { open: demo?.engine()?.open, usedBytes: engineNow } } : {}),
    }),
  );

  if (flags.demo && signalled === undefined) {
    const store = new SessionStore(redis, keys, await Scripts.register(redis), { tombstoneTtlMs: 60_000 });
    demo = startDemoPipeline({
      brokerUrl: running.brokerUrl,
      token: running.tokens['inference-pipeline'],
      runtimeUrl: running.runtimeUrl,
      sessions: flags.sessions,
      durationMs: flags.durationMs,
      tenant: DEMO_TENANT,
      heartbeatIntervalMs: 1000,
      missedBeats: 3,
      lookup: (id) => store.inspect(id),
      onProblem: (message) => {
        live.progress?.clear();
        console.error(`demo: ${message}`);
      },
      ...(flags.seed !== undefined ? { seed: flags.seed } : {}),
      ...(engineUrl !== undefined ? { engine: { url: engineUrl, sequences: ENGINE_SEQUENCES } } : {}),
    });
    observers.push((ev) => demo?.observe(ev));
    void demo.done.then(async (outcome: DemoOutcome) => {
      if (stopping !== undefined) return;
      // Let the last deliveries (released and destroyed events to the forward sink) settle before the figures are read.
      await running.broker.idle(10_000).catch(() => undefined);
      demoReport = await report();
      writeReport('demo', demoReport, outcome);
      live.progress?.clear();
      if (process.env.SR_DEMO_DEBUG) console.log(outcome.sessions.map((x) => `${x.sessionId} ${x.planned} -> ${x.cause} after ${x.livedMs} ms`).join('\n'));
      console.log(`\n${formatReport(demoReport, `demo report: ${outcome.ended} of ${outcome.planned} sessions ended`)}\n`);
      if (flags.exitAfterDemo) {
        const ok = outcome.open === 0 && demoReport.gpu.balanced && demoReport.sessions.destroyedTwice === 0 && demoReport.deadLetters.thisRun === 0 && demoReport.deadLetters.dropped === 0 && (demoReport.engine?.agree ?? true);
        await live.shutdown?.(ok ? 0 : 1, ok ? 'the demo is over' : 'the demo ended with problems (see the report)');
      } else {
        console.log('The demo is over; the stack keeps serving. Ctrl-C stops.');
      }
    });
  }

  await new Promise<void>((resolveStopped) => {
    const wait = setInterval(() => {
      if (stopping === undefined) return;
      clearInterval(wait);
      void stopping.then(() => resolveStopped());
    }, 100);
  });
  return exitCode;
}

process.exitCode = await main().catch((err: unknown) => {
  console.error('session-reaper: failed:', err);
  return 1;
});
// Whatever still holds the event loop (a stray socket) must not keep a stopped stack's terminal waiting.
setTimeout(() => process.exit(), 200).unref();
