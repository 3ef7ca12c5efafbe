// OnDestroy hooks: small, named, idempotent steps other systems need when a session ends (deregister it from the
// router, purge its conversation cache, ...), run in registration order at the destroy stage they name.
//
// Ordering guarantee (see continueDestroy in handle.ts):
// - 'claimed' hooks run after the destroy is claimed and BEFORE the GPU release is requested, so a router stops
//   sending the session traffic before its memory goes. A failing 'claimed' hook never holds the release back:
//   the release is still requested (and checkpointed), and only then does the handler fail with HookFailedError
//   (503), so the Broker redelivers the trigger and the hook runs again.
// - 'gpu_released' hooks run once the runtime confirmed the release, before the session's state is purged;
//   'state_purged' hooks run after the purge, before session.destroyed. A failing hook at these stages fails the
//   handler before the next checkpoint, so the redelivered gpu.released (or the watchdog's destroy.resume)
//   resumes there and runs it again.
// - session.destroyed is emitted only once every hook of every stage has succeeded for the incarnation.
// Hooks that succeeded are recorded per incarnation in Redis (HookProgress) and are not run again; a hook must
// still be idempotent, because a crash between its success and that record runs it twice.
import type { Logger } from 'pino';
import { TransientError } from '../core/errors.ts';
import { senderFor } from '../core/http-client.ts';
import type { OutboundAddressPolicy } from '../core/outbound-address.ts';
import type { RedisClient } from '../core/redis/connect.ts';
import type { KeySpace } from '../core/redis/keys.ts';
import type { Cause, Placement, Stage } from '../core/session-store.ts';

/** The destroy stages hooks may run at, in the order they are reached. */
export const HOOK_STAGES = ['claimed', 'gpu_released', 'state_purged'] as const satisfies readonly Stage[];
export type HookStage = (typeof HOOK_STAGES)[number];

/** What a hook is told about the destroy it runs for. */
export interface HookContext {
  readonly sessionId: string;
  readonly incarnation: number;
  /** The stage the hook is registered at. */
  readonly stage: HookStage;
  /** Why the session is destroyed, when known at this point. */
  readonly cause?: Cause | undefined;
  /** Where the session ran, when known at this point. */
  readonly placement?: Placement | undefined;
  readonly now: number;
  readonly redis: RedisClient;
  readonly logger: Logger;
}

/** One OnDestroy hook. */
export interface DestroyHook {
  /** Unique, kebab-case; recorded once the hook succeeded for an incarnation. */
  readonly name: string;
  readonly stage: HookStage;
  /** Does the hook's work; must be idempotent; throws to be retried by redelivery. */
  run(ctx: HookContext): Promise<void>;
}

/** A hook that failed: answered 503, so the Broker redelivers and the hook runs again. */
export class HookFailedError extends TransientError {
  override name = 'HookFailedError';
  readonly hook: string;
  readonly stage: HookStage;

  constructor(hook: string, stage: HookStage, cause: unknown) {
    super(`OnDestroy hook ${hook} (stage ${stage}) failed: ${(cause as Error | undefined)?.message ?? String(cause)}`, { cause });
    this.hook = hook;
    this.stage = stage;
  }
}

const HOOK_NAME = /^[a-z][a-z0-9-]{0,62}$/;

/** The registry of OnDestroy hooks: named, ordered by registration within a stage. */
export class DestroyHooks {
  readonly #byStage = new Map<HookStage, DestroyHook[]>(HOOK_STAGES.map((s) => [s, []]));
  readonly #names = new Set<string>();

  /** Adds a hook after those already registered at its stage; names are unique. */
  registerHook(hook: DestroyHook): this {
    if (!HOOK_NAME.test(hook.name)) throw new RangeError(`hook name "${hook.name}" must be kebab-case, at most 63 characters`);
    if (this.#names.has(hook.name)) throw new RangeError(`a hook named ${hook.name} is registered already`);
    const list = this.#byStage.get(hook.stage);
    if (!list) throw new RangeError(`hook ${hook.name}: stage ${String(hook.stage)} is not one of ${HOOK_STAGES.join(', ')}`);
    this.#names.add(hook.name);
    list.push(hook);
    return this;
  }

  /** The hooks of one stage, in order. */
  at(stage: HookStage): readonly DestroyHook[] {
    return this.#byStage.get(stage) ?? [];
  }

  /** Whether any hook is registered at one of the stages. */
  any(stages: readonly HookStage[]): boolean {
    return stages.some((s) => this.at(s).length > 0);
  }
}

/** Which hooks succeeded for a session's incarnations, in Redis under the session's hash tag. */
export class HookProgress {
  readonly #redis: RedisClient;
  readonly #keys: KeySpace;
  readonly #ttlMs: number;

  /** `ttlMs` should be the tombstone TTL: progress is needed only as long as the destroy may be resumed. */
  constructor(redis: RedisClient, keys: KeySpace, ttlMs: number) {
    this.#redis = redis;
    this.#keys = keys;
    this.#ttlMs = ttlMs;
  }

  /** A SET of `<incarnation>:<hook>`; beside the session record, in its bucket's hash slot. */
  key(sessionId: string): string {
    return this.#keys.session(sessionId).destroyHooks;
  }

  /** The hooks that succeeded for an incarnation. */
  async done(sessionId: string, incarnation: number): Promise<Set<string>> {
    const members = await this.#redis.smembers(this.key(sessionId));
    const prefix = `${incarnation}:`;
    return new Set(members.filter((m) => m.startsWith(prefix)).map((m) => m.slice(prefix.length)));
  }

