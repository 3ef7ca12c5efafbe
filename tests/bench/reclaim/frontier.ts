// The fixed-timeout frontier and how far a policy lies from it, and the plot of every policy against it.
//
// Each fixed timeout is a point (re-prefill tokens, wasted GPU byte-seconds). Mixing two timeouts (one for some
// sessions, the other for the rest) reaches every point on the straight line between them, so the frontier is the
// piecewise-linear curve through the fixed points in order of re-prefill. A policy "beats the frontier by k %" on
// waste when its waste is k % below the frontier's at its own re-prefill, and on re-prefill when its re-prefill is k %
// below the frontier's at its own waste.

/** A point on the plot's axes. */
export interface FrontierPoint {
  readonly refill: number;
  readonly waste: number;
}

/** Linear interpolation of y at x along points sorted by x; undefined outside their range. */
function along(points: ReadonlyArray<readonly [number, number]>, x: number): number | undefined {
  const sorted = [...points].sort((a, b) => a[0] - b[0]);
  if (sorted.length === 0 || x < sorted[0]![0] || x > sorted.at(-1)![0]) return undefined;
  for (let i = 1; i < sorted.length; i++) {
    const [x0, y0] = sorted[i - 1]!;
    const [x1, y1] = sorted[i]!;
    if (x <= x1) return x1 === x0 ? Math.min(y0, y1) : y0 + ((y1 - y0) * (x - x0)) / (x1 - x0);
  }
  return sorted.at(-1)![1];
}

/** The frontier's waste at a given re-prefill; undefined beyond the fixed timeouts' range. */
export function frontierWasteAt(frontier: readonly FrontierPoint[], refill: number): number | undefined {
  return along(frontier.map((p) => [p.refill, p.waste] as const), refill);
}

/** The frontier's re-prefill at a given waste; undefined beyond the fixed timeouts' range. */
export function frontierRefillAt(frontier: readonly FrontierPoint[], waste: number): number | undefined {
  return along(frontier.map((p) => [p.waste, p.refill] as const), waste);
}

/** How much less a policy wastes, and re-prefills, than the frontier at its own re-prefill and waste (0.5 = 50 % less). */
export function beyondFrontier(frontier: readonly FrontierPoint[], point: FrontierPoint): { lessWaste: number | undefined; lessRefill: number | undefined } {
  const w = frontierWasteAt(frontier, point.refill);
  const r = frontierRefillAt(frontier, point.waste);
  return {
    lessWaste: w === undefined || w <= 0 ? undefined : 1 - point.waste / w,
    lessRefill: r === undefined || r <= 0 ? undefined : 1 - point.refill / r,
  };
}

/** One series of the plot. */
export interface PlotSeries {
  readonly name: string;
  readonly color: string;
  readonly points: ReadonlyArray<FrontierPoint & { label?: string }>;
  /** Joined by a line (the frontier and fitted families), or points only. */
  readonly line: boolean;
  /** Marker radius in pixels; 4 unless given (a larger one keeps a single point visible over a cloud). */
  readonly radius?: number;
}

const escape = (text: string): string => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/**
 * A hand-written SVG scatter plot: x = re-prefill tokens (millions), y = wasted GPU KV (GiB·h, log scale, since fixed
 * timeouts span two orders of magnitude). Points with no waste are drawn on the bottom edge.
 */
export function plotSvg(title: string, series: readonly PlotSeries[], units: { refillScale: number; refillUnit: string; wasteScale: number; wasteUnit: string }): string {
  const width = 1120;
  const height = 640;
  const margin = { left: 80, right: 420, top: 50, bottom: 60 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const all = series.flatMap((s) => s.points);
  const maxX = Math.max(1, ...all.map((p) => p.refill / units.refillScale)) * 1.05;
  const wastes = all.map((p) => p.waste / units.wasteScale).filter((w) => w > 0);
  const minY = Math.pow(10, Math.floor(Math.log10(Math.min(...wastes, 1))));
  const maxY = Math.pow(10, Math.ceil(Math.log10(Math.max(...wastes, 10))));
  const x = (v: number) => margin.left + (v / maxX) * plotW;
  const y = (v: number) => margin.top + plotH - ((Math.log10(Math.max(v, minY)) - Math.log10(minY)) / (Math.log10(maxY) - Math.log10(minY))) * plotH;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${width}" height="${height}" fill="white"/>`);
  out.push(`<text x="${margin.left}" y="28" font-size="16">${escape(title)}</text>`);
  // Axes and grid.
  out.push(`<rect x="${margin.left}" y="${margin.top}" width="${plotW}" height="${plotH}" fill="none" stroke="#444"/>`);
  const xStep = niceStep(maxX / 8);
  for (let v = 0; v <= maxX; v += xStep) {
    out.push(`<line x1="${x(v).toFixed(1)}" y1="${margin.top}" x2="${x(v).toFixed(1)}" y2="${margin.top + plotH}" stroke="#eee"/>`);
    out.push(`<text x="${x(v).toFixed(1)}" y="${margin.top + plotH + 18}" text-anchor="middle">${round(v)}</text>`);
  }
  for (let v = minY; v <= maxY * 1.0001; v *= 10) {
    out.push(`<line x1="${margin.left}" y1="${y(v).toFixed(1)}" x2="${margin.left + plotW}" y2="${y(v).toFixed(1)}" stroke="#eee"/>`);
    out.push(`<text x="${margin.left - 8}" y="${(y(v) + 4).toFixed(1)}" text-anchor="end">${round(v)}</text>`);
  }
  out.push(`<text x="${margin.left + plotW / 2}" y="${height - 15}" text-anchor="middle">${escape(`re-prefill after premature ends (${units.refillUnit})`)}</text>`);
  out.push(`<text transform="translate(20 ${margin.top + plotH / 2}) rotate(-90)" text-anchor="middle">${escape(`GPU KV held after a session's last turn (${units.wasteUnit}, log)`)}</text>`);
  // Series.
  series.forEach((s, i) => {
    const pts = s.points.map((p) => [x(p.refill / units.refillScale), y(p.waste / units.wasteScale), p.label] as const);
    if (s.line && pts.length > 1) {
      const sorted = [...pts].sort((a, b) => a[0] - b[0]);
      out.push(`<polyline fill="none" stroke="${s.color}" stroke-width="1.5" points="${sorted.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(' ')}"/>`);
    }
    for (const [px, py, label] of pts) {
      out.push(`<circle cx="${px.toFixed(1)}" cy="${py.toFixed(1)}" r="${s.radius ?? 4}" fill="${s.color}"${s.radius === undefined ? '' : ' stroke="black"'}/>`);
      if (label !== undefined) out.push(`<text x="${(px + 6).toFixed(1)}" y="${(py - 6).toFixed(1)}" font-size="10" fill="${s.color}">${escape(label)}</text>`);
    }
    const ly = margin.top + 10 + i * 20;
    out.push(`<circle cx="${width - margin.right + 20}" cy="${ly}" r="4" fill="${s.color}"/>`);
    out.push(`<text x="${width - margin.right + 30}" y="${ly + 4}">${escape(s.name)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

function niceStep(raw: number): number {
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  const m = raw / p;
  return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}

const round = (v: number): string => (v >= 100 ? v.toFixed(0) : v >= 1 ? String(Math.round(v * 10) / 10) : String(Math.round(v * 100) / 100));
