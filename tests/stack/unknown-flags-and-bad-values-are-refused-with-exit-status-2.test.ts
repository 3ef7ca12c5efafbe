// The flags of `npm start` are parsed strictly: an unknown flag or a bad value stops it before anything starts, with
// a message naming the flag and exit status 2; --help prints the usage and exits 0.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseStartFlags, UsageError } from '../../tools/local-stack/flags.ts';
import { REPO_ROOT } from '../../tools/local-stack/stack.ts';

const start = (...args: string[]) =>
  spawnSync(process.execPath, ['tools/local-stack/start.ts', ...args], { cwd: REPO_ROOT, encoding: 'utf8', timeout: 30_000 });

test('an unknown flag or a bad value exits 2 naming it, before anything starts', () => {
  const unknown = start('--bogus');
  assert.equal(unknown.status, 2);
  assert.match(unknown.stderr, /Unknown option '--bogus'/);
  assert.match(unknown.stderr, /Usage: npm start/);
  assert.equal(unknown.stdout, '', 'nothing started');
  const badPort = start('--port', 'eighty');
  assert.equal(badPort.status, 2);
  assert.match(badPort.stderr, /--port must be a whole number from 0 to 65535, not 'eighty'/);
  const positional = start('now');
  assert.equal(positional.status, 2);
  assert.match(positional.stderr, /now/);
});

test('--help prints the usage and exits 0', () => {
  const help = start('--help');
  assert.equal(help.status, 0);
  assert.match(help.stdout, /--no-demo/);
  assert.match(help.stdout, /--forward URL/);
});

test('the flags default to the demo on port 8080 with the runtime beside it, and each can be set', () => {
  const d = parseStartFlags([]);
  assert.deepEqual(
    { demo: d.demo, port: d.port, runtimePort: d.runtimePort, sessions: d.sessions, durationMs: d.durationMs, exitAfterDemo: d.exitAfterDemo, stateDir: d.stateDir },
    { demo: true, port: 8080, runtimePort: 8081, sessions: 50, durationMs: 30_000, exitAfterDemo: false, stateDir: join(REPO_ROOT, '.local') },
  );
  const f = parseStartFlags(['--no-demo', '--port', '9000', '--forward', 'http://sink.example:9999/events', '--sessions', '5', '--duration', '12']);
  assert.equal(f.demo, false);
  assert.equal(f.port, 9000);
  assert.equal(f.runtimePort, 9001);
  assert.equal(f.forward, 'http://sink.example:9999/events');
  assert.equal(f.sessions, 5);
  assert.equal(f.durationMs, 12_000);
  assert.throws(() => parseStartFlags(['--forward', 'ftp://x']), UsageError);
  assert.throws(() => parseStartFlags(['--sessions', '0']), /--sessions must be a whole number from 1/);
  assert.throws(() => parseStartFlags(['--no-demo', '--exit-after-demo']), /needs the demo/);
  assert.throws(() => parseStartFlags(['--port', '7000', '--runtime-port', '7000']), /must differ/);
});
