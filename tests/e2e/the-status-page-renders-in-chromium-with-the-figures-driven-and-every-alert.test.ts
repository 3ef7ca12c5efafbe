// The status page `npm start` serves (GET /status on the Broker), loaded in headless Chromium against a running stack:
// after closes, completions and one event the Broker has to dead-letter, the rendered page shows exactly those
// destroys, the dead letter (counted by the Broker itself, sessionreaper_dead_letters_total), every process scraped,
// the charts, and every alert of the deployed rule file — with its state as a local Prometheus evaluates it (the dead
// letter firing SessionReaperDeadLetters) where Debian's prometheus is installed, else listed as not evaluated with
// the way to get it evaluated. A screenshot is written (SR_STATUS_SCREENSHOT, else the temporary directory) for a
// person to look at. Skipped, saying why, only where chromium is not installed (CI installs it: .ci/run).
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CloudEvent } from 'cloudevents';
import { alertsOfRuleFile } from '../../tools/local-broker/status-figures.ts';
import { prometheusInstalled, startLocalPrometheus, type LocalPrometheus } from '../../tools/local-stack/local-prometheus.ts';
import { freePort } from '../../tools/local-stack/redis-server.ts';
import { samples, sumOf } from '../support/metrics.ts';
import { missingEntryFiles, sendAsPipeline, stackStore, startStack, type Stack } from '../support/stack.ts';
import { until } from '../support/until.ts';

const T = 'dev.sessionreaper.';
const CLOSES = 3;
const COMPLETIONS = 2;
const CHROMIUM = 'chromium';
const haveChromium = spawnSync(CHROMIUM, ['--version'], { stdio: 'ignore' }).status === 0;
const missing = missingEntryFiles();
const skip = !haveChromium ? 'chromium is not installed (apt-get install chromium; CI installs it)' : missing.length ? `entry points missing: ${missing.join(', ')}` : false;

/** Runs headless Chromium on a URL with extra flags; resolves with its stdout (the DOM with --dump-dom). */
function chromium(url: string, flags: string[], profile: string): Promise<string> {
  return new Promise((resolve, reject) => {
    // Asynchronous: the Broker serving the page runs in this process.
    execFile(CHROMIUM, ['--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', `--user-data-dir=${profile}`, ...flags, url], { timeout: 90_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`chromium failed: ${err.message}\n${stderr.slice(-2000)}`));
      else resolve(stdout);
    });
  });
}

/** GET with a Host header of our choosing (fetch may not set one). */
function getWithHost(url: string, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers: { host } }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
}

const figure = (dom: string, id: string): string | undefined => new RegExp(`data-figure="${id}"[^>]*>([^<]*)<`).exec(dom)?.[1];

