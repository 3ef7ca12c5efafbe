// heartbeat-timeout's handler against real Redis (single and cluster) and a real HTTP event sink: what each of
// session.opened, session.heartbeat and session.hold does to a session's deadline, and what it emits.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { HTTP } from 'cloudevents';
import { EventType } from '../core/contract/events.ts';
import { parseInbound } from '../core/contract/parse.ts';
import { TransientError } from '../core/errors.ts';
import { createCore, type Core } from '../core/function-host.ts';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { TOPOLOGIES, dropPrefix, testRedisEnv, uniquePrefix } from '../../tests/support/redis.ts';
import { runtimesEnv } from '../../tests/support/runtimes.ts';
import { ACCEPTS, handle, type HeartbeatTimeoutEvent } from './handle.ts';
import { inboundEvent } from './heartbeat-test-support.ts';

const T0 = 1_800_000_000_000;
const PLACEMENT_A = { node: 'gpu-node-a', runtimeUrl: 'http://runtime-a.test:8000', gpuBytes: 1000 };
const PLACEMENT_B = { node: 'gpu-node-b', runtimeUrl: 'http://runtime-b.test:8000', gpuBytes: 3000 };

/** Decodes an event the way the function host does, so the handler sees exactly what it sees in production. */
function decoded(type: string, data: object, attrs: { id?: string; time?: string } = {}): HeartbeatTimeoutEvent {
  const message = HTTP.binary(inboundEvent(type, data, attrs));
  return parseInbound({ headers: message.headers, body: message.body as string }, { maxBytes: 1_048_576, accept: ACCEPTS });
}

const iso = (ms: number) => new Date(ms).toISOString();

