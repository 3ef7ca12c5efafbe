// The llamacpp kind: llama.cpp's llama-server, which has no sessions, only slots (`--parallel N`); a session is
// pinned to one by the pipeline sending `id_slot` with each completion, and its placement names that slot. Release is
// an erase of the slot, demote a save then an erase, restore a restore, memory is read from /props and /slots.
// Upstream behaviour relied on (ggml-org/llama.cpp, tools/server/README.md and tools/server/server-context.cpp;
// older copies examples/server/README.md and examples/server/server.cpp):
// - POST /slots/{id}?action=erase answers {"id_slot", "n_erased"}; n_erased is a TOKEN count (the slot's cached
//   prompt tokens), so an erase of an already erased slot answers 0: read here as "already released", freed 0.
// - ?action=save / ?action=restore take {"filename"} inside --slot-save-path and answer n_saved / n_written (tokens,
//   bytes) and n_restored / n_read (tokens, bytes).
// - handle_slots_action answers 501 "This server does not support slots action. Start it with `--slot-save-path`"
//   (ERROR_TYPE_NOT_SUPPORTED) for EVERY action, erase included, when --slot-save-path is unset: a permanent, typed
//   refusal here ('unsupported'), never retried.
// - get_slot_by_id wraps an out-of-range id around ("allow id_slot to be out of bounds (wrap around)": id % n_slots),
//   so erasing slot 9 of 2 erases slot 1, another session's: a slot at or past the slot count is refused here before
//   any call, against the registered count and the count the server itself reports in /props (total_slots).
// - GET /props has total_slots ("defined by --parallel"); GET /slots lists slots with n_ctx and, in newer servers,
//   n_prompt_tokens (the slot's cached tokens; server_slot::to_json).
// - A server run with --cache-ram keeps host-RAM copies of prompts it evicts; an erase frees the slot's KV cells,
//   not those copies (README, docs/deploy.md).
import { RuntimeReleaseError, SESSION_ID_PATTERN, type ReleaseResult, type RuntimeAnswer, type RuntimeCallContext, type RuntimeClient, type RuntimeMemory } from '../runtime-client.ts';
import type { EngineSettings } from '../runtime-registry.ts';
import { badAnswer, field, isCount, NO_LISTING, unsupported, type DemoteResult, type EngineAdapter, type EngineTarget, type RestoreResult } from './adapter.ts';

type LlamaCppSettings = Extract<EngineSettings, { kind: 'llamacpp' }>;

/**
 * The file a demoted session's slot is saved to, inside the server's --slot-save-path: derived from the session id
 * and incarnation, in safe characters only (llama-server refuses names with path separators and the like): letters,
 * digits and '-' are kept, every other character becomes '_' and its hex code, so two ids never share a file.
 */
export function demoteFilename(sessionId: string, incarnation: number): string {
  const safe = [...sessionId].map((c) => (/[A-Za-z0-9-]/.test(c) ? c : `_${c.charCodeAt(0).toString(16).padStart(2, '0')}`)).join('');
  return `sr-${safe}-${incarnation}.bin`;
}

function notSupported(a: RuntimeAnswer, action: string): RuntimeReleaseError {
  return new RuntimeReleaseError(`llama-server refused slot ${action} with 501: it runs without --slot-save-path`, { reason: 'unsupported', retryable: false, status: 501 });
}

