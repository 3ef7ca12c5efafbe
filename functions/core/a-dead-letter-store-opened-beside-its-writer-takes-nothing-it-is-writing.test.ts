// The dead-letter store is read by processes that do not write it (a test or an operator's tool beside the local
// Broker of a running `npm start`), and opening a store cleans up temporary files a killed writer left. A young
// temporary file is a write under way in another process: opening the store beside it must leave it alone, or that
// writer's rename fails and its dead letter is lost (CI saw it: a contract-breaking event answered 400 and never
// kept). Only a leftover older than any write takes is removed.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { until } from '../../tests/support/until.ts';
import { diesWithParent } from '../../tools/local-stack/parent-death.ts';
import { openDeadLetterStore, STALE_TEMP_FILE_MS, type NewDeadLetter } from './dead-letter-store.ts';

function tempStore(label: string): string {
  const dir = mkdtempSync(join(tmpdir(), `sr-dead-letter-store-${label}-`));
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  return join(dir, 'store');
}

const deadLetter = (n: number): NewDeadLetter => ({
  trigger: 'destroy-dispatch-session-closed',
  destination: 'http://127.0.0.1:8081',
  attempts: 1,
  reason: { status: 400, body: '{"error":"UNKNOWN_FIELD"}', message: 'answered HTTP 400' },
  // A few KiB each, so a write is not over before the reader lists the directory.
  event: { attributes: { specversion: '1.0', type: 'dev.sessionreaper.session.closed', source: '/tests', id: `event-${n}` }, data_base64: Buffer.alloc(16_384, n).toString('base64') },
});

// Opens the store over and over, as a reader polling it does, until its standard input closes; says when it has
// opened it once, and at the end how often.
const READER = `
import { openDeadLetterStore } from ${JSON.stringify(new URL('./dead-letter-store.ts', import.meta.url).href)};
let open = true;
process.stdin.on('end', () => (open = false)).resume();
let opens = 0;
while (open) {
  await openDeadLetterStore(process.argv[1]);
  if (opens++ === 0) process.stdout.write('polling\\n');
}
console.log(opens);
`;

test('every dead letter added while other processes open the same store is kept', async () => {
  const dir = tempStore('beside');
  const writer = await openDeadLetterStore(dir);
  const readers = [0, 1].map(() => {
    const child = spawn(...diesWithParent(process.execPath, ['--input-type=module', '-e', READER, dir]), { stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    const exited = new Promise<number>((resolve, reject) => child.once('exit', (code) => (code === 0 ? resolve(Number(out.replace('polling', ''))) : reject(new Error(`reader exited ${code}`)))));
    return { child, exited, polling: () => out.startsWith('polling') };
  });
  process.once('exit', () => readers.forEach((r) => r.child.kill('SIGKILL')));
  // Once both readers have opened it at least once, the writer adds, one batch after another.
  await until('the readers polling', () => Promise.resolve(readers.every((r) => r.polling())));
  const count = 300;
  const added: PromiseSettledResult<unknown>[] = [];
  for (let n = 0; n < count; n += 10) added.push(...(await Promise.allSettled(Array.from({ length: 10 }, (_, i) => writer.add(deadLetter(n + i))))));
  for (const r of readers) r.child.stdin.end();
  const opens = await Promise.all(readers.map((r) => r.exited));
  assert.ok(opens.every((n) => n > 0), `each reader opened the store (${opens.join(', ')} times)`);
  const failed = added.filter((r) => r.status === 'rejected').map((r) => String(r.reason));
  assert.deepEqual(failed, [], 'no add failed');
  assert.equal((await writer.list()).length, count);
  assert.equal((await openDeadLetterStore(dir)).count(), count, 'and a store opened afterwards finds them all');
});

test("opening a store removes a killed writer's old temporary file and leaves a young one alone", async () => {
  const dir = tempStore('leftovers');
  await openDeadLetterStore(dir);
  const old = join(dir, '20261207T000000000Z-0123456789abcdef01234567.json.deadbeef.tmp');
  const young = join(dir, '20261207T000000000Z-89abcdef0123456789abcdef.json.cafebabe.tmp');
  writeFileSync(old, '{"half": ');
  writeFileSync(young, '{"half": ');
  const past = (Date.now() - STALE_TEMP_FILE_MS - 60_000) / 1000;
  utimesSync(old, past, past);
  const store = await openDeadLetterStore(dir);
  assert.deepEqual(readdirSync(dir).sort(), [young.slice(dir.length + 1)]);
  assert.equal(store.count(), 0, 'a temporary file is never an entry');
  assert.equal(store.usedBytes(), 0);
});
