// What the session record's layout costs a heartbeat, measured before anyone rebuilds it (issue 16 leaves the
// redesign open): Redis CPU per heartbeat and Redis bytes per session for
//   per-key   the layout of today: a record is a HASH of its own (`…:{b}:s:<id>`, fields as open-session writes
//             them), read per heartbeat with one HMGET of the fields heartbeat-n.lua reads (s, i, w, tn, pc);
//   bucket    the records of a bucket as the fields of ONE hash (field = session id, value = the same fields packed
//             in one string), read for a whole batch with ONE HMGET;
//   no read   the same script without any record read: only the batch's ZADD (what is left of a heartbeat if its
//             checks cost nothing);
//   ZADD      a plain `ZADD GT CH` of the batch, no script: bench:compare's sorted-set floor.
// Every scripted variant parses the same arguments (ids and ages, space-separated, as heartbeat-n.lua does), checks
// state, owner and pending end where it reads them, moves the deadlines with one ZADD GT CH and answers two integers
// per heartbeat, so the differences are the record read. Batches of 256 heartbeats of one bucket, 8 in flight, in
// two orders: `sequential` (consecutive ids, as bench:compare's driver beats its fleet) and `random`.
// Not a test: it prints figures and exits 0. `BENCH_LAYOUT_SESSIONS` (default 1,000,000), `BENCH_LAYOUT_BUCKETS` (32),
// `BENCH_LAYOUT_CALLS` (calls per variant and round, default 2,000), `BENCH_LAYOUT_ROUNDS` (3).
import { cpus, totalmem } from 'node:os';
import { createRedisClient, connectRedis } from '../../functions/core/redis/connect.ts';
import { startRedisServer } from '../../tools/local-stack/redis-server.ts';

const SESSIONS = Number(process.env.BENCH_LAYOUT_SESSIONS ?? 1_000_000);
const BUCKETS = Number(process.env.BENCH_LAYOUT_BUCKETS ?? 32);
const CALLS = Number(process.env.BENCH_LAYOUT_CALLS ?? 2_000);
const ROUNDS = Number(process.env.BENCH_LAYOUT_ROUNDS ?? 3);
const BATCH = 256;
const IN_FLIGHT = 8;
const WINDOW_MS = 90_000;

// Shared by the scripted variants: ARGV[1] now, ARGV[2] ids, ARGV[3] ages; KEYS[1] the bucket's deadline index.
const PARSE = `
local now = tonumber(ARGV[1])
local ids, ages = {}, {}
for id in string.gmatch(ARGV[2], '[^ ]+') do ids[#ids + 1] = id end
for age in string.gmatch(ARGV[3], '[^ ]+') do ages[#ages + 1] = tonumber(age) end
local out, zadd, moving = {}, { 'GT', 'CH' }, 0
local function refresh(k, inc, window)
  local target = now - ages[k] + window
  out[2 * k - 1], out[2 * k] = inc, target
  moving = moving + 1
  zadd[2 * moving + 1], zadd[2 * moving + 2] = target, ids[k]
end
`;
const WRITE = `
if moving > 0 then redis.call('ZADD', KEYS[1], unpack(zadd)) end
return out
`;
const SCRIPTS = {
  // KEYS[2] the record key prefix of the bucket (records are built keys, as heartbeat-n.lua builds them).
  'per-key': `${PARSE}
for k = 1, #ids do
  local st = redis.call('HMGET', KEYS[2] .. ids[k], 's', 'i', 'w', 'tn', 'pc')
  local inc, window = tonumber(st[2]), tonumber(st[3])
  if st[1] == 'A' and not st[5] and (st[4] or '') == '' and inc and window then refresh(k, inc, window)
  else out[2 * k - 1], out[2 * k] = inc or 0, -1 end
end${WRITE}`,
  // KEYS[2] the bucket's records hash; a value is 's i w p g od f[ tn]' (state first, so a tombstone is told at once).
  bucket: `${PARSE}
local records = redis.call('HMGET', KEYS[2], unpack(ids))
for k = 1, #ids do
  local r = records[k]
  local s, inc, window, tn
  if r then s, inc, window, tn = string.match(r, '^(%a) (%d+) (%d+) %d+ %d+ %-?%d+ %S+ ?(%S*)') end
  if s == 'A' and tn == '' then refresh(k, tonumber(inc), tonumber(window))
  else out[2 * k - 1], out[2 * k] = tonumber(inc) or 0, -1 end
end${WRITE}`,
  'no read': `${PARSE}
for k = 1, #ids do refresh(k, 1, ${WINDOW_MS}) end${WRITE}`,
} as const;
type Variant = keyof typeof SCRIPTS | 'ZADD';
const VARIANTS: readonly Variant[] = ['per-key', 'bucket', 'no read', 'ZADD'];

