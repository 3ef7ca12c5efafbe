// The code's defaults are what `npm start` runs with, against the deployed Triggers (the local Broker reads
// knative/base): the release slot lease and the stall watchdog must outlast the gpu-release Trigger's whole
// redelivery window, computed with Knative's schedule on either data plane (tools/local-broker/triggers.ts), or
// a slot frees itself and the watchdog re-requests a release while the Broker is still retrying it.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadConfig, readSettings } from '../core/config.ts';
import { loadRoutingTable, redeliveryWindowMs } from '../../tools/local-broker/triggers.ts';
import { DestroyDispatchSettingsSchema } from './definition.ts';
import { DEFAULT_RELEASE_DELIVERIES, defaultLeaseMs } from './storm-guard.ts';

const release = loadRoutingTable({ subscribers: {} }).routes.find((r) => r.name === 'gpu-release-gpu-release-requested');

test('the default lease counts the deliveries the gpu-release Trigger makes', () => {
  assert.ok(release, 'knative/base has the gpu-release Trigger');
  assert.equal(DEFAULT_RELEASE_DELIVERIES, release.delivery.retry + 1);
});

test('the default lease and DESTROY_STALL_MS outlast the gpu-release redelivery window on both data planes', () => {
  assert.ok(release);
  const config = loadConfig({});
  const settings = readSettings(DestroyDispatchSettingsSchema, {});
  const lease = defaultLeaseMs(config.RUNTIME_TIMEOUT_MS, settings.RELEASE_RETRIES);
  for (const plane of ['eventing', 'eventing-kafka-broker'] as const) {
    const window = redeliveryWindowMs(release.delivery, plane);
    assert.ok(lease >= window, `the default lease (${lease} ms) outlasts ${plane}'s window (${window} ms)`);
    assert.ok(config.DESTROY_STALL_MS > window, `DESTROY_STALL_MS (${config.DESTROY_STALL_MS} ms) outlasts ${plane}'s window (${window} ms)`);
  }
});

test('the default lease grows with gpu-release’s own retries and the runtime timeout', () => {
  assert.equal(defaultLeaseMs(5000, 3), 120_000);
  assert.equal(defaultLeaseMs(5000, 1), 60_000);
  assert.equal(defaultLeaseMs(1000, 3, 1), 8000);
});
