// Private, throw-away Redis servers for tests: real redis-server processes on free loopback ports, no
// persistence, removed afterwards. No Redis mock is used anywhere in this project.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from '../../tools/local-stack/redis-server.ts';
import { diesWithParent } from '../../tools/local-stack/parent-death.ts';

/** Fails at once, with the install command, when redis-server is not on PATH. */
export function assertRedisInstalled(): void {
  const probe = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) {
    throw new Error(
      'redis-server is not on PATH. The tests run against real Redis; install it first, e.g. ' +
        '`sudo apt-get install redis-server` (Debian/Ubuntu) or `brew install redis` (macOS).',
    );
  }
}

/** A free loopback port (below the ephemeral range: see tools/local-stack/redis-server.ts). */
export { freePort };

function redisCli(port: number, ...args: string[]): string {
  const out = spawnSync('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { encoding: 'utf8' });
  return (out.stdout ?? '').trim();
}

async function waitFor(check: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (check()) return;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** One running redis-server owned by the test run. */
export interface RedisProcess {
  readonly port: number;
  readonly url: string;
  /** Stops the server for fault-injection tests; `start` brings it back on the same port. */
  stop(): Promise<void>;
  start(): Promise<void>;
}

/** Starts a redis-server on a free port (optionally in cluster mode), waiting until it answers PING. */
export async function startRedis(opts: { cluster?: boolean; port?: number } = {}): Promise<RedisProcess> {
  assertRedisInstalled();
  const port = opts.port ?? (await freePort());
  const dir = mkdtempSync(join(tmpdir(), `sr-redis-${port}-`));
  let child: ChildProcess | undefined;
  // A cluster node also listens on its bus port, port + 10000 unless told: for most ports that is in the ephemeral
  // range, where any outbound connection may hold it (seen: a node that exited at start, its bus port taken). It is
  // drawn as the port is (cluster-port, Redis 7.0+).
  const busPort = opts.cluster ? await freePort() : undefined;
  const args = [
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
    '--dir', dir, '--protected-mode', 'no', '--loglevel', 'warning',
    ...(busPort !== undefined ? ['--cluster-enabled', 'yes', '--cluster-port', String(busPort), '--cluster-config-file', join(dir, 'nodes.conf'), '--cluster-node-timeout', '2000'] : []),
  ];
  const proc: RedisProcess = {
    port,
    url: `redis://127.0.0.1:${port}`,
    async start() {
      // SIGKILLed by the kernel when the test process dies, whatever kills it (a global setup that throws left them).
      child = spawn(...diesWithParent('redis-server', args), { stdio: 'ignore' });
      child.unref();
      await waitFor(() => redisCli(port, 'PING') === 'PONG', `redis-server on port ${port}`);
    },
    async stop() {
      const c = child;
      child = undefined;
      if (!c || c.exitCode !== null) return;
      const exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
      c.ref(); // keep the event loop alive until the exit is observed
      c.kill('SIGKILL');
      await exited;
    },
  };
  await proc.start();
  process.once('exit', () => {
    child?.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  return proc;
}

/** A 3-master Redis Cluster (no replicas) on free loopback ports. */
export interface RedisClusterProcess {
  readonly nodes: readonly RedisProcess[];
  /** host:port seeds, as REDIS_CLUSTER_NODES takes them. */
  readonly seeds: string;
  stop(): Promise<void>;
}

/** Starts three cluster-mode servers, assigns all slots and waits until the cluster reports ok. */
export async function startRedisCluster(): Promise<RedisClusterProcess> {
  const nodes = await Promise.all([0, 1, 2].map(() => startRedis({ cluster: true })));
  const addrs = nodes.map((n) => `127.0.0.1:${n.port}`);
  const create = spawnSync('redis-cli', ['--cluster', 'create', ...addrs, '--cluster-replicas', '0', '--cluster-yes'], { encoding: 'utf8' });
  if (create.status !== 0) throw new Error(`redis-cli --cluster create failed: ${create.stderr || create.stdout}`);
  await waitFor(() => nodes.every((n) => redisCli(n.port, 'CLUSTER', 'INFO').includes('cluster_state:ok')), 'cluster_state:ok');
  return {
    nodes,
    seeds: addrs.join(','),
    async stop() {
      await Promise.all(nodes.map((n) => n.stop()));
    },
  };
}