const server = await startRedisServer();
const redis = createRedisClient({ REDIS_URL: server.url, REDIS_CLUSTER_NODES: '', REDIS_PASSWORD: server.password, REDIS_TLS: false, CORE_TIMEOUT_MS: 60_000 });
try {
  await connectRedis(redis);
  const info = async (section: string) => await redis.info(section);
  const usedMemory = async () => Number(/used_memory:(\d+)/.exec(await info('memory'))![1]);
  const redisCpuMicros = async () => {
    const text = await info('cpu');
    return (Number(/used_cpu_user:([\d.]+)/.exec(text)![1]) + Number(/used_cpu_sys:([\d.]+)/.exec(text)![1])) * 1e6;
  };
  const version = /redis_version:(\S+)/.exec(await info('server'))?.[1] ?? '?';
  console.log(`bench:layout — Node ${process.version}, Redis ${version}, ${cpus().length} × ${cpus()[0]?.model.split(' ').slice(0, 2).join(' ') ?? '?'}, ${Math.round(totalmem() / 2 ** 30)} GiB`);
  console.log(`${SESSIONS.toLocaleString('en-US')} sessions in ${BUCKETS} buckets; ${CALLS.toLocaleString('en-US')} calls of ${BATCH} heartbeats per variant and order, ${IN_FLIGHT} in flight, ${ROUNDS} rounds`);

  const perBucket = Math.ceil(SESSIONS / BUCKETS);
  const idOf = (i: number) => `sess-${String(i).padStart(7, '0')}`;
  const index = (b: number) => `sr:{${b}}:deadlines`;
  const recordPrefix = (b: number) => `sr:{${b}}:s:`;
  const records = (b: number) => `sr:{${b}}:records`;
  const now0 = Date.now();
  // What open-session-10.lua writes for a session without tenant or engine address (includes/session.lua's fields).
  const fieldsOf = (i: number) => ({ s: 'A', i: String(now0 - 86_400_000 + i), w: String(WINDOW_MS), p: String(1 + (i % 16)), g: '68719476736', od: String(i % 5000), f: 'k3Jx9Qa2LmZp' });

  // Filled one structure at a time, so that each one's bytes are the used_memory it added.
  const bytes: Record<string, number> = {};
  const fill = async (what: string, add: (pipe: ReturnType<typeof redis.pipeline>, b: number, i: number, id: string) => void) => {
    const before = await usedMemory();
    for (let b = 0; b < BUCKETS; b++) {
      let pipe = redis.pipeline();
      for (let j = 0; j < perBucket; j++) {
        const i = b * perBucket + j;
        if (i >= SESSIONS) break;
        add(pipe, b, i, idOf(i));
        if (j % 2000 === 1999) {
          await pipe.exec();
          pipe = redis.pipeline();
        }
      }
      await pipe.exec();
    }
    bytes[what] = ((await usedMemory()) - before) / SESSIONS;
  };
  await fill('deadline index', (pipe, b, _i, id) => pipe.zadd(index(b), now0 + WINDOW_MS, id));
  await fill('per-key records', (pipe, b, i, id) => pipe.hset(`${recordPrefix(b)}${id}`, fieldsOf(i)));
  await fill('bucket records', (pipe, b, i, id) => {
    const f = fieldsOf(i);
    pipe.hset(records(b), id, `${f.s} ${f.i} ${f.w} ${f.p} ${f.g} ${f.od} ${f.f}`);
  });
  console.log('Redis bytes per session (used_memory added / sessions):');
  console.log(`  deadline index entry ${bytes['deadline index']!.toFixed(1)} B; record as its own hash ${bytes['per-key records']!.toFixed(1)} B; record as a field of its bucket's hash ${bytes['bucket records']!.toFixed(1)} B`);
  console.log(`  a session in all: per-key ${(bytes['deadline index']! + bytes['per-key records']!).toFixed(1)} B, bucket ${(bytes['deadline index']! + bytes['bucket records']!).toFixed(1)} B (issue 16's budget: 250 B)`);

  const shas = Object.fromEntries(await Promise.all(Object.entries(SCRIPTS).map(async ([name, body]) => [name, (await redis.script('LOAD', body)) as string]))) as Record<keyof typeof SCRIPTS, string>;
  let clock = now0;
  let cursor = 0;
  const batchOf = (order: 'sequential' | 'random', b: number): string[] => {
    const ids: string[] = [];
    for (let k = 0; k < BATCH; k++) {
      const j = order === 'random' ? Math.floor(Math.random() * perBucket) : (cursor + k) % perBucket;
      ids.push(idOf(Math.min(b * perBucket + j, SESSIONS - 1)));
    }
    if (order === 'sequential') cursor = (cursor + BATCH) % perBucket;
    return ids;
  };
  const call = (variant: Variant, b: number, ids: string[]): Promise<unknown> => {
    clock += 1;
    if (variant === 'ZADD') return redis.zadd(index(b), 'GT', 'CH', ...ids.flatMap((id) => [clock + WINDOW_MS, id]));
    const second = variant === 'per-key' ? recordPrefix(b) : records(b);
    return redis.evalsha(shas[variant], variant === 'no read' ? 1 : 2, index(b), ...(variant === 'no read' ? [] : [second]), clock, ids.join(' '), ids.map(() => '0').join(' '));
  };
  const measure = async (variant: Variant, order: 'sequential' | 'random'): Promise<number> => {
    const before = await redisCpuMicros();
    for (let c = 0; c < CALLS; c += IN_FLIGHT) {
      await Promise.all(Array.from({ length: IN_FLIGHT }, (_, j) => {
        const b = (c + j) % BUCKETS;
        return call(variant, b, batchOf(order, b));
      }));
    }
    return ((await redisCpuMicros()) - before) / (CALLS * BATCH);
  };

  const results = new Map<string, number[]>();
  for (let round = 0; round < ROUNDS; round++) {
    for (const order of ['sequential', 'random'] as const) {
      for (const variant of VARIANTS) {
        const key = `${order}|${variant}`;
        results.set(key, [...(results.get(key) ?? []), await measure(variant, order)]);
      }
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  console.log('Redis CPU per heartbeat (INFO cpu, µs; median of the rounds, then each round) and the ratio to a plain ZADD:');
  for (const order of ['sequential', 'random'] as const) {
    const floor = median(results.get(`${order}|ZADD`)!);
    for (const variant of VARIANTS) {
      const xs = results.get(`${order}|${variant}`)!;
      console.log(`  ${order.padEnd(10)} ${variant.padEnd(8)} ${median(xs).toFixed(2).padStart(6)} µs  (${xs.map((x) => x.toFixed(2)).join(', ')})  ${(median(xs) / floor).toFixed(2)}× the ZADD`);
    }
  }
} finally {
  redis.disconnect();
  await server.stop();
}
