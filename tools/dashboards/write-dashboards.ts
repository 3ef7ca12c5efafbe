// Writes the Grafana dashboards (dashboards.ts) as JSON into infra/observability/dashboards, one file per dashboard
// named by its uid, so the checked-in JSON is never edited by hand out of step with the code. `--check` writes
// nothing and exits 1 naming the stale files (the dashboard test does the same).
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildDashboard, DASHBOARDS } from './dashboards.ts';

/** Where the dashboards' JSON is kept (and provisioned from). */
export const DASHBOARD_DIR = join(import.meta.dirname, '..', '..', 'infra', 'observability', 'dashboards');

/** Every dashboard file's content, by file name. */
export function renderDashboardFiles(): Map<string, string> {
  return new Map(DASHBOARDS.map((d) => [`${d.uid}.json`, `${JSON.stringify(buildDashboard(d), null, 2)}\n`]));
}

/** The files that are missing, differ from what would be written, or belong to no dashboard. */
export async function staleDashboardFiles(dir: string = DASHBOARD_DIR): Promise<string[]> {
  const expected = renderDashboardFiles();
  const stale: string[] = [];
  for (const [name, content] of expected) if ((await readFile(join(dir, name), 'utf8').catch(() => undefined)) !== content) stale.push(name);
  const present = await readdir(dir).catch(() => [] as string[]);
  for (const name of present) if (name.endsWith('.json') && !expected.has(name)) stale.push(name);
  return stale.sort();
}

/** Writes every dashboard file and removes JSON files no dashboard produces any more. */
export async function writeDashboardFiles(dir: string = DASHBOARD_DIR): Promise<void> {
  await mkdir(dir, { recursive: true });
  const expected = renderDashboardFiles();
  for (const [name, content] of expected) await writeFile(join(dir, name), content);
  for (const name of await readdir(dir)) if (name.endsWith('.json') && !expected.has(name)) await rm(join(dir, name));
}

if (import.meta.main) {
  if (process.argv.includes('--check')) {
    const stale = await staleDashboardFiles();
    if (stale.length > 0) {
      process.stderr.write(`stale dashboards (run npm run dashboards): ${stale.join(', ')}\n`);
      process.exit(1);
    }
  } else {
    await writeDashboardFiles();
  }
}
