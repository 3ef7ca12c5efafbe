// A sender that POSTs a 5 MB event must read the Broker's 413 (or 401) and why, not see its upload cut (EPIPE or
// ECONNRESET) nor stall: the ingress drains the rest of the body without keeping it and answers once it has all
// arrived, which Node's own http client needs both without keep-alive (it tears its socket down when an early answer
// ends: EPIPE) and with it (its upload stalls), and the connection stays usable for the sender's next request.
import assert from 'node:assert/strict';
import { Agent, request } from 'node:http';
import { after, before, test } from 'node:test';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { uploadBytes, type UploadAnswer } from '../../tests/support/upload.ts';
import { startLocalBroker, type LocalBroker } from './broker.ts';
import { eventOf, tempStoreDir } from './test-support.ts';

const MiB = 1024 * 1024;
const CLOSED = 'dev.sessionreaper.session.closed';

let sink: EventSink;
let broker: LocalBroker;

before(async () => {
  sink = await startEventSink();
  broker = await startLocalBroker({ subscribers: { 'destroy-dispatch': sink.url }, deadLetterDir: tempStoreDir('oversized') });
});

after(async () => {
  await broker.stop({ graceMs: 0 });
  await sink.close();
});

/**
 * POSTs `total` bytes of a binary-mode event, declared or chunked; resolves with what the server answered once the
 * upload is done too, and rejects if the upload is cut.
 */
function upload(url: string, total: number, opts: { chunked: boolean; agent: Agent; headers?: Record<string, string> }): Promise<UploadAnswer> {
  const headers = { 'content-type': 'application/json', 'ce-specversion': '1.0', 'ce-id': 'big', 'ce-source': '/tests', 'ce-type': CLOSED, ...opts.headers };
  return uploadBytes(url, total, { headers, chunked: opts.chunked, agent: opts.agent, awaitUpload: true });
}

async function postSmall(url: string, agent: Agent): Promise<UploadAnswer> {
  const ev = eventOf(CLOSED);
  const body = JSON.stringify(ev.data);
  const headers = { 'content-type': 'application/json', 'ce-specversion': '1.0', 'ce-id': ev.id, 'ce-source': ev.source, 'ce-type': ev.type };
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'POST', headers: { ...headers, 'content-length': String(Buffer.byteLength(body)) }, agent }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString('utf8')));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text, socket: req.socket }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

for (const chunked of [false, true]) {
  const how = chunked ? 'chunked' : 'with a Content-Length';
  test(`a 5 MB event sent ${how} without keep-alive is answered 413 with a reason the sender reads`, { timeout: 60_000 }, async () => {
    const agent = new Agent({ keepAlive: false });
    try {
      const refused = await upload(broker.url, 5 * MiB, { chunked, agent });
      assert.equal(refused.status, 413, refused.body);
      assert.equal((JSON.parse(refused.body) as { error: string }).error, 'TOO_LARGE');
    } finally {
      agent.destroy();
    }
  });

  test(`a 5 MB event sent ${how} with keep-alive is answered 413 with a reason the sender reads, on a connection it can reuse`, { timeout: 60_000 }, async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const before = broker.stats();
      const refused = await upload(broker.url, 5 * MiB, { chunked, agent });
      assert.equal(refused.status, 413, refused.body);
      const reason = JSON.parse(refused.body) as { error: string; reason: string };
      assert.equal(reason.error, 'TOO_LARGE');
      assert.match(reason.reason, /at most 1048576 are accepted/);

      const next = await postSmall(broker.url, agent);
      assert.equal(next.status, 202, next.body);
      assert.equal(next.socket, refused.socket, 'the drained connection carried the next request');
      assert.equal(broker.stats().received, before.received + 1, 'only the small event was accepted');
      assert.equal(broker.stats().rejected, before.rejected + 1);
    } finally {
      agent.destroy();
    }
  });
}

test('a 5 MB upload from an unknown sender is answered 401 the sender reads, before any of it is kept', { timeout: 60_000 }, async () => {
  const guarded = await startLocalBroker({
    subscribers: { 'destroy-dispatch': sink.url },
    deadLetterDir: tempStoreDir('oversized-401'),
    identities: { 'known-token': 'system:serviceaccount:session-reaper:inference-pipeline' },
  });
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  try {
    for (const chunked of [false, true]) {
      const refused = await upload(guarded.url, 5 * MiB, { chunked, agent, headers: { authorization: 'Bearer not-a-known-token' } });
      assert.equal(refused.status, 401, refused.body);
      assert.equal((JSON.parse(refused.body) as { error: string }).error, 'UNAUTHENTICATED');
    }
  } finally {
    agent.destroy();
    await guarded.stop({ graceMs: 0 });
  }
});
