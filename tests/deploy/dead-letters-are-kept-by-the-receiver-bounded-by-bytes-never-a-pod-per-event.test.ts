// What each rendered overlay does with an event Knative gives up on (tests/deploy/dead-letter-checks.ts): every
// Trigger but the heartbeats' sends it to the dead-letter receiver, which keeps it on a persistent volume within a byte
// cap the volume holds; no Job or pod is made per event; the component that sends dead letters in that overlay (the
// in-memory channel's dispatcher in dev, the Kafka data planes) may POST them and nobody else may, and the admin API is
// out of the mesh's reach. skaffold builds the receiver's image in every profile. Every check is shown able to fail.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { parse as parseYaml } from 'yaml';
import {
  DEAD_LETTER_SENDER,
  RECEIVER_IMAGE,
  checkDeadLetterAdmission,
  checkDeadLetterCapacity,
  checkDeadLetterRouting,
  checkNoPerEventJobs,
  deadLetterSenderOf,
} from './dead-letter-checks.ts';
import { OVERLAYS, REPO_ROOT, applySkaffoldProfile, ofKind, renderOverlay, skaffoldPlan, withChange, withEnv } from './deployment-checks.ts';
import type { Json, Manifest } from './manifest-schemas.ts';

const rendered = new Map(OVERLAYS.map((o) => [o, renderOverlay(o)]));
const overlay = (o: (typeof OVERLAYS)[number]): Manifest[] => rendered.get(o) ?? [];
const skaffold = parseYaml(readFileSync(path.join(REPO_ROOT, 'skaffold.yaml'), 'utf8')) as Record<string, Json>;

