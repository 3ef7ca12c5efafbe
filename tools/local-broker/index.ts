// Runs the local Broker as a process: `npx node tools/local-broker/index.ts`. Settings come from the
// environment (BrokerSettingsSchema); SIGTERM or SIGINT stops it, finishing or persisting pending deliveries.
import { STOP_DEADLINE_MS, stopOnSignals } from '../../functions/core/process-lifecycle.ts';
import { Type } from '@sinclair/typebox';
import { pino } from 'pino';
import { ConfigError, readSettings, LogLevelSetting } from '../../functions/core/config.ts';
import { createLogger } from '../../functions/core/log.ts';
import {
  DEFAULT_DEAD_LETTER_DIR,
  DEFAULT_DEAD_LETTER_MAX_BYTES,
  DEFAULT_MAX_BATCH_BYTES,
  DEFAULT_MAX_EVENT_BYTES,
  DEFAULT_STOP_GRACE_MS,
  startLocalBroker,
} from './broker.ts';

/** The local Broker's settings, their environment variables, defaults and meaning. */
export const BrokerSettingsSchema = Type.Object({
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 8080, description: 'Ingress port (0: a free one).' }),
  BROKER_HOST: Type.String({ default: '127.0.0.1', description: 'Interface the ingress listens on.' }),
  BROKER_SUBSCRIBERS: Type.String({ default: '{}', description: 'JSON map of subscriber (Knative Service or Trigger) name to local URL.' }),
  BROKER_MANIFESTS_DIR: Type.String({ default: '', description: 'Directory of the Broker and Trigger manifests; empty: knative/base.' }),
  BROKER_DEAD_LETTER_DIR: Type.String({ default: DEFAULT_DEAD_LETTER_DIR, description: 'Directory of the on-disk dead-letter store.' }),
  BROKER_DEAD_LETTER_MAX_BYTES: Type.Integer({
    minimum: 1_048_576,
    default: DEFAULT_DEAD_LETTER_MAX_BYTES,
    description: 'Bytes on disk the dead-letter store may take; past it a dead letter is logged whole and dropped, never kept by evicting another (as the deployed receiver answers 507).',
  }),
  BROKER_FORWARD_URL: Type.String({ default: '', description: 'Outside sink that also gets every event the system emits; empty: none.' }),
  BROKER_IDENTITIES: Type.String({
    default: '',
    description: "JSON map of each sender's bearer token to its OIDC subject (system:serviceaccount:<ns>:<sa>): the manifests' EventPolicies then decide who may send what. Empty: no sender is checked (a warning says so).",
  }),
  BROKER_MAX_EVENT_BYTES: Type.Integer({ minimum: 1024, default: DEFAULT_MAX_EVENT_BYTES, description: 'Largest accepted event (data plus attributes).' }),
  BROKER_MAX_BATCH_BYTES: Type.Integer({ minimum: 1024, default: DEFAULT_MAX_BATCH_BYTES, description: 'Largest accepted batched request.' }),
  BROKER_STOP_GRACE_MS: Type.Integer({ minimum: 0, default: DEFAULT_STOP_GRACE_MS, description: 'How long pending deliveries may finish on stop before they are persisted.' }),
  BROKER_JOURNAL_FSYNC: Type.Boolean({
    default: false,
    description: 'fsync the journal of accepted events before each 202: only losing the machine needs it; a killed process loses nothing without it.',
  }),
  BROKER_CHAOS_DUPLICATE: Type.Number({ minimum: 0, maximum: 1, default: 0, description: 'Probability that a delivery is sent twice (possibly concurrently), as a real Broker may.' }),
  BROKER_CHAOS_REORDER_MS: Type.Integer({ minimum: 0, default: 0, description: 'Deliveries to a subscriber are held this long, then sent in a shuffled order; 0: in order.' }),
  BROKER_CHAOS_DELAY_MS: Type.Integer({ minimum: 0, default: 0, description: 'Each delivery waits a further random 0..N ms before its first attempt.' }),
  BROKER_CHAOS_SEED: Type.String({ default: '', description: 'Seed of the duplicate, reorder and delay draws (a whole number); empty: a random one, logged.' }),
  LOG_LEVEL: LogLevelSetting(),
});

function parseStringMap(name: string, text: string, what: string): Record<string, string> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`${name} is invalid: not JSON`, { cause: err });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed) || !Object.values(parsed).every((v) => typeof v === 'string')) {
    throw new ConfigError(`${name} is invalid: expected a JSON object of ${what}`);
  }
  return parsed as Record<string, string>;
}

function parseSeed(text: string): number {
  const seed = Number(text);
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(seed)) throw new ConfigError(`BROKER_CHAOS_SEED is invalid: expected a whole number, not '${text}'`);
  return seed;
}

let log = pino({ name: 'local-broker' });
try {
  const s = readSettings(BrokerSettingsSchema, process.env);
  log = createLogger({ service: 'local-broker', level: s.LOG_LEVEL });
  const broker = await startLocalBroker({
    port: s.PORT,
    host: s.BROKER_HOST,
    subscribers: parseStringMap('BROKER_SUBSCRIBERS', s.BROKER_SUBSCRIBERS, 'name to URL strings'),
    ...(s.BROKER_IDENTITIES === '' ? {} : { identities: parseStringMap('BROKER_IDENTITIES', s.BROKER_IDENTITIES, 'token to subject strings') }),
    deadLetterDir: s.BROKER_DEAD_LETTER_DIR,
    deadLetterMaxBytes: s.BROKER_DEAD_LETTER_MAX_BYTES,
    maxEventBytes: s.BROKER_MAX_EVENT_BYTES,
    maxBatchBytes: s.BROKER_MAX_BATCH_BYTES,
    stopGraceMs: s.BROKER_STOP_GRACE_MS,
    journalFsync: s.BROKER_JOURNAL_FSYNC,
    chaos: {
      duplicate: s.BROKER_CHAOS_DUPLICATE,
      reorderMs: s.BROKER_CHAOS_REORDER_MS,
      delayMs: s.BROKER_CHAOS_DELAY_MS,
      ...(s.BROKER_CHAOS_SEED === '' ? {} : { seed: parseSeed(s.BROKER_CHAOS_SEED) }),
    },
    logger: log,
    ...(s.BROKER_MANIFESTS_DIR === '' ? {} : { triggersDir: s.BROKER_MANIFESTS_DIR }),
    ...(s.BROKER_FORWARD_URL === '' ? {} : { forward: s.BROKER_FORWARD_URL }),
  });
  stopOnSignals(log, 'the local Broker', async () => {
    const report = await broker.stop();
    log.info({ ...report, stats: broker.stats() }, 'stopped');
  }, { deadlineMs: s.BROKER_STOP_GRACE_MS + STOP_DEADLINE_MS });
} catch (err) {
  log.fatal({ err }, err instanceof ConfigError ? 'invalid settings' : 'failed to start');
  process.exitCode = 1;
}
