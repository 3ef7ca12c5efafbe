// PromQL in tests: the metric names an expression selects, parsed with Prometheus's own grammar (lezer-promql), and
// each name traced back to the catalogue metric it is a series of (a histogram's _bucket, _sum and _count).
import { parser } from '@prometheus-io/lezer-promql';
import { CATALOGUE, type MetricSpec } from '../../functions/core/metrics.ts';

/** The metric names an expression selects; throws, quoting the expression, when it does not parse. */
export function selectedNames(expr: string): string[] {
  const names: string[] = [];
  const errors: string[] = [];
  parser.parse(expr).iterate({
    enter(node) {
      if (node.type.isError) errors.push(`at ${node.from}: ${JSON.stringify(expr.slice(node.from, node.from + 20))}`);
      if (node.name === 'Identifier' && node.node.parent?.name === 'VectorSelector') names.push(expr.slice(node.from, node.to));
    },
  });
  if (errors.length > 0) throw new Error(`PromQL does not parse (${errors.join('; ')}): ${expr}`);
  return names;
}

/** The catalogue metric a series name belongs to (`x_bucket` of histogram `x`), or undefined. */
export function catalogueMetricOf(series: string): MetricSpec | undefined {
  const specs: MetricSpec[] = Object.values(CATALOGUE);
  return specs.find((s) => s.name === series) ?? specs.find((s) => s.type === 'histogram' && ['_bucket', '_sum', '_count'].some((x) => series === s.name + x));
}
