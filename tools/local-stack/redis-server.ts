// A private redis-server for the local stack: started on a free loopback port, kept in its own process group (so a
// Ctrl-C in the terminal reaches only the launcher, which stops the parts in order), SIGKILLed by the kernel if the
// launcher dies (parent-death.ts), and stopped gracefully. With a
// data directory it keeps its data there (append-only file) so sessions, deadlines and the GPU ledger survive a
// restart of `npm start`; without one it is throw-away, removed on stop. Redis writes the append-only file before it
// answers a client (fsync follows every second), so even a SIGKILL of redis-server loses no acknowledged write; only a
// crash of the machine could lose the last second. It listens on loopback only, in protected
// mode, and asks every client for a password drawn at random for each start; the password reaches redis-server on
// its standard input (`redis-server -` reads its configuration there), never on its command line, which any user of
// the machine can read.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { diesWithParent } from './parent-death.ts';

/** redis-server is missing or failed to start; the message says how to fix it. */
export class RedisServerError extends Error {
  override name = 'RedisServerError';
}

// Listening ports are drawn below Linux's ephemeral range (32768-60999 by default): a port the kernel hands out for
// port 0 is an ephemeral one, and between this check and the child binding it, any outbound connection of the many
// the stack makes (to Redis, the Broker, the runtimes) may take it as its local port (seen: a deadline engine that
// failed with EADDRINUSE on a crowded machine). Ports handed out by this process are not handed out again.
const LISTEN_PORTS = { from: 20_000, to: 32_000 } as const;
const handedOut = new Set<number>();

function bindable(port: number): Promise<boolean> {
  return new Promise((answer) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', () => answer(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => answer(true)));
  });
}

/** A free loopback port below the ephemeral range, not handed out before by this process. */
export async function freePort(): Promise<number> {
  for (let tries = 0; tries < 200; tries++) {
    const port = LISTEN_PORTS.from + Math.floor(Math.random() * (LISTEN_PORTS.to - LISTEN_PORTS.from));
    if (handedOut.has(port) || !(await bindable(port))) continue;
    handedOut.add(port);
    return port;
  }
  throw new Error(`no free port between ${LISTEN_PORTS.from} and ${LISTEN_PORTS.to}`);
}

/** Sends PING (after AUTH, given a password) over a plain TCP connection; true once the server answers PONG. */
export function pingRedis(port: number, timeoutMs = 1000, password?: string): Promise<boolean> {
  return new Promise((answer) => {
    const socket = connect({ host: '127.0.0.1', port });
    let received = '';
    const done = (ok: boolean) => {
      socket.destroy();
      answer(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('error', () => done(false));
    socket.once('connect', () => {
      const auth = password === undefined ? '' : `*2\r\n$4\r\nAUTH\r\n$${Buffer.byteLength(password)}\r\n${password}\r\n`;
      socket.write(`${auth}PING\r\n`);
    });
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('utf8');
      if (received.includes('+PONG')) done(true);
      else if (received.includes('-')) done(false);
    });
  });
}

/** A running private redis-server. */
export interface RedisServer {
  readonly port: number;
  /** redis://127.0.0.1:<port>, without the password. */
  readonly url: string;
  /** The password every client must give (REDIS_PASSWORD). */
  readonly password: string;
  /** Where its data is kept, or undefined when it is throw-away. */
  readonly dataDir: string | undefined;
  /** Its process id. */
  readonly pid: number | undefined;
  /** Sends it a signal (a chaos harness's kill -9) and resolves once it has exited. */
  kill(signal: NodeJS.Signals): Promise<void>;
  /** Stops it with SIGTERM (it writes its data first when it has a data directory) and waits for it to exit. */
  stop(): Promise<void>;
}

const START_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 10_000;

/** How to start a private redis-server; a restart passes the port and password it had, so its clients reconnect. */
export interface RedisServerOptions {
  /** Where it keeps its data (append-only file); default: nowhere (a throw-away server). */
  dataDir?: string;
  /** Its port; default a free one. */
  port?: number;
  /** Its password; default one drawn at random. */
  password?: string;
}

/** Starts redis-server on a loopback port and resolves once it answers PING. */
export async function startRedisServer(opts: RedisServerOptions = {}): Promise<RedisServer> {
  const probe = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) {
    throw new RedisServerError(
      'redis-server is not on PATH. Install it (e.g. `sudo apt-get install redis-server` or `brew install redis`), ' +
        'or point REDIS_URL at a Redis you already run.',
    );
  }
  const port = opts.port ?? (await freePort());
  const dataDir = opts.dataDir === undefined ? undefined : resolve(opts.dataDir);
  const dir = dataDir ?? mkdtempSync(join(tmpdir(), `sr-redis-${port}-`));
  if (dataDir !== undefined) mkdirSync(dataDir, { recursive: true });
  const persistence = dataDir === undefined ? ['--save', '', '--appendonly', 'no'] : ['--save', '', '--appendonly', 'yes', '--appendfsync', 'everysec'];
  const password = opts.password ?? randomBytes(24).toString('base64url');
  const args = ['-', '--port', String(port), '--bind', '127.0.0.1', '--protected-mode', 'yes', '--loglevel', 'warning', '--dir', dir, ...persistence];
  const [command, commandArgs] = diesWithParent('redis-server', args);
  const child: ChildProcess = spawn(command, commandArgs, { stdio: ['pipe', 'ignore', 'pipe'], detached: true });
  child.stdin?.end(`requirepass ${password}\n`);
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString('utf8')).slice(-4000)));
  const exited = new Promise<void>((done) => child.once('exit', () => done()));
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  const cleanUp = () => {
    process.removeListener('exit', killOnExit);
    if (dataDir === undefined) rmSync(dir, { recursive: true, force: true });
  };

  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!(await pingRedis(port, 1000, password))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      await exited;
      cleanUp();
      throw new RedisServerError(`redis-server did not start on port ${port}: ${stderr.trim() || 'no answer to PING'}`);
    }
    await sleep(50);
  }

  let stopped: Promise<void> | undefined;
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    password,
    dataDir,
    pid: child.pid,
    async kill(signal) {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
    stop: () =>
      (stopped ??= (async () => {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill('SIGTERM');
          const gone = await Promise.race([exited.then(() => true), sleep(STOP_TIMEOUT_MS, false, { ref: false })]);
          if (!gone) {
            child.kill('SIGKILL');
            await exited;
          }
        }
        cleanUp();
      })()),
  };
}
