// gpu-release's half of demote before destroy: a gpu.demote.requested moves a quiet session's KV off the GPU (the
// runtime keeps it), a gpu.restore.requested brings it back. As for releases, what is called comes from Redis (the
// runtime the session was opened with, its slot), only while the request's token is the session's pending offload
// stage, and each request reaches the runtime once (beginOffloadCall): its call shares the per-incarnation record
// with releases, so a demote, a restore and a release of one allocation never run at once. The booking is made with
// the settle, in one script, so the ledger counts each demote and restore once however often it is delivered.
import { EventType } from '../core/contract/events.ts';
import type { InboundEvent } from '../core/contract/parse.ts';
import { TransientError } from '../core/errors.ts';
import type { CoreDeps } from '../core/function-host.ts';
import type { EngineAddress } from '../core/runtime-adapters/index.ts';
import { RuntimeReleaseError, type RuntimeCallContext } from '../core/runtime-client.ts';
import type { OffloadAnswer, OffloadOp } from '../core/session-store.ts';

/** The offload requests gpu-release consumes. */
export const OFFLOAD_ACCEPTS = [EventType.GpuDemoteRequested, EventType.GpuRestoreRequested] as const;

export type OffloadEvent = InboundEvent<(typeof OFFLOAD_ACCEPTS)[number]>;

/** The demote and restore calls gpu-release makes: the engine client's (functions/core/runtime-adapters/). */
export interface OffloadCaller {
  demote(runtimeUrl: string, sessionId: string, incarnation: number, ctx?: RuntimeCallContext, address?: EngineAddress, requestToken?: string): Promise<{ offloadedBytes: number; freedBytes: number; exact: boolean }>;
  restore(runtimeUrl: string, sessionId: string, incarnation: number, ctx?: RuntimeCallContext, address?: EngineAddress, requestToken?: string): Promise<{ restoredBytes: number; exact: boolean }>;
}

export interface OffloadDeps {
  readonly runtime: OffloadCaller;
  /** How long one delivery holds a release's runtime call (its retries and backoffs, plus a second). */
  readonly callLeaseMs: number;
}

/**
 * An offload may take several engine requests, each with the release's retry budget (llama-server: /props, then
 * save and erase; a restore: /props and restore): its call is held for three of them, so no redelivery calls again
 * (a second save would overwrite the kept file with the emptied slot) while the first may still be running.
 */
export const OFFLOAD_LEASE_CALLS = 3;

const opOf = (event: OffloadEvent): OffloadOp => (event.type === EventType.GpuDemoteRequested ? 'demote' : 'restore');

/** Reports what the runtime answered: gpu.demoted or gpu.restored, one id per request (token). */
async function report(deps: CoreDeps, op: OffloadOp, event: OffloadEvent, node: string, answer: OffloadAnswer): Promise<void> {
  const { sessionId, incarnation, token } = event.data;
  if (op === 'demote') {
    await deps.emit(
      EventType.GpuDemoted,
      { sessionId, incarnation, node, offloadedBytes: answer.bytes, freedBytes: answer.freedBytes, token, ...(answer.estimated ? { estimated: true as const } : {}) },
      `${sessionId}/${incarnation}/demoted/${token}`,
    );
  } else {
    await deps.emit(EventType.GpuRestored, { sessionId, incarnation, node, restoredBytes: answer.bytes, token }, `${sessionId}/${incarnation}/restored/${token}`);
  }
}

/**
 * Handles a gpu.demote.requested or gpu.restore.requested: calls the runtime once, books and reports its answer. A
 * retryable failure releases the call and throws TransientError (the Broker redelivers); a refusal for good is
 * settled (a demote is then never asked again for the incarnation; a restore waits for the user's next turn) and
 * acknowledged.
 */
export async function handleOffload(event: OffloadEvent, deps: CoreDeps & OffloadDeps, ctx: RuntimeCallContext): Promise<void> {
  const op = opOf(event);
  const { sessionId, incarnation, token } = event.data;
  const log = deps.logger.child({ sessionId, incarnation, op });
  const call = await deps.store.beginOffloadCall(sessionId, incarnation, op, token, deps.now(), deps.callLeaseMs * OFFLOAD_LEASE_CALLS);
  switch (call.code) {
    case 'NOT_PENDING':
      log.info({ why: call.why }, `gpu.${op}.requested for no ${op} pending under its token: nothing called`);
      return;
    case 'IN_FLIGHT':
      throw new TransientError(`a runtime call for ${sessionId}/${incarnation} is in flight until ${new Date(call.leaseUntil).toISOString()}; redeliver later`, { cause: undefined });
    case 'FAILED':
      log.info('this request was refused for good already: not called again');
      return;
    case 'NOTHING':
      // The demote this restore overtook never reached the runtime: the KV never left, and the session is resident.
      await report(deps, op, event, event.data.placement.node, { bytes: 0, freedBytes: 0, estimated: false });
      log.info('restore with nothing offloaded: the demote it overtook was never made');
      return;
    case 'ANSWERED': {
      const node = (await deps.store.inspect(sessionId))?.placement?.node ?? event.data.placement.node;
      await report(deps, op, event, node, call.answer);
      return;
    }
    case 'CALL':
      break;
  }
  const { node, runtimeUrl, address } = call;
  const runtimeName = deps.runtimes.lookup(runtimeUrl)?.name ?? 'other';
  const counter = op === 'demote' ? deps.metrics.demotes : deps.metrics.restores;
  let answer: OffloadAnswer;
  try {
    if (op === 'demote') {
      const r = await deps.runtime.demote(runtimeUrl, sessionId, incarnation, ctx, address, token);
      answer = { bytes: r.offloadedBytes, freedBytes: r.freedBytes, estimated: !r.exact };
    } else {
      const r = await deps.runtime.restore(runtimeUrl, sessionId, incarnation, ctx, address, token);
      answer = { bytes: r.restoredBytes, freedBytes: 0, estimated: !r.exact };
    }
  } catch (err) {
    const permanent = err instanceof RuntimeReleaseError && !err.retryable;
    counter.add(1, runtimeName, permanent ? 'failed' : 'failed_retryable');
    await deps.store.settleOffloadCall(sessionId, incarnation, op, token, deps.now(), permanent ? 'failed' : 'retry').catch((settleErr: unknown) => log.warn({ err: settleErr }, 'could not release the runtime call; its lease runs out'));
    if (!(err instanceof RuntimeReleaseError)) throw err;
    if (err.retryable) throw new TransientError(`${op} not confirmed (${err.reason}); the Broker will redeliver`, { cause: err });
    // Nothing is lost by a refused demote (the KV stays on the GPU) or restore (the KV stays where it was kept).
    log.warn({ reason: err.reason, status: err.status, err: err.message }, `${op} refused for good; not retried`);
    return;
  }
  counter.add(1, runtimeName, 'done');
  if (!(await deps.store.settleOffloadCall(sessionId, incarnation, op, token, deps.now(), answer))) {
    // The lease ran out under this call and another delivery holds it now: that one books and reports.
    log.warn({ node, bytes: answer.bytes }, `${op} answered after its call lease ran out; not booked or reported here`);
    return;
  }
  await report(deps, op, event, node, answer);
  log.info({ node, bytes: answer.bytes, freedBytes: answer.freedBytes, estimated: answer.estimated }, op === 'demote' ? 'KV demoted off the GPU' : 'KV restored onto the GPU');
}
