// `npm start -- --prometheus`: a local Prometheus (Debian's `prometheus` package, when installed) that scrapes every
// process of the stack on its metrics port and evaluates the very rule file that is deployed and unit-tested
// (infra/observability/rules/session-reaper.rules.yaml), so the alerts can be watched firing on this machine. It
// listens on loopback (or the stack's host), keeps its data under the state dir, and dies with its parent.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { diesWithParent } from './parent-death.ts';

/** The rule file a local Prometheus loads: the deployed one. */
export const RULES_FILE = join(import.meta.dirname, '..', '..', 'infra', 'observability', 'rules', 'session-reaper.rules.yaml');

/** Whether a `prometheus` binary is on PATH. */
export function prometheusInstalled(): boolean {
  return spawnSync('prometheus', ['--version'], { stdio: 'ignore' }).status === 0;
}

/**
 * The configuration of a local Prometheus: one job per process (its `job` the process's name), scraped every 5 s,
 * rules evaluated every 5 s, so an alert's `for` is the only wait.
 */
export function prometheusConfig(metricsUrls: Readonly<Record<string, string>>, rulesFile: string = RULES_FILE): string {
  const jobs = Object.entries(metricsUrls).map(([name, url]) => {
    const u = new URL(url);
    return [`  - job_name: ${JSON.stringify(name)}`, `    metrics_path: ${JSON.stringify(u.pathname)}`, `    static_configs:`, `      - targets: [${JSON.stringify(u.host)}]`].join('\n');
  });
  return [
    '# Written by npm start -- --prometheus (tools/local-stack/local-prometheus.ts) at each start.',
    'global:',
    '  scrape_interval: 5s',
    '  evaluation_interval: 5s',
    'rule_files:',
    `  - ${JSON.stringify(rulesFile)}`,
    'scrape_configs:',
    ...jobs,
    '',
  ].join('\n');
}

/** A running local Prometheus. */
export interface LocalPrometheus {
  readonly url: string;
  readonly pid: number | undefined;
  /** SIGTERM (it flushes its head block), then SIGKILL after `graceMs`; resolves once it exited. */
  stop(graceMs?: number): Promise<void>;
}

/** Starts Prometheus on `host:port` with its config and data under `dir`; resolves once it answers /-/ready. */
export async function startLocalPrometheus(opts: { dir: string; host: string; port: number; metricsUrls: Readonly<Record<string, string>>; rulesFile?: string; readyTimeoutMs?: number }): Promise<LocalPrometheus> {
  mkdirSync(join(opts.dir, 'data'), { recursive: true });
  const configFile = join(opts.dir, 'prometheus.yml');
  writeFileSync(configFile, prometheusConfig(opts.metricsUrls, opts.rulesFile));
  const listen = `${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${opts.port}`;
  const [command, args] = diesWithParent('prometheus', [
    `--config.file=${configFile}`, `--storage.tsdb.path=${join(opts.dir, 'data')}`, '--storage.tsdb.retention.time=1d',
    `--web.listen-address=${listen}`, '--log.level=warn',
  ]);
  const child: ChildProcess = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const lines: string[] = [];
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => lines.push(...chunk.split('\n').filter((l) => l !== '').slice(-20)));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = `http://${listen}`;
  const deadline = Date.now() + (opts.readyTimeoutMs ?? 30_000);
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`prometheus exited at start: ${lines.slice(-5).join(' | ')}`);
    const ready = await fetch(`${url}/-/ready`).then((r) => r.ok, () => false);
    if (ready) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`prometheus was not ready within ${opts.readyTimeoutMs ?? 30_000} ms: ${lines.slice(-5).join(' | ')}`);
    }
    await sleep(100);
  }
  return {
    url,
    pid: child.pid,
    async stop(graceMs = 2000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
}
