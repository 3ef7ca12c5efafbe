// What the fixtures cannot express: bodies that are not JSON at all, requests that are not CloudEvents, the
// forms real HTTP stacks produce (header case, charset parameters, repeated headers), the `accept` filter, and
// trace context propagation.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { CloudEvent, HTTP } from 'cloudevents';
import { ContractError, type ContractErrorCode } from '../errors.ts';
import { EventType } from './events.ts';
import { parseInbound, validateData, type RawRequest } from './parse.ts';

const MAX = 1_048_576;
const TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
const OTHER_TRACEPARENT = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';

const binaryHeaders = (extra: Record<string, string> = {}): Record<string, string> => ({
  'content-type': 'application/json',
  'ce-specversion': '1.0',
  'ce-id': 'evt-1',
  'ce-source': '/inference-pipeline/gateway',
  'ce-type': EventType.SessionHeartbeat,
  ...extra,
});

const structuredEnvelope = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  specversion: '1.0',
  id: 'evt-1',
  source: '/inference-pipeline/gateway',
  type: EventType.SessionHeartbeat,
  data: { sessionId: 'sess-1' },
  ...extra,
});

const structured = (envelope: Record<string, unknown>, contentType = 'application/cloudevents+json'): RawRequest => ({
  headers: { 'content-type': contentType },
  body: JSON.stringify(envelope),
});

function rejects(req: RawRequest, code: ContractErrorCode, field: string, accept?: readonly (typeof EventType)[keyof typeof EventType][]): void {
  assert.throws(
    () => parseInbound(req, { maxBytes: MAX, ...(accept ? { accept } : {}) }),
    (err: unknown) => {
      assert.ok(err instanceof ContractError, `expected a ContractError, got ${String(err)}`);
      assert.deepEqual({ code: err.code, field: err.field }, { code, field });
      return true;
    },
  );
}

describe('bodies that are not JSON', () => {
  it('rejects a truncated structured body as BAD_JSON at body', () => {
    rejects({ headers: { 'content-type': 'application/cloudevents+json' }, body: '{"specversion":"1.0","id":' }, 'BAD_JSON', 'body');
    rejects({ headers: { 'content-type': 'application/cloudevents+json' }, body: Buffer.from('{"specversion":"1.0",') }, 'BAD_JSON', 'body');
  });

  it('rejects a truncated binary body as BAD_JSON at data', () => {
    rejects({ headers: binaryHeaders(), body: '{"sessionId":' }, 'BAD_JSON', 'data');
    rejects({ headers: binaryHeaders(), body: 'sess-1' }, 'BAD_JSON', 'data');
  });

  it('rejects a body that is not UTF-8 as BAD_JSON', () => {
    rejects({ headers: binaryHeaders(), body: Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d]) }, 'BAD_JSON', 'data');
  });
});

describe('requests that are not CloudEvents', () => {
  it('rejects plain JSON with no CloudEvent headers, naming the first missing attribute', () => {
    rejects({ headers: { 'content-type': 'application/json' }, body: JSON.stringify({ sessionId: 'sess-1' }) }, 'NOT_A_CLOUDEVENT', 'ce.specversion');
  });

  it('rejects a binary event missing ce-source', () => {
    const { 'ce-source': _source, ...headers } = binaryHeaders();
    rejects({ headers, body: '{"sessionId":"sess-1"}' }, 'NOT_A_CLOUDEVENT', 'ce.source');
  });

  it('rejects a structured body that is not an object, or is absent', () => {
    rejects({ headers: { 'content-type': 'application/cloudevents+json' }, body: '[{"specversion":"1.0"}]' }, 'NOT_A_CLOUDEVENT', 'body');
    rejects({ headers: { 'content-type': 'application/cloudevents+json' }, body: undefined }, 'NOT_A_CLOUDEVENT', 'body');
  });

  it('rejects batches and structured formats other than JSON', () => {
    rejects(structured(structuredEnvelope(), 'application/cloudevents-batch+json'), 'NOT_A_CLOUDEVENT', 'content-type');
    rejects(structured(structuredEnvelope(), 'application/cloudevents+avro'), 'NOT_A_CLOUDEVENT', 'content-type');
  });

  it('rejects an attribute of the wrong type', () => {
    rejects(structured(structuredEnvelope({ id: 42 })), 'NOT_A_CLOUDEVENT', 'ce.id');
  });

  it('rejects an extension whose value is outside the CloudEvents type system', () => {
    rejects(structured(structuredEnvelope({ tenant: { name: 'acme' } })), 'NOT_A_CLOUDEVENT', 'ce.tenant');
    rejects(structured(structuredEnvelope({ ratio: 0.5 })), 'NOT_A_CLOUDEVENT', 'ce.ratio');
  });

  it('rejects base64 binary data', () => {
    rejects(structured(structuredEnvelope({ data: undefined, data_base64: Buffer.from('{"sessionId":"s"}').toString('base64') })), 'INVALID_FIELD', 'data');
  });
});

