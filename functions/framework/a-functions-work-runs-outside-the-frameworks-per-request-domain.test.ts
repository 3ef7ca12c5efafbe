// functions-framework serves each request inside a domain of its own; a function's work runs outside it (the domain's
// async-hook bookkeeping on every promise was a fifth of a function's CPU), and still answers as before.
import assert from 'node:assert/strict';
import domain from 'node:domain';
import { request } from 'node:http';
import { after, test } from 'node:test';
import * as ff from '@google-cloud/functions-framework';
import { getTestServer } from '@google-cloud/functions-framework/testing';
import { pino } from 'pino';
import { OutsideTheDomain, outsideTheDomain } from './outside-the-domain.ts';
import { serveFunction, type FunctionServer } from './serve.ts';

const logger = pino({ level: 'silent' });
/** Whether the code calling it runs in a domain (node:domain sets process.domain; @types/node does not declare it). */
const inDomain = () => {
  const { domain: active } = process as { domain?: unknown };
  return active !== undefined && active !== null;
};
const servers: FunctionServer[] = [];
after(async () => {
  for (const s of servers) await s.close();
});

function post(port: number, path = '/'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (c: string) => (body += c)).on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end('{}');
  });
}

test('work given from inside a domain runs outside it, in order, and its result, rejection or throw comes back', async () => {
  const seen: { order: number; domain: boolean; afterAwait: boolean }[] = [];
  const results = await new Promise<PromiseSettledResult<number>[]>((resolve) => {
    const d = domain.create();
    d.run(() => {
      assert.ok(inDomain(), 'the caller is inside a domain');
      const runs = [1, 2, 3].map((order) =>
        outsideTheDomain.run(async () => {
          const entry = { order, domain: inDomain(), afterAwait: true };
          seen.push(entry);
          await new Promise((r) => setImmediate(r));
          entry.afterAwait = inDomain();
          if (order === 2) throw new Error('rejected');
          return order * 10;
        }),
      );
      runs.push(outsideTheDomain.run(() => {
        throw new Error('thrown');
      }));
      void Promise.allSettled(runs).then(resolve);
    });
  });
  assert.deepEqual(seen.map((s) => s.order), [1, 2, 3]);
  assert.deepEqual(seen.map((s) => [s.domain, s.afterAwait]), [[false, false], [false, false], [false, false]]);
  assert.deepEqual(results.map((r) => (r.status === 'fulfilled' ? r.value : (r.reason as Error).message)), [10, 'rejected', 30, 'thrown']);
});

test('work given from inside running work runs too, without waiting for more', async () => {
  const loop = new OutsideTheDomain();
  const inner = await loop.run(() => loop.run(() => 'inner ran'));
  assert.equal(inner, 'inner ran');
  let nested = false;
  await loop.run(() => {
    void loop.run(() => {
      nested = true;
    });
  });
  await new Promise((r) => setImmediate(r));
  assert.equal(nested, true);
});

test('a loop constructed inside a domain would run its work there: where it is constructed is what counts', async () => {
  const inside = await new Promise<boolean>((resolve) => {
    const d = domain.create();
    d.run(() => {
      const loop = new OutsideTheDomain();
      void loop.run(async () => {
        await new Promise((r) => setImmediate(r));
        return inDomain();
      }).then(resolve);
    });
  });
  assert.equal(inside, true);
});

test("the framework runs a function in its domain; a served function's work runs outside it and still answers", async () => {
  // The framework's own wrapping, as a control: the handler it calls is inside a domain.
  let frameworkDomain = false;
  ff.http('domain-control', (_req, res) => {
    frameworkDomain = inDomain();
    res.status(204).end();
  });
  const control = getTestServer('domain-control');
  await new Promise<void>((r) => control.listen(0, '127.0.0.1', r));
  try {
    const { port } = control.address() as { port: number };
    assert.equal((await post(port)).status, 204);
    assert.equal(frameworkDomain, true, 'functions-framework wraps the call in a domain');
  } finally {
    await new Promise<void>((r) => control.close(() => r()));
  }

  const observed: boolean[] = [];
  const server = await serveFunction({
    name: 'outside-the-domain',
    port: 0,
    host: '127.0.0.1',
    bodyLimit: () => 1024,
    logger,
    handler: async (req, res) => {
      observed.push(inDomain());
      await new Promise((r) => setImmediate(r));
      observed.push(inDomain());
      if (req.path === '/fail') throw new Error('the work failed');
      res.status(200).send('done');
    },
  });
  servers.push(server);
  assert.deepEqual(await post(server.port), { status: 200, body: 'done' });
  assert.deepEqual(observed, [false, false]);
  // A rejected promise still reaches the framework, which answers it with its crash response.
  const failed = await post(server.port, '/fail');
  assert.equal(failed.status, 500);
});
