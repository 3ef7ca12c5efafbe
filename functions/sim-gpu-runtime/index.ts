// Runs the simulated GPU runtime as a process (demos, chaos runs): `npx node functions/sim-gpu-runtime/index.ts`.
// Settings come from PORT, SIM_* and LOG_LEVEL (SimSettingsSchema in server.ts); faults can also be changed while
// it runs with PUT /sim/faults.
import { pino } from 'pino';
import { ConfigError } from '../core/config.ts';
import { readSimSettings, simOptionsFromSettings, startSimRuntime } from './server.ts';

let log = pino({ name: 'sim-gpu-runtime' });

try {
  const settings = readSimSettings(process.env);
  log = pino({ name: 'sim-gpu-runtime', level: settings.LOG_LEVEL });
  const sim = await startSimRuntime(simOptionsFromSettings(settings));
  log.info({ url: sim.url, faults: sim.faults(), totalBytes: sim.memory().totalBytes }, 'simulated GPU runtime listening');
  const stop = (signal: string) => {
    log.info({ signal, stats: sim.stats() }, 'stopping');
    sim.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err }, 'stop failed');
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
} catch (err) {
  log.fatal({ err }, err instanceof ConfigError ? 'invalid settings' : 'failed to start');
  process.exitCode = 1;
}
