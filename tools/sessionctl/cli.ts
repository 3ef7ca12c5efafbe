#!/usr/bin/env node
// sessionctl: the operator's command line for session-reaper — list and inspect sessions, send any contract event,
// force a destroy, find stuck destroys, read and replay dead letters, watch the live counters. Run it with
// `npx sessionctl …` or `npm run sessionctl -- …` (Node 24 runs this TypeScript file directly).
//
// Output is for people by default (aligned tables) and one JSON document on stdout with --json. Errors go to
// stderr, with exit code 1 when a dependency failed (Redis or the Broker unreachable), 2 for a bad command line or
// bad input, and 3 when the session or dead letter asked about does not exist.
import { parseArgs } from 'node:util';
import { DEFAULT_BROKER_URL, type Command, type CommandContext, type OptionValues, type Output } from './command.ts';
import { UsageError, exitCodeOf } from './errors.ts';
import { withStackDefaults } from './stack-defaults.ts';

// Commands load their modules (Redis client, contract validators) on first use: --help and usage errors stay instant.
const sessionsCommand: Command = async (ctx) => (await import('./session-commands.ts')).sessionsCommand(ctx);
const inspectCommand: Command = async (ctx) => (await import('./session-commands.ts')).inspectCommand(ctx);
const stuckCommand: Command = async (ctx) => (await import('./session-commands.ts')).stuckCommand(ctx);
const retryCommand: Command = async (ctx) => (await import('./session-commands.ts')).settleFailedCommand('retry')(ctx);
const resolveCommand: Command = async (ctx) => (await import('./session-commands.ts')).settleFailedCommand('resolve')(ctx);
const sendCommand: Command = async (ctx) => (await import('./event-commands.ts')).sendCommand(ctx);
const destroyCommand: Command = async (ctx) => (await import('./event-commands.ts')).destroyCommand(ctx);
const deadLettersCommand: Command = async (ctx) => (await import('./dead-letter-commands.ts')).deadLettersCommand(ctx);
const statsCommand: Command = async (ctx) => (await import('./stats-command.ts')).statsCommand(ctx);
const unpackCommand: Command = async (ctx) => (await import('./session-commands.ts')).unpackCommand(ctx);

const OPTIONS = {
  json: { type: 'boolean' },
  broker: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  state: { type: 'string' },
  limit: { type: 'string' },
  data: { type: 'string' },
  file: { type: 'string' },
  source: { type: 'string' },
  id: { type: 'string' },
  tenant: { type: 'string' },
  'token-file': { type: 'string' },
  reason: { type: 'string' },
  'older-than': { type: 'string' },
  all: { type: 'boolean' },
  watch: { type: 'boolean' },
  'redis-only': { type: 'boolean' },
} as const;

type OptionName = keyof typeof OPTIONS;
const GLOBAL_OPTIONS: readonly OptionName[] = ['json', 'broker', 'help'];

interface CommandSpec {
  usage: string;
  summary: string;
  options: readonly OptionName[];
  run: Command;
}

/** Every command: how it is called, what it does, the options it takes. */
const COMMANDS: Readonly<Record<string, CommandSpec>> = {
  sessions: {
    usage: 'sessions [--state active|destroying] [--limit N]',
    summary: 'active sessions, earliest deadline first, and sessions being destroyed',
    options: ['state', 'limit'],
    run: sessionsCommand,
  },
  inspect: { usage: 'inspect <sessionId>', summary: 'one session: state, incarnation, deadline, activity score, destroy timeline', options: [], run: inspectCommand },
  send: {
    usage: "send <type> --data '<json>' | --file f.json [--tenant t] [--source s] [--id id] [--token-file f]",
    summary: 'validate and send a contract event as the pipeline (type short, e.g. session.opened, or full)',
    options: ['data', 'file', 'source', 'id', 'tenant', 'token-file'],
    run: sendCommand,
  },
  destroy: {
    usage: 'destroy <sessionId> [--reason r] [--token-file f]',
    summary: 'force the destroy of a session, as an operator (session.destroy.requested)',
    options: ['reason', 'source', 'id', 'token-file'],
    run: destroyCommand,
  },
  stuck: {
    usage: 'stuck [--older-than 30s] [--limit N]',
    summary: 'destroys without progress for longer than the threshold (default DESTROY_STALL_MS)',
    options: ['older-than', 'limit'],
    run: stuckCommand,
  },
  retry: { usage: 'retry <sessionId>', summary: 'a destroy that gave up its GPU release (release_failed): request it again', options: [], run: retryCommand },
  resolve: { usage: 'resolve <sessionId>', summary: 'a destroy that gave up its GPU release: book the memory as freed and finish it', options: [], run: resolveCommand },
  'dead-letters': {
    usage: 'dead-letters [list | show <id> | delete <id> | replay <id> | replay --all]',
    summary: "dead letters (the local Broker's, or the cluster receiver's through port-forward): why each event died; send them again",
    options: ['all'],
    run: deadLettersCommand,
  },
  stats: {
    usage: 'stats [--watch] [--redis-only]',
    summary: 'active sessions, destroys in flight, GPU ledger balance, Broker counters',
    options: ['watch', 'redis-only'],
    run: statsCommand,
  },
  unpack: {
    usage: 'unpack',
    summary: 'open every quiet record out into a hash of its own (before a downgrade, once SESSION_RECORD_PACKING=false everywhere)',
    options: [],
    run: unpackCommand,
  },
};

