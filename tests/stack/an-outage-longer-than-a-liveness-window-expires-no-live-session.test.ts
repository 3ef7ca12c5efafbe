// The outage rule, end to end: the whole stack (Broker, heartbeat-timeout, the deadline engine, a private
// redis-server with its append-only file), sessions whose pipeline keeps sending heartbeats through the Broker, and
// Redis killed and kept down for three of their liveness windows. While it is down no heartbeat can be applied (the
// Broker's few quick retries of each are spent, and it drops them, as the heartbeat Trigger says), so every deadline
// passes unheard. With the rule, the engine counts that span as blind when Redis is back: the live sessions, heard
// again within an interval, are never expired; a session whose heartbeats stopped when the outage began is expired
// after it, once what was left of its window has run out. Without the rule (BLIND_GAP_MS=0) the same run expires the
// live sessions too, which is what shows this test can fail.
// So that the engine, not a race between reconnecting clients, decides, the pipeline goes quiet for the outage's last
// two windows (far longer than the Broker's retries of a heartbeat) and until the engine has looked at the deadlines
// again; for the live sessions that only makes the silence longer.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { CloudEvent } from 'cloudevents';
import { startEventSink } from '../support/event-sink.ts';
import { sendAsPipeline, stackStore, startStack, type Stack } from '../support/stack.ts';
import { until } from '../support/until.ts';

const INTERVAL_MS = 2000;
const MISSED_BEATS = 3;
const WINDOW_MS = INTERVAL_MS * MISSED_BEATS;
const OUTAGE_MS = 3 * WINDOW_MS;
/** When in the outage the pipeline goes quiet: the Broker's retries of what it sent before (each attempt waits on the
 *  function's Redis timeout) are spent well before Redis is back. */
const QUIET_FROM_MS = WINDOW_MS;
const LIVE = 5;
const source = '/tests/stack/outage';

async function send(stack: Stack, type: string, id: string, data: Record<string, unknown>): Promise<number> {
  try {
    return await sendAsPipeline(stack, new CloudEvent({ id, source, type: `dev.sessionreaper.${type}`, time: new Date().toISOString(), datacontenttype: 'application/json', data }));
  } catch {
    return 0;
  }
}

/** The pipeline: a heartbeat for each session it still runs, every interval (while not quiet), until stopped. */
function heartbeats(stack: Stack, running: Set<string>): { quiet: (on: boolean) => void; stop: () => Promise<void> } {
  let stopped = false;
  let quiet = false;
  let round = 0;
  const loop = (async () => {
    while (!stopped) {
      round += 1;
      if (!quiet) await Promise.all([...running].map((sessionId) => send(stack, 'session.heartbeat', `${sessionId}-beat-${round}`, { sessionId })));
      await new Promise((r) => setTimeout(r, quiet ? 50 : INTERVAL_MS));
    }
  })();
  return {
    quiet: (on) => (quiet = on),
    stop: async () => {
      stopped = true;
      await loop;
    },
  };
}

async function outage(rule: boolean): Promise<{ live: string[]; dead: string; expired: string[] }> {
  const dataDir = mkdtempSync(join(tmpdir(), 'sr-outage-'));
  const outside = await startEventSink();
  const env: Record<string, string> = { DEADLINE_POLL_MS: '50', BLIND_GAP_MS: rule ? '1000' : '0' };
  // At info, so the engine's "reaches Redis again" line is there to wait for.
  // A stack that fails to start leaves nothing running (startStack stops what it started): the sink goes too.
  const stack = await startStack({ redisDataDir: dataDir, forward: outside.url, env, logLevel: 'info' }).catch(async (err: unknown) => {
    await outside.close();
    rmSync(dataDir, { recursive: true, force: true });
    throw err;
  });
  const tag = `${rule ? 'rule' : 'norule'}-${process.pid}`;
  const live = Array.from({ length: LIVE }, (_, i) => `outage-${tag}-live-${i}`);
  const dead = `outage-${tag}-dead`;
  const running = new Set([...live, dead]);
  const pipeline = heartbeats(stack, running);
  try {
    for (const sessionId of running) {
      const status = await send(stack, 'session.opened', `${sessionId}-opened`, {
        sessionId, heartbeatIntervalMs: INTERVAL_MS, missedBeats: MISSED_BEATS, placement: { node: 'sim-node', runtimeUrl: stack.runtimeUrl, gpuBytes: 4096 },
      });
      assert.equal(status, 202);
    }
    await stack.broker.idle(30_000);
    // The dead session's last heartbeat is the one before the outage; the live ones keep beating through it.
    running.delete(dead);
    const engineLog = stack.logs['deadline-engine'];
    const seenLines = engineLog.length;
    const quietTimer = setTimeout(() => pipeline.quiet(true), QUIET_FROM_MS);
    await stack.restartRedis('SIGKILL', OUTAGE_MS);
    clearTimeout(quietTimer);
    pipeline.quiet(true);
    await until('the deadline engine has claimed again since Redis came back', () => engineLog.slice(seenLines).some((l) => l.includes('deadline engine reaches Redis again')), 60_000, 20);
    pipeline.quiet(false);
    const { redis, store } = await stackStore(stack);
    try {
      if (!rule) {
        // Every session's deadline passed unheard: the engine's first look claims them all, live ones included.
        await until('every session is claimed as expired', async () => (await Promise.all([...live, dead].map((id) => store.inspect(id)))).every((v) => v?.cause === 'expired'), 60_000, 100);
        return { live, dead, expired: [...live, dead] };
      }
      // Once Redis is back the dead session ends, after what was left of its window.
      await outside.waitForEvent((e) => e.event.type === 'dev.sessionreaper.session.destroyed' && (e.event.data as { sessionId: string }).sessionId === dead, { timeoutMs: 60_000 });
      // Had the live sessions' silence counted, they would have ended with the dead one: their deadlines were at most
      // an interval later. Wait until each has been heard since and is due only well after that point, so the
      // engine has judged them, rather than not yet.
      const destroyedAt = Date.now();
      await until('every live session is heard again after the outage', async () => {
        const views = await Promise.all(live.map((id) => store.inspect(id)));
        return views.every((v) => v === null || v.state !== 'active' || (v.deadline ?? 0) > destroyedAt + 2 * INTERVAL_MS);
      }, 60_000, 100);
      const views = await Promise.all([...live, dead].map(async (id) => [id, await store.inspect(id)] as const));
      return { live, dead, expired: views.filter(([, v]) => v?.cause === 'expired').map(([id]) => id) };
    } finally {
      redis.disconnect();
    }
  } finally {
    await pipeline.stop();
    await stack.stop();
    await outside.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

test('with Redis down for three liveness windows while heartbeats are sent, no live session is expired', { timeout: 240_000 }, async () => {
  const { live, dead, expired } = await outage(true);
  assert.deepEqual(expired, [dead], 'the session that stopped beating is expired, and no live one');
  assert.deepEqual(live.filter((id) => expired.includes(id)), []);
});

test('without the outage rule the same outage expires the live sessions (the test above can fail)', { timeout: 240_000 }, async () => {
  const { live, expired } = await outage(false);
  assert.deepEqual(live.filter((id) => !expired.includes(id)), []);
});
