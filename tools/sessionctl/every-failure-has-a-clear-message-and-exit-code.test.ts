// sessionctl's contract with scripts: --help prints the usage (exit 0); a bad command line or bad settings exit 2;
// Redis that cannot be reached exits 1 with its address, for every command that reads it. Errors go to stderr and
// leave stdout empty, so `--json` output is never mixed with a message.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cliEnv, sessionctl, UNREACHABLE_REDIS } from './sessionctl-test-support.ts';

const env = cliEnv({ REDIS_URL: UNREACHABLE_REDIS });

test('--help and help print the usage of every command and exit 0', async () => {
  for (const args of [['--help'], ['help'], ['sessions', '-h']]) {
    const run = await sessionctl(args, env);
    assert.equal(run.code, 0, run.stderr);
    for (const command of ['sessions', 'inspect', 'send', 'destroy', 'stuck', 'dead-letters', 'stats']) assert.match(run.stdout, new RegExp(`^  ${command}\\b`, 'm'));
    assert.match(run.stdout, /exit codes: 0 ok, 1 failure .*, 2 usage or invalid input, 3 not found/);
  }
});

test('a missing or unknown command, an unknown option and an option of another command exit 2', async () => {
  const cases: [string[], RegExp][] = [
    [[], /^sessionctl: no command given\n\nusage: sessionctl/],
    [['reap'], /^sessionctl: unknown command "reap"; one of: sessions, inspect, send, destroy, stuck, retry, resolve, dead-letters, stats/],
    [['sessions', '--colour'], /^sessionctl: Unknown option '--colour'/],
    [['inspect', 's-1', '--watch'], /^sessionctl: inspect does not take --watch \(usage: sessionctl inspect <sessionId>\)/],
    [['stats', 'now'], /^sessionctl: stats takes no arguments, got now/],
    [['sessions', 'extra'], /^sessionctl: sessions takes no arguments/],
    [['sessions', '--limit'], /argument missing/],
  ];
  for (const [args, message] of cases) {
    const run = await sessionctl(args, env);
    assert.equal(run.code, 2, `${args.join(' ')}: ${run.stderr}`);
    assert.match(run.stderr, message, args.join(' '));
    assert.equal(run.stdout, '');
  }
});

test('a setting the functions would refuse exits 2 naming the variable', async () => {
  const run = await sessionctl(['sessions'], cliEnv({ INDEX_BUCKETS: '0' }));
  assert.equal(run.code, 2);
  assert.match(run.stderr, /^sessionctl: INDEX_BUCKETS="0" is invalid/);
});

test('every command that reads Redis exits 1 naming the Redis it could not reach', async () => {
  for (const args of [['sessions'], ['inspect', 'sess-1', '--json'], ['stuck'], ['stats', '--json']]) {
    const run = await sessionctl(args, env);
    assert.equal(run.code, 1, `${args.join(' ')}: ${run.stderr}`);
    assert.match(run.stderr, /^sessionctl: cannot reach Redis at redis:\/\/127\.0\.0\.1:1: /, args.join(' '));
    assert.equal(run.stdout, '');
  }
  const cluster = await sessionctl(['sessions'], cliEnv({ REDIS_CLUSTER_NODES: '127.0.0.1:1' }));
  assert.equal(cluster.code, 1);
  assert.match(cluster.stderr, /^sessionctl: cannot reach the Redis Cluster at 127\.0\.0\.1:1: /);
});
