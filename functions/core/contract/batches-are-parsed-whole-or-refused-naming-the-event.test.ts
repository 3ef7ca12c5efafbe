// CloudEvents' batched content mode (application/cloudevents-batch+json): every event of a batch is validated before
// any is handed over, and a refusal names the event at fault by its index.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ContractError } from '../errors.ts';
import { EventType } from './events.ts';
import { MAX_BATCH_EVENTS, isBatchRequest, parseInbound, parseInboundBatch } from './parse.ts';

const BATCH = { 'content-type': 'application/cloudevents-batch+json; charset=utf-8' };
const OPTS = { maxBytes: 4096, maxBatchBytes: 8192, accept: [EventType.SessionHeartbeat, EventType.SessionHold] as const };

const heartbeat = (sessionId: string, extra: Record<string, unknown> = {}) => ({
  specversion: '1.0', id: `hb-${sessionId}`, source: '/tests/gateway', type: EventType.SessionHeartbeat, time: '2026-11-21T06:45:00.000Z', data: { sessionId }, ...extra,
});

function refusal(body: unknown, opts = OPTS): ContractError {
  try {
    parseInboundBatch({ headers: BATCH, body: Buffer.from(JSON.stringify(body)) }, opts);
  } catch (err) {
    assert.ok(err instanceof ContractError, String(err));
    return err;
  }
  assert.fail('the batch was accepted');
}

describe('parseInboundBatch', () => {
  it('recognises the batched content type, parameters and case aside', () => {
    assert.equal(isBatchRequest(BATCH), true);
    assert.equal(isBatchRequest({ 'content-type': 'Application/CloudEvents-Batch+JSON' }), true);
    assert.equal(isBatchRequest({ 'content-type': 'application/cloudevents+json' }), false);
    assert.equal(isBatchRequest({}), false);
  });

  it('returns every event, in order, typed and with its own trace context', () => {
    const traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
    const events = parseInboundBatch({ headers: BATCH, body: Buffer.from(JSON.stringify([heartbeat('a'), heartbeat('b', { traceparent })])) }, OPTS);
    assert.deepEqual(events.map((e) => [e.type, e.data.sessionId, e.id]), [[EventType.SessionHeartbeat, 'a', 'hb-a'], [EventType.SessionHeartbeat, 'b', 'hb-b']]);
    assert.equal(events[0]?.traceparent, undefined);
    assert.equal(events[1]?.traceparent, traceparent);
  });

  it('refuses the whole batch for one bad event, naming it by index', () => {
    assert.deepEqual(pick(refusal([heartbeat('a'), heartbeat('b c')])), { code: 'BAD_SESSION_ID', field: 'batch[1].data.sessionId' });
    assert.deepEqual(pick(refusal([heartbeat('a'), { ...heartbeat('b'), id: '' }])), { code: 'NOT_A_CLOUDEVENT', field: 'batch[1].ce.id' });
    assert.deepEqual(pick(refusal([{ ...heartbeat('a'), type: EventType.SessionClosed }])), { code: 'UNKNOWN_TYPE', field: 'batch[0].ce.type' });
    assert.deepEqual(pick(refusal([heartbeat('a'), 7])), { code: 'NOT_A_CLOUDEVENT', field: 'batch[1].event' });
  });

  it('refuses what is not a batch of events, an empty one and one too large', () => {
    assert.deepEqual(pick(refusal(heartbeat('a'))), { code: 'NOT_A_CLOUDEVENT', field: 'body' });
    assert.deepEqual(pick(refusal([])), { code: 'NOT_A_CLOUDEVENT', field: 'body' });
    assert.deepEqual(pick(refusal(Array.from({ length: MAX_BATCH_EVENTS + 1 }, (_, i) => heartbeat(`s${i}`)))), { code: 'TOO_LARGE', field: 'body' });
    // The cap is on the whole batch (MAX_BATCH_BYTES), not the events times MAX_EVENT_BYTES.
    assert.deepEqual(pick(refusal([heartbeat('a', { data: { sessionId: 'a', pad: 'x'.repeat(9000) } })])), { code: 'TOO_LARGE', field: 'body' });
    assert.deepEqual(pick(refusal(Array.from({ length: 60 }, (_, i) => heartbeat(`s${i}`)))), { code: 'TOO_LARGE', field: 'body' }, '60 small events over 8 KiB');
  });

  it('is not how single events are read: parseInbound still refuses a batch', () => {
    assert.throws(() => parseInbound({ headers: BATCH, body: Buffer.from(JSON.stringify([heartbeat('a')])) }, OPTS), (err: unknown) => err instanceof ContractError && err.field === 'content-type');
  });
});

function pick(err: ContractError): { code: string; field: string } {
  return { code: err.code, field: err.field };
}
