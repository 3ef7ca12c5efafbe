// A fuzz test of the four functions as deployed (their own processes, real Redis): random and hostile requests —
// every contract type and others, sources claimed or forged, tenants, session ids shaped like internal keys, numbers
// at and past their bounds, unknown and missing fields, garbage JSON, compressed and oversized bodies, batches — as
// anyone past the Broker might send them. Every answer is one the contract documents (204, 400, 403, 413, 415, or a
// generic 503 that the Broker retries; never a 500, never an internal message), and the session invariants hold: a
// victim session of another tenant is untouched, no GPU release is booked (none was requested of a runtime by
// anyone who knows its token), and the ledger balances. The Broker keeps our own sources for our own workloads, so
// the generator never forges an internal event under the source of one of its senders.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import fc from 'fast-check';
import { EventType, OWN_SOURCE_PREFIX, isEmittedType, sendersOf, sourceOf, type Workload } from '../../functions/core/contract/events.ts';
import { auditLedger } from '../../functions/core/ledger.ts';
import { startFunctionProcess, type FunctionProcess } from '../../functions/activity-score/function-process-test-support.ts';
import { coreEnv, testCore, type TestCore } from '../support/core.ts';
import { startEventSink, type EventSink } from '../support/event-sink.ts';
import { runtimesEnv } from '../support/runtimes.ts';

const FUNCTIONS = ['heartbeat-timeout', 'activity-score', 'destroy-dispatch', 'gpu-release'] as const;
const VICTIM = 'victim-session';
const REGISTERED = 'http://runtime-a.test:8000';
const DOCUMENTED = new Set([204, 400, 403, 413, 415, 503]);

const sessionIds = fc.oneof(
  fc.constantFrom(VICTIM, 'm:x:1', `!m:${VICTIM}:1`, 'fuzz-1', 'fuzz-2', 'a'.repeat(128), 'a'.repeat(129), '-lead', 'has/slash', ''),
  fc.string({ maxLength: 12 }),
);
const numbers = fc.oneof(
  fc.constantFrom(0, 1, -1, 100, 999, 86_400_000, 86_400_001, 4 * 1024 ** 4, 4 * 1024 ** 4 + 1, 2 ** 53 - 1, 2 ** 53, 1e300, 0.5),
  fc.integer(),
  fc.double({ noNaN: true }),
);
const strings = fc.oneof(fc.string({ maxLength: 40 }), fc.constantFrom('', 'x'.repeat(300), '\u0000', '💥', '<script>'));
const runtimeUrls = fc.constantFrom(REGISTERED, 'http://169.254.169.254/', 'http://2852039166/', 'http://[::ffff:7f00:1]:6379/', 'ftp://x', 'http://evil.example:8000', 'not a url');
const placement = fc.record({ node: fc.oneof(fc.constantFrom('gpu-node-a', 'gpu-node-b'), strings), runtimeUrl: runtimeUrls, gpuBytes: numbers }, { requiredKeys: ['node', 'runtimeUrl'] });
const data = fc.record(
  {
    sessionId: sessionIds, placement, incarnation: numbers, attempt: numbers, token: fc.constantFrom('q3Zp0c8Wm1tYb6Nf2LxR-A', 'short', ''),
    heartbeatIntervalMs: numbers, missedBeats: numbers, durationMs: numbers, reason: strings, kind: fc.constantFrom('input', 'message', 'nope'),
    text: strings, release: fc.boolean(), requestId: strings, freedBytes: numbers, node: strings, error: strings, retryable: fc.boolean(),
    stage: fc.constantFrom('claimed', 'gpu_released', 'x'), seq: numbers, tenant: strings, bogus: strings,
  },
  { requiredKeys: [] },
);
const types = fc.oneof(fc.constantFrom(...Object.values(EventType)), fc.constantFrom('dev.sessionreaper.nope', 'com.example.x', ''));
// Sources anyone past the Broker might use: ours only for inbound types (which must refuse them).
const sources = fc.oneof(fc.constantFrom('/pipeline', '//evil/x', '/session-reaper/', '/session-reaper/nobody', 'https://a.example/b'), strings);
const request = fc.record({
  target: fc.constantFrom(...FUNCTIONS),
  type: types,
  source: sources,
  tenant: fc.option(fc.constantFrom('acme', 'umbrella', 'x'.repeat(200)), { nil: undefined }),
  id: fc.oneof(fc.uuid(), fc.constantFrom('', 'same-id')),
  data: fc.oneof({ weight: 4, arbitrary: data }, { weight: 1, arbitrary: fc.jsonValue() }),
  mode: fc.constantFrom('binary', 'structured', 'batch', 'garbage', 'gzip', 'huge'),
});

type Request = typeof request extends fc.Arbitrary<infer R> ? R : never;

