// The local Broker's journal of accepted deliveries, so that a Broker killed with SIGKILL (the chaos run does it)
// loses no event it answered 2xx to. It is an append-only file of JSON lines: an `accept` line per accepted event,
// naming each of its deliveries by key and Trigger, written before the ingress answers; a `done` line per delivery
// that finished (delivered, or kept as a dead letter). The next Broker on the same store reads it at start and
// delivers again every delivery not recorded done: at-least-once, as Knative's, so a delivery that succeeded just
// before the kill (its `done` not yet written) may arrive twice, but none is lost.
//
// Durability: the lines are write()n before the answer, not fsync'd by default. A write() that returned is in the
// kernel's page cache, which outlives the process however it dies (SIGKILL, OOM-kill, a crash), and that is the
// fault the local Broker stands in for; only losing the machine itself (power, kernel panic) would need fsync, at a
// cost of milliseconds per request on most disks, so it is an option (fsync: true). Without fsync an accept line is
// written with a synchronous write(): a copy into the page cache takes microseconds, where handing it to libuv's
// thread pool and back cost ~0.25 ms of latency per accepted event on an idle 2-core machine (measured: POST → the
// subscriber, p50 0.88–0.91 ms against 1.13–1.18 ms), and a destroy crosses the Broker four times. (A write() can block
// the loop for longer when the kernel throttles a disk flushing much dirty data; a local stand-in accepts that.) `done` lines
// (awaited by nobody) wait for the end of the event-loop turn and go out together. With fsync, appends that arrive
// while a write and its fsync are under way are batched into the next one (group commit). Either way the lines keep
// the order in which they were appended.
//
// Bounded: the journal is rewritten to hold only the unfinished deliveries (compacted) at open, and again whenever it
// has grown past both compactAtBytes and twice what the unfinished deliveries take, so it stays within a small
// multiple of what is pending. The rewrite goes to a temporary file renamed over the journal, so a kill mid-rewrite
// leaves the old journal whole.
import { writeSync } from 'node:fs';
import { mkdir, open, readFile, rename, rm, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { StoredEvent } from './wire.ts';

/** One delivery of an accepted event: its key (unique in the journal) and where it goes. */
export interface JournalDelivery {
  key: string;
  /** The Trigger's name (or 'forward'). */
  target: string;
  /** The subscriber's URL when it was accepted (for a dead letter if the Trigger is gone at the next start). */
  url: string;
}

/** An accepted event and its deliveries not finished yet. */
export interface JournaledEvent {
  deliveries: JournalDelivery[];
  event: StoredEvent;
}

/** How to open a journal. */
export interface DeliveryJournalOptions {
  /** fsync each write (survives losing the machine, not only the process). Default false: see the header. */
  fsync?: boolean;
  /** Size past which the journal is compacted (when it is also over twice the unfinished deliveries). Default 4 MiB. */
  compactAtBytes?: number;
  logger?: Logger;
}

/** An open journal. */
export interface DeliveryJournal {
  /** Every delivery the file held as accepted and not done when it was opened. */
  readonly unfinished: readonly JournaledEvent[];
  /** Lines a kill left half written (skipped at open). */
  readonly tornLines: number;
  /** Makes accepted events durable: resolves once their lines are written (rejects if they could not be). */
  accept(events: readonly JournaledEvent[]): Promise<void>;
  /** Records a delivery as finished; a key the journal does not hold is ignored. Written by the end of the loop turn (or with an earlier accept). */
  done(key: string): void;
  /** Forgets every delivery (they are kept elsewhere now: the pending-deliveries file at stop) and closes. */
  clearAndClose(): Promise<void>;
  /** Writes what is queued and closes, keeping the journal as it is. */
  close(): Promise<void>;
  /** The journal's size now, bytes. */
  readonly bytes: number;
}

/** The default compaction threshold, bytes. */
export const DEFAULT_JOURNAL_COMPACT_BYTES = 4 * 1_048_576;

type Line = { op: 'accept'; deliveries: JournalDelivery[]; event: StoredEvent } | { op: 'done'; key: string };

interface LiveEvent {
  event: StoredEvent;
  deliveries: Map<string, JournalDelivery>;
  /** Length of its accept line when written: what it costs the journal. */
  bytes: number;
}

// write(2) to a regular file may write less than asked (a full disk answers with the bytes that fit, and only the
// next write fails): the rest is written, or the error thrown.
function writeAllSync(fd: number, buf: Buffer): void {
  for (let off = 0; off < buf.length; ) off += writeSync(fd, buf, off, buf.length - off);
}

async function writeAll(handle: FileHandle, buf: Buffer): Promise<void> {
  for (let off = 0; off < buf.length; ) off += (await handle.write(buf, off, buf.length - off)).bytesWritten;
}

function acceptLine(event: StoredEvent, deliveries: Iterable<JournalDelivery>): string {
  return `${JSON.stringify({ op: 'accept', deliveries: [...deliveries], event } satisfies Line)}\n`;
}

// Reads what a journal holds; a line that does not parse (the tail of a write cut by a lost machine) is skipped.
async function readJournal(file: string): Promise<{ live: LiveEvent[]; torn: number }> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { live: [], torn: 0 };
    throw err;
  }
  const events: LiveEvent[] = [];
  const byKey = new Map<string, LiveEvent>();
  let torn = 0;
  for (const text_ of text.split('\n')) {
    if (text_ === '') continue;
    let line: Line;
    try {
      line = JSON.parse(text_) as Line;
    } catch {
      torn++;
      continue;
    }
    if (line.op === 'accept') {
      const live: LiveEvent = { event: line.event, deliveries: new Map(line.deliveries.map((d) => [d.key, d])), bytes: 0 };
      events.push(live);
      for (const d of line.deliveries) byKey.set(d.key, live);
    } else if (line.op === 'done') {
      byKey.get(line.key)?.deliveries.delete(line.key);
      byKey.delete(line.key);
    }
  }
  return { live: events.filter((e) => e.deliveries.size > 0), torn };
}

