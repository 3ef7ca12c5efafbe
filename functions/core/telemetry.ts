// Tracing for one function process, and the CloudEvents distributed-tracing extension that carries a trace
// from one function to the next through the Broker: the end of one session is one trace across functions.
//
// Spans always carry real ids and context (generated, sampled by the configured sampler, propagated) so trace ids
// reach logs and emitted events even when nothing is exported; they are recorded and leave the process only when
// the standard OTLP endpoint variables say where. With nowhere to send them, recording them (attributes, events,
// timings) was a tenth of a function's CPU for nothing, so then a propagating tracer makes non-recording spans.
import {
  context,
  defaultTextMapGetter,
  defaultTextMapSetter,
  diag,
  DiagLogLevel,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  TraceFlags,
  type Attributes,
  type Context,
  type DiagLogger,
  type Span,
  type SpanOptions,
  type Tracer,
} from '@opentelemetry/api';
import { randomUUID } from 'node:crypto';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import {
  defaultResource,
  detectResources,
  resourceAttributesEnvDetector,
  resourceFromAttributes,
  type Resource,
} from '@opentelemetry/resources';
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  ParentBasedSampler,
  RandomIdGenerator,
  SamplingDecision,
  SimpleSpanProcessor,
  TraceIdRatioBasedSampler,
  TracerProvider,
  type Sampler,
  type SpanExporter,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace';
import { ATTR_SERVICE_NAME } from '@opentelemetry/semantic-conventions';
import type { Logger } from 'pino';
import { ConfigError } from './config.ts';

// Incubating semantic conventions, copied rather than imported from '/incubating' as OpenTelemetry advises
// (incubating names may change between releases of that package).
export const ATTR_CLOUDEVENTS_EVENT_ID = 'cloudevents.event_id';
export const ATTR_CLOUDEVENTS_EVENT_TYPE = 'cloudevents.event_type';
export const ATTR_CLOUDEVENTS_EVENT_SOURCE = 'cloudevents.event_source';
export const ATTR_CLOUDEVENTS_EVENT_SUBJECT = 'cloudevents.event_subject';
export const ATTR_CLOUDEVENTS_EVENT_SPEC_VERSION = 'cloudevents.event_spec_version';
export const ATTR_MESSAGING_OPERATION_TYPE = 'messaging.operation.type';
export const ATTR_MESSAGING_OPERATION_NAME = 'messaging.operation.name';
export const ATTR_MESSAGING_MESSAGE_ID = 'messaging.message.id';
/** Our own attribute: the inference session a span is about. */
export const ATTR_SESSION_ID = 'session.id';

/** Name of the instrumentation scope of every span this project starts. */
export const TRACER_NAME = 'session-reaper';

/** How telemetry is set up: the service's name, the environment to read, and (tests) an exporter. */
export interface TelemetryOptions {
  /** The function's name; OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES), when set, wins. */
  serviceName: string;
  /** Environment this module reads its decisions from; process.env when absent (see initTelemetry). */
  env?: NodeJS.ProcessEnv;
  /** Where finished spans go, exported one by one as they end (tests pass an InMemorySpanExporter). */
  exporter?: SpanExporter;
  /** Receives OpenTelemetry's own warnings and errors (an unreachable collector, a dropped batch). */
  logger?: Logger;
}

/** The process's tracing: the tracer to start spans with, and flush/shutdown for a graceful exit. */
export interface Telemetry {
  readonly tracer: Tracer;
  /** service.name as resolved: OTEL_SERVICE_NAME, else OTEL_RESOURCE_ATTRIBUTES, else the option. */
  readonly serviceName: string;
  /** Whether finished spans leave the process (an exporter is configured and the SDK is enabled). */
  readonly exporting: boolean;
  /** Exports every finished span not yet exported. */
  forceFlush(): Promise<void>;
  /** Flushes, stops the exporter and unregisters the global tracer, context manager and propagator. */
  shutdown(): Promise<void>;
}

let current: Telemetry | undefined;

function setting(env: NodeJS.ProcessEnv, name: string): string | undefined {
  const raw = env[name]?.trim();
  return raw === undefined || raw === '' ? undefined : raw;
}

