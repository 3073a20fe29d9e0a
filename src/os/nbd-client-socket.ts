// The socket under src/nbd/client.ts: a TCP connection (node:net), upgraded
// in place to TLS after NBD_OPT_STARTTLS when the caller gives a directory of
// X.509 material in the layout libnbd, nbdkit and qemu-nbd use
// (DIR/ca-cert.pem to check the server, and DIR/client-cert.pem with
// DIR/client-key.pem when the server checks clients), or a pre-shared key
// (an identity and its key from a psktool file, as libnbd's tls-psk-file). The reply timeout lives
// here, since src/nbd has no timers: a connection that sends nothing for
// nbdClientReplyTimeoutMs while a request waits is dropped.

import { existsSync, readFileSync } from "node:fs";
import { connect, isIP, type Socket } from "node:net";
import { join } from "node:path";
import { connect as tlsConnect, type ConnectionOptions } from "node:tls";
import { assert } from "../base/assert.js";
import { nbdClientReplyTimeoutMs } from "../constants.js";
import { NbdClient, type NbdClientOptions, type NbdClientSocket, type NbdExportInfo } from "../nbd/client.js";
import { readPskFile } from "./nbd-tls.js";

export { NbdClient, NbdProtocolError, NbdRefusedError, NbdRequestError, type NbdExportInfo } from "../nbd/client.js";

/** How long connecting and the whole handshake may take. */
const nbdClientConnectTimeoutMs = 15_000;

export interface NbdConnectOptions {
  exportName: string;
  /** Directory with ca-cert.pem (and client-cert.pem, client-key.pem): TLS is required. Absent (and no psk): plain TCP. */
  tlsDir?: string;
  /** A pre-shared key (nbdPsk): TLS 1.2 with a PSK cipher is required. */
  psk?: NbdPsk;
  blockStatus?: boolean;
  requestsInFlightMax?: number;
}

