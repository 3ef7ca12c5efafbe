// The deadline engine process as deployed (engine.ts), two replicas on one Redis, reconciling a simulated runtime
// over HTTP: each orphan is released once and announced once whichever replica holds the lease, and a bad
// RECONCILE_* setting stops the process at start, naming the variable.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EventType } from '../core/contract/events.ts';
import { startSimRuntime, type SimRuntime } from '../../runtimes/sim-gpu-runtime/server.ts';
import { waitFor } from '../gpu-release/runtime-client-test-support.ts';
import { coreEnv, testCore, type TestCore } from '../../tests/support/core.ts';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { runtimesEnv } from '../../tests/support/runtimes.ts';
import { readEngineSettings } from './engine-settings.ts';
import { startDeadlineEngine, type RunningProcess } from './heartbeat-test-support.ts';

const GiB = 1024 ** 3;

describe('deadline engine replicas reconcile each orphan once', () => {
  let sink: EventSink;
  let core: TestCore;
  let sim: SimRuntime;
  let replicas: RunningProcess[] = [];

  before(async () => {
    [sink, core, sim] = await Promise.all([startEventSink(), testCore('single'), startSimRuntime({ seed: 31 })]);
  });
  after(async () => {
    await Promise.all(replicas.map((r) => r.stop()));
    await Promise.all([core.close(), sink.close(), sim.stop()]);
  });

  const env = () => ({
    ...coreEnv(core, 'single', { K_SINK: sink.url }),
    ...runtimesEnv({ name: 'sim', url: sim.url }),
    RECONCILE_INTERVAL_MS: '200',
    RECONCILE_GRACE_MS: '300',
  });
  const orphanEvents = (sessionId: string) => sink.events.filter((e) => e.event.type === EventType.GpuOrphanReleased && e.event.subject === sessionId);

  test('an orphan is released and announced once by two replicas sharing the lease', async () => {
    replicas = await Promise.all([startDeadlineEngine(env()), startDeadlineEngine(env())]);
    sim.allocate('engine-lost-1', 3, GiB);
    await waitFor(() => orphanEvents('engine-lost-1').length > 0, 'the orphan to be released');
    assert.equal(sim.session('engine-lost-1'), undefined);

    // A second orphan released later shows the replicas kept passing meanwhile: the first was not released again.
    sim.allocate('engine-lost-2', 1, GiB);
    await waitFor(() => orphanEvents('engine-lost-2').length > 0, 'the second orphan to be released');
    assert.equal(sim.stats().releases['engine-lost-1:3'], 1);
    assert.equal(orphanEvents('engine-lost-1').length, 1);
    const ledger = await core.redis.hget(core.keys.session('engine-lost-1').ledger, 'orphans:sim');
    assert.equal(ledger, '1');
  });

  test('a bad RECONCILE_* setting stops the process at start, naming the variable', async () => {
    assert.throws(() => readEngineSettings({ RECONCILE_GRACE_MS: 'soon' }), /RECONCILE_GRACE_MS="soon" is invalid/);
    assert.throws(() => readEngineSettings({ RECONCILE_INTERVAL_MS: '5' }), /RECONCILE_INTERVAL_MS="5" is invalid: must be 0 \(off\) or at least 100/);
    assert.deepEqual(readEngineSettings({}), { RECONCILE_INTERVAL_MS: 60_000, RECONCILE_GRACE_MS: 300_000 });
    await assert.rejects(startDeadlineEngine({ ...env(), RECONCILE_INTERVAL_MS: '5' }), /RECONCILE_INTERVAL_MS="5" is invalid/);
  });
});
