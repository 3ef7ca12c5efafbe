// Configuration is read from the environment once, validated against one schema, and frozen: a bad value stops
// the process at start with a message naming the variable, instead of surfacing as odd behaviour later.
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';

const Int = (min: number, dflt: number, description: string, max?: number) =>
  Type.Integer({ minimum: min, default: dflt, description, ...(max === undefined ? {} : { maximum: max }) });

/** LOG_LEVEL, as every process of the project reads it: pino's levels, info by default. */
export const LogLevelSetting = () =>
  Type.Union([Type.Literal('fatal'), Type.Literal('error'), Type.Literal('warn'), Type.Literal('info'), Type.Literal('debug'), Type.Literal('trace'), Type.Literal('silent')], { default: 'info', description: 'Log level.' });

/** Every setting, its environment variable, default and meaning; the README's configuration table mirrors it. */
export const ConfigSchema = Type.Object({
  REDIS_URL: Type.String({ default: 'redis://127.0.0.1:6379', description: 'Single Redis to use (ignored when REDIS_CLUSTER_NODES is set).' }),
  REDIS_CLUSTER_NODES: Type.String({ default: '', description: 'Comma-separated host:port seeds of a Redis Cluster; empty for a single Redis.' }),
  REDIS_PASSWORD: Type.String({ default: '', description: 'Password for Redis (or the Cluster), when it needs one.' }),
  REDIS_TLS: Type.Boolean({ default: false, description: 'Connect to Redis over TLS.' }),
  REDIS_KEY_PREFIX: Type.String({ default: 'sr', pattern: '^[A-Za-z0-9_.-]{1,32}$', description: 'Prefix of every key this system writes.' }),
  INDEX_BUCKETS: Int(1, 32, 'Buckets the session keyspace and deadline index are sharded into (fixed for the life of a deployment).', 4096),
  TOMBSTONE_TTL_MS: Int(1000, 86_400_000, 'How long a destroyed incarnation is remembered so late events are recognised; must outlast the Broker redelivery window.'),
  SESSION_RECORD_PACKING: Type.Boolean({ default: false, description: "A session record that holds only what its open wrote is kept packed in one field of its bucket's quiet hash (~48 B a session less than a hash of its own). Turn on only once every replica runs a version that reads quiet records." }),
  MAX_EVENT_BYTES: Int(1024, 1_048_576, 'Largest accepted CloudEvent (body plus attributes), in bytes; a larger request is answered 413 before its body is read.', 16_777_216),
  MAX_BATCH_BYTES: Int(1024, 2_097_152, 'Largest accepted batch request (heartbeat-timeout only), in bytes; answered 413 beyond it.', 67_108_864),
  DEFAULT_HEARTBEAT_INTERVAL_MS: Int(100, 30_000, 'Heartbeat interval assumed when session.opened sets none.'),
  DEFAULT_MISSED_BEATS: Int(1, 3, 'Missed heartbeats after which a session is dead, when session.opened sets none.'),
  MAX_HOLD_MS: Int(1000, 3_600_000, 'Longest hold a session.hold may grant; longer requests are capped.'),
  CORE_TIMEOUT_MS: Int(10, 1000, 'Timeout of core calls: Redis commands and event emission to the Broker.'),
  RUNTIME_TIMEOUT_MS: Int(100, 5000, 'Timeout of one call to a GPU inference runtime (third-party tier).'),
  DEADLINE_POLL_MS: Int(10, 100, 'How often the deadline engine re-reads bucket heads to learn of new earlier deadlines (at most 100, the shortest liveness window, so the deadline of a new session is known before it falls due).', 100),
  DESTROY_STALL_MS: Int(1000, 120_000, "A destroy with no progress for this long is resumed by the deadline engine; longer than the gpu-release Trigger's redelivery window."),
  BLIND_GAP_MS: Int(
    0,
    2000,
    'The outage rule: a bucket of the deadline index no deadline engine claimed in for longer than this (Redis down or unreachable, or no engine running) was blind, and the silence of its sessions inside that span does not count towards their liveness window. 0 turns the rule off (live sessions then expire after an outage longer than their window).',
  ),
  INGEST_SILENCE_MS: Int(
    0,
    5000,
    "The outage rule's ingest side: a bucket whose heartbeats stop for this long, and for 20 times their usual gap, while sessions are due to send some (the Broker or heartbeat-timeout down) is unheard: its expiries wait until heartbeats are heard again, and the unheard span does not count. 0: silences are not judged.",
  ),
  BLIND_HOLD_MAX_MS: Int(1000, 600_000, 'The longest an unheard bucket holds its expiries; past it the senders are taken to have really stopped, and expiries resume (late by this much).'),
  RELEASE_MAX_ATTEMPTS: Int(1, 5, 'GPU release attempts a destroy makes (each after a stall or a refusal) before it gives up: session.destroy.failed, and it waits in `sessionctl stuck` for an operator.', 100),
  K_SINK: Type.String({ default: '', description: 'Where emitted events go (the Broker); injected by Knative SinkBinding or ContainerSource.' }),
  SINK_TOKEN_FILE: Type.String({
    default: '',
    description: "File holding the bearer token sent with every emitted event: a projected ServiceAccount token whose audience is the Broker's, so its EventPolicies know the sender. Re-read as it rotates; none sent when empty.",
  }),
  K_CA_CERTS: Type.String({ default: '', description: 'CA certificates (PEM) trusted for an https K_SINK besides the system ones (Knative transport encryption; SinkBinding injects it).' }),
  RUNTIMES: Type.String({
    default: '',
    description: 'The GPU runtimes that may be called, as a JSON array of {name, url, nodes?} (functions/core/runtime-registry.ts); a session.opened naming any other is refused. None when empty.',
  }),
  OUTBOUND_ALLOWED_CIDRS: Type.String({
    default: '',
    description: 'Comma-separated networks (CIDR) that calls to runtimes and hooks may reach although loopback, link-local or private (a cluster\'s Service network); every other such address is refused.',
  }),
  LISTEN_HOST: Type.String({ default: '', description: 'Interface a function or a long-running part listens on; every interface when empty (in a pod), 127.0.0.1 under npm start.' }),
  LOG_LEVEL: LogLevelSetting(),
});

