// Contract test: the OpenAPI document is parsed, its examples are checked against its own schemas, and the
// simulator's real answers to every documented operation are checked against the documented responses.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { parse } from 'yaml';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { startSimRuntime, type SimRuntime } from '../../runtimes/sim-gpu-runtime/server.ts';
import { SESSION_ID_PATTERN } from '../core/runtime-client.ts';

interface MediaType {
  schema: unknown;
  examples?: Record<string, { value: unknown }>;
}
interface ResponseObject {
  $ref?: string;
  content?: Record<string, MediaType>;
}
interface Operation {
  tags: string[];
  operationId: string;
  requestBody?: { content: Record<string, MediaType> };
  responses: Record<string, ResponseObject>;
}
interface OpenApiDoc {
  openapi: string;
  paths: Record<string, Record<string, Operation>>;
  components: { responses: Record<string, ResponseObject>; schemas: Record<string, { pattern?: string }> };
}

const doc = parse(await readFile(new URL('./runtime-api.openapi.yaml', import.meta.url), 'utf8')) as OpenApiDoc;
// The whole document is registered as one schema, so fragments can refer into its components.
const ajv = new Ajv2020({ strict: false, allErrors: true });
ajv.addSchema(doc, 'openapi');

function resolveResponse(r: ResponseObject): ResponseObject {
  if (r.$ref === undefined) return r;
  const name = r.$ref.replace('#/components/responses/', '');
  const target = doc.components.responses[name];
  assert.ok(target, `unresolved ${r.$ref}`);
  return target;
}

function validate(schema: unknown, value: unknown, where: string): void {
  // Local references in a fragment point into the document it came from.
  const check = ajv.compile(JSON.parse(JSON.stringify(schema).replaceAll('"#/components/', '"openapi#/components/')) as object);
  const ok = check(value);
  assert.ok(ok, `${where}: ${ajv.errorsText(check.errors)} in ${JSON.stringify(value)}`);
}

function operations(): { path: string; method: string; op: Operation }[] {
  return Object.entries(doc.paths).flatMap(([path, item]) => Object.entries(item).map(([method, op]) => ({ path, method, op })));
}

/** Checks a real answer against the documented response for its status (or the NXX range). */
function conforms(operationId: string, status: number, body: unknown): void {
  const found = operations().find((o) => o.op.operationId === operationId);
  assert.ok(found, `no operation ${operationId}`);
  const documented = found.op.responses[String(status)] ?? found.op.responses[`${String(status)[0]}XX`];
  assert.ok(documented, `${operationId} does not document status ${status}`);
  const media = Object.values(resolveResponse(documented).content ?? {})[0];
  assert.ok(media, `${operationId} ${status} documents no body`);
  validate(media.schema, body, `${operationId} ${status}`);
}

