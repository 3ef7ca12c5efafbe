// gpu-release through the engine adapters, end to end from a gpu.release.requested to the gpu.released it emits: a
// session on a llama-server is released by erasing the slot it was opened in (read from Redis, not from the event),
// with exact bytes; a session on SGLang is closed and its freed figure is marked `estimated: true`, and a redelivery
// reports the same estimate again without a second call. The engines are the documented-behaviour servers of
// functions/core/runtime-adapters/ (upstream sources cited there).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { CloudEvent, HTTP } from 'cloudevents';
import { EventType, type GpuReleaseRequested } from '../core/contract/events.ts';
import { parseInbound } from '../core/contract/parse.ts';
import { createCore, type Core, type CoreDeps } from '../core/function-host.ts';
import { startFakeEngine, type FakeEngine } from '../core/runtime-adapters/engine-test-support.ts';
import { pendingRelease } from '../../tests/support/core.ts';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { dropPrefix, testRedisEnv, uniquePrefix } from '../../tests/support/redis.ts';
import { createGpuReleaseDeps, GPU_RELEASE_ACCEPTS, handle, readGpuReleaseSettings, type GpuReleaseDeps, type GpuReleaseEvent } from './handle.ts';

const BPT = 1024;

function requested(data: GpuReleaseRequested, id: string): GpuReleaseEvent {
  const ce = new CloudEvent({ specversion: '1.0', id, source: '/session-reaper/destroy-dispatch', type: EventType.GpuReleaseRequested, datacontenttype: 'application/json', data });
  const message = HTTP.binary(ce);
  return parseInbound({ headers: message.headers, body: message.body as string }, { maxBytes: 1 << 20, accept: GPU_RELEASE_ACCEPTS });
}

describe('a release on an inference engine', () => {
  const slots = [0, 0];
  let usedTokens = 500;
  let llama: FakeEngine;
  let sglang: FakeEngine;
  let sink: EventSink;
  let core: Core;
  let deps: CoreDeps & GpuReleaseDeps;
  const prefix = uniquePrefix();

  before(async () => {
    [llama, sglang, sink] = await Promise.all([
      startFakeEngine((req) => {
        if (req.path === '/props') return { status: 200, json: { total_slots: 2 } };
        const m = /^\/slots\/(\d+)$/.exec(req.path);
        if (m && req.query.get('action') === 'erase') {
          const id = Number(m[1]) % 2;
          const n = slots[id]!;
          slots[id] = 0;
          return { status: 200, json: { id_slot: id, n_erased: n } };
        }
        return { status: 404, json: {} };
      }),
      startFakeEngine((req) => {
        if (req.path === '/close_session') {
          usedTokens -= 200;
          return { status: 200, text: '' };
        }
        if (req.path === '/metrics') return { status: 200, text: `sglang:num_used_tokens{model_name="m"} ${usedTokens}\nsglang:max_total_num_tokens{model_name="m"} 1000\n` };
        return { status: 404, json: {} };
      }),
      startEventSink(),
    ]);
    core = createCore({
      name: 'gpu-release',
      env: {
        ...testRedisEnv('single'), REDIS_KEY_PREFIX: prefix, K_SINK: sink.url, LOG_LEVEL: 'silent', RUNTIME_TIMEOUT_MS: '2000', OUTBOUND_ALLOWED_CIDRS: '127.0.0.0/8',
        RUNTIMES: JSON.stringify([
          { name: 'llama', url: llama.url, kind: 'llamacpp', slots: 2, bytesPerToken: BPT, slotSavePath: true },
          { name: 'sglang', url: sglang.url, kind: 'sglang', bytesPerToken: BPT },
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
    await Promise.all([llama.close(), sglang.close(), sink.close()]);
  });

  const released = (sessionId: string) => sink.events.filter((e) => e.event.subject === sessionId && e.event.type === EventType.GpuReleased).map((e) => e.event.data);

  it('on llama-server erases the slot the session was opened in, whatever the event says, with exact bytes', async () => {
    slots[0] = 7;
    slots[1] = 40;
    const placement = { node: 'gpu-node-a', runtimeUrl: llama.url, gpuBytes: 40 * BPT, slot: 1 };
    const { incarnation, token } = await pendingRelease(deps.store, 'llama-1', placement);
    // The event names slot 0: gpu-release takes the slot from Redis.
    await handle(requested({ sessionId: 'llama-1', incarnation, placement: { ...placement, slot: 0 }, attempt: 1, token, reason: 'destroy' }, 'r1'), deps);
    assert.deepEqual(slots, [7, 0]);
    assert.deepEqual(released('llama-1'), [{ sessionId: 'llama-1', incarnation, node: 'gpu-node-a', freedBytes: 40 * BPT, token }]);
  });

  it('on SGLang reports the metrics estimate as estimated, and a redelivery reports it again without calling', async () => {
    const placement = { node: 'gpu-node-b', runtimeUrl: sglang.url, gpuBytes: 200 * BPT, engineSessionId: 'sg-1' };
    const { incarnation, token } = await pendingRelease(deps.store, 'sg-1', placement);
    const ev = requested({ sessionId: 'sg-1', incarnation, placement, attempt: 1, token, reason: 'destroy' }, 'r2');
    await handle(ev, deps);
    await handle(ev, deps);
    const expected = { sessionId: 'sg-1', incarnation, node: 'gpu-node-b', freedBytes: 200 * BPT, token, estimated: true };
    assert.deepEqual(released('sg-1'), [expected, expected]);
    assert.equal(sglang.requests.filter((r) => r.path === '/close_session').length, 1);
    assert.deepEqual(sglang.requests.find((r) => r.path === '/close_session')?.body, { session_id: 'sg-1' });
  });
});
