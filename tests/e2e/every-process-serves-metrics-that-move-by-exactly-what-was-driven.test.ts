// The metrics of the whole system, scraped from each process of a real stack the way `npm start` exposes them: after
// driving closes, expiries, completions and an idle ending, every counter and histogram moved by exactly what was
// driven (N closes, N destroys with cause closed), the deadline engine's ledger gauges equal the ledger itself, and
// every exposition passes `promtool check metrics`.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { auditLedger } from '../../functions/core/ledger.ts';
import type { RedisClient } from '../../functions/core/redis/connect.ts';
import type { SessionStore } from '../../functions/core/session-store.ts';
import type { EventSink } from '../support/event-sink.ts';
import { havePromtool, promtoolCheckMetrics, samples, sumOf, type Sample } from '../support/metrics.ts';
import { type DrivenStack, type MetricsProcess, missingEntryFiles, type PipelineDriver, type Stack, startDrivenStack } from '../support/stack.ts';
import { until } from '../support/until.ts';

const T = 'dev.sessionreaper.';
const GPU_BYTES = 1 << 20;
const CLOSES = 4;
const EXPIRIES = 3;
const COMPLETIONS = 2;
const IDLES = 1;
const ENDINGS = CLOSES + EXPIRIES + COMPLETIONS + IDLES;
const missing = missingEntryFiles();

