// npm run bench:reclaim — reclamation quality on the real Mooncake chat trace (issue 14).
//
// Rebuilds the trace's sessions (sessions.ts), fits the return-probability policy on the first half of the trace, and
// replays every policy (policies.ts) in virtual time (replay.ts), judging each on the quiet spells opened in the
// second half only. Prints the tables the README quotes and writes the plot of every policy against the fixed-timeout
// frontier. Deterministic: the same code gives the same figures and the same plot.
//
// Environment (all optional):
//   RECLAIM_TOKENS_PER_SECOND  decode speed, default 50
//   RECLAIM_BYTES_PER_TOKEN    GPU KV bytes per context token, default 131072 (7B-class: 2 × 32 layers × 8 KV heads × 128 × f16)
//   RECLAIM_PLOT               where the SVG goes, default docs/bench/reclaim-frontier.svg
import { once } from 'node:events';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, relative, resolve } from 'node:path';
import { Worker } from 'node:worker_threads';
import { benchSetup, MIN, pairName } from './bench-setup.ts';
import { beyondFrontier, plotSvg, type FrontierPoint, type PlotSeries } from './frontier.ts';
import type { PoolResults, PoolWork } from './pool-worker.ts';
import { syntheticSessions, type SyntheticOptions } from './synthetic.ts';
import { formatDuration, oracle, SPELL_CLASSES, timeoutsFor, twoTier } from './policies.ts';
import { accuracy, DEFAULT_ACCURACY_WITHIN_MS, DEFAULT_BYTES_PER_TOKEN, DEFAULT_TOKENS_PER_SECOND, refillTokens, replay, type ReclaimPolicy, type ReplayMetrics, type ReplayOptions } from './replay.ts';

const started = performance.now();
const cpuSeconds = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};
const envNumber = (name: string, dflt: number): number => {
  const raw = process.env[name];
  const value = raw === undefined || raw === '' ? dflt : Number(raw);
  if (!(value > 0)) throw new Error(`${name}=${raw} must be a positive number`);
  return value;
};
const tokensPerSecond = envNumber('RECLAIM_TOKENS_PER_SECOND', DEFAULT_TOKENS_PER_SECOND);
const bytesPerToken = envNumber('RECLAIM_BYTES_PER_TOKEN', DEFAULT_BYTES_PER_TOKEN);
const plotPath = resolve(process.env.RECLAIM_PLOT ?? new URL('../../../docs/bench/reclaim-frontier.svg', import.meta.url).pathname);

const GiB = 2 ** 30;
const gibHours = (byteSeconds: number) => byteSeconds / GiB / 3600;
const mtok = (tokens: number) => tokens / 1e6;
const pct = (x: number | undefined) => (x === undefined ? '—' : `${x >= 0 ? '' : '+'}${Math.round(Math.abs(x) * 100)} %${x >= 0 ? ' less' : ' more'}`);
const f1 = (x: number) => x.toFixed(1);
const f2 = (x: number) => x.toFixed(2);

// The pool replays start first, in their own thread.
const poolWorker = new Worker(new URL('./pool-worker.ts', import.meta.url), { workerData: { tokensPerSecond, bytesPerToken } satisfies PoolWork });
const poolResults = once(poolWorker, 'message').then(([message]) => message as PoolResults);
poolWorker.once('error', (err) => {
  console.error('the pool replays failed:', err);
  process.exitCode = 1;
});

const { requests, sessions, traceEnd, half, base, judgedSessions, model, RETURN_PS, returnPolicies, returnDemote, FIXED, GRID_DEMOTE, GRID_DESTROY, OURS, POOL_SHARES, poolPolicies } =
  await benchSetup(tokensPerSecond, bytesPerToken);
// The synthetic workload: the demo's plans with pauses × 20 (thinking 14–50 s) and heartbeats every 20 s, 3 missable
// (holds of 90–150 s), fixed before its first replay.
const SYNTHETIC: SyntheticOptions = { seed: 14, sessions: 300, durationMs: 60 * MIN, timeScale: 20, heartbeatIntervalMs: 20_000, missedBeats: 3, tokensPerSecond };
const SHOWN_PAIRS = new Set([0.5, 1, 2].flatMap((d) => [5, 10, 20, 30].map((D) => pairName(d * MIN, D * MIN))));

