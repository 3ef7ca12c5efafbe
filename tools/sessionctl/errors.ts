// sessionctl's failures, typed so the exit code follows from the error alone: scripts can tell a typo (2) from a
// session that is not there (3) from an outage (1).

/** A bad command line or bad input (unknown option, invalid JSON, data that breaks the contract): exit 2. */
export class UsageError extends Error {
  override name = 'UsageError';
  readonly exitCode = 2;
}

/** The thing asked about does not exist (unknown session, unknown dead letter): exit 3. */
export class NotFoundError extends Error {
  override name = 'NotFoundError';
  readonly exitCode = 3;
}

/** A dependency failed or refused (Redis or the Broker unreachable, a replay that failed again): exit 1. */
export class RuntimeFailure extends Error {
  override name = 'RuntimeFailure';
  readonly exitCode = 1;
}

/** The process exit code for a thrown value: 2 usage, 3 not found, 1 anything else. */
export function exitCodeOf(err: unknown): 1 | 2 | 3 {
  if (err instanceof UsageError) return 2;
  if (err instanceof NotFoundError) return 3;
  return 1;
}