  /** Records that a hook succeeded for an incarnation. */
  async record(sessionId: string, incarnation: number, hook: string): Promise<void> {
    const key = this.key(sessionId);
    await Promise.all([this.#redis.sadd(key, `${incarnation}:${hook}`), this.#redis.pexpire(key, this.#ttlMs)]);
  }
}

/**
 * Runs, in order, every hook of the given stages that has not yet succeeded for the incarnation, recording each
 * success. Stops at the first failure (a later hook may rely on an earlier one) and returns it as a
 * HookFailedError; returns undefined when all succeeded. `done` is what HookProgress.done returned, or an empty
 * set for a destroy that was just claimed (nothing can have run yet); each success is added to it.
 */
export async function runPendingHooks(
  hooks: DestroyHooks,
  progress: HookProgress,
  stages: readonly HookStage[],
  done: Set<string>,
  ctx: Omit<HookContext, 'stage'>,
): Promise<HookFailedError | undefined> {
  for (const stage of stages) {
    for (const hook of hooks.at(stage)) {
      if (done.has(hook.name)) continue;
      try {
        await hook.run({ ...ctx, stage });
      } catch (err) {
        ctx.logger.warn({ err, hook: hook.name, stage, sessionId: ctx.sessionId, incarnation: ctx.incarnation }, 'OnDestroy hook failed; it runs again on redelivery');
        return new HookFailedError(hook.name, stage, err);
      }
      await progress.record(ctx.sessionId, ctx.incarnation, hook.name);
      done.add(hook.name);
    }
  }
  return undefined;
}

/** The placeholders a conversation cache key template may use. */
function expandKey(template: string, sessionId: string, incarnation: number): string {
  return template.replaceAll('{sessionId}', sessionId).replaceAll('{incarnation}', String(incarnation));
}

/**
 * 'purge-conversation-cache' (stage state_purged): deletes the session's conversation cache keys, named by
 * templates such as `conv:{sessionId}:messages` ({sessionId} and {incarnation} are substituted). The keys are
 * named explicitly (never a SCAN) and deleted one by one, so on a Redis Cluster they may live in any slot.
 */
export function purgeConversationCacheHook(keyTemplates: readonly string[]): DestroyHook {
  const templates = keyTemplates.map((t) => t.trim()).filter((t) => t !== '');
  if (templates.length === 0) throw new RangeError('purge-conversation-cache needs at least one key template');
  return {
    name: 'purge-conversation-cache',
    stage: 'state_purged',
    async run(ctx) {
      await Promise.all(templates.map((t) => ctx.redis.del(expandKey(t, ctx.sessionId, ctx.incarnation))));
    },
  };
}

/** Where and how the router is told a session is gone. */
export interface RouterDeregistration {
  /** POSTed `{sessionId, incarnation, node, runtimeUrl, cause}` as JSON. */
  url: string;
  timeoutMs: number;
  fetchImpl?: typeof fetch;
  /** Where the call may connect (OUTBOUND_ALLOWED_CIDRS); anywhere when absent. Not used with fetchImpl. */
  addressPolicy?: OutboundAddressPolicy;
}

/**
 * 'deregister-from-router' (stage claimed): tells the inference router to stop sending the session traffic.
 * 2xx and 404 (the router does not know the session) count as done; anything else, or no answer within the
 * timeout, fails the hook.
 */
export function deregisterFromRouterHook(opts: RouterDeregistration): DestroyHook {
  const url = routerUrl(opts.url);
  // Held for the life of the process, as the hook is.
  const send = senderFor(opts.fetchImpl, opts.addressPolicy ? { addressPolicy: opts.addressPolicy } : {});
  return {
    name: 'deregister-from-router',
    stage: 'claimed',
    async run(ctx) {
      const res = await send(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': `${ctx.sessionId}:${ctx.incarnation}` },
        body: JSON.stringify({
          sessionId: ctx.sessionId,
          incarnation: ctx.incarnation,
          node: ctx.placement?.node,
          runtimeUrl: ctx.placement?.runtimeUrl,
          cause: ctx.cause,
        }),
        timeoutMs: opts.timeoutMs,
      });
      await res.text().catch(() => '');
      if (!res.ok && res.status !== 404) throw new Error(`router answered ${res.status}`);
    },
  };
}

// ROUTER_DEREGISTER_URL: an http(s) URL without credentials (they would end up in logs).
function routerUrl(text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new RangeError('ROUTER_DEREGISTER_URL is not a URL');
  }
  if ((url.protocol !== 'http:' && url.protocol !== 'https:') || url.username !== '' || url.password !== '') {
    throw new RangeError('ROUTER_DEREGISTER_URL must be an http(s) URL without credentials');
  }
  return url.href;
}

/** The settings the default hooks are built from. */
export interface DefaultHookSettings {
  /** ROUTER_DEREGISTER_URL; no router hook when empty. */
  routerDeregisterUrl: string;
  routerTimeoutMs: number;
  /** CONVERSATION_CACHE_KEYS, comma-separated key templates; no cache hook when empty. */
  conversationCacheKeys: string;
  /** Where outbound hooks may connect (OUTBOUND_ALLOWED_CIDRS). */
  addressPolicy?: OutboundAddressPolicy;
}

/** The hooks a deployment gets from its settings: each only when configured. */
export function defaultHooks(settings: DefaultHookSettings): DestroyHooks {
  const hooks = new DestroyHooks();
  if (settings.routerDeregisterUrl.trim() !== '') {
    hooks.registerHook(deregisterFromRouterHook({
      url: settings.routerDeregisterUrl.trim(), timeoutMs: settings.routerTimeoutMs,
      ...(settings.addressPolicy ? { addressPolicy: settings.addressPolicy } : {}),
    }));
  }
  const templates = settings.conversationCacheKeys.split(',').map((t) => t.trim()).filter((t) => t !== '');
  if (templates.length > 0) hooks.registerHook(purgeConversationCacheHook(templates));
  return hooks;
}
