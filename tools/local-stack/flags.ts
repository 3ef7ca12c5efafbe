// The flags of `npm start` (after `--`), parsed with node:util parseArgs: an unknown flag or a bad value is a
// UsageError, which start.ts reports with the usage text and exit status 2.
import { join, resolve } from 'node:path';
import { isIP } from 'node:net';
import { parseArgs } from 'node:util';
import { OutboundAddressPolicy } from '../../functions/core/outbound-address.ts';
import { RUNTIME_NAME } from '../../functions/core/runtime-registry.ts';
import type { DeliveryChaos } from '../local-broker/delivery-chaos.ts';
import { REPO_ROOT } from './stack.ts';

/** The usage text, printed by --help and with every usage error. */
export const USAGE = `Usage: npm start [-- options]

Runs session-reaper locally: Redis, the four functions, the deadline engine, the simulated GPU runtime and a
local Broker. Send CloudEvents to the ingress (binary, structured or batched); GET /healthz says when it is ready.

Options:
  --no-demo              serve only: no simulated inference pipeline
  --port N               ingress port (default 8080; 0 picks a free one)
  --runtime-port N       simulated runtime port (default: the ingress port + 1; 0 picks a free one)
  --forward URL          also deliver every event the system emits to this HTTP sink, as CloudEvents
  --host ADDR            interface every part listens on (default 127.0.0.1; 0.0.0.0 for every interface)
  --runtime NAME=URL     register a GPU runtime besides the simulator (repeatable): sessions may be placed on it
  --engine llama         also run the reference llama.cpp engine (real KV caches on a generated tiny model),
                         registered as runtime \`llama\`; once: npm --prefix runtimes/llama-engine run setup
  --allow-cidr CIDR      a network outbound calls may reach besides loopback, e.g. a LAN runtime's (repeatable)
  --sessions N           demo sessions to open (default 50)
  --duration S           about how long the demo's sessions live, seconds (default 30)
  --seed N               seed of the demo's behaviour (default: random)
  --exit-after-demo      stop once the demo's report is printed; exit 0 only if everything balanced
  --report-file FILE     also write each report as JSON to FILE (for CI)
  --state-dir DIR        where Redis data, dead letters, pending deliveries and logs are kept (default .local)
  --duplicate P          the Broker sends each delivery twice with probability P (0 to 1), as real Brokers may
  --reorder-ms N         the Broker holds deliveries to a subscriber N ms and sends them in a shuffled order
  --delay-ms N           the Broker delays each delivery a further random 0..N ms (all three seeded by --seed)
  --prometheus           also run a local Prometheus (Debian's prometheus package) scraping every process, with the
                         deployed alert rules loaded
  --prometheus-port N    its port (default 9090; 0 picks a free one)
  -h, --help             show this help

Environment: REDIS_URL uses that Redis instead of a private redis-server; REDIS_KEY_PREFIX (default sr).`;

/** The flags `npm start` takes, parsed and checked. */
export interface StartFlags {
  demo: boolean;
  port: number;
  runtimePort: number;
  forward: string | undefined;
  host: string;
  runtimes: Array<{ name: string; url: string }>;
  /** --engine llama: the reference llama.cpp engine runs beside the simulator. */
  engine: 'llama' | undefined;
  allowCidrs: string[];
  sessions: number;
  durationMs: number;
  seed: number | undefined;
  exitAfterDemo: boolean;
  reportFile: string | undefined;
  stateDir: string;
  /** --duplicate, --reorder-ms and --delay-ms (with --seed); undefined when none is given. */
  brokerChaos: DeliveryChaos | undefined;
  /** --prometheus: a local Prometheus on this port (0: a free one) scrapes the stack; undefined without the flag. */
  prometheusPort: number | undefined;
  help: boolean;
}

/** A flag that cannot be used; the process exits 2 with the message. */
export class UsageError extends Error {
  override name = 'UsageError';
}

function integer(name: string, text: string | undefined, min: number, max: number): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(n) || n < min || n > max) throw new UsageError(`--${name} must be a whole number from ${min} to ${max}, not '${text}'`);
  return n;
}

