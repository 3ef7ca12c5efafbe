// `stats [--watch] [--redis-only]`: the system at a glance — active sessions, destroys in flight, the GPU ledger
// (registered = released + held on every node) and the local Broker's counters. --watch redraws every second
// until Ctrl-C, keeping one Redis connection.
import { setTimeout as sleep } from 'node:timers/promises';
import { auditLedger, type LedgerAudit } from '../../functions/core/ledger.ts';
import type { BrokerStats } from '../local-broker/broker.ts';
import { parseMigrationMember } from '../../functions/core/session-store.ts';
import type { Command, CommandContext, Output } from './command.ts';
import { brokerAdmin, brokerUrl, connectCore, type CoreConnection } from './connections.ts';
import { RuntimeFailure, UsageError } from './errors.ts';
import { duration, fields, table } from './format.ts';

/** What `stats --json` prints (one document; one per line with --watch). */
export interface StatsSnapshot {
  now: number;
  activeSessions: number;
  destroysInFlight: number;
  migrationReleasesPending: number;
  /** Destroys that gave up their GPU release (release_failed) and wait for an operator (`sessionctl stuck`). */
  destroysGivenUp: number;
  /** When the destroy that has gone longest without progress last made progress; absent when none is in flight. */
  oldestProgressAt?: number;
  ledger: LedgerAudit;
  /** The Broker's counters plus the dead letters it keeps; { error } when it could not be asked; absent with --redis-only. */
  broker?: (BrokerStats & { deadLetters: number; url: string }) | { url: string; error: string };
}

const WATCH_INTERVAL_MS = 1000;

async function snapshot(ctx: CommandContext, core: CoreConnection): Promise<StatsSnapshot> {
  const now = ctx.now();
  const [activeSessions, inFlight, failed, ledger] = await Promise.all([
    core.store.activeCount(),
    core.store.destroysInFlight(Number.MAX_SAFE_INTEGER),
    core.store.failedDestroys(),
    auditLedger(core.redis, core.keys),
  ]);
  const migrations = inFlight.filter((m) => parseMigrationMember(m.member) !== undefined).length;
  const out: StatsSnapshot = {
    now, activeSessions, destroysInFlight: inFlight.length - migrations, migrationReleasesPending: migrations, destroysGivenUp: failed.length, ledger,
  };
  if (inFlight[0] !== undefined) out.oldestProgressAt = inFlight[0].lastProgressAt;
  if (!ctx.options['redis-only']) {
    const url = brokerUrl(ctx.options.broker, ctx.env);
    try {
      const answer = await brokerAdmin(url, 'GET', 'stats');
      if (answer.status !== 200) throw new RuntimeFailure(`the Broker at ${url.href} answered HTTP ${answer.status} for its stats`);
      out.broker = { url: url.href, ...(answer.body as BrokerStats & { deadLetters: number }) };
    } catch (err) {
      if (!(err instanceof RuntimeFailure)) throw err;
      out.broker = { url: url.href, error: err.message };
    }
  }
  return out;
}

function render(s: StatsSnapshot): Output {
  const t = s.ledger.totals;
  const lines = [
    fields([
      [
        'sessions',
        `${s.activeSessions} active, ${s.destroysInFlight} being destroyed, ${s.migrationReleasesPending} migration releases pending` +
          (s.destroysGivenUp > 0 ? `, ${s.destroysGivenUp} gave up their release (sessionctl stuck)` : ''),
      ],
      ['oldest progress', s.oldestProgressAt === undefined ? undefined : `${duration(s.now - s.oldestProgressAt)} ago`],
      [
        'gpu ledger',
        `${s.ledger.balanced ? 'balanced' : 'NOT BALANCED'}: registered ${t.registeredBytes} = released ${t.releasedBytes} + held ${t.heldBytes} bytes` +
          ` (${t.allocations} allocations, ${t.releases} releases, ${t.ignoredReleases} ignored)`,
      ],
    ]),
  ];
  if (s.ledger.nodes.length > 0) {
    lines.push(
      '',
      table(
        // ESTIMATED: the part of the confirmed bytes an engine could only estimate (SGLang, vLLM: README, "Inference engines").
        // OFFLOADED: KV that demoted sessions keep off the GPU now; DEMOTES/RESTORES: booked (README, "Demote before destroy").
        ['NODE', 'REGISTERED', 'RELEASED', 'HELD', 'ALLOCS', 'RELEASES', 'CONFIRMED FREED', 'ESTIMATED', 'OFFLOADED', 'DEMOTES', 'RESTORES'],
        s.ledger.nodes.map((n) => [
          n.node, n.registeredBytes, n.releasedBytes, n.heldBytes, n.allocations, n.releases, n.confirmedFreedBytes, n.estimatedFreedBytes ?? 0,
          n.offloadedBytes ?? 0, n.demotes ?? 0, n.restores ?? 0,
        ]),
      ),
    );
  }
  for (const problem of s.ledger.problems) lines.push(`ledger problem: ${problem}`);
  const warnings: string[] = [];
  if (s.broker !== undefined) {
    lines.push('');
    if ('error' in s.broker) {
      lines.push(fields([['broker', `${s.broker.url}: unavailable`]]));
      warnings.push(`${s.broker.error} (use --redis-only to leave the Broker out)`);
    } else {
      const b = s.broker;
      lines.push(
        fields([
          ['broker', b.url],
          ['events', `${b.received} received, ${b.rejected} refused`],
          ['deliveries', `${b.delivered} delivered, ${b.retried} retried, ${b.pending} pending (${b.inFlight} in flight), ${b.deadLettered} dead-lettered, ${b.dropped} dropped`],
          ['dead letters', `${b.deadLetters} kept`],
        ]),
      );
      const routes = Object.entries(b.routes).sort(([a], [c]) => a.localeCompare(c));
      if (routes.length > 0) lines.push('', table(['TRIGGER', 'DELIVERED', 'FAILED'], routes.map(([name, r]) => [name, r.delivered, r.failed])));
    }
  }
  return { json: s, human: lines.join('\n'), exitCode: warnings.length > 0 ? 1 : 0, warnings };
}

/** `stats`: one snapshot, or with --watch one per second until interrupted. */
export const statsCommand: Command = async (ctx) => {
  if (ctx.positionals.length > 0) throw new UsageError(`stats takes no arguments, got ${ctx.positionals.join(' ')}`);
  if (!ctx.options['redis-only']) brokerUrl(ctx.options.broker, ctx.env);
  const core = await connectCore(ctx.env);
  try {
    if (!ctx.options.watch) return render(await snapshot(ctx, core));
    while (!ctx.interrupted.aborted) {
      ctx.print(render(await snapshot(ctx, core)));
      try {
        await sleep(WATCH_INTERVAL_MS, undefined, { signal: ctx.interrupted });
      } catch {
        break;
      }
    }
    return undefined;
  } finally {
    core.close();
  }
};
