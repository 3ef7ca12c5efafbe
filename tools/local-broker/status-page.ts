// The stack's status page, served by the local Broker at GET /status under `npm start`: plain HTML that reloads
// itself every few seconds, with the figures an operator looks at first (live sessions, how late dead ones are found
// and how long destroys take against their targets, destroys by cause, the GPU ledger, the storm guard, breakers,
// dead letters, events handled, restarts), small charts of the last minutes drawn server-side as inline SVG (no
// script, no CDN, nothing fetched from elsewhere), and every alert of the deployed rule file with its state.
//
// The figures come from scraping each process's Prometheus exposition (the stack's metricsUrls, the Broker's own
// included) on a timer and at each view; the history behind the charts is kept in memory for `historyMs`. GET
// /status/runbook serves docs/runbook.md with an anchor per alert, so each alert's runbook link works here too.
import { readFileSync } from 'node:fs';
import type { ServerResponse } from 'node:http';
import { join } from 'node:path';
import { alertsView, figuresOf, RULES_FILE, scrapeAll, type AlertsView, type Figures, type LatencyFigures } from './status-figures.ts';

/** The runbook the alerts link to. */
export const RUNBOOK_FILE = join(import.meta.dirname, '..', '..', 'docs', 'runbook.md');

/** Where the page's data comes from, read at each sample (a Prometheus started after the stack is then seen). */
export interface StatusPageOptions {
  /** Each process's metrics URL, by process name. */
  metricsUrls: () => Readonly<Record<string, string>>;
  /** The local Prometheus evaluating the rules, when one runs. */
  prometheusUrl?: () => string | undefined;
  /** Restarts after a crash, by process, when known. */
  restarts?: () => Readonly<Record<string, number>>;
  /** The rule file whose alerts are listed. Default: the deployed one. */
  rulesFile?: string;
  /** How often the page reloads itself and the figures are sampled, seconds. Default 5. */
  refreshS?: number;
  /** How far back the charts reach, ms. Default 10 minutes. */
  historyMs?: number;
  now?: () => number;
}

/** A status page: serve it, sample it, stop its timer. */
export interface StatusPage {
  /** Answers GET /status (the page) or GET /status/runbook. */
  serve(res: ServerResponse, path?: string): Promise<void>;
  /** Scrapes every process now and adds the figures to the history. */
  sample(): Promise<Figures>;
  /** The figures kept for the charts, oldest first. */
  history(): readonly Figures[];
  stop(): void;
}

/** Answers the page from the latest figures; from the first view on, samples every refreshS (unref'd) for the charts. */
export function createStatusPage(opts: StatusPageOptions): StatusPage {
  const refreshS = opts.refreshS ?? 5;
  const historyMs = opts.historyMs ?? 10 * 60_000;
  const now = opts.now ?? Date.now;
  const kept: Figures[] = [];
  let inFlight: Promise<Figures> | undefined;

  // One scrape at a time: a view during a timer's scrape shares it.
  const sample = (): Promise<Figures> =>
    (inFlight ??= (async () => {
      try {
        const figures = figuresOf(await scrapeAll(opts.metricsUrls()), now());
        kept.push(figures);
        while (kept.length > 0 && kept[0]!.at < figures.at - historyMs) kept.shift();
        return figures;
      } finally {
        inFlight = undefined;
      }
    })());

  // Sampling starts at the first view: a stack nobody looks at (a test) is not scraped for nothing.
  let timer: NodeJS.Timeout | undefined;

  return {
    async serve(res, path = '/status') {
      if (path === '/status/runbook') {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' }).end(renderRunbook(readFileSync(RUNBOOK_FILE, 'utf8')));
        return;
      }
      if (timer === undefined) {
        timer = setInterval(() => void sample(), refreshS * 1000);
        timer.unref();
      }
      const last = kept.at(-1);
      const figures = last !== undefined && now() - last.at < 1000 ? last : await sample();
      const alerts = await alertsView(opts.prometheusUrl?.(), opts.rulesFile ?? RULES_FILE);
      const html = renderStatusPage({ figures, history: kept, alerts, restarts: opts.restarts?.() ?? {}, refreshS });
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' }).end(html);
    },
    sample,
    history: () => kept,
    stop: () => clearInterval(timer),
  };
}