/** Opens (or creates) the journal at `file`, reads what it holds unfinished, and compacts it to that. */
export async function openDeliveryJournal(file: string, opts: DeliveryJournalOptions = {}): Promise<DeliveryJournal> {
  const fsync = opts.fsync ?? false;
  const compactAtBytes = opts.compactAtBytes ?? DEFAULT_JOURNAL_COMPACT_BYTES;
  await mkdir(dirname(file), { recursive: true });
  const { live: found, torn } = await readJournal(file);
  if (torn > 0) opts.logger?.warn({ file, torn }, 'skipped journal lines left half written');

  // What is unfinished now, by key: updated as lines are queued, so a compaction writes exactly this.
  const live = new Set<LiveEvent>(found);
  const byKey = new Map<string, LiveEvent>();
  let liveBytes = 0;
  for (const ev of found) {
    ev.bytes = Buffer.byteLength(acceptLine(ev.event, ev.deliveries.values()));
    liveBytes += ev.bytes;
    for (const key of ev.deliveries.keys()) byKey.set(key, ev);
  }
  const unfinished: JournaledEvent[] = found.map((ev) => ({ event: ev.event, deliveries: [...ev.deliveries.values()] }));

  let handle: FileHandle | undefined;
  let fileBytes = 0;
  let queued: string[] = [];
  // `undo`: what to take back when the line is refused (an accept's events leave the live set).
  let waiting: Array<{ resolve: () => void; reject: (err: unknown) => void; undo?: () => void }> = [];
  let writing: Promise<void> | undefined;
  // Set while drain() runs; cleared by it, synchronously when it wrote without awaiting anything.
  let draining = false;
  let doneFlushScheduled = false;
  let closed = false;

  async function compact(): Promise<void> {
    const tmp = `${file}.${randomUUID().slice(0, 8)}.tmp`;
    const text = [...live].map((ev) => acceptLine(ev.event, ev.deliveries.values())).join('');
    try {
      const out = await open(tmp, 'w', 0o600);
      try {
        await out.writeFile(text);
        if (fsync) await out.sync();
      } finally {
        await out.close();
      }
      await rename(tmp, file);
      // The rename itself is durable only once the directory is: what fsync is asked for.
      if (fsync) {
        const dir = await open(dirname(file), 'r');
        try {
          await dir.sync();
        } finally {
          await dir.close();
        }
      }
    } catch (err) {
      // A full disk: the journal stays as it was, and the half-written copy does not pile up with each retry.
      await rm(tmp, { force: true }).catch(() => undefined);
      throw err;
    }
    // From here the batch is in the journal. Failing to reopen it is not the batch's failure: the next drain finds the
    // size unknown and compacts again, which opens it afresh.
    const old = handle;
    handle = undefined;
    fileBytes = Number.POSITIVE_INFINITY;
    await old?.close().catch(() => undefined);
    try {
      handle = await open(file, 'a', 0o600);
      fileBytes = Buffer.byteLength(text);
    } catch (err) {
      opts.logger?.warn({ err, file }, 'the compacted delivery journal could not be reopened; the next write compacts it again');
    }
  }

  // One write at a time, each taking every line queued meanwhile. A compaction replaces the write: the live set it
  // writes already reflects every queued line.
  async function drain(): Promise<void> {
    draining = true;
    try {
      while (queued.length > 0) {
        const lines = queued;
        const batch = waiting;
        queued = [];
        waiting = [];
        try {
          if (fileBytes > Math.max(compactAtBytes, 2 * liveBytes)) {
            await compact();
          } else {
            const buf = Buffer.from(lines.join(''));
            try {
              if (fsync) {
                await writeAll(handle!, buf);
                await handle!.datasync();
              } else {
                writeAllSync(handle!.fd, buf);
              }
            } catch (err) {
              // A write that failed part way leaves the start of a line, which the next line would be appended to and
              // both be read as one torn line: an event answered 202 after this one would be lost with it. The file is
              // cut back to its last whole line (appends follow the end of the file). Should that fail too, the size
              // is taken as unknown, so the next drain compacts: the file is rewritten from what is live, without the
              // refused lines and without the cut-off start of one.
              await handle!.truncate(fileBytes).catch(() => (fileBytes = Number.POSITIVE_INFINITY));
              throw err;
            }
            fileBytes += buf.length;
          }
          for (const w of batch) w.resolve();
        } catch (err) {
          // Taken back before anything else runs: a compaction on the next pass of this loop must not write the
          // refused events back as accepted.
          for (const w of batch) {
            w.undo?.();
            w.reject(err);
          }
        }
      }
    } finally {
      draining = false;
    }
  }

  function kick(): void {
    if (!draining) writing = drain();
  }

  // `now`: written at once (without fsync, before this returns, unless a failed write is being undone) or with the
  // next write; else at the end of this loop turn.
  function enqueue(line: string, now: boolean, undo?: () => void): Promise<void> {
    const written = new Promise<void>((resolve, reject) => waiting.push({ resolve, reject, ...(undo ? { undo } : {}) }));
    queued.push(line);
    if (now) {
      kick();
    } else if (!doneFlushScheduled) {
      doneFlushScheduled = true;
      setImmediate(() => {
        doneFlushScheduled = false;
        kick();
      });
    }
    return written;
  }

  await compact();
  // At start a journal that cannot be opened stops the Broker (the reason was logged), rather than refusing every event.
  if (handle === undefined) throw new Error(`the delivery journal ${file} could not be opened after compacting it`);

  return {
    unfinished,
    tornLines: torn,
    get bytes() {
      return fileBytes;
    },
    accept(events) {
      if (closed) return Promise.reject(new Error('the delivery journal is closed'));
      const lines: string[] = [];
      const added: LiveEvent[] = [];
      for (const { event, deliveries } of events) {
        if (deliveries.length === 0) continue;
        const line = acceptLine(event, deliveries);
        const ev: LiveEvent = { event, deliveries: new Map(deliveries.map((d) => [d.key, d])), bytes: Buffer.byteLength(line) };
        live.add(ev);
        liveBytes += ev.bytes;
        for (const d of deliveries) byKey.set(d.key, ev);
        lines.push(line);
        added.push(ev);
      }
      if (lines.length === 0) return Promise.resolve();
      // Refused to its sender (who will send it again): a later compaction must not write it back as accepted.
      return enqueue(lines.join(''), true, () => {
        for (const ev of added) {
          if (!live.delete(ev)) continue;
          liveBytes -= ev.bytes;
          for (const key of ev.deliveries.keys()) if (byKey.get(key) === ev) byKey.delete(key);
        }
      });
    },
    done(key) {
      const ev = byKey.get(key);
      if (ev === undefined || closed) return;
      byKey.delete(key);
      ev.deliveries.delete(key);
      if (ev.deliveries.size === 0) {
        live.delete(ev);
        liveBytes -= ev.bytes;
      }
      // Not awaited by anyone: a done line that is lost costs a duplicate delivery after a restart, never an event.
      enqueue(`${JSON.stringify({ op: 'done', key } satisfies Line)}\n`, false).catch((err: unknown) => opts.logger?.warn({ err, file }, 'a finished delivery could not be journaled; it may be delivered again after a restart'));
    },
    async clearAndClose() {
      closed = true;
      kick();
      await writing;
      live.clear();
      byKey.clear();
      await handle?.close();
      handle = undefined;
      await rm(file, { force: true });
    },
    async close() {
      closed = true;
      // The done lines still waiting for the end of the loop turn go out now, with anything being written.
      kick();
      await writing;
      await handle?.close();
      handle = undefined;
    },
  };
}
