// The core's settings are read and checked once, at start: a value out of its range stops the process with an
// error that names the variable, rather than running on a setting whose guarantees no longer hold.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError, loadConfig } from './config.ts';

test('DEADLINE_POLL_MS is at most 100, the shortest liveness window, and at least 10', () => {
  assert.equal(loadConfig({}).DEADLINE_POLL_MS, 100);
  assert.equal(loadConfig({ DEADLINE_POLL_MS: '20' }).DEADLINE_POLL_MS, 20);
  for (const bad of ['101', '5', 'soon']) {
    assert.throws(() => loadConfig({ DEADLINE_POLL_MS: bad }), (err: unknown) => err instanceof ConfigError && /DEADLINE_POLL_MS/.test(err.message), bad);
  }
});