describe('what real HTTP stacks send', () => {
  it('accepts mixed-case header names and content types with parameters', () => {
    const headers = Object.fromEntries(Object.entries(binaryHeaders({ 'content-type': 'Application/JSON;charset=UTF-8' })).map(([k, v]) => [k.toUpperCase(), v]));
    const ev = parseInbound({ headers, body: '{"sessionId":"sess-1","seq":3}' }, { maxBytes: MAX });
    assert.deepEqual(ev.data, { sessionId: 'sess-1', seq: 3 });

    const st = parseInbound(structured(structuredEnvelope(), 'application/cloudevents+json;charset=utf-8'), { maxBytes: MAX });
    assert.equal(st.id, 'evt-1');
  });

  it('takes a binary event without a content type to carry JSON', () => {
    const { 'content-type': _ct, ...headers } = binaryHeaders();
    assert.deepEqual(parseInbound({ headers, body: '{"sessionId":"sess-1"}' }, { maxBytes: MAX }).data, { sessionId: 'sess-1' });
  });

  it('ignores undefined headers and joins repeated ones', () => {
    const headers = { ...binaryHeaders(), 'x-absent': undefined, 'x-repeated': ['a', 'b'] };
    assert.equal(parseInbound({ headers, body: '{"sessionId":"sess-1"}' }, { maxBytes: MAX }).type, EventType.SessionHeartbeat);
  });

  it('accepts application/*+json data', () => {
    assert.equal(parseInbound({ headers: binaryHeaders({ 'content-type': 'application/vnd.acme+json' }), body: '{"sessionId":"s"}' }, { maxBytes: MAX }).id, 'evt-1');
  });

  it('rejects a binary event whose data is missing', () => {
    rejects({ headers: binaryHeaders(), body: '' }, 'MISSING_FIELD', 'data');
    rejects({ headers: binaryHeaders(), body: undefined }, 'MISSING_FIELD', 'data');
  });

  it('normalises the time attribute to UTC and leaves it unset when the producer did not set it', () => {
    const withOffset = parseInbound(structured(structuredEnvelope({ time: '2026-11-21T07:45:04+01:00' })), { maxBytes: MAX });
    assert.equal(withOffset.time, '2026-11-21T06:45:04.000Z');
    assert.equal(parseInbound(structured(structuredEnvelope()), { maxBytes: MAX }).time, undefined);
    assert.equal(parseInbound({ headers: binaryHeaders(), body: '{"sessionId":"s"}' }, { maxBytes: MAX }).time, undefined);
  });
});

