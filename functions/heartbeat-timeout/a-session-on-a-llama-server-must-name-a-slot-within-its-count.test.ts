// A session placed on a llama-server runtime lives in one slot, and its release erases that slot: session.opened must
// name it, below the slot count the operator registered, or it is refused with 400 and nothing is opened. A slot past
// the count would be wrapped around by the server (id % slots) onto another session's KV (llama.cpp tools/server,
// cited in functions/core/runtime-adapters/llamacpp.ts). Real Redis, the real handler.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { HTTP } from 'cloudevents';
import { EventType } from '../core/contract/events.ts';
import { ContractError } from '../core/errors.ts';
import { parseInbound } from '../core/contract/parse.ts';
import { createCore, type Core } from '../core/function-host.ts';
import { dropPrefix, testRedisEnv, uniquePrefix } from '../../tests/support/redis.ts';
import { runtimesEnv } from '../../tests/support/runtimes.ts';
import { ACCEPTS, handle, type HeartbeatTimeoutEvent } from './handle.ts';
import { inboundEvent } from './heartbeat-test-support.ts';

const LLAMA = { name: 'llama', url: 'http://llama.test:8080', kind: 'llamacpp' as const, slots: 2, bytesPerToken: 512, slotSavePath: true };
let core: Core;
const prefix = uniquePrefix();

before(async () => {
  core = createCore({ name: 'heartbeat-timeout', env: { ...testRedisEnv('single'), ...runtimesEnv(LLAMA), REDIS_KEY_PREFIX: prefix, LOG_LEVEL: 'silent', K_SINK: 'http://127.0.0.1:9/' } });
  await core.ready();
});
after(async () => {
  await dropPrefix(core.deps.redis, prefix);
  await core.close();
});

function opened(sessionId: string, slot?: number): HeartbeatTimeoutEvent {
  const placement = { node: 'cpu-node', runtimeUrl: LLAMA.url, gpuBytes: 4096, ...(slot === undefined ? {} : { slot }) };
  const message = HTTP.binary(inboundEvent(EventType.SessionOpened, { sessionId, placement }, { time: new Date().toISOString() }));
  return parseInbound({ headers: message.headers, body: message.body as string }, { maxBytes: 1_048_576, accept: ACCEPTS });
}

test('a session on a llama-server without a slot, or past its slot count, is refused and nothing is opened', async () => {
  for (const [id, slot] of [['no-slot', undefined], ['slot-2-of-2', 2], ['slot-99', 99]] as const) {
    await assert.rejects(handle(opened(id, slot), core.deps), (err: unknown) => err instanceof ContractError && err.code === 'INVALID_FIELD' && err.field === 'data.placement.slot', id);
    assert.equal(await core.deps.store.inspect(id), null, `${id} was not opened`);
  }
});

test('a session naming a slot below the count is opened there', async () => {
  await handle(opened('slot-1', 1), core.deps);
  const view = await core.deps.store.inspect('slot-1');
  assert.equal(view?.state, 'active');
});
