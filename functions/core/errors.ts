// The two ways a handler can fail, typed so the HTTP answer follows from the error alone: a ContractError (400)
// tells the Broker the event can never succeed, so it is not redelivered; a TransientError (503) tells it to
// redeliver, because the fault was in our infrastructure, not in the event.

/** Why an event broke the contract; stable strings, safe to count in metrics and match in tests. */
export type ContractErrorCode =
  | 'BAD_JSON'
  | 'NOT_A_CLOUDEVENT'
  | 'UNKNOWN_TYPE'
  | 'MISSING_FIELD'
  | 'INVALID_FIELD'
  | 'UNKNOWN_FIELD'
  | 'BAD_SESSION_ID'
  | 'FORBIDDEN_SOURCE'
  | 'UNREGISTERED_RUNTIME'
  | 'TOO_LARGE';

/** An event that breaks the contract: answered 400 and never retried, because resending it cannot help. */
export class ContractError extends Error {
  override name = 'ContractError';
  readonly status = 400;
  /** What kind of violation this is. */
  readonly code: ContractErrorCode;
  /** Where the violation is: `ce.<attribute>`, `data.<path>` (e.g. `data.placement.runtimeUrl`), `body` or `event`. */
  readonly field: string;
  /** What the rule is, in words meant for the producer of the event. */
  readonly reason: string;

  constructor(code: ContractErrorCode, field: string, reason: string, options?: ErrorOptions) {
    super(`${code} at ${field}: ${reason}`, options);
    this.code = code;
    this.field = field;
    this.reason = reason;
  }

  /** The body of the 400 answer: enough for the producer to fix the event, nothing about our internals. */
  toJSON(): { code: ContractErrorCode; field: string; reason: string } {
    return { code: this.code, field: this.field, reason: this.reason };
  }
}

/**
 * A well-formed event about a session that belongs to another tenant (or a tenant-owned session, by an event that
 * names none): answered 403 and never retried, and nothing is written. The sender may act on its own sessions only.
 */
export class OwnershipError extends Error {
  override name = 'OwnershipError';
  readonly status = 403;
  readonly sessionId: string;

  constructor(sessionId: string) {
    super(`session ${sessionId} belongs to another tenant`);
    this.sessionId = sessionId;
  }
}

/** An infrastructure fault (Redis, the Broker, a timeout): answered 503 so the Broker redelivers the event. */
export class TransientError extends Error {
  override name = 'TransientError';
  readonly status = 503;

  constructor(message: string, options: { cause: unknown }) {
    super(message, options);
  }
}

/**
 * A 503 that is part of normal operation — a limit asking the Broker to redeliver later (the storm guard, a reopen
 * waiting for the previous incarnation's destroy) — logged at info rather than as a failure.
 */
export class BackpressureError extends TransientError {
  override name = 'BackpressureError';
}

/** The HTTP status a handler answers with for a thrown value: 400, 403, 503, or 500 for anything unexpected. */
export function httpStatusOf(err: unknown): 400 | 403 | 500 | 503 {
  if (err instanceof ContractError) return err.status;
  if (err instanceof OwnershipError) return err.status;
  if (err instanceof TransientError) return err.status;
  return 500;
}

/**
 * An operation a runtime's API refuses (the simulator's, the reference engine's): the HTTP status and problem code it
 * is answered with, and any further problem fields.
 */
export class ApiRefusal extends Error {
  readonly status: number;
  readonly code: string;
  readonly extra: Record<string, unknown>;
  constructor(status: number, code: string, message: string, extra: Record<string, unknown> = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.extra = extra;
  }
}
