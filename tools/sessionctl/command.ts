// The shape every sessionctl command shares: what it is given (its arguments, the environment, a clock, a way to
// print as it goes) and what it gives back (one result, rendered for people or as one JSON document).

/** The Broker sessionctl uses when neither --broker nor SESSIONCTL_BROKER_URL says otherwise (`npm start`'s). */
export const DEFAULT_BROKER_URL = 'http://localhost:8080';

/** Option values as parsed from the command line (node:util parseArgs). */
export interface OptionValues {
  json?: boolean | undefined;
  help?: boolean | undefined;
  broker?: string | undefined;
  state?: string | undefined;
  limit?: string | undefined;
  data?: string | undefined;
  file?: string | undefined;
  source?: string | undefined;
  id?: string | undefined;
  tenant?: string | undefined;
  'token-file'?: string | undefined;
  reason?: string | undefined;
  'older-than'?: string | undefined;
  all?: boolean | undefined;
  watch?: boolean | undefined;
  'redis-only'?: boolean | undefined;
}

/** A command's result: the JSON document for --json, the text for people, and how the process should end. */
export interface Output {
  json: unknown;
  human: string;
  /** Non-zero when the command ran but something it reports failed (a replay that failed again, a Broker down). */
  exitCode?: 0 | 1;
  /** Lines for stderr (with either format): what went wrong in a partial result. */
  warnings?: string[];
}

/** What a command runs with. */
export interface CommandContext {
  readonly positionals: readonly string[];
  readonly options: OptionValues;
  readonly env: NodeJS.ProcessEnv;
  now(): number;
  /** Prints one result as it comes (stats --watch); commands that return their Output do not need it. */
  print(output: Output): void;
  /** Aborted on Ctrl-C or SIGTERM: long-running commands stop cleanly. */
  readonly interrupted: AbortSignal;
}

/** A command: resolves with its Output, or undefined when it printed its results itself. */
export type Command = (ctx: CommandContext) => Promise<Output | undefined>;
