// RUNTIMES entries name their kind and that kind's options; a wrong or missing option stops the process at start,
// naming the field, rather than failing at the first release.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError } from '../config.ts';
import { RuntimeRegistry } from '../runtime-registry.ts';

const parse = (entry: Record<string, unknown>) => RuntimeRegistry.parse(JSON.stringify([{ name: 'r', url: 'http://127.0.0.1:9000', ...entry }]));

describe('RUNTIMES kinds', () => {
  it('default to native and carry each kind\'s options', () => {
    assert.deepEqual(parse({}).lookup('http://127.0.0.1:9000')?.engine, { kind: 'native' });
    assert.deepEqual(parse({ kind: 'llamacpp', slots: 4, bytesPerToken: 512, slotSavePath: true }).lookup('http://127.0.0.1:9000')?.engine, { kind: 'llamacpp', slots: 4, bytesPerToken: 512, slotSavePath: true });
    assert.deepEqual(parse({ kind: 'sglang' }).lookup('http://127.0.0.1:9000')?.engine, { kind: 'sglang' });
    assert.deepEqual(parse({ kind: 'vllm' }).lookup('http://127.0.0.1:9000')?.engine, { kind: 'vllm', globalReleaseAction: 'none' });
  });

  const refused: [string, Record<string, unknown>, RegExp][] = [
    ['an unknown kind', { kind: 'tgi' }, /kind must be one of/],
    ['llamacpp without slots', { kind: 'llamacpp', bytesPerToken: 1 }, /slots/],
    ['llamacpp without bytesPerToken', { kind: 'llamacpp', slots: 2 }, /bytesPerToken is required/],
    ['a fractional bytesPerToken', { kind: 'sglang', bytesPerToken: 1.5 }, /bytesPerToken/],
    ['an option of another kind', { kind: 'vllm', slots: 2 }, /slots is not an option of kind vllm/],
    ['an option on native', { bytesPerToken: 2 }, /not an option of kind native/],
    ['an unknown global action', { kind: 'vllm', globalReleaseAction: 'sleep' }, /globalReleaseAction/],
    ['a non-boolean slotSavePath', { kind: 'llamacpp', slots: 2, bytesPerToken: 1, slotSavePath: 'yes' }, /slotSavePath/],
  ];
  for (const [what, entry, message] of refused) {
    it(`refuse ${what}`, () => {
      assert.throws(() => parse(entry), (err: unknown) => err instanceof ConfigError && message.test(err.message));
    });
  }
});
