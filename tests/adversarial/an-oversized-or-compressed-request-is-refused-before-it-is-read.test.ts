// Finding 5: functions-framework parses bodies up to 1 GiB before MAX_EVENT_BYTES is checked, and a batch could be
// 1000 x 1 MiB, against pods of 256 MiB: one large POST could OOM-kill a pod, again at each redelivery. Now a
// function's process bounds every request before its body is held (functions/framework/serve.ts), and so does the
// local Broker: a declared length over the limit is answered 413 at once, a chunked body once it passes the limit,
// a compressed one 415; the sender reads the answer (its upload is drained, not cut), and the process stays small
// and healthy. Numbers in events have bounds, so no script can fail half way on them.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { EventType } from '../../functions/core/contract/events.ts';
import { startLocalBroker, type LocalBroker } from '../../tools/local-broker/broker.ts';
import { tempStoreDir } from '../../tools/local-broker/test-support.ts';
import { startHeartbeatFunction, type RunningProcess } from '../../functions/heartbeat-timeout/heartbeat-test-support.ts';
import { coreEnv, testCore, type TestCore } from '../support/core.ts';
import { startEventSink, type EventSink } from '../support/event-sink.ts';
import { runtimesEnv } from '../support/runtimes.ts';
import { uploadBytes, type UploadAnswer } from '../support/upload.ts';
import { forge, post } from './attack-support.ts';

const MiB = 1024 * 1024;

/** Resident memory of a process, in bytes (Linux). */
function rssOf(pid: number): number {
  const kb = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
  return Number(kb) * 1024;
}

/**
 * POSTs `total` bytes of a heartbeat, declared or chunked; resolves with the status and body the server answered,
 * which the sender must be able to read (no EPIPE, no reset).
 */
function upload(url: string, total: number, opts: { chunked?: boolean; headers?: Record<string, string> } = {}): Promise<UploadAnswer> {
  const headers = { 'content-type': 'application/json', 'ce-specversion': '1.0', 'ce-id': 'big', 'ce-source': '/attacker', 'ce-type': EventType.SessionHeartbeat, ...opts.headers };
  return uploadBytes(url, total, { headers, chunked: opts.chunked === true });
}

describe('an oversized or compressed request is refused before it is read', () => {
  let core: TestCore;
  let sink: EventSink;
  let fn: RunningProcess;
  let broker: LocalBroker;

  before(async () => {
    core = await testCore('single', { buckets: 32 });
    sink = await startEventSink();
    fn = await startHeartbeatFunction(coreEnv(core, 'single', { ...runtimesEnv(), K_SINK: sink.url, LOG_LEVEL: 'silent' }));
    broker = await startLocalBroker({ subscribers: {}, deadLetterDir: tempStoreDir('adversarial') });
  });
  after(async () => {
    await fn.stop();
    await broker.stop();
    await sink.close();
    await core.close();
  });

  test('a function answers a body over MAX_EVENT_BYTES with a readable 413, and stays small and healthy', async () => {
    const pid = fn.child.pid!;
    const before = rssOf(pid);
    const declared = await upload(fn.url, 200 * MiB);
    assert.equal(declared.status, 413, declared.body);
    assert.equal((JSON.parse(declared.body) as { error: string }).error, 'TOO_LARGE');
    const chunked = await upload(fn.url, 50 * MiB, { chunked: true });
    assert.equal(chunked.status, 413, chunked.body);
    const grown = rssOf(pid) - before;
    assert.ok(grown < 64 * MiB, `the process held ${Math.round(grown / MiB)} MiB more after 250 MiB of bodies`);
    assert.equal((await fetch(`${fn.url}healthz`)).status, 200);
  });

  test('a compressed body is refused (415): its size says nothing of what it inflates to', async () => {
    const bomb = gzipSync(Buffer.alloc(64 * MiB, 0x20));
    const res = await fetch(fn.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'content-encoding': 'gzip', 'ce-specversion': '1.0', 'ce-id': 'z', 'ce-source': '/attacker', 'ce-type': EventType.SessionHeartbeat },
      body: bomb,
    });
    assert.equal(res.status, 415);
    assert.equal(((await res.json()) as { error: string }).error, 'UNSUPPORTED_ENCODING');
  });

  test('a batch is capped as a whole (MAX_BATCH_BYTES), however few its events', async () => {
    const events = Array.from({ length: 3 }, (_, i) => ({
      specversion: '1.0', id: `b${i}`, source: '/attacker', type: EventType.SessionHeartbeat, data: { sessionId: `s${i}`, pad: 'x'.repeat(MiB) },
    }));
    const res = await fetch(fn.url, { method: 'POST', headers: { 'content-type': 'application/cloudevents-batch+json' }, body: JSON.stringify(events) });
    assert.equal(res.status, 413);
  });

  test('a number past its bound is refused (400) before any script sees it', async () => {
    const opened = forge(EventType.SessionOpened, { sessionId: 'huge', placement: { node: 'n', runtimeUrl: 'http://r.test:8000', gpuBytes: 2 ** 53 - 1 } });
    const hold = forge(EventType.SessionHold, { sessionId: 'huge', durationMs: 1e15, reason: 'x' });
    for (const ev of [opened, hold]) {
      const res = await post(fn.url, ev);
      assert.equal(res.status, 400);
      assert.equal((res.body as { error: string }).error, 'INVALID_FIELD');
    }
    assert.equal(await core.store.inspect('huge'), null);
  });

  test('the local Broker answers an oversized POST with a readable 413 too', async () => {
    const res = await upload(broker.url, 5 * MiB);
    assert.equal(res.status, 413, res.body);
    const chunked = await upload(broker.url, 10 * MiB, { chunked: true });
    assert.equal(chunked.status, 413, chunked.body);
    assert.equal(broker.stats().received, 0);
  });
});
