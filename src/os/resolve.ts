// Host names for --listen and --join: resolved once at start (dns.lookup, the
// system's resolver: /etc/hosts, then DNS), so a daemon binds all its sockets
// to one address and a name that does not resolve stops the start with a
// sentence, instead of a listener's ENOTFOUND or a join retried for half a minute.

import { lookup } from "node:dns/promises";
import { isIP } from "node:net";

/** The address `host` stands for: an IP literal as it is, a name as the system resolves it (the first answer). */
export async function resolveHost(host: string, what: string): Promise<string> {
  if (isIP(host) !== 0) return host;
  try {
    return (await lookup(host)).address;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    throw new Error(`${what} ${JSON.stringify(host)} does not resolve on this host (${code}); give an IP address, or a name that /etc/hosts or DNS knows`);
  }
}