/** The help text. */
export function helpText(): string {
  const width = Math.max(...Object.values(COMMANDS).map((c) => c.usage.length));
  return [
    'usage: sessionctl <command> [options]      (npx sessionctl … or npm run sessionctl -- …)',
    '',
    'commands:',
    ...Object.values(COMMANDS).map((c) => `  ${c.usage.padEnd(width)}  ${c.summary}`),
    '',
    'options for every command:',
    '  --json          one JSON document on stdout (stats --watch: one per line)',
    `  --broker URL    the Broker to send events to and ask for dead letters and stats (SESSIONCTL_BROKER_URL; ${DEFAULT_BROKER_URL})`,
    '  -h, --help      this text',
    '',
    'Redis: the settings the functions use — REDIS_URL, REDIS_CLUSTER_NODES, REDIS_PASSWORD, REDIS_TLS, REDIS_KEY_PREFIX, INDEX_BUCKETS.',
    'Sender identity: events go to the Broker with a bearer token from --token-file, else SESSIONCTL_TOKEN_FILE (an',
    "operator's: `kubectl create token session-reaper-operator --audience eventing.knative.dev/broker/session-reaper/default`);",
    'send uses SESSIONCTL_PIPELINE_TOKEN_FILE first when set. The Broker admits an operator for destroy only.',
    'While `npm start` runs, its Redis, key prefix, Broker and tokens (.local/stack.json; SESSIONCTL_STACK_FILE) are used where these are unset.',
    'exit codes: 0 ok, 1 failure (Redis or the Broker unreachable, a replay failed), 2 usage or invalid input, 3 not found.',
  ].join('\n');
}

interface Streams {
  out: (text: string) => void;
  err: (text: string) => void;
  /** Whether stdout is a terminal (stats --watch redraws in place there). */
  tty: boolean;
}

function parse(argv: readonly string[]): { command: string | undefined; positionals: string[]; options: OptionValues } {
  let parsed;
  try {
    parsed = parseArgs({ args: [...argv], options: OPTIONS, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message, { cause: err });
  }
  const [command, ...positionals] = parsed.positionals;
  return { command, positionals, options: parsed.values };
}

/** Runs sessionctl with the given arguments; resolves with the exit code (output goes to `streams`). */
export async function runCli(argv: readonly string[], env: NodeJS.ProcessEnv, streams: Streams, interrupted: AbortSignal): Promise<number> {
  try {
    const { command, positionals, options } = parse(argv);
    const json = options.json === true;
    if (options.help || command === 'help') {
      streams.out(helpText());
      return 0;
    }
    if (command === undefined) throw new UsageError(`no command given\n\n${helpText()}`);
    const spec = COMMANDS[command];
    if (!spec) throw new UsageError(`unknown command ${JSON.stringify(command)}; one of: ${Object.keys(COMMANDS).join(', ')}`);
    for (const name of Object.keys(options) as OptionName[]) {
      if (!GLOBAL_OPTIONS.includes(name) && !spec.options.includes(name)) throw new UsageError(`${command} does not take --${name} (usage: sessionctl ${spec.usage})`);
    }
    let printed = 0;
    const print = (output: Output) => {
      for (const w of output.warnings ?? []) streams.err(`sessionctl: ${w}`);
      if (json) streams.out(JSON.stringify(output.json, null, options.watch ? undefined : 2));
      else streams.out(options.watch && streams.tty ? `\x1b[H\x1b[2J${output.human}` : `${printed > 0 ? '\n' : ''}${output.human}`);
      printed++;
    };
    let exitCode = 0;
    const ctx: CommandContext = {
      positionals,
      options,
      env,
      now: () => Date.now(),
      print: (output) => {
        exitCode = Math.max(exitCode, output.exitCode ?? 0);
        print(output);
      },
      interrupted,
    };
    const result = await spec.run(ctx);
    if (result) ctx.print(result);
    return exitCode;
  } catch (err) {
    const code = exitCodeOf(err);
    const message = err instanceof Error ? err.message : String(err);
    streams.err(`sessionctl: ${message}`);
    if (code === 1 && !(err instanceof Error && ['RuntimeFailure', 'UsageError', 'NotFoundError'].includes(err.name))) {
      // An unexpected failure: the stack helps whoever reports it.
      streams.err(err instanceof Error && err.stack ? err.stack : String(err));
    }
    return code;
  }
}

// Run as a program (not when imported by a test).
if (import.meta.main) {
  const interrupted = new AbortController();
  const stop = () => interrupted.abort();
  if (process.argv.includes('--watch')) {
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  }
  const code = await runCli(process.argv.slice(2), withStackDefaults(process.env), {
    out: (text) => process.stdout.write(`${text}\n`),
    err: (text) => process.stderr.write(`${text}\n`),
    tty: process.stdout.isTTY === true,
  }, interrupted.signal);
  // Exit once stdout has drained: a client's idle keep-alive socket must not hold the process open.
  process.stdout.write('', () => process.exit(code));
}
