// The local Broker's dead-letter store: one JSON file per event that could not be delivered, in a directory on
// disk (default .local/dead-letters), so dead letters survive restarts and can be read with any tool. Files are
// written to a temporary name and renamed, so a reader never sees half an entry. Like the deployed JobSink it
// keeps the event whole and says why it died; replay (in broker.ts) re-sends it and removes it once delivered.
import { randomUUID } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { StoredEvent } from './wire.ts';

/** Why delivery gave up: the last answer (status and body) or the network error. */
export interface DeadLetterReason {
  /** The subscriber's last HTTP status, when it answered. */
  status?: number;
  /** The start of the subscriber's last answer body. */
  body?: string;
  /** The network error or timeout, when it did not answer. */
  error?: string;
  /** One line for people. */
  message: string;
}

/** One dead letter as stored. */
export interface DeadLetter {
  /** Sortable by time of death: <ISO time without separators>-<random>. */
  id: string;
  /** When delivery gave up (ISO 8601). */
  deadAt: string;
  /** The Trigger the event failed at ('forward' for the outside sink). */
  trigger: string;
  /** The URL the event was sent to. */
  destination: string;
  /** Delivery attempts made, over every try and replay. */
  attempts: number;
  /** How often it was replayed and failed again. */
  replays: number;
  reason: DeadLetterReason;
  event: StoredEvent;
}

/** What a new dead letter records. */
export type NewDeadLetter = Omit<DeadLetter, 'id' | 'deadAt' | 'replays'>;

const ID = /^[0-9TZ]+-[0-9a-f]{8}$/;

/** The on-disk dead-letter store. */
export interface DeadLetterStore {
  /** The directory the entries are kept in. */
  readonly dir: string;
  /** Writes a new entry; resolves with it once it is on disk. */
  add(entry: NewDeadLetter): Promise<DeadLetter>;
  /** Every entry, oldest first. */
  list(): Promise<DeadLetter[]>;
  /** One entry, or undefined when there is none with this id. */
  get(id: string): Promise<DeadLetter | undefined>;
  /** Rewrites an entry (a replay that failed again). */
  put(entry: DeadLetter): Promise<void>;
  /** Removes an entry; false when there was none. */
  remove(id: string): Promise<boolean>;
}

function fileOf(dir: string, id: string): string {
  // The id becomes a file name: only our own ids are accepted, never a path.
  if (!ID.test(id)) throw new RangeError(`${JSON.stringify(id)} is not a dead-letter id`);
  return join(dir, `${id}.json`);
}

async function writeAtomically(path: string, text: string): Promise<void> {
  const tmp = `${path}.${randomUUID().slice(0, 8)}.tmp`;
  await writeFile(tmp, text, { mode: 0o600 });
  await rename(tmp, path);
}

/** Opens (creating it if needed) the dead-letter store in a directory. */
export async function openDeadLetterStore(dir: string): Promise<DeadLetterStore> {
  await mkdir(dir, { recursive: true });

  async function get(id: string): Promise<DeadLetter | undefined> {
    let text: string;
    try {
      text = await readFile(fileOf(dir, id), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    return JSON.parse(text) as DeadLetter;
  }

  async function put(entry: DeadLetter): Promise<void> {
    await writeAtomically(fileOf(dir, entry.id), `${JSON.stringify(entry, null, 2)}\n`);
  }

  return {
    dir,
    async add(entry) {
      const deadAt = new Date();
      const id = `${deadAt.toISOString().replace(/[-:.]/g, '')}-${randomUUID().slice(0, 8)}`;
      const stored: DeadLetter = { id, deadAt: deadAt.toISOString(), replays: 0, ...entry };
      await put(stored);
      return stored;
    },
    async list() {
      const names = (await readdir(dir)).filter((n) => n.endsWith('.json') && ID.test(n.slice(0, -5))).sort();
      const out: DeadLetter[] = [];
      for (const name of names) {
        const entry = await get(name.slice(0, -5));
        if (entry) out.push(entry);
      }
      return out;
    },
    get,
    put,
    async remove(id) {
      const existed = (await get(id)) !== undefined;
      await rm(fileOf(dir, id), { force: true });
      return existed;
    },
  };
}
