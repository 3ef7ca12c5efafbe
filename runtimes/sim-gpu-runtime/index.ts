// Runs the simulated GPU runtime as a process (demos, chaos runs): `npx node runtimes/sim-gpu-runtime/index.ts`.
// Settings come from PORT, SIM_* and LOG_LEVEL (SimSettingsSchema in server.ts); faults can also be changed while
// it runs with PUT /sim/faults.
import { stopOnSignals } from '../../functions/core/process-lifecycle.ts';
import { pino } from 'pino';
import { ConfigError } from '../../functions/core/config.ts';
import { readSimSettings, simOptionsFromSettings, startSimRuntime } from './server.ts';

let log = pino({ name: 'sim-gpu-runtime' });

try {
  const settings = readSimSettings(process.env);
  log = pino({ name: 'sim-gpu-runtime', level: settings.LOG_LEVEL });
  const sim = await startSimRuntime(simOptionsFromSettings(settings));
  log.info({ url: sim.url, faults: sim.faults(), totalBytes: sim.memory().totalBytes }, 'simulated GPU runtime listening');
  stopOnSignals(log, 'the simulated GPU runtime', async () => {
    log.info({ stats: sim.stats() }, 'final stats');
    await sim.stop();
  });
} catch (err) {
  log.fatal({ err }, err instanceof ConfigError ? 'invalid settings' : 'failed to start');
  process.exitCode = 1;
}
