// TLS to a Redis reached by IP, as the memorystore component connects (rediss://10.0.0.3:6378): a real redis-server
// with TLS, certificates made by openssl here, and the project's own client (createRedisClient) in a child process
// whose NODE_EXTRA_CA_CERTS is the CA bundle, exactly as infra/components/redis-ca sets it. Memorystore's server
// certificate names the instance's IP in its subject CN, without an IP SAN (seen by users, e.g. envoyproxy/ratelimit
// pull request #409 "GCP Memorystore which sets the CN to an IP address"; the Google documentation we could find does
// not spell the certificate's fields out). Node's own check refuses that (nodejs/node lib/tls.js checkServerIdentity:
// an IP host is compared with IP SANs only), so connect.ts accepts a CN equal to the IP, and nothing more.
// NODE_EXTRA_CA_CERTS takes a file of one or more PEM certificates (nodejs/node doc/api/cli.md), which is what lets
// the redis-ca Secret hold every CA Memorystore lists during a CA rotation.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, describe, it } from 'node:test';
import type { PeerCertificate } from 'node:tls';
import { assertRedisInstalled, freePort } from '../../../tests/support/redis-harness.ts';
import { until } from '../../../tests/support/until.ts';
import { checkRedisServerIdentity } from './connect.ts';
import { diesWithParent } from '../../../tools/local-stack/parent-death.ts';

const PASSWORD = 'tls-test-password-0123456789';
const CONNECT_MODULE = pathToFileURL(path.join(import.meta.dirname, 'connect.ts')).href;

let dir: string;
const servers: ChildProcess[] = [];

function openssl(...args: string[]): void {
  const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')} failed: ${r.stderr}`);
}

/** A self-signed CA, as Memorystore's per-instance CA is. */
function makeCa(name: string): void {
  openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
    '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.crt`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
}

/** A server certificate issued by `ca` whose subject CN is `cn`, with the given subjectAltName or none. */
function makeServerCert(name: string, ca: string, cn: string, san?: string): void {
  openssl('req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${cn}`,
    '-keyout', `${name}.key`, '-out', `${name}.csr`);
  writeFileSync(path.join(dir, `${name}.ext`), `basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n${san ? `subjectAltName=${san}\n` : ''}`);
  openssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-days', '1',
    '-extfile', `${name}.ext`, '-out', `${name}.crt`);
}

/** Starts redis-server with TLS only, serving `cert`; its password reaches it on stdin, not argv. */
async function startTlsRedis(cert: string): Promise<number> {
  const port = await freePort();
  const child = spawn(...diesWithParent('redis-server', ['-']), { stdio: ['pipe', 'ignore', 'inherit'] });
  servers.push(child);
  child.stdin?.end([
    'port 0', `tls-port ${port}`, 'bind 127.0.0.1', `tls-cert-file ${path.join(dir, `${cert}.crt`)}`,
    `tls-key-file ${path.join(dir, `${cert}.key`)}`, `tls-ca-cert-file ${path.join(dir, 'ca1.crt')}`, 'tls-auth-clients no',
    `requirepass ${PASSWORD}`, 'save ""', 'appendonly no', `dir ${dir}`, '',
  ].join('\n'));
  await until(`TLS redis-server on ${port}`, () => {
    const r = spawnSync('redis-cli', ['--tls', '--insecure', '-p', String(port), 'ping'], { encoding: 'utf8', env: { ...process.env, REDISCLI_AUTH: PASSWORD } });
    return r.stdout.includes('PONG');
  }, 15_000, 50);
  return port;
}

interface Outcome { ok: boolean; pong?: string; code?: string; message?: string }

/** Connects to 127.0.0.1:`port` with the project's createRedisClient in a fresh Node trusting `caBundle`, and PINGs. */
function connectThroughProjectCode(port: number, caBundle: string): Promise<Outcome> {
  const code = `
    const { createRedisClient, connectRedis } = await import(${JSON.stringify(CONNECT_MODULE)});
    const client = createRedisClient({ REDIS_URL: 'rediss://127.0.0.1:${port}', REDIS_CLUSTER_NODES: '', REDIS_PASSWORD: ${JSON.stringify(PASSWORD)}, REDIS_TLS: true, CORE_TIMEOUT_MS: 2000 });
    let last;
    client.on('error', (e) => { last = e; });
    const give = (o) => { process.stdout.write(JSON.stringify(o)); client.disconnect(); process.exit(0); };
    setTimeout(() => give({ ok: false, code: last?.code, message: String(last?.message ?? 'no answer') }), 4000);
    try {
      await connectRedis(client);
      give({ ok: true, pong: await client.ping() });
    } catch (e) {
      give({ ok: false, code: (last ?? e)?.code, message: String((last ?? e)?.message) });
    }`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', code], {
      env: { ...process.env, NODE_EXTRA_CA_CERTS: path.join(dir, caBundle) },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
    child.once('error', reject);
    child.once('exit', () => {
      try {
        resolve(JSON.parse(out) as Outcome);
      } catch {
        reject(new Error(`the client printed no outcome: ${out}`));
      }
    });
  });
}