interface TlsMaterial {
  ca: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

function readTlsDir(dir: string): TlsMaterial {
  const file = (name: string): string => join(dir, name);
  if (!existsSync(file("ca-cert.pem"))) throw new Error(`--nbd-tls-dir ${dir} has no ca-cert.pem (the CA that signed the daemons' NBD certificates)`);
  const hasCert = existsSync(file("client-cert.pem"));
  if (hasCert !== existsSync(file("client-key.pem"))) throw new Error(`--nbd-tls-dir ${dir} needs both client-cert.pem and client-key.pem, or neither`);
  return { ca: readFileSync(file("ca-cert.pem")), ...(hasCert ? { cert: readFileSync(file("client-cert.pem")), key: readFileSync(file("client-key.pem")) } : {}) };
}

export interface NbdPsk {
  identity: string;
  key: Buffer;
}

/**
 * The key of `identity` in a psktool file (identity:hexkey lines, as the
 * daemon's --nbd-tls-psk reads them); without an identity, the file's only
 * entry.
 */
export function nbdPsk(file: string, identity?: string): NbdPsk {
  const keys = readPskFile(file);
  if (identity === undefined) {
    const [only, ...more] = [...keys];
    if (only === undefined || more.length > 0) throw new Error(`--nbd-tls-psk ${file} holds ${keys.size} identities; name the one to use with --nbd-tls-username`);
    return { identity: only[0], key: only[1] };
  }
  const key = keys.get(identity);
  if (key === undefined) throw new Error(`--nbd-tls-psk ${file} has no key for the identity "${identity}"`);
  return { identity, key };
}

/** The options of a TLS upgrade: X.509 (the server checked against ca-cert.pem, named by the host dialled) or a PSK. */
function tlsOptions(host: string, tls: TlsMaterial | undefined, psk: NbdPsk | undefined): ConnectionOptions {
  if (psk !== undefined) {
    // Node's OpenSSL binding offers PSK ciphers on TLS 1.2 only, as the daemon's side (src/os/nbd-tls.ts); the key proves the server too.
    return { ciphers: "PSK", minVersion: "TLSv1.2", maxVersion: "TLSv1.2", pskCallback: () => ({ psk: psk.key, identity: psk.identity }), checkServerIdentity: () => undefined };
  }
  assert(tls !== undefined, "a TLS upgrade without material");
  // The server's certificate must chain to ca-cert.pem and name the host dialled (a DNS name or an IP SAN); SNI only for a name (RFC 6066).
  return { host, ca: tls.ca, ...(tls.cert !== undefined ? { cert: tls.cert, key: tls.key } : {}), ...(isIP(host) === 0 ? { servername: host } : {}) };
}

/** `HOST:PORT` or `[V6]:PORT` as volumeServers gives it. */
export function splitHostPort(server: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(server) ?? /^([^:]+):(\d+)$/.exec(server);
  const port = Number(m?.[2]);
  if (m === null || !(port > 0 && port < 65536)) throw new Error(`${JSON.stringify(server)} is not HOST:PORT`);
  return { host: m[1]!, port };
}

/** Connects to `server` (HOST:PORT), runs the handshake, and returns the client in transmission. */
export async function connectNbd(server: string, o: NbdConnectOptions): Promise<{ client: NbdClient; info: NbdExportInfo }> {
  const { host, port } = splitHostPort(server);
  assert(o.tlsDir === undefined || o.psk === undefined, "NBD TLS with both a certificate dir and a PSK");
  const tls = o.tlsDir === undefined ? undefined : readTlsDir(o.tlsDir);
  const secured = tls !== undefined || o.psk !== undefined;
  const raw = await new Promise<Socket>((resolve, reject) => {
    const s = connect({ host, port, noDelay: true });
    s.setTimeout(nbdClientConnectTimeoutMs, () => s.destroy(new Error(`no answer within ${nbdClientConnectTimeoutMs / 1000}s`)));
    s.once("connect", () => resolve(s));
    s.once("error", (e) => reject(new Error(`cannot connect to NBD at ${server}: ${e.message}`)));
  });
  let current: Socket = raw;
  let client: NbdClient | undefined;
  const wire = (s: Socket): void => {
    s.on("data", (d: Buffer) => client?.received(d));
    s.on("error", (e) => client?.closed(`the NBD connection to ${server} failed: ${e.message}`));
    s.on("close", () => client?.closed(`the NBD server at ${server} closed the connection`));
  };
  wire(raw);
  const port_: NbdClientSocket = {
    write: (chunks) => {
      for (const c of chunks) current.write(c);
    },
    end: () => current.end(),
    destroy: () => current.destroy(),
    ...(secured
      ? {
          startTls: () =>
            new Promise<void>((resolve, reject) => {
              raw.removeAllListeners("data");
              raw.removeAllListeners("close");
              raw.removeAllListeners("error");
              const t = tlsConnect({ socket: raw, ...tlsOptions(host, tls, o.psk) });
              current = t;
              t.once("secureConnect", () => {
                wire(t);
                resolve();
              });
              t.once("error", (e) => reject(new Error(`TLS with the NBD server at ${server} failed: ${e.message}`)));
            }),
        }
      : {}),
  };
  const options: NbdClientOptions = { exportName: o.exportName, tls: secured ? "require" : "off", ...(o.blockStatus !== undefined ? { blockStatus: o.blockStatus } : {}), ...(o.requestsInFlightMax !== undefined ? { requestsInFlightMax: o.requestsInFlightMax } : {}) };
  client = new NbdClient(port_, options);
  try {
    const info = await client.handshake();
    raw.setTimeout(nbdClientReplyTimeoutMs, () => {
      if (client?.busy) client.closed(`no reply from the NBD server at ${server} for ${nbdClientReplyTimeoutMs / 1000}s`);
    });
    return { client, info };
  } catch (e) {
    current.destroy();
    throw e;
  }
}
