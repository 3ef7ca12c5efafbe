// `npm start -- --engine llama --exit-after-demo`: the demo places a share of its sessions on the reference llama.cpp
// engine (never more at once than its sequences), their turns run real completions there, and the report sets the KV
// bytes session-reaper booked as freed for them beside the engine's own reading: freed equals what their turns filled
// (measured on the engine's reading around each completion), and once they all ended the engine is back at its start.
import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { skipWithoutEngine } from '../../runtimes/llama-engine/engine-test-support.ts';
import type { DemoOutcome } from '../../tools/local-stack/demo-pipeline.ts';
import type { StackReport } from '../../tools/local-stack/report.ts';
import { freshStateDir, spawnStart } from './npm-start-process.ts';

const SESSIONS = 10;

test('the demo on the real llama engine reports the KV bytes its sessions freed there, equal to what their turns filled', { skip: skipWithoutEngine, timeout: 180_000 }, async () => {
  const stateDir = freshStateDir();
  const reportFile = join(stateDir, 'report.json');
  const started = spawnStart(['--engine', 'llama', '--sessions', String(SESSIONS), '--duration', '10', '--seed', '42', '--exit-after-demo', '--port', '0', '--runtime-port', '0', '--report-file', reportFile], { stateDir });
  try {
    const code = await Promise.race([started.exited, sleep(160_000, 'timeout' as const, { ref: false })]);
    assert.notEqual(code, 'timeout', `the demo did not end by itself:\n${started.output()}`);
    assert.equal(code, 0, started.output());
    const out = started.output();
    assert.match(out, /demo report: 10 of 10 sessions ended/);
    assert.match(out, /^llama engine +sessions \d+ · ended \d+ · still open 0/m);
    assert.match(out, /^ +agree +yes: \d+ of \d+ sessions freed exactly what their turns filled/m);
    assert.match(out, /· llama (\d+ open, )?KV /, 'the progress line shows the engine');

    const { report, demo } = JSON.parse(readFileSync(reportFile, 'utf8')) as { report: StackReport; demo: DemoOutcome };
    const engine = report.engine;
    assert.ok(engine, 'the report has the engine part');
    assert.ok(demo.engine, 'the demo outcome has its engine figures');
    assert.ok(engine.sessions.placed > 0, 'some sessions were placed on the engine');
    assert.equal(engine.sessions.placed, demo.engine.placed);
    assert.equal(engine.sessions.stillOpen, 0);
    assert.equal(demo.engine.refused, 0, 'the demo keeps within the engine sequences, so the engine refused none');
    assert.ok(demo.engine.completions > 0, 'their turns ran real completions');
    assert.ok(engine.freedBytes > 0, 'session-reaper booked real KV bytes as freed');
    assert.equal(engine.releases, engine.sessions.placed, 'one gpu.released per engine session');
    assert.equal(engine.ledgerFreedBytes, engine.freedBytes, 'the ledger booked what gpu.released reported');
    assert.ok(engine.compared.sessions > 0, `at least one session was measured alone: ${JSON.stringify(demo.engine.sessions)}`);
    assert.equal(engine.compared.freedBytes, engine.compared.filledBytes, 'the compared sessions freed exactly what their turns filled');
    // Demotes (on with the engine: README, "Demote before destroy") freed part of it while sessions lived on, restores filled it again.
    const net = engine.freedBytes + engine.offload.freedBytes - engine.offload.restoredBytes;
    if (engine.compared.sessions === engine.sessions.placed) assert.equal(net, demo.engine.filledBytes, 'so did all of them together');
    assert.equal(engine.offload.ledgerOffloadedBytes, 0, 'nothing is left counted as offloaded');
    assert.ok(engine.usedBytes.atStart !== undefined && engine.usedBytes.now !== undefined);
    assert.equal(engine.usedBytes.now, engine.usedBytes.atStart, "the engine's own reading is back at its start");
    assert.equal(engine.agree, true, engine.problems.join('; '));

    // The rest of the run still adds up: the engine's sessions allocate nothing on the simulator.
    assert.equal(report.sessions.ended, SESSIONS);
    assert.equal(report.gpu.balanced, true);
    assert.ok(report.gpu.runtime);
    assert.equal(report.gpu.runtime.totalAllocated, report.gpu.registeredBytes - engine.sessions.registeredBytes, 'the simulator allocated what the other sessions registered');
    assert.equal(report.deadLetters.thisRun, 0);
    assert.equal(report.deadLetters.dropped, 0);
  } finally {
    if (started.proc.exitCode === null) started.proc.kill('SIGKILL');
    rmSync(started.stateDir, { recursive: true, force: true });
  }
});