before(() => {
  assertRedisInstalled();
  dir = mkdtempSync(path.join(tmpdir(), 'sr-redis-tls-'));
  makeCa('ca1');
  makeCa('ca2');
  makeCa('untrusted');
  makeServerCert('by-ip-cn', 'ca1', '127.0.0.1');
  makeServerCert('other-ip-cn', 'ca1', '10.9.9.9');
  makeServerCert('rotated', 'ca2', '127.0.0.1');
  makeServerCert('stranger', 'untrusted', '127.0.0.1');
  makeServerCert('ip-san-elsewhere', 'ca1', '127.0.0.1', 'IP:10.9.9.9');
  // What the documented command writes: every CA Memorystore lists, one after the other, in one file.
  writeFileSync(path.join(dir, 'bundle.crt'), readFileSync(path.join(dir, 'ca1.crt'), 'utf8') + readFileSync(path.join(dir, 'ca2.crt'), 'utf8'));
  writeFileSync(path.join(dir, 'first-ca-only.crt'), readFileSync(path.join(dir, 'ca1.crt')));
});

after(async () => {
  await Promise.all(servers.map((s) => new Promise<void>((done) => {
    if (s.exitCode !== null || s.signalCode !== null) return done();
    s.once('exit', () => done());
    s.kill('SIGTERM');
  })));
  rmSync(dir, { recursive: true, force: true });
});

void describe('TLS to a Redis reached by its IP', () => {
  it('connects when the server certificate names the IP in its CN only, as Memorystore’s does', async () => {
    const port = await startTlsRedis('by-ip-cn');
    assert.deepEqual(await connectThroughProjectCode(port, 'bundle.crt'), { ok: true, pong: 'PONG' });
  });

  it('refuses a certificate whose CN is another IP', async () => {
    const port = await startTlsRedis('other-ip-cn');
    const outcome = await connectThroughProjectCode(port, 'bundle.crt');
    assert.equal(outcome.ok, false);
    assert.equal(outcome.code, 'ERR_TLS_CERT_ALTNAME_INVALID', outcome.message);
  });

  it('refuses a certificate from a CA not in the bundle, even with the right CN', async () => {
    const port = await startTlsRedis('stranger');
    const outcome = await connectThroughProjectCode(port, 'bundle.crt');
    assert.equal(outcome.ok, false);
    assert.match(outcome.code ?? '', /UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|SELF_SIGNED_CERT_IN_CHAIN/, outcome.message);
  });

  it('refuses a certificate whose IP SANs name other addresses, whatever its CN says', async () => {
    const port = await startTlsRedis('ip-san-elsewhere');
    const outcome = await connectThroughProjectCode(port, 'bundle.crt');
    assert.equal(outcome.code, 'ERR_TLS_CERT_ALTNAME_INVALID', outcome.message);
  });

  it('trusts a server certificate issued by the second CA of the bundle (a CA rotation), and not without it', async () => {
    const port = await startTlsRedis('rotated');
    assert.deepEqual(await connectThroughProjectCode(port, 'bundle.crt'), { ok: true, pong: 'PONG' });
    const firstOnly = await connectThroughProjectCode(port, 'first-ca-only.crt');
    assert.equal(firstOnly.ok, false, 'the first CA alone must not verify the rotated certificate');
  });
});

void describe('checkRedisServerIdentity', () => {
  const cert = (subject: Record<string, string>, subjectaltname?: string): PeerCertificate =>
    ({ subject, ...(subjectaltname === undefined ? {} : { subjectaltname }) }) as unknown as PeerCertificate;

  it('leaves host names to Node: a DNS host is never matched by an IP CN', () => {
    assert.ok(checkRedisServerIdentity('redis.example', cert({ CN: '10.0.0.3' })) instanceof Error);
    assert.equal(checkRedisServerIdentity('redis.example', cert({ CN: 'redis.example' })), undefined);
  });

  it('accepts an IP host named by the CN of a certificate without IP SANs, in either IPv6 spelling', () => {
    assert.equal(checkRedisServerIdentity('10.0.0.3', cert({ CN: '10.0.0.3' })), undefined);
    assert.equal(checkRedisServerIdentity('10.0.0.3', cert({ CN: '10.0.0.3' }, 'DNS:redis.internal')), undefined);
    assert.equal(checkRedisServerIdentity('fd00::3', cert({ CN: 'fd00:0:0:0:0:0:0:3' })), undefined);
  });

  it('refuses another IP, a CN that is a name, and a certificate whose IP SANs omit the host', () => {
    assert.ok(checkRedisServerIdentity('10.0.0.3', cert({ CN: '10.0.0.4' })) instanceof Error);
    assert.ok(checkRedisServerIdentity('10.0.0.3', cert({ CN: 'redis.internal' })) instanceof Error);
    assert.ok(checkRedisServerIdentity('10.0.0.3', cert({ CN: '10.0.0.3' }, 'IP Address:10.0.0.4')) instanceof Error);
    assert.equal(checkRedisServerIdentity('10.0.0.3', cert({ CN: 'x' }, 'IP Address:10.0.0.3')), undefined);
  });
});
