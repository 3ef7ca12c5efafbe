// The two halves agree: session-reaper's native adapter (functions/core/runtime-adapters/native.ts, the client
// gpu-release uses) against the reference engine's API. Demote frees exactly the KV the engine's own reading loses,
// restore brings exactly that back with the session's tokens, and a release then frees exactly the rest.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createEngineClient } from '../../functions/core/runtime-adapters/index.ts';
import { createRuntimeClient } from '../../functions/core/runtime-client.ts';
import { complete, skipWithoutEngine, startTestEngine, tokensHeld, usedBytes } from './engine-test-support.ts';

test("session-reaper's native adapter demotes, restores and releases a session on the real engine, each by its measured bytes", { skip: skipWithoutEngine, timeout: 60_000 }, async () => {
  const engine = await startTestEngine(2, 128);
  const http = createRuntimeClient({ timeoutMs: 10_000, retries: 0, baseBackoffMs: 1, maxBackoffMs: 1, breaker: { errorThresholdPercentage: 50, resetTimeoutMs: 10_000, volumeThreshold: 10, rollingCountTimeoutMs: 10_000 } });
  const client = createEngineClient(http);
  try {
    const url = engine.server.url;
    assert.equal((await complete(url, 'adapted', 7, 'a long enough prompt to hold some cells', 4)).status, 200);
    const tokens = await tokensHeld(url, 'adapted');
    const resident = await usedBytes(url);

    const demoted = await client.demote(url, 'adapted', 7);
    const afterDemote = await usedBytes(url);
    assert.equal(demoted.freedBytes, resident - afterDemote, 'demote frees what the engine loses');
    assert.ok(demoted.offloadedBytes > 0);

    const restored = await client.restore(url, 'adapted', 7);
    assert.equal(restored.restoredBytes, demoted.freedBytes, 'restore brings the same KV back');
    assert.equal(await usedBytes(url), resident);
    assert.equal(await tokensHeld(url, 'adapted'), tokens);

    const released = await client.release(url, 'adapted', 7);
    assert.equal(released.outcome, 'released');
    assert.equal(released.freedBytes, resident - (await usedBytes(url)), 'a release frees what the engine loses');
    assert.notEqual(released.exact, false, 'the native API reports measured bytes');
  } finally {
    http.shutdown();
    await engine.stop();
  }
});
