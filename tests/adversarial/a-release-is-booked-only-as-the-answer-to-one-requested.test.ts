// Finding 3: a gpu.released (or gpu.release.failed) with no proof that it answers a real request used to complete a
// destroy, even before any release was requested, while the runtime still held the memory. Now each release attempt
// draws a token when it is requested, and only an answer echoing it is booked. Attacked through destroy-dispatch's
// real process over HTTP, with the answer's sender (gpu-release's own source) forged as well as it can be.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EventType } from '../../functions/core/contract/events.ts';
import { drawReleaseToken } from '../../functions/core/session-store.ts';
import { startHarness, type Harness } from '../../functions/destroy-dispatch/destroy-dispatch-test-support.ts';
import { releaseMember } from '../../functions/destroy-dispatch/storm-guard.ts';
import { startFunctionProcess, type FunctionProcess } from '../../functions/activity-score/function-process-test-support.ts';
import { forge, post, snapshot } from './attack-support.ts';

const T = 'dev.sessionreaper.';

// What the ledger says of bytes and allocations (its count of ignored answers aside).
const bytesOf = ({ ignoredReleases: _, ...rest }: { ignoredReleases: number } & Record<string, number>) => rest;

describe('a release is booked only as the answer to one requested', () => {
  let h: Harness;
  let fn: FunctionProcess;

  before(async () => {
    // One release in flight per node: a second destroy on the node waits, claimed, with no release requested.
    h = await startHarness('single', { env: { NODE_MAX_INFLIGHT_RELEASES: '1' } });
    fn = await startFunctionProcess('destroy-dispatch', { ...h.env, LOG_LEVEL: 'silent' });
  });
  after(async () => {
    await fn.stop();
    await h.close();
  });

  const released = (sessionId: string, incarnation: number, token: string) =>
    forge(`${T}gpu.released`, { sessionId, incarnation, node: 'gpu-node-a', freedBytes: 1000, token }, { source: '/session-reaper/gpu-release' });
  const failed = (sessionId: string, incarnation: number, token: string) =>
    forge(`${T}gpu.release.failed`, { sessionId, incarnation, node: 'gpu-node-a', error: 'x', retryable: false, token }, { source: '/session-reaper/gpu-release' });

  test('a forged answer books nothing, frees no slot, and ends nothing, whatever stage the session is at', async () => {
    h.setNow(Date.now());
    const live = await h.open('live-1');
    const before = await snapshot(h.deps.store, 'live-1');
    assert.equal((await post(fn.url, released('live-1', live, drawReleaseToken()))).status, 204, 'acknowledged: nothing to retry');
    const after = await snapshot(h.deps.store, 'live-1');
    assert.deepEqual(after.view, before.view, 'a live session stays live');
    assert.deepEqual(bytesOf(after.ledger.totals), bytesOf(before.ledger.totals), 'its memory still registered, nothing released');
    assert.equal(after.ledger.totals.ignoredReleases, before.ledger.totals.ignoredReleases + 1, 'the forged answer is counted as ignored');

    // One destroy holds the node's only slot, waiting for its answer; the second waits for the slot, claimed.
    const [first, second] = [await h.open('ending-1'), await h.open('ending-2')];
    for (const id of ['ending-1', 'ending-2']) {
      assert.equal((await post(fn.url, forge(`${T}session.closed`, { sessionId: id }, { source: '/inference-pipeline' }))).status, 204);
    }
    const emittedFor = (type: string, sessionId: string) => h.sink.waitForEvent((e) => e.event.type === type && e.event.subject === sessionId, { timeoutMs: 30_000 });
    const request = await emittedFor(EventType.GpuReleaseRequested, 'ending-1');
    const { token } = request.event.data as { token: string };
    assert.equal((await h.deps.store.inspect('ending-2'))?.stage, 'claimed');
    const ledger = (await snapshot(h.deps.store, 'ending-1')).ledger.totals;

    const forgedToken = drawReleaseToken();
    for (const ev of [released('ending-2', second, forgedToken), released('ending-2', second, token), released('ending-1', first, forgedToken), failed('ending-1', first, forgedToken)]) {
      assert.equal((await post(fn.url, ev)).status, 204);
    }
    assert.equal((await h.deps.store.inspect('ending-2'))?.stage, 'claimed', 'no answer before a request');
    assert.equal((await h.deps.store.inspect('ending-1'))?.stage, 'gpu_release_requested', 'no answer but the one requested');
    assert.deepEqual((await snapshot(h.deps.store, 'ending-1')).ledger.totals.releasedBytes, ledger.releasedBytes, 'nothing booked as released');
    assert.deepEqual(await h.deps.stormGuard.inFlight('gpu-node-a', Date.now()), [releaseMember('ending-1', first)], 'the slot is still held by the release in flight');
    assert.equal(h.emitted(EventType.GpuReleaseRequested, 'ending-2').length, 0, 'the waiting destroy was not handed the slot by a forged failure');

    // The real answer, echoing the token it was sent, is booked, and the destroy goes on.
    assert.equal((await post(fn.url, released('ending-1', first, token))).status, 204);
    await emittedFor(EventType.SessionDestroyed, 'ending-1');
    await emittedFor(EventType.GpuReleaseRequested, 'ending-2');
    assert.equal((await snapshot(h.deps.store, 'ending-1')).ledger.totals.releasedBytes, ledger.releasedBytes + 1000);
  });
});
