// Where a mechanism's time goes, for bench:compare --profile: a V8 CPU profile of the thread it is taken in (the
// driver's main thread, the detector's worker thread), summed into its top self-time frames, and Redis's own
// account of the commands and scripts it ran (INFO commandstats, and per script from a SLOWLOG that logs every call).
import { Session } from 'node:inspector/promises';
import type { RedisClient } from '../../../functions/core/redis/connect.ts';

/** The parts of a V8 CPU profile (Profiler.Profile) summed here. */
export interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; hitCount?: number }[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

/** One frame's share of a profile: self time (ms) and the share of all samples. */
export interface TopFrame {
  frame: string;
  selfMs: number;
  share: number;
}

/** A frame as `name file:line`, the file relative to the repository (node: and anonymous frames as they are). */
function frameName(f: CpuProfile['nodes'][number]['callFrame']): string {
  const name = f.functionName || '(anonymous)';
  if (!f.url) return name;
  const at = f.url.indexOf('/functions/') >= 0 ? f.url.indexOf('/functions/') : f.url.indexOf('/node_modules/') >= 0 ? f.url.indexOf('/node_modules/') : f.url.indexOf('/tests/');
  const file = at >= 0 ? f.url.slice(at + 1) : f.url.replace(/^file:\/\//, '');
  return `${name} ${file}:${f.lineNumber + 1}`;
}

/**
 * The profile's top `n` frames by self time: samples are weighted by their time deltas, frames of the same function
 * (one per call site in the tree) are summed. `(idle)` is left out of the shares: it is time the thread waited.
 */
export function topFrames(profile: CpuProfile, n = 12): { frames: TopFrame[]; busyMs: number; idleMs: number } {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const selfUs = new Map<string, number>();
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  for (let i = 0; i < samples.length; i++) {
    const node = byId.get(samples[i]!);
    if (!node) continue;
    // A sample's time is the delta to the next one (V8's own convention in DevTools).
    const us = deltas[i + 1] ?? 0;
    const key = frameName(node.callFrame);
    selfUs.set(key, (selfUs.get(key) ?? 0) + us);
  }
  const idleUs = selfUs.get('(idle)') ?? 0;
  selfUs.delete('(idle)');
  const busyUs = [...selfUs.values()].reduce((a, b) => a + b, 0);
  const frames = [...selfUs.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([frame, us]) => ({ frame, selfMs: us / 1000, share: busyUs > 0 ? us / busyUs : 0 }));
  return { frames, busyMs: busyUs / 1000, idleMs: idleUs / 1000 };
}

/** A CPU profile of the calling thread, from start() until stop(). */
export class ThreadProfiler {
  readonly #session = new Session();

  /** Starts sampling every `intervalUs` µs. */
  async start(intervalUs = 200): Promise<void> {
    this.#session.connect();
    await this.#session.post('Profiler.enable');
    await this.#session.post('Profiler.setSamplingInterval', { interval: intervalUs });
    await this.#session.post('Profiler.start');
  }

  /** Stops sampling and answers the profile. */
  async stop(): Promise<CpuProfile> {
    const { profile } = await this.#session.post('Profiler.stop');
    this.#session.disconnect();
    return profile;
  }
}

/** What Redis spent per command or script: calls, total µs and µs per call. */
export interface RedisCost {
  what: string;
  calls: number;
  usec: number;
  usecPerCall: number;
}

/** INFO commandstats as a table, costliest first. */
export async function commandStats(admin: RedisClient): Promise<RedisCost[]> {
  const info = await admin.info('commandstats');
  const out: RedisCost[] = [];
  for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+),usec=(\d+),usec_per_call=([\d.]+)/gm)) {
    out.push({ what: m[1]!, calls: Number(m[2]), usec: Number(m[3]), usecPerCall: Number(m[4]) });
  }
  return out.sort((a, b) => b.usec - a.usec);
}

/**
 * Makes Redis log every command in its SLOWLOG (threshold 0), the ring sized `entries`, so that per-script costs can
 * be read from it afterwards (scriptCosts). The ring keeps the latest entries: a sample of the end of the span.
 */
export async function logEveryCommand(admin: RedisClient, entries = 100_000): Promise<void> {
  await admin.config('SET', 'slowlog-max-len', String(entries));
  await admin.config('SET', 'slowlog-log-slower-than', '0');
  await admin.slowlog('RESET');
}

/**
 * Per-script cost from the SLOWLOG: EVALSHA entries grouped by the name `names` gives their sha (the sha itself when
 * unknown), other commands by name. Answers calls, µs and µs per call of the logged sample, costliest first.
 */
export async function scriptCosts(admin: RedisClient, names: ReadonlyMap<string, string>): Promise<RedisCost[]> {
  const log = (await admin.slowlog('GET', -1)) as [number, number, number, (string | Buffer)[]][];
  const sums = new Map<string, { calls: number; usec: number }>();
  for (const entry of log) {
    const args = entry[3].map(String);
    const cmd = args[0]?.toLowerCase() ?? '?';
    if (cmd === 'slowlog' || cmd === 'config') continue;
    const what = cmd === 'evalsha' ? `script ${names.get(args[1] ?? '') ?? args[1]}` : cmd;
    const sum = sums.get(what) ?? { calls: 0, usec: 0 };
    sum.calls += 1;
    sum.usec += entry[2];
    sums.set(what, sum);
  }
  await admin.config('SET', 'slowlog-log-slower-than', '10000');
  return [...sums.entries()]
    .map(([what, s]) => ({ what, calls: s.calls, usec: s.usec, usecPerCall: s.usec / s.calls }))
    .sort((a, b) => b.usec - a.usec);
}
