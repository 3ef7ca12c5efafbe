// A reader of the Prometheus text exposition format (version 0.0.4: what exporter-prometheus serves and a scrape
// reads), for the status page: each sample's name, labels and value. Small on purpose: the one npm parser of it
// (parse-prometheus-text-format) has not been released since 2019 and has no types, and the status page needs
// samples only, not metric families. Comments (# HELP, # TYPE) are skipped; a timestamp after the value is ignored.
// https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format

/** One sample: its name (a histogram's `_bucket`, `_sum` and `_count` included), labels and value. */
export interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

/** A line that is not a sample, a comment or blank. */
export class ExpositionError extends Error {
  override name = 'ExpositionError';
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*/;

// A label value's escapes: \\, \" and \n (the only three the format defines).
function unescape(raw: string): string {
  return raw.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
}

function parseValue(text: string, line: string): number {
  switch (text) {
    case '+Inf':
      return Infinity;
    case '-Inf':
      return -Infinity;
    case 'NaN':
      return NaN;
  }
  const n = Number(text);
  if (text === '' || Number.isNaN(n)) throw new ExpositionError(`not a sample value: ${JSON.stringify(text)} in ${JSON.stringify(line)}`);
  return n;
}

/** Parses one sample line. */
function parseLine(line: string): Sample {
  const name = NAME.exec(line)?.[0];
  if (name === undefined) throw new ExpositionError(`not a sample line: ${JSON.stringify(line)}`);
  let at = name.length;
  const labels: Record<string, string> = {};
  if (line[at] === '{') {
    at++;
    for (;;) {
      while (line[at] === ' ') at++;
      if (line[at] === '}') break;
      const label = LABEL_NAME.exec(line.slice(at))?.[0];
      if (label === undefined || line.slice(at + label.length, at + label.length + 2) !== '="') throw new ExpositionError(`bad label at ${at}: ${JSON.stringify(line)}`);
      at += label.length + 2;
      const start = at;
      while (at < line.length && line[at] !== '"') at += line[at] === '\\' ? 2 : 1;
      if (at >= line.length) throw new ExpositionError(`unterminated label value: ${JSON.stringify(line)}`);
      labels[label] = unescape(line.slice(start, at));
      at++;
      while (line[at] === ' ') at++;
      if (line[at] === ',') at++;
      else if (line[at] !== '}') throw new ExpositionError(`expected , or } at ${at}: ${JSON.stringify(line)}`);
    }
    at++;
  }
  const rest = line.slice(at).trim().split(/\s+/);
  return { name, labels, value: parseValue(rest[0] ?? '', line) };
}

/** The samples of an exposition, in order; throws ExpositionError at the first line that is none. */
export function parseExposition(text: string): Sample[] {
  const out: Sample[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    out.push(parseLine(line));
  }
  return out;
}