const run = (policy: ReclaimPolicy) => replay(judgedSessions, policy, base);
const fixed = FIXED.map((p) => run(p));
const frontier: FrontierPoint[] = fixed.map((m) => ({ refill: refillTokens(m), waste: m.wasteByteSeconds }));
const rows: Array<{ group: string; m: ReplayMetrics }> = [
  { group: 'oracle', m: run(oracle()) },
  ...fixed.map((m) => ({ group: 'fixed timeout', m })),
  ...GRID_DEMOTE.flatMap((d) => GRID_DESTROY.map((D) => ({ group: 'fixed two-tier', m: run(twoTier(pairName(d, D), d, D)) }))),
  ...OURS.map((p) => ({ group: 'activity-score', m: run(p) })),
  ...[...returnPolicies, ...returnDemote].map((p) => ({ group: 'return probability', m: run(p) })),
];

const judged = rows[0]!.m;
console.log(`# Reclamation quality on the Mooncake conversation trace (issue 14)\n`);
console.log(`Trace: ${requests.length} requests over ${f1(traceEnd / MIN)} min, rebuilt into ${sessions.length} sessions (${sessions.filter((s) => s.turns.length > 1).length} multi-turn).`);
console.log(`Judged: quiet spells opened by turns arriving in the second half (from ${f1(half / MIN)} min): ${judged.spells} spells, ${judged.followUps} ending in a follow-up, ${judged.finals} after a session's last turn.`);
console.log(`Model: decode ${tokensPerSecond} tokens/s; GPU KV ${bytesPerToken} B per context token (2 × layers × KV heads × head dim × bytes per value; default 2 × 32 × 8 × 128 × 2, a 7B-class GQA model in f16).`);
console.log(`Signals the trace does not carry — typing, edits, cursor, message text, embeddings, holds — are absent: activity-score sees one \`message\` per turn and one \`inference.completed\`.`);
console.log(`Return-probability fit (first half only, Kaplan–Meier, horizon ${formatDuration(model.horizonMs)}): ${SPELL_CLASSES.map((c) => `${c}: ${model.counts[c].returns}/${model.counts[c].spells} returned`).join('; ')}.`);
for (const p of RETURN_PS) console.log(`  P(return) < ${p}: destroy after ${SPELL_CLASSES.map((c) => `${c} ${formatDuration(timeoutsFor(model, p)[c])}`).join(', ')}`);
console.log('');
console.log('| policy | wasted GPU KV after last turn (GiB·h) | GPU KV held in gaps (GiB·h) | premature ends | re-prefill (M tokens) | demotes / restores (GiB moved back) | accuracy | waste vs frontier at same re-prefill | re-prefill vs frontier at same waste |');
console.log('|---|---|---|---|---|---|---|---|---|');
for (const { group, m } of rows) {
  if (group === 'fixed two-tier' && !SHOWN_PAIRS.has(m.policy)) continue;
  const beyond = beyondFrontier(frontier, { refill: refillTokens(m), waste: m.wasteByteSeconds });
  const moves = m.demotes === 0 ? '—' : `${m.demotes} / ${m.restores} (${f1(m.restoredBytes / GiB)})`;
  console.log(`| ${m.policy} | ${f1(gibHours(m.wasteByteSeconds))} | ${f1(gibHours(m.gapByteSeconds))} | ${m.premature} | ${f1(mtok(refillTokens(m)))} | ${moves} | ${Math.round(accuracy(m) * 100)} % | ${pct(beyond.lessWaste)} | ${pct(beyond.lessRefill)} |`);
}
console.log(`\nAccuracy: share of judged quiet spells decided right — a follow-up found its KV kept (on the GPU or demoted), or a session that sent no further turn had its GPU KV freed within ${formatDuration(DEFAULT_ACCURACY_WITHIN_MS)} of its last turn's completion.`);
// Fixed pairs with the same demote time look alike here, so one of each is shown.
const midTurnPairs = new Set<string>();
const midTurn = rows
  .filter((r) => r.m.inFlightVerdicts > 0 && r.group !== 'return probability')
  .filter((r) => r.group !== 'fixed two-tier' || !midTurnPairs.has(r.m.policy.split(' / ')[0]!) && midTurnPairs.add(r.m.policy.split(' / ')[0]!) !== undefined)
  .map((r) => `${r.group === 'fixed two-tier' ? `${r.m.policy.split(' / ')[0]!} / any destroy` : r.m.policy} ${r.m.inFlightVerdicts}`);
console.log(`Looks that would have reclaimed a session while its turn was in flight (held off until it completed): ${midTurn.length === 0 ? 'none' : midTurn.join(', ')}.`);
console.log('Frontier: the fixed timeouts, joined by straight lines (mixing two timeouts reaches any point between them); "—" where a policy lies outside their range.');

