// npm run bench:functions — the functions' benchmarks, one after the other, each in its own process so neither
// inherits the other's heap, timers or child processes: heartbeat-timeout (detection lag and HTTP throughput), then
// destroy-dispatch (session.closed → session.destroyed latency). Each prints its figures and the machine; this
// runner passes their output through, then sums up. It exits 1 if any target was missed (or a bench failed to
// run), 0 otherwise. BENCH_ONLY=heartbeat or BENCH_ONLY=destroy runs one of them; every other BENCH_* variable is
// passed to the benches (see each file's header).
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { diesWithParent } from '../../tools/local-stack/parent-death.ts';

/** One benchmark this runner runs. */
interface Bench {
  name: string;
  file: string;
}

const BENCHES: readonly Bench[] = [
  { name: 'heartbeat', file: 'functions-heartbeat.bench.ts' },
  { name: 'destroy', file: 'functions-destroy.bench.ts' },
];

/** What one bench run came to. */
interface Outcome {
  bench: Bench;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  seconds: number;
  missed: string[];
}

/** Runs one bench file with this process's Node, echoing its output, and collects the targets it reports missed. */
function runBench(bench: Bench): Promise<Outcome> {
  const started = performance.now();
  const missed: string[] = [];
  let partial = '';
  const collect = (text: string) => {
    const lines = (partial + text).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) if (line.includes('MISSED:')) missed.push(line.trim());
  };
  return new Promise((resolve) => {
    const child = spawn(...diesWithParent(process.execPath, [join(import.meta.dirname, bench.file)]), { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.on('data', (chunk: Buffer) => {
      process.stdout.write(chunk);
      collect(chunk.toString('utf8'));
    });
    child.stderr.on('data', (chunk: Buffer) => process.stderr.write(chunk));
    child.on('error', (err) => {
      process.stderr.write(`${bench.file} could not start: ${err.message}\n`);
    });
    child.on('close', (exitCode, signal) => {
      collect('\n');
      resolve({ bench, exitCode, signal, seconds: (performance.now() - started) / 1000, missed });
    });
  });
}

const only = process.env.BENCH_ONLY;
const selected = BENCHES.filter((b) => only === undefined || only === '' || only === b.name);
if (selected.length === 0) {
  process.stderr.write(`BENCH_ONLY=${only} names no benchmark; use one of ${BENCHES.map((b) => b.name).join(', ')}\n`);
  process.exit(2);
}

const outcomes: Outcome[] = [];
for (const bench of selected) {
  process.stdout.write(`\n=== ${bench.file} ===\n`);
  outcomes.push(await runBench(bench));
}

process.stdout.write('\n=== bench:functions summary ===\n');
for (const o of outcomes) {
  const status = o.exitCode === 0 ? 'all targets met' : o.missed.length > 0 ? `${o.missed.length} target(s) missed` : `failed to run (exit ${o.exitCode ?? o.signal})`;
  process.stdout.write(`${o.bench.name.padEnd(10)} ${status} in ${o.seconds.toFixed(0)} s\n`);
  for (const line of o.missed) process.stdout.write(`           ${line}\n`);
}
process.exitCode = outcomes.every((o) => o.exitCode === 0) ? 0 : 1;
