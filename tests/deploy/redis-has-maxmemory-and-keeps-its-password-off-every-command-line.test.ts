// The in-cluster Redis as rendered: maxmemory with noeviction below its container's limit in every overlay that runs
// it, no Secret on any workload's command line in any overlay (and with the redis-tls component), and the rendered
// start-up run for real: the init container's script and redis-server's command, with a real redis-server here.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { OVERLAYS, REPO_ROOT, renderKustomization, renderOverlay, withChange } from './deployment-checks.ts';
import type { Manifest } from './manifest-schemas.ts';
import {
  checkNoSecretsOnCommandLines,
  checkRedisMemory,
  parseQuantityBytes,
  parseRedisBytes,
  redisServerSettings,
  redisStatefulSets,
  renderedRedisStartup,
  runRenderedRedis,
} from './redis-checks.ts';
import { assertRedisInstalled, freePort } from '../support/redis-harness.ts';

const rendered = new Map(OVERLAYS.map((o) => [o, renderOverlay(o)]));
const prod = rendered.get('prod') ?? [];
const dev = rendered.get('dev') ?? [];

/** An overlay plus a component, rendered from a throw-away kustomization (kustomize takes relative paths only). */
function renderWithComponent(overlay: string, component: string): Manifest[] {
  const dir = mkdtempSync(path.join(tmpdir(), 'sr-kustomize-'));
  try {
    const rel = (p: string) => path.relative(dir, path.join(REPO_ROOT, p));
    writeFileSync(path.join(dir, 'kustomization.yaml'), [
      'apiVersion: kustomize.config.k8s.io/v1beta1', 'kind: Kustomization',
      'resources:', `  - ${rel(`knative/overlays/${overlay}`)}`, 'components:', `  - ${rel(component)}`, '',
    ].join('\n'));
    return renderKustomization(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const devWithTls = renderWithComponent('dev', 'infra/components/redis-tls');

/** The rendering with the Redis container's args replaced. */
function withRedisArgs(ms: readonly Manifest[], args: string[]): Manifest[] {
  return withChange(ms, 'StatefulSet', 'redis', '/spec/template/spec/containers/0/args', args);
}

void describe('Redis memory in every overlay', () => {
  for (const [o, ms] of rendered) {
    void it(`${o}: maxmemory with noeviction, below the memory limit with room for the fork and overhead`, () => assert.deepEqual(checkRedisMemory(ms), []));
  }
  void it('dev with the redis-tls component keeps maxmemory', () => assert.deepEqual(checkRedisMemory(devWithTls), []));

  void it('the overlays that run Redis set the numbers they mean', () => {
    assert.equal(redisStatefulSets(rendered.get('prod-memorystore') ?? []).length, 0, 'Memorystore replaces the StatefulSet');
    const [s] = redisStatefulSets(prod);
    assert.ok(s);
    assert.equal(redisServerSettings(prod, s)?.get('maxmemory'), '4000mb');
    assert.equal(redisServerSettings(prod, s)?.get('appendonly'), 'yes');
    const [d] = redisStatefulSets(dev);
    assert.ok(d);
    assert.equal(redisServerSettings(dev, d)?.get('maxmemory'), '800mb');
  });

  void it('reads Redis and Kubernetes memory units', () => {
    assert.equal(parseRedisBytes('800mb'), 800 * 1024 ** 2);
    assert.equal(parseRedisBytes('1g'), 1e9);
    assert.equal(parseRedisBytes('4GB'), 4 * 1024 ** 3);
    assert.throws(() => parseRedisBytes('4 GiB'));
    assert.equal(parseQuantityBytes('10Gi'), 10 * 1024 ** 3);
    assert.equal(parseQuantityBytes('64Mi'), 64 * 1024 ** 2);
  });

  // The check must be able to fail.
  void it('notices maxmemory missing', () => {
    const ms = withRedisArgs(prod, ['/etc/redis/redis.conf', '--include', '/run/redis-auth/auth.conf']);
    assert.match(checkRedisMemory(ms).join('\n'), /StatefulSet\/redis runs Redis without maxmemory/);
  });

  void it('notices maxmemory too close to the limit for the AOF-rewrite fork', () => {
    const ms = withRedisArgs(prod, ['/etc/redis/redis.conf', '--maxmemory', '8gb']);
    assert.match(checkRedisMemory(ms).join('\n'), /sets maxmemory 8gb: 2x .* is 20480 MiB, more than the container's 10Gi limit/);
  });

  void it('notices an eviction policy that would drop session state', () => {
    const ms = withRedisArgs(prod, ['/etc/redis/redis.conf', '--maxmemory', '1gb', '--maxmemory-policy', 'allkeys-lru']);
    assert.match(checkRedisMemory(ms).join('\n'), /maxmemory-policy allkeys-lru, not noeviction/);
  });

  void it('notices a Redis started through a shell, whose settings it cannot read', () => {
    const ms = withChange(prod, 'StatefulSet', 'redis', '/spec/template/spec/containers/0/command', ['sh', '-c', 'exec redis-server /etc/redis/redis.conf']);
    assert.match(checkRedisMemory(withRedisArgs(ms, [])).join('\n'), /does not run redis-server with its config file as the first argument/);
  });

  void it('notices a missing memory limit', () => {
    const ms = withChange(prod, 'StatefulSet', 'redis', '/spec/template/spec/containers/0/resources', { requests: { memory: '8Gi' } });
    assert.match(checkRedisMemory(ms).join('\n'), /has no memory limit/);
  });
});

void describe('no Secret on a command line', () => {
  for (const [o, ms] of rendered) {
    void it(`${o}: no workload expands a Secret-backed variable or carries a Secret's value on a command line`, () => assert.deepEqual(checkNoSecretsOnCommandLines(ms), []));
  }
  void it('dev with the redis-tls component keeps it off too', () => assert.deepEqual(checkNoSecretsOnCommandLines(devWithTls), []));

  // The check must be able to fail, for each way a secret reaches argv.
  void it('notices the former start-up: a shell expanding the password into redis-server’s arguments', () => {
    let ms = withChange(dev, 'StatefulSet', 'redis', '/spec/template/spec/containers/0/command', ['sh', '-c', 'exec redis-server /etc/redis/redis.conf --requirepass "$REDIS_PASSWORD"']);
    ms = withChange(ms, 'StatefulSet', 'redis', '/spec/template/spec/containers/0/env', [{ name: 'REDIS_PASSWORD', valueFrom: { secretKeyRef: { name: 'redis-auth', key: 'password' } } }]);
    assert.match(checkNoSecretsOnCommandLines(ms).join('\n'), /StatefulSet\/redis container redis's command and args expands \$REDIS_PASSWORD \(Secret redis-auth key password\) in a shell script/);
  });

  void it('notices the kubelet’s $(VAR) expansion of a Secret-backed variable', () => {
    const ms = withRedisArgs(dev, ['/etc/redis/redis.conf', '--requirepass', '$(REDISCLI_AUTH)']);
    assert.match(checkNoSecretsOnCommandLines(ms).join('\n'), /puts \$\(REDISCLI_AUTH\) .* on a command line: the kubelet expands it into argv/);
  });

  void it('notices a probe that passes the password with -a', () => {
    const ms = withChange(dev, 'StatefulSet', 'redis', '/spec/template/spec/containers/0/readinessProbe/exec/command', ['sh', '-c', 'redis-cli -a "${REDISCLI_AUTH}" ping']);
    assert.match(checkNoSecretsOnCommandLines(ms).join('\n'), /readinessProbe expands \$REDISCLI_AUTH/);
  });

  void it('notices a Secret’s value written into a command', () => {
    const ms = withRedisArgs(dev, ['/etc/redis/redis.conf', '--requirepass', 'local-dev-only-not-a-secret']);
    assert.match(checkNoSecretsOnCommandLines(ms).join('\n'), /carries the value of Secret redis-auth key password/);
  });

  void it('leaves $$(VAR), the kubelet’s escape, and other variables alone', () => {
    const ms = withRedisArgs(dev, ['/etc/redis/redis.conf', '--x', '$$(REDISCLI_AUTH)', '$REDISCLI_AUTHOR']);
    assert.deepEqual(checkNoSecretsOnCommandLines(ms), []);
  });
});

void describe('the rendered Redis start-up, run for real', () => {
  const roots: string[] = [];
  after(() => {
    for (const r of roots) rmSync(r, { recursive: true, force: true });
  });

  void it('serves AUTH with the Secret’s password, writes it only to an owner-only file, and never shows it in a cmdline', async () => {
    assertRedisInstalled();
    const root = mkdtempSync(path.join(tmpdir(), 'sr-rendered-redis-'));
    roots.push(root);
    const password = 'Zm9vYmFyLWJhei1xdXV4LXJlbmRlcmVk+/=';
    const port = await freePort();
    const redis = await runRenderedRedis(renderedRedisStartup(prod), root, password, port);
    assert.ok(redis.process, redis.initResults.map((r) => r.stderr).join('\n'));
    const pid = redis.process.pid;
    try {
      assert.deepEqual(redis.initResults.map((r) => r.status), [0], redis.initResults.map((r) => r.stderr).join('\n'));
      const authFile = [...redis.renderedFiles].find(([file]) => file.endsWith('auth.conf'));
      assert.ok(authFile, 'the init container wrote the password include');
      assert.equal(authFile[1], 0o600, 'only Redis’ user may read the rendered password');
      const cli = (env: Record<string, string>, ...args: string[]) => {
        const r = spawnSync('redis-cli', ['-p', String(port), ...args], { encoding: 'utf8', env: { PATH: process.env.PATH, ...env } });
        return `${r.stderr}${r.stdout}`.trim();
      };
      let pong = '';
      for (let i = 0; i < 100 && pong !== 'PONG'; i++) {
        pong = cli({ REDISCLI_AUTH: password }, 'ping');
        if (pong !== 'PONG') await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(pong, 'PONG', 'AUTH with the Secret’s password works');
      assert.match(cli({}, 'ping'), /NOAUTH/);
      assert.match(cli({ REDISCLI_AUTH: 'wrong' }, 'ping'), /WRONGPASS/);
      assert.equal(cli({ REDISCLI_AUTH: password }, 'config', 'get', 'maxmemory').split('\n').at(-1), String(4000 * 1024 ** 2));
      assert.equal(cli({ REDISCLI_AUTH: password }, 'config', 'get', 'maxmemory-policy').split('\n').at(-1), 'noeviction');
      // The readiness probe as rendered, with only the port added: it authenticates from REDISCLI_AUTH alone.
      const [sh = 'sh', flag = '-c', script = ''] = renderedRedisStartup(prod).probe;
      const probe = spawnSync(sh, [flag, script.replace('redis-cli', `redis-cli -p ${port}`)], { env: { PATH: process.env.PATH, REDISCLI_AUTH: password } });
      assert.equal(probe.status, 0, 'the readiness probe passes');
      const failing = spawnSync(sh, [flag, script.replace('redis-cli', `redis-cli -p ${port}`)], { env: { PATH: process.env.PATH, REDISCLI_AUTH: 'wrong' } });
      assert.notEqual(failing.status, 0, 'the readiness probe fails without the password');
      assert.ok(redis.commandLinesSeen.length >= 2, `saw the start-up's processes: ${redis.commandLinesSeen.join(' | ')}`);
      const now = spawnSync('cat', [`/proc/${pid}/cmdline`], { encoding: 'utf8' }).stdout;
      for (const line of [...redis.commandLinesSeen, now]) assert.ok(!line.includes(password), `the password is on a command line: ${line}`);
    } finally {
      await redis.stop();
    }
    assert.ok(redis.process.exitCode !== null || redis.process.signalCode !== null, 'redis-server stopped');
  });

  // The cmdline assertion above must be able to fail: the former start-up, a shell exec'ing redis-server with
  // --requirepass "$REDIS_PASSWORD", shows the password in redis-server's argv until Redis rewrites its title.
  void it('sees the password on the command line of the former start-up', async () => {
    const root = mkdtempSync(path.join(tmpdir(), 'sr-rendered-redis-'));
    roots.push(root);
    let former = withChange(prod, 'StatefulSet', 'redis', '/spec/template/spec/initContainers', []);
    former = withChange(former, 'StatefulSet', 'redis', '/spec/template/spec/containers/0/command', ['sh', '-c', 'exec redis-server "$@" --requirepass "$REDIS_PASSWORD"', 'sh']);
    former = withRedisArgs(former, ['/etc/redis/redis.conf']);
    former = withChange(former, 'StatefulSet', 'redis', '/spec/template/spec/containers/0/env', [{ name: 'REDIS_PASSWORD', valueFrom: { secretKeyRef: { name: 'redis-auth', key: 'password' } } }]);
    const password = 'former-start-up-password';
    const redis = await runRenderedRedis(renderedRedisStartup(former), root, password, await freePort());
    await redis.stop();
    assert.ok(redis.commandLinesSeen.some((line) => line.includes(password)), redis.commandLinesSeen.join(' | '));
  });

  void it('the init container refuses a password redis.conf could not carry as one word', async () => {
    const root = mkdtempSync(path.join(tmpdir(), 'sr-rendered-redis-'));
    roots.push(root);
    mkdirSync(root, { recursive: true });
    const redis = await runRenderedRedis(renderedRedisStartup(prod), root, 'two words', await freePort());
    await redis.stop();
    assert.equal(redis.process, undefined, 'Redis does not start after a failed init container');
    assert.equal(redis.initResults[0]?.status, 1);
    assert.match(redis.initResults[0]?.stderr ?? '', /whitespace, quotes or backslashes/);
  });
});
