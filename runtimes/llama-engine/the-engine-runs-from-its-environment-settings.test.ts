import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { ConfigError } from '../../functions/core/config.ts';
import { readEngineSettings } from './server.ts';
import { skipWithoutEngine, TEST_MODEL_CACHE } from './engine-test-support.ts';
import { diesWithParent } from '../../tools/local-stack/parent-death.ts';

describe('the engine runs from its environment settings', () => {
  it('reads PORT and ENGINE_* with defaults, and refuses a bad one, naming it', () => {
    const s = readEngineSettings({ PORT: '9001', ENGINE_SEQUENCES: '8' });
    assert.deepEqual([s.PORT, s.ENGINE_SEQUENCES, s.ENGINE_CONTEXT_TOKENS, s.ENGINE_HOST], [9001, 8, 256, '127.0.0.1']);
    assert.throws(() => readEngineSettings({ ENGINE_SEQUENCES: '0' }), (e: unknown) => e instanceof ConfigError && e.message.startsWith('ENGINE_SEQUENCES='));
    assert.throws(() => readEngineSettings({ ENGINE_CONTEXT_TOKENS: 'many' }), ConfigError);
  });

  it('starts as a process on the generated model, serves the API, and stops on SIGTERM', { skip: skipWithoutEngine }, async () => {
    const entry = fileURLToPath(new URL('./index.ts', import.meta.url));
    const child = spawn(...diesWithParent(process.execPath, [entry]), {
      env: { ...process.env, PORT: '0', ENGINE_CACHE_DIR: TEST_MODEL_CACHE, ENGINE_SEQUENCES: '2', ENGINE_CONTEXT_TOKENS: '64', LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      let url: string | undefined;
      for await (const line of createInterface({ input: child.stdout })) {
        const entry = JSON.parse(line) as { url?: string; kvBytesPerToken?: number };
        if (entry.url !== undefined) {
          url = entry.url;
          break;
        }
      }
      assert.ok(url, 'the process logged the URL it listens on');
      const memory = (await (await fetch(`${url}/v1/memory`)).json()) as { totalBytes: number; sessions: number };
      // 2 sequences of 64 cells (node-llama-cpp pads the context up to a multiple of 256 cells), 512 bytes each.
      assert.equal(memory.totalBytes % 512, 0);
      assert.ok(memory.totalBytes >= 2 * 64 * 512);
      assert.equal(memory.sessions, 0);
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      const [code] = (await exited) as [number | null];
      assert.equal(code, 0);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });
});
