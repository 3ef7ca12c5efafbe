// The local Broker's own metrics: it keeps its dead letters itself (no dead-letter receiver runs under `npm start`),
// so it counts them under the catalogue's name for them, sessionreaper_dead_letters_total (by event type and why the
// last delivery failed), as the deployed receiver does, and serves them at GET /metrics on its ingress port. The
// status page, a local Prometheus (`npm start -- --prometheus`) and its SessionReaperDeadLetters alert read them there.
//
// A MeterProvider of its own (not the process's: the Broker runs inside the launcher and inside tests, several at
// once), with exporter-prometheus's serializer behind the ingress's own route rather than a server of its own.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { MeterProvider } from '@opentelemetry/sdk-metrics';
import type { DeadLetterReason } from '../../functions/core/dead-letter-store.ts';
import { CatalogueCounter, CATALOGUE, shortType } from '../../functions/core/metrics.ts';
import { METER_NAME } from '../../functions/core/metrics-provider.ts';
import { resourceFor } from '../../functions/core/telemetry.ts';

/** The process kind the Broker's metrics are recorded as (service.name, and `recordedBy` in the catalogue). */
export const BROKER_SERVICE_NAME = 'local-broker';

/** The class of why a delivery finally failed, as sessionreaper_dead_letters_total labels it. */
export function deadLetterReasonClass(reason: Pick<DeadLetterReason, 'status' | 'error'>): string {
  if (reason.status !== undefined) return reason.status >= 500 ? 'http_5xx' : reason.status >= 400 ? 'http_4xx' : 'other';
  if (reason.error === undefined) return 'other';
  // attempt() in broker.ts words a timeout so; anything else it caught is a connection that failed.
  return reason.error.startsWith('no answer within') ? 'timeout' : 'unreachable';
}

/** The Broker's metrics: count a dead letter, serve the exposition, shut down. */
export interface BrokerMetrics {
  /** Counts one dead letter kept, by its event type and the reason its last delivery failed. */
  deadLetter(type: unknown, reason: Pick<DeadLetterReason, 'status' | 'error'>): void;
  /** Answers GET /metrics with the Prometheus text exposition. */
  serve(req: IncomingMessage, res: ServerResponse): void;
  shutdown(): Promise<void>;
}

/** Makes the Broker's metrics (nothing listens: `serve` is called from the ingress). */
export function createBrokerMetrics(): BrokerMetrics {
  const exporter = new PrometheusExporter({
    preventServerStart: true, withoutScopeInfo: true, withResourceConstantLabels: /^service\.(name|instance\.id)$/,
  });
  const provider = new MeterProvider({ resource: resourceFor(BROKER_SERVICE_NAME, undefined), readers: [exporter] });
  const deadLetters = new CatalogueCounter(provider.getMeter(METER_NAME), CATALOGUE.deadLetters, []);
  return {
    deadLetter: (type, reason) => deadLetters.add(1, shortType(String(type)), deadLetterReasonClass(reason)),
    serve: (req, res) => exporter.getMetricsRequestHandler(req, res),
    shutdown: () => provider.shutdown(),
  };
}