const escapeHtml = (s: string): string => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
// Text with `code` spans, escaped.
const withCode = (s: string): string => escapeHtml(s).replace(/`([^`]+)`/g, '<code>$1</code>');

/** Bytes for people: 1.5 GiB. */
export function formatBytes(n: number | undefined): string {
  if (n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(1)} ${units[u]}`;
}

/** Seconds for people: 3.2 ms, 1.20 s. */
export function formatSeconds(s: number | undefined): string {
  if (s === undefined) return '—';
  return s < 1 ? `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)} ms` : `${s.toFixed(2)} s`;
}

const formatShare = (x: number | undefined): string => (x === undefined ? '—' : `${(x * 100).toFixed(1)}%`);
const formatCount = (x: number | undefined): string => (x === undefined ? '—' : Number.isInteger(x) ? String(x) : x.toFixed(2));

/** One series of a chart: a value per kept sample (undefined where there is none). */
interface Series {
  readonly title: string;
  readonly id: string;
  readonly points: ReadonlyArray<{ at: number; value: number | undefined }>;
  readonly format: (v: number) => string;
}

const sumOf = (m: ReadonlyMap<string, number>): number => [...m.values()].reduce((a, b) => a + b, 0);

// A counter as a rate between consecutive samples (per second); a counter that went down (a restart) gives none.
function rate(history: readonly Figures[], read: (f: Figures) => number): Array<{ at: number; value: number | undefined }> {
  return history.slice(1).map((f, i) => {
    const prev = history[i]!;
    const dt = (f.at - prev.at) / 1000;
    const d = read(f) - read(prev);
    return { at: f.at, value: dt > 0 && d >= 0 ? d / dt : undefined };
  });
}

/** A small line chart as inline SVG: the series over the kept window, its latest value and the top of its scale. */
export function sparkline(series: Series, width = 172, height = 56): string {
  const pts = series.points.filter((p): p is { at: number; value: number } => p.value !== undefined && Number.isFinite(p.value));
  const head = `<figure class="chart" data-chart="${series.id}"><figcaption>${escapeHtml(series.title)} <b>${pts.length > 0 ? escapeHtml(series.format(pts.at(-1)!.value)) : '—'}</b></figcaption>`;
  if (pts.length < 2) return `${head}<svg width="${width}" height="${height}" role="img" aria-label="${escapeHtml(series.title)}: collecting"><rect class="frame" x="0.5" y="0.5" width="${width - 1}" height="${height - 1}"/><text x="8" y="${height / 2 + 4}" class="muted">collecting… (a point every refresh)</text></svg></figure>`;
  const t0 = pts[0]!.at;
  const t1 = pts.at(-1)!.at;
  const top = Math.max(...pts.map((p) => p.value), 0);
  const scale = top > 0 ? top : 1;
  const pad = 4;
  const x = (at: number) => pad + ((width - 2 * pad) * (at - t0)) / Math.max(1, t1 - t0);
  const y = (v: number) => height - pad - ((height - 2 * pad - 12) * v) / scale;
  const line = pts.map((p) => `${x(p.at).toFixed(1)},${y(p.value).toFixed(1)}`).join(' ');
  const area = `${pad},${height - pad} ${line} ${x(t1).toFixed(1)},${height - pad}`;
  const minutes = Math.max(1, Math.round((t1 - t0) / 60_000));
  return `${head}<svg width="${width}" height="${height}" role="img" aria-label="${escapeHtml(series.title)}"><rect class="frame" x="0.5" y="0.5" width="${width - 1}" height="${height - 1}"/>`
    + `<polygon class="area" points="${area}"/><polyline class="line" points="${line}"/>`
    + `<text x="${width - pad}" y="12" class="muted" text-anchor="end">max ${escapeHtml(series.format(top))}</text>`
    + `<text x="${pad + 2}" y="12" class="muted">${t1 - t0 < 60_000 ? `${Math.round((t1 - t0) / 1000)} s` : `${minutes} min`}</text></svg></figure>`;
}

function chartsOf(history: readonly Figures[]): Series[] {
  const perS = (v: number) => `${v.toFixed(v < 10 ? 2 : 0)}/s`;
  return [
    { id: 'sessions', title: 'live sessions (active)', points: history.map((f) => ({ at: f.at, value: f.sessions?.get('active') })), format: formatCount },
    { id: 'destroy-rate', title: 'destroys per second', points: rate(history, (f) => sumOf(f.destroys)), format: perS },
    { id: 'gpu-held', title: 'GPU bytes held', points: history.map((f) => ({ at: f.at, value: f.gpu.held })), format: formatBytes },
    { id: 'event-rate', title: 'events per second', points: rate(history, (f) => sumOf(f.events)), format: perS },
    { id: 'queue-depth', title: 'storm-guard queue depth', points: history.map((f) => ({ at: f.at, value: f.queueDepth })), format: formatCount },
  ];
}

