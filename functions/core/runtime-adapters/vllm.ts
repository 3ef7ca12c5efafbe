// The vllm kind. vLLM has no per-session or per-request KV release in any release: its API server registers no such
// route (vllm-project/vllm vllm/entrypoints/openai/api_server.py; newer vllm/entrypoints/serve/dev/cache/
// api_router.py). The only KV actions are engine-wide and exist only with VLLM_SERVER_DEV_MODE=1 ("SECURITY WARNING:
// Development endpoints are enabled!"): POST /reset_prefix_cache (200, empty; "we currently do not check if the
// prefix cache is successfully reset"), /sleep, /wake_up. So:
// - release is a documented no-op: nothing is called, freed 0, exact: false, and the result says why. The destroy
//   still completes: the session's state in session-reaper is gone, and what vLLM keeps is its own prefix cache.
// - with globalReleaseAction 'reset_prefix_cache' (an operator's explicit choice) a release resets the WHOLE prefix
//   cache of the engine: every other session on it loses its cached prefix and recomputes it. A 404 means dev mode
//   is off: a typed, permanent refusal. Freed bytes stay unknown (0, exact: false): the metrics are a share.
// - memory is vllm:kv_cache_usage_perc ("KV-cache usage. 1 means 100 percent usage.", vllm/v1/metrics/loggers.py),
//   or the older vllm:gpu_cache_usage_perc, reported as a share (unit 'share'), never bytes.
// - no listing: vLLM does not know session-reaper's sessions.
import { type ReleaseResult, type RuntimeMemory } from '../runtime-client.ts';
import type { EngineSettings } from '../runtime-registry.ts';
import { badAnswer, NO_LISTING, unsupported, type EngineAdapter } from './adapter.ts';
import { meanOf, readSamples } from './prometheus-text.ts';

type VllmSettings = Extract<EngineSettings, { kind: 'vllm' }>;

const USAGE = ['vllm:kv_cache_usage_perc', 'vllm:gpu_cache_usage_perc'] as const;
const PARTS = 1_000_000;

/** The vllm adapter for one registered runtime's settings. */
export function vllmAdapter(settings: VllmSettings): EngineAdapter {
  return {
    kind: 'vllm',
    capabilities: { release: settings.globalReleaseAction !== 'none', demote: false, restore: false, list: false, memory: true, exactBytes: false },

    async release(http, runtimeUrl, target, ctx): Promise<ReleaseResult> {
      if (settings.globalReleaseAction === 'none') {
        return { outcome: 'released', freedBytes: 0, status: 0, attempts: 0, exact: false, note: 'vLLM has no per-session release: nothing was called' };
      }
      const { attempts } = await http.call(runtimeUrl, {
        op: 'reset_prefix_cache', method: 'POST', path: '/reset_prefix_cache', logFields: { sessionId: target.sessionId, incarnation: target.incarnation },
      }, (a) => {
        if (a.status === 404) throw unsupported('vllm', 'reset its prefix cache', 'the server runs without VLLM_SERVER_DEV_MODE=1 (404)');
        if (a.status !== 200) throw a.statusError();
        return undefined;
      }, ctx);
      return { outcome: 'released', freedBytes: 0, status: 200, attempts, exact: false, note: 'the engine-wide prefix cache was reset' };
    },

    demote: () => Promise.reject(unsupported('vllm', 'demote', 'vLLM has no per-session KV API')),
    restore: () => Promise.reject(unsupported('vllm', 'restore', 'vLLM has no per-session KV API')),

    async memory(http, runtimeUrl, ctx): Promise<RuntimeMemory> {
      const { value } = await http.call(runtimeUrl, { op: 'metrics', method: 'GET', path: '/metrics' }, (a) => {
        if (a.status !== 200) throw a.statusError();
        const samples = readSamples(a.text, USAGE);
        const share = meanOf(samples, USAGE[0]) ?? meanOf(samples, USAGE[1]);
        if (share === undefined || share < 0 || share > 1) throw badAnswer(a.url, a.status, 'vLLM metrics with a KV cache usage gauge');
        return share;
      }, ctx);
      return { totalBytes: PARTS, usedBytes: Math.round(value * PARTS), sessions: 0, unit: 'share' };
    },

    listSessions: () => Promise.resolve(NO_LISTING),
  };
}