/** The llamacpp adapter for one registered runtime's settings. */
export function llamaCppAdapter(settings: LlamaCppSettings): EngineAdapter {
  // The slot count each server reports in /props, read once per endpoint: the server's own count bounds the slot
  // ids too, should it run with fewer slots than registered.
  const serverSlots = new Map<string, number>();

  async function props(http: RuntimeClient, runtimeUrl: string, ctx?: RuntimeCallContext): Promise<{ totalSlots: number }> {
    const { value } = await http.call(runtimeUrl, { op: 'props', method: 'GET', path: '/props' }, (a) => {
      if (a.status !== 200) throw a.statusError();
      const totalSlots = field(a.body, 'total_slots');
      if (!isCount(totalSlots) || totalSlots < 1) throw badAnswer(a.url, a.status, 'llama-server props with total_slots');
      return { totalSlots };
    }, ctx);
    serverSlots.set(runtimeUrl, value.totalSlots);
    return value;
  }

  // The target's slot, refused before any call when it is missing or out of range (the server would wrap it).
  async function slotOf(http: RuntimeClient, runtimeUrl: string, target: EngineTarget, op: string, ctx?: RuntimeCallContext): Promise<number> {
    if (!SESSION_ID_PATTERN.test(target.sessionId) || !isCount(target.incarnation)) {
      throw new RuntimeReleaseError('session id or incarnation outside the runtime API', { reason: 'invalid_request', retryable: false });
    }
    const slot = target.slot;
    if (slot === undefined) throw new RuntimeReleaseError(`the placement of ${target.sessionId} names no slot: a llamacpp runtime cannot ${op} it`, { reason: 'invalid_request', retryable: false });
    if (!settings.slotSavePath) throw unsupported('llamacpp', op, 'the runtime is registered without slotSavePath, and llama-server answers every slot action 501 without --slot-save-path');
    if (!isCount(slot) || slot >= settings.slots) throw new RuntimeReleaseError(`slot ${slot} is outside the ${settings.slots} registered slots`, { reason: 'slot_out_of_range', retryable: false });
    const reported = serverSlots.get(runtimeUrl) ?? (await props(http, runtimeUrl, ctx)).totalSlots;
    if (slot >= reported) throw new RuntimeReleaseError(`slot ${slot} is outside the ${reported} slots the server reports`, { reason: 'slot_out_of_range', retryable: false });
    return slot;
  }

  // One slot action; the answer must name the slot asked for.
  async function action<T>(http: RuntimeClient, runtimeUrl: string, slot: number, act: 'erase' | 'save' | 'restore', target: EngineTarget, read: (a: RuntimeAnswer) => T, ctx?: RuntimeCallContext): Promise<{ value: T; attempts: number }> {
    return http.call(runtimeUrl, {
      op: act, method: 'POST', path: `/slots/${slot}?action=${act}`,
      ...(act === 'erase' ? {} : { json: { filename: demoteFilename(target.sessionId, target.incarnation) } }),
      logFields: { sessionId: target.sessionId, incarnation: target.incarnation, slot },
    }, (a) => {
      if (a.status === 501) throw notSupported(a, act);
      if (a.status !== 200) throw a.statusError();
      if (field(a.body, 'id_slot') !== slot) throw badAnswer(a.url, a.status, `an answer about slot ${slot}`);
      return read(a);
    }, ctx);
  }

  const erase = (http: RuntimeClient, runtimeUrl: string, slot: number, target: EngineTarget, ctx?: RuntimeCallContext) =>
    action(http, runtimeUrl, slot, 'erase', target, (a) => {
      const n = field(a.body, 'n_erased');
      if (!isCount(n)) throw badAnswer(a.url, a.status, 'an erase answer with n_erased');
      return n;
    }, ctx);

  return {
    kind: 'llamacpp',
    // list: slots carry no session id or incarnation, so there is nothing the reconciler could match to an owner.
    capabilities: { release: true, demote: true, restore: true, list: false, memory: true, exactBytes: true },

    async release(http, runtimeUrl, target, ctx): Promise<ReleaseResult> {
      const slot = await slotOf(http, runtimeUrl, target, 'release', ctx);
      const { value: nErased, attempts } = await erase(http, runtimeUrl, slot, target, ctx);
      // 0 tokens erased: the slot was empty (a second erase, or a retry after a lost answer): already released.
      return { outcome: nErased === 0 ? 'gone' : 'released', freedBytes: nErased * settings.bytesPerToken, status: 200, attempts, exact: true };
    },

    async demote(http, runtimeUrl, target, ctx): Promise<DemoteResult> {
      const slot = await slotOf(http, runtimeUrl, target, 'demote', ctx);
      const saved = await action(http, runtimeUrl, slot, 'save', target, (a) => {
        const [nSaved, nWritten] = [field(a.body, 'n_saved'), field(a.body, 'n_written')];
        if (!isCount(nSaved) || !isCount(nWritten)) throw badAnswer(a.url, a.status, 'a save answer with n_saved and n_written');
        return nWritten;
      }, ctx);
      // Erased only once the file is written: a failed save leaves the session's KV where it was.
      const erased = await erase(http, runtimeUrl, slot, target, ctx);
      return { offloadedBytes: saved.value, freedBytes: erased.value * settings.bytesPerToken, exact: true, attempts: saved.attempts + erased.attempts };
    },

    async restore(http, runtimeUrl, target, ctx): Promise<RestoreResult> {
      const slot = await slotOf(http, runtimeUrl, target, 'restore', ctx);
      const { value, attempts } = await action(http, runtimeUrl, slot, 'restore', target, (a) => {
        const [nRestored, nRead] = [field(a.body, 'n_restored'), field(a.body, 'n_read')];
        if (!isCount(nRestored) || !isCount(nRead)) throw badAnswer(a.url, a.status, 'a restore answer with n_restored and n_read');
        return nRead;
      }, ctx);
      return { restoredBytes: value, exact: true, attempts };
    },

    async memory(http, runtimeUrl, ctx): Promise<RuntimeMemory> {
      await props(http, runtimeUrl, ctx);
      const { value } = await http.call(runtimeUrl, { op: 'slots', method: 'GET', path: '/slots' }, (a) => {
        if (a.status === 501) throw unsupported('llamacpp', 'report memory', 'its /slots endpoint is disabled (--no-slots)');
        if (a.status !== 200) throw a.statusError();
        if (!Array.isArray(a.body)) throw badAnswer(a.url, a.status, 'a slot list');
        let total = 0;
        let used = 0;
        let sessions = 0;
        for (const slot of a.body as unknown[]) {
          const [nCtx, nTokens] = [field(slot, 'n_ctx'), field(slot, 'n_prompt_tokens')];
          if (!isCount(nCtx)) throw badAnswer(a.url, a.status, 'a slot list with n_ctx');
          total += nCtx;
          // An idle slot that never ran a task lists no n_prompt_tokens: it holds nothing.
          if (nTokens === undefined && field(slot, 'id_task') === undefined) continue;
          if (!isCount(nTokens)) throw unsupported('llamacpp', 'report used memory', 'this llama-server version lists no n_prompt_tokens per slot');
          used += nTokens;
          if (nTokens > 0) sessions++;
        }
        return { totalBytes: total * settings.bytesPerToken, usedBytes: used * settings.bytesPerToken, sessions };
      }, ctx);
      return value;
    },

    listSessions: () => Promise.resolve(NO_LISTING),
  };
}
