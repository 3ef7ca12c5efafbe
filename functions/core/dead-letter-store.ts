// The dead-letter store: one JSON file per event that could not be delivered, in a directory on disk, so dead
// letters survive restarts and can be read with any tool. Two deployables keep dead letters in it: the local Broker
// (`npm start`, .local/dead-letters) and the deployed dead-letter receiver (functions/dead-letters, on its
// persistent volume), and both serve it through the same admin API (sessionctl `dead-letters`).
//
// Files are written to a temporary name and renamed, so a reader never sees half an entry. It is bounded by bytes,
// not by entries: every entry is counted as the disk blocks its file takes (a 300-byte event still takes a 4 KiB
// block), and an entry that would take the store past its cap is refused (DeadLetterStoreFullError) rather than
// making room by evicting older ones, which an operator may be about to replay. The cap is checked and the bytes
// reserved before anything is written, so concurrent writers never pass it together.
//
// An event is kept once per destination that refused it: the same (destination, source, id) arriving again (a
// redelivered dead letter) returns the entry already kept. The file name carries a hash of that key, so the index is
// rebuilt at open from the directory listing alone, without reading a single entry.
import { createHash, randomUUID } from 'node:crypto';
import type { Stats } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { StoredEvent } from './cloudevent-wire.ts';

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
  /** Sortable by time of death: <ISO time without separators>-<24 hex of the (destination, source, id) hash>. */
  id: string;
  /** When delivery gave up (ISO 8601). */
  deadAt: string;
  /**
   * The Trigger the event failed at ('forward' for the local Broker's outside sink). At the deployed receiver, the
   * Trigger Knative's `knativeerrordest` names, or that destination's host when it names none.
   */
  trigger: string;
  /** The URL the event was sent to. */
  destination: string;
  /** Delivery attempts made, over every try and replay; 0 where the sender does not say (Knative does not). */
  attempts: number;
  /** How often it was replayed and failed again. */
  replays: number;
  reason: DeadLetterReason;
  event: StoredEvent;
}

/** What a new dead letter records. */
export type NewDeadLetter = Omit<DeadLetter, 'id' | 'deadAt' | 'replays'>;

/** What add() did: kept a new entry, or found this event already kept for this destination. */
export interface AddResult {
  entry: DeadLetter;
  duplicate: boolean;
}

/** The block size entries are counted in: ext4's and most file systems' default (a file takes whole blocks). */
export const DISK_BLOCK_BYTES = 4096;

/** A new dead letter refused because it would take the store past its byte cap; nothing was written. */
export class DeadLetterStoreFullError extends Error {
  override name = 'DeadLetterStoreFullError';
  /** What the refused entry would have taken on disk. */
  readonly entryBytes: number;
  /** What the store holds now. */
  readonly usedBytes: number;
  /** The cap. */
  readonly maxBytes: number;
  constructor(entryBytes: number, usedBytes: number, maxBytes: number) {
    super(`the dead-letter store holds ${usedBytes} of its ${maxBytes} bytes; an entry of ${entryBytes} bytes does not fit`);
    this.entryBytes = entryBytes;
    this.usedBytes = usedBytes;
    this.maxBytes = maxBytes;
  }
}

// Our ids only (a file name must never become a path). The suffix is 24 hex: the key's hash; 8 hex for entries an
// earlier store wrote with a random suffix, which are listed, read and removed but not indexed by key.
const ID = /^[0-9TZ]+-(?:[0-9a-f]{8}|[0-9a-f]{24})$/;
const KEY_HASH_HEX = 24;

/** Whether a string is a dead-letter id as the store makes them. */
export function isDeadLetterId(id: string): boolean {
  return ID.test(id);
}

/** A page of entries, oldest first, and where the next page starts (absent on the last page). */
export interface DeadLetterPage {
  deadLetters: DeadLetter[];
  next?: string;
}

/** How list() pages: after an id, at most `limit` entries and about `maxBytes` of them. */
export interface PageOptions {
  /** Start after this id (the previous page's `next`). */
  after?: string;
  /** Entries at most. Default: all. */
  limit?: number;
  /** Stop once the page holds this many bytes on disk (at least one entry is returned). Default: no bound. */
  maxBytes?: number;
}

