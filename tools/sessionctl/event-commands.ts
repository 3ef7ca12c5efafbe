// Sending events: `send` (any contract type, data validated here first, so a typo never reaches the system) and
// `destroy` (an operator's force-destroy, a session.destroy.requested). Both POST one binary-mode CloudEvent to the
// Broker's ingress, exactly as a producer would, with the sender's bearer token: the Broker's EventPolicies decide
// what that sender may send (an operator may force a destroy; sending the pipeline's events takes its identity).
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { CloudEvent, ValidationError } from 'cloudevents';
import { EventType, EventTypes, TYPE_PREFIX, isContractType, schemaIdOf, type ContractType } from '../../functions/core/contract/events.ts';
import { validateData } from '../../functions/core/contract/parse.ts';
import { ContractError } from '../../functions/core/errors.ts';
import type { Command, CommandContext, Output } from './command.ts';
import { brokerUrl, postEvent } from './connections.ts';
import { RuntimeFailure, UsageError } from './errors.ts';
import { sessionIdArgument } from './session-commands.ts';

/** The `source` of events sessionctl sends unless --source says otherwise (never one of session-reaper's own). */
export const DEFAULT_SOURCE = '/sessionctl';

/** Every contract type by the short name `send` accepts, e.g. `session.opened`. */
export const SHORT_TYPES: readonly string[] = Object.keys(EventTypes).map((t) => t.slice(TYPE_PREFIX.length));

/** The full contract type of a short (`session.opened`) or full (`dev.sessionreaper.session.opened`) name. */
export function resolveType(name: string): ContractType {
  const full = name.startsWith(TYPE_PREFIX) ? name : `${TYPE_PREFIX}${name}`;
  if (!isContractType(full)) throw new UsageError(`${JSON.stringify(name)} is not an event type of the contract; one of: ${SHORT_TYPES.join(', ')}`);
  return full;
}

async function dataOf(ctx: CommandContext): Promise<unknown> {
  const { data, file } = ctx.options;
  if ((data === undefined) === (file === undefined)) throw new UsageError('give the event data with exactly one of --data \'<json>\' or --file <file.json>');
  let text: string;
  if (file !== undefined) {
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      throw new UsageError(`cannot read --file ${file}: ${(err as Error).message}`, { cause: err });
    }
  } else text = data!;
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new UsageError(`${file === undefined ? '--data' : `--file ${file}`} is not JSON: ${(err as Error).message}`, { cause: err });
  }
}

// The bearer token to send with: --token-file, else the environment's (the pipeline's first for `send`, if set).
async function tokenOf(ctx: CommandContext, as: 'pipeline' | 'operator'): Promise<string | undefined> {
  const file = ctx.options['token-file'] ?? ((as === 'pipeline' ? ctx.env.SESSIONCTL_PIPELINE_TOKEN_FILE : undefined) || ctx.env.SESSIONCTL_TOKEN_FILE || undefined);
  if (file === undefined) return undefined;
  let text: string;
  try {
    text = (await readFile(file, 'utf8')).trim();
  } catch (err) {
    throw new UsageError(`cannot read the token file ${file}: ${(err as Error).message}`, { cause: err });
  }
  if (text === '') throw new UsageError(`the token file ${file} is empty`);
  return text;
}

// Validates, builds and sends one event; the Output says what the Broker answered.
async function sendEvent(ctx: CommandContext, type: ContractType, data: unknown, as: 'pipeline' | 'operator'): Promise<Output> {
  let valid: { sessionId: string };
  try {
    valid = validateData(type, data);
  } catch (err) {
    if (err instanceof ContractError) throw new UsageError(`the data breaks contract v1 (${err.code}): ${err.field} ${err.reason}; nothing was sent`, { cause: err });
    throw err;
  }
  const broker = brokerUrl(ctx.options.broker, ctx.env);
  let event: CloudEvent<unknown>;
  try {
    event = new CloudEvent<unknown>({
      specversion: '1.0',
      id: ctx.options.id ?? randomUUID(),
      source: ctx.options.source ?? DEFAULT_SOURCE,
      type,
      subject: valid.sessionId,
      time: new Date(ctx.now()).toISOString(),
      datacontenttype: 'application/json',
      dataschema: schemaIdOf(type),
      ...(ctx.options.tenant === undefined ? {} : { tenant: ctx.options.tenant }),
      data: valid,
    });
  } catch (err) {
    if (err instanceof ValidationError) {
      const details = (err.errors ?? []).map((e) => (typeof e === 'string' ? e : `${e.instancePath.replace(/^\//, '')} ${e.message ?? 'is invalid'}`));
      throw new UsageError(`not a valid CloudEvent: ${details.length > 0 ? details.join('; ') : err.message}`, { cause: err });
    }
    throw err;
  }
  const answer = await postEvent(broker, event, await tokenOf(ctx, as));
  const refused = typeof answer.body === 'string' ? answer.body : JSON.stringify(answer.body);
  if (answer.status === 401 || answer.status === 403) {
    throw new UsageError(`the Broker at ${broker.href} did not admit the sender (HTTP ${answer.status}): ${refused}; give a sender's token with --token-file`);
  }
  if (answer.status === 400 || answer.status === 413) throw new UsageError(`the Broker at ${broker.href} refused the event (HTTP ${answer.status}): ${refused}`);
  if (answer.status < 200 || answer.status >= 300) throw new RuntimeFailure(`the Broker at ${broker.href} answered HTTP ${answer.status}: ${refused}`);
  const attributes = { specversion: event.specversion, id: event.id, source: event.source, type: event.type, subject: event.subject, time: event.time };
  return {
    json: { status: answer.status, accepted: true, broker: broker.href, event: { ...attributes, data: valid } },
    human: `${answer.status} accepted by ${broker.href}: ${type} id=${event.id} source=${event.source} session=${valid.sessionId}`,
  };
}

/** `send <type> --data '<json>' | --file f.json [--source s] [--id id]`: validates and sends one contract event. */
export const sendCommand: Command = async (ctx) => {
  const [name, ...extra] = ctx.positionals;
  if (name === undefined) throw new UsageError(`send needs an event type: sessionctl send <type> --data '<json>'; types: ${SHORT_TYPES.join(', ')}`);
  if (extra.length > 0) throw new UsageError(`send takes one event type, got also ${extra.join(' ')}`);
  const type = resolveType(name);
  return sendEvent(ctx, type, await dataOf(ctx), 'pipeline');
};

/** `destroy <sessionId> [--reason r]`: forces the destroy of a session (session.destroy.requested). */
export const destroyCommand: Command = async (ctx) => {
  const sessionId = sessionIdArgument(ctx, 'destroy');
  const out = await sendEvent(ctx, EventType.SessionDestroyRequested, { sessionId, ...(ctx.options.reason === undefined ? {} : { reason: ctx.options.reason }) }, 'operator');
  return { ...out, human: `${out.human}\nfollow it with: sessionctl inspect ${sessionId}` };
};