void describe('dead letters are kept by the receiver, bounded by bytes, never a pod per event', () => {
  for (const o of OVERLAYS) {
    void it(`${o}: every Trigger's dead letters but the heartbeats' go to the receiver`, () => assert.deepEqual(checkDeadLetterRouting(overlay(o)), []));
    void it(`${o}: the receiver keeps them on its volume, within a cap the volume holds`, () => assert.deepEqual(checkDeadLetterCapacity(overlay(o)), []));
    void it(`${o}: no JobSink, Job quota or per-event Job remains`, () => assert.deepEqual(checkNoPerEventJobs(overlay(o)), []));
    void it(`${o}: the sender of dead letters is admitted, nobody else, and the admin API is out of the mesh's reach`, () =>
      assert.deepEqual(checkDeadLetterAdmission(overlay(o)), []));
  }

  void it('dev sends dead letters from the in-memory channel, as its Broker runs on it', () => {
    const [broker] = ofKind(overlay('dev'), 'Broker', 'eventing.knative.dev');
    assert.equal(deadLetterSenderOf(overlay('dev'), broker!), DEAD_LETTER_SENDER.InMemoryChannel);
  });

  for (const profile of ['dev', 'prod', 'prod-memorystore']) {
    void it(`skaffold's ${profile} profile builds the receiver's image`, () => {
      assert.ok(skaffoldPlan(applySkaffoldProfile(skaffold, profile)).built.includes(RECEIVER_IMAGE));
    });
  }

  // The checks must be able to fail.
  void it('notices a Trigger whose dead letters go elsewhere or nowhere, and a heartbeat Trigger that keeps them', () => {
    const elsewhere = withChange(overlay('prod'), 'Trigger', 'gpu-release-gpu-release-requested', '/spec/delivery/deadLetterSink', { uri: 'http://example.invalid/' });
    assert.match(checkDeadLetterRouting(elsewhere).join('\n'), /Trigger\/gpu-release-gpu-release-requested's dead letters do not reach the dead-letter receiver: http:\/\/example\.invalid\/ is not a Service/);
    const wrongPort = withChange(overlay('prod'), 'Service', 'dead-letters', '/spec/ports/0/targetPort', 9999);
    assert.match(checkDeadLetterRouting(wrongPort).join('\n'), /sends port 80 to 9999, where StatefulSet\/dead-letters does not listen/);
    const noBrokerSink = withChange(overlay('prod'), 'Broker', 'default', '/spec/delivery/deadLetterSink', null);
    const problems = checkDeadLetterRouting(noBrokerSink.map((m) => (m.doc.kind === 'Broker' ? { ...m, doc: { ...m.doc, spec: { ...(m.doc.spec as object), delivery: { retry: 6 } } } } : m))).join('\n');
    assert.match(problems, /Trigger\/destroy-dispatch-session-closed has no dead-letter sink/);
    assert.match(problems, /Broker\/default's dead-letter sink is not the dead-letter receiver: it has none/);
    const heartbeat = withChange(overlay('dev'), 'Trigger', 'heartbeat-timeout-session-heartbeat', '/spec/delivery/deadLetterSink', { ref: { apiVersion: 'v1', kind: 'Service', name: 'dead-letters' } });
    assert.match(checkDeadLetterRouting(heartbeat).join('\n'), /heartbeat-timeout-session-heartbeat is annotated to drop its dead letters, yet has a dead-letter sink/);
  });

  void it('notices a cap the volume cannot hold, a store off the volume, two writers and a claim deleted with it', () => {
    const overfull = withEnv(overlay('prod'), 'StatefulSet', 'dead-letters', 'DEAD_LETTER_MAX_BYTES', String(2 * 1024 ** 3));
    assert.match(checkDeadLetterCapacity(overfull).join('\n'), /DEAD_LETTER_MAX_BYTES=2147483648 with its headroom needs \d+ bytes, more than its claim of 2Gi/);
    // Under the claim, but leaving less than ext4's root reserve and metadata free: refused too.
    const noHeadroom = withEnv(overlay('prod'), 'StatefulSet', 'dead-letters', 'DEAD_LETTER_MAX_BYTES', String(Math.floor(1.9 * 1024 ** 3)));
    assert.match(checkDeadLetterCapacity(noHeadroom).join('\n'), /more than its claim/);
    const unparsable = withEnv(overlay('prod'), 'StatefulSet', 'dead-letters', 'DEAD_LETTER_MAX_BYTES', '1.5Gi');
    assert.match(checkDeadLetterCapacity(unparsable).join('\n'), /settings are refused at start: DEAD_LETTER_MAX_BYTES/);
    const offVolume = withEnv(overlay('prod'), 'StatefulSet', 'dead-letters', 'DEAD_LETTER_DIR', '/tmp/dead-letters');
    assert.match(checkDeadLetterCapacity(offVolume).join('\n'), /keeps dead letters in \/tmp\/dead-letters, which no volume is mounted at/);
    const ephemeral = withChange(overlay('prod'), 'StatefulSet', 'dead-letters', '/spec/volumeClaimTemplates/0/metadata/name', 'other');
    assert.match(checkDeadLetterCapacity(ephemeral).join('\n'), /mounts "?store"? at \/var\/lib\/dead-letters, which is no volumeClaimTemplate/);
    const two = withChange(overlay('prod'), 'StatefulSet', 'dead-letters', '/spec/replicas', 2);
    assert.match(checkDeadLetterCapacity(two).join('\n'), /runs 2 replicas: its store has one writer/);
    const deleted = withChange(overlay('prod'), 'StatefulSet', 'dead-letters', '/spec/persistentVolumeClaimRetentionPolicy/whenDeleted', 'Delete');
    assert.match(checkDeadLetterCapacity(deleted).join('\n'), /deletes its claim whenDeleted/);
    const gone = overlay('prod').filter((m) => m.doc.kind !== 'StatefulSet' || (m.doc.metadata as { name?: string }).name !== 'dead-letters');
    assert.deepEqual(checkDeadLetterCapacity(gone), ['no dead-letter receiver is deployed']);
  });

  void it('notices a JobSink, a quota of Jobs, and a Trigger sending to a JobSink', () => {
    const jobSink: Manifest = {
      source: 'test',
      doc: { apiVersion: 'sinks.knative.dev/v1alpha1', kind: 'JobSink', metadata: { name: 'dead-letters', namespace: 'session-reaper' }, spec: {} },
    };
    const quota: Manifest = {
      source: 'test',
      doc: { apiVersion: 'v1', kind: 'ResourceQuota', metadata: { name: 'dead-letter-jobs', namespace: 'session-reaper' }, spec: { hard: { 'count/jobs.batch': '2000' } } },
    };
    const toJobSink = withChange(overlay('prod'), 'Trigger', 'gpu-release-gpu-release-requested', '/spec/delivery/deadLetterSink', {
      ref: { apiVersion: 'sinks.knative.dev/v1alpha1', kind: 'JobSink', name: 'dead-letters' },
    });
    const problems = checkNoPerEventJobs([...toJobSink, jobSink, quota]).join('\n');
    assert.match(problems, /JobSink\/dead-letters creates a Job and a pod per dead letter/);
    assert.match(problems, /ResourceQuota\/dead-letter-jobs bounds Jobs/);
    assert.match(problems, /Trigger\/gpu-release-gpu-release-requested sends its dead letters to a JobSink/);
  });

  void it("notices a policy that refuses the overlay's sender, admits a stranger or the admin API, and a NetworkPolicy that refuses the sender", () => {
    // prod's channel is Kafka's: without its data plane in the policy, its dead letters are refused with 403.
    const prodSender = deadLetterSenderOf(overlay('prod'), ofKind(overlay('prod'), 'Broker', 'eventing.knative.dev')[0]!);
    const withoutProdSender = withChange(overlay('prod'), 'AuthorizationPolicy', 'dead-letters', '/spec/rules/0/from/0/source/principals', ['cluster.local/ns/knative-eventing/sa/imc-dispatcher']);
    assert.match(checkDeadLetterAdmission(withoutProdSender).join('\n'), new RegExp(`refuses a POST from ${prodSender}, which sends this overlay's dead letters`));
    // And the same policy is right for dev, whose sender is the in-memory channel's dispatcher.
    const devOnly = withChange(overlay('dev'), 'AuthorizationPolicy', 'dead-letters', '/spec/rules/0/from/0/source/principals', ['cluster.local/ns/knative-eventing/sa/imc-dispatcher']);
    assert.deepEqual(checkDeadLetterAdmission(devOnly), []);
    // Switching dev's Broker to the Kafka class changes who must be admitted.
    const kafkaDev = withChange(devOnly, 'Broker', 'default', '/metadata/annotations/eventing.knative.dev~1broker.class', 'Kafka');
    assert.match(checkDeadLetterAdmission(kafkaDev).join('\n'), /refuses a POST from cluster\.local\/ns\/knative-eventing\/sa\/knative-kafka-broker-data-plane/);

    const stranger = withChange(overlay('prod'), 'AuthorizationPolicy', 'dead-letters', '/spec/rules/0/from/0/source/principals/0', 'cluster.local/ns/session-reaper/sa/gpu-release');
    assert.match(checkDeadLetterAdmission(stranger).join('\n'), /admits a POST from cluster\.local\/ns\/session-reaper\/sa\/gpu-release/);
    const anyMethod = withChange(overlay('prod'), 'AuthorizationPolicy', 'dead-letters', '/spec/rules/0/to/0/operation', { paths: ['/*'] });
    assert.match(checkDeadLetterAdmission(anyMethod).join('\n'), /GET \/admin\/dead-letters: the admin API is for port-forwards only/);
    const noPolicy = overlay('prod').filter((m) => !(m.doc.kind === 'AuthorizationPolicy' && (m.doc.metadata as { name?: string }).name === 'dead-letters'));
    assert.match(checkDeadLetterAdmission(noPolicy).join('\n'), /refuses a POST from .*\(deny-by-default\)/);

    const netRefused = withChange(overlay('prod'), 'NetworkPolicy', 'dead-letters-from-knative-eventing', '/spec/ingress/0/from/0/namespaceSelector/matchLabels/kubernetes.io~1metadata.name', 'knative-serving');
    assert.match(checkDeadLetterAdmission(netRefused).join('\n'), /NetworkPolicies refuse .*'s namespace to StatefulSet\/dead-letters \(port 8080\)/);
    const netOpen = withChange(overlay('prod'), 'NetworkPolicy', 'dead-letters-from-knative-eventing', '/spec/ingress/0/from', []);
    assert.match(checkDeadLetterAdmission(netOpen).join('\n'), /NetworkPolicies admit any namespace to StatefulSet\/dead-letters/);
    const open = withChange(overlay('prod'), 'Sidecar', 'dead-letters', '/spec/outboundTrafficPolicy/mode', 'ALLOW_ANY');
    assert.match(checkDeadLetterAdmission(open).join('\n'), /Sidecar\/dead-letters lets StatefulSet\/dead-letters call outside the mesh/);
  });

  void it("notices a profile that does not build the receiver's image", () => {
    const without = structuredClone(skaffold);
    const build = without.build as { artifacts: { image: string }[] };
    build.artifacts = build.artifacts.filter((a) => a.image !== RECEIVER_IMAGE);
    assert.ok(!skaffoldPlan(applySkaffoldProfile(without, 'prod')).built.includes(RECEIVER_IMAGE));
  });
});
