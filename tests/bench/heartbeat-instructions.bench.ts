// npm run bench:instructions — Redis's work per heartbeat counted in machine instructions, so that a change to the
// heartbeat script can be judged on a machine whose speed moves by half between runs (issue 16). A private
// redis-server runs under Valgrind's callgrind, which counts the instructions it executes (Ir); counting is switched on
// only around each phase (`callgrind_control`), so the opens before are not counted. The same waves of heartbeats
// go through session-reaper's heartbeat (SessionStore.heartbeatMany, quiet records on, as bench:compare runs it) and
// through bench:compare's floor (one `ZADD GT CH` a wave on one sorted set of the same size), in the two shapes
// bench:compare sends: its asked rate (heartbeat-30s: ~33,000/s in ticks of 5 ms, so ~170 heartbeats a call,
// ~5 per bucket) and its blast (waves of 1,000, which heartbeatMany sends as script calls of up to 256).
// Consecutive ids, as bench:compare's driver walks its fleet.
//
// Instructions are not time: a cache miss costs no instruction, so Redis's dictionary lookups at 1M sessions weigh
// less here than in bench:compare. What the count gives is the same answer every run, for Redis's share only (the
// process's share is bench:compare's); a benchmark, not a test.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { KeySpace } from '../../functions/core/redis/keys.ts';
import { Scripts } from '../../functions/core/redis/scripts.ts';
import { createRedisClient, connectRedis } from '../../functions/core/redis/connect.ts';
import { SessionStore, eventFingerprint } from '../../functions/core/session-store.ts';
import { freePort } from '../../tools/local-stack/redis-server.ts';
import { diesWithParent } from '../../tools/local-stack/parent-death.ts';

const { values: flags } = parseArgs({
  options: {
    sessions: { type: 'string', default: '100000' },
    'asked-wave': { type: 'string', default: '170' },
    'blast-wave': { type: 'string', default: '1000' },
    heartbeats: { type: 'string', default: '50000' },
    help: { type: 'boolean', default: false },
  },
});
if (flags.help) {
  console.log(`npm run bench:instructions -- [--sessions N] [--asked-wave N] [--blast-wave N] [--heartbeats N]
  Redis instructions per heartbeat (callgrind), session-reaper's heartbeat against bench:compare's floor.
  Needs valgrind (Debian: apt-get install valgrind).`);
  process.exit(0);
}
const positive = (name: keyof typeof flags) => {
  const n = Number(flags[name]);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`--${name} must be a positive integer, not ${String(flags[name])}`);
  return n;
};
const SESSIONS = positive('sessions');
const HEARTBEATS = positive('heartbeats');
const SHAPES = [
  { name: 'asked rate', wave: positive('asked-wave') },
  { name: 'blast', wave: positive('blast-wave') },
];
const BUCKETS = 32;
const TIMEOUT_MS = 90_000;

for (const tool of ['valgrind', 'callgrind_control']) {
  const probe = spawnSync(tool, ['--version'], { stdio: 'ignore' });
  if (probe.error) {
    console.error(`${tool} is not on PATH: install Valgrind first (Debian: apt-get install valgrind).`);
    process.exit(2);
  }
}

const dir = mkdtempSync(join(tmpdir(), 'sr-instructions-'));
const port = await freePort();
// Killed by the kernel if this process dies; counting starts switched off, so the opens run at Valgrind's base speed.
const child = spawn(
  ...diesWithParent('valgrind', [
    '--tool=callgrind', '--instr-atstart=no', `--callgrind-out-file=${join(dir, 'callgrind.out')}`,
    'redis-server', '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir,
    '--protected-mode', 'no', '--loglevel', 'warning',
  ]),
  { stdio: ['ignore', 'ignore', 'pipe'] },
);
let valgrindLog = '';
child.stderr.on('data', (b: Buffer) => (valgrindLog += b.toString()));
const cleanUp = () => {
  child.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
};
process.once('exit', cleanUp);
// Node runs no exit handlers when a signal ends it: on Ctrl-C or a SIGTERM the directory would be left behind.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    cleanUp();
    process.exit(128 + (signal === 'SIGINT' ? 2 : 15));
  });
}

