import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ActivityContextDecodeError,
  applyActivity,
  applyCompletion,
  decodeContext,
  DEFAULT_SCORING_POLICY as policy,
  encodeContext,
  initialContext,
  MAX_EMBEDDING_DIMENSIONS,
  score,
  type ActivityContext,
} from './scoring.ts';

const T0 = Date.parse('2025-01-01T00:00:00Z');

function richContext(dims: number): ActivityContext {
  const embedding = Array.from({ length: dims }, (_, i) => Math.sin(i) * 1e-3 + 0.1);
  let ctx = initialContext(T0, policy);
  ctx = applyActivity(ctx, { kind: 'cursor', at: T0 + 100 }, policy);
  ctx = applyActivity(ctx, { kind: 'cursor', at: T0 + 900 }, policy);
  ctx = applyActivity(ctx, { kind: 'message', at: T0 + 2000, text: 'deploy the reaper '.repeat(200), embedding }, policy);
  ctx = applyActivity(ctx, { kind: 'message', at: T0 + 9000, text: 'and deploy it again '.repeat(200), embedding: embedding.map((x) => x * 1.1) }, policy);
  ctx = applyActivity(ctx, { kind: 'output', at: T0 + 9500 }, policy);
  return applyCompletion(ctx, { at: T0 + 12_000, release: true }, policy);
}

test('a context reads back exactly as it was written, and scores the same', () => {
  for (const ctx of [initialContext(T0, policy), richContext(3), richContext(MAX_EMBEDDING_DIMENSIONS)]) {
    const fields = encodeContext(ctx);
    for (const value of Object.values(fields)) assert.equal(typeof value, 'string');
    const back = decodeContext(fields);
    assert.deepStrictEqual(back, ctx);
    assert.deepStrictEqual(score(back, T0 + 20_000, policy), score(ctx, T0 + 20_000, policy));
  }
});

test('a stored context is bounded by the embedding cap plus a few hundred bytes', () => {
  const fields = encodeContext(richContext(MAX_EMBEDDING_DIMENSIONS));
  const bytes = Object.entries(fields).reduce((sum, [k, v]) => sum + k.length + v.length, 0);
  assert.ok(bytes < Math.ceil((MAX_EMBEDDING_DIMENSIONS * 4) / 3) * 4 + 2048, `${bytes} bytes`);
  const small = encodeContext(richContext(3));
  const smallBytes = Object.entries(small).reduce((sum, [k, v]) => sum + k.length + v.length, 0);
  assert.ok(smallBytes < 2048, `${smallBytes} bytes even after long texts`);
});

test('fields can share a hash under a prefix, and an empty hash means no context yet', () => {
  const ctx = richContext(4);
  const fields = { ...encodeContext(ctx, 'act.'), state: 'open', 'act.unknown': 'ignored' };
  assert.ok(Object.keys(encodeContext(ctx, 'act.')).every((k) => k.startsWith('act.')));
  assert.deepStrictEqual(decodeContext(fields, 'act.'), ctx);
  assert.equal(decodeContext({}), undefined);
  assert.equal(decodeContext({ state: 'open' }), undefined);
});

test('a corrupt or foreign context is refused with an error naming the field', () => {
  const good = encodeContext(richContext(4));
  const corruptions: Array<[string, Record<string, string>]> = [
    ['v', { ...good, v: '2' }],
    ['gm', { ...good, gm: 'fast' }],
    ['gm', { ...good, gm: '' }],
    ['sm', { ...good, sm: '1.5' }],
    ['sn', { ...good, sn: '1.5' }],
    ['r', { ...good, r: '1,2,3' }],
    ['r', { ...good, r: '1,2,3,-4,5' }],
    ['r', { ...good, r: '1,2,,4,5' }],
    ['em', { ...good, em: 'not base64!' }],
    ['em', { ...good, em: Buffer.from([1, 2, 3]).toString('base64') }],
    ['em', { ...good, em: Buffer.alloc(8).toString('base64') }],
    ['sk', { ...good, sk: Buffer.from(new Uint32Array([5, 3]).buffer).toString('base64') }],
    ['ss', { ...good, ss: '-1' }],
    ['e', Object.fromEntries(Object.entries(good).filter(([k]) => k !== 'e'))],
  ];
  for (const [field, stored] of corruptions) {
    assert.throws(
      () => decodeContext(stored),
      (error: unknown) => error instanceof ActivityContextDecodeError && (field === 'v' || error.message.includes(field)),
      `corrupt ${field}: ${JSON.stringify(stored[field])}`,
    );
  }
});
