// The bench's figures are only comparable with the paper's trace if the shipped copy is byte-for-byte the published
// file: its sha256 is the one the provenance in tests/fixtures/traces/README.md records.
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import assert from 'node:assert/strict';
import { test } from 'node:test';

const TRACE = new URL('../../fixtures/traces/mooncake_conversation_trace.jsonl', import.meta.url);
const README = new URL('../../fixtures/traces/README.md', import.meta.url);

test('the shipped Mooncake trace has the sha256 its provenance records', async () => {
  const [bytes, readme] = await Promise.all([readFile(TRACE), readFile(README, 'utf8')]);
  const sha = createHash('sha256').update(bytes).digest('hex');
  assert.equal(sha, 'b8cbb061a85206d729d91cdc2981f43c9e0d99209dce588d3af5f7934408b9df');
  assert.equal(bytes.length, 3_029_533);
  assert.ok(readme.includes(sha), 'the README states the same sha256');
});
