// The deadline engine process's own settings (besides the core's), read once from the environment and validated: a
// bad value stops the process at start, naming the variable.
import { Type, type Static } from '@sinclair/typebox';
import { ConfigError, readSettings } from '../core/config.ts';

const Int = (minimum: number, maximum: number, dflt: number, description: string) => Type.Integer({ minimum, maximum, default: dflt, description });

/** Every deadline engine setting, its environment variable, default and meaning. */
export const EngineSettingsSchema = Type.Object({
  RECONCILE_INTERVAL_MS: Int(0, 86_400_000, 60_000, 'How often one deadline engine replica (whoever takes the lease) compares what each registered runtime lists with Redis; 0 turns the reconciler off, else at least 100.'),
  RECONCILE_GRACE_MS: Int(100, 604_800_000, 300_000, 'How long an allocation a runtime lists must stay owned by no session before the reconciler releases it: longer than a session.opened may be late.'),
});

/** The deadline engine's validated settings. */
export type EngineSettings = Readonly<Static<typeof EngineSettingsSchema>>;

/** Reads and validates the deadline engine's settings from an environment map; a ConfigError names what is wrong. */
export function readEngineSettings(env: NodeJS.ProcessEnv): EngineSettings {
  const settings = readSettings(EngineSettingsSchema, env);
  // 0 means off; a few ms would list every runtime in a tight loop.
  if (settings.RECONCILE_INTERVAL_MS > 0 && settings.RECONCILE_INTERVAL_MS < 100) {
    throw new ConfigError(`RECONCILE_INTERVAL_MS=${JSON.stringify(env.RECONCILE_INTERVAL_MS ?? '')} is invalid: must be 0 (off) or at least 100`);
  }
  return settings;
}
