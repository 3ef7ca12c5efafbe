// The runtimes the tests place sessions on, registered as an operator would (RUNTIMES): every `*.test:8000` host (with
// or without the /rt base path) and the cluster names the contract's examples use. Tests that call a real runtime
// (the simulator, on loopback) register it themselves and allow loopback (OUTBOUND_ALLOWED_CIDRS).
import type { RuntimeEntry } from '../../functions/core/runtime-registry.ts';

/** The registered runtimes of handler tests that never call one. */
const TEST_RUNTIMES: readonly RuntimeEntry[] = [
  { name: 'test', url: 'http://*.test:8000' },
  { name: 'test-rt', url: 'http://*.test:8000/rt' },
  { name: 'inference', url: 'http://*.inference.svc.cluster.local:8000' },
];

/** RUNTIMES for a test's environment, plus the given runtimes (e.g. a simulator's URL). */
export function runtimesEnv(...extra: readonly RuntimeEntry[]): { RUNTIMES: string; OUTBOUND_ALLOWED_CIDRS: string } {
  return { RUNTIMES: JSON.stringify([...TEST_RUNTIMES, ...extra]), OUTBOUND_ALLOWED_CIDRS: '127.0.0.0/8,::1/128' };
}
