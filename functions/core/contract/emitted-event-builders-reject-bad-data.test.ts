// An event we emit is parsed by another of our functions, so the builder holds it to the same schema the
// parser does, sets what every emitted event must carry (subject, dataschema, millisecond UTC time), and
// refuses anything else at the point it is built.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { HTTP } from 'cloudevents';
import { ContractError, type ContractErrorCode } from '../errors.ts';
import { EventType, EventTypes, catalogue, schemaIdOf, sendersOf, sourceOf, type DataOf, type EmittedType, type Workload } from './events.ts';
import { buildEvent } from './build.ts';
import { parseInbound, type RawRequest } from './parse.ts';

const SOURCE = '/session-reaper/destroy-dispatch';
const TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
const emitted = catalogue.filter((entry) => entry.direction === 'emitted').map((entry) => entry.type);

function exampleOf<T extends EmittedType>(type: T): DataOf<T> {
  const [example] = (EventTypes[type] as { examples: DataOf<T>[] }).examples;
  assert.ok(example, `${type} has no example`);
  return structuredClone(example);
}

function rejects(build: () => unknown, code: ContractErrorCode, field: string): void {
  assert.throws(build, (err: unknown) => {
    assert.ok(err instanceof ContractError, `expected a ContractError, got ${String(err)}`);
    assert.deepEqual({ code: err.code, field: err.field }, { code, field });
    return true;
  });
}

