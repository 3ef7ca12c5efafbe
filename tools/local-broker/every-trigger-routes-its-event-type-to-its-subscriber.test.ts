// Routing comes from the deployed manifests themselves: for every Trigger in knative/base, an event of the type
// its filter names reaches that Trigger's subscriber (and no other), in binary mode, with its data byte for byte.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startEventSink, type EventSink } from '../../tests/support/event-sink.ts';
import { startLocalBroker, type LocalBroker } from './broker.ts';
import { loadRoutingTable } from './triggers.ts';
import { eventOf, sendBinary, tempStoreDir } from './test-support.ts';

const SERVICES = ['heartbeat-timeout', 'activity-score', 'destroy-dispatch', 'gpu-release'] as const;
const PIPELINE_TRIGGER = 'inference-pipeline-session-destroyed';

let sinks: Record<string, EventSink>;
let broker: LocalBroker;

before(async () => {
  sinks = {};
  for (const name of [...SERVICES, PIPELINE_TRIGGER]) sinks[name] = await startEventSink();
  const subscribers = Object.fromEntries(Object.entries(sinks).map(([name, sink]) => [name, sink.url]));
  broker = await startLocalBroker({ subscribers, deadLetterDir: tempStoreDir('routing') });
});

after(async () => {
  await broker.stop({ graceMs: 0 });
  for (const sink of Object.values(sinks)) await sink.close();
});

// Which subscriber the manifests send each type to: a Service ref's name, or the mapped Trigger for a uri.
function expectedSubscribers(): Map<string, Set<string>> {
  const raw = loadRoutingTable({ subscribers: {} });
  const byType = new Map<string, Set<string>>();
  for (const route of raw.routes) {
    const [filter] = route.filters;
    assert.ok(filter && 'exact' in filter && typeof filter.exact.type === 'string', `trigger ${route.name} filters on type`);
    const subscriber = route.name === PIPELINE_TRIGGER ? PIPELINE_TRIGGER : SERVICES.find((s) => route.name.startsWith(`${s}-`));
    assert.ok(subscriber, `trigger ${route.name} is named <function>-<type>`);
    const set = byType.get(filter.exact.type) ?? new Set<string>();
    set.add(subscriber);
    byType.set(filter.exact.type, set);
  }
  return byType;
}

test('the manifests define one route per Trigger, every one resolved to a local subscriber', () => {
  assert.equal(broker.table.routes.length, 17);
  for (const route of broker.table.routes) assert.ok(route.url, `trigger ${route.name} has a local URL`);
  const heartbeat = broker.table.routes.find((r) => r.name === 'heartbeat-timeout-session-heartbeat');
  assert.deepEqual(heartbeat?.delivery, { retry: 4, backoffPolicy: 'exponential', backoffDelayMs: 200, timeoutMs: 10_000, deadLetter: false });
  assert.deepEqual(broker.table.delivery, { retry: 6, backoffPolicy: 'exponential', backoffDelayMs: 400, timeoutMs: 10_000, deadLetter: true });
});

test('an event of each Trigger type reaches exactly the subscribers of the Triggers that filter on it', async () => {
  const byType = expectedSubscribers();
  assert.ok(byType.get('dev.sessionreaper.inference.completed')?.size === 2, 'inference.completed has two Triggers');
  const sent = new Map<string, string>();
  for (const type of byType.keys()) {
    const ev = eventOf(type);
    sent.set(ev.id, type);
    const res = await sendBinary(broker.url, ev);
    assert.equal(res.status, 202, `${type} accepted`);
  }
  await broker.idle();
  for (const [name, sink] of Object.entries(sinks)) {
    const got = sink.events.map((e) => e.event.type).sort();
    const want = [...byType.entries()].filter(([, subs]) => subs.has(name)).map(([type]) => type).sort();
    assert.deepEqual(got, want, `${name} got exactly its types`);
    for (const e of sink.events) {
      assert.equal(e.headers['ce-specversion'], '1.0', 'delivered in binary mode');
      assert.equal(e.headers['content-type'], 'application/json');
      assert.ok(sent.has(e.event.id));
      assert.match(String(e.event['knativearrivaltime']), /^\d{4}-\d\d-\d\dT/);
    }
  }
});

test('an event no Trigger filters on is accepted and delivered nowhere', async () => {
  const before = Object.values(sinks).reduce((n, s) => n + s.requests.length, 0);
  const res = await sendBinary(broker.url, eventOf('dev.example.unrouted'));
  assert.equal(res.status, 202);
  await broker.idle();
  assert.equal(Object.values(sinks).reduce((n, s) => n + s.requests.length, 0), before);
});

test('data reaches the subscriber byte for byte, unparsed', async () => {
  const ev = eventOf('dev.sessionreaper.session.closed').cloneWith({ data: { sessionId: 'bytes-1', note: 'ünïcode ✓', n: 1.5 } });
  assert.equal((await sendBinary(broker.url, ev)).status, 202);
  const got = await sinks['destroy-dispatch']!.waitForEvent((e) => e.event.id === ev.id);
  assert.equal(got.body, JSON.stringify(ev.data));
});
