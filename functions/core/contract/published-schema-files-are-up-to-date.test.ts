// The JSON Schemas in schemas/v1 are what producers outside this repository validate against, so they must be
// exactly what events.ts generates, and must accept and reject the same events the runtime does when read by
// an independent validator.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ajv2020 } from 'ajv/dist/2020.js';
import ajvFormats from 'ajv-formats';
import { EventType, EventTypes, catalogue, schemaFileOf, schemaIdOf } from './events.ts';
import { SCHEMA_DIR, renderSchemaFiles, staleSchemaFiles, writeSchemaFiles } from './write-schemas.ts';

const FIXTURES = join(import.meta.dirname, '..', '..', '..', 'tests', 'fixtures', 'events');

type Json = Record<string, unknown>;
const readJson = (path: string): Json => JSON.parse(readFileSync(path, 'utf8')) as Json;

describe('the published schema files', () => {
  it('are exactly what `npm run schemas` would write', async () => {
    assert.deepEqual(await staleSchemaFiles(), []);
  });

  it('pass `write-schemas.ts --check`', () => {
    execFileSync(process.execPath, [join(import.meta.dirname, 'write-schemas.ts'), '--check'], { stdio: 'pipe' });
  });

  it('are reported stale when edited, missing or unexpected, and rewritten by writeSchemaFiles', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sr-schemas-'));
    try {
      await writeSchemaFiles(dir);
      assert.deepEqual(await staleSchemaFiles(dir), []);
      const edited = schemaFileOf(EventType.SessionOpened);
      const removed = schemaFileOf(EventType.GpuReleased);
      writeFileSync(join(dir, edited), readFileSync(join(dir, edited), 'utf8').replace('"minimum": 100', '"minimum": 10'));
      unlinkSync(join(dir, removed));
      writeFileSync(join(dir, 'dev.sessionreaper.session.renamed.schema.json'), '{}\n');
      assert.deepEqual(await staleSchemaFiles(dir), [removed, 'dev.sessionreaper.session.renamed.schema.json', edited].sort());
      await writeSchemaFiles(dir);
      assert.deepEqual(await staleSchemaFiles(dir), []);
      assert.deepEqual(readdirSync(dir).sort(), [...renderSchemaFiles().keys()].sort());
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('hold one schema per event type, with $id, title, description and examples, and an index', () => {
    const files = readdirSync(SCHEMA_DIR).sort();
    assert.deepEqual(files, [...Object.keys(EventTypes).map(schemaFileOf), 'index.json'].sort());
    for (const type of Object.keys(EventTypes)) {
      const schema = readJson(join(SCHEMA_DIR, schemaFileOf(type)));
      assert.equal(schema.$schema, 'https://json-schema.org/draft/2020-12/schema');
      assert.equal(schema.$id, schemaIdOf(type));
      assert.equal(schema.title, type);
      assert.match(String(schema.description), /Unknown properties are rejected\.$/);
      assert.equal(schema.additionalProperties, false);
      assert.ok(Array.isArray(schema.examples) && schema.examples.length > 0, `${type} has examples`);
    }
    const index = readJson(join(SCHEMA_DIR, 'index.json'));
    const events = index.events as Array<{ type: string; schema: string }>;
    assert.deepEqual(events.map((e) => e.type), catalogue.map((e) => e.type));
    for (const e of events) assert.ok(files.includes(e.schema), `${e.schema} exists`);
  });

  describe('read by an independent validator', () => {
    const ajv = new Ajv2020({ strict: true, allErrors: true });
    ajvFormats.default(ajv);
    const validators = new Map(Object.keys(EventTypes).map((type) => [type, ajv.compile(readJson(join(SCHEMA_DIR, schemaFileOf(type))))]));
    const fixtures = (dir: string) =>
      readdirSync(join(FIXTURES, dir))
        .filter((name) => name !== 'expectations.json')
        .map((name) => [name, readJson(join(FIXTURES, dir, name))] as const);

    it('accept their own examples', () => {
      for (const [type, validate] of validators) {
        const schema = readJson(join(SCHEMA_DIR, schemaFileOf(type)));
        for (const example of schema.examples as unknown[]) assert.ok(validate(example), `${type}: ${ajv.errorsText(validate.errors)}`);
      }
    });

    it('accept the data of every valid fixture', () => {
      for (const [name, fixture] of fixtures('valid')) {
        const validate = validators.get(String(fixture.type));
        assert.ok(validate, `${name} has a contract type`);
        assert.ok(validate(fixture.data), `${name}: ${ajv.errorsText(validate.errors)}`);
      }
    });

    it('reject the data of every invalid fixture the runtime rejects for its data', () => {
      const expectations = readJson(join(FIXTURES, 'invalid', 'expectations.json')) as Record<string, { code: string; field: string }>;
      let checked = 0;
      for (const [name, fixture] of fixtures('invalid')) {
        const expected = expectations[name];
        if (!expected?.field.startsWith('data.') || expected.code === 'TOO_LARGE') continue;
        const validate = validators.get(String(fixture.type));
        assert.ok(validate, `${name} has a contract type`);
        assert.equal(validate(fixture.data), false, `${name} should be invalid`);
        checked += 1;
      }
      assert.ok(checked >= 40, `only ${checked} data fixtures checked`);
    });
  });
});

describe('the catalogue', () => {
  it('lists every type once, with its producer and consumers', () => {
    assert.deepEqual(catalogue.map((e) => e.type).sort(), Object.keys(EventTypes).sort());
    const consumersOf = (type: string) => catalogue.find((e) => e.type === type)?.consumers;
    assert.deepEqual(consumersOf(EventType.InferenceCompleted), ['activity-score', 'destroy-dispatch']);
    assert.deepEqual(consumersOf(EventType.SessionActivity), ['activity-score']);
    const consumedBy = (fn: string) => catalogue.filter((e) => (e.consumers as readonly string[]).includes(fn)).map((e) => e.type).sort();
    assert.deepEqual(consumedBy('heartbeat-timeout'), [EventType.SessionHeartbeat, EventType.SessionHold, EventType.SessionOpened].sort());
    assert.deepEqual(consumedBy('gpu-release'), [EventType.GpuDemoteRequested, EventType.GpuReleaseRequested, EventType.GpuRestoreRequested]);
    assert.deepEqual(
      consumedBy('destroy-dispatch'),
      [
        EventType.SessionClosed,
        EventType.SessionExpired,
        EventType.SessionIdle,
        EventType.InferenceCompleted,
        EventType.GpuReleased,
        EventType.GpuReleaseFailed,
        EventType.DestroyResume,
        EventType.SessionDestroyRequested,
      ].sort(),
    );
  });
});
