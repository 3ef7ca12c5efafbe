// `npm start` runs Redis on a free port and records where each part listens in .local/stack.json
// (tools/local-stack/start.ts). While that stack is running, sessionctl takes its Redis, key prefix and
// Broker from there, so `npx sessionctl sessions` works with no settings; anything set in the environment wins.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/** Where `npm start` (default --state-dir) records the running stack; SESSIONCTL_STACK_FILE points elsewhere. */
export const DEFAULT_STACK_FILE = join(import.meta.dirname, '..', '..', '.local', 'stack.json');

interface StackFile {
  pid?: unknown;
  redisUrl?: unknown;
  redisPassword?: unknown;
  keyPrefix?: unknown;
  ingressUrl?: unknown;
  tokenFiles?: unknown;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists but belongs to someone else, so it is running.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const set = (value: string | undefined) => value !== undefined && value !== '';

/** The environment with the running local stack's addresses filled in where the environment sets none. */
export function withStackDefaults(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  let stack: StackFile;
  try {
    stack = JSON.parse(readFileSync(env.SESSIONCTL_STACK_FILE || DEFAULT_STACK_FILE, 'utf8')) as StackFile;
  } catch {
    return env;
  }
  // A file left by a stack that is gone (killed hard) would point at a dead Redis: ignore it.
  if (typeof stack !== 'object' || stack === null || typeof stack.pid !== 'number' || !alive(stack.pid)) return env;
  const out = { ...env };
  if (!set(env.REDIS_URL) && !set(env.REDIS_CLUSTER_NODES) && typeof stack.redisUrl === 'string') {
    out.REDIS_URL = stack.redisUrl;
    if (!set(env.REDIS_PASSWORD) && typeof stack.redisPassword === 'string') out.REDIS_PASSWORD = stack.redisPassword;
    if (!set(env.REDIS_KEY_PREFIX) && typeof stack.keyPrefix === 'string') out.REDIS_KEY_PREFIX = stack.keyPrefix;
  }
  if (!set(env.SESSIONCTL_BROKER_URL) && typeof stack.ingressUrl === 'string') out.SESSIONCTL_BROKER_URL = stack.ingressUrl;
  // The local stack's senders: an operator's token for `destroy`, the pipeline's for `send`.
  const files = typeof stack.tokenFiles === 'object' && stack.tokenFiles !== null ? (stack.tokenFiles as Record<string, unknown>) : {};
  if (!set(env.SESSIONCTL_TOKEN_FILE) && typeof files.operator === 'string') out.SESSIONCTL_TOKEN_FILE = files.operator;
  if (!set(env.SESSIONCTL_PIPELINE_TOKEN_FILE) && typeof files['inference-pipeline'] === 'string') out.SESSIONCTL_PIPELINE_TOKEN_FILE = files['inference-pipeline'];
  return out;
}
