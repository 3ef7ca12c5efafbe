// The journal is what a killed Broker's successor reads: it must give back exactly the deliveries accepted and not
// recorded done, survive a line left half written, and stay bounded however many events pass through it.
import assert from 'node:assert/strict';
import { appendFileSync, readFileSync } from 'node:fs';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { openDeliveryJournal, type JournaledEvent } from './delivery-journal.ts';
import { tempStoreDir } from './test-support.ts';

let seq = 0;
function accepted(targets: readonly string[]): JournaledEvent {
  seq += 1;
  return {
    event: { attributes: { specversion: '1.0', id: `j-${seq}`, source: '/tests', type: 'dev.sessionreaper.session.closed' }, data_base64: Buffer.from(`{"n":${seq}}`).toString('base64') },
    deliveries: targets.map((target) => ({ key: `${target}-${seq}`, target, url: `http://127.0.0.1:1/${target}` })),
  };
}

test('a reopened journal gives back every delivery accepted and not done, and only those', async () => {
  const file = join(tempStoreDir('journal'), '.delivery-journal.ndjson');
  const first = await openDeliveryJournal(file);
  assert.deepEqual(first.unfinished, []);
  const [a, b, c] = [accepted(['t1']), accepted(['t1', 't2']), accepted(['t2'])];
  await first.accept([a, b]);
  await first.accept([c]);
  first.done(a.deliveries[0]!.key);
  first.done(b.deliveries[1]!.key);
  first.done('a key it never held');
  // A kill leaves the file as written so far; close() only waits for the queued lines, as a write() that returned would.
  await first.close();

  const second = await openDeliveryJournal(file);
  const keys = second.unfinished.flatMap((e) => e.deliveries.map((d) => d.key)).sort();
  assert.deepEqual(keys, [b.deliveries[0]!.key, c.deliveries[0]!.key].sort());
  assert.deepEqual(second.unfinished.find((e) => e.event.attributes.id === b.event.attributes.id)?.event, b.event, 'the event comes back whole');
  await second.close();
});

for (const fsync of [false, true]) {
  test(`an accept is in the file once it resolves, and done lines by the end of the loop turn (fsync ${fsync})`, async () => {
    const file = join(tempStoreDir('journal-when'), '.delivery-journal.ndjson');
    const journal = await openDeliveryJournal(file, { fsync });
    const lines = () => readFileSync(file, 'utf8').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as { op: string; key?: string; event?: { attributes: { id: string } } });
    // Appended in one turn, before any of them is awaited: each is in the file when its promise resolves, in order.
    const events = Array.from({ length: 5 }, () => accepted(['t1']));
    await Promise.all(events.map(async (ev) => {
      await journal.accept([ev]);
      assert.ok(lines().some((l) => l.op === 'accept' && l.event?.attributes.id === ev.event.attributes.id), `${ev.event.attributes.id} written before its accept resolved`);
    }));
    assert.deepEqual(lines().map((l) => l.event?.attributes.id), events.map((ev) => ev.event.attributes.id));
    journal.done(events[0]!.deliveries[0]!.key);
    journal.done(events[1]!.deliveries[0]!.key);
    await nextTurn();
    // With fsync the write may still be under way at the end of the turn; it is there once a following accept is.
    if (fsync) await journal.accept([accepted(['t2'])]);
    assert.deepEqual(lines().filter((l) => l.op === 'done').map((l) => l.key), [events[0]!.deliveries[0]!.key, events[1]!.deliveries[0]!.key]);
    // A done given just before close is written by close, not lost to the turn that never comes for it.
    journal.done(events[2]!.deliveries[0]!.key);
    await journal.close();
    assert.ok(lines().some((l) => l.op === 'done' && l.key === events[2]!.deliveries[0]!.key));
    const reopened = await openDeliveryJournal(file);
    assert.deepEqual(reopened.unfinished.filter((e) => e.deliveries.some((d) => d.target === 't1')).map((e) => e.event.attributes.id), events.slice(3).map((ev) => ev.event.attributes.id));
    await reopened.close();
  });
}

/**
 * Runs `body` (an ES module's code, `journalAt(file, opts)` and `ev(id, bytes)` in scope) in a child process whose file
 * size limit (RLIMIT_FSIZE, `ulimit -f`, in 1 KiB blocks) is `kib`: a write that crosses it writes the bytes below the
 * limit and gets EFBIG for the rest (Node ignores SIGXFSZ), as on a full disk. Answers what the body prints as JSON.
 */
