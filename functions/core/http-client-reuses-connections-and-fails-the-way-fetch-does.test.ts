import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { after, afterEach, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { createHttpClient, keepAliveFetch, senderFor, sharedHttpClient, type HttpClient } from './http-client.ts';

interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  body: Buffer;
  socket: Socket;
}

interface TestServer {
  url: string;
  seen: Seen[];
  connections: Set<Socket>;
  connectionCount: () => number;
  close: () => Promise<void>;
}

const servers: TestServer[] = [];
const clients: HttpClient[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  for (const s of servers.splice(0)) await s.close();
});
after(() => sharedHttpClient.close());

async function startServer(answer: (req: IncomingMessage, res: ServerResponse, seen: Seen) => void): Promise<TestServer> {
  const seen: Seen[] = [];
  const connections = new Set<Socket>();
  let connectionCount = 0;
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const s: Seen = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks), socket: req.socket };
      seen.push(s);
      answer(req, res, s);
    });
  });
  server.on('connection', (socket: Socket) => {
    connectionCount++;
    connections.add(socket);
    socket.on('close', () => connections.delete(socket));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  const s: TestServer = {
    url: `http://127.0.0.1:${port}`,
    seen,
    connections,
    connectionCount: () => connectionCount,
    close: async () => {
      for (const socket of connections) socket.destroy();
      server.close();
      await once(server, 'close');
    },
  };
  servers.push(s);
  return s;
}

function newClient(maxSocketsPerOrigin?: number): HttpClient {
  const c = createHttpClient(maxSocketsPerOrigin === undefined ? {} : { maxSocketsPerOrigin });
  clients.push(c);
  return c;
}

async function until(condition: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (condition()) return;
    await sleep(10);
  }
  assert.fail(`timed out waiting until ${what}`);
}

const ok = (_req: IncomingMessage, res: ServerResponse): void => {
  res.writeHead(200, { 'content-type': 'text/plain' }).end('fine');
};

test('sequential requests to one origin travel over one kept-alive connection', async () => {
  const server = await startServer(ok);
  const client = newClient();
  for (let i = 0; i < 5; i++) {
    const res = await client.request(`${server.url}/n/${i}`);
    assert.equal(await res.text(), 'fine');
  }
  assert.equal(server.seen.length, 5);
  assert.equal(server.connectionCount(), 1);
  assert.equal(new Set(server.seen.map((s) => s.socket)).size, 1);
});

test('string and byte bodies arrive whole with their length, and header names go out lower-cased', async () => {
  const server = await startServer((_req, res) => {
    res.writeHead(201, [['Content-Type', 'application/json'], ['X-Multi', 'a'], ['X-Multi', 'b'], ['Retry-After', '3']]).end('{"answer":42}');
  });
  const client = newClient();
  const text = 'héllo, wörld';
  const first = await client.request(`${server.url}/text`, { method: 'post', headers: { 'Content-Type': 'text/plain', 'CE-Id': 'e-1' }, body: text });
  assert.equal(first.status, 201);
  assert.equal(first.ok, true);
  assert.deepEqual(await first.json(), { answer: 42 });
  const bytes = Buffer.from([0, 1, 2, 254, 255]);
  const second = await client.request(`${server.url}/bytes`, { method: 'PUT', body: bytes });
  assert.equal(await second.text(), '{"answer":42}');

  const [t, b] = server.seen;
  assert.equal(t?.method, 'POST');
  assert.equal(t?.body.toString('utf8'), text);
  assert.equal(t?.headers['content-length'], String(Buffer.byteLength(text)));
  assert.equal(t?.headers['ce-id'], 'e-1');
  assert.equal(t?.headers['transfer-encoding'], undefined);
  assert.ok(t?.socket !== undefined);
  assert.deepEqual(b?.body, bytes);
  assert.equal(b?.headers['content-length'], '5');

  // Names come back lower-cased; get() ignores case; repeated fields are joined as fetch joins them.
  assert.equal(first.headers.get('RETRY-AFTER'), '3');
  assert.equal(first.headers.record['x-multi'], 'a, b');
  assert.equal(first.headers.get('x-missing'), null);
});

test('an empty POST says its length is 0, and a body is read once only', async () => {
  const server = await startServer(ok);
  const res = await newClient().request(server.url, { method: 'POST' });
  assert.equal(server.seen[0]?.headers['content-length'], '0');
  assert.equal(await res.text(), 'fine');
  await assert.rejects(res.text(), TypeError);
});

test('a redirect is handed back, not followed', async () => {
  const server = await startServer((req, res) => {
    if (req.url === '/moved') res.writeHead(302, { location: '/elsewhere' }).end();
    else res.writeHead(200).end('elsewhere');
  });
  const res = await newClient().request(`${server.url}/moved`, { method: 'POST', body: 'x' });
  assert.equal(res.status, 302);
  assert.equal(res.ok, false);
  assert.equal(res.headers.get('location'), '/elsewhere');
  assert.equal(await res.text(), '');
  assert.deepEqual(server.seen.map((s) => s.url), ['/moved']);
});