function figure(id: string, label: string, value: string, cls = ''): string {
  return `<div class="figure${cls ? ` ${cls}` : ''}"><span class="label">${escapeHtml(label)}</span><span class="value" data-figure="${id}">${escapeHtml(value)}</span></div>`;
}

function latencyRow(l: LatencyFigures): string {
  const id = l.metric.replace(/^sessionreaper_/, '').replace(/_seconds$/, '');
  const ok = l.withinTarget === undefined ? '' : l.withinTarget >= 0.99 ? 'ok' : 'bad';
  return `<tr data-latency="${id}"><th>${escapeHtml(l.title)}</th><td data-figure="${id}-count">${l.count}</td>`
    + `<td>${l.target === undefined ? '—' : formatSeconds(l.target)}</td><td class="${ok}" data-figure="${id}-within">${formatShare(l.withinTarget)}</td>`
    + `<td>${formatSeconds(l.p50)}</td><td>${formatSeconds(l.p99)}</td></tr>`;
}

const STATE_ORDER = { firing: 0, pending: 1, inactive: 2, 'not evaluated': 3 } as const;

function runbookHref(runbook: string): string {
  const anchor = runbook.split('#')[1];
  return runbook.startsWith('http') ? runbook : `/status/runbook${anchor ? `#${anchor}` : ''}`;
}

function alertsSection(view: AlertsView): string {
  const firing = view.alerts.filter((a) => a.state === 'firing').length;
  const pending = view.alerts.filter((a) => a.state === 'pending').length;
  const rows = [...view.alerts].sort((a, b) => STATE_ORDER[a.state] - STATE_ORDER[b.state]).map((a) =>
    `<tr data-alert="${escapeHtml(a.name)}" data-state="${a.state}"><td><span class="state ${a.state.replace(' ', '-')}">${a.state}</span>${a.active > 1 ? ` ×${a.active}` : ''}</td>`
    + `<th>${escapeHtml(a.name)}</th><td>${escapeHtml(a.severity)}</td><td>${escapeHtml(a.summary)}</td>`
    + `<td><a href="${escapeHtml(runbookHref(a.runbook))}">runbook</a></td></tr>`).join('');
  const head = view.evaluated
    ? `<p id="alerts-source">Evaluated by the local Prometheus at <a href="${escapeHtml(view.prometheusUrl!)}/alerts">${escapeHtml(view.prometheusUrl!)}</a>: <b data-figure="alerts-firing">${firing}</b> firing, ${pending} pending.</p>`
    : `<p id="alerts-source" class="note">${withCode(view.note ?? 'Not evaluated.')}</p>`;
  return `<section><h2>Alerts <small>${view.alerts.length} in infra/observability/rules/session-reaper.rules.yaml</small></h2>${head}`
    + `<table class="alerts"><thead><tr><th>state</th><th>alert</th><th>severity</th><th>fires when</th><th></th></tr></thead><tbody>${rows}</tbody></table></section>`;
}

