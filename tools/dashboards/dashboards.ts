// session-reaper's Grafana dashboards, built from code with Grafana's own Foundation SDK (typed builders for the
// dashboard JSON), so a panel names its metric the way the code does and a test can check every query against the
// catalogue (tests/observability). `npm run dashboards` writes them to infra/observability/dashboards/*.json.
//
// Gauges of shared state come from every deadline engine replica with the same value: max(), never sum(). Latency
// objectives are shown as the share within the target edge (the recording rules of infra/observability/rules), and
// quantiles only as a guide (they are interpolated inside a bucket).
import type * as common from '@grafana/grafana-foundation-sdk/common';
import { DashboardBuilder, DashboardLinkBuilder, DashboardLinkType, DatasourceVariableBuilder, RowBuilder, type Dashboard } from '@grafana/grafana-foundation-sdk/dashboard';
import { DataqueryBuilder } from '@grafana/grafana-foundation-sdk/prometheus';
import { PanelBuilder as StatBuilder } from '@grafana/grafana-foundation-sdk/stat';
import { PanelBuilder as TimeseriesBuilder } from '@grafana/grafana-foundation-sdk/timeseries';

const DATASOURCE: common.DataSourceRef = { type: 'prometheus', uid: '${datasource}' };
const RATE = '[$__rate_interval]';

/** One query of a panel: its PromQL and its legend. */
type Query = readonly [expr: string, legend: string];

/** A panel before layout: a time series or a single stat. */
interface PanelSpec {
  kind: 'timeseries' | 'stat';
  title: string;
  description: string;
  unit: string;
  queries: readonly Query[];
}

const ts = (title: string, unit: string, description: string, ...queries: Query[]): PanelSpec => ({ kind: 'timeseries', title, unit, description, queries });
const stat = (title: string, unit: string, description: string, ...queries: Query[]): PanelSpec => ({ kind: 'stat', title, unit, description, queries });

/** A dashboard before building: uid, title, rows of panels. */
interface DashboardSpec {
  uid: string;
  title: string;
  description: string;
  rows: readonly { title: string; panels: readonly PanelSpec[] }[];
}

const q99 = (metric: string, by: string) => `histogram_quantile(0.99, sum by (${by}le) (rate(${metric}_bucket${RATE})))`;
const q50 = (metric: string, by: string) => `histogram_quantile(0.5, sum by (${by}le) (rate(${metric}_bucket${RATE})))`;