async function call(sim: SimRuntime, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: unknown }> {
  const res = await fetch(`${sim.url}${path}`, {
    method,
    headers: { 'content-type': 'application/json', ...headers },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  return { status: res.status, body: await res.json() };
}

describe('the OpenAPI document matches the simulator', () => {
  let sim: SimRuntime;
  before(async () => {
    sim = await startSimRuntime({ seed: 5, basePath: '/rt' });
  });
  after(async () => {
    await sim.stop();
  });

  it('is OpenAPI 3.1 and states the session id pattern the client enforces', () => {
    assert.match(doc.openapi, /^3\.1\./);
    assert.equal(doc.components.schemas.SessionId?.pattern, SESSION_ID_PATTERN.source);
  });

  it('marks every simulator-only operation with the x-simulator tag and SIMULATOR ONLY', () => {
    const simOnly = operations().filter((o) => o.op.tags.includes('x-simulator'));
    assert.deepEqual(simOnly.map((o) => o.op.operationId).sort(), ['simAllocate', 'simGetFaults', 'simGetSession', 'simSetFaults', 'simStats']);
    for (const o of simOnly) assert.match(JSON.stringify(o.op), /SIMULATOR ONLY/);
    const api = operations().filter((o) => o.op.tags.includes('release'));
    assert.deepEqual(api.map((o) => o.op.operationId).sort(), ['getMemory', 'releaseSession']);
    const optional = operations().filter((o) => o.op.tags.includes('reconcile'));
    assert.deepEqual(optional.map((o) => o.op.operationId), ['listSessions']);
  });

  it('has examples that satisfy their own schemas', () => {
    let checked = 0;
    for (const { op } of operations()) {
      const media = [
        ...Object.values(op.requestBody?.content ?? {}),
        ...Object.values(op.responses).flatMap((r) => Object.values(resolveResponse(r).content ?? {})),
      ];
      for (const m of media) {
        for (const [name, ex] of Object.entries(m.examples ?? {})) {
          validate(m.schema, ex.value, `${op.operationId} example ${name}`);
          checked++;
        }
      }
    }
    assert.ok(checked >= 12, `only ${checked} examples checked`);
  });

  it('documents every answer the simulator gives to the release API', async () => {
    const id = encodeURIComponent('tenant-a:chat.42');
    const allocated = await call(sim, 'POST', `/v1/sessions/${id}/allocate`, { incarnation: 3, bytes: 1024 });
    conforms('simAllocate', allocated.status, allocated.body);
    assert.equal(allocated.status, 201);

    const session = await call(sim, 'GET', `/v1/sessions/${id}`);
    assert.equal(session.status, 200);
    conforms('simGetSession', session.status, session.body);

    const stale = await call(sim, 'POST', `/v1/sessions/${id}/release`, { incarnation: 2 }, { 'idempotency-key': 'tenant-a:chat.42:2' });
    assert.equal(stale.status, 409);
    conforms('releaseSession', stale.status, stale.body);

    const wrongKey = await call(sim, 'POST', `/v1/sessions/${id}/release`, { incarnation: 3 }, { 'idempotency-key': 'other:3' });
    assert.equal(wrongKey.status, 400);
    conforms('releaseSession', wrongKey.status, wrongKey.body);

    const released = await call(sim, 'POST', `/v1/sessions/${id}/release`, { incarnation: 3 }, { 'idempotency-key': 'tenant-a:chat.42:3' });
    assert.deepEqual(released, { status: 200, body: { freedBytes: 1024 } });
    conforms('releaseSession', released.status, released.body);

    const replayed = await call(sim, 'POST', `/v1/sessions/${id}/release`, { incarnation: 3 }, { 'idempotency-key': 'tenant-a:chat.42:3' });
    assert.deepEqual(replayed, released);

    const gone = await call(sim, 'POST', `/v1/sessions/${id}/release`, { incarnation: 4 }, { 'idempotency-key': 'tenant-a:chat.42:4' });
    assert.equal(gone.status, 404);
    conforms('releaseSession', gone.status, gone.body);

    for (const fault of ['rateLimit', 'error', 500] as const) {
      sim.queueFaults(fault);
      const faulted = await call(sim, 'POST', `/v1/sessions/${id}/release`, { incarnation: 4 }, { 'idempotency-key': 'tenant-a:chat.42:4' });
      conforms('releaseSession', faulted.status, faulted.body);
    }

    // The listing pages in id order; `next` leads to the rest, and the last page has none.
    await call(sim, 'POST', `/v1/sessions/b-1/allocate`, { incarnation: 1, bytes: 10 });
    await call(sim, 'POST', `/v1/sessions/a-1/allocate`, { incarnation: 2, bytes: 20 });
    const first = await call(sim, 'GET', '/v1/sessions?limit=1');
    assert.deepEqual(first, { status: 200, body: { sessions: [{ sessionId: 'a-1', incarnation: 2, bytes: 20 }], next: 'a-1' } });
    conforms('listSessions', first.status, first.body);
    const rest = await call(sim, 'GET', '/v1/sessions?after=a-1');
    assert.deepEqual(rest, { status: 200, body: { sessions: [{ sessionId: 'b-1', incarnation: 1, bytes: 10 }] } });
    conforms('listSessions', rest.status, rest.body);
    const badLimit = await call(sim, 'GET', '/v1/sessions?limit=257');
    assert.equal(badLimit.status, 400);
    conforms('listSessions', badLimit.status, badLimit.body);
    sim.queueFaults('error');
    const unavailable = await call(sim, 'GET', '/v1/sessions');
    conforms('listSessions', unavailable.status, unavailable.body);

    const memory = await call(sim, 'GET', '/v1/memory');
    conforms('getMemory', memory.status, memory.body);

    const stats = await call(sim, 'GET', '/sim/stats');
    conforms('simStats', stats.status, stats.body);

    const faults = await call(sim, 'PUT', '/sim/faults', { latencyMs: 1 });
    conforms('simSetFaults', faults.status, faults.body);
    const current = await call(sim, 'GET', '/sim/faults');
    conforms('simGetFaults', current.status, current.body);
    assert.equal((current.body as { latencyMs: number }).latencyMs, 1);
    const badFaults = await call(sim, 'PUT', '/sim/faults', { errorRate: 2 });
    assert.equal(badFaults.status, 400);
    conforms('simSetFaults', badFaults.status, badFaults.body);
  });
});