function ratioFrom(env: NodeJS.ProcessEnv): number {
  const raw = setting(env, 'OTEL_TRACES_SAMPLER_ARG');
  if (raw === undefined) return 1;
  const ratio = Number(raw);
  if (!Number.isFinite(ratio) || ratio < 0 || ratio > 1) {
    throw new ConfigError(`OTEL_TRACES_SAMPLER_ARG=${JSON.stringify(raw)} is invalid: expected a ratio between 0 and 1`);
  }
  return ratio;
}

/**
 * Builds the sampler OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG name (the SDK's spec-defined values);
 * sdk-trace 3 no longer reads these variables itself, so this is done here.
 */
export function samplerFromEnv(env: NodeJS.ProcessEnv): Sampler {
  const name = setting(env, 'OTEL_TRACES_SAMPLER')?.toLowerCase() ?? 'parentbased_always_on';
  switch (name) {
    case 'always_on':
      return new AlwaysOnSampler();
    case 'always_off':
      return new AlwaysOffSampler();
    case 'traceidratio':
      return new TraceIdRatioBasedSampler(ratioFrom(env));
    case 'parentbased_always_on':
      return new ParentBasedSampler({ root: new AlwaysOnSampler() });
    case 'parentbased_always_off':
      return new ParentBasedSampler({ root: new AlwaysOffSampler() });
    case 'parentbased_traceidratio':
      return new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(ratioFrom(env)) });
    default:
      throw new ConfigError(
        `OTEL_TRACES_SAMPLER=${JSON.stringify(name)} is invalid: expected always_on, always_off, traceidratio, ` +
          'parentbased_always_on, parentbased_always_off or parentbased_traceidratio',
      );
  }
}

/** Whether the standard variables name an OTLP endpoint for traces (and OTEL_TRACES_EXPORTER does not say none). */
export function otlpTracesConfigured(env: NodeJS.ProcessEnv): boolean {
  const exporter = setting(env, 'OTEL_TRACES_EXPORTER')?.toLowerCase() ?? 'otlp';
  if (exporter === 'none') return false;
  if (exporter !== 'otlp') {
    throw new ConfigError(`OTEL_TRACES_EXPORTER=${JSON.stringify(exporter)} is invalid: expected otlp or none`);
  }
  return setting(env, 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT') !== undefined || setting(env, 'OTEL_EXPORTER_OTLP_ENDPOINT') !== undefined;
}

/** Resource attribute naming one process among the replicas of a service (a pod's, for Knative's scale-outs). */
export const ATTR_SERVICE_INSTANCE_ID = 'service.instance.id';

/** This process's service.instance.id: drawn once, shared by its traces and metrics. */
export const SERVICE_INSTANCE_ID = randomUUID();

/**
 * The resource every span and metric of this process carries: its service name and a service.instance.id of its own,
 * so two pods of one function are two series, never one that goes backwards.
 */
export function resourceFor(codeName: string, envName: string | undefined): Resource {
  // Later merges win: SDK defaults, the name the code gives and this process's instance id, OTEL_RESOURCE_ATTRIBUTES
  // (so an operator can override any attribute), and last OTEL_SERVICE_NAME, which the specification ranks above them all.
  const resource = defaultResource()
    .merge(resourceFromAttributes({ [ATTR_SERVICE_NAME]: codeName, [ATTR_SERVICE_INSTANCE_ID]: SERVICE_INSTANCE_ID }))
    .merge(detectResources({ detectors: [resourceAttributesEnvDetector] }));
  return envName === undefined ? resource : resource.merge(resourceFromAttributes({ [ATTR_SERVICE_NAME]: envName }));
}

function diagLoggerFor(logger: Logger): DiagLogger {
  const child = logger.child({ component: 'opentelemetry' });
  return {
    error: (message, ...args) => child.error({ args }, message),
    warn: (message, ...args) => child.warn({ args }, message),
    info: (message, ...args) => child.info({ args }, message),
    debug: (message, ...args) => child.debug({ args }, message),
    verbose: (message, ...args) => child.trace({ args }, message),
  };
}

function unregisterGlobals(): void {
  trace.disable();
  context.disable();
  propagation.disable();
  diag.disable();
}

/**
 * Sets up tracing for this process once (later calls return the first setup until it is shut down).
 *
 * Reads from `env`: OTEL_SDK_DISABLED, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER(_ARG), OTEL_TRACES_EXPORTER and
 * whether OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set. OpenTelemetry's own components read process.env
 * themselves: the OTLP exporter all other OTEL_EXPORTER_OTLP_* variables, the resource detector
 * OTEL_RESOURCE_ATTRIBUTES. With OTEL_SDK_DISABLED=true no span is recorded, but an incoming event's trace
 * context still flows through to the events this process emits.
 */
export function initTelemetry(opts: TelemetryOptions): Telemetry {
  if (current !== undefined) return current;
  const env = opts.env ?? process.env;
  const disabled = setting(env, 'OTEL_SDK_DISABLED')?.toLowerCase() === 'true';
  const resource = resourceFor(opts.serviceName, setting(env, 'OTEL_SERVICE_NAME'));
  const resolvedName = resource.attributes[ATTR_SERVICE_NAME];
  const serviceName = typeof resolvedName === 'string' ? resolvedName : opts.serviceName;
  // Everything that can reject a setting runs before anything global is registered.
  const sampler = disabled ? undefined : samplerFromEnv(env);
  const spanProcessors: SpanProcessor[] = [];
  if (disabled) {
    // no SDK: nothing is recorded, so nothing is exported
  } else if (opts.exporter !== undefined) {
    spanProcessors.push(new SimpleSpanProcessor({ exporter: opts.exporter }));
  } else if (otlpTracesConfigured(env)) {
    spanProcessors.push(new BatchSpanProcessor({ exporter: new OTLPTraceExporter() }));
  }

  if (opts.logger !== undefined) {
    diag.setLogger(diagLoggerFor(opts.logger), { logLevel: DiagLogLevel.WARN, suppressOverrideMessage: true });
  }
  // Context and propagation are API-level: they work (and are needed) even with the SDK disabled.
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(
    new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }),
  );

  const exporting = spanProcessors.length > 0;
  const provider = disabled ? undefined : new TracerProvider({ resource, sampler, spanProcessors });
  if (provider !== undefined) trace.setGlobalTracerProvider(provider);
  const tracer = provider === undefined ? trace.getTracer(TRACER_NAME) : exporting ? provider.getTracer(TRACER_NAME) : new PropagatingTracer(sampler!);

  const telemetry: Telemetry = {
    tracer,
    serviceName,
    exporting,
    forceFlush: async () => {
      await provider?.forceFlush();
    },
    shutdown: async () => {
      if (current === telemetry) current = undefined;
      try {
        await provider?.shutdown();
      } finally {
        unregisterGlobals();
      }
    },
  };
  current = telemetry;
  return telemetry;
}

