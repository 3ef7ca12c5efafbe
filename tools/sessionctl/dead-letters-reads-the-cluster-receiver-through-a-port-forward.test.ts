// `sessionctl dead-letters` against the deployed dead-letter receiver (functions/dead-letters), as an operator runs it
// through `kubectl port-forward`: the receiver's real handler on a loopback port, sent a dead letter as Knative sends
// one. list and show read it, delete removes it, and replay exits 1 saying why the receiver does not replay and where
// the procedure is, rather than pretending it did.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { pino } from 'pino';
import { BoundedIncomingMessage } from '../../functions/core/bounded-request.ts';
import { openDeadLetterStore } from '../../functions/core/dead-letter-store.ts';
import { createDeadLetterReceiver } from '../../functions/dead-letters/handle.ts';
import { cliEnv, sessionctl } from './sessionctl-test-support.ts';

let server: Server;
let url: string;
let dir: string;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sr-sessionctl-receiver-'));
  const store = await openDeadLetterStore(dir, { maxBytes: 16 * 1_048_576 });
  const receiver = createDeadLetterReceiver({ store, logger: pino({ level: 'silent' }), maxEventBytes: 1_048_576 });
  server = createServer<typeof BoundedIncomingMessage>({ IncomingMessage: BoundedIncomingMessage }, (req, res) => void receiver.handle(req, res));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  url = `http://localhost:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  rmSync(dir, { recursive: true, force: true });
});

test('list, show and delete read the receiver; replay says it is done by hand', async () => {
  const env = cliEnv({ SESSIONCTL_BROKER_URL: url });
  const sent = await fetch(`${url}/`, {
    method: 'POST',
    headers: {
      'ce-specversion': '1.0',
      'ce-id': 'release-7',
      'ce-source': '/session-reaper/destroy-dispatch',
      'ce-type': 'dev.sessionreaper.gpu.release.requested',
      'ce-knativeerrordest': 'http://gpu-release.session-reaper.svc.cluster.local/',
      'ce-knativeerrorcode': '503',
      'ce-knativeerrordata': Buffer.from('runtime unreachable').toString('base64'),
      'content-type': 'application/json',
    },
    body: JSON.stringify({ sessionId: 'sess-cluster-1' }),
  });
  assert.equal(sent.status, 201);

  const listed = await sessionctl(['dead-letters', 'list'], env);
  assert.equal(listed.code, 0, listed.stderr);
  const row = listed.stdout.trimEnd().split('\n')[1] ?? '';
  assert.match(row, /gpu-release\.session-reaper\.svc\.cluster\.local\s+dev\.sessionreaper\.gpu\.release\.requested\s+sess-cluster-1\s+0\s+http:\/\/gpu-release\.session-reaper\.svc\.cluster\.local\/ answer/);
  const id = row.split(/\s+/)[0]!;

  const shown = await sessionctl(['dead-letters', 'show', id], env);
  assert.equal(shown.code, 0, shown.stderr);
  assert.match(shown.stdout, /^answer: +runtime unreachable$/m);
  assert.match(shown.stdout, /^ {2}knativeerrorcode: +503$/m);

  const replay = await sessionctl(['dead-letters', 'replay', id], env);
  assert.equal(replay.code, 1);
  assert.match(replay.stderr, /does not replay dead letters: .*original sender.*docs\/deploy\.md/);

  const deleted = await sessionctl(['dead-letters', 'delete', id], env);
  assert.equal(deleted.code, 0, deleted.stderr);
  assert.equal((await sessionctl(['dead-letters'], env)).stdout, 'no dead letters\n');
  const again = await sessionctl(['dead-letters', 'delete', id], env);
  assert.equal(again.code, 3, 'an unknown id is not found');
});
