// Reading metrics in tests: a reader whose collection is the Prometheus text a scrape would get, its samples (read
// by the status page's parser), and `promtool check metrics` over it (Debian's prometheus package; absent, the check says so).
import { spawnSync } from 'node:child_process';
import { PrometheusSerializer } from '@opentelemetry/exporter-prometheus';
import { MetricReader } from '@opentelemetry/sdk-metrics';
import { parseExposition, type Sample } from '../../tools/local-broker/exposition.ts';

export type { Sample };

/** A pull reader for tests: `text()` collects and serializes as the prometheus reader's /metrics does. */
export class TextReader extends MetricReader {
  readonly #serializer = new PrometheusSerializer('', false, /^service\.(name|instance\.id)$/, false, true);

  /** The exposition now. */
  async text(): Promise<string> {
    const { resourceMetrics, errors } = await this.collect();
    if (errors.length > 0) throw new AggregateError(errors, 'metric collection failed');
    return this.#serializer.serialize(resourceMetrics);
  }

  protected override onForceFlush(): Promise<void> {
    return Promise.resolve();
  }

  protected override onShutdown(): Promise<void> {
    return Promise.resolve();
  }
}

/** Parses the samples of a Prometheus text exposition (comments skipped): the status page's own reader. */
export const samples = parseExposition;

/** The sum of the samples named `name` whose labels include `match` (0 when none). */
export function sumOf(text: string | Sample[], name: string, match: Record<string, string> = {}): number {
  const all = typeof text === 'string' ? samples(text) : text;
  return all.filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v)).reduce((a, s) => a + s.value, 0);
}

/** Whether promtool is on PATH. */
export function havePromtool(): boolean {
  return spawnSync('promtool', ['--version'], { stdio: 'ignore' }).status === 0;
}

/** Runs `promtool check metrics` on an exposition; returns its exit status and what it printed. */
export function promtoolCheckMetrics(text: string): { status: number | null; output: string } {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}
