// A Trigger's subscriber may answer 200 with a CloudEvent, and Knative's Broker ingests it as a new event (the
// data-plane contract's "Derived (Reply) Events": the Broker says it takes replies with `Prefer: reply`). The reply
// reaches the ingress under the Trigger's OIDC identity (knative/eventing#7481), so only an EventPolicy naming that
// Trigger by `ref` admits it, with its filters: destroy-dispatch's Triggers may reply what destroy-dispatch may send,
// under its source, and nothing else. A reply refused fails the delivery for good, as Knative's 403 does.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { CloudEvent, HTTP } from 'cloudevents';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { startLocalBroker, type LocalBroker } from './broker.ts';
import { eventOf, eventually, sendBinary, tempStoreDir } from './test-support.ts';

const CLOSED = 'dev.sessionreaper.session.closed';
const RELEASE_REQUESTED = 'dev.sessionreaper.gpu.release.requested';
const PIPELINE_TOKEN = 'pipeline-token';

/** destroy-dispatch's stand-in: answers each delivery with the reply `replyFor` builds, and keeps what it was sent. */
interface Replier {
  url: string;
  seen: IncomingHttpHeaders[];
  replyFor: (sessionId: string) => CloudEvent<unknown> | undefined;
  server: Server;
}

async function startReplier(): Promise<Replier> {
  const r: Replier = { url: '', seen: [], replyFor: () => undefined, server: createServer() };
  r.server.on('request', (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      r.seen.push(req.headers);
      const { sessionId } = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { sessionId: string };
      const reply = r.replyFor(sessionId);
      if (!reply) {
        res.writeHead(204).end();
        return;
      }
      const m = HTTP.binary(reply);
      res.writeHead(200, m.headers as Record<string, string>).end(m.body as string);
    });
  });
  r.server.listen(0, '127.0.0.1');
  await once(r.server, 'listening');
  r.url = `http://127.0.0.1:${(r.server.address() as AddressInfo).port}/`;
  return r;
}

const releaseRequest = (sessionId: string, source: string, type = RELEASE_REQUESTED) =>
  new CloudEvent({
    specversion: '1.0', id: `${sessionId}/1/release/1`, source, type, datacontenttype: 'application/json',
    data: { sessionId, incarnation: 1, placement: { node: 'gpu-node-a', runtimeUrl: 'http://runtime', gpuBytes: 1 }, attempt: 1, token: 'q3Zp0c8Wm1tYb6Nf2LxR-A', reason: 'destroy' },
  });

let replier: Replier;
let gpuRelease: EventSink;
let broker: LocalBroker;

before(async () => {
  replier = await startReplier();
  gpuRelease = await startEventSink();
  broker = await startLocalBroker({
    subscribers: { 'destroy-dispatch': replier.url, 'gpu-release': gpuRelease.url },
    deadLetterDir: tempStoreDir('replies'),
    identities: { [PIPELINE_TOKEN]: 'system:serviceaccount:inference:inference-pipeline' },
  });
});

after(async () => {
  await broker.stop({ graceMs: 0 });
  await gpuRelease.close();
  replier.server.close();
});

test('destroy-dispatch asked with Prefer: reply answers with its release request, which the Broker routes to gpu-release', async () => {
  replier.replyFor = (sessionId) => releaseRequest(sessionId, '/session-reaper/destroy-dispatch');
  const closed = eventOf(CLOSED);
  assert.equal((await sendBinary(broker.url, closed, { authorization: `Bearer ${PIPELINE_TOKEN}` })).status, 202);
  const routed = await gpuRelease.waitForEvent((e) => e.event.type === RELEASE_REQUESTED && (e.event.data as { sessionId: string }).sessionId === closed.data!.sessionId);
  assert.equal(routed.event.source, '/session-reaper/destroy-dispatch');
  assert.equal(replier.seen.at(-1)?.prefer, 'reply');
  assert.equal(typeof routed.event.knativearrivaltime, 'string', 'ingested as a new event');
});

for (const [what, source, type] of [
  ['claiming another sender\'s source', '/session-reaper/gpu-release', RELEASE_REQUESTED],
  ['of a type destroy-dispatch may not send', '/session-reaper/destroy-dispatch', 'dev.sessionreaper.gpu.released'],
  ['claiming the pipeline\'s source', '/bench/inference-pipeline', RELEASE_REQUESTED],
] as const) {
  test(`a reply ${what} is refused, routed nowhere, and fails the delivery for good`, async () => {
    replier.replyFor = (sessionId) => releaseRequest(sessionId, source, type);
    const before = broker.stats();
    const closed = eventOf(CLOSED);
    assert.equal((await sendBinary(broker.url, closed, { authorization: `Bearer ${PIPELINE_TOKEN}` })).status, 202);
    await eventually(() => broker.stats().rejected > before.rejected, 'the reply refused');
    await broker.idle(10_000);
    const after = broker.stats();
    assert.equal(after.retried, before.retried, 'a refusal is not retried');
    assert.equal(after.deadLettered + after.dropped, before.deadLettered + before.dropped + 1, 'the input gives up (dead-lettered or dropped by its delivery spec)');
    assert.ok(!gpuRelease.events.some((e) => (e.event.data as { sessionId?: string }).sessionId === closed.data!.sessionId));
  });
}
