// The outage rule as deployed (functions/core/redis/lua/includes/blind.lua; README, "The session core"): it is on in
// every overlay for every process that claims deadlines or judges idleness (the deadline engine, the idle checker),
// and its numbers make sense together: a span counts as blind only when it is far longer than the engine's own poll
// (so ordinary jitter never moves a deadline), and an ingest silence counts only when it is at least that long too.
import { loadConfig } from '../../functions/core/config.ts';
import { at, environmentOf, ofKind, type LongRunningName } from './deployment-checks.ts';
import { describe as describeManifest, type Manifest } from './manifest-schemas.ts';

/** The long-running parts whose judgements of silence the rule governs. */
const JUDGES: readonly LongRunningName[] = ['deadline-engine', 'idle-checker'];

/** How many polls of the engine a blind span must outlast, at least. */
export const POLLS_PER_BLIND_GAP = 10;

export function checkOutageRule(ms: readonly Manifest[]): string[] {
  const problems: string[] = [];
  for (const name of JUDGES) {
    const d = ofKind(ms, 'Deployment', 'apps').find((m) => at(m.doc, 'metadata.name') === name);
    if (!d) {
      problems.push(`${name} is not deployed`);
      continue;
    }
    let cfg;
    try {
      cfg = loadConfig(environmentOf(ms, d));
    } catch (err) {
      problems.push(`${describeManifest(d)}: ${(err as Error).message}`);
      continue;
    }
    if (cfg.BLIND_GAP_MS === 0) {
      problems.push(`${name} runs with BLIND_GAP_MS=0: the outage rule is off, and an outage longer than a liveness window expires every live session`);
      continue;
    }
    if (cfg.BLIND_GAP_MS < POLLS_PER_BLIND_GAP * cfg.DEADLINE_POLL_MS) {
      problems.push(`${name}'s BLIND_GAP_MS (${cfg.BLIND_GAP_MS}) is under ${POLLS_PER_BLIND_GAP} polls of DEADLINE_POLL_MS (${cfg.DEADLINE_POLL_MS}): ordinary jitter would count as blind`);
    }
    if (cfg.INGEST_SILENCE_MS > 0 && cfg.INGEST_SILENCE_MS < cfg.BLIND_GAP_MS) {
      problems.push(`${name}'s INGEST_SILENCE_MS (${cfg.INGEST_SILENCE_MS}) is shorter than BLIND_GAP_MS (${cfg.BLIND_GAP_MS})`);
    }
  }
  return problems;
}
