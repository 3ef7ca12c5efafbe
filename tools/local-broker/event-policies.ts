// Knative Eventing's authorization, as the local Broker applies it from the same manifests that are deployed: each
// EventPolicy (eventing.knative.dev/v1alpha1) names the senders (`from`: OIDC subjects, a trailing `*` matching any
// suffix) that may send to its targets (`to`: the Broker by name, or every resource of the namespace when empty),
// and the `filters` their events must pass. A sender may also be named by a `ref` to a Trigger: Knative's Broker
// sends a subscriber's reply events under that Trigger's OIDC identity (knative/eventing#7480, #7481), and the
// policy's `ref` resolves to it; the local Broker admits a reply by the Trigger it answers. A request is admitted when one applying policy names its sender and its
// event passes that policy's filters; without a token (or with an unknown one) it is answered 401, and a sender no
// policy admits for that event 403 (knative/eventing pkg/auth/verifier.go: VerifyRequest, verifyAuthN, verifyAuthZ).
// Each policy here holds one filter expression, so the reading of several filters (all or one of them) never matters.
import {
  filtersHold, isEventingKind, isObj, ManifestError, nameOf, parseFilterExpression, readManifests, type AttributeView, type FilterExpression, type Obj, type RoutingOptions,
} from './triggers.ts';

/** The annotation naming which sender of the contract's catalogue a policy admits (tests/deploy checks it). */
export const SENDER_ANNOTATION = 'sessionreaper.dev/sender';

/** An EventPolicy as the local Broker applies it. */
export interface SenderPolicy {
  name: string;
  /** OIDC subjects it admits, as written (`system:serviceaccount:<ns>:<sa>`, or a prefix ending in `*`). */
  subjects: string[];
  /** Triggers (by name) whose reply events it admits: its `from` entries that are a `ref` to a Trigger. */
  triggers: string[];
  filters: FilterExpression[];
  /** The catalogue sender it stands for, from its annotation, when it has one. */
  sender: string | undefined;
}

/** Whether an OIDC subject is one a policy names: exactly (case-insensitive), or by the prefix before a trailing `*`. */
export function subjectMatches(pattern: string, subject: string): boolean {
  const p = pattern.toLowerCase();
  const s = subject.toLowerCase();
  return p.endsWith('*') ? s.startsWith(p.slice(0, -1)) : s === p;
}

function appliesTo(spec: Obj, broker: string, where: string): boolean {
  if (spec.to === undefined || spec.to === null) return true;
  if (!Array.isArray(spec.to)) throw new ManifestError(`${where}.to must be a list`);
  if (spec.to.length === 0) return true;
  return spec.to.some((target, i) => {
    if (!isObj(target)) throw new ManifestError(`${where}.to[${i}] must be an object`);
    if (isObj(target.ref)) return target.ref.kind === 'Broker' && target.ref.name === broker;
    if (isObj(target.selector)) return target.selector.kind === 'Broker';
    throw new ManifestError(`${where}.to[${i}] needs a ref or a selector`);
  });
}

/** The EventPolicies of a set of manifests that apply to the named Broker. */
export function loadSenderPolicies(opts: Pick<RoutingOptions, 'manifestsDir' | 'manifests'> & { broker: string }): SenderPolicy[] {
  return senderPoliciesOf(readManifests(opts), opts.broker);
}

/** The EventPolicies among manifest documents (as parsed objects) that apply to the named Broker. */
export function senderPoliciesOf(docs: readonly Obj[], broker: string): SenderPolicy[] {
  const out: SenderPolicy[] = [];
  for (const doc of docs) {
    if (!isEventingKind(doc, 'EventPolicy')) continue;
    const meta = isObj(doc.metadata) ? doc.metadata : {};
    const name = nameOf(doc) ?? '<unnamed>';
    const where = `EventPolicy ${name}.spec`;
    const spec = isObj(doc.spec) ? doc.spec : {};
    if (!appliesTo(spec, broker, where)) continue;
    const from = Array.isArray(spec.from) ? spec.from : [];
    const subjects: string[] = [];
    const triggers: string[] = [];
    from.forEach((f, i) => {
      if (isObj(f) && typeof f.sub === 'string') subjects.push(f.sub);
      else if (isObj(f) && isObj(f.ref) && f.ref.kind === 'Trigger' && typeof f.ref.name === 'string') triggers.push(f.ref.name);
      else throw new ManifestError(`${where}.from[${i}]: the local Broker admits senders by sub, and replies by a ref to a Trigger, only`);
    });
    const filters = Array.isArray(spec.filters) ? spec.filters.map((f, i) => parseFilterExpression(f, `${where}.filters[${i}]`)) : [];
    const annotations = isObj(meta.annotations) ? meta.annotations : {};
    const sender = typeof annotations[SENDER_ANNOTATION] === 'string' ? annotations[SENDER_ANNOTATION] : undefined;
    out.push({ name, subjects, triggers, filters, sender });
  }
  return out;
}

/** The policies that name `subject` among their senders (a Broker works them out once per known sender). */
export function policiesNaming(policies: readonly SenderPolicy[], subject: string): SenderPolicy[] {
  return policies.filter((p) => p.subjects.some((s) => subjectMatches(s, subject)));
}

/** The policies that admit the reply events of the named Trigger's subscriber (a `from` ref to the Trigger). */
export function policiesNamingTrigger(policies: readonly SenderPolicy[], trigger: string): SenderPolicy[] {
  return policies.filter((p) => p.triggers.includes(trigger));
}

/** Which of a sender's policies (policiesNaming) admits an event with these attributes, or undefined when none does. */
export function admittingOf(policies: readonly SenderPolicy[], attrs: AttributeView): SenderPolicy | undefined {
  return policies.find((p) => filtersHold(p.filters, attrs));
}

/** The policy that admits `subject` sending an event with these attributes, or undefined when none does. */
export function admittingPolicy(policies: readonly SenderPolicy[], subject: string, attrs: AttributeView): SenderPolicy | undefined {
  return admittingOf(policiesNaming(policies, subject), attrs);
}