describe('metrics scraped from every process of a running stack', { skip: missing.length ? `entry points missing: ${missing.join(', ')}` : false }, () => {
  let stack: Stack;
  let sink: EventSink;
  let redis: RedisClient;
  let store: SessionStore;
  let driven: DrivenStack | undefined;
  const texts = new Map<MetricsProcess, string>();

  before(async () => {
    driven = await startDrivenStack({
      logLevel: 'warn',
      env: {
        DEADLINE_POLL_MS: '20', IDLE_POLL_MS: '100', LOAD_EVAL_MS: '1000',
        TENANT_POLICIES: JSON.stringify({ 'metrics-fast': { threshold: 0.95, graceMs: 500 } }), LOAD_POLICY: JSON.stringify({ minGraceMs: 0 }),
      },
    }, '/metrics-test/pipeline');
    ({ stack, sink, redis, store, pipeline } = driven);
  });

  after(() => driven?.stop());

  // The pipeline, as in the e2e suite: events into the Broker, and sessions opened with the runtime's allocation.
  let pipeline: PipelineDriver;
  const send: PipelineDriver['send'] = (type, data, tenant) => pipeline.send(type, data, tenant);
  const open = (sessionId: string, extra: Record<string, unknown> = {}): Promise<number> => pipeline.open(sessionId, GPU_BYTES, extra);

  const destroyed = (sessionId: string) =>
    sink.waitForEvent(({ event: e }) => e.type === `${T}session.destroyed` && (e.data as { sessionId: string }).sessionId === sessionId, { timeoutMs: 60_000 });

  async function scrapeAll(): Promise<Sample[]> {
    const all: Sample[] = [];
    for (const [name, url] of Object.entries(stack.metricsUrls) as [MetricsProcess, string][]) {
      const res = await fetch(url);
      assert.equal(res.status, 200, `${name} serves its metrics`);
      const text = await res.text();
      texts.set(name, text);
      all.push(...samples(text));
    }
    return all;
  }

  test('every process serves its own metrics, labelled with its service and instance', async () => {
    assert.deepEqual(Object.keys(stack.metricsUrls).sort(), ['activity-score', 'deadline-engine', 'destroy-dispatch', 'gpu-release', 'heartbeat-timeout', 'idle-checker', 'local-broker']);
    const all = await scrapeAll();
    const instances = new Set(all.map((s) => s.labels.service_instance_id).filter((x) => x !== undefined));
    assert.equal(instances.size, 7, 'one service.instance.id per process (the Broker runs in this one)');
    assert.equal(sumOf(all, 'sessionreaper_destroys_total'), 0, 'nothing destroyed yet');
  });

  test('every ending driven is counted once, by cause, with its durations', async () => {
    const ends: Promise<unknown>[] = [];
    for (let i = 0; i < CLOSES; i++) {
      await open(`m-closed-${i}`);
      await send('session.closed', { sessionId: `m-closed-${i}` });
      ends.push(destroyed(`m-closed-${i}`));
    }
    for (let i = 0; i < EXPIRIES; i++) {
      await open(`m-expired-${i}`, { heartbeatIntervalMs: 200, missedBeats: 2 });
      ends.push(destroyed(`m-expired-${i}`));
    }
    for (let i = 0; i < COMPLETIONS; i++) {
      await open(`m-completed-${i}`);
      await send('inference.completed', { sessionId: `m-completed-${i}`, requestId: `r-${i}`, release: true });
      ends.push(destroyed(`m-completed-${i}`));
    }
    await open('m-idle-0', { tenant: 'metrics-fast' });
    await send('session.activity', { sessionId: 'm-idle-0', kind: 'message', text: 'hello there' }, 'metrics-fast');
    ends.push(destroyed('m-idle-0'));
    await Promise.all(ends);

    // session.destroyed leaves before the destroy is completed and counted: wait for the count, then check it exactly.
    const all = await until('every destroy counted', async () => {
      const s = await scrapeAll();
      return sumOf(s, 'sessionreaper_destroys_total') >= ENDINGS && sumOf(s, 'sessionreaper_gpu_release_requests_total') >= ENDINGS ? s : undefined;
    });
    const byCause = { closed: CLOSES, expired: EXPIRIES, completed: COMPLETIONS, idle: IDLES };
    for (const [cause, n] of Object.entries(byCause)) {
      assert.equal(sumOf(all, 'sessionreaper_destroys_total', { cause, outcome: 'destroyed' }), n, `${n} destroys with cause ${cause}`);
      assert.equal(sumOf(all, 'sessionreaper_destroy_duration_seconds_count', { cause }), n, `${n} destroy durations with cause ${cause}`);
      assert.equal(sumOf(all, 'sessionreaper_reclaim_latency_seconds_count', { cause }), n, `${n} reclaim latencies with cause ${cause}`);
    }
    assert.equal(sumOf(all, 'sessionreaper_destroys_total'), ENDINGS, 'nothing else destroyed, none gave up');
    assert.equal(sumOf(all, 'sessionreaper_sessions_opened_total'), ENDINGS);
    assert.equal(sumOf(all, 'sessionreaper_expiries_total'), EXPIRIES);
    assert.equal(sumOf(all, 'sessionreaper_detection_lag_seconds_count'), EXPIRIES);
    assert.equal(sumOf(all, 'sessionreaper_events_processed_total', { type: 'session.closed', outcome: '2xx' }), CLOSES);
    assert.equal(sumOf(all, 'sessionreaper_events_processed_total', { type: 'session.opened', outcome: '2xx' }), ENDINGS);
    assert.equal(sumOf(all, 'sessionreaper_events_processed_total', { outcome: '4xx' }), 0);
    assert.equal(sumOf(all, 'sessionreaper_gpu_release_requests_total', { runtime: 'sim', outcome: 'released' }), ENDINGS);
    assert.equal(sumOf(all, 'sessionreaper_gpu_release_requests_total'), ENDINGS, 'one call per release');
    assert.equal(sumOf(all, 'sessionreaper_destroy_triggers_total', { outcome: 'claimed' }), CLOSES + COMPLETIONS + IDLES, 'the expiries were claimed by the engine');
    assert.ok(sumOf(all, 'sessionreaper_redis_script_duration_seconds_count', { script: 'openSession' }) >= ENDINGS);
    // Every destroy was admitted to a release slot once, each admission's queue wait recorded by destroy-dispatch.
    assert.equal(sumOf(all, 'sessionreaper_storm_guard_queue_wait_seconds_count'), ENDINGS, 'one queue wait per destroy');
    assert.equal(sumOf(texts.get('destroy-dispatch')!, 'sessionreaper_storm_guard_queue_wait_seconds_count'), ENDINGS);
    // The simulator cannot demote, so the idle checker asks for none; nothing was orphaned; the Broker gave up on nothing.
    assert.equal(sumOf(all, 'sessionreaper_demote_requests_total'), 0);
    assert.ok(samples(texts.get('idle-checker')!).some((s) => s.name === 'sessionreaper_demote_requests_total'), 'the idle checker reports its demote requests');
    assert.equal(sumOf(all, 'sessionreaper_orphan_releases_total'), 0);
    assert.ok(samples(texts.get('deadline-engine')!).some((s) => s.name === 'sessionreaper_orphan_releases_total'), 'the deadline engine reports its orphan releases');
    assert.ok(samples(texts.get('local-broker')!).some((s) => s.name === 'sessionreaper_dead_letters_total'), 'the Broker reports its dead letters');
    assert.equal(sumOf(all, 'sessionreaper_dead_letters_total'), 0);
    assert.equal(stack.broker.stats().deadLettered, 0);
  });

  test("the deadline engine's gauges are the ledger's figures", async () => {
    const audit = await auditLedger(redis, store.keys);
    assert.deepEqual(audit.problems, []);
    const engine = await until('the ledger gauges', async () => {
      const res = await fetch(stack.metricsUrls['deadline-engine']!);
      const s = samples(await res.text());
      return sumOf(s, 'sessionreaper_gpu_freed_bytes') === audit.totals.releasedBytes ? s : undefined;
    });
    assert.equal(sumOf(engine, 'sessionreaper_gpu_registered_bytes'), ENDINGS * GPU_BYTES);
    assert.equal(sumOf(engine, 'sessionreaper_gpu_freed_bytes'), ENDINGS * GPU_BYTES, 'freed bytes equal the ledger\'s');
    assert.equal(sumOf(engine, 'sessionreaper_gpu_held_bytes'), 0);
    assert.equal(sumOf(engine, 'sessionreaper_ledger_violations'), 0);
    assert.equal(sumOf(engine, 'sessionreaper_sessions', { state: 'active' }), 0);
    assert.equal(sumOf(engine, 'sessionreaper_deadlines_overdue'), 0);
    assert.equal(sumOf(engine, 'sessionreaper_storm_guard_queue_depth'), 0);
    assert.ok(engine.some((s) => s.name === 'sessionreaper_event_loop_delay_seconds'), 'the engine reports its event-loop delay');
    assert.ok(sumOf(engine, 'sessionreaper_deadline_engine_rounds_total') > 0);
  });

  test('every exposition passes promtool check metrics', (t) => {
    if (!havePromtool()) {
      t.skip('promtool is not installed: apt-get install prometheus (Debian); CI installs it');
      return;
    }
    assert.equal(texts.size, 7);
    for (const [name, text] of texts) {
      const check = promtoolCheckMetrics(text);
      assert.equal(check.status, 0, `${name}: ${check.output}`);
    }
  });
});
