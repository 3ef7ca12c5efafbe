// Human output of sessionctl: aligned tables, times relative to now, sizes and durations people read at a glance.
// Pure functions, so every command formats the same way and tests can rely on the shapes.
import { UsageError } from './errors.ts';

/** Renders rows as a table with a header, columns padded to their widest cell; numbers align right. */
export function table(header: readonly string[], rows: readonly (readonly (string | number)[])[]): string {
  const cells = rows.map((row) => row.map((c) => String(c)));
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((row) => row[i]?.length ?? 0)));
  const numeric = header.map((_, i) => rows.length > 0 && rows.every((row) => typeof row[i] === 'number'));
  const line = (row: readonly string[]) =>
    row
      .map((c, i) => (numeric[i] ? c.padStart(widths[i] ?? 0) : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  return [line(header), ...cells.map(line)].join('\n');
}

/** Renders label/value pairs one per line, labels padded to the longest; undefined values are left out. */
export function fields(pairs: readonly (readonly [string, string | number | undefined])[]): string {
  const shown = pairs.filter((p): p is readonly [string, string | number] => p[1] !== undefined);
  const width = Math.max(0, ...shown.map(([label]) => label.length));
  return shown.map(([label, value]) => `${`${label}:`.padEnd(width + 1)}  ${value}`).join('\n');
}

/** A duration in ms as people say it: "850 ms", "12.3 s", "4.5 min", "2.0 h". */
export function duration(ms: number): string {
  const abs = Math.abs(ms);
  if (abs < 1000) return `${Math.round(abs)} ms`;
  if (abs < 60_000) return `${(abs / 1000).toFixed(1)} s`;
  if (abs < 3_600_000) return `${(abs / 60_000).toFixed(1)} min`;
  return `${(abs / 3_600_000).toFixed(1)} h`;
}

/** An instant relative to now: "in 12.3 s" for the future, "3.1 s ago" for the past. */
export function relative(at: number, now: number): string {
  return at >= now ? `in ${duration(at - now)}` : `${duration(now - at)} ago`;
}

/** An instant as ISO 8601 plus its relative form, e.g. "2026-01-01T00:00:12.300Z (in 12.3 s)". */
export function instant(at: number, now: number): string {
  return `${new Date(at).toISOString()} (${relative(at, now)})`;
}

/** Bytes with a binary unit: "1000 B", "16.0 GiB". */
export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|min|h)?$/;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, min: 60_000, h: 3_600_000 };

/** Parses a duration option ("500ms", "30s", "2m", "1h"; a bare number is seconds) to ms; UsageError if malformed. */
export function parseDuration(text: string, option: string): number {
  const m = DURATION.exec(text.trim());
  if (!m?.[1]) throw new UsageError(`${option} ${JSON.stringify(text)} is not a duration (e.g. 500ms, 30s, 2m, 1h)`);
  return Math.round(Number(m[1]) * (UNIT_MS[m[2] ?? 's'] ?? 1000));
}

/** Parses a positive integer option; UsageError if it is not one. */
export function parseCount(text: string, option: string): number {
  if (!/^\d+$/.test(text.trim()) || Number(text) < 1) throw new UsageError(`${option} ${JSON.stringify(text)} is not a positive integer`);
  return Number(text);
}
