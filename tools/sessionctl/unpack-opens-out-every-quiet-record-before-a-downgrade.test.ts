// `sessionctl unpack` turns every quiet record back into a hash of its own, with the same fields, so a fleet can go
// back to a version without quiet records; a stale quiet field beside a record of its own is dropped (the record
// wins); a second run finds nothing to do; the sessions go on as before.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { openAt, recordOf, testCore, type TestCore } from '../../tests/support/core.ts';
import { cliEnv, coreEnv, jsonOf, sessionctl } from './sessionctl-test-support.ts';

let core: TestCore;
let env: NodeJS.ProcessEnv;
const T0 = Date.now();
const ids = Array.from({ length: 40 }, (_, i) => `unpack-${i}`);

before(async () => {
  core = await testCore('single', { quietRecords: true });
  env = cliEnv(coreEnv(core, 'single'));
  for (const id of ids) assert.equal((await openAt(core, id, T0)).code, 'OPENED');
});

after(() => core.close());

test('unpack opens every quiet record out with the same fields, drops a stale field, and a second run has nothing to do', async () => {
  const before = new Map(await Promise.all(ids.map(async (id) => [id, await recordOf(core, id)] as const)));
  for (const id of ids) assert.equal(await core.redis.hexists(core.keys.session(id).quiet, id), 1, `${id} is quiet`);
  // A stale quiet field beside a record of its own (what a replica that cannot read quiet records leaves): the record wins.
  const stale = ids[0]!;
  const k = core.keys.session(stale);
  await core.redis.hset(k.session, { ...before.get(stale)!, w: '5000' });

  const run = await sessionctl(['unpack', '--json'], env);
  assert.equal(run.code, 0, run.stderr);
  const out = jsonOf<{ opened: number; dropped: number; left: number }>(run);
  assert.deepEqual({ opened: out.opened, dropped: out.dropped, left: out.left }, { opened: ids.length - 1, dropped: 1, left: 0 });
  for (const id of ids) {
    const keys = core.keys.session(id);
    assert.equal(await core.redis.hexists(keys.quiet, id), 0, `${id} is no longer quiet`);
    assert.deepEqual(await core.redis.hgetall(keys.session), id === stale ? { ...before.get(id)!, w: '5000' } : before.get(id), `${id} holds the same fields`);
  }
  assert.equal(await core.store.quietCount(), 0);

  const again = await sessionctl(['unpack'], env);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, /^0 quiet records opened out into hashes of their own; none is left/);
  assert.equal((await core.store.heartbeat(ids[1]!, T0 + 500, T0 + 500)).code, 'REFRESHED');
});

test('unpack empties a bucket of tens of thousands of quiet records, however HSCAN pages them', async () => {
  // One bucket, as a million sessions over 32 buckets hold ~31k each: pages emptied early leave a run of empty table
  // slots that a scan restarted from its beginning would never get past.
  const big = await testCore('single', { buckets: 1, quietRecords: true });
  try {
    const quiet = big.keys.bucket(0).quiet;
    const n = 12_000;
    for (let from = 0; from < n; from += 2000) {
      const fields: string[] = [];
      for (let i = from; i < from + 2000; i++) fields.push(`big-${i}`, `${1_800_000_000_000 + i} 90000 1 1000 0 fp${i}`);
      await big.redis.hset(quiet, ...fields);
    }
    const run = await sessionctl(['unpack', '--json'], cliEnv(coreEnv(big, 'single')));
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(jsonOf<{ opened: number; left: number }>(run).opened, n);
    assert.equal(await big.redis.hlen(quiet), 0);
    assert.deepEqual(await big.redis.hgetall(big.keys.session('big-11999').session), { s: 'A', i: String(1_800_000_000_000 + 11_999), w: '90000', p: '1', g: '1000', od: '0', f: 'fp11999' });
  } finally {
    await big.close();
  }
});
