// Who may send what to the Broker, as the rendered EventPolicies decide it (Knative Eventing's sender authorization:
// an event is admitted when one policy names its sender's OIDC subject and its filters pass; knative/eventing
// pkg/auth/verifier.go). Evaluated for every contract type and every sender of every overlay, with the evaluation the
// local Broker of `npm start` applies, so both deploy and local runs enforce the catalogue's `senders`.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EventType } from '../../functions/core/contract/events.ts';
import { admittingPolicy, senderPoliciesOf } from '../../functions/local-broker/event-policies.ts';
import { OVERLAYS, REPO_ROOT, checkSenderPolicies, renderOverlay, withChange } from './deployment-checks.ts';
import { SchemaRegistry, describe as describeManifest, formatIssues, upstreamSchemasDir, type Manifest } from './manifest-schemas.ts';

const rendered = new Map(OVERLAYS.map((o) => [o, renderOverlay(o)]));
const overlay = (name: (typeof OVERLAYS)[number]): Manifest[] => rendered.get(name) ?? [];
const schemas = new SchemaRegistry(upstreamSchemasDir(REPO_ROOT));

void describe('each sender may send exactly what the catalogue names', () => {
  for (const o of OVERLAYS) {
    void it(`${o}: every type is admitted from its catalogue senders alone, each as itself, with its own token`, () => {
      assert.deepEqual(checkSenderPolicies(overlay(o)), []);
    });
    void it(`${o}: the EventPolicies are valid against the upstream schema`, () => {
      const policies = overlay(o).filter((m) => m.doc.kind === 'EventPolicy');
      assert.ok(policies.length >= 7, 'one per sender');
      const issues = policies.flatMap((m) => schemas.validate(m));
      assert.deepEqual(issues, [], formatIssues(issues));
    });
  }

  void it('the pipeline cannot end a session as the system, nor an operator close one as the pipeline', () => {
    const policies = senderPoliciesOf(overlay('prod').map((m) => m.doc as Record<string, unknown>), 'default');
    const pipeline = 'system:serviceaccount:inference:inference-pipeline';
    const operator = 'system:serviceaccount:session-reaper:session-reaper-operator';
    const admits = (subject: string, type: string, source: string) => admittingPolicy(policies, subject, { specversion: '1.0', id: 'x', type, source }) !== undefined;
    assert.ok(admits(pipeline, EventType.SessionClosed, '/inference-pipeline'));
    for (const type of [EventType.SessionExpired, EventType.GpuReleased, EventType.DestroyResume, EventType.GpuReleaseRequested, EventType.SessionDestroyRequested]) {
      assert.ok(!admits(pipeline, type, '/inference-pipeline'), `the pipeline may not send ${type}`);
    }
    assert.ok(!admits(pipeline, EventType.SessionClosed, '/session-reaper/destroy-dispatch'), 'nor speak as session-reaper');
    assert.ok(admits(operator, EventType.SessionDestroyRequested, '/sessionctl'));
    assert.ok(!admits(operator, EventType.SessionClosed, '/sessionctl'));
    assert.ok(!admits('system:serviceaccount:session-reaper:gpu-release', EventType.GpuReleased, '/session-reaper/destroy-dispatch'), 'a workload speaks only as itself');
    assert.ok(!admits('system:serviceaccount:default:default', EventType.SessionHeartbeat, '/x'), 'nobody else sends anything');
  });

  // The check must be able to fail.
  void it('notices a sender admitted for more than the catalogue names, a source left open, and a token missing', () => {
    const wider = withChange(overlay('prod'), 'EventPolicy', 'sender-inference-pipeline', '/spec/filters/0/all/0/any/-', { exact: { type: EventType.GpuReleased } });
    assert.match(checkSenderPolicies(wider).join('\n'), /inference-pipeline .* may send dev\.sessionreaper\.gpu\.released, but the catalogue says it does not/);
    const unpinned = withChange(overlay('prod'), 'EventPolicy', 'sender-gpu-release', '/spec/filters/0/all/1', { prefix: { source: '/' } });
    assert.match(checkSenderPolicies(unpinned).join('\n'), /gpu-release may send dev\.sessionreaper\.gpu\.released under the source \/session-reaper\/destroy-dispatch/);
    const missing = overlay('prod').filter((m) => describeManifest(m) !== 'EventPolicy/sender-deadline-engine');
    assert.match(checkSenderPolicies(missing).join('\n'), /deadline-engine should have exactly one EventPolicy/);
    assert.match(checkSenderPolicies(missing).join('\n'), /Trigger\/destroy-dispatch-session-expired waits for dev\.sessionreaper\.session\.expired, which no sender may send/);
    const tokenless = withChange(overlay('prod'), 'Service', 'destroy-dispatch', '/spec/template/spec/volumes/0/projected/sources/0/serviceAccountToken/audience', 'kubernetes');
    assert.match(checkSenderPolicies(tokenless).join('\n'), /Service\/destroy-dispatch does not present a token of destroy-dispatch/);
  });
});
