// The sglang kind: SGLang's sessions. Release is POST /close_session {"session_id"}; the engine's session id is the
// placement's engineSessionId, or session-reaper's session id when the pipeline opened the SGLang session under it.
// Upstream behaviour relied on (sgl-project/sglang):
// - python/sglang/srt/entrypoints/http_server.py: close_session awaits tokenizer_manager.close_session and returns
//   Response(status_code=200), an EMPTY body; errors go through _create_error_response.
// - python/sglang/srt/managers/scheduler.py: an unknown id only logs "session id ... does not exist, cannot delete."
//   So a 200 says nothing about whether the session existed: a release is always reported as 'released'.
// - python/sglang/srt/managers/io_struct.py: CloseSessionReqInput has one field, session_id: str.
// - python/sglang/srt/metrics/collector.py: gauges in TOKENS, sglang:max_total_num_tokens and sglang:num_used_tokens
//   (newer: sglang:kv_used_tokens, sglang:kv_available_tokens, sglang:kv_evictable_tokens); /metrics is served only
//   with --enable-metrics (server_args.py), so a 404 means metrics are off.
// No freed-bytes figure is returned: it is estimated from the used-token gauge read before and after the close, times
// the registered bytesPerToken, and marked exact: false (other sessions' traffic moves the gauge too); with metrics
// off or no bytesPerToken it is unknown, reported as 0 and exact: false.
import { RuntimeReleaseError, SESSION_ID_PATTERN, type ReleaseResult, type RuntimeCallContext, type RuntimeClient, type RuntimeMemory } from '../runtime-client.ts';
import type { EngineSettings } from '../runtime-registry.ts';
import { badAnswer, NO_LISTING, unsupported, type EngineAdapter } from './adapter.ts';
import { readSamples, sumOf } from './prometheus-text.ts';

type SglangSettings = Extract<EngineSettings, { kind: 'sglang' }>;

const USED = ['sglang:kv_used_tokens', 'sglang:num_used_tokens'] as const;
const TOTAL = 'sglang:max_total_num_tokens';

/** Token gauges from SGLang's /metrics, or undefined when metrics are off (404). */
async function tokenGauges(http: RuntimeClient, runtimeUrl: string, ctx?: RuntimeCallContext): Promise<{ used: number | undefined; total: number | undefined } | undefined> {
  const { value } = await http.call(runtimeUrl, { op: 'metrics', method: 'GET', path: '/metrics' }, (a) => {
    if (a.status === 404) return undefined;
    if (a.status !== 200) throw a.statusError();
    const samples = readSamples(a.text, [...USED, TOTAL]);
    // The newer gauge first; older servers have only num_used_tokens.
    return { used: sumOf(samples, USED[0]) ?? sumOf(samples, USED[1]), total: sumOf(samples, TOTAL) };
  }, ctx);
  return value;
}

/** The sglang adapter for one registered runtime's settings. */
export function sglangAdapter(settings: SglangSettings): EngineAdapter {
  const bytesPerToken = settings.bytesPerToken;
  return {
    kind: 'sglang',
    capabilities: { release: true, demote: false, restore: false, list: false, memory: bytesPerToken !== undefined, exactBytes: false },

    async release(http, runtimeUrl, target, ctx): Promise<ReleaseResult> {
      const engineId = target.engineSessionId ?? target.sessionId;
      if (!SESSION_ID_PATTERN.test(engineId)) throw new RuntimeReleaseError('the engine session id is outside the runtime API', { reason: 'invalid_request', retryable: false });
      // The gauge is read only when it can be turned into bytes; a failed read leaves the figure unknown, never
      // blocks the release.
      const before = bytesPerToken === undefined ? undefined : await tokenGauges(http, runtimeUrl, ctx).catch(() => undefined);
      const { attempts } = await http.call(runtimeUrl, {
        op: 'close_session', method: 'POST', path: '/close_session', json: { session_id: engineId },
        logFields: { sessionId: target.sessionId, incarnation: target.incarnation, engineSessionId: engineId },
      }, (a) => {
        if (a.status !== 200) throw a.statusError();
        return undefined;
      }, ctx);
      const after = before?.used === undefined ? undefined : await tokenGauges(http, runtimeUrl, ctx).catch(() => undefined);
      const freedTokens = before?.used !== undefined && after?.used !== undefined ? Math.max(0, before.used - after.used) : 0;
      return { outcome: 'released', freedBytes: Math.round(freedTokens * (bytesPerToken ?? 0)), status: 200, attempts, exact: false };
    },

    demote: () => Promise.reject(unsupported('sglang', 'demote', 'SGLang has no API that moves one session\'s KV off the GPU')),
    restore: () => Promise.reject(unsupported('sglang', 'restore', 'SGLang has no API that restores one session\'s KV')),

    async memory(http, runtimeUrl, ctx): Promise<RuntimeMemory> {
      if (bytesPerToken === undefined) throw unsupported('sglang', 'report memory in bytes', 'the runtime is registered without bytesPerToken');
      const gauges = await tokenGauges(http, runtimeUrl, ctx);
      if (gauges === undefined) throw unsupported('sglang', 'report memory', 'it serves no /metrics (start it with --enable-metrics)');
      if (gauges.used === undefined || gauges.total === undefined) throw badAnswer(`${runtimeUrl}/metrics`, 200, 'SGLang metrics with used and total token gauges');
      // sessions: SGLang's metrics count requests, not sessions; 0 says "not known".
      return { totalBytes: Math.round(gauges.total * bytesPerToken), usedBytes: Math.round(gauges.used * bytesPerToken), sessions: 0 };
    },

    listSessions: () => Promise.resolve(NO_LISTING),
  };
}
