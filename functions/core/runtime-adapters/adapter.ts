// What every engine adapter offers: release, demote, restore, list and memory mapped onto one engine's own API, or a
// typed refusal (RuntimeReleaseError 'unsupported') where the engine cannot do it. Every HTTP request goes through
// the runtime client's call (functions/core/runtime-client.ts), so each engine gets the same breaker, bounded retry
// budget and outbound address rules as the native API. Incarnation checks and idempotency are not the engine's: the
// release call lease in Redis (begin-release-call-5.lua / settle-release-call-1.lua) lets one call through per
// incarnation, whatever the engine does with a second one.
import { RuntimeReleaseError, type HeldSessionPage, type ReleaseResult, type RuntimeCallContext, type RuntimeClient, type RuntimeMemory } from '../runtime-client.ts';

/** How a session is addressed inside an engine, beyond its id: the placement's optional `slot` and `engineSessionId`. */
export interface EngineAddress {
  /** llama-server: the slot (`id_slot`) the session is pinned to. */
  slot?: number | undefined;
  /** SGLang: the engine's session id, when it is not session-reaper's. */
  engineSessionId?: string | undefined;
}

/** One session incarnation on an engine, and where it lives there. */
export interface EngineTarget extends EngineAddress {
  sessionId: string;
  incarnation: number;
  /**
   * A demote or restore request's token: an incarnation may be demoted and restored many times, so each request
   * has its own idempotency key (a retry of the same request reuses it; another request must not be replayed).
   */
  requestToken?: string | undefined;
}

/** What an engine kind can do; `exactBytes`: whether freed bytes are measured or derived exactly, not estimated. */
export interface EngineCapabilities {
  release: boolean;
  demote: boolean;
  restore: boolean;
  /** Whether GET-style listing of sessions with our ids and incarnations exists (what the reconciler needs). */
  list: boolean;
  memory: boolean;
  exactBytes: boolean;
}

/** A demote: the session's KV moved off the GPU (offloadedBytes written elsewhere) and its GPU KV freed. */
export interface DemoteResult {
  offloadedBytes: number;
  freedBytes: number;
  exact: boolean;
  attempts: number;
}

/** A restore: the demoted KV brought back (restoredBytes read). */
export interface RestoreResult {
  restoredBytes: number;
  exact: boolean;
  attempts: number;
}

/** One engine kind's mapping of the operations onto its API. */
export interface EngineAdapter {
  readonly kind: string;
  readonly capabilities: EngineCapabilities;
  release(http: RuntimeClient, runtimeUrl: string, target: EngineTarget, ctx?: RuntimeCallContext): Promise<ReleaseResult>;
  demote(http: RuntimeClient, runtimeUrl: string, target: EngineTarget, ctx?: RuntimeCallContext): Promise<DemoteResult>;
  restore(http: RuntimeClient, runtimeUrl: string, target: EngineTarget, ctx?: RuntimeCallContext): Promise<RestoreResult>;
  memory(http: RuntimeClient, runtimeUrl: string, ctx?: RuntimeCallContext): Promise<RuntimeMemory>;
  listSessions(http: RuntimeClient, runtimeUrl: string, page: { after?: string; limit?: number }, ctx?: RuntimeCallContext): Promise<HeldSessionPage>;
}

/** The typed refusal of an operation an engine kind cannot do; permanent, so nothing retries it. */
export function unsupported(kind: string, op: string, why: string): RuntimeReleaseError {
  return new RuntimeReleaseError(`a ${kind} runtime cannot ${op}: ${why}`, { reason: 'unsupported', retryable: false });
}

/** A 200 whose body is not what the engine documents: retryable, as the native client treats it. */
export function badAnswer(url: string, status: number, what: string): RuntimeReleaseError {
  return new RuntimeReleaseError(`${status} from ${url} is not ${what}`, { reason: 'bad_response', retryable: true, status });
}

/** A named field of a JSON object, or undefined. */
export function field(body: unknown, name: string): unknown {
  return typeof body === 'object' && body !== null && !Array.isArray(body) ? (body as Record<string, unknown>)[name] : undefined;
}

/** True for a safe integer ≥ 0. */
export function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** The listing of an engine that has none: the reconciler reads it as "not reconciled" (as a native 501). */
export const NO_LISTING: HeldSessionPage = { unsupported: true, status: 501 };