const STYLE = `
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f7f9;color:#1c2330}
header{background:#1c2330;color:#fff;padding:10px 20px;display:flex;align-items:baseline;gap:16px}
header h1{font-size:18px;margin:0}header .muted{color:#aab3c0}
main{padding:12px 20px;display:grid;grid-template-columns:repeat(auto-fill,minmax(290px,1fr));gap:12px}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:10px 14px}
section.wide{grid-column:1/-1}
h2{font-size:14px;margin:0 0 8px;text-transform:uppercase;letter-spacing:.04em;color:#4a5568}h2 small{text-transform:none;font-weight:normal;color:#718096;letter-spacing:0}
.figures{display:flex;flex-wrap:wrap;gap:6px 18px}.figure{display:flex;flex-direction:column}.figure .label{color:#718096;font-size:12px}.figure .value{font-size:20px;font-weight:600}
.figure.bad .value,.bad{color:#c53030}.ok{color:#2f855a}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:3px 8px 3px 0;border-bottom:1px solid #edf0f3;vertical-align:top}thead th{color:#718096;font-weight:normal;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{margin:0;width:172px}.chart figcaption{font-size:12px;color:#4a5568;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
svg .frame{fill:#fbfcfd;stroke:#dde2e8}svg .line{fill:none;stroke:#3182ce;stroke-width:1.5}svg .area{fill:#bee3f8;opacity:.6}svg text{font-size:10px}.muted{fill:#718096;color:#718096}
.state{display:inline-block;border-radius:3px;padding:0 6px;font-size:12px}.state.firing{background:#c53030;color:#fff}.state.pending{background:#dd6b20;color:#fff}.state.inactive{background:#c6f6d5;color:#22543d}.state.not-evaluated{background:#e2e8f0;color:#4a5568}
.note{background:#fffbea;border:1px solid #f6e05e;padding:6px 8px;border-radius:4px}
code{font-size:12px}
table.processes tbody{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));column-gap:18px}table.processes tr{display:flex;gap:10px}table.processes th{flex:1}`;

/** What one rendering of the page shows. */
export interface PageInput {
  figures: Figures;
  history: readonly Figures[];
  alerts: AlertsView;
  restarts: Readonly<Record<string, number>>;
  refreshS: number;
}