describe('buildEvent', () => {
  for (const type of emitted) {
    it(`builds ${type} that parses back to the same data in both encodings`, () => {
      const data = exampleOf(type);
      // The source of one of the type's senders: a consumer refuses an internal type from anyone else.
      const source = sourceOf(sendersOf(type)[0] as Workload);
      const ce = buildEvent(type, data, { source, traceparent: TRACEPARENT, tracestate: 'k=v' });
      assert.equal(ce.type, type);
      assert.equal(ce.subject, data.sessionId);
      assert.equal(ce.dataschema, schemaIdOf(type));
      assert.equal(ce.datacontenttype, 'application/json');
      assert.equal(ce.specversion, '1.0');
      assert.match(ce.time ?? '', /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
      for (const encode of [HTTP.binary, HTTP.structured]) {
        const ev = parseInbound(encode(ce) as RawRequest, { maxBytes: 1_048_576, accept: [type] });
        assert.deepEqual(ev.data, data);
        assert.equal(ev.id, ce.id);
        assert.equal(ev.source, source);
        assert.equal(ev.traceparent, TRACEPARENT);
        assert.equal(ev.tracestate, 'k=v');
      }
    });
  }

  it('gives each event a fresh id unless one is given, and keeps the given time', () => {
    const data = exampleOf(EventType.DestroyResume);
    const a = buildEvent(EventType.DestroyResume, data, { source: SOURCE });
    const b = buildEvent(EventType.DestroyResume, data, { source: SOURCE });
    assert.notEqual(a.id, b.id);
    const c = buildEvent(EventType.DestroyResume, data, { source: SOURCE, id: 'sess-7f3a9c:1:resume:gpu_release_requested', time: new Date(Date.UTC(2026, 10, 21, 6, 45, 4, 5)) });
    assert.equal(c.id, 'sess-7f3a9c:1:resume:gpu_release_requested');
    assert.equal(c.time, '2026-11-21T06:45:04.005Z');
    assert.equal(c['traceparent'], undefined);
  });

  const bad: Array<{ name: string; build: () => unknown; code: ContractErrorCode; field: string }> = [
    {
      name: 'an emitted instant without milliseconds',
      build: () => buildEvent(EventType.SessionExpired, { ...exampleOf(EventType.SessionExpired), detectedAt: '2026-11-21T06:45:04Z' }, { source: SOURCE }),
      code: 'INVALID_FIELD',
      field: 'data.detectedAt',
    },
    {
      name: 'an emitted instant with an offset instead of UTC',
      build: () => buildEvent(EventType.SessionExpired, { ...exampleOf(EventType.SessionExpired), deadline: '2026-11-21T07:45:04.123+01:00' }, { source: SOURCE }),
      code: 'INVALID_FIELD',
      field: 'data.deadline',
    },
    {
      name: 'a score above 1',
      build: () => buildEvent(EventType.SessionIdle, { ...exampleOf(EventType.SessionIdle), score: 1.5 }, { source: SOURCE }),
      code: 'INVALID_FIELD',
      field: 'data.score',
    },
    {
      name: 'incarnation 0',
      build: () => buildEvent(EventType.GpuReleased, { ...exampleOf(EventType.GpuReleased), incarnation: 0 }, { source: SOURCE }),
      code: 'INVALID_FIELD',
      field: 'data.incarnation',
    },
    {
      name: 'a fractional byte count',
      build: () => buildEvent(EventType.GpuReleased, { ...exampleOf(EventType.GpuReleased), freedBytes: 1.5 }, { source: SOURCE }),
      code: 'INVALID_FIELD',
      field: 'data.freedBytes',
    },
    {
      name: 'a bad session id',
      build: () => buildEvent(EventType.GpuReleaseFailed, { ...exampleOf(EventType.GpuReleaseFailed), sessionId: 'a b' }, { source: SOURCE }),
      code: 'BAD_SESSION_ID',
      field: 'data.sessionId',
    },
    {
      name: 'a property the schema does not have',
      build: () => buildEvent(EventType.GpuReleaseRequested, { ...exampleOf(EventType.GpuReleaseRequested), priority: 1 } as DataOf<typeof EventType.GpuReleaseRequested>, { source: SOURCE }),
      code: 'UNKNOWN_FIELD',
      field: 'data.priority',
    },
    {
      name: 'a timeline entry in the wrong shape',
      build: () => buildEvent(EventType.SessionDestroyed, { ...exampleOf(EventType.SessionDestroyed), timeline: [{ stage: 'claimed', at: 'yesterday' }] }, { source: SOURCE }),
      code: 'INVALID_FIELD',
      field: 'data.timeline[0].at',
    },
    {
      name: 'a missing required field',
      build: () => buildEvent(EventType.DestroyResume, { sessionId: 's', incarnation: 1 } as DataOf<typeof EventType.DestroyResume>, { source: SOURCE }),
      code: 'MISSING_FIELD',
      field: 'data.stage',
    },
    {
      name: 'an inbound type',
      // @ts-expect-error session.opened is sent to the system, never emitted by it
      build: () => buildEvent(EventType.SessionOpened, { sessionId: 's', placement: { node: 'n', runtimeUrl: 'http://r' } }, { source: SOURCE }),
      code: 'UNKNOWN_TYPE',
      field: 'ce.type',
    },
    {
      name: 'an empty source',
      build: () => buildEvent(EventType.DestroyResume, exampleOf(EventType.DestroyResume), { source: '' }),
      code: 'NOT_A_CLOUDEVENT',
      field: 'ce.source',
    },
    {
      name: 'a malformed traceparent',
      build: () => buildEvent(EventType.DestroyResume, exampleOf(EventType.DestroyResume), { source: SOURCE, traceparent: '00-abc' }),
      code: 'INVALID_FIELD',
      field: 'ce.traceparent',
    },
    {
      name: 'an invalid date',
      build: () => buildEvent(EventType.DestroyResume, exampleOf(EventType.DestroyResume), { source: SOURCE, time: new Date(Number.NaN) }),
      code: 'INVALID_FIELD',
      field: 'ce.time',
    },
  ];
  for (const { name, build, code, field } of bad) {
    it(`rejects ${name} (${code} at ${field})`, () => rejects(build, code, field));
  }

  it('is typed: data of the wrong shape does not compile', () => {
    // @ts-expect-error lagMs must be a number
    rejects(() => buildEvent(EventType.SessionExpired, { ...exampleOf(EventType.SessionExpired), lagMs: '8' }, { source: SOURCE }), 'INVALID_FIELD', 'data.lagMs');
  });
});
