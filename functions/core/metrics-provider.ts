// The OpenTelemetry metrics SDK for one process: its MeterProvider, on the same resource as its traces (service.name
// and a service.instance.id of its own), and the readers the settings ask for (config.ts, MetricsSettingsSchema):
//
// - `otlp` pushes to the collector every OTEL_METRIC_EXPORT_INTERVAL, when an OTLP endpoint is set. This is the one
//   that works in the cluster: Knative gives a container one port and scales pods to zero, so a scraper would miss
//   the pods that come and go; pushing reaches the collector that already takes the traces, and the last interval is
//   flushed on SIGTERM (shutdown) so a pod scaled down loses nothing.
// - `prometheus` serves the text exposition at /metrics on its own port (exporter-prometheus's server), which is what
//   `npm start` scrapes. A side port, not /metrics on the function's port: that port is the Broker's way in, behind
//   the request bounds and the mesh policy that admits only the Broker, and a scrape has no business there.
import { OTLPMetricExporter } from '@opentelemetry/exporter-metrics-otlp-http';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { AggregationTemporality, MeterProvider, PeriodicExportingMetricReader, type IMetricReader } from '@opentelemetry/sdk-metrics';
import type { Logger } from 'pino';
import { loadMetricsSettings } from './config.ts';
import { createInstruments } from './metrics.ts';
import { resourceFor } from './telemetry.ts';

/** Name of the instrumentation scope of every instrument this project makes. */
export const METER_NAME = 'session-reaper';

/** How metrics are set up for one process. */
export interface MetricsOptions {
  /** The process kind (workload name): service.name unless OTEL_SERVICE_NAME says otherwise, and which counters it reports. */
  serviceName: string;
  env?: NodeJS.ProcessEnv;
  /** The registered runtimes' names: the values of every `runtime` label. */
  runtimes?: readonly string[];
  /** Interface for the prometheus reader when OTEL_EXPORTER_PROMETHEUS_HOST is unset (the process's LISTEN_HOST). */
  listenHost?: string;
  /** Tests: read metrics through this reader (e.g. an InMemoryMetricExporter's) instead of the configured ones. */
  reader?: IMetricReader;
  logger?: Logger;
}

/** One process's metrics: the catalogue's instruments, and flush/shutdown for a graceful exit. */
export interface ProcessMetrics {
  readonly instruments: ReturnType<typeof createInstruments>;
  /** The port the prometheus reader serves /metrics on, when it runs. */
  readonly prometheusPort: number | undefined;
  /** Collects and exports what is not exported yet. */
  forceFlush(): Promise<void>;
  /** Flushes, stops the readers (and the prometheus server). */
  shutdown(): Promise<void>;
}

let current: ProcessMetrics | undefined;

function otlpMetricsEndpointSet(env: NodeJS.ProcessEnv): boolean {
  const set = (name: string) => (env[name]?.trim() ?? '') !== '';
  return set('OTEL_EXPORTER_OTLP_METRICS_ENDPOINT') || set('OTEL_EXPORTER_OTLP_ENDPOINT');
}

/**
 * Sets up metrics for this process once (later calls return the first setup until it is shut down), unless a test
 * passes its own reader: then a private provider. With OTEL_SDK_DISABLED=true the instruments record into nothing.
 */
export function initMetrics(opts: MetricsOptions): ProcessMetrics {
  if (opts.reader === undefined && current !== undefined) return current;
  const env = opts.env ?? process.env;
  const settings = loadMetricsSettings(env);
  const disabled = env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true';
  const readers: IMetricReader[] = [];
  let prometheusPort: number | undefined;
  if (opts.reader !== undefined) readers.push(opts.reader);
  else if (!disabled) {
    if (settings.readers.has('otlp') && otlpMetricsEndpointSet(env)) {
      readers.push(new PeriodicExportingMetricReader({
        // Cumulative, as Prometheus (behind the collector) expects; the exporter reads the other OTEL_EXPORTER_OTLP_*.
        exporter: new OTLPMetricExporter({ temporalityPreference: AggregationTemporality.CUMULATIVE }),
        exportIntervalMillis: settings.OTEL_METRIC_EXPORT_INTERVAL,
        exportTimeoutMillis: Math.min(settings.OTEL_METRIC_EXPORT_TIMEOUT, settings.OTEL_METRIC_EXPORT_INTERVAL),
      }));
    }
    if (settings.readers.has('prometheus')) {
      prometheusPort = settings.OTEL_EXPORTER_PROMETHEUS_PORT;
      const host = settings.OTEL_EXPORTER_PROMETHEUS_HOST || opts.listenHost || undefined;
      readers.push(new PrometheusExporter({
        port: prometheusPort, ...(host === undefined ? {} : { host }), withoutScopeInfo: true,
        // service.name and service.instance.id as labels, so the series of two processes never merge.
        withResourceConstantLabels: /^service\.(name|instance\.id)$/,
      }, (err) => {
        if (err) opts.logger?.error({ err, port: prometheusPort }, 'the prometheus metrics endpoint could not listen');
      }));
    }
  }
  const resource = resourceFor(opts.serviceName, env.OTEL_SERVICE_NAME?.trim() || undefined);
  const provider = new MeterProvider({ resource, readers });
  const instruments = createInstruments(provider.getMeter(METER_NAME), opts.runtimes ?? [], opts.serviceName);
  const metrics: ProcessMetrics = {
    instruments,
    prometheusPort,
    forceFlush: () => provider.forceFlush(),
    shutdown: async () => {
      if (current === metrics) current = undefined;
      await provider.shutdown();
    },
  };
  if (opts.reader === undefined) current = metrics;
  return metrics;
}