const control = (...args: string[]) => {
  const r = spawnSync('callgrind_control', [...args, String(child.pid)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`callgrind_control ${args.join(' ')}: ${r.stderr || r.stdout}`);
};
let dumps = 0;
/** Runs `work` with counting on and answers the instructions Redis executed meanwhile. */
async function counted(work: () => Promise<void>): Promise<number> {
  control('--instr=on');
  control('--zero');
  await work();
  control('--dump');
  control('--instr=off');
  dumps += 1;
  // Each dump goes to its own file, the out file's name and `.<n>`; its `totals:` line is the instructions counted.
  const file = join(dir, `callgrind.out.${dumps}`);
  for (let waited = 0; ; waited += 100) {
    const totals = /^totals: (\d+)/m.exec(readFileSyncOrEmpty(file));
    if (totals) return Number(totals[1]);
    if (waited > 30_000) throw new Error(`callgrind wrote no ${file}: ${readdirSync(dir).join(', ')}\n${valgrindLog}`);
    await sleep(100);
  }
}

function readFileSyncOrEmpty(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

// Valgrind starts slowly: wait until the server answers before connecting (a client refused at first would log errors).
for (let waited = 0; ; waited += 200) {
  if (spawnSync('redis-cli', ['-h', '127.0.0.1', '-p', String(port), 'PING'], { encoding: 'utf8' }).stdout?.trim() === 'PONG') break;
  if (waited > 120_000 || child.exitCode !== null) throw new Error(`redis-server under valgrind did not answer on port ${port}\n${valgrindLog}`);
  await sleep(200);
}
const redis = createRedisClient({ REDIS_URL: `redis://127.0.0.1:${port}`, REDIS_CLUSTER_NODES: '', REDIS_PASSWORD: '', REDIS_TLS: false, CORE_TIMEOUT_MS: 120_000 });
await connectRedis(redis);
const version = /redis_version:(\S+)/.exec(await redis.info('server'))?.[1];
const store = new SessionStore(redis, new KeySpace('sr', BUCKETS), await Scripts.register(redis), { tombstoneTtlMs: 86_400_000, quietRecords: true });
const id = (i: number) => `sess-${String(i).padStart(7, '0')}`;
const now0 = Date.now();
// The fleet, opened as bench:compare opens it (placements over 8 nodes), and the floor's sorted set of the same ids.
for (let base = 0; base < SESSIONS; base += 1000) {
  await Promise.all(Array.from({ length: Math.min(1000, SESSIONS - base) }, (_, j) => {
    const i = base + j;
    const node = i % 8;
    return store.open({
      sessionId: id(i), fingerprint: eventFingerprint('bench', id(i)), now: now0, liveFrom: now0, windowMs: TIMEOUT_MS,
      placement: { node: `gpu-node-${node}`, runtimeUrl: `http://runtime-${node}.inference.svc:8000`, gpuBytes: 2 ** 31 },
    });
  }));
  const pairs: (string | number)[] = [];
  for (let i = base; i < Math.min(SESSIONS, base + 1000); i++) pairs.push(now0 + TIMEOUT_MS, id(i));
  await redis.zadd('floor', ...(pairs as [number, string]));
}

console.log(`bench:instructions — Redis ${version} under callgrind, ${SESSIONS.toLocaleString('en')} sessions (${BUCKETS} buckets, quiet records), ${HEARTBEATS.toLocaleString('en')} heartbeats a phase`);
const rows: { shape: string; wave: number; reaper: number; floor: number }[] = [];
// Each call a millisecond later than the one before, in every phase, so every heartbeat moves its deadline out (as at
// bench:compare's asked rate and in its blast); a heartbeat that moves nothing costs the script a read-back besides.
let k = 0;
for (const shape of SHAPES) {
  const waves = Math.ceil(HEARTBEATS / shape.wave);
  const total = waves * shape.wave;
  let cursor = 0;
  const wave = () => Array.from({ length: shape.wave }, () => id((cursor = (cursor + 1) % SESSIONS)));
  const reaper = await counted(async () => {
    for (let w = 0; w < waves; w++) {
      const now = now0 + 1000 + k++;
      await store.heartbeatMany(wave().map((sessionId) => ({ sessionId, liveFrom: now })), now);
    }
  });
  cursor = 0;
  const floor = await counted(async () => {
    for (let w = 0; w < waves; w++) {
      const now = now0 + 1000 + k++;
      const args: (string | number)[] = ['GT', 'CH'];
      for (const member of wave()) args.push(now + TIMEOUT_MS, member);
      await redis.zadd('floor', ...(args as ['GT']));
    }
  });
  rows.push({ shape: shape.name, wave: shape.wave, reaper: reaper / total, floor: floor / total });
}
console.log('| shape | heartbeats a wave | session-reaper Ir/heartbeat | floor Ir/heartbeat | ratio |');
console.log('|---|---|---|---|---|');
for (const r of rows) console.log(`| ${r.shape} | ${r.wave} | ${Math.round(r.reaper).toLocaleString('en')} | ${Math.round(r.floor).toLocaleString('en')} | ${(r.reaper / r.floor).toFixed(2)} |`);
await redis.quit();
cleanUp();