/** The five dashboards, as specs. */
export const DASHBOARDS: readonly DashboardSpec[] = [
  {
    uid: 'sessionreaper-overview',
    title: 'session-reaper / Overview',
    description: 'Sessions, events, destroys and the deadline engine at a glance.',
    rows: [
      {
        title: 'Sessions',
        panels: [
          ts('Sessions by state', 'short', 'Active (deadline index), destroying (in flight), release_failed (waiting for an operator); read from Redis by the deadline engine.', ['max by (state) (sessionreaper_sessions)', '{{state}}']),
          ts('Sessions opened and destroyed per second', 'ops', 'New incarnations registered, and destroys that ended, by cause.', ['sum(rate(sessionreaper_sessions_opened_total' + RATE + '))', 'opened'], ['sum by (cause) (rate(sessionreaper_destroys_total{outcome="destroyed"}' + RATE + '))', 'destroyed: {{cause}}']),
          ts('Events handled per second', 'ops', 'CloudEvents each function answered, by type and status class (4xx never redelivered, 5xx redelivered).', ['sum by (type, outcome) (rate(sessionreaper_events_processed_total' + RATE + '))', '{{type}} {{outcome}}']),
          ts('Destroy triggers per second', 'ops', 'What each end trigger came to: claimed, resumed (a duplicate or later cause, suppressed), or not applied.', ['sum by (outcome) (rate(sessionreaper_destroy_triggers_total' + RATE + '))', '{{outcome}}']),
        ],
      },
      {
        title: 'Deadline engine',
        panels: [
          stat('Overdue deadlines', 'short', 'Active sessions more than a second past their deadline and unclaimed: must be 0.', ['max(sessionreaper_deadlines_overdue)', 'overdue']),
          ts('Engine rounds and expiries per second', 'ops', 'Poll rounds completed (flat: a stalled engine) and dead sessions claimed.', ['sum(rate(sessionreaper_deadline_engine_rounds_total' + RATE + '))', 'rounds'], ['sum(rate(sessionreaper_expiries_total' + RATE + '))', 'expiries']),
          ts('Event-loop delay', 's', "The deadline engine's event-loop delay per collection interval: its timers fire this late.", ['max by (stat) (sessionreaper_event_loop_delay_seconds)', '{{stat}}']),
        ],
      },
      {
        title: 'Dependencies',
        panels: [
          ts('Redis script p99', 's', 'One script call, round trip included, by script.', [q99('sessionreaper_redis_script_duration_seconds', 'script, '), '{{script}}']),
          ts('Emission retries and failures per second', 'ops', 'Attempts beyond the first to send an event to the Broker, and events not sent within the budget.', ['sum(rate(sessionreaper_emit_retries_total' + RATE + '))', 'retries'], ['sum(rate(sessionreaper_emit_failures_total' + RATE + '))', 'failures']),
          ts('Destroy failures per second', 'ops', 'Failed steps of destroys by stage and reason.', ['sum by (stage, reason) (rate(sessionreaper_destroy_failures_total' + RATE + '))', '{{stage}} {{reason}}']),
        ],
      },
    ],
  },
  {
    uid: 'sessionreaper-slos',
    title: 'session-reaper / Detection & destroy SLOs',
    description: '99% of dead sessions detected within 10 ms, 99% of destroys done within 18 ms; end to end by cause.',
    rows: [
      {
        title: 'Detection (target 10 ms)',
        panels: [
          ts('Detections within 10 ms', 'percentunit', 'Share of expiries claimed within 10 ms of the deadline (bucket le=0.01), over 5 m and 1 h.', ['sessionreaper:detection_within_target:ratio_rate5m', '5m'], ['sessionreaper:detection_within_target:ratio_rate1h', '1h']),
          ts('Detection lag', 's', 'Interpolated inside buckets: a guide; the ratio at the edge is the objective.', [q50('sessionreaper_detection_lag_seconds', ''), 'p50'], [q99('sessionreaper_detection_lag_seconds', ''), 'p99']),
          stat('Detection budget burn (1 h)', 'short', 'How many times faster than sustainable the 1% budget is spent; 14.4 pages.', ['(1 - sessionreaper:detection_within_target:ratio_rate1h) / 0.01', 'burn']),
        ],
      },
      {
        title: 'Destroy (target 18 ms) and end to end',
        panels: [
          ts('Destroys within 18 ms', 'percentunit', 'Share of destroys from claim to destroyed within 18 ms (bucket le=0.018).', ['sessionreaper:destroy_within_target:ratio_rate5m', '5m'], ['sessionreaper:destroy_within_target:ratio_rate1h', '1h']),
          ts('Destroy duration by cause', 's', 'Claim to session.destroyed.', [q50('sessionreaper_destroy_duration_seconds', 'cause, '), 'p50 {{cause}}'], [q99('sessionreaper_destroy_duration_seconds', 'cause, '), 'p99 {{cause}}']),
          ts('Reclaim latency by cause', 's', 'Ending event (close sent, completion, verdict; for an expiry, the deadline) to session.destroyed.', [q99('sessionreaper_reclaim_latency_seconds', 'cause, '), 'p99 {{cause}}']),
          ts('Reclaims within 28 ms by cause', 'percentunit', 'End to end within 28 ms (bucket le=0.028).', ['sessionreaper:reclaim_within_target:ratio_rate5m', '{{cause}}']),
          stat('Destroy budget burn (1 h)', 'short', 'How many times faster than sustainable the 1% budget is spent; 14.4 pages.', ['(1 - sessionreaper:destroy_within_target:ratio_rate1h) / 0.01', 'burn']),
        ],
      },
    ],
  },
  {
    uid: 'sessionreaper-ledger',
    title: 'session-reaper / GPU ledger',
    description: 'Every GPU byte registered is freed exactly once: the ledger, read from Redis by the deadline engine.',
    rows: [
      {
        title: 'Bytes',
        panels: [
          ts('GPU bytes registered, freed, held', 'bytes', 'registered = freed + held on every node, or the ledger alert fires.', ['max(sessionreaper_gpu_registered_bytes)', 'registered'], ['max(sessionreaper_gpu_freed_bytes)', 'freed'], ['max(sessionreaper_gpu_held_bytes)', 'held']),
          ts('KV bytes offloaded', 'bytes', 'Demote before destroy: KV demoted sessions keep off the GPU now.', ['max(sessionreaper_gpu_offloaded_bytes)', 'offloaded']),
          stat('Ledger violations', 'short', 'Problems the ledger audit finds: must be 0.', ['max(sessionreaper_ledger_violations)', 'violations']),
          stat('Destroys waiting for an operator', 'short', 'Gave up their release; sessionctl stuck lists them.', ['max(sessionreaper_sessions{state="release_failed"})', 'release_failed']),
        ],
      },
      {
        title: 'Releases and demotes',
        panels: [
          ts('Release answers per second', 'ops', 'gpu.released booked, duplicates of one booked, and ignored (answering no release of ours).', ['sum by (outcome) (rate(sessionreaper_release_answers_total' + RATE + '))', '{{outcome}}']),
          ts('Demotes and restores per second', 'ops', 'Calls to move a quiet session\'s KV off the GPU and back, by outcome.', ['sum by (outcome) (rate(sessionreaper_gpu_demotes_total' + RATE + '))', 'demote {{outcome}}'], ['sum by (outcome) (rate(sessionreaper_gpu_restores_total' + RATE + '))', 'restore {{outcome}}']),
          ts('Demote requests per second', 'ops', 'The idle checker\'s requests to demote a quiet session, by what each came to (requested, pending: sent again, or not made).', ['sum by (outcome) (rate(sessionreaper_demote_requests_total' + RATE + '))', '{{outcome}}']),
          ts('Orphan releases per second', 'ops', 'The reconciler\'s releases of GPU memory no session owned, by runtime and outcome; any at all means state was lost somewhere.', ['sum by (runtime, outcome) (rate(sessionreaper_orphan_releases_total' + RATE + '))', '{{runtime}} {{outcome}}']),
        ],
      },
    ],
  },
  {
    uid: 'sessionreaper-runtimes',
    title: 'session-reaper / Runtimes & breakers',
    description: 'Release calls to each registered GPU runtime, their duration and retries, and the breakers in front of them.',
    rows: [
      {
        title: 'Release calls',
        panels: [
          ts('Release calls per second', 'ops', 'By registered runtime and outcome.', ['sum by (runtime, outcome) (rate(sessionreaper_gpu_release_requests_total' + RATE + '))', '{{runtime}} {{outcome}}']),
          ts('Release call p99', 's', 'One release call, retries and backoffs included.', [q99('sessionreaper_gpu_release_duration_seconds', 'runtime, '), '{{runtime}}']),
          ts('Release retries per second', 'ops', 'HTTP attempts beyond the first.', ['sum by (runtime) (rate(sessionreaper_gpu_release_retries_total' + RATE + '))', '{{runtime}}']),
        ],
      },
      {
        title: 'Breakers',
        panels: [
          ts('Breakers not closed', 'short', 'Breakers open or half-open per runtime, in any process.', ['sum by (runtime, state) (sessionreaper_breaker_state)', '{{runtime}} {{state}}']),
          ts('Breaker transitions per second', 'ops', 'By runtime and the state entered.', ['sum by (runtime, to) (rate(sessionreaper_breaker_transitions_total' + RATE + '))', '{{runtime}} → {{to}}']),
        ],
      },
    ],
  },
  {
    uid: 'sessionreaper-storm-guard',
    title: 'session-reaper / Storm guard & dead letters',
    description: 'Releases queued behind the per-node limit, throttled by the per-runtime rate, stuck, and events the Broker gave up on.',
    rows: [
      {
        title: 'Storm guard',
        panels: [
          ts('Destroys waiting for a release slot', 'short', 'All nodes\' queues together.', ['max(sessionreaper_storm_guard_queue_depth)', 'queued']),
          ts('Storm-guard decisions per second', 'ops', 'Admitted, queued, throttled.', ['sum by (outcome) (rate(sessionreaper_storm_guard_admissions_total' + RATE + '))', '{{outcome}}']),
          ts('Oldest release in flight', 's', 'Since its last progress; the watchdog resumes it after DESTROY_STALL_MS.', ['max(sessionreaper_oldest_pending_release_seconds)', 'oldest']),
          ts('Queue wait p99', 's', 'How long destroys waited in their node\'s queue for a release slot, queued to admitted.', [q99('sessionreaper_storm_guard_queue_wait_seconds', ''), 'p99']),
          ts('Destroys admitted without waiting', 'percentunit', 'Share of admissions with no wait in the queue (bucket le=0).', ['sum(rate(sessionreaper_storm_guard_queue_wait_seconds_bucket{le="0"}' + RATE + ')) / sum(rate(sessionreaper_storm_guard_queue_wait_seconds_count' + RATE + '))', 'no wait']),
        ],
      },
      {
        title: 'Dead letters',
        panels: [
          ts('Dead letters per second', 'ops', 'Kept by the dead-letter receiver (under npm start, the local Broker itself), by type and why the last delivery failed.', ['sum by (type, reason) (rate(sessionreaper_dead_letters_total' + RATE + '))', '{{type}} {{reason}}']),
        ],
      },
    ],
  },
];