// The same policies judged on the first half: what a choice of settings may look at (the held-back half may not).
const firstHalf: ReplayOptions = { tokensPerSecond, bytesPerToken, judgedUntilMs: half };
const firstSessions = sessions.filter((s) => s.turns[0]!.arrivalMs < half);
const firstFrontier = FIXED.map((p) => replay(firstSessions, p, firstHalf)).map((m) => ({ refill: refillTokens(m), waste: m.wasteByteSeconds }));
console.log('\n## The first half (where settings may be chosen)\n');
console.log('| policy | wasted GPU KV (GiB·h) | re-prefill (M tokens) | restores | waste vs frontier at same re-prefill | re-prefill vs frontier at same waste |');
console.log('|---|---|---|---|---|---|');
const firstHalfPolicies = [...OURS, twoTier(pairName(MIN, 10 * MIN), MIN, 10 * MIN), twoTier(pairName(MIN / 2, 20 * MIN), MIN / 2, 20 * MIN), returnPolicies[3]!, returnDemote[0]!];
for (const policy of firstHalfPolicies) {
  const m = replay(firstSessions, policy, firstHalf);
  const beyond = beyondFrontier(firstFrontier, { refill: refillTokens(m), waste: m.wasteByteSeconds });
  console.log(`| ${m.policy} | ${f1(gibHours(m.wasteByteSeconds))} | ${f1(mtok(refillTokens(m)))} | ${m.restores} | ${pct(beyond.lessWaste)} | ${pct(beyond.lessRefill)} |`);
}

// Do the per-session signals buy anything over a fixed pair? For each demoting policy, the fixed pairs (on a dense
// grid) that waste no more GPU KV and re-prefill no more; the one of them with fewest restores.
const dense = rows.filter((r) => r.group === 'fixed two-tier').map((r) => r.m);
console.log('\n## Per-session signals against fixed demote/destroy pairs (second half)\n');
console.log(`Fixed pairs searched: demote after ${GRID_DEMOTE.map(formatDuration).join(', ')} × destroy after ${GRID_DESTROY.map(formatDuration).join(', ')}.\n`);
console.log('| policy | waste (GiB·h) | re-prefill (M tokens) | restores (GiB moved back) | best fixed pair at no more waste and no more re-prefill | its waste / re-prefill / restores (GiB) |');
console.log('|---|---|---|---|---|---|');
for (const { m } of rows.filter((r) => r.m.demotes > 0 && r.group !== 'fixed two-tier')) {
  const better = dense.filter((f) => f.wasteByteSeconds <= m.wasteByteSeconds && refillTokens(f) <= refillTokens(m)).sort((a, b) => a.restores - b.restores);
  const best = better[0];
  const theirs = best === undefined ? '—' : `${f1(gibHours(best.wasteByteSeconds))} / ${f1(mtok(refillTokens(best)))} / ${best.restores} (${f1(best.restoredBytes / GiB)})`;
  console.log(`| ${m.policy} | ${f1(gibHours(m.wasteByteSeconds))} | ${f1(mtok(refillTokens(m)))} | ${m.restores} (${f1(m.restoredBytes / GiB)}) | ${best?.policy ?? 'none on the grid'} | ${theirs} |`);
}

