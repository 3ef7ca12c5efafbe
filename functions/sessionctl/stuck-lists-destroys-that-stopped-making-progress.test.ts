// `sessionctl stuck` lists the destroys whose last checkpoint is older than the threshold (DESTROY_STALL_MS unless
// --older-than says otherwise), with the stage each reached, its cause and its node; fresh destroys are left out.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { fp, testCore, type TestCore } from '../../tests/support/core.ts';
import { drawReleaseToken } from '../core/session-store.ts';
import type { StuckRow } from './session-commands.ts';
import { cliEnv, coreEnv, jsonOf, openLongLived, placementOn, sessionctl } from './sessionctl-test-support.ts';

let core: TestCore;
let env: NodeJS.ProcessEnv;

before(async () => {
  core = await testCore('single');
  env = cliEnv(coreEnv(core, 'single'));
  const now = Date.now();
  // Claimed two minutes ago, GPU release requested, then re-issued a minute ago: stalled for about a minute.
  await openLongLived(core, 'sess-stalled', now - 120_000, placementOn('gpu-node-a'));
  assert.equal((await core.store.claimDestroy({ sessionId: 'sess-stalled', fingerprint: fp('d'), cause: 'expired', now: now - 120_000 })).code, 'CLAIMED');
  assert.equal((await core.store.advance('sess-stalled', 1, 'gpu_release_requested', now - 90_000, { attempt: 1, token: drawReleaseToken() })).code, 'ADVANCED');
  assert.equal((await core.store.advance('sess-stalled', 1, 'gpu_release_requested', now - 60_000, { attempt: 2, token: drawReleaseToken() })).code, 'REISSUED');
  // Claimed just now: in flight, not stuck.
  await openLongLived(core, 'sess-fresh', now, placementOn('gpu-node-b'));
  assert.equal((await core.store.claimDestroy({ sessionId: 'sess-fresh', fingerprint: fp('d'), cause: 'closed', now })).code, 'CLAIMED');
});

after(() => core.close());

test('stuck --json lists only destroys without progress for longer than the default threshold', async () => {
  const run = await sessionctl(['stuck', '--json'], env);
  assert.equal(run.code, 0, run.stderr);
  const out = jsonOf<{ olderThanMs: number; stuck: StuckRow[] }>(run);
  assert.equal(out.olderThanMs, 30_000, 'DESTROY_STALL_MS by default');
  assert.equal(out.stuck.length, 1);
  const [row] = out.stuck;
  assert.equal(row?.sessionId, 'sess-stalled');
  assert.equal(row.kind, 'destroy');
  assert.equal(row.incarnation, 1);
  assert.equal(row.cause, 'expired');
  assert.equal(row.stage, 'gpu_release_requested');
  assert.equal(row.node, 'gpu-node-a');
  assert.equal(row.releaseAttempt, 2);
  assert.ok(row.stalledForMs >= 60_000 && row.stalledForMs < 600_000, `stalled for ${row.stalledForMs} ms`);
});

test('stuck prints a table, and --older-than widens or narrows what counts as stuck', async () => {
  const all = await sessionctl(['stuck', '--older-than', '0s'], env);
  assert.equal(all.code, 0, all.stderr);
  const lines = all.stdout.trimEnd().split('\n');
  assert.match(lines[0]!, /^SESSION\s+KIND\s+INC\s+STAGE\s+CAUSE\s+ATTEMPT\s+NODE\s+NO PROGRESS FOR$/);
  assert.match(lines[1]!, /^sess-stalled\s+destroy\s+1\s+gpu_release_requested\s+expired\s+2\s+gpu-node-a\s+1\.\d min$/);
  assert.match(lines[2]!, /^sess-fresh\s+destroy\s+1\s+claimed\s+closed\s+-\s+gpu-node-b\s+\d/);

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
