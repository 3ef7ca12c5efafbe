// While `npm start` runs, sessionctl finds its Redis, key prefix and Broker in the stack file it writes, so an operator
// needs no settings; the environment still wins, and the file of a stack that is gone is ignored.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { testCore, type TestCore } from '../../tests/support/core.ts';
import { testRedisEnv } from '../../tests/support/redis.ts';
import { cliEnv, jsonOf, openLongLived, placementOn, sessionctl, startTestBroker, type TestBroker } from './sessionctl-test-support.ts';
import type { SessionRow } from './session-commands.ts';

let core: TestCore;
let tb: TestBroker;
const dir = mkdtempSync(join(tmpdir(), 'sessionctl-stack-'));

function stackFile(name: string, pid: number): string {
  const file = join(dir, name);
  writeFileSync(file, JSON.stringify({ pid, ingressUrl: tb.broker.url, redisUrl: testRedisEnv('single').REDIS_URL, keyPrefix: core.prefix }));
  return file;
}

before(async () => {
  // The stack's KeySpace uses the default INDEX_BUCKETS (32), as `npm start` does.
  core = await testCore('single', { buckets: 32 });
  tb = await startTestBroker('stack-file');
  await openLongLived(core, 'sess-in-the-stack', Date.now(), placementOn('gpu-node-a'));
});

after(async () => {
  await tb.stop();
  await core.close();
  rmSync(dir, { recursive: true, force: true });
});

test('with no settings, the Redis, key prefix and Broker of the running stack are used', async () => {
  const env = cliEnv({ SESSIONCTL_STACK_FILE: stackFile('live.json', process.pid) });
  const run = await sessionctl(['sessions', '--json'], env);
  assert.equal(run.code, 0, run.stderr);
  assert.deepEqual(jsonOf<{ sessions: SessionRow[] }>(run).sessions.map((s) => s.sessionId), ['sess-in-the-stack']);
  const dead = await sessionctl(['dead-letters', '--json'], env);
  assert.equal(dead.code, 0, dead.stderr);
  assert.deepEqual(jsonOf<{ deadLetters: unknown[] }>(dead), { deadLetters: [] });
});

test('settings in the environment win over the stack file', async () => {
  const run = await sessionctl(['sessions'], cliEnv({ SESSIONCTL_STACK_FILE: stackFile('live-2.json', process.pid), REDIS_URL: 'redis://127.0.0.1:1' }));
  assert.equal(run.code, 1);
  assert.match(run.stderr, /cannot reach Redis at redis:\/\/127\.0\.0\.1:1/);
});

test('the file of a stack whose process is gone is ignored', async () => {
  // A pid far above any the kernel hands out (pid_max is at most 2^22).
  const run = await sessionctl(['sessions', '--json'], cliEnv({ SESSIONCTL_STACK_FILE: stackFile('dead.json', 2 ** 30) }));
  assert.ok(!(run.code === 0 && run.stdout.includes('sess-in-the-stack')), 'the stopped stack was not used');
});