/**
 * A tracer for a process that exports nothing: each span it starts has a fresh span id in its parent's trace (or a
 * new trace), the sampled flag the configured sampler decides, exactly as the SDK's would, and records nothing.
 * Downstream services see the same trace context either way.
 */
class PropagatingTracer implements Tracer {
  readonly #sampler: Sampler;
  readonly #ids = new RandomIdGenerator();

  constructor(sampler: Sampler) {
    this.#sampler = sampler;
  }

  startSpan(name: string, options: SpanOptions = {}, ctx: Context = context.active()): Span {
    // As the SDK does: a root span ignores (and shows its sampler) no parent.
    const parentCtx = options.root === true ? trace.deleteSpan(ctx) : ctx;
    const parent = trace.getSpanContext(parentCtx);
    const valid = parent !== undefined && trace.isSpanContextValid(parent);
    const traceId = valid ? parent.traceId : this.#ids.generateTraceId();
    const decision = this.#sampler.shouldSample(parentCtx, traceId, name, options.kind ?? SpanKind.INTERNAL, options.attributes ?? {}, options.links ?? []);
    const traceState = decision.traceState ?? (valid ? parent.traceState : undefined);
    return trace.wrapSpanContext({
      traceId,
      spanId: this.#ids.generateSpanId(),
      traceFlags: decision.decision === SamplingDecision.RECORD_AND_SAMPLED ? TraceFlags.SAMPLED : TraceFlags.NONE,
      ...(traceState === undefined ? {} : { traceState }),
    });
  }

