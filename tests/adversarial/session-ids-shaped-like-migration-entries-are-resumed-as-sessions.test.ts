// Finding 6: the stall watchdog told migration entries ('m:<id>:<n>') from sessions by their shape, so a session id
// shaped like one had its stalled destroy never resumed, and a few hundred of them starved a bucket's watchdog. Now
// a migration entry is '!m:…', which no session id can be (ids start with a letter or a digit). Attacked with the
// real deadline engine, real Redis and a real event sink.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EventType } from '../../functions/core/contract/events.ts';
import { createCore, type Core } from '../../functions/core/function-host.ts';
import { DeadlineEngine } from '../../functions/heartbeat-timeout/deadline-engine.ts';
import { coreEnv, fp, placementA, placementB, testCore, type TestCore } from '../support/core.ts';
import { startEventSink, type EventSink } from '../support/event-sink.ts';

const STALL_MS = 1000;

describe('session ids shaped like migration entries are resumed as the sessions they are', () => {
  let core: TestCore;
  let engineCore: Core;
  let engine: DeadlineEngine;
  let sink: EventSink;

  before(async () => {
    core = await testCore('single', { buckets: 4 });
    sink = await startEventSink();
    engineCore = createCore({
      name: 'deadline-engine',
      env: coreEnv(core, 'single', { K_SINK: sink.url, LOG_LEVEL: 'silent', DESTROY_STALL_MS: String(STALL_MS) }),
    });
    await engineCore.ready();
    engine = new DeadlineEngine({ deps: engineCore.deps, ready: () => engineCore.ready() });
  });
  after(async () => {
    await engineCore.close();
    await sink.close();
    await core.close();
  });

  test('hundreds of stalled destroys of such ids are each resumed, and a real migration beside them too', async () => {
    const t = Date.now();
    const ids = ['m:x:1', ...Array.from({ length: 300 }, (_, i) => `m:victim-${i}:${i + 1}`)];
    for (const id of ids) {
      const opened = await core.store.open({ sessionId: id, fingerprint: fp(), now: t, liveFrom: t, windowMs: 600_000, placement: placementA });
      assert.equal(opened.code, 'OPENED');
      assert.equal((await core.store.claimDestroy({ sessionId: id, fingerprint: fp(), cause: 'closed', now: t })).code, 'CLAIMED');
    }
    // A genuine migration, whose old allocation's release also stalls.
    const first = await core.store.open({ sessionId: 'moving', fingerprint: fp(), now: t, liveFrom: t, windowMs: 600_000, placement: placementA });
    const moved = await core.store.open({ sessionId: 'moving', fingerprint: fp(), now: t, liveFrom: t, windowMs: 600_000, placement: placementB });
    assert.equal(moved.code, 'MIGRATED');

    // Each pass resumes a batch; every stalled member is reached within a few passes, none is skipped for ever.
    let now = t + STALL_MS;
    for (let pass = 0; pass < 20; pass++) {
      const resumed = new Set(sink.events.filter((e) => e.event.type === EventType.DestroyResume).map((e) => e.event.subject));
      if (ids.every((id) => resumed.has(id))) break;
      await engine.runOnce(now);
      now += 1;
    }
    await sink.waitForEvents(ids.length + 1, { timeoutMs: 20_000 });
    const resumed = new Set(sink.events.filter((e) => e.event.type === EventType.DestroyResume).map((e) => e.event.subject));
    assert.deepEqual(ids.filter((id) => !resumed.has(id)), [], 'every stalled destroy is resumed');
    const reissued = sink.events.filter((e) => e.event.type === EventType.GpuReleaseRequested && e.event.subject === 'moving');
    assert.equal(reissued.length, 1, 'the migration release is re-requested');
    assert.equal((reissued[0]!.event.data as { incarnation: number }).incarnation, first.incarnation);
  });
});