test('no answer within AbortSignal.timeout rejects with a TimeoutError DOMException and drops the connection', async () => {
  const server = await startServer(() => undefined);
  const client = newClient();
  const err = await client.request(server.url, { method: 'POST', body: 'x', signal: AbortSignal.timeout(50) }).then(
    () => assert.fail('resolved'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof DOMException);
  assert.equal(err.name, 'TimeoutError');
  await until(() => server.connections.size === 0, 'the server sees the connection closed');
});

test('no answer within timeoutMs rejects as AbortSignal.timeout does, and bounds reading the body too', async () => {
  const silent = await startServer(() => undefined);
  const client = newClient();
  await assert.rejects(client.request(silent.url, { method: 'POST', body: 'x', timeoutMs: 50 }), (e: unknown) => e instanceof DOMException && e.name === 'TimeoutError');
  await until(() => silent.connections.size === 0, 'the server sees the connection closed');

  const stalling = await startServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.write('partial');
  });
  const res = await client.request(stalling.url, { timeoutMs: 100 });
  assert.equal(res.status, 200);
  await assert.rejects(res.text(), (e: unknown) => e instanceof DOMException && e.name === 'TimeoutError');
});

test('a request answered in time leaves no timer behind', async () => {
  const server = await startServer(ok);
  const client = newClient();
  const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
  await (await client.request(server.url, { timeoutMs: 60_000 })).text();
  const before = timers();
  await Promise.all(Array.from({ length: 20 }, async () => (await client.request(server.url, { timeoutMs: 60_000 })).text()));
  assert.equal(timers(), before);
});

test('abort() rejects with an AbortError DOMException, and an aborted signal sends nothing', async () => {
  const server = await startServer(() => undefined);
  const client = newClient();
  const controller = new AbortController();
  const pending = client.request(server.url, { signal: controller.signal });
  await until(() => server.seen.length === 1, 'the request arrives');
  controller.abort();
  await assert.rejects(pending, (e: unknown) => e instanceof DOMException && e.name === 'AbortError');

  await assert.rejects(client.request(server.url, { signal: controller.signal }), (e: unknown) => e instanceof DOMException && e.name === 'AbortError');
  await sleep(50);
  assert.equal(server.seen.length, 1);
});

test('the signal also bounds reading the body', async () => {
  const server = await startServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.write('partial');
    // The rest never comes.
  });
  const controller = new AbortController();
  const res = await newClient().request(server.url, { signal: controller.signal });
  assert.equal(res.status, 200);
  controller.abort();
  await assert.rejects(res.text(), (e: unknown) => e instanceof DOMException && e.name === 'AbortError');
});

