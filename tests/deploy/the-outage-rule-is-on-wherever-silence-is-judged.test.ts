// Every overlay runs the deadline engine and the idle checker with the outage rule on and coherent settings.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { OVERLAYS, renderOverlay, withEnv } from './deployment-checks.ts';
import { checkOutageRule } from './outage-rule-checks.ts';

void describe('the outage rule is on wherever silence is judged', () => {
  for (const o of OVERLAYS) void it(`${o}: on, and its numbers agree`, () => assert.deepEqual(checkOutageRule(renderOverlay(o)), []));

  // The check must be able to fail.
  const prod = renderOverlay('prod');
  void it('notices the rule turned off, a gap inside the poll jitter, and an ingest silence shorter than the gap', () => {
    assert.match(checkOutageRule(withEnv(prod, 'Deployment', 'deadline-engine', 'BLIND_GAP_MS', '0')).join('\n'), /deadline-engine runs with BLIND_GAP_MS=0/);
    assert.match(checkOutageRule(withEnv(prod, 'Deployment', 'idle-checker', 'BLIND_GAP_MS', '500')).join('\n'), /idle-checker's BLIND_GAP_MS \(500\) is under 10 polls/);
    assert.match(checkOutageRule(withEnv(prod, 'Deployment', 'deadline-engine', 'INGEST_SILENCE_MS', '1000')).join('\n'), /INGEST_SILENCE_MS \(1000\) is shorter than BLIND_GAP_MS/);
  });
});
