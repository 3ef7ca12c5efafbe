// A reader for the few gauges the SGLang and vLLM adapters need from a Prometheus text exposition (/metrics): the
// sample lines `name{labels} value [timestamp]`. Several label sets of one name (a model name, an engine index) are
// summed or averaged by the caller; comments (# HELP, # TYPE) and other names are skipped.

/** Every sample value of each metric name present in the exposition text. */
export function readSamples(text: string, names: readonly string[]): Map<string, number[]> {
  const wanted = new Set(names);
  const out = new Map<string, number[]>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const nameEnd = line.search(/[{\s]/);
    if (nameEnd <= 0) continue;
    const name = line.slice(0, nameEnd);
    if (!wanted.has(name)) continue;
    // The value follows the label set (which may hold spaces inside quoted values) or the name.
    const afterLabels = line[nameEnd] === '{' ? line.indexOf('}', nameEnd) + 1 : nameEnd;
    if (afterLabels <= 0) continue;
    const value = Number(line.slice(afterLabels).trim().split(/\s+/)[0]);
    if (!Number.isFinite(value)) continue;
    const list = out.get(name) ?? [];
    list.push(value);
    out.set(name, list);
  }
  return out;
}

/** The sum of a metric's samples, or undefined when it is absent. */
export function sumOf(samples: Map<string, number[]>, name: string): number | undefined {
  const list = samples.get(name);
  return list === undefined ? undefined : list.reduce((a, b) => a + b, 0);
}

/** The mean of a metric's samples, or undefined when it is absent. */
export function meanOf(samples: Map<string, number[]>, name: string): number | undefined {
  const sum = sumOf(samples, name);
  return sum === undefined ? undefined : sum / samples.get(name)!.length;
}