test('a refused connection rejects with a TypeError whose cause is the socket error', async () => {
  const server = await startServer(ok);
  const url = server.url;
  await server.close();
  servers.length = 0;
  const err = await newClient().request(url, { method: 'POST', body: '{}' }).then(
    () => assert.fail('resolved'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof TypeError);
  assert.equal((err.cause as NodeJS.ErrnoException).code, 'ECONNREFUSED');
});

test('a body cut off by the server rejects text() with a TypeError', async () => {
  const server = await startServer((req, res) => {
    res.writeHead(200, { 'content-length': '100' });
    res.write('only some of it', () => req.socket.destroy());
  });
  const res = await newClient().request(server.url);
  await assert.rejects(res.text(), TypeError);
});

test('a pooled connection the server closed under us is retried once on a fresh one; a fresh one is not', async () => {
  // The server answers a connection's first request and resets the connection on its second, as a server whose
  // keep-alive timeout fires just as the client reuses the connection would.
  const perSocket = new Map<Socket, number>();
  const server = await startServer((req, res) => {
    const n = (perSocket.get(req.socket) ?? 0) + 1;
    perSocket.set(req.socket, n);
    if (n === 1) ok(req, res);
    else req.socket.destroy();
  });
  const client = newClient();
  assert.equal(await (await client.request(server.url, { method: 'POST', body: 'a' })).text(), 'fine');
  const again = await client.request(server.url, { method: 'POST', body: 'b' });
  assert.equal(await again.text(), 'fine');
  assert.equal(server.connectionCount(), 2);

  const resetting = await startServer((req) => req.socket.destroy());
  const err = await client.request(resetting.url).then(
    () => assert.fail('resolved'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof TypeError);
  assert.equal(resetting.seen.length, 1);
});

test('connections to one origin are bounded: requests beyond the bound wait for a free one', async () => {
  const held: ServerResponse[] = [];
  const server = await startServer((_req, res) => void held.push(res));
  const client = newClient(2);
  const all = Array.from({ length: 6 }, (_, i) => client.request(`${server.url}/${i}`).then(async (r) => r.text()));
  await until(() => held.length === 2, 'two requests arrive');
  await sleep(100);
  assert.equal(held.length, 2);
  assert.equal(server.connections.size, 2);
  while (held.length < 6 || held.some((r) => !r.writableEnded)) {
    for (const res of held) if (!res.writableEnded) res.end('done');
    await sleep(10);
  }
  assert.deepEqual(await Promise.all(all), Array(6).fill('done'));
  assert.equal(server.connectionCount(), 2);
});

test('a bad URL or protocol rejects with a TypeError before anything is sent', async () => {
  const client = newClient();
  await assert.rejects(client.request('not a url'), TypeError);
  await assert.rejects(client.request('ftp://127.0.0.1/x'), TypeError);
  assert.throws(() => createHttpClient({ maxSocketsPerOrigin: 0 }), RangeError);
});

test('keepAliveFetch answers with a Response carrying status, headers and body', async () => {
  const server = await startServer((req, res) => {
    if (req.url === '/none') res.writeHead(204).end();
    else if (req.url === '/moved') res.writeHead(307, { location: '/there' }).end('see there');
    else res.writeHead(503, 'Busy', { 'content-type': 'application/json', 'retry-after': '2' }).end('{"code":"busy"}');
  });
  const res = await keepAliveFetch(`${server.url}/busy`, { method: 'POST', headers: { 'X-Trace': 't' }, body: 'hello', redirect: 'manual' });
  assert.ok(res instanceof Response);
  assert.equal(res.status, 503);
  assert.equal(res.statusText, 'Busy');
  assert.equal(res.ok, false);
  assert.equal(res.headers.get('Retry-After'), '2');
  assert.deepEqual(await res.json(), { code: 'busy' });
  // As fetch does: names lower-cased, a string body labelled text/plain when the caller did not label it.
  assert.equal(server.seen[0]?.headers['x-trace'], 't');
  assert.equal(server.seen[0]?.headers['content-type'], 'text/plain;charset=UTF-8');

  const none = await keepAliveFetch(`${server.url}/none`, { method: 'DELETE', redirect: 'manual', headers: new Headers({ Accept: 'application/json' }) });
  assert.equal(none.status, 204);
  assert.equal(none.body, null);
  assert.equal(server.seen[1]?.headers.accept, 'application/json');

  const moved = await keepAliveFetch(new URL('/moved', server.url), { redirect: 'manual' });
  assert.equal(moved.status, 307);
  assert.equal(await moved.text(), 'see there');
  await assert.rejects(keepAliveFetch(`${server.url}/moved`, { redirect: 'error' }), TypeError);
  // Only one connection: every request above went over the shared pool.
  assert.equal(server.connectionCount(), 1);
});

test('keepAliveFetch fails as fetch does: TimeoutError, TypeError with a cause, credentials refused', async () => {
  const silent = await startServer(() => undefined);
  await assert.rejects(
    keepAliveFetch(silent.url, { method: 'POST', body: 'x', redirect: 'manual', signal: AbortSignal.timeout(50) }),
    (e: unknown) => e instanceof DOMException && e.name === 'TimeoutError',
  );
  const gone = await startServer(ok);
  const url = gone.url;
  await gone.close();
  servers.splice(servers.indexOf(gone), 1);
  const [viaFetch, viaKeepAlive] = await Promise.all(
    [fetch, keepAliveFetch].map((f) => f(url, { method: 'POST', body: 'x', redirect: 'manual' }).then(() => assert.fail('resolved'), (e: unknown) => e)),
  );
  for (const err of [viaFetch, viaKeepAlive]) {
    assert.ok(err instanceof TypeError);
    assert.equal((err.cause as NodeJS.ErrnoException).code, 'ECONNREFUSED');
  }
  await assert.rejects(keepAliveFetch('http://user:pw@127.0.0.1:1/', { redirect: 'manual' }), TypeError);
});

test('keepAliveFetch leaves what it does not handle to global fetch: a followed redirect', async () => {
  const server = await startServer((req, res) => {
    if (req.url === '/moved') res.writeHead(302, { location: '/there' }).end();
    else res.writeHead(200).end(`at ${req.url ?? ''}`);
  });
  const res = await keepAliveFetch(`${server.url}/moved`);
  assert.equal(res.status, 200);
  assert.equal(await res.text(), 'at /there');
});

test('senderFor uses an injected fetch with redirect manual, and the shared client otherwise', async () => {
  const server = await startServer(ok);
  const inits: RequestInit[] = [];
  const observed: typeof fetch = (input, init) => {
    inits.push(init ?? {});
    return fetch(input, init);
  };
  const viaFetch = await senderFor(observed)(server.url, { method: 'POST', body: 'x' });
  assert.equal(await viaFetch.text(), 'fine');
  assert.equal(inits[0]?.redirect, 'manual');
  // An injected fetch is given timeoutMs as the signal fetch understands.
  await (await senderFor(observed)(server.url, { timeoutMs: 5000 })).text();
  assert.ok(inits[1]?.signal instanceof AbortSignal);
  assert.equal('timeoutMs' in (inits[1] ?? {}), false);
  const viaClient = await senderFor()(server.url, { method: 'POST', body: 'y' });
  assert.equal(viaClient.status, 200);
  assert.equal(await viaClient.text(), 'fine');
  assert.equal(inits.length, 2);
});