/** The on-disk dead-letter store. */
export interface DeadLetterStore {
  /** The directory the entries are kept in. */
  readonly dir: string;
  /** The cap in bytes on disk; Infinity when unbounded. */
  readonly maxBytes: number;
  /** Bytes on disk the entries take now (whole blocks). */
  usedBytes(): number;
  /** Entries kept now. */
  count(): number;
  /**
   * Keeps a new entry, or returns the one already kept for the same (destination, source, id); resolves once it is
   * on disk. Rejects with DeadLetterStoreFullError, writing nothing, when it would pass the cap.
   */
  add(entry: NewDeadLetter): Promise<AddResult>;
  /** Entries, oldest first: all of them, or one page. */
  list(page?: PageOptions): Promise<DeadLetter[]>;
  /** One page of entries, oldest first, and where the next starts. */
  page(page: PageOptions): Promise<DeadLetterPage>;
  /** One entry, or undefined when there is none with this id. */
  get(id: string): Promise<DeadLetter | undefined>;
  /** Rewrites an entry (a replay that failed again). Its growth is counted but never refused: it is already kept. */
  put(entry: DeadLetter): Promise<void>;
  /** Removes an entry; false when there was none. */
  remove(id: string): Promise<boolean>;
}

/** The bytes a file of `bytes` takes on disk: whole blocks, at least one. */
export function diskBytes(bytes: number): number {
  return Math.max(1, Math.ceil(bytes / DISK_BLOCK_BYTES)) * DISK_BLOCK_BYTES;
}

function fileOf(dir: string, id: string): string {
  if (!ID.test(id)) throw new RangeError(`${JSON.stringify(id)} is not a dead-letter id`);
  return join(dir, `${id}.json`);
}

// The key a redelivery repeats: who refused it, and the event's identity (CloudEvents: source + id is unique).
function keyHash(entry: Pick<NewDeadLetter, 'destination' | 'event'>): string {
  const { source, id } = entry.event.attributes;
  return createHash('sha256')
    .update(JSON.stringify([entry.destination, String(source), String(id)]))
    .digest('hex')
    .slice(0, KEY_HASH_HEX);
}

const hashOf = (id: string): string | undefined => {
  const suffix = id.slice(id.lastIndexOf('-') + 1);
  return suffix.length === KEY_HASH_HEX ? suffix : undefined;
};

