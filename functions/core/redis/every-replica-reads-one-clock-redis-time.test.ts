// Replicas compare deadlines with the `now` they send their scripts, so they must share one clock: Redis's TIME,
// which each process anchors its own monotonic clock to (redis-clock.ts).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { RedisClient } from './connect.ts';
import { RedisClock } from './redis-clock.ts';
import { testRedis } from '../../../tests/support/redis.ts';

let redis: RedisClient;
before(async () => {
  redis = await testRedis('single');
});
after(() => redis.disconnect());

async function redisMs(): Promise<number> {
  const [s, us] = await redis.time();
  return Number(s) * 1000 + Number(us) / 1000;
}

test('the clock reads Redis TIME to within a round trip, and never goes back', async () => {
  const clock = new RedisClock(redis);
  await clock.sync();
  const before = await redisMs();
  const mine = clock.now();
  const after = await redisMs();
  assert.ok(mine >= Math.floor(before) - 1 && mine <= Math.ceil(after) + 1, `${before} <= ${mine} <= ${after}`);
  let last = clock.now();
  for (let i = 0; i < 1000; i++) {
    const t = clock.now();
    assert.ok(t >= last);
    last = t;
  }
});

test("a replica follows Redis's clock, not its own, when the two differ", async () => {
  // This machine's Redis shares its clock; one five seconds ahead is the same server read through a shifted TIME.
  const ahead = { time: async () => {
    const [s, us] = await redis.time();
    return [Number(s) + 5, Number(us)];
  } };
  const clock = new RedisClock(ahead);
  assert.ok(Math.abs(clock.now() - Date.now()) < 1000, 'the local clock until the first anchor');
  await clock.sync();
  const skew = clock.now() - (await redisMs());
  assert.ok(skew > 4_900 && skew < 5_100, `${skew} ms ahead of this machine's Redis`);
  const inStep = new RedisClock(redis);
  await inStep.sync();
  assert.ok(Math.abs(inStep.offsetMs) < 1000);
});

test('a failed re-anchor keeps the last anchor', async () => {
  let fail = false;
  const flaky = { time: async () => {
    if (fail) throw new Error('connection lost');
    return redis.time();
  } };
  const clock = new RedisClock(flaky);
  await clock.sync();
  const offset = clock.offsetMs;
  fail = true;
  await assert.rejects(clock.sync(), /connection lost/);
  assert.equal(clock.offsetMs, offset);
});