// The demo pipeline's simulated users (synthetic.ts): typing, holds and long tool calls the trace lacks, with ground
// truth. The same policies (settings unchanged: none is tuned on this workload), judged on every quiet spell.
const synthetic = syntheticSessions(SYNTHETIC);
const synthOptions: ReplayOptions = { tokensPerSecond, bytesPerToken };
const synthRun = (policy: ReclaimPolicy) => replay(synthetic, policy, synthOptions);
const synthFixed = FIXED.map(synthRun);
const synthFrontier: FrontierPoint[] = synthFixed.map((m) => ({ refill: refillTokens(m), waste: m.wasteByteSeconds }));
// Destroy times from 3 min: every shorter one ends tool calls (their holds last 1 min 30 s–2 min 30 s).
const SYNTH_DESTROY = [3, 5, 10, 20].map((m) => m * MIN);
const synthPairs = GRID_DEMOTE.flatMap((d) => SYNTH_DESTROY.map((D) => synthRun(twoTier(pairName(d, D), d, D))));
const synthRows = [...synthFixed, ...synthPairs.filter((m) => SHOWN_PAIRS.has(m.policy)), ...OURS.map(synthRun), ...[returnPolicies[3]!, returnDemote[0]!].map(synthRun)];
const causes = synthetic.flatMap((x) => x.synthetic?.quietCauses.slice(0, -1) ?? []);
const endings = new Map<string, number>();
for (const x of synthetic) endings.set(x.ending, (endings.get(x.ending) ?? 0) + 1);
console.log('\n## The demo pipeline\'s synthetic users (typing, holds, long tool calls; ground truth known)\n');
console.log(`Workload: ${synthetic.length} sessions from \`npm start\`'s behaviour plans (tools/local-stack/demo-behaviour.ts, seed ${SYNTHETIC.seed}), their pauses × ${SYNTHETIC.timeScale} (typing steps ${formatDuration(150 * SYNTHETIC.timeScale)}–${formatDuration(500 * SYNTHETIC.timeScale)}, answers ${formatDuration(300 * SYNTHETIC.timeScale)}–${formatDuration(1200 * SYNTHETIC.timeScale)}, thinking ${formatDuration(700 * SYNTHETIC.timeScale)}–${formatDuration(2500 * SYNTHETIC.timeScale)}; heartbeats every ${formatDuration(SYNTHETIC.heartbeatIntervalMs)}, ${SYNTHETIC.missedBeats} may be missed, so a tool call's hold lasts ${formatDuration(SYNTHETIC.heartbeatIntervalMs * SYNTHETIC.missedBeats * 1.5)}–${formatDuration(SYNTHETIC.heartbeatIntervalMs * SYNTHETIC.missedBeats * 2.5)}), over ${formatDuration(SYNTHETIC.durationMs)}.`);
console.log(`Truth: ${synthetic.reduce((n, x) => n + x.turns.length, 0)} turns; ${causes.length} quiet spells between turns, ${causes.filter((c) => c === 'tool call').length} of them opened by a tool call under a hold, the rest a user thinking (then typing); sessions over after their last turn: ${[...endings].map(([e, n]) => `${e} ${n}`).join(', ')} (closes, completes and vanishes are ended by what their pipeline sends, for every policy alike: only walks-away must be found).`);
console.log('A fixed timeout counts from the latest event of any kind (a hold included) and knows nothing of how long a hold lasts; activity-score sees every event (typing, edits, cursor, message text, output, holds).\n');
console.log('| policy | wasted GPU KV after last turn (GiB·h) | GPU KV held in gaps (GiB·h) | live sessions wrongly ended: thinking / tool call | re-prefill (M tokens) | demotes / restores | accuracy | waste vs frontier at same re-prefill | re-prefill vs frontier at same waste |');
console.log('|---|---|---|---|---|---|---|---|---|');
for (const m of synthRows) {
  const beyond = beyondFrontier(synthFrontier, { refill: refillTokens(m), waste: m.wasteByteSeconds });
  const moves = m.demotes === 0 ? '—' : `${m.demotes} / ${m.restores}`;
  console.log(`| ${m.policy} | ${f2(gibHours(m.wasteByteSeconds))} | ${f1(gibHours(m.gapByteSeconds))} | ${m.premature - m.prematureToolCalls} / ${m.prematureToolCalls} | ${f2(mtok(refillTokens(m)))} | ${moves} | ${Math.round(accuracy(m) * 100)} % | ${pct(beyond.lessWaste)} | ${pct(beyond.lessRefill)} |`);
}
console.log(`\nAgainst fixed demote/destroy pairs (demote after ${GRID_DEMOTE.map(formatDuration).join(', ')} × destroy after ${SYNTH_DESTROY.map(formatDuration).join(', ')}): for each demoting policy, the pair with fewest restores among those that waste no more GPU KV and re-prefill no more.\n`);
console.log('| policy | waste (GiB·h) / re-prefill (M tokens) / restores | best fixed pair | its waste / re-prefill / restores |');
console.log('|---|---|---|---|');
for (const m of synthRows.filter((r) => r.demotes > 0 && !r.policy.startsWith('demote '))) {
  const best = synthPairs.filter((f) => f.wasteByteSeconds <= m.wasteByteSeconds && refillTokens(f) <= refillTokens(m)).sort((a, b) => a.restores - b.restores)[0];
  const theirs = best === undefined ? '—' : `${f2(gibHours(best.wasteByteSeconds))} / ${f2(mtok(refillTokens(best)))} / ${best.restores}`;
  console.log(`| ${m.policy} | ${f2(gibHours(m.wasteByteSeconds))} / ${f2(mtok(refillTokens(m)))} / ${m.restores} | ${best?.policy ?? 'none on the grid'} | ${theirs} |`);
}

