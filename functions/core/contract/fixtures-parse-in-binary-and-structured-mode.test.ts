// Every fixture is replayed in both HTTP encodings of CloudEvents and with the body as a framework may hand it
// over (text, Buffer, parsed JSON, or parsed JSON plus rawBody): valid ones must decode to exactly their data,
// invalid ones must fail with the code and field tests/fixtures/events/invalid/expectations.json names.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CloudEvent, HTTP } from 'cloudevents';
import { ContractError, type ContractErrorCode } from '../errors.ts';
import { EventTypes, catalogue, isEmittedType } from './events.ts';
import { parseInbound, type RawRequest } from './parse.ts';

const FIXTURES = join(import.meta.dirname, '..', '..', '..', 'tests', 'fixtures', 'events');
const MAX_EVENT_BYTES = 1_048_576;
const ENVELOPE = ['specversion', 'id', 'source', 'type', 'time'] as const;

type Fixture = Record<string, unknown>;
interface Expectation {
  code: ContractErrorCode;
  field: string;
  /** Limit to parse with instead of MAX_EVENT_BYTES, so a size fixture stays small. */
  maxBytes?: number;
}

function readFixtures(dir: string): Array<[string, Fixture]> {
  return readdirSync(join(FIXTURES, dir))
    .filter((name) => name.endsWith('.json') && name !== 'expectations.json')
    .sort()
    .map((name) => [name, JSON.parse(readFileSync(join(FIXTURES, dir, name), 'utf8')) as Fixture]);
}

const valid = readFixtures('valid');
const invalid = readFixtures('invalid');
const expectations = JSON.parse(readFileSync(join(FIXTURES, 'invalid', 'expectations.json'), 'utf8')) as Record<string, Expectation>;

type Mode = 'binary' | 'structured';
type BodyForm = 'text' | 'buffer' | 'parsed' | 'rawBody';

// The SDK encodes the fixture; then the envelope attributes are made to match the fixture exactly, because the
// SDK would invent a missing id, time or specversion and cannot encode an unparseable time.
function encode(fixture: Fixture, mode: Mode): { headers: Record<string, string>; body: string | undefined } {
  const { time: _time, ...rest } = fixture;
  const message = mode === 'binary' ? HTTP.binary(new CloudEvent(rest, false)) : HTTP.structured(new CloudEvent(rest, false));
  const headers = { ...(message.headers as Record<string, string>) };
  if (mode === 'binary') {
    for (const name of ENVELOPE) {
      if (fixture[name] === undefined) delete headers[`ce-${name}`];
      else headers[`ce-${name}`] = asText(fixture[name]);
    }
    return { headers, body: message.body === undefined ? undefined : asText(message.body) };
  }
  const envelope = JSON.parse(String(message.body)) as Fixture;
  for (const name of ENVELOPE) {
    if (fixture[name] === undefined) delete envelope[name];
    else envelope[name] = fixture[name];
  }
  return { headers, body: JSON.stringify(envelope) };
}

function asText(value: unknown): string {
  return typeof value === 'string' ? value : JSON.stringify(value);
}

function request(fixture: Fixture, mode: Mode, form: BodyForm): RawRequest {
  const { headers, body } = encode(fixture, mode);
  if (body === undefined) return { headers, body: undefined };
  switch (form) {
    case 'text':
      return { headers, body };
    case 'buffer':
      return { headers, body: Buffer.from(body) };
    case 'parsed':
      return { headers, body: JSON.parse(body) as object };
    case 'rawBody':
      return { headers, body: {}, rawBody: Buffer.from(body) };
  }
}

// A body parsed by a framework is always an object; null or an array would have been rejected upstream.
function formsFor(fixture: Fixture, mode: Mode): BodyForm[] {
  const { body } = encode(fixture, mode);
  const parsed = body === undefined ? undefined : (JSON.parse(body) as unknown);
  const parsable = typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed);
  return parsable ? ['text', 'buffer', 'parsed', 'rawBody'] : ['text', 'buffer', 'rawBody'];
}

describe('valid fixtures decode to their data', () => {
  for (const [name, fixture] of valid) {
    for (const mode of ['binary', 'structured'] as const) {
      for (const form of formsFor(fixture, mode)) {
        it(`${name} (${mode}, ${form})`, () => {
          const ev = parseInbound(request(fixture, mode, form), { maxBytes: MAX_EVENT_BYTES });
          assert.equal(ev.type, fixture.type);
          assert.deepEqual(ev.data, fixture.data);
          assert.equal(ev.id, fixture.id);
          assert.equal(ev.source, fixture.source);
          assert.equal(ev.time, fixture.time);
          assert.equal(ev.traceparent, fixture.traceparent);
          assert.equal(ev.tracestate, fixture.tracestate);
          assert.equal(ev.ce.subject, fixture.subject);
        });
      }
    }
  }
});

describe('invalid fixtures are rejected naming the field', () => {
  for (const [name, fixture] of invalid) {
    const expected = expectations[name];
    for (const mode of ['binary', 'structured'] as const) {
      for (const form of formsFor(fixture, mode)) {
        it(`${name} (${mode}, ${form}) -> ${expected?.code} at ${expected?.field}`, () => {
          assert.ok(expected, `${name} has no entry in expectations.json`);
          assert.throws(
            () => parseInbound(request(fixture, mode, form), { maxBytes: expected.maxBytes ?? MAX_EVENT_BYTES }),
            (err: unknown) => {
              assert.ok(err instanceof ContractError, `expected a ContractError, got ${String(err)}`);
              assert.deepEqual({ code: err.code, field: err.field }, { code: expected.code, field: expected.field });
              assert.equal(err.status, 400);
              return true;
            },
          );
        });
      }
    }
  }
});

describe('the fixtures cover the contract', () => {
  it('has a valid fixture for every event type, inbound and emitted', () => {
    const covered = new Set(valid.map(([, fixture]) => fixture.type));
    assert.deepEqual(
      Object.keys(EventTypes).filter((type) => !covered.has(type)),
      [],
    );
    assert.equal(catalogue.length, Object.keys(EventTypes).length);
  });

  it('gives emitted fixtures the subject a builder sets', () => {
    for (const [name, fixture] of valid) {
      if (!isEmittedType(fixture.type)) continue;
      assert.equal(fixture.subject, (fixture.data as { sessionId: string }).sessionId, name);
    }
  });

  it('has exactly one expectation per invalid fixture', () => {
    assert.deepEqual(Object.keys(expectations).sort(), invalid.map(([name]) => name).sort());
  });

  it('exercises every rejection code except BAD_JSON, which no JSON fixture can hold', () => {
    const codes = new Set(Object.values(expectations).map((e) => e.code));
    const all: ContractErrorCode[] = ['NOT_A_CLOUDEVENT', 'UNKNOWN_TYPE', 'MISSING_FIELD', 'INVALID_FIELD', 'UNKNOWN_FIELD', 'BAD_SESSION_ID', 'TOO_LARGE'];
    assert.deepEqual(all.filter((code) => !codes.has(code)), []);
  });
});
