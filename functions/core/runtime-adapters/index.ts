// The engine client: the runtime client's calls, each sent through the adapter of the kind the runtime was
// registered with (RUNTIMES `kind`, functions/core/runtime-registry.ts): native, llamacpp, sglang or vllm. It is a
// RuntimeClient, so gpu-release, the load monitor and the reconciler use it as they used the plain client; a release
// may also name where the session lives inside the engine (its slot, its engine session id).
import type { HeldSessionPage, ReleaseResult, RuntimeCallContext, RuntimeClient, RuntimeMemory } from '../runtime-client.ts';
import { runtimeEndpoint, type EngineSettings, type RuntimeRegistry } from '../runtime-registry.ts';
import type { DemoteResult, EngineAdapter, EngineAddress, EngineCapabilities, RestoreResult } from './adapter.ts';
import { llamaCppAdapter } from './llamacpp.ts';
import { nativeAdapter } from './native.ts';
import { sglangAdapter } from './sglang.ts';
import { vllmAdapter } from './vllm.ts';

export type { DemoteResult, EngineAddress, EngineCapabilities, EngineTarget, RestoreResult } from './adapter.ts';
export { demoteFilename } from './llamacpp.ts';

/** A RuntimeClient that speaks each registered runtime's own API, plus demote and restore. */
export interface EngineClient extends RuntimeClient {
  release(runtimeUrl: string, sessionId: string, incarnation: number, ctx?: RuntimeCallContext, address?: EngineAddress): Promise<ReleaseResult>;
  /** Moves a session's KV off the GPU (kept to be restored), freeing its GPU KV. */
  demote(runtimeUrl: string, sessionId: string, incarnation: number, ctx?: RuntimeCallContext, address?: EngineAddress, requestToken?: string): Promise<DemoteResult>;
  /** Brings a demoted session's KV back. */
  restore(runtimeUrl: string, sessionId: string, incarnation: number, ctx?: RuntimeCallContext, address?: EngineAddress, requestToken?: string): Promise<RestoreResult>;
  /** What the runtime's kind can do. */
  capabilities(runtimeUrl: string): EngineCapabilities;
}

/** The adapter for a kind's settings. */
export function adapterFor(engine: EngineSettings): EngineAdapter {
  switch (engine.kind) {
    case 'native': return nativeAdapter;
    case 'llamacpp': return llamaCppAdapter(engine);
    case 'sglang': return sglangAdapter(engine);
    case 'vllm': return vllmAdapter(engine);
  }
}

/**
 * Wraps a runtime client (which keeps the breakers, retries and outbound rules) with the registry's adapters. Without
 * a registry (tests) every runtime is native. Adapters are built once per registry entry, so what one learns (the
 * slot count a llama-server reports) is kept.
 */
export function createEngineClient(http: RuntimeClient, registry?: RuntimeRegistry): EngineClient {
  const adapters = new Map<string, EngineAdapter>();
  function resolve(runtimeUrl: string): { adapter: EngineAdapter; endpoint: string } {
    const found = registry?.lookup(runtimeUrl);
    // An unregistered runtime is refused by the runtime client itself (unregistered_runtime), through native.
    if (found === undefined) return { adapter: nativeAdapter, endpoint: runtimeUrl };
    let adapter = adapters.get(found.name);
    if (adapter === undefined) {
      adapter = adapterFor(found.engine);
      adapters.set(found.name, adapter);
    }
    return { adapter, endpoint: runtimeEndpoint(found.endpoint) };
  }
  const target = (sessionId: string, incarnation: number, address?: EngineAddress, requestToken?: string) => ({ sessionId, incarnation, ...address, ...(requestToken === undefined ? {} : { requestToken }) });
  return {
    release(runtimeUrl, sessionId, incarnation, ctx, address) {
      const { adapter, endpoint } = resolve(runtimeUrl);
      return adapter.release(http, endpoint, target(sessionId, incarnation, address), ctx);
    },
    demote(runtimeUrl, sessionId, incarnation, ctx, address, requestToken) {
      const { adapter, endpoint } = resolve(runtimeUrl);
      return adapter.demote(http, endpoint, target(sessionId, incarnation, address, requestToken), ctx);
    },
    restore(runtimeUrl, sessionId, incarnation, ctx, address, requestToken) {
      const { adapter, endpoint } = resolve(runtimeUrl);
      return adapter.restore(http, endpoint, target(sessionId, incarnation, address, requestToken), ctx);
    },
    memory(runtimeUrl, ctx): Promise<RuntimeMemory> {
      const { adapter, endpoint } = resolve(runtimeUrl);
      return adapter.memory(http, endpoint, ctx);
    },
    listSessions(runtimeUrl, page = {}, ctx): Promise<HeldSessionPage> {
      const { adapter, endpoint } = resolve(runtimeUrl);
      return adapter.listSessions(http, endpoint, page, ctx);
    },
    capabilities: (runtimeUrl) => resolve(runtimeUrl).adapter.capabilities,
    call: (runtimeUrl, request, interpret, ctx) => http.call(runtimeUrl, request, interpret, ctx),
    breakerState: (runtimeUrl) => http.breakerState(runtimeUrl),
    breakerCount: () => http.breakerCount(),
    shutdown: () => http.shutdown(),
  };
}
