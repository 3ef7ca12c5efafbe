// Where a process listens (LISTEN_HOST, npm start's --host) and how the other processes of this machine reach it.
// One place, so the local Broker, the stack and the admin API's Host check agree on what "this machine" is.

// Listening on these means every interface: the others reach it on loopback.
const EVERY_INTERFACE = new Set(['', '0.0.0.0', '::']);
const LOOPBACK_NAMES = new Set(['localhost', '127.0.0.1', '::1']);

/** Whether a host (a listen address, or a Host header's name, IPv6 in brackets or not) names this machine's loopback. */
export function isLoopbackName(host: string): boolean {
  return LOOPBACK_NAMES.has(host.toLowerCase().replace(/^\[(.*)\]$/, '$1'));
}

/** Whether a listen address is one specific interface of this machine, other than loopback. */
export function isSpecificInterface(host: string): boolean {
  return !EVERY_INTERFACE.has(host) && !isLoopbackName(host);
}

/** The http origin at which a server listening on `host` and `port` is reached from this machine. */
export function reachableOrigin(host: string, port: number): string {
  const address = EVERY_INTERFACE.has(host) ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host;
  return `http://${address}:${port}`;
}
