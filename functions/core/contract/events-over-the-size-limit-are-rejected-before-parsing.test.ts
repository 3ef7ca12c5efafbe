// One event may be at most MAX_EVENT_BYTES (body plus CloudEvent attribute headers), checked before any parsing
// so an oversized body costs nothing; inside the limit, the per-field limits of the contract still apply.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { CloudEvent, HTTP } from 'cloudevents';
import { loadConfig } from '../config.ts';
import { ContractError, type ContractErrorCode } from '../errors.ts';
import { EventType } from './events.ts';
import { parseInbound, type RawRequest } from './parse.ts';

const DEFAULT_MAX = loadConfig({}).MAX_EVENT_BYTES;

function activity(data: Record<string, unknown>): CloudEvent<Record<string, unknown>> {
  return new CloudEvent({ id: 'evt-1', source: '/inference-pipeline/gateway', type: EventType.SessionActivity, time: '2026-11-21T06:45:04.123Z', data });
}

// What the limit counts: the body and the headers that carry the event's attributes.
function eventBytes(req: { headers: Record<string, string>; body: string }): number {
  const attributes = Object.entries(req.headers).filter(([name]) => name.startsWith('ce-') || name === 'content-type');
  return Buffer.byteLength(req.body) + attributes.reduce((sum, [name, value]) => sum + Buffer.byteLength(name) + Buffer.byteLength(value), 0);
}

function rejects(req: RawRequest, maxBytes: number, code: ContractErrorCode, field: string): void {
  assert.throws(
    () => parseInbound(req, { maxBytes }),
    (err: unknown) => {
      assert.ok(err instanceof ContractError, `expected a ContractError, got ${String(err)}`);
      assert.deepEqual({ code: err.code, field: err.field }, { code, field });
      return true;
    },
  );
}

describe('the event size limit', () => {
  it('defaults to 1 MiB', () => {
    assert.equal(DEFAULT_MAX, 1_048_576);
  });

  for (const mode of ['binary', 'structured'] as const) {
    it(`accepts an event of exactly the limit and rejects one byte more (${mode})`, () => {
      const message = HTTP[mode](activity({ sessionId: 'sess-1', kind: 'message', text: 'ünïcødé counts in bytes, not characters' }));
      const req = { headers: message.headers as Record<string, string>, body: String(message.body) };
      const size = eventBytes(req);
      assert.equal(parseInbound(req, { maxBytes: size }).type, EventType.SessionActivity);
      rejects(req, size - 1, 'TOO_LARGE', 'event');
      rejects({ ...req, body: Buffer.from(req.body) }, size - 1, 'TOO_LARGE', 'event');
      rejects({ ...req, body: JSON.parse(req.body) as object }, size - 1, 'TOO_LARGE', 'event');
    });
  }

  it('rejects an oversized body before parsing it, even when it is not JSON', () => {
    rejects({ headers: { 'content-type': 'application/cloudevents+json' }, body: `{${'x'.repeat(DEFAULT_MAX)}` }, DEFAULT_MAX, 'TOO_LARGE', 'event');
  });

  it('rejects an event over 1 MiB by default', () => {
    const message = HTTP.structured(activity({ sessionId: 'sess-1', kind: 'message', padding: 'x'.repeat(DEFAULT_MAX) }));
    rejects({ headers: message.headers, body: String(message.body) }, DEFAULT_MAX, 'TOO_LARGE', 'event');
  });

  it('counts attribute headers of a binary event', () => {
    const message = HTTP.binary(activity({ sessionId: 'sess-1', kind: 'input' }));
    const headers = { ...(message.headers as Record<string, string>), 'ce-note': 'n'.repeat(2048) };
    rejects({ headers, body: String(message.body) }, 2048, 'TOO_LARGE', 'event');
  });

  it('does not count headers that belong to the hop, not the event', () => {
    const message = HTTP.binary(activity({ sessionId: 'sess-1', kind: 'input' }));
    const headers = { ...(message.headers as Record<string, string>), authorization: `Bearer ${'t'.repeat(4096)}`, 'x-b3-traceid': '0af7651916cd43dd' };
    assert.equal(parseInbound({ headers, body: String(message.body) }, { maxBytes: 1024 }).type, EventType.SessionActivity);
  });
});

describe('field limits inside the size limit', () => {
  const parse = (data: Record<string, unknown>) => {
    const message = HTTP.binary(activity(data));
    return parseInbound({ headers: message.headers, body: String(message.body) }, { maxBytes: DEFAULT_MAX });
  };

  it('accepts text of 65536 characters, multi-byte ones included, and rejects 65537', () => {
    assert.equal(parse({ sessionId: 's', kind: 'message', text: '€'.repeat(65_536) }).type, EventType.SessionActivity);
    assert.throws(() => parse({ sessionId: 's', kind: 'message', text: 'x'.repeat(65_537) }), (err: unknown) => err instanceof ContractError && err.field === 'data.text' && err.code === 'INVALID_FIELD');
  });

  it('accepts an embedding of 8192 numbers and rejects 8193', () => {
    const embedding = Array.from({ length: 8192 }, (_, i) => Math.sin(i) / 3);
    assert.equal(parse({ sessionId: 's', kind: 'output', embedding }).type, EventType.SessionActivity);
    assert.throws(() => parse({ sessionId: 's', kind: 'output', embedding: [...embedding, 0] }), (err: unknown) => err instanceof ContractError && err.field === 'data.embedding');
  });

  it('rejects non-finite numbers in an embedding handed over already parsed', () => {
    const message = HTTP.binary(activity({ sessionId: 's', kind: 'output' }));
    const req = { headers: message.headers as Record<string, string>, body: { sessionId: 's', kind: 'output', embedding: [0.5, Number.POSITIVE_INFINITY] } };
    rejects(req, DEFAULT_MAX, 'INVALID_FIELD', 'data.embedding[1]');
  });
});
