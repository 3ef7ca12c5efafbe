import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { ConfigError } from '../../functions/core/config.ts';
import { readSimSettings, simOptionsFromSettings } from './server.ts';
import { diesWithParent } from '../../tools/local-stack/parent-death.ts';

describe('the simulator runs from its environment settings', () => {
  it('reads PORT and SIM_* with defaults for what is unset', () => {
    const options = simOptionsFromSettings(readSimSettings({ PORT: '9000', SIM_ERROR_RATE: '0.25', SIM_SEED: '7', SIM_BASE_PATH: '/rt' }));
    assert.equal(options.port, 9000);
    assert.equal(options.errorRate, 0.25);
    assert.equal(options.seed, 7);
    assert.equal(options.basePath, '/rt');
    assert.equal(options.totalBytes, 80 * 1024 ** 3);
    assert.equal(options.hangRate, 0);
    assert.equal('seed' in simOptionsFromSettings(readSimSettings({})), false, 'SIM_SEED=0 means a random seed');
  });

  it('refuses a bad setting, naming it', () => {
    assert.throws(() => readSimSettings({ SIM_ERROR_RATE: '1.5' }), (e: unknown) => e instanceof ConfigError && e.message.startsWith('SIM_ERROR_RATE='));
    assert.throws(() => readSimSettings({ PORT: 'eighty' }), ConfigError);
  });

  it('starts as a process, serves the API, and stops on SIGTERM', async () => {
    const entry = fileURLToPath(new URL('./index.ts', import.meta.url));
    const child = spawn(...diesWithParent(process.execPath, [entry]), {
      env: { ...process.env, PORT: '0', SIM_HOST: '127.0.0.1', SIM_TOTAL_BYTES: '1048576', SIM_SEED: '3', LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      const lines = createInterface({ input: child.stdout });
      let url: string | undefined;
      for await (const line of lines) {
        const entry = JSON.parse(line) as { url?: string };
        if (entry.url !== undefined) {
          url = entry.url;
          break;
        }
      }
      assert.ok(url, 'the process logged the URL it listens on');
      const memory: unknown = await (await fetch(`${url}/v1/memory`)).json();
      assert.deepEqual(memory, { totalBytes: 1048576, usedBytes: 0, sessions: 0 });
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      const [code] = (await exited) as [number | null];
      assert.equal(code, 0);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });
});