// Fixed KV pools below the trace's peak demand (pool-worker.ts).
const { peak, pools, pooled } = await poolResults;
console.log(`\n## Under a fixed GPU KV pool (peak demand ${f1(peak / GiB)} GiB: the oracle's peak)\n`);
console.log('A turn that finds no room evicts the least recently active quiet sessions; their follow-ups re-prefill. Judged: arrivals and spells in the second half.');
console.log('Each cell: turns that found no room / re-prefill in M tokens (after premature ends and evictions) / wasted GPU KV in GiB·h.\n');
console.log(`| policy | ${pools.map((b, i) => `pool ${Math.round(POOL_SHARES[i]! * 100)} % (${f1(b / GiB)} GiB)`).join(' | ')} |`);
console.log(`|---|${pools.map(() => '---').join('|')}|`);
for (const { name, results } of pooled) {
  const cells = results.map((m) => `${m.noRoomTurns}${m.refusedTurns > 0 ? ` (${m.refusedTurns} refused)` : ''} / ${f1(mtok(refillTokens(m)))} / ${f1(gibHours(m.wasteByteSeconds))}`);
  console.log(`| ${name} | ${cells.join(' | ')} |`);
}

// The issue's targets, checked on the figures above.
const fixedPooled = pooled.slice(0, FIXED.length);
const verdict = (ok: boolean) => (ok ? 'met' : '**missed**');
console.log('\n## Targets (issue 14), on the held-back half\n');
for (const { m } of rows.filter((r) => r.group === 'activity-score' || r.m.policy.includes('return-prob < 0.1'))) {
  const b = beyondFrontier(frontier, { refill: refillTokens(m), waste: m.wasteByteSeconds });
  console.log(`- ${m.policy}: ${pct(b.lessWaste)} waste at the same re-prefill (target 50 % less: ${verdict((b.lessWaste ?? 0) >= 0.5)}), ${pct(b.lessRefill)} re-prefill at the same waste (target 50 % less: ${verdict((b.lessRefill ?? 0) >= 0.5)}).`);
}
for (const { name, results } of pooled.slice(FIXED.length)) {
  const wins = results.map((m, i) => {
    const noRoom = Math.min(...fixedPooled.map((f) => f.results[i]!.noRoomTurns));
    const refill = Math.min(...fixedPooled.map((f) => refillTokens(f.results[i]!)));
    return m.noRoomTurns <= noRoom && refillTokens(m) < refill;
  });
  console.log(`- ${name} under the pools: no more turns without room (none can have fewer than 0) and less re-prefill than every fixed timeout at ${wins.filter(Boolean).length} of ${pools.length} pool sizes (${pools.map((_, i) => `${Math.round(POOL_SHARES[i]! * 100)} %: ${verdict(wins[i]!)}`).join(', ')}).`);
}

// The plot: every unbounded policy against the frontier.
const point = (m: ReplayMetrics, label?: string) => ({ refill: refillTokens(m), waste: m.wasteByteSeconds, ...(label === undefined ? {} : { label }) });
const group = (name: string) => rows.filter((r) => r.group === name).map((r) => r.m);
const series: PlotSeries[] = [
  { name: 'fixed timeouts (frontier)', color: '#444', line: true, points: group('fixed timeout').map((m) => point(m, m.policy.replace('fixed ', ''))) },
  { name: 'fixed two-tier (demote d / destroy D)', color: '#1f77b4', line: false, points: group('fixed two-tier').map((m) => point(m)) },
  { name: 'return probability (fit: 1st half)', color: '#2ca02c', line: true, points: group('return probability').filter((m) => !m.policy.includes('demote')).map((m) => point(m, m.policy.replace('return-prob ', 'p'))) },
  { name: 'return probability + demote 1 min', color: '#98df8a', line: false, points: group('return probability').filter((m) => m.policy.includes('demote')).map((m) => point(m)) },
  ...group('activity-score').map((m, i) => ({ name: m.policy, color: ['#d62728', '#ff7f0e', '#9467bd', '#8c564b'][i] ?? '#d62728', line: false, radius: 7, points: [point(m)] })),
];
mkdirSync(dirname(plotPath), { recursive: true });
writeFileSync(
  plotPath,
  plotSvg('Mooncake trace, second half: every policy against the fixed-timeout frontier', series, { refillScale: 1e6, refillUnit: 'million tokens', wasteScale: GiB * 3600, wasteUnit: 'GiB·h' }),
);
console.log(`\nPlot: ${relative(process.cwd(), plotPath)}`);
const seconds = (performance.now() - started) / 1000;
console.log(`Replayed ${rows.length} policies on the second half, ${firstHalfPolicies.length + FIXED.length} on the first, ${synthFixed.length + synthPairs.length + OURS.length + 2} on the synthetic workload and ${poolPolicies.length * POOL_SHARES.length} under pools in ${f1(seconds)} s of wall time and ${f1(cpuSeconds())} s of CPU, the pools in a second thread (target: under a minute: ${verdict(seconds < 60)}).`);
