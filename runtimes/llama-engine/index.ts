// Runs the reference llama.cpp engine as a process: `npx node runtimes/llama-engine/index.ts` (after its one-time
// install, README.md). Settings come from PORT, ENGINE_* and LOG_LEVEL (EngineSettingsSchema in server.ts), read once.
// It logs one line with its URL once it serves, stops on SIGTERM/SIGINT, and stops when its parent process goes
// (orphaned: whatever started it can no longer stop it, so it must not hold its port and memory on).
import { pino } from 'pino';
import { ConfigError } from '../../functions/core/config.ts';
import { stopOnSignals } from '../../functions/core/process-lifecycle.ts';
import { startEngine } from './engine.ts';
import { modelCacheDir, readEngineSettings, serveEngine } from './server.ts';
import { ensureTinyModel } from './tiny-model.ts';

let log = pino({ name: 'llama-engine' });

try {
  const settings = readEngineSettings(process.env);
  log = pino({ name: 'llama-engine', level: settings.LOG_LEVEL });
  let modelPath = settings.ENGINE_MODEL_PATH;
  if (modelPath === '') {
    const model = await ensureTinyModel(modelCacheDir(settings, process.env));
    log.info({ path: model.path, generated: model.generated, ms: Math.round(model.ms) }, 'tiny model ready');
    modelPath = model.path;
  }
  const engine = await startEngine({
    modelPath,
    sequences: settings.ENGINE_SEQUENCES,
    contextTokens: settings.ENGINE_CONTEXT_TOKENS,
    threads: settings.ENGINE_THREADS,
    ...(settings.ENGINE_STATE_DIR === '' ? {} : { stateDir: settings.ENGINE_STATE_DIR }),
    log: (level, message) => log[level === 'fatal' || level === 'error' ? 'error' : level === 'warn' ? 'warn' : 'debug']({ llama: level }, message.trim()),
  });
  const server = await serveEngine(engine, { host: settings.ENGINE_HOST, port: settings.PORT, maxGenerate: settings.ENGINE_MAX_GENERATE, idempotencyTtlMs: settings.ENGINE_IDEMPOTENCY_TTL_MS });
  log.info({ url: server.url, modelPath, kvBytesPerToken: engine.kvBytesPerToken, totalBytes: engine.totalBytes, sequences: settings.ENGINE_SEQUENCES, contextTokens: engine.contextTokens }, 'llama engine listening');
  const stop = async () => {
    await server.stop();
    await engine.close();
  };
  stopOnSignals(log, 'the llama engine', stop);
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) process.kill(process.pid, 'SIGTERM');
  }, 250).unref();
} catch (err) {
  log.fatal({ err }, err instanceof ConfigError ? 'invalid settings' : 'failed to start');
  process.exitCode = 1;
}
