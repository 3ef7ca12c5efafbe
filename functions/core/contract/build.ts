// Builds the CloudEvents the system emits, validated against the same schemas inbound events are: an event we
// emit is an event another of our functions will parse, so a bad one is caught here, at its source.
import { randomUUID } from 'node:crypto';
import { CloudEvent, ValidationError } from 'cloudevents';
import { ContractError } from '../errors.ts';
import { isEmittedType, schemaIdOf, type DataOf, type EmittedType } from './events.ts';
import { validateData } from './parse.ts';

/** Attributes of an emitted event that are not in its data. */
export interface BuildOptions {
  /** Who emits it, e.g. `/session-reaper/destroy-dispatch` (a URI reference). */
  source: string;
  /** Event id; give a deterministic one where a redelivered input must emit the same event (dedup is source + id). */
  id?: string;
  /** W3C trace context to carry as the distributed-tracing extension. */
  traceparent?: string;
  tracestate?: string;
  /** When the occurrence happened; now when absent. */
  time?: Date;
}

const TRACEPARENT_PATTERN = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;

/** Builds an emitted CloudEvent with subject = sessionId; throws ContractError if the data breaks the contract. */
export function buildEvent<T extends EmittedType>(type: T, data: DataOf<T>, opts: BuildOptions): CloudEvent<DataOf<T>> {
  if (!isEmittedType(type)) throw new ContractError('UNKNOWN_TYPE', 'ce.type', `${String(type)} is not a type the system emits`);
  const valid = validateData(type, data);
  const time = opts.time ?? new Date();
  if (Number.isNaN(time.getTime())) throw new ContractError('INVALID_FIELD', 'ce.time', 'is not a valid date');
  if (opts.traceparent !== undefined && !TRACEPARENT_PATTERN.test(opts.traceparent)) {
    throw new ContractError('INVALID_FIELD', 'ce.traceparent', 'must be a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)');
  }
  const tracing = opts.traceparent === undefined ? {} : { traceparent: opts.traceparent, ...(opts.tracestate ? { tracestate: opts.tracestate } : {}) };
  try {
    return new CloudEvent<DataOf<T>>({
      specversion: '1.0',
      id: opts.id ?? randomUUID(),
      source: opts.source,
      type,
      subject: valid.sessionId,
      time: time.toISOString(),
      datacontenttype: 'application/json',
      dataschema: schemaIdOf(type),
      data: valid,
      ...tracing,
    });
  } catch (err) {
    if (err instanceof ValidationError) {
      const first = (err.errors as Array<{ instancePath?: string }>)[0];
      const attribute = first?.instancePath ? first.instancePath.slice(1) : undefined;
      throw new ContractError('NOT_A_CLOUDEVENT', attribute ? `ce.${attribute}` : 'ce', err.message.split('\n')[0] ?? err.message, { cause: err });
    }
    throw err;
  }
}