export type Config = Readonly<Static<typeof ConfigSchema>>;

/** A setting that failed validation; the message names the variable and the rule it broke. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

function coerce(schema: TSchema, raw: string): unknown {
  if (schema.type === 'integer' || schema.type === 'number') return raw.trim() === '' ? raw : Number(raw);
  if (schema.type === 'boolean') {
    if (/^(true|1|yes)$/i.test(raw)) return true;
    if (/^(false|0|no)$/i.test(raw)) return false;
    return raw;
  }
  return raw;
}

/** Parses any object schema from an environment map: defaults for what is unset, a ConfigError for what is wrong. */
export function readSettings<S extends ReturnType<typeof Type.Object>>(schema: S, env: NodeJS.ProcessEnv): Readonly<Static<S>> {
  const out: Record<string, unknown> = {};
  for (const [name, prop] of Object.entries(schema.properties as Record<string, TSchema>)) {
    const raw = env[name];
    out[name] = raw === undefined || raw === '' ? prop.default : coerce(prop, raw);
  }
  const first = Value.Errors(schema, out).First();
  if (first) {
    const name = first.path.replace(/^\//, '');
    throw new ConfigError(`${name}=${JSON.stringify(env[name] ?? '')} is invalid: ${first.message}`);
  }
  return Object.freeze(out);
}

/** Reads and validates the core configuration from the environment. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  return readSettings(ConfigSchema, env);
}

/**
 * The standard OpenTelemetry metrics variables this project honours. The SDK 3.x reads none of them itself, so they
 * are parsed here, once, like every other setting. OTEL_METRICS_EXPORTER lists readers (comma-separated): `otlp`
 * pushes to the collector (only when an OTLP endpoint is set, as for traces), `prometheus` serves the exposition on
 * OTEL_EXPORTER_PROMETHEUS_HOST:PORT (npm start's, and any scrape-based setup), `none` neither.
 */
export const MetricsSettingsSchema = Type.Object({
  OTEL_METRICS_EXPORTER: Type.String({
    default: 'otlp', pattern: '^\\s*(otlp|prometheus|none)\\s*(,\\s*(otlp|prometheus|none)\\s*)*$',
    description: 'Metric readers, comma-separated: otlp (push to OTEL_EXPORTER_OTLP_(METRICS_)ENDPOINT when set), prometheus (serve /metrics), none.',
  }),
  OTEL_METRIC_EXPORT_INTERVAL: Int(100, 60_000, 'Milliseconds between two OTLP metric exports.', 3_600_000),
  OTEL_METRIC_EXPORT_TIMEOUT: Int(100, 30_000, 'Longest one OTLP metric export may take, ms.', 600_000),
  OTEL_EXPORTER_PROMETHEUS_PORT: Int(1, 9464, 'Port the prometheus reader serves /metrics on.', 65_535),
  OTEL_EXPORTER_PROMETHEUS_HOST: Type.String({ default: '', description: 'Interface the prometheus reader listens on; LISTEN_HOST (every interface when empty) if unset.' }),
});

export type MetricsSettings = Readonly<Static<typeof MetricsSettingsSchema>>;

/** Reads and validates the metrics settings; `readers` is OTEL_METRICS_EXPORTER as a set (none removed). */
export function loadMetricsSettings(env: NodeJS.ProcessEnv = process.env): MetricsSettings & { readers: ReadonlySet<'otlp' | 'prometheus'> } {
  const s = readSettings(MetricsSettingsSchema, env);
  const readers = new Set(s.OTEL_METRICS_EXPORTER.split(',').map((r) => r.trim().toLowerCase()).filter((r): r is 'otlp' | 'prometheus' => r === 'otlp' || r === 'prometheus'));
  if (s.OTEL_METRICS_EXPORTER.split(',').some((r) => r.trim() === 'none') && readers.size > 0) {
    throw new ConfigError(`OTEL_METRICS_EXPORTER=${JSON.stringify(s.OTEL_METRICS_EXPORTER)} is invalid: none cannot be listed beside a reader`);
  }
  return Object.freeze({ ...s, readers });
}
