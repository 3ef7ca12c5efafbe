// Children that die with the launcher, however it dies. A process that is SIGKILLed runs no handler, so nothing it
// does in JavaScript can stop its children; the kernel can: PR_SET_PDEATHSIG sends a signal to a child when its
// parent thread exits. `setpriv --pdeathsig KILL -- cmd` (util-linux) sets it and then execs cmd, keeping the pid.
// Node spawns children from its main thread, so the signal fires when the launcher process dies, not earlier. The
// setting survives exec (except of set-user-ID programs, which we do not run). Where setpriv is missing (macOS, a
// slim image) children are spawned as they are, and only a launcher that exits normally or on a signal it handles
// stops them.
import { spawnSync } from 'node:child_process';

let setprivPath: string | null | undefined;

// Looked up once: util-linux's setpriv is what gives a child a parent-death signal without native code.
function setpriv(): string | null {
  if (setprivPath !== undefined) return setprivPath;
  const probe = spawnSync('setpriv', ['--pdeathsig', 'KILL', '--', 'true'], { stdio: 'ignore' });
  setprivPath = probe.error === undefined && probe.status === 0 ? 'setpriv' : null;
  return setprivPath;
}

/** Whether children spawned through diesWithParent get SIGKILL when this process dies (setpriv is available). */
export function parentDeathSignalAvailable(): boolean {
  return setpriv() !== null;
}

/** The command and arguments that run `command args` so it is SIGKILLed when this process dies (where supported). */
export function diesWithParent(command: string, args: readonly string[]): [string, string[]] {
  const wrapper = setpriv();
  return wrapper === null ? [command, [...args]] : [wrapper, ['--pdeathsig', 'KILL', '--', command, ...args]];
}