for (const topology of TOPOLOGIES) {
  describe(`heartbeat-timeout's handler on ${topology} Redis`, () => {
    let sink: EventSink;
    let core: Core;
    let clock = T0;
    const prefix = uniquePrefix();

    before(async () => {
      sink = await startEventSink();
      core = createCore({
        name: 'heartbeat-timeout',
        env: { ...testRedisEnv(topology), ...runtimesEnv(), REDIS_KEY_PREFIX: prefix, K_SINK: sink.url, LOG_LEVEL: 'silent', MAX_HOLD_MS: '60000' },
        now: () => clock,
      });
      await core.ready();
    });
    after(async () => {
      await dropPrefix(core.deps.redis, prefix);
      await core.close();
      await sink.close();
    });

    const opened = (sessionId: string, extra: object = {}, attrs: { id?: string; time?: string } = {}) =>
      decoded(EventType.SessionOpened, { sessionId, placement: PLACEMENT_A, ...extra }, attrs);

    test('an opened session is due one window (interval times missed beats) after the event time', async () => {
      clock = T0;
      await handle(opened('open-1', { heartbeatIntervalMs: 200, missedBeats: 3, tenant: 'acme', model: 'm-1' }, { time: iso(T0 - 50) }), core.deps);
      const view = await core.deps.store.inspect('open-1');
      assert.equal(view?.state, 'active');
      assert.equal(view?.deadline, T0 - 50 + 600);
      assert.equal(view?.tenant, 'acme');
      assert.deepEqual(view?.placement, PLACEMENT_A);
    });

    test('an opened without interval or missed beats gets the configured defaults', async () => {
      clock = T0;
      await handle(opened('open-2', {}, { time: iso(T0) }), core.deps);
      const { DEFAULT_HEARTBEAT_INTERVAL_MS, DEFAULT_MISSED_BEATS } = core.deps.config;
      assert.equal((await core.deps.store.inspect('open-2'))?.deadline, T0 + DEFAULT_HEARTBEAT_INTERVAL_MS * DEFAULT_MISSED_BEATS);
    });

    test('a redelivered opened changes nothing', async () => {
      clock = T0;
      const ev = opened('open-3', { heartbeatIntervalMs: 100, missedBeats: 1 }, { time: iso(T0) });
      await handle(ev, core.deps);
      const first = await core.deps.store.inspect('open-3');
      clock = T0 + 5000;
      await handle(ev, core.deps);
      const second = await core.deps.store.inspect('open-3');
      assert.equal(second?.incarnation, first?.incarnation);
      assert.equal(second?.deadline, first?.deadline);
    });

    test('an event time in the future counts as now', async () => {
      clock = T0;
      await handle(opened('open-4', { heartbeatIntervalMs: 100, missedBeats: 2 }, { time: iso(T0 + 60_000) }), core.deps);
      assert.equal((await core.deps.store.inspect('open-4'))?.deadline, T0 + 200);
    });

    test('a heartbeat moves the deadline to its time plus the window, and an older one never moves it back', async () => {
      clock = T0;
      await handle(opened('beat-1', { heartbeatIntervalMs: 100, missedBeats: 3 }, { time: iso(T0) }), core.deps);
      clock = T0 + 1000;
      await handle(decoded(EventType.SessionHeartbeat, { sessionId: 'beat-1', seq: 1 }, { time: iso(T0 + 900) }), core.deps);
      assert.equal((await core.deps.store.inspect('beat-1'))?.deadline, T0 + 900 + 300);
      await handle(decoded(EventType.SessionHeartbeat, { sessionId: 'beat-1', seq: 0 }, { time: iso(T0 + 400) }), core.deps);
      assert.equal((await core.deps.store.inspect('beat-1'))?.deadline, T0 + 1200);
    });

    test('a heartbeat for a session never opened is acknowledged and writes nothing', async () => {
      await handle(decoded(EventType.SessionHeartbeat, { sessionId: 'beat-unknown' }), core.deps);
      assert.equal(await core.deps.store.inspect('beat-unknown'), null);
    });

    test('a late heartbeat never revives a session being destroyed', async () => {
      clock = T0;
      await handle(opened('beat-2', { heartbeatIntervalMs: 100, missedBeats: 1 }, { time: iso(T0) }), core.deps);
      assert.equal((await core.deps.store.claimExpired('beat-2', T0 + 100)).code, 'CLAIMED');
      clock = T0 + 200;
      await handle(decoded(EventType.SessionHeartbeat, { sessionId: 'beat-2' }, { time: iso(T0 + 150) }), core.deps);
      const view = await core.deps.store.inspect('beat-2');
      assert.equal(view?.state, 'destroying');
      assert.equal(view?.deadline, undefined);
    });

    test('a hold postpones the deadline to its end, capped at MAX_HOLD_MS', async () => {
      clock = T0;
      await handle(opened('hold-1', { heartbeatIntervalMs: 100, missedBeats: 1 }, { time: iso(T0) }), core.deps);
      await handle(decoded(EventType.SessionHold, { sessionId: 'hold-1', durationMs: 5000, reason: 'tool call' }), core.deps);
      assert.equal((await core.deps.store.inspect('hold-1'))?.deadline, T0 + 5000);
      await handle(decoded(EventType.SessionHold, { sessionId: 'hold-1', durationMs: 3_600_000, reason: 'long batch' }), core.deps);
      const view = await core.deps.store.inspect('hold-1');
      assert.equal(view?.holdUntil, T0 + 60_000);
      assert.equal(view?.deadline, T0 + 60_000);
    });

    test('an opened while the previous incarnation is being destroyed is a transient failure, so it is redelivered', async () => {
      clock = T0;
      await handle(opened('busy-1', { heartbeatIntervalMs: 100, missedBeats: 1 }, { time: iso(T0) }), core.deps);
      assert.equal((await core.deps.store.claimExpired('busy-1', T0 + 100)).code, 'CLAIMED');
      clock = T0 + 200;
      await assert.rejects(handle(opened('busy-1', {}, { time: iso(T0 + 200) }), core.deps), TransientError);
    });

    test('a session opened on a new placement requests the release of the old one, once, under the old incarnation', async () => {
      clock = T0;
      await handle(opened('move-1', { heartbeatIntervalMs: 100, missedBeats: 3 }, { time: iso(T0) }), core.deps);
      const before = await core.deps.store.inspect('move-1');
      clock = T0 + 50;
      const moved = decoded(EventType.SessionOpened, { sessionId: 'move-1', placement: PLACEMENT_B }, { time: iso(T0 + 50) });
      await handle(moved, core.deps);
      await handle(moved, core.deps); // redelivered: a duplicate, no second request
      const after = await core.deps.store.inspect('move-1');
      assert.ok(before && after && after.incarnation > before.incarnation);
      assert.deepEqual(after.placement, PLACEMENT_B);
      const release = await sink.waitForEvent((e) => e.event.type === EventType.GpuReleaseRequested && e.event.subject === 'move-1');
      assert.equal(release.event.id, `move-1/${before.incarnation}/release/1`);
      const { token, ...data } = release.event.data as { token: string };
      assert.deepEqual(data, { sessionId: 'move-1', incarnation: before.incarnation, placement: PLACEMENT_A, attempt: 1, reason: 'migration' });
      assert.deepEqual(await core.deps.store.releaseTarget('move-1', before.incarnation, token), {
        code: 'PENDING', kind: 'migration', node: PLACEMENT_A.node, runtimeUrl: PLACEMENT_A.runtimeUrl, attempt: 0,
      }, 'the request carries the token its release is pending under');
      assert.equal(release.event.source, '/session-reaper/heartbeat-timeout');
      assert.equal(sink.events.filter((e) => e.event.subject === 'move-1').length, 1);
    });
  });
}
