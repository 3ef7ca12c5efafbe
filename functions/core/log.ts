// Structured logs: one JSON object per line, each naming its service, and — whenever a span is active — the
// OpenTelemetry trace and span it belongs to, so a collector can link every log line to its trace.
import { hostname } from 'node:os';
import { isSpanContextValid, trace } from '@opentelemetry/api';
import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger } from 'pino';

/** Field names of the trace correlation fields, the same names @opentelemetry/instrumentation-pino writes. */
export const TRACE_ID_KEY = 'trace_id';
export const SPAN_ID_KEY = 'span_id';
export const TRACE_FLAGS_KEY = 'trace_flags';

/** How a logger is made: the service it speaks for, its level, and (tests) where its lines go. */
export interface LoggerOptions {
  /** The function's name; written as `service` on every line. */
  service: string;
  /** fatal, error, warn, info, debug, trace or silent. */
  level: string;
  /** Where lines go; standard output when absent. */
  destination?: DestinationStream;
}

/** The identifiers a log line about a session, an event or a trace carries. */
export interface LogIds {
  sessionId?: string;
  incarnation?: number;
  traceId?: string;
  spanId?: string;
  eventId?: string;
  eventType?: string;
}

/** Bindings a child logger carries: session and event ids under their own names, trace ids under OTel's. */
export type LogBindings = Record<string, string | number>;

// Adds the active span's ids to each line. A line whose logger already has a trace id bound (see logContext)
// keeps that one, so no line ever carries two `trace_id` keys.
function traceCorrelation(_mergeObject: object, _level: number, logger: Logger): object {
  const span = trace.getActiveSpan();
  if (span === undefined) return {};
  const ctx = span.spanContext();
  if (!isSpanContextValid(ctx)) return {};
  if (TRACE_ID_KEY in logger.bindings()) return {};
  return {
    [TRACE_ID_KEY]: ctx.traceId,
    [SPAN_ID_KEY]: ctx.spanId,
    [TRACE_FLAGS_KEY]: `0${ctx.traceFlags.toString(16)}`.slice(-2),
  };
}

/** Creates the process's root logger: JSON lines with `service`, ISO time, a textual level and trace ids. */
export function createLogger(opts: LoggerOptions): Logger {
  return pino(
    {
      level: opts.level,
      base: { service: opts.service, pid: process.pid, hostname: hostname() },
      timestamp: pino.stdTimeFunctions.isoTime,
      // A textual level reads the same in every log backend; numbers need pino's table to decode.
      formatters: { level: (label) => ({ level: label }) },
      serializers: { err: pino.stdSerializers.err },
      mixin: traceCorrelation,
    },
    opts.destination,
  );
}

/** Turns session, event and trace ids into child-logger bindings, leaving out those that are unknown. */
export function logContext(ids: LogIds): LogBindings {
  const out: LogBindings = {};
  if (ids.sessionId !== undefined) out.sessionId = ids.sessionId;
  if (ids.incarnation !== undefined) out.incarnation = ids.incarnation;
  if (ids.eventId !== undefined) out.eventId = ids.eventId;
  if (ids.eventType !== undefined) out.eventType = ids.eventType;
  // Trace ids are bound explicitly only for work done outside any span (inside one, the mixin adds them).
  if (ids.traceId !== undefined) out[TRACE_ID_KEY] = ids.traceId;
  if (ids.spanId !== undefined) out[SPAN_ID_KEY] = ids.spanId;
  return out;
}

/** Returns a child logger whose every line carries the given session, event and trace ids. */
export function withLogContext(logger: Logger, ids: LogIds): Logger {
  return logger.child(logContext(ids));
}
