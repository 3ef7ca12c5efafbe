// The retry schedule the local Broker follows, and the deploy checks compute windows with, is Knative's exactly, for
// each of the two dispatchers a Trigger can be delivered by (triggers.ts, DataPlane, cites the upstream code):
// knative/eventing's waits delay x 2^(k-1) before retry k (go-retryablehttp passes a 0-based attempt index), and
// eventing-kafka-broker's waits delay x 2^k (it passes retryCounter + 1). Which answers are retried is shared too.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backoffMs, backoffScheduleMs, isRetryableStatus, redeliveryWindowMs } from './triggers.ts';

test('knative/eventing waits delay x 2^(k-1) before retry k: 6 retries from 200 ms wait 12.6 s in all, not 25.2 s', () => {
  const spec = { retry: 6, backoffPolicy: 'exponential', backoffDelayMs: 200 } as const;
  assert.deepEqual(backoffScheduleMs(spec, 'eventing'), [200, 400, 800, 1600, 3200, 6400]);
  assert.equal(backoffMs(spec, 1), 200, 'the local Broker and the default data plane are knative/eventing');
  assert.equal(redeliveryWindowMs({ ...spec, timeoutMs: 10_000 }, 'eventing'), 70_000 + 12_600);
});

test('knative/eventing waits delay x (k-1) before linear retry k: the first retry does not wait', () => {
  assert.deepEqual(backoffScheduleMs({ retry: 3, backoffPolicy: 'linear', backoffDelayMs: 100 }, 'eventing'), [0, 100, 200]);
});

test('eventing-kafka-broker waits delay x 2^k (exponential) or delay x k (linear) before retry k', () => {
  assert.deepEqual(backoffScheduleMs({ retry: 6, backoffPolicy: 'exponential', backoffDelayMs: 200 }, 'eventing-kafka-broker'), [400, 800, 1600, 3200, 6400, 12_800]);
  assert.deepEqual(backoffScheduleMs({ retry: 3, backoffPolicy: 'linear', backoffDelayMs: 100 }, 'eventing-kafka-broker'), [100, 200, 300]);
  assert.equal(redeliveryWindowMs({ retry: 2, backoffPolicy: 'exponential', backoffDelayMs: 1000, timeoutMs: 30_000 }, 'eventing-kafka-broker'), 90_000 + 6000);
});

test('a delivery without retries or timeout has no window beyond its one attempt', () => {
  assert.equal(redeliveryWindowMs({ retry: 0, backoffPolicy: 'exponential', backoffDelayMs: 200 }), 0);
  assert.equal(redeliveryWindowMs({ retry: 0, backoffPolicy: 'exponential', backoffDelayMs: 200, timeoutMs: 5000 }), 5000);
});

test('5xx, 404, 408, 409 and 429 are retried; other answers are final', () => {
  for (const status of [500, 502, 503, 504, 599, 404, 408, 409, 429]) assert.ok(isRetryableStatus(status), `${status} is retried`);
  for (const status of [200, 202, 301, 302, 400, 401, 403, 405, 410, 413, 422, 499]) assert.ok(!isRetryableStatus(status), `${status} is final`);
});