async function writeAtomically(path: string, text: string): Promise<void> {
  const tmp = `${path}.${randomUUID().slice(0, 8)}.tmp`;
  try {
    await writeFile(tmp, text, { mode: 0o600 });
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** Age past which a temporary file is taken as a killed writer's leftover: a write takes milliseconds. */
export const STALE_TEMP_FILE_MS = 10 * 60_000;

// A file another process may rename or remove between the listing and this look: undefined once it is gone.
async function statIfPresent(path: string): Promise<Stats | undefined> {
  try {
    return await stat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** Opens (creating it if needed) the dead-letter store in a directory, bounded by `maxBytes` on disk when given. */
export async function openDeadLetterStore(dir: string, opts: { maxBytes?: number } = {}): Promise<DeadLetterStore> {
  const maxBytes = opts.maxBytes ?? Infinity;
  if (!(maxBytes > 0)) throw new RangeError(`a dead-letter store's cap must be positive, not ${maxBytes}`);
  await mkdir(dir, { recursive: true });

  // Every entry's bytes on disk by id, and the id kept for each key hash: rebuilt from the listing.
  const sizes = new Map<string, number>();
  const byKey = new Map<string, string>();
  // Adds in flight by key hash, so a concurrent redelivery waits for the first write instead of writing twice.
  const adding = new Map<string, Promise<AddResult>>();
  let used = 0;
  for (const name of await readdir(dir)) {
    if (!name.endsWith('.json')) {
      // A temporary file a killed writer left: never an entry, and its bytes would count against nobody. Only an old
      // one: a young one may be another process's write under way (the local Broker's while a test or an operator's
      // tool opens the store to read it), whose rename would then fail and lose that dead letter (seen in CI).
      if (name.endsWith('.tmp')) {
        const tmp = await statIfPresent(join(dir, name));
        if (tmp && Date.now() - tmp.mtimeMs > STALE_TEMP_FILE_MS) await rm(join(dir, name), { force: true });
      }
      continue;
    }
    const id = name.slice(0, -5);
    if (!ID.test(id)) continue;
    // Gone since the listing: removed by another process (an operator's DELETE through the other one).
    const entry = await statIfPresent(join(dir, name));
    if (entry === undefined) continue;
    const bytes = diskBytes(entry.size);
    sizes.set(id, bytes);
    used += bytes;
    const hash = hashOf(id);
    if (hash !== undefined) byKey.set(hash, id);
  }

  // Listed from the directory each time, not from the index: another process (a test, an operator's tool, or the
  // local Broker of a running `npm start`) may read a store this process does not write.
  const sortedIds = async (): Promise<string[]> =>
    (await readdir(dir))
      .filter((n) => n.endsWith('.json') && ID.test(n.slice(0, -5)))
      .map((n) => n.slice(0, -5))
      .sort();

  async function get(id: string): Promise<DeadLetter | undefined> {
    if (!ID.test(id)) return undefined;
    let text: string;
    try {
      text = await readFile(fileOf(dir, id), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    return JSON.parse(text) as DeadLetter;
  }

  const render = (entry: DeadLetter) => `${JSON.stringify(entry, null, 2)}\n`;

  async function put(entry: DeadLetter): Promise<void> {
    const text = render(entry);
    await writeAtomically(fileOf(dir, entry.id), text);
    const bytes = diskBytes(Buffer.byteLength(text));
    used += bytes - (sizes.get(entry.id) ?? 0);
    sizes.set(entry.id, bytes);
    const hash = hashOf(entry.id);
    if (hash !== undefined) byKey.set(hash, entry.id);
  }

  async function addNew(entry: NewDeadLetter, hash: string): Promise<AddResult> {
    const kept = byKey.get(hash);
    if (kept !== undefined) {
      const existing = await get(kept);
      if (existing) return { entry: existing, duplicate: true };
    }
    const deadAt = new Date();
    const id = `${deadAt.toISOString().replace(/[-:.]/g, '')}-${hash}`;
    const stored: DeadLetter = { id, deadAt: deadAt.toISOString(), replays: 0, ...entry };
    const text = render(stored);
    const bytes = diskBytes(Buffer.byteLength(text));
    // Checked and reserved before the first await of the write: concurrent adds see each other's bytes.
    if (used + bytes > maxBytes) throw new DeadLetterStoreFullError(bytes, used, maxBytes);
    used += bytes;
    try {
      await writeAtomically(fileOf(dir, id), text);
    } catch (err) {
      used -= bytes;
      throw err;
    }
    sizes.set(id, bytes);
    byKey.set(hash, id);
    return { entry: stored, duplicate: false };
  }

  async function page(opts: PageOptions): Promise<DeadLetterPage> {
    const ids = (await sortedIds()).filter((id) => opts.after === undefined || id > opts.after);
    const limit = opts.limit ?? Infinity;
    const maxPageBytes = opts.maxBytes ?? Infinity;
    const out: DeadLetter[] = [];
    let bytes = 0;
    let i = 0;
    for (; i < ids.length && out.length < limit && (out.length === 0 || bytes < maxPageBytes); i++) {
      const id = ids[i]!;
      const entry = await get(id);
      if (!entry) continue;
      out.push(entry);
      bytes += sizes.get(id) ?? diskBytes(JSON.stringify(entry).length);
    }
    const last = out.at(-1);
    return i < ids.length && last ? { deadLetters: out, next: last.id } : { deadLetters: out };
  }

  return {
    dir,
    maxBytes,
    usedBytes: () => used,
    count: () => sizes.size,
    add(entry) {
      const hash = keyHash(entry);
      const inFlight = adding.get(hash);
      if (inFlight) return inFlight.then((r) => ({ entry: r.entry, duplicate: true }));
      const result = addNew(entry, hash).finally(() => adding.delete(hash));
      adding.set(hash, result);
      return result;
    },
    async list(opts = {}) {
      return (await page(opts)).deadLetters;
    },
    page,
    get,
    put,
    async remove(id) {
      if (!ID.test(id)) return false;
      const existed = (await get(id)) !== undefined;
      await rm(fileOf(dir, id), { force: true });
      used -= sizes.get(id) ?? 0;
      sizes.delete(id);
      const hash = hashOf(id);
      if (hash !== undefined && byKey.get(hash) === id) byKey.delete(hash);
      return existed;
    },
  };
}
