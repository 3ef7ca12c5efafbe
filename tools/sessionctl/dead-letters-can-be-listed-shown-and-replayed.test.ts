// `sessionctl dead-letters` reads the local Broker's dead-letter store through its admin API: the list says why each
// event died, `show` prints one whole, `replay <id>` and `replay --all` send them again (exit 1 while the subscriber
// still refuses), and a delivered replay leaves the store. An unknown id exits 3; an unreachable Broker exits 1.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { DeadLetter } from '../../functions/core/dead-letter-store.ts';
import type { ReplayResult } from '../local-broker/broker.ts';
import { cliEnv, jsonOf, sessionctl, startTestBroker, unreachableBroker, type TestBroker } from './sessionctl-test-support.ts';

let tb: TestBroker;
let env: NodeJS.ProcessEnv;

before(async () => {
  tb = await startTestBroker('dead-letters');
  env = cliEnv({ SESSIONCTL_BROKER_URL: tb.broker.url });
});

after(() => tb.stop());

// The subscriber refuses with 400 (not retried), so each event lands in the dead-letter store at once.
async function deadLetterFor(sessionId: string): Promise<void> {
  tb.answer.status = 400;
  const run = await sessionctl(['send', 'session.closed', '--data', JSON.stringify({ sessionId, reason: 'test' })], env);
  assert.equal(run.code, 0, run.stderr);
  await tb.broker.idle();
}

test('dead-letters lists why each event died, in a table and as JSON, and show prints one whole', async () => {
  const empty = await sessionctl(['dead-letters'], env);
  assert.equal(empty.code, 0, empty.stderr);
  assert.equal(empty.stdout, 'no dead letters\n');

  await deadLetterFor('sess-dl-1');
  const listed = await sessionctl(['dead-letters', 'list'], env);
  assert.equal(listed.code, 0, listed.stderr);
  const lines = listed.stdout.trimEnd().split('\n');
  assert.match(lines[0]!, /^ID\s+DIED\s+TRIGGER\s+TYPE\s+SESSION\s+ATTEMPTS\s+REASON$/);
  assert.match(lines[1]!, /^\d{8}T\d+Z-[0-9a-f]{24}\s+(\d+ ms|\d+\.\d s) ago\s/);
  assert.match(lines[1]!, /destroy-dispatch-session-closed\s+dev\.sessionreaper\.session\.closed\s+sess-dl-1\s+1\s+http:\/\/127\.0\.0\.1:\d+\/ answered HTTP 400$/);

  const json = jsonOf<{ deadLetters: DeadLetter[] }>(await sessionctl(['dead-letters', '--json'], env));
  assert.equal(json.deadLetters.length, 1);
  const [entry] = json.deadLetters;
  assert.equal(entry?.trigger, 'destroy-dispatch-session-closed');
  assert.equal(entry.reason.status, 400);

  const shown = await sessionctl(['dead-letters', 'show', entry.id], env);
  assert.equal(shown.code, 0, shown.stderr);
  assert.match(shown.stdout, new RegExp(`^id: +${entry.id}$`, 'm'));
  assert.match(shown.stdout, /^answer: +refused by the test subscriber \(400\)$/m);
  assert.match(shown.stdout, /^event:\n( {2}\w+: +.+\n)* {2}type: +dev\.sessionreaper\.session\.closed$/m);
  assert.match(shown.stdout, /^data:\n\{\n {2}"sessionId": "sess-dl-1",\n {2}"reason": "test"\n\}$/m);
  assert.deepEqual(jsonOf<DeadLetter>(await sessionctl(['dead-letters', 'show', entry.id, '--json'], env)), entry);

  // Clean up for the next test: deliver it.
  tb.answer.status = 200;
  assert.equal((await sessionctl(['dead-letters', 'replay', entry.id], env)).code, 0);
});

test('replay exits 1 while the subscriber still refuses, and delivers and removes the dead letter once it accepts', async () => {
  await deadLetterFor('sess-dl-2');
  const [entry] = jsonOf<{ deadLetters: DeadLetter[] }>(await sessionctl(['dead-letters', '--json'], env)).deadLetters;
  assert.ok(entry);

  const failed = await sessionctl(['dead-letters', 'replay', entry.id], env);
  assert.equal(failed.code, 1);
  assert.match(failed.stdout, new RegExp(`^dead letter ${entry.id}: failed again after 1 attempt: .*answered HTTP 400; kept\\n$`));

  tb.answer.status = 200;
  const replayed = await sessionctl(['dead-letters', 'replay', entry.id, '--json'], env);
  assert.equal(replayed.code, 0, replayed.stderr);
  assert.deepEqual(jsonOf<ReplayResult>(replayed), { outcome: 'delivered', id: entry.id, attempts: 1 });
  assert.deepEqual(jsonOf<{ deadLetters: DeadLetter[] }>(await sessionctl(['dead-letters', '--json'], env)).deadLetters, []);
});

test('replay --all sends every dead letter again, one at a time, and reports each', async () => {
  await deadLetterFor('sess-dl-3');
  await deadLetterFor('sess-dl-4');
  tb.answer.status = 200;
  const run = await sessionctl(['dead-letters', 'replay', '--all'], env);
  assert.equal(run.code, 0, run.stderr);
  assert.match(run.stdout, /^ID\s+OUTCOME\n.+delivered after 1 attempt; removed from the store\n.+delivered after 1 attempt; removed from the store\n\n2 delivered, 0 failed\n$/);
  const none = jsonOf<{ results: ReplayResult[] }>(await sessionctl(['dead-letters', 'replay', '--all', '--json'], env));
  assert.deepEqual(none, { results: [] });
});

test('an unknown dead letter exits 3, a bad subcommand exits 2 and an unreachable Broker exits 1', async () => {
  for (const args of [['dead-letters', 'show', '20260101T000000000Z-0123abcd'], ['dead-letters', 'replay', 'no-such-id']]) {
    const run = await sessionctl(args, env);
    assert.equal(run.code, 3, `${args.join(' ')}: ${run.stderr}`);
    assert.match(run.stderr, /^sessionctl: no dead letter /);
    assert.equal(run.stdout, '');
  }
  for (const args of [['dead-letters', 'burn'], ['dead-letters', 'show'], ['dead-letters', 'list', '--all'], ['dead-letters', 'replay', 'x', '--all']]) {
    const run = await sessionctl(args, env);
    assert.equal(run.code, 2, `${args.join(' ')}: ${run.stderr}`);
  }
  const down = await sessionctl(['dead-letters', '--broker', await unreachableBroker()], env);
  assert.equal(down.code, 1);
  assert.match(down.stderr, /^sessionctl: cannot reach the Broker at /);
});
