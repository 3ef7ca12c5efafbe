// destroy-dispatch's definition for the function host: its own settings (read from the environment once, like
// the core's), the hooks and storm guard built from them, and the pure handler.
import { Type, type Static } from '@sinclair/typebox';
import { readSettings } from '../core/config.ts';
import type { Core, FunctionDefinition } from '../core/function-host.ts';
import { KeySpace } from '../core/redis/keys.ts';
import { ACCEPTS, handle, type DestroyExtras } from './handle.ts';
import { defaultHooks, HookProgress, type DestroyHooks } from './hooks.ts';
import { defaultLeaseMs, StormGuard } from './storm-guard.ts';

/** destroy-dispatch's settings beyond the core's; the README's configuration table mirrors it. */
export const DestroyDispatchSettingsSchema = Type.Object({
  NODE_MAX_INFLIGHT_RELEASES: Type.Integer({ minimum: 1, default: 8, description: 'GPU releases one node may have in flight at once, across all replicas.' }),
  RUNTIME_RELEASE_RATE_PER_S: Type.Number({ exclusiveMinimum: 0, default: 50, description: 'Average GPU release requests per second one runtime receives (token refill rate).' }),
  RUNTIME_RELEASE_BURST: Type.Integer({ minimum: 1, default: 20, description: 'GPU release requests one runtime may receive at once (token bucket capacity).' }),
  RELEASE_RETRIES: Type.Integer({ minimum: 0, default: 3, description: "gpu-release's retries of one release; sets the default slot lease." }),
  RELEASE_SLOT_LEASE_MS: Type.Integer({
    minimum: 0, default: 0,
    description: 'How long an in-flight release holds its node slot without news before the slot frees itself; 0 = 3 deliveries x 2 x RUNTIME_TIMEOUT_MS x (RELEASE_RETRIES + 1), past the gpu-release Trigger’s redelivery window.',
  }),
  ROUTER_DEREGISTER_URL: Type.String({ default: '', description: 'Where the deregister-from-router hook POSTs an ended session; no such hook when empty.' }),
  ROUTER_DEREGISTER_TIMEOUT_MS: Type.Integer({ minimum: 10, default: 1000, description: 'Timeout of the deregister-from-router call.' }),
  CONVERSATION_CACHE_KEYS: Type.String({
    default: '',
    description: 'Comma-separated Redis key templates ({sessionId}, {incarnation}) the purge-conversation-cache hook deletes; no such hook when empty.',
  }),
});

export type DestroyDispatchSettings = Readonly<Static<typeof DestroyDispatchSettingsSchema>>;

/** Builds destroy-dispatch's extras from the core and its settings; `hooks` replaces the configured ones (tests). */
export function extendDestroyDispatch(core: Core, settings: DestroyDispatchSettings, hooks?: DestroyHooks): DestroyExtras {
  const { config, redis } = core.deps;
  const keys = new KeySpace(config.REDIS_KEY_PREFIX, config.INDEX_BUCKETS);
  return {
    hooks: hooks ?? defaultHooks({
      routerDeregisterUrl: settings.ROUTER_DEREGISTER_URL,
      routerTimeoutMs: settings.ROUTER_DEREGISTER_TIMEOUT_MS,
      conversationCacheKeys: settings.CONVERSATION_CACHE_KEYS,
      addressPolicy: core.deps.outboundPolicy,
    }),
    hookProgress: new HookProgress(redis, keys, config.TOMBSTONE_TTL_MS),
    stormGuard: new StormGuard(redis, keys, {
      nodeMaxInflight: settings.NODE_MAX_INFLIGHT_RELEASES,
      ratePerS: settings.RUNTIME_RELEASE_RATE_PER_S,
      burst: settings.RUNTIME_RELEASE_BURST,
      leaseMs: settings.RELEASE_SLOT_LEASE_MS || defaultLeaseMs(config.RUNTIME_TIMEOUT_MS, settings.RELEASE_RETRIES),
    }, core.deps.metrics.stormGuardQueueWait),
  };
}

/** The function definition, its settings read from `env`; `hooks` replaces the configured ones (tests). */
export function destroyDispatch(env: NodeJS.ProcessEnv, hooks?: DestroyHooks): FunctionDefinition<typeof ACCEPTS, DestroyExtras> {
  const settings = readSettings(DestroyDispatchSettingsSchema, env);
  return { name: 'destroy-dispatch', accept: ACCEPTS, extend: (core) => extendDestroyDispatch(core, settings, hooks), handle };
}