/** Parses and checks the flags; throws UsageError for an unknown flag or a bad value. */
export function parseStartFlags(args: readonly string[]): StartFlags {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...args],
      strict: true,
      allowPositionals: false,
      allowNegative: true,
      options: {
        demo: { type: 'boolean', default: true },
        port: { type: 'string' },
        'runtime-port': { type: 'string' },
        forward: { type: 'string' },
        host: { type: 'string' },
        runtime: { type: 'string', multiple: true },
        engine: { type: 'string' },
        'allow-cidr': { type: 'string', multiple: true },
        sessions: { type: 'string' },
        duration: { type: 'string' },
        seed: { type: 'string' },
        'exit-after-demo': { type: 'boolean', default: false },
        'state-dir': { type: 'string' },
        'report-file': { type: 'string' },
        duplicate: { type: 'string' },
        'reorder-ms': { type: 'string' },
        'delay-ms': { type: 'string' },
        prometheus: { type: 'boolean', default: false },
        'prometheus-port': { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const port = integer('port', values.port, 0, 65535) ?? 8080;
  const runtimePort = integer('runtime-port', values['runtime-port'], 0, 65535) ?? (port === 0 ? 0 : port + 1);
  if (runtimePort !== 0 && runtimePort === port) throw new UsageError('--runtime-port must differ from --port');
  let forward = values.forward;
  if (forward !== undefined) {
    let url: URL;
    try {
      url = new URL(forward);
    } catch {
      throw new UsageError(`--forward must be an http(s) URL, not '${forward}'`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new UsageError(`--forward must be an http(s) URL, not '${forward}'`);
    forward = url.href;
  }
  if (!values.demo && values['exit-after-demo']) throw new UsageError('--exit-after-demo needs the demo; drop --no-demo');
  const host = values.host ?? '127.0.0.1';
  if (isIP(host) === 0) throw new UsageError(`--host must be an IP address such as 127.0.0.1 or 0.0.0.0, not '${host}'`);
  const runtimes = (values.runtime ?? []).map((text) => {
    const m = /^([^=]+)=(https?:\/\/.+)$/.exec(text);
    if (!m?.[1] || !m[2] || !RUNTIME_NAME.test(m[1])) throw new UsageError(`--runtime must be NAME=URL (NAME of a-z, 0-9 and -; an http(s) URL), not '${text}'`);
    return { name: m[1], url: m[2] };
  });
  const allowCidrs = values['allow-cidr'] ?? [];
  for (const cidr of allowCidrs) {
    try {
      new OutboundAddressPolicy([cidr]);
    } catch {
      throw new UsageError(`--allow-cidr must be a network such as 192.168.1.0/24, not '${cidr}'`);
    }
  }
  const duplicate = values.duplicate === undefined ? undefined : Number(values.duplicate);
  if (duplicate !== undefined && (values.duplicate!.trim() === '' || !(duplicate >= 0 && duplicate <= 1))) throw new UsageError(`--duplicate must be a probability from 0 to 1, not '${values.duplicate}'`);
  const reorderMs = integer('reorder-ms', values['reorder-ms'], 0, 60_000);
  const delayMs = integer('delay-ms', values['delay-ms'], 0, 60_000);
  const seed = integer('seed', values.seed, 0, 0xffffffff);
  const brokerChaos: DeliveryChaos | undefined = duplicate === undefined && reorderMs === undefined && delayMs === undefined
    ? undefined
    : {
        ...(duplicate !== undefined ? { duplicate } : {}),
        ...(reorderMs !== undefined ? { reorderMs } : {}),
        ...(delayMs !== undefined ? { delayMs } : {}),
        ...(seed !== undefined ? { seed } : {}),
      };
  const prometheusPort = integer('prometheus-port', values['prometheus-port'], 0, 65535);
  if (prometheusPort !== undefined && !values.prometheus) throw new UsageError('--prometheus-port needs --prometheus');
  if (values.engine !== undefined && values.engine !== 'llama') throw new UsageError(`--engine must be llama (the one reference engine), not '${values.engine}'`);
  return {
    demo: values.demo,
    port,
    runtimePort,
    forward,
    host,
    runtimes,
    engine: values.engine === 'llama' ? 'llama' : undefined,
    allowCidrs,
    sessions: integer('sessions', values.sessions, 1, 10_000) ?? 50,
    durationMs: (integer('duration', values.duration, 1, 3600) ?? 30) * 1000,
    seed,
    exitAfterDemo: values['exit-after-demo'],
    reportFile: values['report-file'] === undefined ? undefined : resolve(values['report-file']),
    stateDir: resolve(values['state-dir'] ?? join(REPO_ROOT, '.local')),
    brokerChaos,
    prometheusPort: values.prometheus ? (prometheusPort ?? 9090) : undefined,
    help: values.help,
  };
}
