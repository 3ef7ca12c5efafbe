// Where a process listens and how the others on this machine reach it: every interface (empty, 0.0.0.0, ::) is
// reached on loopback, a specific address at that address (IPv6 in brackets, so the URL parses), and only loopback
// names count as this machine for the local Broker's admin API.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isLoopbackName, isSpecificInterface, reachableOrigin } from './listen-host.ts';

test('a process listening on every interface is reached on loopback, a specific one where it listens', () => {
  for (const host of ['', '0.0.0.0', '::']) assert.equal(reachableOrigin(host, 8080), 'http://127.0.0.1:8080', JSON.stringify(host));
  assert.equal(reachableOrigin('10.1.2.3', 80), 'http://10.1.2.3:80');
  assert.equal(reachableOrigin('::1', 80), 'http://[::1]:80');
  assert.equal(new URL(reachableOrigin('fe80::1', 80)).hostname, '[fe80::1]');
});

test('only a specific interface other than loopback is one', () => {
  for (const host of ['', '0.0.0.0', '::', '127.0.0.1', '::1', 'localhost']) assert.equal(isSpecificInterface(host), false, host);
  for (const host of ['10.1.2.3', 'fe80::1']) assert.equal(isSpecificInterface(host), true, host);
});

test('loopback names, with or without brackets and in any case, and nothing else, are this machine', () => {
  for (const host of ['localhost', 'LocalHost', '127.0.0.1', '::1', '[::1]']) assert.equal(isLoopbackName(host), true, host);
  for (const host of ['127.0.0.1.nip.io', 'evil.example', '0.0.0.0', '', '[::]']) assert.equal(isLoopbackName(host), false, host);
});
