// `sessionctl stuck` lists the destroys whose last checkpoint is older than the threshold (DESTROY_STALL_MS unless
// --older-than says otherwise), with the stage each reached, its cause and its node; fresh destroys are left out.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { fp, testCore, type TestCore } from '../../tests/support/core.ts';
import { Scripts } from '../../functions/core/redis/scripts.ts';
import { drawReleaseToken, SessionStore } from '../../functions/core/session-store.ts';
import type { StuckRow } from './session-commands.ts';
import { cliEnv, coreEnv, jsonOf, openLongLived, placementOn, sessionctl } from './sessionctl-test-support.ts';

let core: TestCore;
let env: NodeJS.ProcessEnv;
let stalledInc: number;

before(async () => {
  core = await testCore('single');
  env = cliEnv(coreEnv(core, 'single'));
  const now = Date.now();
  // Claimed six minutes ago, GPU release requested, then re-issued three minutes ago: stalled for about three
  // minutes, past the default threshold (DESTROY_STALL_MS, 2 min).
  const stalled = await openLongLived(core, 'sess-stalled', now - 360_000, placementOn('gpu-node-a'));
  assert.equal(stalled.code, 'OPENED');
  stalledInc = stalled.code === 'OPENED' ? stalled.incarnation : 0;
  assert.equal((await core.store.claimDestroy({ sessionId: 'sess-stalled', fingerprint: fp('d'), cause: 'expired', now: now - 360_000 })).code, 'CLAIMED');
  assert.equal((await core.store.advance('sess-stalled', stalledInc, 'gpu_release_requested', now - 270_000, { attempt: 1, token: drawReleaseToken() })).code, 'ADVANCED');
  assert.equal((await core.store.advance('sess-stalled', stalledInc, 'gpu_release_requested', now - 180_000, { attempt: 2, token: drawReleaseToken() })).code, 'REISSUED');
  // Claimed just now: in flight, not stuck.
  await openLongLived(core, 'sess-fresh', now, placementOn('gpu-node-b'));
  assert.equal((await core.store.claimDestroy({ sessionId: 'sess-fresh', fingerprint: fp('d'), cause: 'closed', now })).code, 'CLAIMED');
});

after(() => core.close());

test('stuck --json lists only destroys without progress for longer than the default threshold', async () => {
  const run = await sessionctl(['stuck', '--json'], env);
  assert.equal(run.code, 0, run.stderr);
  const out = jsonOf<{ olderThanMs: number; stuck: StuckRow[] }>(run);
  assert.equal(out.olderThanMs, 120_000, 'DESTROY_STALL_MS by default');
  assert.equal(out.stuck.length, 1);
  const [row] = out.stuck;
  assert.equal(row?.sessionId, 'sess-stalled');
  assert.equal(row.kind, 'destroy');
  assert.equal(row.incarnation, stalledInc);
  assert.equal(row.cause, 'expired');
  assert.equal(row.stage, 'gpu_release_requested');
  assert.equal(row.node, 'gpu-node-a');
  assert.equal(row.releaseAttempt, 2);
  assert.ok(row.stalledForMs >= 180_000 && row.stalledForMs < 600_000, `stalled for ${row.stalledForMs} ms`);
});

test('stuck prints a table, and --older-than widens or narrows what counts as stuck', async () => {
  const all = await sessionctl(['stuck', '--older-than', '0s'], env);
  assert.equal(all.code, 0, all.stderr);
  const lines = all.stdout.trimEnd().split('\n');
  assert.match(lines[0]!, /^SESSION\s+KIND\s+STATUS\s+INC\s+STAGE\s+CAUSE\s+ATTEMPT\s+NODE\s+NO PROGRESS FOR$/);
  assert.match(lines[1]!, /^sess-stalled\s+destroy\s+stalled\s+\d+\s+gpu_release_requested\s+expired\s+2\s+gpu-node-a\s+3\.\d min$/);
  assert.match(lines[2]!, /^sess-fresh\s+destroy\s+stalled\s+\d+\s+claimed\s+closed\s+-\s+gpu-node-b\s+\d/);

  const none = await sessionctl(['stuck', '--older-than', '1h'], env);
  assert.equal(none.code, 0, none.stderr);
  assert.equal(none.stdout, 'no destroy has been without progress for 1.0 h or more\n');
});

