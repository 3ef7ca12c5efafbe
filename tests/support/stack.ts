// The stack launcher lives with `npm start` (tools/local-stack/stack.ts); tests import it from here, with a
// connection to a running stack's session core.
import { randomUUID } from 'node:crypto';
import { CloudEvent, HTTP } from 'cloudevents';
import { connectRedis, createRedisClient, type RedisClient } from '../../functions/core/redis/connect.ts';
import { KeySpace } from '../../functions/core/redis/keys.ts';
import { Scripts } from '../../functions/core/redis/scripts.ts';
import { SessionStore } from '../../functions/core/session-store.ts';
import { startStack, type Stack, type StackOptions } from '../../tools/local-stack/stack.ts';
import { startEventSink, type EventSink } from './event-sink.ts';
import { until } from './until.ts';

export * from '../../tools/local-stack/stack.ts';

/** A client of a running stack's Redis (its password given) and the session core on its key prefix. */
export async function stackStore(stack: { redisUrl: string; redisPassword: string; keyPrefix: string }): Promise<{ redis: RedisClient; store: SessionStore }> {
  const redis = createRedisClient({ REDIS_URL: stack.redisUrl, REDIS_CLUSTER_NODES: '', REDIS_PASSWORD: stack.redisPassword, REDIS_TLS: false, CORE_TIMEOUT_MS: 5000 });
  await connectRedis(redis);
  return { redis, store: new SessionStore(redis, new KeySpace(stack.keyPrefix, 32), await Scripts.register(redis), { tombstoneTtlMs: 60_000 }) };
}

/** Posts an event to a running stack's Broker as the inference pipeline (binary mode, its token); answers the status. */
export async function sendAsPipeline(stack: { brokerUrl: string; tokens: Readonly<Record<string, string>> }, event: CloudEvent<unknown>): Promise<number> {
  const m = HTTP.binary(event);
  const res = await fetch(stack.brokerUrl, { method: 'POST', headers: { ...(m.headers as Record<string, string>), authorization: `Bearer ${stack.tokens['inference-pipeline']}` }, body: m.body as string });
  await res.body?.cancel();
  return res.status;
}

/** The pipeline's side of a whole-stack test: its events into the Broker, and the runtime's allocation of a session. */
export interface PipelineDriver {
  /** Sends one event as the pipeline (type without `dev.sessionreaper.`); throws unless the Broker accepts it (202). */
  send(type: string, data: Record<string, unknown>, tenant?: string): Promise<void>;
  /**
   * Opens a session and, playing the runtime, allocates `gpuBytes` under the incarnation Redis gave it (a new one each
   * time the same id is opened again); resolves with that incarnation.
   */
  open(sessionId: string, gpuBytes: number, extra?: Record<string, unknown>): Promise<number>;
  /** Every incarnation open() saw, by session id. */
  readonly opened: ReadonlyMap<string, readonly number[]>;
}

/** A PipelineDriver for a running stack, its events sent from `source`, on node gpu-node-1 of its simulated runtime. */
export function pipelineDriver(stack: Pick<Stack, 'brokerUrl' | 'tokens' | 'runtimeUrl'>, store: SessionStore, source: string): PipelineDriver {
  const opened = new Map<string, number[]>(); // session id -> incarnations seen
  const send: PipelineDriver['send'] = async (type, data, tenant) => {
    const event = new CloudEvent({ type: `dev.sessionreaper.${type}`, source, id: randomUUID(), data, datacontenttype: 'application/json', ...(tenant === undefined ? {} : { tenant }) });
    const status = await sendAsPipeline(stack, event);
    if (status !== 202) throw new Error(`${type} answered ${status} by the Broker, not 202`);
  };
  return {
    send,
    opened,
    async open(sessionId, gpuBytes, extra = {}) {
      const seen = opened.get(sessionId) ?? [];
      await send('session.opened', { sessionId, placement: { node: 'gpu-node-1', runtimeUrl: stack.runtimeUrl, gpuBytes }, heartbeatIntervalMs: 60_000, ...extra });
      const view = await until(`${sessionId} opened`, async () => {
        const v = await store.inspect(sessionId);
        return v?.state === 'active' && !seen.includes(v.incarnation) ? v : undefined;
      });
      opened.set(sessionId, [...seen, view.incarnation]);
      const res = await fetch(`${stack.runtimeUrl}/v1/sessions/${encodeURIComponent(sessionId)}/allocate`, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ incarnation: view.incarnation, bytes: gpuBytes }),
      });
      await res.body?.cancel();
      if (res.status !== 201) throw new Error(`the runtime answered ${res.status} to allocating ${sessionId}, not 201`);
      return view.incarnation;
    },
  };
}

/** A running stack whose Broker forwards every event to a sink, a client of its session core, and the pipeline. */
export interface DrivenStack {
  stack: Stack;
  sink: EventSink;
  redis: RedisClient;
  store: SessionStore;
  pipeline: PipelineDriver;
  /** Stops all of it: the client, the stack, then the sink. */
  stop(): Promise<void>;
}

/**
 * Starts a stack forwarding to a fresh event sink, connects to its session core and drives it as the pipeline from
 * `source`; a stack that fails to start leaves no sink behind.
 */
export async function startDrivenStack(opts: Omit<StackOptions, 'forward'>, source: string): Promise<DrivenStack> {
  const sink = await startEventSink();
  let stack: Stack;
  try {
    stack = await startStack({ ...opts, forward: sink.url });
  } catch (err) {
    await sink.close();
    throw err;
  }
  const { redis, store } = await stackStore(stack);
  return {
    stack, sink, redis, store, pipeline: pipelineDriver(stack, store, source),
    async stop() {
      redis.disconnect();
      await stack.stop();
      await sink.close();
    },
  };
}
