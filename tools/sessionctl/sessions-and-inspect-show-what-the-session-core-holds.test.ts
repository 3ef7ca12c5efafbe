// `sessionctl sessions` lists active sessions from the deadline index (earliest deadline first) and sessions being
// destroyed from the watchdog, and `inspect` shows one session whole: placement, deadline, current activity score
// and destroy timeline; an unknown session exits 3, a malformed id exits 2.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { applyActivity, DEFAULT_SCORING_POLICY, initialContext } from '../../functions/activity-score/scoring.ts';
import { storedContextFields } from '../../functions/activity-score/idle-judgement.ts';
import type { SessionView } from '../../functions/core/session-store.ts';
import { fp, testCore, type TestCore } from '../../tests/support/core.ts';
import { TOPOLOGIES, type Topology } from '../../tests/support/redis.ts';
import type { ActivityView, SessionRow } from './session-commands.ts';
import { cliEnv, coreEnv, jsonOf, openLongLived, placementOn, sessionctl } from './sessionctl-test-support.ts';

interface Seeded {
  core: TestCore;
  env: NodeJS.ProcessEnv;
  /** The incarnation each session was given. */
  incs: Record<string, number>;
}
const seeded = new Map<Topology, Seeded>();

// Two active sessions (the one with the shorter window is due first), one with an activity context, and one being
// destroyed, checkpointed at its GPU release.
async function seed(topology: Topology): Promise<Seeded> {
  const core = await testCore(topology);
  const now = Date.now();
  const incs: Record<string, number> = {};
  for (const [id, placement, windowMs] of [
    ['sess-later', placementOn('gpu-node-a'), 600_000], ['sess-sooner', placementOn('gpu-node-b', 3000), 300_000], ['sess-ending', placementOn('gpu-node-a'), 600_000],
  ] as const) {
    const r = await openLongLived(core, id, now, placement, windowMs);
    assert.equal(r.code, 'OPENED');
    if (r.code === 'OPENED') incs[id] = r.incarnation;
  }
  const ctx = applyActivity(initialContext(now), { kind: 'message', at: now, text: 'hello there' }, DEFAULT_SCORING_POLICY);
  const recorded = await core.store.recordActivity({
    sessionId: 'sess-later', fingerprint: fp('activity'), liveFrom: now, now, expectedVersion: 0, lastActivityAt: now, context: storedContextFields(ctx), tenant: 'acme',
  });
  assert.equal(recorded.code, 'APPLIED');
  const claim = await core.store.claimDestroy({ sessionId: 'sess-ending', fingerprint: fp('destroy'), cause: 'forced', now });
  assert.equal(claim.code, 'CLAIMED');
  assert.equal((await core.store.advance('sess-ending', incs['sess-ending']!, 'gpu_release_requested', now + 5)).code, 'ADVANCED');
  return { core, env: cliEnv(coreEnv(core, topology)), incs };
}

before(async () => {
  for (const topology of TOPOLOGIES) seeded.set(topology, await seed(topology));
});

after(async () => {
  for (const s of seeded.values()) await s.core.close();
});

const single = () => seeded.get(TOPOLOGIES[0]!)!;

for (const topology of TOPOLOGIES) {
  test(`sessions --json lists active sessions by deadline, then the ones being destroyed (${topology} Redis)`, async () => {
    const { env, incs } = seeded.get(topology)!;
    const run = await sessionctl(['sessions', '--json'], env);
    assert.equal(run.code, 0, run.stderr);
    const out = jsonOf<{ now: number; totals: { active: number; destroying: number }; sessions: SessionRow[] }>(run);
    assert.deepEqual(out.totals, { active: 2, destroying: 1 });
    assert.deepEqual(out.sessions.map((s) => [s.sessionId, s.state, s.incarnation, s.node]), [
      ['sess-sooner', 'active', incs['sess-sooner'], 'gpu-node-b'],
      ['sess-later', 'active', incs['sess-later'], 'gpu-node-a'],
      ['sess-ending', 'destroying', incs['sess-ending'], 'gpu-node-a'],
    ]);
    const [sooner, later, ending] = out.sessions;
    assert.ok(sooner?.deadline !== undefined && later?.deadline !== undefined && sooner.deadline < later.deadline);
    assert.ok((sooner.deadlineInMs ?? 0) > 200_000, 'the deadline is minutes away');
    assert.equal(ending?.stage, 'gpu_release_requested');
    assert.equal(ending.cause, 'forced');
    assert.equal(ending.deadline, undefined);
  });
}

test('sessions prints an aligned table with relative deadlines and the totals', async () => {
  const run = await sessionctl(['sessions'], single().env);
  assert.equal(run.code, 0, run.stderr);
  const lines = run.stdout.trimEnd().split('\n');
  assert.match(lines[0]!, /^SESSION\s+STATE\s+INC\s+DEADLINE\s+NODE\s+STAGE$/);
  assert.match(lines[1]!, /^sess-sooner\s+active\s+\d+\s+in \d+\.\d min\s+gpu-node-b\s+-$/);
  assert.match(lines[2]!, /^sess-later\s+active\s+\d+\s+in \d+\.\d min\s+gpu-node-a\s+-$/);
  assert.match(lines[3]!, /^sess-ending\s+destroying\s+\d+\s+-\s+gpu-node-a\s+gpu_release_requested \(forced\)$/);
  // Columns line up: every row starts its STATE column where the header does.
  const stateColumn = lines[0]!.indexOf('STATE');
  for (const line of lines.slice(1, 4)) assert.match(line.slice(stateColumn), /^(active|destroying)/);
  assert.equal(lines.at(-1), '2 active, 1 destroying');
});

