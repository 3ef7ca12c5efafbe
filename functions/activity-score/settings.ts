// activity-score's own settings, read once from the environment like the core configuration: tenants' scoring
// overrides, the grace window, and the load policy. A bad value stops the process at start, naming the variable.
import { Type, type Static } from '@sinclair/typebox';
import { ConfigError, readSettings } from '../core/config.ts';
import { DEFAULT_SCORING_POLICY, type ScoringPolicy } from './scoring.ts';
import {
  parseLoadPolicy,
  parseTenantPolicies,
  PolicyError,
  resolvePolicy,
  type EffectivePolicy,
  type LoadPolicy,
  type LoadTier,
  type TenantPolicy,
} from './load-policy.ts';

const Int = (minimum: number, maximum: number, dflt: number, description: string) => Type.Integer({ minimum, maximum, default: dflt, description });

/** Every activity-score setting, its environment variable, default and meaning. */
export const ActivityScoreSettingsSchema = Type.Object({
  TENANT_POLICIES: Type.String({ default: '', description: 'JSON object from tenant id to scoring overrides (see load-policy.ts TenantPolicySchema); empty = defaults for all.' }),
  IDLE_GRACE_MS: Int(1000, 86_400_000, 60_000, 'How long a session must stay below the threshold before it is idle (floored at the load policy minGraceMs, 60 s by default).'),
  LOAD_EVAL_MS: Int(100, 3_600_000, 10_000, 'How often the load tier is re-evaluated; overrides LOAD_POLICY evaluateEveryMs when set.'),
  LOAD_POLICY: Type.String({ default: '', description: 'JSON overrides of the default load policy (load-policy.ts); empty = defaults.' }),
  LOAD_RUNTIME_TTL_MS: Int(1000, 86_400_000, 300_000, 'A runtime is polled for memory pressure while a session on it was scored within this long.'),
  IDLE_POLL_MS: Int(10, 60_000, 1000, 'How often the idle checker re-reads bucket heads to learn of newly scheduled checks.'),
  IDLE_LEASE_MS: Int(1000, 600_000, 30_000, 'How long a claimed idle check is reserved for the checker that claimed it (and how long after a session.idle it is verified).'),
  DEMOTE_QUIET_MS: Int(0, 86_400_000, 30_000, 'Demote before destroy: a live session quiet for at least this long and past the moment its own rhythm predicted its next turn has its KV moved off the GPU (gpu.demote.requested) until its user is back; only on runtimes whose kind can demote. 0 = off.'),
  PRESSURE_DEMOTE_QUIET_MS: Int(0, 86_400_000, 1000, 'Demote before destroy under memory pressure (any load tier above normal: the median runtime at its memory watermark): a live session quiet for this long (or DEMOTE_QUIET_MS if shorter) is demoted without waiting past its predicted return, so a full GPU frees KV before its cache must evict. 0 = pressure does not hasten demotes. Chosen on the first half of a production trace: README, "Reclamation quality on a real trace".'),
  DEMOTED_IDLE_GRACE_MS: Int(0, 86_400_000, 600_000, 'The idle grace of a demoted session (its KV already off the GPU, so keeping it costs no GPU memory): the longer of this and the policy grace. 0 = the policy grace. Measured on a production trace: README, "Reclamation quality on a real trace".'),
});

/** The raw, validated settings. */
export type ActivityScoreSettingsInput = Readonly<Static<typeof ActivityScoreSettingsSchema>>;

/** The settings as the scoring uses them: parsed policies and intervals. */
export interface ActivityScoreSettings {
  /** The deployment's base scoring policy (defaults with IDLE_GRACE_MS). */
  readonly base: ScoringPolicy;
  readonly tenantPolicies: Readonly<Record<string, TenantPolicy>>;
  readonly loadPolicy: LoadPolicy;
  readonly runtimeTtlMs: number;
  readonly idlePollMs: number;
  readonly idleLeaseMs: number;
  /** Demote before destroy: least quiet time before a demote (ms); 0 = never demote. */
  readonly demoteQuietMs: number;
  /** Under a load tier above normal: quiet time before a demote, not waiting for the predicted return (ms); 0 = as at normal. */
  readonly pressureDemoteQuietMs: number;
  /** The least idle grace of a demoted session (ms). */
  readonly demotedGraceMs: number;
}

/** Reads, validates and parses activity-score's settings from an environment map; a ConfigError names what is wrong. */
export function readActivityScoreSettings(env: NodeJS.ProcessEnv): ActivityScoreSettings {
  const raw = readSettings(ActivityScoreSettingsSchema, env);
  try {
    const base: ScoringPolicy = { ...DEFAULT_SCORING_POLICY, graceMs: raw.IDLE_GRACE_MS };
    const parsed = parseLoadPolicy(raw.LOAD_POLICY);
    const explicitEval = env.LOAD_EVAL_MS !== undefined && env.LOAD_EVAL_MS !== '';
    const loadPolicy = explicitEval || raw.LOAD_POLICY.trim() === '' ? Object.freeze({ ...parsed, evaluateEveryMs: raw.LOAD_EVAL_MS }) : parsed;
    return Object.freeze({
      base,
      tenantPolicies: parseTenantPolicies(raw.TENANT_POLICIES, base),
      loadPolicy,
      runtimeTtlMs: raw.LOAD_RUNTIME_TTL_MS,
      idlePollMs: raw.IDLE_POLL_MS,
      idleLeaseMs: raw.IDLE_LEASE_MS,
      demoteQuietMs: raw.DEMOTE_QUIET_MS,
      pressureDemoteQuietMs: raw.PRESSURE_DEMOTE_QUIET_MS,
      demotedGraceMs: raw.DEMOTED_IDLE_GRACE_MS,
    });
  } catch (err) {
    if (err instanceof PolicyError) throw new ConfigError(err.message, { cause: err });
    throw err;
  }
}

/**
 * The policy a tenant's session is scored with under a load tier; a demoted session (its KV off the GPU) keeps at
 * least DEMOTED_IDLE_GRACE_MS of grace, since waiting for its user then costs no GPU memory.
 */
export function policyFor(settings: ActivityScoreSettings, tenant: string | undefined, tier: LoadTier, opts: { demoted?: boolean } = {}): EffectivePolicy {
  const policy = resolvePolicy(tenant, settings.tenantPolicies, tier, { base: settings.base, load: settings.loadPolicy });
  return opts.demoted === true && settings.demotedGraceMs > policy.graceMs ? { ...policy, graceMs: settings.demotedGraceMs } : policy;
}
