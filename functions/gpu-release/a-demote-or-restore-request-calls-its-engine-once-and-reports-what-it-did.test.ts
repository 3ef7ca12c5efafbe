// gpu-release's demote and restore (offload.ts), from the request to the event it emits, against engines that answer
// as documented: on a llama-server a demote saves the session's slot to a file named for its incarnation and erases
// it, a restore loads that file back into the same slot (the slot read from Redis, never from the event); a
// duplicate or forged request calls nothing; a redelivery after the answer reports it again without calling; a
// transient failure is redelivered and calls again; an engine that answers 501 refuses for good, and no demote of
// that incarnation is asked again. The llama-server behaviour is cited in functions/core/runtime-adapters/llamacpp.ts.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { CloudEvent, HTTP } from 'cloudevents';
import { EventType, type GpuDemoteRequested, type GpuRestoreRequested } from '../core/contract/events.ts';
import { parseInbound } from '../core/contract/parse.ts';
import { TransientError } from '../core/errors.ts';
import { createCore, type Core, type CoreDeps } from '../core/function-host.ts';
import { auditLedger } from '../core/ledger.ts';
import { startFakeEngine, type FakeEngine, type SeenRequest } from '../core/runtime-adapters/engine-test-support.ts';
import { drawReleaseToken } from '../core/session-store.ts';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { dropPrefix, testRedisEnv, uniquePrefix } from '../../tests/support/redis.ts';
import { createGpuReleaseDeps, GPU_RELEASE_ACCEPTS, handle, readGpuReleaseSettings, type GpuReleaseDeps, type GpuReleaseEvent } from './handle.ts';

const BPT = 1024;

function request(type: typeof EventType.GpuDemoteRequested | typeof EventType.GpuRestoreRequested, data: GpuDemoteRequested | GpuRestoreRequested, source: string): GpuReleaseEvent {
  const ce = new CloudEvent({ specversion: '1.0', id: `${data.sessionId}/${data.token}`, source, type, datacontenttype: 'application/json', data });
  const message = HTTP.binary(ce);
  return parseInbound({ headers: message.headers, body: message.body as string }, { maxBytes: 1 << 20, accept: GPU_RELEASE_ACCEPTS });
}

