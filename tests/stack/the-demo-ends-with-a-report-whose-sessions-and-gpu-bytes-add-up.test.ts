// `npm start -- --sessions N --exit-after-demo`: the simulated pipeline opens N sessions that live and end the ways
// sessions do; once each was destroyed the report is printed (and written as JSON), and the process exits 0 by
// itself. Its figures add up: every session ended once, by some cause; every GPU byte registered was freed, in the
// ledger and on the runtime; no dead letters. On a pipe the progress comes as plain lines.
import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { DESTROY_CAUSES } from '../../functions/core/contract/events.ts';
import type { DemoOutcome } from '../../tools/local-stack/demo-pipeline.ts';
import type { StackReport } from '../../tools/local-stack/report.ts';
import { missingEntryFiles } from '../support/stack.ts';
import { freshStateDir, spawnStart } from './npm-start-process.ts';

const missing = missingEntryFiles();
const SESSIONS = 10;

test('the demo ends by itself with a report whose sessions and GPU bytes add up', { skip: missing.length ? `entry points missing: ${missing.join(', ')}` : false, timeout: 120_000 }, async () => {
  const stateDir = freshStateDir();
  const reportFile = join(stateDir, 'report.json');
  const started = spawnStart(['--sessions', String(SESSIONS), '--duration', '4', '--seed', '42', '--exit-after-demo', '--port', '0', '--runtime-port', '0', '--report-file', reportFile], { stateDir });
  try {
    const code = await Promise.race([started.exited, sleep(100_000, 'timeout' as const, { ref: false })]);
    assert.notEqual(code, 'timeout', `the demo did not end by itself:\n${started.output()}`);
    assert.equal(code, 0, started.output());
    const out = started.output();
    assert.match(out, /demo report: 10 of 10 sessions ended/);
    assert.match(out, /balanced: every registered byte freed exactly once/);
    assert.match(out, /^ *\d+s · demo \d+\/10 started · open \d+ · ended \d+/m, 'plain progress lines on a pipe');
    assert.match(out, /Stopped\. Nothing pending\./);

    const { report, demo } = JSON.parse(readFileSync(reportFile, 'utf8')) as { report: StackReport; demo: DemoOutcome };
    assert.equal(report.sessions.opened, SESSIONS);
    assert.equal(report.sessions.ended, SESSIONS);
    assert.equal(report.sessions.stillOpen, 0);
    assert.equal(report.sessions.destroyedTwice, 0);
    assert.equal(DESTROY_CAUSES.reduce((n, c) => n + report.sessions.byCause[c], 0), SESSIONS, 'sessions by cause sum to N');
    assert.equal(demo.sessions.filter((s) => s.cause !== undefined).length, SESSIONS);
    assert.ok(report.gpu.registeredBytes > 0);
    assert.equal(report.gpu.releasedBytes, report.gpu.registeredBytes, 'registered == freed (ledger)');
    assert.equal(report.gpu.heldBytes, 0);
    assert.ok(report.gpu.runtime);
    assert.equal(report.gpu.runtime.totalAllocated, report.gpu.registeredBytes, 'the runtime allocated what the ledger registered');
    assert.equal(report.gpu.runtime.totalFreed, report.gpu.runtime.totalAllocated, 'and freed all of it');
    assert.equal(report.gpu.balanced, true);
    assert.equal(report.destroyMs?.count, SESSIONS);
    assert.equal(report.endToEndMs?.count, SESSIONS, 'every destroy is timed from the event that ended its session');
    assert.equal(report.detectionLagMs?.count ?? 0, report.sessions.byCause.expired);
    assert.equal(report.deadLetters.thisRun, 0);
    assert.equal(report.deadLetters.dropped, 0);
  } finally {
    if (started.proc.exitCode === null) started.proc.kill('SIGKILL');
    rmSync(started.stateDir, { recursive: true, force: true });
  }
});
