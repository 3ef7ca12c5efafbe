// The dead-letter receiver's settings: read and checked once at start, each from its variable, else its default; a
// bad value stops the process naming the variable (ConfigError), never an event answered wrong later.
import { Type, type Static } from '@sinclair/typebox';
import { ConfigError, readSettings, LogLevelSetting } from '../core/config.ts';

/** The receiver's settings, their environment variables, defaults and meaning. */
export const DeadLetterSettingsSchema = Type.Object({
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 8080, description: 'Port of the receiver (dead letters, the admin API and the probes).' }),
  LISTEN_HOST: Type.String({ default: '', description: 'Interface to listen on; empty: every interface (the sidecar delivers to the pod IP).' }),
  DEAD_LETTER_DIR: Type.String({ minLength: 1, default: '/var/lib/dead-letters', description: 'Directory of the store: the persistent volume.' }),
  DEAD_LETTER_MAX_BYTES: Type.Integer({
    minimum: 1_048_576,
    default: 1_610_612_736,
    description:
      'Bytes on disk the store may take (each entry counted in whole 4 KiB blocks). A dead letter past it is answered 507 and counted, and nothing kept is evicted. Must leave room on the volume (tests/deploy checks it against the claim).',
  }),
  MAX_EVENT_BYTES: Type.Integer({ minimum: 1024, default: 1_048_576, description: 'Largest dead letter accepted (body); a larger one is answered 413.' }),
  LOG_LEVEL: LogLevelSetting(),
});

export type DeadLetterSettings = Readonly<Static<typeof DeadLetterSettingsSchema>>;

/** Reads and checks the receiver's settings from an environment; throws ConfigError naming the variable. */
export function readDeadLetterSettings(env: NodeJS.ProcessEnv): DeadLetterSettings {
  const s = readSettings(DeadLetterSettingsSchema, env);
  // One event must fit, or the store would refuse the largest events it accepts even when empty.
  if (s.MAX_EVENT_BYTES * 2 > s.DEAD_LETTER_MAX_BYTES) {
    throw new ConfigError(`DEAD_LETTER_MAX_BYTES=${s.DEAD_LETTER_MAX_BYTES} is invalid: it must hold at least two of the largest events (MAX_EVENT_BYTES=${s.MAX_EVENT_BYTES})`);
  }
  return s;
}