describe('accept: the types a function consumes', () => {
  const opened = new CloudEvent({
    source: '/inference-pipeline/gateway',
    type: EventType.SessionOpened,
    data: { sessionId: 'sess-1', placement: { node: 'n', runtimeUrl: 'http://r:8000' } },
  });

  it('rejects a contract type the function does not consume as UNKNOWN_TYPE', () => {
    rejects(HTTP.binary(opened) as RawRequest, 'UNKNOWN_TYPE', 'ce.type', [EventType.SessionHeartbeat]);
  });

  it('accepts events another function emitted when they are listed', () => {
    const expired = new CloudEvent({
      source: '/session-reaper/deadline-engine',
      type: EventType.SessionExpired,
      subject: 's',
      data: { sessionId: 's', incarnation: 1, deadline: '2026-11-21T06:45:04.123Z', detectedAt: '2026-11-21T06:45:04.130Z', lagMs: 7 },
    });
    const ev = parseInbound(HTTP.structured(expired) as RawRequest, { maxBytes: MAX, accept: [EventType.SessionExpired, EventType.SessionClosed] });
    assert.equal(ev.type, EventType.SessionExpired);
  });

  it('narrows the data by type', () => {
    const ev = parseInbound(HTTP.binary(opened) as RawRequest, { maxBytes: MAX, accept: [EventType.SessionOpened, EventType.SessionHeartbeat] });
    // The switch is checked by tsc: each branch sees only its own data shape.
    switch (ev.type) {
      case EventType.SessionOpened:
        assert.equal(ev.data.placement.runtimeUrl, 'http://r:8000');
        break;
      case EventType.SessionHeartbeat:
        assert.fail(`unexpected heartbeat seq ${ev.data.seq}`);
    }
  });

  it('refuses an internal type from any source but its senders\', and an inbound type claiming one of ours', () => {
    const idle = (source: string) => new CloudEvent({
      source, type: EventType.SessionIdle, subject: 's', data: { sessionId: 's', incarnation: 1, score: 0.9, components: { behavior: 1, semantic: 1, timing: 1 } },
    });
    const accept = [EventType.SessionIdle, EventType.SessionClosed];
    assert.equal(parseInbound(HTTP.binary(idle('/session-reaper/idle-checker')) as RawRequest, { maxBytes: MAX, accept }).type, EventType.SessionIdle);
    for (const source of ['/inference-pipeline/gateway', '/session-reaper/deadline-engine', '/session-reaper/idle-checker/x', 'https://evil.example/session-reaper/idle-checker']) {
      rejects(HTTP.binary(idle(source)) as RawRequest, 'FORBIDDEN_SOURCE', 'ce.source', accept);
    }
    const closed = new CloudEvent({ source: '/session-reaper/destroy-dispatch', type: EventType.SessionClosed, data: { sessionId: 's' } });
    rejects(HTTP.structured(closed) as RawRequest, 'FORBIDDEN_SOURCE', 'ce.source', accept);
  });

  it('validateData refuses a type outside the contract', () => {
    assert.throws(() => validateData('dev.sessionreaper.nope' as typeof EventType.SessionClosed, { sessionId: 's' }), (err: unknown) => err instanceof ContractError && err.code === 'UNKNOWN_TYPE');
  });
});

describe('trace context', () => {
  it('takes traceparent and tracestate from the distributed-tracing extension', () => {
    const ev = parseInbound({ headers: binaryHeaders({ 'ce-traceparent': TRACEPARENT, 'ce-tracestate': 'k=v', traceparent: OTHER_TRACEPARENT }), body: '{"sessionId":"s"}' }, { maxBytes: MAX });
    assert.equal(ev.traceparent, TRACEPARENT);
    assert.equal(ev.tracestate, 'k=v');
  });

  it('falls back to the traceparent header of the request', () => {
    const ev = parseInbound({ headers: { ...structured(structuredEnvelope()).headers, traceparent: OTHER_TRACEPARENT, tracestate: 'a=b' }, body: JSON.stringify(structuredEnvelope()) }, { maxBytes: MAX });
    assert.equal(ev.traceparent, OTHER_TRACEPARENT);
    assert.equal(ev.tracestate, 'a=b');
  });

  it('drops a malformed traceparent instead of rejecting the event', () => {
    const ev = parseInbound(structured(structuredEnvelope({ traceparent: 'not-a-traceparent', tracestate: 'k=v' })), { maxBytes: MAX });
    assert.equal(ev.traceparent, undefined);
    assert.equal(ev.tracestate, undefined);
  });
});