test('stuck refuses a threshold that is not a duration with exit 2', async () => {
  const run = await sessionctl(['stuck', '--older-than', 'soon'], env);
  assert.equal(run.code, 2);
  assert.match(run.stderr, /--older-than "soon" is not a duration/);
  assert.equal(run.stdout, '');
});

test('a destroy that gave up its release is listed first, whatever the threshold, and retry or resolve answer it', async () => {
  // A store whose budget is one attempt: the second attempt gives up, as destroy-dispatch's would.
  const store = new SessionStore(core.redis, core.keys, await Scripts.register(core.redis), { tombstoneTtlMs: 60_000, releaseMaxAttempts: 1 });
  const now = Date.now();
  await openLongLived(core, 'sess-failed', now, placementOn('gpu-node-c'));
  // A session that moved: its old allocation's release is pending in the watchdog as a migration.
  await openLongLived(core, 'sess-moved', now, placementOn('gpu-node-a'));
  assert.equal((await openLongLived(core, 'sess-moved', now + 1, placementOn('gpu-node-b'))).code, 'MIGRATED');
  const inc = (await store.inspect('sess-failed'))!.incarnation;
  await store.claimDestroy({ sessionId: 'sess-failed', fingerprint: fp('d'), cause: 'closed', now });
  await store.advance('sess-failed', inc, 'gpu_release_requested', now, { attempt: 1, token: drawReleaseToken() });
  assert.equal((await store.advance('sess-failed', inc, 'gpu_release_requested', now, { attempt: 2, token: drawReleaseToken() })).code, 'EXHAUSTED');

  const listed = jsonOf<{ stuck: StuckRow[] }>(await sessionctl(['stuck', '--json', '--older-than', '1h'], env)).stuck;
  assert.deepEqual(listed.map((r) => [r.sessionId, r.status, r.node]), [['sess-failed', 'release_failed', 'gpu-node-c']]);
  const table = await sessionctl(['stuck', '--older-than', '1h'], env);
  assert.match(table.stdout, /sessionctl retry <id>/);

  const destroying = jsonOf<{ sessions: { sessionId: string; releaseFailedAt?: number }[] }>(await sessionctl(['sessions', '--state', 'destroying', '--json'], env));
  assert.ok(destroying.sessions.some((r) => r.sessionId === 'sess-failed' && r.releaseFailedAt !== undefined), 'listed among the destroys, as given up');
  const stats = jsonOf<{ destroysGivenUp: number; migrationReleasesPending: number }>(await sessionctl(['stats', '--json', '--redis-only'], env));
  assert.equal(stats.destroysGivenUp, 1);
  assert.equal(stats.migrationReleasesPending, 1, 'the migration below is counted as one, not as a destroy');

  const retried = await sessionctl(['retry', 'sess-failed'], env);
  assert.equal(retried.code, 0, retried.stderr);
  assert.match(retried.stdout, /release budget restarted/);
  assert.deepEqual(jsonOf<{ stuck: StuckRow[] }>(await sessionctl(['stuck', '--json', '--older-than', '1h'], env)).stuck.map((r) => r.sessionId), ['sess-failed'], 'back with the watchdog, due at once');
  const again = await sessionctl(['retry', 'sess-failed'], env);
  assert.equal(again.code, 2);
  assert.match(again.stderr, /has not given up its release/);

  assert.equal((await store.advance('sess-failed', inc, 'gpu_release_requested', now, { attempt: 3, token: drawReleaseToken() })).code, 'EXHAUSTED');
  const resolved = await sessionctl(['resolve', 'sess-failed', '--json'], env);
  assert.equal(resolved.code, 0, resolved.stderr);
  assert.equal(jsonOf<{ code: string }>(resolved).code, 'RESOLVED');
  assert.equal((await store.inspect('sess-failed'))?.stage, 'gpu_released');
  const unknown = await sessionctl(['resolve', 'sess-never'], env);
  assert.equal(unknown.code, 3);
});