function underFileSizeLimit(kib: number, body: string): unknown {
  const child = `
    import { openDeliveryJournal as journalAt } from ${JSON.stringify(new URL('./delivery-journal.ts', import.meta.url).href)};
    const ev = (id, bytes) => ({ event: { attributes: { specversion: '1.0', id, source: '/tests', type: 't' }, data_base64: 'x'.repeat(bytes) }, deliveries: [{ key: id, target: 't1', url: 'http://127.0.0.1:1/' }] });
    ${body}
  `;
  const run = spawnSync('bash', ['-c', `ulimit -f ${kib} && exec "$0" --input-type=module -e "$1"`, process.execPath, child], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(run.status, 0, run.stderr);
  return JSON.parse(run.stdout);
}

for (const fsync of [false, true]) {
  test(`a write the file system cuts short is undone: the events answered after it are not lost with it (fsync ${fsync})`, async () => {
    const file = join(tempStoreDir('journal-short'), '.delivery-journal.ndjson');
    const answers = underFileSizeLimit(4, `
      const journal = await journalAt(${JSON.stringify(file)}, { fsync: ${fsync} });
      const answers = {};
      for (const [id, bytes] of [['small-1', 100], ['crossing', 8000], ['small-2', 100]]) {
        answers[id] = await journal.accept([ev(id, bytes)]).then(() => 'accepted', (err) => err.code);
      }
      await journal.close();
      console.log(JSON.stringify(answers));
    `);
    assert.deepEqual(answers, { 'small-1': 'accepted', crossing: 'EFBIG', 'small-2': 'accepted' });
    const reopened = await openDeliveryJournal(file);
    assert.equal(reopened.tornLines, 0);
    assert.deepEqual(reopened.unfinished.map((e) => e.event.attributes.id), ['small-1', 'small-2'], 'the refused event is not in it, the one accepted after it is');
    await reopened.close();
  });
}

test('an event refused for a failed write is not written back by a compaction that follows at once', async () => {
  // A's done line, given while R's write fails, takes the journal past its compaction threshold: the compaction
  // that runs next must write neither A (done) nor R (refused to its sender, who sends it again).
  const file = join(tempStoreDir('journal-refused'), '.delivery-journal.ndjson');
  const answers = underFileSizeLimit(4, `
    const journal = await journalAt(${JSON.stringify(file)}, { compactAtBytes: 1000 });
    await journal.accept([ev('A', 3000)]);
    const refused = journal.accept([ev('R', 1200)]).then(() => 'accepted', (err) => err.code);
    journal.done('A');
    const answer = await refused;
    await journal.close();
    console.log(JSON.stringify({ R: answer }));
  `);
  assert.deepEqual(answers, { R: 'EFBIG' });
  const reopened = await openDeliveryJournal(file);
  assert.deepEqual(reopened.unfinished.map((e) => e.event.attributes.id), []);
  await reopened.close();
});

test('a line left half written is skipped and the rest is read', async () => {
  const file = join(tempStoreDir('journal-torn'), '.delivery-journal.ndjson');
  const first = await openDeliveryJournal(file);
  const kept = accepted(['t1']);
  await first.accept([kept]);
  await first.close();
  appendFileSync(file, '{"op":"accept","deliveries":[{"key":"cut');

  const second = await openDeliveryJournal(file);
  assert.equal(second.tornLines, 1);
  assert.deepEqual(second.unfinished.map((e) => e.event.attributes.id), [kept.event.attributes.id]);
  await second.close();
});

test('the journal is compacted as events pass through, so it stays within a small multiple of what is unfinished', async () => {
  const file = join(tempStoreDir('journal-bounded'), '.delivery-journal.ndjson');
  const compactAtBytes = 16 * 1024;
  const journal = await openDeliveryJournal(file, { compactAtBytes });
  const open = accepted(['t1']);
  await journal.accept([open]);
  let largest = 0;
  for (let i = 0; i < 2000; i++) {
    const ev = accepted(['t1', 't2']);
    await journal.accept([ev]);
    for (const d of ev.deliveries) journal.done(d.key);
    largest = Math.max(largest, journal.bytes);
  }
  await journal.close();
  assert.ok(largest < 2 * compactAtBytes, `the journal reached ${largest} bytes after 2000 events`);
  const reopened = await openDeliveryJournal(file);
  assert.deepEqual(reopened.unfinished.map((e) => e.event.attributes.id), [open.event.attributes.id], 'compaction kept the unfinished one');
  await reopened.clearAndClose();
});
