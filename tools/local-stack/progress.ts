// The live progress of `npm start`: on a terminal, one compact line rewritten in place every second; otherwise (a
// pipe, a CI log) a plain line every few seconds, so logs stay readable and small.
import { DESTROY_CAUSES } from '../../functions/core/contract/events.ts';
import { formatBytes, type LiveFigures } from './report.ts';

/** What the progress line shows beyond the recorder's figures. */
export interface ProgressExtras {
  /** Demo sessions started and planned, when a demo runs. */
  demo?: { started: number; planned: number } | undefined;
  pendingDeliveries: number;
  deadLetters: number;
  /** Crashed processes restarted so far, by name (only those restarted). */
  restarts?: Readonly<Record<string, number>>;
  /** The llama engine, when it runs: the demo's sessions open on it, and its own reading of the KV in use. */
  engine?: { open: number | undefined; usedBytes: number | undefined };
}

// Shown only once something was restarted: "restarts 2 (destroy-dispatch 2)".
function restartsPart(restarts: Readonly<Record<string, number>> | undefined): string[] {
  const named = Object.entries(restarts ?? {}).filter(([, n]) => n > 0);
  if (named.length === 0) return [];
  return [`restarts ${named.reduce((sum, [, n]) => sum + n, 0)} (${named.map(([name, n]) => `${name} ${n}`).join(', ')})`];
}

/** One progress line. */
export function progressLine(elapsedMs: number, live: LiveFigures, extras: ProgressExtras): string {
  const causes = DESTROY_CAUSES.filter((c) => live.byCause[c] > 0).map((c) => `${c} ${live.byCause[c]}`);
  const parts = [
    `${(elapsedMs / 1000).toFixed(0).padStart(3)}s`,
    ...(extras.demo ? [`demo ${extras.demo.started}/${extras.demo.planned} started`] : []),
    `open ${Math.max(0, live.opened - live.ended)}`,
    `ended ${live.ended}${causes.length > 0 ? ` (${causes.join(', ')})` : ''}`,
    `GPU held ${formatBytes(live.gpuBytesOpen)}`,
    `events ${live.events}`,
    `pending ${extras.pendingDeliveries}`,
    `dead letters ${extras.deadLetters}`,
    ...(extras.engine ? [`llama ${extras.engine.open === undefined ? '' : `${extras.engine.open} open, `}KV ${extras.engine.usedBytes === undefined ? '?' : formatBytes(extras.engine.usedBytes)}`] : []),
    ...restartsPart(extras.restarts),
  ];
  return parts.join(' · ');
}

/** A running progress display. */
export interface Progress {
  /** Clears the live line (on a terminal) so other output starts on a clean line. */
  clear(): void;
  stop(): void;
}

/** Shows `render()` every second on a TTY (rewriting one line), every `plainEveryMs` otherwise. */
export function startProgress(stream: NodeJS.WriteStream, render: () => string, opts: { plainEveryMs?: number } = {}): Progress {
  const tty = stream.isTTY;
  let shown = false;
  const clear = () => {
    if (tty && shown) stream.write('\r\x1b[2K');
    shown = false;
  };
  const tick = () => {
    const line = render();
    if (tty) {
      const width = stream.columns > 10 ? stream.columns - 1 : line.length;
      stream.write(`\r\x1b[2K${line.slice(0, width)}`);
      shown = true;
    } else {
      stream.write(`${line}\n`);
    }
  };
  const timer = setInterval(tick, tty ? 1000 : (opts.plainEveryMs ?? 5000));
  timer.unref();
  return {
    clear,
    stop() {
      clearInterval(timer);
      clear();
    },
  };
}
