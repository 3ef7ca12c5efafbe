// `sessionctl send` builds a CloudEvent of any contract type (short or full name), validates its data against
// contract v1 before anything leaves the machine, and POSTs it to the Broker in binary mode; `destroy` sends a
// session.destroy.requested. Invalid input exits 2 with nothing sent; an unreachable Broker exits 1.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { eventually } from '../local-broker/test-support.ts';
import { cliEnv, jsonOf, sessionctl, startTestBroker, unreachableBroker, type TestBroker } from './sessionctl-test-support.ts';

let tb: TestBroker;
let env: NodeJS.ProcessEnv;

before(async () => {
  tb = await startTestBroker('send');
  env = cliEnv({ SESSIONCTL_BROKER_URL: tb.broker.url });
});

after(() => tb.stop());

const opened = { sessionId: 'sess-sent-1', placement: { node: 'gpu-node-a', runtimeUrl: 'http://runtime-a.test:8000', gpuBytes: 1000 }, tenant: 'acme' };

async function deliveredOf(id: string) {
  await eventually(() => tb.delivered.some((d) => d.headers['ce-id'] === id), `delivery of ${id}`);
  return tb.delivered.find((d) => d.headers['ce-id'] === id)!;
}

test('send with a short type and --data posts a binary CloudEvent that reaches the subscribing function', async () => {
  const run = await sessionctl(['send', 'session.opened', '--data', JSON.stringify(opened), '--id', 'ctl-open-1'], env);
  assert.equal(run.code, 0, run.stderr);
  assert.match(run.stdout, /^202 accepted by http:\/\/127\.0\.0\.1:\d+\/: dev\.sessionreaper\.session\.opened id=ctl-open-1 source=\/sessionctl session=sess-sent-1\n$/);
  const got = await deliveredOf('ctl-open-1');
  assert.equal(got.headers['ce-type'], 'dev.sessionreaper.session.opened');
  assert.equal(got.headers['ce-source'], '/sessionctl');
  assert.equal(got.headers['ce-subject'], 'sess-sent-1');
  assert.equal(got.headers['ce-dataschema'], 'https://sessionreaper.dev/schemas/v1/dev.sessionreaper.session.opened.schema.json');
  assert.match(String(got.headers['content-type']), /^application\/json/);
  assert.deepEqual(JSON.parse(got.body), opened);
});

test('send --json with a full type, --file and --source prints the event it sent', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sessionctl-send-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'hold.json');
  writeFileSync(file, JSON.stringify({ sessionId: 'sess-sent-1', durationMs: 120_000, reason: 'tool call' }));
  const run = await sessionctl(['send', 'dev.sessionreaper.session.hold', '--file', file, '--source', '/ops/runbook', '--json'], env);
  assert.equal(run.code, 0, run.stderr);
  const out = jsonOf<{ status: number; accepted: boolean; broker: string; event: { id: string; type: string; source: string; data: unknown } }>(run);
  assert.equal(out.status, 202);
  assert.equal(out.accepted, true);
  assert.equal(out.broker, tb.broker.url);
  assert.equal(out.event.type, 'dev.sessionreaper.session.hold');
  assert.equal(out.event.source, '/ops/runbook');
  assert.deepEqual(out.event.data, { sessionId: 'sess-sent-1', durationMs: 120_000, reason: 'tool call' });
  const got = await deliveredOf(out.event.id);
  assert.equal(got.headers['ce-source'], '/ops/runbook');
});

test('destroy sends a session.destroy.requested with the reason to destroy-dispatch', async () => {
  const run = await sessionctl(['destroy', 'sess-sent-1', '--reason', 'stuck runtime', '--id', 'ctl-destroy-1'], env);
  assert.equal(run.code, 0, run.stderr);
  assert.match(run.stdout, /dev\.sessionreaper\.session\.destroy\.requested id=ctl-destroy-1 .*session=sess-sent-1\nfollow it with: sessionctl inspect sess-sent-1\n$/);
  const got = await deliveredOf('ctl-destroy-1');
  assert.equal(got.headers['ce-type'], 'dev.sessionreaper.session.destroy.requested');
  assert.deepEqual(JSON.parse(got.body), { sessionId: 'sess-sent-1', reason: 'stuck runtime' });

  const json = jsonOf<{ event: { type: string; data: unknown } }>(await sessionctl(['destroy', 'sess-sent-2', '--json'], env));
  assert.equal(json.event.type, 'dev.sessionreaper.session.destroy.requested');
  assert.deepEqual(json.event.data, { sessionId: 'sess-sent-2' });
});

test('data that breaks the contract, bad JSON, unknown types and missing data exit 2 and send nothing', async () => {
  const before = tb.broker.stats().received;
  const cases: [string[], RegExp][] = [
    [['send', 'session.opened', '--data', '{"sessionId":"s-1"}'], /the data breaks contract v1 \(MISSING_FIELD\): data\.placement is required; nothing was sent/],
    [['send', 'session.hold', '--data', '{"sessionId":"s-1","durationMs":0,"reason":"x"}'], /data\.durationMs/],
    [['send', 'session.heartbeat', '--data', '{"sessionId":"s-1","extra":1}'], /UNKNOWN_FIELD.*data\.extra/],
    [['send', 'session.heartbeat', '--data', '{not json'], /--data is not JSON/],
    [['send', 'session.heartbeat', '--file', '/nonexistent/e.json'], /cannot read --file/],
    [['send', 'session.exploded', '--data', '{}'], /"session\.exploded" is not an event type of the contract; one of: session\.opened, /],
    [['send', 'session.heartbeat'], /exactly one of --data/],
    [['send'], /send needs an event type/],
    [['destroy', 'bad id!'], /is not a session id/],
    [['send', 'session.heartbeat', '--data', '{"sessionId":"s-1"}', '--source', ''], /^sessionctl: not a valid CloudEvent: source must NOT have fewer than 1 characters\n$/],
  ];
  for (const [args, message] of cases) {
    const run = await sessionctl(args, env);
    assert.equal(run.code, 2, `${args.join(' ')}: ${run.stderr}`);
    assert.match(run.stderr, message, args.join(' '));
    assert.equal(run.stdout, '');
  }
  assert.equal(tb.broker.stats().received, before, 'the Broker got none of them');
});

test('an unreachable Broker exits 1 naming its address', async () => {
  const down = await unreachableBroker();
  const run = await sessionctl(['send', 'session.heartbeat', '--data', '{"sessionId":"s-1"}', '--broker', down], env);
  assert.equal(run.code, 1);
  assert.ok(run.stderr.startsWith(`sessionctl: cannot reach the Broker at ${down}: `), run.stderr);
  assert.equal(run.stdout, '');
  const bad = await sessionctl(['destroy', 's-1', '--broker', 'ftp://x'], env);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /is not an http\(s\) URL/);
});
