// Creates the Redis client from configuration: a single Redis or a Redis Cluster, connected lazily (under Istio
// the sidecar may not be ready when the process starts), and failing commands fast when Redis is unreachable so
// handlers answer 5xx and the Broker redelivers, instead of queueing work in memory.
import { isIP } from 'node:net';
import { checkServerIdentity, type PeerCertificate } from 'node:tls';
import { Cluster, Redis } from 'ioredis';
import type { Config } from '../config.ts';

/** Either client: the session core uses only commands both support with the same shape. */
export type RedisClient = Redis | Cluster;

type RedisSettings = Pick<Config, 'REDIS_URL' | 'REDIS_CLUSTER_NODES' | 'REDIS_PASSWORD' | 'REDIS_TLS' | 'CORE_TIMEOUT_MS'>;

/** An IP literal in one spelling, so `::1` and `0:0:0:0:0:0:0:1` compare equal (the URL parser canonicalises IPv6). */
function canonicalIp(ip: string): string {
  return isIP(ip) === 6 ? new URL(`http://[${ip}]/`).hostname.slice(1, -1) : ip;
}

/**
 * Node's server identity check, plus one case it refuses: Memorystore for Redis names an instance, reached by its
 * private IP, in the certificate's subject CN and carries no IP SAN, while Node's tls.checkServerIdentity checks an IP
 * host against IP SANs only (nodejs/node lib/tls.js: `if (net.isIP(hostname)) valid = ips.includes(...)`) and
 * fails with ERR_TLS_CERT_ALTNAME_INVALID. Such a certificate is accepted when the host is an IP literal, the
 * certificate has no IP SAN at all, and its one subject CN is that same IP. Nothing else changes: the chain is still
 * verified against the trusted CAs (NODE_EXTRA_CA_CERTS) before this runs, and a certificate that lists IP SANs is
 * judged by them alone.
 */
export function checkRedisServerIdentity(host: string, cert: PeerCertificate): Error | undefined {
  const standard = checkServerIdentity(host, cert);
  if (standard === undefined || isIP(host) === 0) return standard;
  const hasIpSan = (cert.subjectaltname ?? '').split(', ').some((name) => name.startsWith('IP Address:'));
  const cn: unknown = cert.subject.CN;
  if (hasIpSan || typeof cn !== 'string' || isIP(cn) === 0) return standard;
  return canonicalIp(cn) === canonicalIp(host) ? undefined : standard;
}

/** Builds (but does not connect) the client the configuration names. */
export function createRedisClient(cfg: RedisSettings): RedisClient {
  const common = {
    // RESP2: ioredis 6 defaults to RESP3, which measured 2.5x slower here for the same commands, and the session
    // core needs nothing RESP3 adds.
    protocol: 2 as const,
    lazyConnect: true,
    enableAutoPipelining: true,
    // One retry on a reconnect, then the command fails and the caller answers 5xx.
    maxRetriesPerRequest: 1,
    commandTimeout: cfg.CORE_TIMEOUT_MS,
    connectTimeout: Math.max(cfg.CORE_TIMEOUT_MS, 1000),
    ...(cfg.REDIS_PASSWORD ? { password: cfg.REDIS_PASSWORD } : {}),
    ...(cfg.REDIS_TLS ? { tls: { checkServerIdentity: checkRedisServerIdentity } } : {}),
  };
  if (cfg.REDIS_CLUSTER_NODES.trim() !== '') {
    const seeds = cfg.REDIS_CLUSTER_NODES.split(',').map((hostPort) => {
      const [host, port] = hostPort.trim().split(':');
      if (!host || !port || !/^\d+$/.test(port)) throw new RangeError(`REDIS_CLUSTER_NODES entry "${hostPort}" is not host:port`);
      return { host, port: Number(port) };
    });
    return new Cluster(seeds, {
      lazyConnect: true,
      enableAutoPipelining: true,
      scaleReads: 'master',
      redisOptions: common,
      clusterRetryStrategy: (times) => Math.min(100 * 2 ** times, 2000),
    });
  }
  return new Redis(cfg.REDIS_URL, common);
}

/** Connects a lazily-created client (idempotent) and waits until it is ready. */
export async function connectRedis(client: RedisClient): Promise<void> {
  if (client.status === 'ready') return;
  if (client.status === 'wait') await client.connect();
  else await new Promise<void>((resolve, reject) => {
    client.once('ready', () => resolve());
    client.once('error', reject);
  });
}
