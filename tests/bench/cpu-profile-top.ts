// Reads V8 CPU profiles (`--cpu-prof`, or the inspector's Profiler.stop) and answers where a process spent its CPU:
// the frames with the most self time, over the whole profile or over a window of it, so a bench can print the top
// frames per process beside its CPU figures. `(idle)` is not CPU and is left out; `(program)` (V8 and native work
// outside any JavaScript frame) and `(garbage collector)` are kept: they are CPU the process spent.
// Run on its own, `node tests/bench/cpu-profile-top.ts file.cpuprofile [n]` prints a profile's top frames.
import { readFileSync } from 'node:fs';

/** The parts of a `.cpuprofile` (the inspector's Profiler.Profile) read here. */
export interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }[];
  /** µs on the monotonic clock (CLOCK_MONOTONIC on Linux: process.hrtime's). */
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** One frame's self time in a profile. */
export interface FrameTime {
  /** `function file:line` (the file relative to the repository or node_modules, the line 1-based). */
  frame: string;
  selfMs: number;
  /** Share of the profile's sampled, non-idle time in the window. */
  share: number;
}

/** A profile's top frames by self time, and the sampled non-idle time they are shares of. */
export interface ProfileTop {
  sampledMs: number;
  frames: FrameTime[];
}

/** µs now on the clock CPU profiles are stamped with (CLOCK_MONOTONIC), so a window can be cut from them. */
export function profileClockMicros(): number {
  return Number(process.hrtime.bigint() / 1000n);
}

function frameName(cf: CpuProfile['nodes'][number]['callFrame']): string {
  const name = cf.functionName || '(anonymous)';
  if (!cf.url) return name;
  const url = cf.url.replace(/^file:\/\//, '');
  const nm = url.lastIndexOf('/node_modules/');
  const rel = nm >= 0 ? url.slice(nm + '/node_modules/'.length) : url.replace(/^.*?\/(functions|tools|runtimes|tests)\//, '$1/');
  return `${name} ${rel}:${cf.lineNumber + 1}`;
}

/** The `n` frames with the most self time in `profile`, counting only samples taken within [fromUs, toUs]. */
export function topFrames(profile: CpuProfile, n: number, window?: { fromUs: number; toUs: number }): ProfileTop {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const selfUs = new Map<string, number>();
  let total = 0;
  let at = profile.startTime;
  for (let i = 0; i < profile.samples.length; i++) {
    const delta = profile.timeDeltas[i] ?? 0;
    at += delta;
    if (window && (at < window.fromUs || at > window.toUs)) continue;
    const node = byId.get(profile.samples[i]!);
    if (!node || node.callFrame.functionName === '(idle)') continue;
    // A sample stands for the time until the next one; the delta before it is as good an estimate and always known.
    const us = profile.timeDeltas[i + 1] ?? delta;
    const name = frameName(node.callFrame);
    selfUs.set(name, (selfUs.get(name) ?? 0) + us);
    total += us;
  }
  const frames = [...selfUs]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([frame, us]) => ({ frame, selfMs: us / 1000, share: total > 0 ? us / total : 0 }));
  return { sampledMs: total / 1000, frames };
}

/** Reads a `.cpuprofile` file. */
export function readProfile(path: string): CpuProfile {
  return JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
}

if (import.meta.main) {
  const [file, count] = process.argv.slice(2);
  if (!file) {
    process.stderr.write('usage: node tests/bench/cpu-profile-top.ts file.cpuprofile [n]\n');
    process.exit(2);
  }
  const top = topFrames(readProfile(file), Number(count ?? 25));
  process.stdout.write(`${top.sampledMs.toFixed(0)} ms sampled (not idle)\n`);
  for (const f of top.frames) process.stdout.write(`${(f.share * 100).toFixed(1).padStart(5)}%  ${f.selfMs.toFixed(0).padStart(6)} ms  ${f.frame}\n`);
}
