// Which network addresses session-reaper's outbound calls may reach (GPU runtimes, the router hook, the local
// Broker's forward sink). The address a name resolves to is checked at connect time, against the address the socket
// then uses, so neither a registered name that later resolves elsewhere (DNS rebinding) nor a literal written in a
// disguise (2130706433, 0x7f.1, [::ffff:127.0.0.1] — the URL parser and ipaddr.js normalise them) reaches loopback,
// link-local (169.254.169.254, the cloud metadata service), private or other special-purpose addresses, unless the
// operator allowed a network explicitly (OUTBOUND_ALLOWED_CIDRS: in a cluster, its Service network).
import { lookup as dnsLookup, type LookupAddress, type LookupAllOptions, type LookupOneOptions } from 'node:dns';
import { isIP } from 'node:net';
import ipaddr from 'ipaddr.js';

/** Why an address was refused: the ipaddr.js range it lies in ('loopback', 'linkLocal', 'private', ...). */
export class ForbiddenAddressError extends Error {
  override name = 'ForbiddenAddressError';
  readonly code = 'EFORBIDDENADDRESS';
  readonly address: string;
  readonly range: string;

  constructor(address: string, range: string) {
    super(`address ${address} (${range}) is not allowed for outbound calls`);
    this.address = address;
    this.range = range;
  }
}

// Never reachable whatever the operator allows: not a host anyone can mean.
const ALWAYS_REFUSED = new Set(['unspecified', 'broadcast', 'multicast']);

type Cidr = [ipaddr.IPv4 | ipaddr.IPv6, number];

/** A lookup function with the signature node:net's `lookup` option takes. */
export type GuardedLookup = (
  hostname: string,
  options: LookupOneOptions | LookupAllOptions,
  callback: (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void,
) => void;

/** The rule outbound calls follow: public unicast addresses, plus the networks the operator allowed. */
export class OutboundAddressPolicy {
  readonly #allowed: readonly Cidr[];

  /** `allowedCidrs`: networks (CIDR, e.g. 10.0.0.0/8, 127.0.0.1/32, ::1/128) that may be reached although special. */
  constructor(allowedCidrs: readonly string[]) {
    this.#allowed = allowedCidrs.map((text) => {
      try {
        const cidr = ipaddr.parseCIDR(text.trim());
        return [normalise(cidr[0]), cidr[0].kind() === 'ipv6' && normalise(cidr[0]).kind() === 'ipv4' ? Math.max(0, cidr[1] - 96) : cidr[1]] as Cidr;
      } catch (err) {
        throw new RangeError(`${JSON.stringify(text)} is not a CIDR such as 10.0.0.0/8 or ::1/128`, { cause: err });
      }
    });
  }

  /** Parses a comma-separated list of CIDRs (OUTBOUND_ALLOWED_CIDRS). */
  static fromList(text: string): OutboundAddressPolicy {
    return new OutboundAddressPolicy(text.split(',').map((t) => t.trim()).filter((t) => t !== ''));
  }

  /** Undefined when `address` (an IP literal) may be reached, else the refusal. */
  refusal(address: string): ForbiddenAddressError | undefined {
    let ip: ipaddr.IPv4 | ipaddr.IPv6;
    try {
      ip = normalise(ipaddr.parse(address.replace(/^\[|\]$/g, '')));
    } catch {
      return new ForbiddenAddressError(address, 'unparseable');
    }
    const range = ip.range();
    if (ALWAYS_REFUSED.has(range)) return new ForbiddenAddressError(address, range);
    if (range === 'unicast') return undefined;
    for (const [network, bits] of this.#allowed) {
      if (network.kind() === ip.kind() && ip.match(network, bits)) return undefined;
    }
    return new ForbiddenAddressError(address, range);
  }

  /** Throws the refusal of an IP literal; names are checked when they resolve (lookup). */
  checkHost(hostname: string): void {
    const bare = hostname.replace(/^\[|\]$/g, '');
    if (isIP(bare) === 0) return;
    const refused = this.refusal(bare);
    if (refused) throw refused;
  }

  /**
   * node:net's `lookup`, resolving as dns.lookup does and refusing the connection when any address the name
   * resolves to is refused (a name that also points somewhere forbidden is not trusted with the others).
   */
  readonly lookup: GuardedLookup = (hostname, options, callback) => {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) {
        callback(err, []);
        return;
      }
      for (const a of addresses) {
        const refused = this.refusal(a.address);
        if (refused) {
          callback(refused, []);
          return;
        }
      }
      if (options.all === true) callback(null, addresses);
      else if (addresses[0]) callback(null, addresses[0].address, addresses[0].family);
      else callback(Object.assign(new Error(`${hostname} resolved to no address`), { code: 'ENOTFOUND' }), []);
    });
  };
}

// An IPv4-mapped IPv6 address (::ffff:127.0.0.1) is the IPv4 address it carries.
function normalise(ip: ipaddr.IPv4 | ipaddr.IPv6): ipaddr.IPv4 | ipaddr.IPv6 {
  return ip.kind() === 'ipv6' && (ip as ipaddr.IPv6).isIPv4MappedAddress() ? (ip as ipaddr.IPv6).toIPv4Address() : ip;
}

/** The ForbiddenAddressError somewhere in an error's cause chain, if any. */
export function forbiddenAddressIn(err: unknown): ForbiddenAddressError | undefined {
  for (let e: unknown = err, depth = 0; e !== undefined && e !== null && depth < 5; depth++) {
    if (e instanceof ForbiddenAddressError) return e;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}
