// `dead-letters [list | show <id> | delete <id> | replay <id> | replay --all]`: a dead-letter store through its admin
// API, so the operator sees why each event died and can send it again once the cause is fixed. Two servers answer it:
// the local Broker of `npm start`, and the deployed dead-letter receiver (functions/dead-letters) through `kubectl
// port-forward` (--broker http://localhost:PORT). The receiver does not replay (it cannot send as the event's
// original sender): it answers replay with 501 and the procedure, which this command passes on.
import type { DeadLetter, DeadLetterPage } from '../../functions/core/dead-letter-store.ts';
import type { ReplayResult } from '../local-broker/broker.ts';
import type { Command, CommandContext, Output } from './command.ts';
import { brokerAdmin, brokerUrl } from './connections.ts';
import { NotFoundError, RuntimeFailure, UsageError } from './errors.ts';
import { fields, relative, table } from './format.ts';

/** The event data of a dead letter, decoded: JSON when it parses, else text, else undefined when there is none. */
export function deadLetterData(entry: DeadLetter): unknown {
  if (entry.event.data_base64 === undefined) return undefined;
  const text = Buffer.from(entry.event.data_base64, 'base64').toString('utf8');
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

function sessionOf(entry: DeadLetter): string {
  const subject = entry.event.attributes.subject;
  if (typeof subject === 'string') return subject;
  const data = deadLetterData(entry);
  const id = typeof data === 'object' && data !== null ? (data as { sessionId?: unknown }).sessionId : undefined;
  return typeof id === 'string' ? id : '-';
}

const clip = (text: string, max: number) => (text.length > max ? `${text.slice(0, max - 1)}…` : text);

function expectOk(status: number, body: unknown, what: string): void {
  if (status === 404) throw new NotFoundError(`no ${what}`);
  if (status !== 200) throw new RuntimeFailure(`the Broker answered HTTP ${status} for ${what}: ${JSON.stringify(body)}`);
}

// Every page, in order: the server answers in pages (`next` names where the following one starts).
async function list(broker: URL): Promise<DeadLetter[]> {
  const out: DeadLetter[] = [];
  let after: string | undefined;
  do {
    const answer = await brokerAdmin(broker, 'GET', `dead-letters${after === undefined ? '' : `?after=${encodeURIComponent(after)}`}`);
    expectOk(answer.status, answer.body, 'dead-letter list');
    const page = answer.body as DeadLetterPage;
    out.push(...page.deadLetters);
    after = page.next;
  } while (after !== undefined);
  return out;
}

async function replay(broker: URL, id: string): Promise<ReplayResult> {
  const answer = await brokerAdmin(broker, 'POST', `dead-letters/${encodeURIComponent(id)}/replay`);
  if (answer.status === 404) return { outcome: 'not-found', id };
  if (answer.status === 501) {
    const reason = (answer.body as { reason?: unknown } | undefined)?.reason;
    throw new RuntimeFailure(`this server does not replay dead letters: ${typeof reason === 'string' ? reason : JSON.stringify(answer.body)}`);
  }
  expectOk(answer.status, answer.body, `replay of dead letter ${id}`);
  return answer.body as ReplayResult;
}

const describe = (r: ReplayResult) =>
  r.outcome === 'delivered'
    ? `delivered after ${r.attempts} attempt${r.attempts === 1 ? '' : 's'}; removed from the store`
    : r.outcome === 'failed'
      ? `failed again after ${r.attempts} attempt${r.attempts === 1 ? '' : 's'}: ${r.reason.message}; kept`
      : 'not found';

function oneId(ctx: CommandContext, action: string): string {
  const id = ctx.positionals[1];
  if (id === undefined) throw new UsageError(`dead-letters ${action} needs a dead-letter id (see: sessionctl dead-letters list)`);
  if (ctx.positionals.length > 2) throw new UsageError(`dead-letters ${action} takes one id, got also ${ctx.positionals.slice(2).join(' ')}`);
  return id;
}

/** `dead-letters`: list (default), show, delete, replay one or replay all. */
export const deadLettersCommand: Command = async (ctx): Promise<Output> => {
  const action = ctx.positionals[0] ?? 'list';
  const broker = brokerUrl(ctx.options.broker, ctx.env);
  if (ctx.options.all && action !== 'replay') throw new UsageError('--all goes with dead-letters replay');
  const now = ctx.now();
  switch (action) {
    case 'list': {
      if (ctx.positionals.length > 1) throw new UsageError(`dead-letters list takes no arguments, got ${ctx.positionals.slice(1).join(' ')}`);
      const entries = await list(broker);
      const human =
        entries.length === 0
          ? 'no dead letters'
          : table(
              ['ID', 'DIED', 'TRIGGER', 'TYPE', 'SESSION', 'ATTEMPTS', 'REASON'],
              entries.map((e) => [e.id, relative(Date.parse(e.deadAt), now), e.trigger, String(e.event.attributes.type), sessionOf(e), e.attempts, clip(e.reason.message, 60)]),
            );
      return { json: { deadLetters: entries }, human };
    }
    case 'show': {
      const id = oneId(ctx, 'show');
      const answer = await brokerAdmin(broker, 'GET', `dead-letters/${encodeURIComponent(id)}`);
      expectOk(answer.status, answer.body, `dead letter ${id}`);
      const entry = answer.body as DeadLetter;
      const data = deadLetterData(entry);
      const human = [
        fields([
          ['id', entry.id],
          ['died', `${entry.deadAt} (${relative(Date.parse(entry.deadAt), now)})`],
          ['trigger', entry.trigger],
          ['destination', entry.destination],
          ['attempts', entry.attempts],
          ['replays', entry.replays],
          ['reason', entry.reason.message],
          ['status', entry.reason.status],
          ['answer', entry.reason.body],
          ['error', entry.reason.error],
        ]),
        '',
        'event:',
        fields(Object.entries(entry.event.attributes).map(([k, v]) => [`  ${k}`, String(v)] as const)),
        ...(data === undefined ? [] : ['', 'data:', typeof data === 'string' ? data : JSON.stringify(data, null, 2)]),
      ].join('\n');
      return { json: entry, human };
    }
    case 'delete': {
      const id = oneId(ctx, 'delete');
      const answer = await brokerAdmin(broker, 'DELETE', `dead-letters/${encodeURIComponent(id)}`);
      expectOk(answer.status, answer.body, `dead letter ${id}`);
      return { json: answer.body, human: `dead letter ${id} deleted` };
    }
    case 'replay': {
      if (ctx.options.all) {
        if (ctx.positionals.length > 1) throw new UsageError('dead-letters replay takes an id or --all, not both');
        const results: ReplayResult[] = [];
        // One at a time: a replay storm against a subscriber that just recovered is how it falls over again.
        for (const entry of await list(broker)) results.push(await replay(broker, entry.id));
        const failed = results.filter((r) => r.outcome !== 'delivered').length;
        const human =
          results.length === 0
            ? 'no dead letters to replay'
            : `${table(['ID', 'OUTCOME'], results.map((r) => [r.id, describe(r)]))}\n\n${results.length - failed} delivered, ${failed} failed`;
        return { json: { results }, human, exitCode: failed > 0 ? 1 : 0 };
      }
      const id = oneId(ctx, 'replay');
      const result = await replay(broker, id);
      if (result.outcome === 'not-found') throw new NotFoundError(`no dead letter ${id}`);
      return { json: result, human: `dead letter ${id}: ${describe(result)}`, exitCode: result.outcome === 'delivered' ? 0 : 1 };
    }
    default:
      throw new UsageError(`dead-letters takes list, show <id>, delete <id>, replay <id> or replay --all, not ${JSON.stringify(action)}`);
  }
};