/** The page's HTML. */
export function renderStatusPage({ figures: f, history, alerts, restarts, refreshS }: PageInput): string {
  const sessions = f.sessions;
  const down = f.scrapes.filter((s) => !s.ok);
  const restartTotal = Object.values(restarts).reduce((a, b) => a + b, 0);
  // The `other` runtime (a name not registered) is shown only when a breaker is counted under it.
  const breakerRows = [...f.breakers].filter(([runtime, states]) => runtime !== 'other' || [...states.values()].some((n) => n > 0)).map(([runtime, states]) => {
    const open = states.get('open') ?? 0;
    // A state no process reports is shown as such, not as 0.
    const n = (state: string) => formatCount(states.get(state));
    return `<tr data-breaker="${escapeHtml(runtime)}"><th>${escapeHtml(runtime)}</th><td>${n('closed')}</td><td>${n('half_open')}</td><td class="${open > 0 ? 'bad' : ''}">${n('open')}</td></tr>`;
  }).join('');
  const deadByType = [...f.deadLettersByType].filter(([, n]) => n > 0).map(([type, n]) => `${escapeHtml(type)} ${n}`).join(' · ');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="${refreshS}">
<title>session-reaper · status</title><style>${STYLE}</style></head>
<body>
<header><h1>session-reaper · local stack status</h1><span class="muted">as of <time data-figure="as-of" datetime="${new Date(f.at).toISOString()}">${new Date(f.at).toISOString().replace('T', ' ').slice(0, 19)} UTC</time> · reloads every ${refreshS} s · ${f.scrapes.length - down.length} of ${f.scrapes.length} processes scraped</span></header>
<main>
<section><h2>Sessions</h2><div class="figures">
${figure('sessions-active', 'active', formatCount(sessions?.get('active')))}
${figure('sessions-destroying', 'destroying', formatCount(sessions?.get('destroying')))}
${figure('sessions-release-failed', 'release failed', formatCount(sessions?.get('release_failed')), (sessions?.get('release_failed') ?? 0) > 0 ? 'bad' : '')}
${figure('sessions-opened', 'opened', formatCount(f.opened))}
</div></section>
<section><h2>Destroys by cause</h2><div class="figures">
${[...f.destroys].map(([cause, n]) => figure(`destroys-${cause}`, cause, String(n))).join('\n')}
${figure('destroys-gave-up', 'gave up', String(f.destroysGaveUp), f.destroysGaveUp > 0 ? 'bad' : '')}
</div></section>
<section><h2>GPU ledger</h2><div class="figures">
${figure('gpu-registered', 'registered', formatBytes(f.gpu.registered))}
${figure('gpu-freed', 'freed', formatBytes(f.gpu.freed))}
${figure('gpu-held', 'held now', formatBytes(f.gpu.held))}
${figure('gpu-offloaded', 'offloaded', formatBytes(f.gpu.offloaded))}
${figure('ledger-violations', 'ledger violations', formatCount(f.ledgerViolations), (f.ledgerViolations ?? 0) > 0 ? 'bad' : '')}
</div></section>
<section class="wide"><h2>Latency <small>share within target read at the bucket edge on the target, as the alerts do; quantiles interpolated in buckets</small></h2>
<table><thead><tr><th></th><th>count</th><th>target</th><th>within target</th><th>p50</th><th>p99</th></tr></thead><tbody>
${f.latencies.map(latencyRow).join('\n')}
</tbody></table></section>
<section class="wide"><h2>Last ${Math.max(1, Math.round((history.length > 1 ? history.at(-1)!.at - history[0]!.at : 0) / 60_000))} min</h2><div class="charts">
${chartsOf(history).map((s) => sparkline(s)).join('\n')}
</div></section>
<section><h2>Storm guard and releases</h2><div class="figures">
${figure('queue-depth', 'queue depth', formatCount(f.queueDepth), (f.queueDepth ?? 0) > 100 ? 'bad' : '')}
${figure('oldest-release', 'oldest release in flight', f.oldestPendingReleaseS === 0 ? 'none' : formatSeconds(f.oldestPendingReleaseS), (f.oldestPendingReleaseS ?? 0) > 300 ? 'bad' : '')}
${figure('orphan-releases', 'orphan releases', formatCount(f.orphanReleases))}
${figure('demote-requests', 'demote requests', formatCount(f.demoteRequests))}
</div></section>
<section><h2>Breakers per runtime</h2>${breakerRows === '' ? '<p class="muted">No breaker yet (one is made at a runtime\'s first call).</p>' : `<table><thead><tr><th>runtime</th><th>closed</th><th>half open</th><th>open</th></tr></thead><tbody>${breakerRows}</tbody></table>`}</section>
<section><h2>Events and dead letters</h2><div class="figures">
${figure('events-2xx', 'events acknowledged', formatCount(f.events.get('2xx') ?? 0))}
${figure('events-4xx', 'refused (4xx)', formatCount(f.events.get('4xx') ?? 0), (f.events.get('4xx') ?? 0) > 0 ? 'bad' : '')}
${figure('events-5xx', 'redelivered (5xx)', formatCount(f.events.get('5xx') ?? 0))}
${figure('dead-letters', 'dead letters', String(f.deadLetters), f.deadLetters > 0 ? 'bad' : '')}
</div>${deadByType === '' ? '' : `<p class="muted">dead letters by type: ${deadByType}</p>`}</section>
<section class="wide"><h2>Processes <small>each scraped at its metrics URL; restarts after a crash: <b data-figure="restarts" class="${restartTotal > 0 ? 'bad' : ''}">${restartTotal}</b></small></h2>
<table class="processes"><tbody>${f.scrapes.map((s) => `<tr data-process="${escapeHtml(s.process)}"><th>${escapeHtml(s.process)}</th><td class="${s.ok ? 'ok' : 'bad'}">${s.ok ? 'scraped' : `down: ${escapeHtml(s.error ?? '')}`}</td><td>${restarts[s.process] ?? 0} restarts</td></tr>`).join('')}</tbody></table></section>
${alertsSection(alerts).replace('<section>', '<section class="wide">')}
</main></body></html>
`;
}

// GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens (the rule file's runbook_url uses them).
const slug = (heading: string): string => heading.trim().toLowerCase().replace(/[^\w\s-]/g, '').replace(/\s+/g, '-');

/** docs/runbook.md as a page: headings become anchored headings, the rest stays as written. */
export function renderRunbook(markdown: string): string {
  const parts: string[] = [];
  let text: string[] = [];
  const flush = () => {
    if (text.some((l) => l.trim() !== '')) parts.push(`<pre>${escapeHtml(text.join('\n').trim())}</pre>`);
    text = [];
  };
  for (const line of markdown.split('\n')) {
    const h = /^(#{1,6})\s+(.*)$/.exec(line);
    if (!h) {
      text.push(line);
      continue;
    }
    flush();
    parts.push(`<h${h[1]!.length} id="${slug(h[2]!)}">${escapeHtml(h[2]!)}</h${h[1]!.length}>`);
  }
  flush();
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>session-reaper · runbook</title>
<style>body{font:14px/1.5 system-ui,sans-serif;max-width:900px;margin:20px auto;padding:0 20px}pre{white-space:pre-wrap;font:inherit}h2{border-top:1px solid #ddd;padding-top:12px}</style></head>
<body><p><a href="/status">← status</a></p>${parts.join('\n')}</body></html>
`;
}