test('sessions --state and --limit narrow the listing and say what was left out', async () => {
  const destroying = jsonOf<{ totals: object; sessions: SessionRow[] }>(await sessionctl(['sessions', '--state', 'destroying', '--json'], single().env));
  assert.deepEqual(destroying.totals, { destroying: 1 });
  assert.deepEqual(destroying.sessions.map((s) => s.sessionId), ['sess-ending']);

  const run = await sessionctl(['sessions', '--state', 'active', '--limit', '1'], single().env);
  assert.equal(run.code, 0, run.stderr);
  assert.match(run.stdout, /^sess-sooner\s/m);
  assert.doesNotMatch(run.stdout, /sess-later|sess-ending/);
  assert.match(run.stdout, /2 active \(showing at most 1 of each; --limit N for more\)/);

  for (const bad of [['--state', 'gone'], ['--limit', '0'], ['--limit', 'ten']]) {
    const refused = await sessionctl(['sessions', ...bad], single().env);
    assert.equal(refused.code, 2, `${bad.join(' ')}: ${refused.stderr}`);
    assert.match(refused.stderr, /^sessionctl: --(state|limit) /);
    assert.equal(refused.stdout, '');
  }
});

test('inspect --json shows the session, its current activity score and no timeline while it is active', async () => {
  const run = await sessionctl(['inspect', 'sess-later', '--json'], single().env);
  assert.equal(run.code, 0, run.stderr);
  const out = jsonOf<{ session: SessionView; activity: ActivityView | null }>(run);
  assert.equal(out.session.state, 'active');
  assert.equal(out.session.incarnation, single().incs['sess-later']);
  assert.deepEqual(out.session.placement, placementOn('gpu-node-a'));
  assert.equal(out.session.tenant, 'acme');
  assert.equal(out.session.windowMs, 600_000);
  assert.deepEqual(out.session.timeline, []);
  assert.ok(out.activity, 'the activity context was scored');
  assert.ok(out.activity.score > 0 && out.activity.score <= 1, `score ${out.activity.score}`);
  assert.equal(out.activity.threshold, DEFAULT_SCORING_POLICY.threshold);
  assert.equal(out.activity.idle, false);
  assert.equal(out.activity.weights.semantic, 0, 'one message: nothing to compare yet');
  assert.ok(['active', 'in-grace'].includes(out.activity.reason));

  const human = await sessionctl(['inspect', 'sess-later'], single().env);
  assert.equal(human.code, 0, human.stderr);
  assert.match(human.stdout, /^session: +sess-later$/m);
  assert.match(human.stdout, /^state: +active$/m);
  assert.match(human.stdout, /^deadline: +\d{4}-\d\d-\d\dT[\d:.]+Z \(in \d+\.\d min\)$/m);
  assert.match(human.stdout, /^gpu bytes: +1000 \(1000 B\)$/m);
  assert.match(human.stdout, /^activity score: +\d\.\d\d \(behavior \d\.\d\d, semantic n\/a, timing \d\.\d\d\); threshold 0\.50, not idle/m);
});

test('inspect of a session being destroyed shows its cause, stage and timeline, and no score', async () => {
  const out = jsonOf<{ session: SessionView; activity: ActivityView | null }>(await sessionctl(['inspect', 'sess-ending', '--json'], single().env));
  assert.equal(out.session.state, 'destroying');
  assert.equal(out.session.cause, 'forced');
  assert.equal(out.session.stage, 'gpu_release_requested');
  assert.deepEqual(out.session.timeline.map((t) => t.stage), ['claimed', 'gpu_release_requested']);
  assert.equal(out.activity, null);

  const human = await sessionctl(['inspect', 'sess-ending'], single().env);
  assert.match(human.stdout, /^cause: +forced$/m);
  assert.match(human.stdout, /^timeline:\nSTAGE +AT +AFTER\nclaimed +\S+ +\+0 ms\ngpu_release_requested +\S+ +\+5 ms$/m);
});

test('inspect of an unknown session exits 3 and of a malformed id exits 2, printing nothing on stdout', async () => {
  const unknown = await sessionctl(['inspect', 'sess-never-opened', '--json'], single().env);
  assert.equal(unknown.code, 3);
  assert.equal(unknown.stdout, '');
  assert.match(unknown.stderr, /^sessionctl: no session sess-never-opened/);

  for (const args of [['inspect', 'not a session id'], ['inspect'], ['inspect', 'a', 'b']]) {
    const bad = await sessionctl(args, single().env);
    assert.equal(bad.code, 2, `${args.join(' ')}: ${bad.stderr}`);
    assert.equal(bad.stdout, '');
  }
});
