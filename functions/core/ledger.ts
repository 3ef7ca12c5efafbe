// The GPU allocation ledger, summed over buckets: what was registered, released and is still held, per node.
// Each bucket's counters change only inside the session scripts (registration in openSession, release in
// recordRelease), so at any moment `registered = released + held` and each allocation is released at most once.
import type { RedisClient } from './redis/connect.ts';
import type { KeySpace } from './redis/keys.ts';

/** Ledger totals of one GPU node. */
export interface NodeLedger {
  node: string;
  /** Bytes registered by session.opened (per incarnation). */
  registeredBytes: number;
  /** Bytes of allocations booked as released after the runtime confirmed the release. */
  releasedBytes: number;
  /** Bytes of allocations not released yet: live sessions, destroys in flight, pending migrations. */
  heldBytes: number;
  allocations: number;
  releases: number;
  /** Bytes the runtimes reported as freed (may differ from registered: the runtime is the authority on usage). */
  confirmedFreedBytes: number;
  /** Releases that booked nothing: duplicates, unknown or stale incarnations. */
  ignoredReleases: number;
  /** Releases whose freed figure was an estimate (an engine that reports none: SGLang, vLLM); counted in releases too. */
  // Optional in the type so ledgers built before these counters existed (reports, fixtures) still read; the audit
  // always fills them.
  estimatedReleases?: number;
  /** The estimated part of confirmedFreedBytes. */
  estimatedFreedBytes?: number;
  /**
   * Demote before destroy, counted apart from releases (a demote frees GPU KV but keeps the allocation): bytes of KV
   * the runtimes keep off the GPU now for demoted sessions, the demotes and restores booked, the GPU KV bytes demotes
   * freed and the bytes restores brought back. Optional like the estimates; the audit always fills them.
   */
  offloadedBytes?: number;
  demotes?: number;
  demoteFreedBytes?: number;
  restores?: number;
  restoredBytes?: number;
}

/** The ledger of every node, plus whether it balances. */
export interface LedgerAudit {
  nodes: NodeLedger[];
  totals: Omit<NodeLedger, 'node'>;
  /** registered = released + held on every node, no negative holding or offloading, releases ≤ allocations, restores ≤ demotes. */
  balanced: boolean;
  problems: string[];
}

const FIELDS = {
  reg: 'registeredBytes', rel: 'releasedBytes', held: 'heldBytes', allocs: 'allocations',
  frees: 'releases', confirmed: 'confirmedFreedBytes', ignored: 'ignoredReleases',
  estimated: 'estimatedReleases', estimatedBytes: 'estimatedFreedBytes',
  offloaded: 'offloadedBytes', demotes: 'demotes', demoteFreed: 'demoteFreedBytes', restores: 'restores', restored: 'restoredBytes',
} as const satisfies Record<string, keyof Omit<NodeLedger, 'node'>>;

const empty = (): Omit<NodeLedger, 'node'> => ({
  registeredBytes: 0, releasedBytes: 0, heldBytes: 0, allocations: 0, releases: 0, confirmedFreedBytes: 0, ignoredReleases: 0,
  estimatedReleases: 0, estimatedFreedBytes: 0,
  offloadedBytes: 0, demotes: 0, demoteFreedBytes: 0, restores: 0, restoredBytes: 0,
});

/** Reads and sums every bucket's ledger: O(buckets + nodes), never a SCAN. */
export async function auditLedger(redis: RedisClient, keys: KeySpace): Promise<LedgerAudit> {
  const perNode = new Map<string, NodeLedger>();
  const hashes = await Promise.all(keys.allBuckets().map((b) => redis.hgetall(b.ledger)));
  for (const hash of hashes) {
    for (const [field, value] of Object.entries(hash)) {
      const sep = field.indexOf(':');
      const kind = field.slice(0, sep) as keyof typeof FIELDS;
      const node = field.slice(sep + 1);
      const prop = FIELDS[kind];
      if (!prop) continue;
      const entry = perNode.get(node) ?? { node, ...empty() };
      entry[prop] = (entry[prop] ?? 0) + Number(value);
      perNode.set(node, entry);
    }
  }
  const nodes = [...perNode.values()].sort((a, b) => a.node.localeCompare(b.node));
  const totals = empty();
  const problems: string[] = [];
  for (const n of nodes) {
    for (const prop of Object.values(FIELDS)) totals[prop] = (totals[prop] ?? 0) + (n[prop] ?? 0);
    if (n.registeredBytes !== n.releasedBytes + n.heldBytes) problems.push(`${n.node}: registered ${n.registeredBytes} ≠ released ${n.releasedBytes} + held ${n.heldBytes}`);
    if (n.heldBytes < 0) problems.push(`${n.node}: negative held bytes ${n.heldBytes}`);
    if ((n.offloadedBytes ?? 0) < 0) problems.push(`${n.node}: negative offloaded bytes ${n.offloadedBytes}`);
    if ((n.restores ?? 0) > (n.demotes ?? 0)) problems.push(`${n.node}: ${n.restores} restores for ${n.demotes} demotes`);
    if (n.releases > n.allocations) problems.push(`${n.node}: ${n.releases} releases for ${n.allocations} allocations`);
  }
  return { nodes, totals, balanced: problems.length === 0, problems };
}