/** The request as sent: headers and body for its mode. */
function encode(r: Request): { headers: Record<string, string>; body: Buffer | string } {
  // The Broker keeps our sources for our workloads: an internal type under one of its own senders' sources is not sent.
  const ownSender = isEmittedType(r.type) && sendersOf(r.type).some((s) => r.source === sourceOf(s as Workload));
  const source = ownSender ? '/pipeline' : r.source;
  const attrs = { specversion: '1.0', id: r.id, source, type: r.type, ...(r.tenant === undefined ? {} : { tenant: r.tenant }) };
  switch (r.mode) {
    case 'structured':
      return { headers: { 'content-type': 'application/cloudevents+json' }, body: JSON.stringify({ ...attrs, datacontenttype: 'application/json', data: r.data }) };
    case 'batch':
      return { headers: { 'content-type': 'application/cloudevents-batch+json' }, body: JSON.stringify([{ ...attrs, data: r.data }, { ...attrs, id: `${r.id}-2`, data: r.data }]) };
    case 'garbage':
      return { headers: { 'content-type': 'application/json', 'ce-specversion': '1.0', 'ce-id': 'g', 'ce-source': '/g', 'ce-type': r.type }, body: '{"sessionId": "x",' };
    case 'gzip':
      return { headers: { 'content-type': 'application/json', 'content-encoding': 'gzip', ...ceHeaders(attrs) }, body: gzipSync(JSON.stringify(r.data)) };
    case 'huge':
      return { headers: { 'content-type': 'application/json', ...ceHeaders(attrs) }, body: JSON.stringify({ pad: 'x'.repeat(2 * 1024 * 1024) }) };
    default:
      return { headers: { 'content-type': 'application/json', ...ceHeaders(attrs) }, body: JSON.stringify(r.data) };
  }
}

function ceHeaders(attrs: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(attrs).filter(([, v]) => /^[\x20-\x7e]*$/.test(v)).map(([k, v]) => [`ce-${k}`, v]));
}

describe('hostile events get a documented answer and change nothing', () => {
  let core: TestCore;
  let sink: EventSink;
  const fns = new Map<(typeof FUNCTIONS)[number], FunctionProcess>();

  before(async () => {
    core = await testCore('single', { buckets: 32 });
    sink = await startEventSink();
    const env = coreEnv(core, 'single', { ...runtimesEnv(), K_SINK: sink.url, LOG_LEVEL: 'silent', RELEASE_RETRIES: '0' });
    for (const fn of FUNCTIONS) fns.set(fn, await startFunctionProcess(fn, env));
    const now = Date.now();
    const opened = await core.store.open({
      sessionId: VICTIM, fingerprint: 'victim', now, liveFrom: now, windowMs: 3_600_000, tenant: 'victim', placement: { node: 'gpu-node-a', runtimeUrl: REGISTERED, gpuBytes: 1000 },
    });
    assert.equal(opened.code, 'OPENED');
  });
  after(async () => {
    for (const fn of fns.values()) await fn.stop();
    await sink.close();
    await core.close();
  });

  test('every answer is documented, and the victim, the ledger and every release stay as they were', async () => {
    const victimBefore = await core.store.inspect(VICTIM);
    const ledgerBefore = await auditLedger(core.redis, core.keys);
    await fc.assert(
      fc.asyncProperty(request, async (r) => {
        const { headers, body } = encode(r);
        const res = await fetch(fns.get(r.target)!.url, { method: 'POST', headers, body });
        const text = await res.text();
        assert.ok(DOCUMENTED.has(res.status), `${r.target} answered ${res.status}: ${text}`);
        if (res.status >= 500) assert.deepEqual(JSON.parse(text), { error: 'UNAVAILABLE', reason: 'a dependency is unavailable; retry later' });
        assert.doesNotMatch(text, /redis|ECONNREFUSED|127\.0\.0\.1|stack|at \w+ \(/i, 'no internals in an answer');
        const victim = await core.store.inspect(VICTIM);
        assert.deepEqual(victim, victimBefore, 'the victim session of another tenant is untouched');
      }),
      { numRuns: 1000, seed: Number(process.env.SR_FUZZ_SEED ?? 20261206) },
    );
    const ledger = await auditLedger(core.redis, core.keys);
    assert.ok(ledger.balanced, ledger.problems.join('; '));
    assert.equal(ledger.totals.releasedBytes, ledgerBefore.totals.releasedBytes, 'no release was booked');
    assert.equal(ledger.totals.releases, ledgerBefore.totals.releases);
    // Nothing that was emitted claims a source that is not its sender's, and nothing is a release answer.
    for (const e of sink.events) {
      assert.ok(e.event.source.startsWith(OWN_SOURCE_PREFIX), `${e.event.type} from ${e.event.source}`);
      assert.notEqual(e.event.type, EventType.GpuReleased);
    }
  });
});
