// `sessionctl stats` shows the live counters: active sessions, destroys in flight, the GPU ledger per node and
// whether it balances, and the local Broker's counters; --redis-only leaves the Broker out, a Broker that is down
// is reported (exit 1) without hiding the rest, and --watch prints a snapshot every second until Ctrl-C.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { fp, testCore, type TestCore } from '../../tests/support/core.ts';
import { drawReleaseToken } from '../../functions/core/session-store.ts';
import { eventOf, sendBinary } from '../local-broker/test-support.ts';
import type { StatsSnapshot } from './stats-command.ts';
import { cliEnv, coreEnv, jsonOf, openLongLived, placementOn, sessionctl, startTestBroker, unreachableBroker, type TestBroker } from './sessionctl-test-support.ts';

let core: TestCore;
let tb: TestBroker;
let env: NodeJS.ProcessEnv;

before(async () => {
  core = await testCore('single');
  tb = await startTestBroker('stats');
  env = cliEnv({ ...coreEnv(core, 'single'), SESSIONCTL_BROKER_URL: tb.broker.url });
  const now = Date.now();
  await openLongLived(core, 'sess-a', now, placementOn('gpu-node-a', 1000));
  await openLongLived(core, 'sess-b', now, placementOn('gpu-node-b', 3000));
  // A third session whose destroy got as far as the confirmed GPU release: 1000 bytes released on gpu-node-a.
  const c = await openLongLived(core, 'sess-c', now, placementOn('gpu-node-a', 1000));
  assert.equal(c.code, 'OPENED');
  const inc = c.code === 'OPENED' ? c.incarnation : 0;
  assert.equal((await core.store.claimDestroy({ sessionId: 'sess-c', fingerprint: fp('d'), cause: 'closed', now })).code, 'CLAIMED');
  const token = drawReleaseToken();
  assert.equal((await core.store.advance('sess-c', inc, 'gpu_release_requested', now, { attempt: 1, token })).code, 'ADVANCED');
  assert.equal((await core.store.recordRelease('sess-c', inc, 1000, now, 'gpu-node-a', token)).code, 'RELEASED');
  assert.equal((await sendBinary(tb.broker.url, eventOf('dev.sessionreaper.session.heartbeat'))).status, 202);
  await tb.broker.idle();
});

after(async () => {
  await tb.stop();
  await core.close();
});

test('stats --json reports sessions, destroys in flight, a balanced ledger per node and the Broker counters', async () => {
  const run = await sessionctl(['stats', '--json'], env);
  assert.equal(run.code, 0, run.stderr);
  const s = jsonOf<StatsSnapshot>(run);
  assert.equal(s.activeSessions, 2);
  assert.equal(s.destroysInFlight, 1);
  assert.equal(s.migrationReleasesPending, 0);
  assert.ok(s.oldestProgressAt !== undefined && s.oldestProgressAt <= s.now);
  assert.equal(s.ledger.balanced, true);
  assert.deepEqual(
    s.ledger.nodes.map((n) => [n.node, n.registeredBytes, n.releasedBytes, n.heldBytes]),
    [['gpu-node-a', 2000, 1000, 1000], ['gpu-node-b', 3000, 0, 3000]],
  );
  assert.ok(s.broker && !('error' in s.broker), 'the Broker answered');
  assert.equal(s.broker.url, tb.broker.url);
  assert.equal(s.broker.received, 1);
  assert.equal(s.broker.delivered, 1);
  assert.equal(s.broker.deadLetters, 0);
});

test('stats prints the counters, the ledger table and the Broker section for people', async () => {
  const run = await sessionctl(['stats'], env);
  assert.equal(run.code, 0, run.stderr);
  assert.match(run.stdout, /^sessions: +2 active, 1 being destroyed, 0 migration releases pending$/m);
  assert.match(run.stdout, /^gpu ledger: +balanced: registered 5000 = released 1000 \+ held 4000 bytes \(3 allocations, 1 releases, 0 ignored\)$/m);
  assert.match(run.stdout, /^NODE +REGISTERED +RELEASED +HELD +ALLOCS +RELEASES +CONFIRMED FREED +ESTIMATED +OFFLOADED +DEMOTES +RESTORES\ngpu-node-a +2000 +1000 +1000 +2 +1 +1000 +0 +0 +0 +0\ngpu-node-b +3000 +0 +3000 +1 +0 +0 +0 +0 +0 +0$/m);
  assert.match(run.stdout, /^events: +1 received, 0 refused$/m);
  assert.match(run.stdout, /^dead letters: +0 kept$/m);
  assert.match(run.stdout, /^TRIGGER +DELIVERED +FAILED\nheartbeat-timeout-session-heartbeat +1 +0$/m);
});

test('stats --redis-only leaves the Broker out, and a Broker that is down is reported with exit 1', async () => {
  const redisOnly = jsonOf<StatsSnapshot>(await sessionctl(['stats', '--redis-only', '--json'], env));
  assert.equal(redisOnly.broker, undefined);
  assert.equal(redisOnly.activeSessions, 2);

  const down = await unreachableBroker();
  const run = await sessionctl(['stats', '--broker', down], env);
  assert.equal(run.code, 1);
  assert.match(run.stdout, /^sessions: +2 active/m, 'the Redis part is still shown');
  assert.match(run.stdout, new RegExp(`^broker: +${down.replaceAll('.', '\\.')}: unavailable$`, 'm'));
  assert.match(run.stderr, /cannot reach the Broker at .*\(use --redis-only to leave the Broker out\)/);
});

test('stats --watch --json prints a snapshot per line every second and stops cleanly on Ctrl-C', async () => {
  let signalled = false;
  const run = await sessionctl(['stats', '--watch', '--json', '--redis-only'], env, {
    onStdout: (stdout, child) => {
      if (!signalled && stdout.split('\n').length > 2) {
        signalled = true;
        child.kill('SIGINT');
      }
    },
  });
  assert.equal(run.code, 0, run.stderr);
  const snapshots = run.stdout.trimEnd().split('\n').map((line) => JSON.parse(line) as StatsSnapshot);
  assert.ok(snapshots.length >= 2, `${snapshots.length} snapshots`);
  for (const s of snapshots) assert.equal(s.activeSessions, 2);
  assert.ok(snapshots[1]!.now - snapshots[0]!.now >= 900, 'about a second apart');
});