describe('a demote or restore request', () => {
  // The llama-server: slot 1 holds 300 tokens; a saved slot's file keeps them.
  const slots = [0, 300];
  const files = new Map<string, number>();
  let failNextSave = false;
  let llama: FakeEngine;
  let plain: FakeEngine;
  let sink: EventSink;
  let core: Core;
  let deps: CoreDeps & GpuReleaseDeps;
  const prefix = uniquePrefix();
  const slotActions = () => llama.requests.filter((r: SeenRequest) => r.path.startsWith('/slots/')).map((r) => `${r.query.get('action')} ${r.path}`);

  before(async () => {
    [llama, plain, sink] = await Promise.all([
      startFakeEngine((req) => {
        if (req.path === '/props') return { status: 200, json: { total_slots: 2 } };
        const m = /^\/slots\/(\d+)$/.exec(req.path);
        const filename = (req.body as { filename?: string } | undefined)?.filename ?? '';
        if (m && req.query.get('action') === 'save') {
          if (failNextSave) {
            failNextSave = false;
            return { status: 503, json: { error: { code: 503, message: 'Loading model' } } };
          }
          const n = slots[Number(m[1])]!;
          files.set(filename, n);
          return { status: 200, json: { id_slot: Number(m[1]), filename, n_saved: n, n_written: n * BPT + 64 } };
        }
        if (m && req.query.get('action') === 'erase') {
          const n = slots[Number(m[1])]!;
          slots[Number(m[1])] = 0;
          return { status: 200, json: { id_slot: Number(m[1]), n_erased: n } };
        }
        if (m && req.query.get('action') === 'restore') {
          const n = files.get(filename);
          if (n === undefined) return { status: 400, json: { error: { code: 400, message: 'failed to restore slot' } } };
          slots[Number(m[1])] = n;
          return { status: 200, json: { id_slot: Number(m[1]), filename, n_restored: n, n_read: n * BPT } };
        }
        return { status: 404, json: {} };
      }),
      // A native runtime without the optional operations.
      startFakeEngine(() => ({ status: 501, json: { code: 'not_implemented' } })),
      startEventSink(),
    ]);
    core = createCore({
      name: 'gpu-release',
      env: {
        ...testRedisEnv('single'), REDIS_KEY_PREFIX: prefix, K_SINK: sink.url, LOG_LEVEL: 'silent', RUNTIME_TIMEOUT_MS: '2000', OUTBOUND_ALLOWED_CIDRS: '127.0.0.0/8',
        RUNTIMES: JSON.stringify([
          { name: 'llama', url: llama.url, kind: 'llamacpp', slots: 2, bytesPerToken: BPT, slotSavePath: true },
          { name: 'plain', url: plain.url },
        ]),
      },
    });
    await core.ready();
    deps = Object.assign(Object.create(core.deps) as CoreDeps, createGpuReleaseDeps(core, readGpuReleaseSettings({ RELEASE_RETRIES: '0' })));
  });
  after(async () => {
    deps.runtime.shutdown();
    await dropPrefix(core.deps.redis, prefix);
    await core.close();
    await Promise.all([llama.close(), plain.close(), sink.close()]);
  });

  const emitted = (type: string, sessionId: string) => sink.events.filter((e) => e.event.subject === sessionId && e.event.type === type).map((e) => e.event.data as Record<string, unknown>);
  async function open(sessionId: string, runtimeUrl: string, slot?: number): Promise<number> {
    const now = Date.now();
    const opened = await core.deps.store.open({ sessionId, fingerprint: `open-${sessionId}`, now, liveFrom: now, windowMs: 600_000, placement: { node: 'gpu-a', runtimeUrl, gpuBytes: 1 << 20, ...(slot === undefined ? {} : { slot }) } });
    return opened.incarnation;
  }

  it('demotes a llama-server slot by save then erase, restores it into the same slot, each called once', async () => {
    const inc = await open('chat-1', llama.url, 1);
    const d = await core.deps.store.requestDemote('chat-1', inc, drawReleaseToken(), Date.now());
    assert.equal(d.code, 'REQUESTED');
    const demoteToken = d.code === 'REQUESTED' ? d.token : '';
    // The event names slot 0 and another runtime: the stored slot 1 on the stored runtime is what is called.
    const demote = request(EventType.GpuDemoteRequested, { sessionId: 'chat-1', incarnation: inc, token: demoteToken, placement: { node: 'gpu-a', runtimeUrl: 'http://elsewhere.test', slot: 0 } }, '/session-reaper/idle-checker');
    await handle(demote, deps);
    await handle(demote, deps);
    assert.deepEqual(slotActions(), ['save /slots/1', 'erase /slots/1'], 'the redelivery called nothing');
    assert.deepEqual(emitted(EventType.GpuDemoted, 'chat-1'), [
      { sessionId: 'chat-1', incarnation: inc, node: 'gpu-a', offloadedBytes: 300 * BPT + 64, freedBytes: 300 * BPT, token: demoteToken },
      { sessionId: 'chat-1', incarnation: inc, node: 'gpu-a', offloadedBytes: 300 * BPT + 64, freedBytes: 300 * BPT, token: demoteToken },
    ], 'reported again from the stored answer');
    assert.equal(slots[1], 0);
    const afterDemote = await auditLedger(core.deps.redis, core.deps.store.keys);
    assert.deepEqual([afterDemote.totals.offloadedBytes, afterDemote.totals.demotes, afterDemote.totals.demoteFreedBytes], [300 * BPT + 64, 1, 300 * BPT]);

    // A forged restore (no restore pending under its token) calls nothing.
    await handle(request(EventType.GpuRestoreRequested, { sessionId: 'chat-1', incarnation: inc, token: drawReleaseToken(), placement: { node: 'gpu-a', runtimeUrl: llama.url } }, '/session-reaper/activity-score'), deps);
    assert.equal(slotActions().length, 2);
    const r = await core.deps.store.requestRestore('chat-1', inc, drawReleaseToken(), Date.now());
    const restoreToken = r.code === 'REQUESTED' ? r.token : '';
    await handle(request(EventType.GpuRestoreRequested, { sessionId: 'chat-1', incarnation: inc, token: restoreToken, placement: { node: 'gpu-a', runtimeUrl: llama.url } }, '/session-reaper/activity-score'), deps);
    assert.deepEqual(slotActions(), ['save /slots/1', 'erase /slots/1', 'restore /slots/1']);
    assert.equal(slots[1], 300, 'the slot holds its tokens again');
    const saved = llama.requests.find((q) => q.query.get('action') === 'save')?.body as { filename: string };
    const loaded = llama.requests.find((q) => q.query.get('action') === 'restore')?.body as { filename: string };
    assert.equal(loaded.filename, saved.filename, 'the file the demote wrote is the one restored');
    assert.deepEqual(emitted(EventType.GpuRestored, 'chat-1'), [{ sessionId: 'chat-1', incarnation: inc, node: 'gpu-a', restoredBytes: 300 * BPT, token: restoreToken }]);
    const afterRestore = await auditLedger(core.deps.redis, core.deps.store.keys);
    assert.deepEqual([afterRestore.totals.offloadedBytes, afterRestore.totals.restores, afterRestore.totals.restoredBytes], [0, 1, 300 * BPT]);
    assert.equal((await core.deps.store.inspect('chat-1'))?.offload, undefined);
  });

  it('a transient failure is redelivered and calls again; a refusal for good ends demotes of that incarnation', async () => {
    slots[0] = 40;
    const inc = await open('chat-2', llama.url, 0);
    const d = await core.deps.store.requestDemote('chat-2', inc, drawReleaseToken(), Date.now());
    const token = d.code === 'REQUESTED' ? d.token : '';
    const demote = request(EventType.GpuDemoteRequested, { sessionId: 'chat-2', incarnation: inc, token, placement: { node: 'gpu-a', runtimeUrl: llama.url } }, '/session-reaper/idle-checker');
    failNextSave = true;
    await assert.rejects(handle(demote, deps), TransientError);
    await handle(demote, deps);
    assert.equal(emitted(EventType.GpuDemoted, 'chat-2').length, 1);
    assert.equal(slots[0], 0);

    const plainInc = await open('chat-3', plain.url);
    const p = await core.deps.store.requestDemote('chat-3', plainInc, drawReleaseToken(), Date.now());
    const plainToken = p.code === 'REQUESTED' ? p.token : '';
    const refused = request(EventType.GpuDemoteRequested, { sessionId: 'chat-3', incarnation: plainInc, token: plainToken, placement: { node: 'gpu-a', runtimeUrl: plain.url } }, '/session-reaper/idle-checker');
    await handle(refused, deps);
    await handle(refused, deps);
    assert.equal(plain.requests.length, 1, 'a 501 is asked once');
    assert.equal(emitted(EventType.GpuDemoted, 'chat-3').length, 0);
    assert.deepEqual(await core.deps.store.requestDemote('chat-3', plainInc, drawReleaseToken(), Date.now()), { code: 'REFUSED' });
  });
});