  startActiveSpan<F extends (span: Span) => unknown>(name: string, fn: F): ReturnType<F>;
  startActiveSpan<F extends (span: Span) => unknown>(name: string, options: SpanOptions, fn: F): ReturnType<F>;
  startActiveSpan<F extends (span: Span) => unknown>(name: string, options: SpanOptions, ctx: Context, fn: F): ReturnType<F>;
  startActiveSpan<F extends (span: Span) => unknown>(name: string, a: SpanOptions | F, b?: Context | F, c?: F): ReturnType<F> {
    const [options, ctx, fn] = typeof a === 'function' ? [{}, context.active(), a] : typeof b === 'function' ? [a, context.active(), b] : [a, b ?? context.active(), c!];
    const span = this.startSpan(name, options, ctx);
    return context.with(trace.setSpan(ctx, span), (): ReturnType<F> => fn(span) as ReturnType<F>);
  }
}

// The CloudEvents extension carries exactly the W3C header values, so the W3C propagator reads and writes it.
const w3c = new W3CTraceContextPropagator();

/** The W3C trace context of a CloudEvent: its `traceparent` and `tracestate` extension attributes. */
// A type alias, not an interface, so it fits CloudEvent's open attribute map (cloneWith) as it is.
export type EventTraceContext = {
  traceparent?: string;
  tracestate?: string;
};

/** Returns the context an event's `traceparent`/`tracestate` extensions describe (the root context if none). */
export function contextFromEvent(ev: EventTraceContext): Context {
  // The event alone decides its parent: a stale span active in this process must never adopt it.
  const carrier: Record<string, string> = {};
  if (typeof ev.traceparent === 'string') carrier.traceparent = ev.traceparent;
  if (typeof ev.tracestate === 'string') carrier.tracestate = ev.tracestate;
  return w3c.extract(ROOT_CONTEXT, carrier, defaultTextMapGetter);
}

/** Returns the active trace context as `traceparent`/`tracestate` values (empty when no valid span is active). */
export function traceHeadersForActiveContext(): EventTraceContext {
  const carrier: Record<string, string> = {};
  w3c.inject(context.active(), carrier, defaultTextMapSetter);
  const out: EventTraceContext = {};
  if (carrier.traceparent !== undefined) out.traceparent = carrier.traceparent;
  if (carrier.tracestate !== undefined) out.tracestate = carrier.tracestate;
  return out;
}

/** The CloudEvent attributes a consumer span describes. */
export interface TracedEvent extends EventTraceContext {
  id: string;
  type: string;
  source: string;
  subject?: string;
  specversion?: string;
}

/**
 * Runs `fn` inside a CONSUMER span that continues the event's trace, with CloudEvents attributes set; a throw is
 * recorded on the span (exception event, ERROR status) and rethrown. Pass the session id as `session.id`
 * ({@link ATTR_SESSION_ID}) in `attrs` when it is known.
 */
export async function withEventSpan<T>(
  tracer: Tracer,
  name: string,
  ev: TracedEvent,
  attrs: Attributes,
  fn: (span: Span) => Promise<T>,
): Promise<T> {
  const attributes: Attributes = {
    [ATTR_MESSAGING_OPERATION_TYPE]: 'process',
    [ATTR_MESSAGING_OPERATION_NAME]: 'process',
    [ATTR_MESSAGING_MESSAGE_ID]: ev.id,
    [ATTR_CLOUDEVENTS_EVENT_ID]: ev.id,
    [ATTR_CLOUDEVENTS_EVENT_TYPE]: ev.type,
    [ATTR_CLOUDEVENTS_EVENT_SOURCE]: ev.source,
    ...attrs,
  };
  if (ev.subject !== undefined) attributes[ATTR_CLOUDEVENTS_EVENT_SUBJECT] = ev.subject;
  if (ev.specversion !== undefined) attributes[ATTR_CLOUDEVENTS_EVENT_SPEC_VERSION] = ev.specversion;
  return tracer.startActiveSpan(name, { kind: SpanKind.CONSUMER, attributes }, contextFromEvent(ev), async (span) => {
    try {
      return await fn(span);
    } catch (err) {
      recordFailure(span, err);
      throw err;
    } finally {
      span.end();
    }
  });
}

/** Marks a span failed by `err`: an exception event and ERROR status with the error's message. */
export function recordFailure(span: Span, err: unknown): void {
  if (err instanceof Error) {
    span.recordException(err);
    span.setStatus({ code: SpanStatusCode.ERROR, message: err.message });
  } else {
    span.recordException(String(err));
    span.setStatus({ code: SpanStatusCode.ERROR, message: String(err) });
  }
}