describe('the status page in headless Chromium', { skip }, () => {
  let stack: Stack;
  let prometheus: LocalPrometheus | undefined;
  let profile: string;
  let dom = '';
  const withPrometheus = prometheusInstalled();

  before(async () => {
    profile = mkdtempSync(join(tmpdir(), 'sr-chromium-'));
    // The reconciler runs often and waits little, so an allocation no session owns is released within the test.
    stack = await startStack({ logLevel: 'warn', env: { DEADLINE_POLL_MS: '20', RECONCILE_INTERVAL_MS: '200', RECONCILE_GRACE_MS: '300' } });
    if (withPrometheus) {
      const local = await startLocalPrometheus({ dir: join(profile, 'prometheus'), host: '127.0.0.1', port: await freePort(), metricsUrls: stack.metricsUrls, readyTimeoutMs: 60_000 });
      prometheus = local;
      stack.setPrometheusUrl(local.url);
      // Every process scraped once before anything is driven: increase() needs the counters' zeros to see them move.
      await until('every process scraped by the local Prometheus', async () => {
        const { data } = (await (await fetch(`${local.url}/api/v1/targets`)).json()) as { data: { activeTargets: { health: string }[] } };
        return data.activeTargets.length === Object.keys(stack.metricsUrls).length && data.activeTargets.every((a) => a.health === 'up');
      }, 60_000, 250);
    }
    // The first view starts the page's sampling, so the charts have a history by the time Chromium loads it.
    assert.equal((await fetch(stack.statusUrl)).status, 200);
  });

  after(async () => {
    await prometheus?.stop();
    await stack?.stop();
    if (profile) rmSync(profile, { recursive: true, force: true });
  });

  const send = (type: string, data: Record<string, unknown>) =>
    sendAsPipeline(stack, new CloudEvent({ type: T + type, source: '/status-test/pipeline', id: randomUUID(), data, datacontenttype: 'application/json' }));

  test('the page answers only requests addressed to this machine, as the admin API', async () => {
    assert.equal(await getWithHost(stack.statusUrl, 'evil.example'), 403);
    assert.equal(await getWithHost(stack.statusUrl, `localhost:${stack.ports.broker}`), 200);
    assert.equal(await getWithHost(stack.brokerUrl + 'metrics', 'evil.example'), 403);
  });

  test('after closes, completions and a dead letter, the rendered page shows exactly those, and every alert', async (t) => {
    const { redis, store } = await stackStore(stack);
    t.after(() => redis.disconnect());
    const ids = [...Array.from({ length: CLOSES }, (_, i) => `status-closed-${i}`), ...Array.from({ length: COMPLETIONS }, (_, i) => `status-completed-${i}`)];
    for (const sessionId of ids) {
      assert.equal(await send('session.opened', { sessionId, placement: { node: 'gpu-node-1', runtimeUrl: stack.runtimeUrl, gpuBytes: 1 << 20 }, heartbeatIntervalMs: 60_000 }), 202);
      await until(`${sessionId} opened`, async () => (await store.inspect(sessionId))?.state === 'active');
    }
    for (const sessionId of ids.slice(0, CLOSES)) assert.equal(await send('session.closed', { sessionId }), 202);
    for (const [i, sessionId] of ids.slice(CLOSES).entries()) assert.equal(await send('inference.completed', { sessionId, requestId: `r-${i}`, release: true }), 202);
    // A session.closed naming no session: its subscriber refuses it (400), which the Broker does not retry but keeps.
    assert.equal(await send('session.closed', {}), 202);
    // Memory the runtime holds for a session never opened: the reconciler releases it as an orphan.
    const orphan = await fetch(`${stack.runtimeUrl}/v1/sessions/status-orphan/allocate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ incarnation: 1, bytes: 4096 }) });
    assert.equal(orphan.status, 201);

    await until('every destroy counted', async () => {
      const text = await (await fetch(stack.metricsUrls['destroy-dispatch']!)).text();
      return sumOf(samples(text), 'sessionreaper_destroys_total') >= CLOSES + COMPLETIONS;
    }, 60_000);
    const brokerMetrics = await until('the dead letter counted by the Broker', async () => {
      const s = samples(await (await fetch(stack.metricsUrls['local-broker']!)).text());
      return sumOf(s, 'sessionreaper_dead_letters_total') >= 1 ? s : undefined;
    }, 60_000);
    assert.equal(sumOf(brokerMetrics, 'sessionreaper_dead_letters_total', { type: 'session.closed', reason: 'http_4xx' }), 1);
    assert.equal(stack.broker.stats().deadLettered, 1);
    await until('the orphan released by the reconciler', async () => {
      const s = samples(await (await fetch(stack.metricsUrls['deadline-engine']!)).text());
      return sumOf(s, 'sessionreaper_orphan_releases_total', { runtime: 'sim', outcome: 'released' }) === 1;
    }, 60_000);
    if (prometheus !== undefined) {
      await until('SessionReaperDeadLetters to fire in the local Prometheus', async () => {
        const res = await fetch(`${prometheus!.url}/api/v1/alerts`);
        const { data } = (await res.json()) as { data: { alerts: { labels: { alertname: string }; state: string }[] } };
        return data.alerts.some((a) => a.labels.alertname === 'SessionReaperDeadLetters' && a.state === 'firing');
      }, 90_000, 250);
    }

    dom = await chromium(stack.statusUrl, ['--dump-dom'], profile);
    assert.match(dom, /<title>session-reaper · status<\/title>/);
    assert.equal(figure(dom, 'destroys-closed'), String(CLOSES));
    assert.equal(figure(dom, 'destroys-completed'), String(COMPLETIONS));
    assert.equal(figure(dom, 'destroys-expired'), '0');
    assert.equal(figure(dom, 'destroys-gave-up'), '0');
    assert.equal(figure(dom, 'sessions-opened'), String(CLOSES + COMPLETIONS));
    assert.equal(figure(dom, 'dead-letters'), '1');
    assert.equal(figure(dom, 'destroy_duration-count'), String(CLOSES + COMPLETIONS));
    assert.equal(figure(dom, 'events-4xx'), '1', 'the refused session.closed');
    assert.equal(figure(dom, 'ledger-violations'), '0');
    assert.equal(figure(dom, 'orphan-releases'), '1');
    assert.equal(figure(dom, 'storm_guard_queue_wait-count'), String(CLOSES + COMPLETIONS), 'one queue wait per destroy');
    const scraped = [...dom.matchAll(/<tr data-process="([^"]+)"><th>[^<]*<\/th><td class="ok">scraped<\/td>/g)].map((m) => m[1]).sort();
    assert.deepEqual(scraped, Object.keys(stack.metricsUrls).sort(), 'every process scraped, the Broker included');
    for (const chart of ['sessions', 'destroy-rate', 'gpu-held', 'event-rate', 'queue-depth']) assert.match(dom, new RegExp(`data-chart="${chart}"`));

    const states = new Map([...dom.matchAll(/data-alert="([^"]+)" data-state="([^"]+)"/g)].map((m) => [m[1]!, m[2]!]));
    assert.deepEqual([...states.keys()].sort(), alertsOfRuleFile().map((a) => a.name).sort(), 'every alert of the deployed rule file, once');
    if (prometheus !== undefined) {
      assert.equal(states.get('SessionReaperDeadLetters'), 'firing');
      assert.ok([...states.values()].every((s) => ['inactive', 'pending', 'firing'].includes(s)), `every alert evaluated: ${JSON.stringify([...states])}`);
      assert.match(dom, /Evaluated by the local Prometheus/);
    } else {
      t.diagnostic('prometheus is not installed: the alerts are checked as listed, not evaluated');
      assert.ok([...states.values()].every((s) => s === 'not evaluated'));
      assert.match(dom, /npm start -- --prometheus/);
    }
    // Each runbook link opens the runbook at its alert's section, served beside the page.
    const runbook = await (await fetch(new URL('/status/runbook', stack.statusUrl))).text();
    for (const [, anchor] of dom.matchAll(/href="\/status\/runbook#([^"]+)"/g)) assert.match(runbook, new RegExp(`id="${anchor}"`), anchor);
  });

  test('a screenshot of the page is written for a person to look at', async (t) => {
    const file = process.env.SR_STATUS_SCREENSHOT ?? join(tmpdir(), 'session-reaper-status.png');
    await chromium(stack.statusUrl, [`--screenshot=${file}`, '--window-size=1100,1450', '--force-device-scale-factor=1'], profile);
    const png = readFileSync(file);
    assert.deepEqual([...png.subarray(1, 4)].map((c) => String.fromCharCode(c)).join(''), 'PNG');
    assert.equal(png.readUInt32BE(16), 1100, 'as wide as the window');
    t.diagnostic(`screenshot: ${file} (${statSync(file).size} bytes)`);
  });
});