/** Builds one dashboard's JSON model: rows of panels two or three abreast, a datasource variable, links to the others. */
export function buildDashboard(spec: DashboardSpec): Dashboard {
  const builder = new DashboardBuilder(spec.title)
    .uid(spec.uid)
    .description(spec.description)
    .tags(['session-reaper'])
    .refresh('30s')
    .time({ from: 'now-1h', to: 'now' })
    .withVariable(new DatasourceVariableBuilder('datasource').label('Prometheus').type('prometheus'))
    .links([new DashboardLinkBuilder('session-reaper').type(DashboardLinkType.Dashboards).tags(['session-reaper']).asDropdown(true)]);
  let y = 0;
  for (const row of spec.rows) {
    builder.withRow(new RowBuilder(row.title).gridPos({ x: 0, y, w: 24, h: 1 }));
    y += 1;
    const width = row.panels.length % 3 === 0 ? 8 : 12;
    row.panels.forEach((p, i) => {
      const perLine = 24 / width;
      const gridPos = { x: (i % perLine) * width, y: y + Math.floor(i / perLine) * 8, w: width, h: 8 };
      const targets = p.queries.map(([expr, legend], n) => new DataqueryBuilder().expr(expr).legendFormat(legend).refId(String.fromCharCode(65 + n)).datasource(DATASOURCE));
      const panel = p.kind === 'stat'
        ? new StatBuilder().title(p.title).description(p.description).unit(p.unit).datasource(DATASOURCE).gridPos(gridPos)
        : new TimeseriesBuilder().title(p.title).description(p.description).unit(p.unit).datasource(DATASOURCE).gridPos(gridPos);
      for (const t of targets) panel.withTarget(t);
      builder.withPanel(panel);
    });
    y += Math.ceil(row.panels.length / (24 / width)) * 8;
  }
  return builder.build();
}

/** Every PromQL expression of a dashboard model, with its panel's title (what the dashboard test parses). */
export function queriesOf(model: unknown): { panel: string; expr: string }[] {
  const out: { panel: string; expr: string }[] = [];
  const visit = (panels: unknown): void => {
    if (!Array.isArray(panels)) return;
    for (const p of panels as { title?: string; targets?: { expr?: string }[]; panels?: unknown }[]) {
      for (const t of p.targets ?? []) if (typeof t.expr === 'string') out.push({ panel: p.title ?? '', expr: t.expr });
      visit(p.panels);
    }
  };
  visit((model as { panels?: unknown }).panels);
  return out;
}
