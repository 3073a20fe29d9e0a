// TLS for NBD (NBD_OPT_STARTTLS, docs/security.md "TLS on NBD"): the
// server's X.509 certificate or pre-shared keys, loaded once at start, and
// the in-place upgrade of an accepted socket after the STARTTLS ACK.
//
// Files follow what nbdkit, qemu-nbd and libnbd use, so one directory or PSK
// file serves both sides: DIR/server-cert.pem, DIR/server-key.pem and, when
// client certificates are to be checked, DIR/ca-cert.pem; a PSK file has one
// `identity:hexkey` line per client (gnutls psktool's format).

import { existsSync, readFileSync } from "node:fs";
import { readSmallFile } from "./credentials.js";
import { join } from "node:path";
import { createSecureContext, DEFAULT_CIPHERS, TLSSocket, type SecureContext } from "node:tls";
import type { Socket } from "node:net";
import type { NbdTlsPolicy, NbdTlsResult } from "../nbd/ports.js";

/** Lines of a PSK file (one client each). */
export const nbdPskEntriesMax = 1024;
const pskFileBytesMax = 256 * 1024;
/** A PSK identity: what gnutls sends (a user name), bounded. */
const pskIdentityPattern = /^[A-Za-z0-9._@-]{1,128}$/;
/** Key bytes of one PSK: 16 to 64 (psktool makes 32). */
const pskKeyPattern = /^(?:[0-9a-fA-F]{2}){16,64}$/;

export type NbdTlsMode = "off" | "on" | "require";

export interface NbdTlsConfig {
  mode: NbdTlsMode;
  /** Directory with server-cert.pem, server-key.pem and optionally ca-cert.pem (then every client needs a certificate it signed). */
  certDir?: string;
  /** identity:hexkey lines. */
  pskFile?: string;
}

export interface NbdTls {
  /** The policy of a TCP connection (a Unix-socket client is local and private to the daemon's user: TLS is offered, never required). */
  policy(unix: boolean): NbdTlsPolicy;
  /** Upgrades an accepted socket, as the server side of a TLS handshake. */
  upgrade(raw: Socket, secured: (r: NbdTlsResult) => void): TLSSocket;
  /** One line for the log: what is offered. */
  describe: string;
}

/** Loads the TLS material once; throws a sentence for a mode without material, or a file that cannot be used. */
export function loadNbdTls(config: NbdTlsConfig): NbdTls | undefined {
  if (config.mode === "off") return undefined;
  if (config.certDir === undefined && config.pskFile === undefined) {
    throw new Error(`--nbd-tls ${config.mode} needs --nbd-tls-dir DIR (server-cert.pem, server-key.pem, and ca-cert.pem to check client certificates) or --nbd-tls-psk FILE (identity:hexkey lines)`);
  }
  const psk = config.pskFile === undefined ? undefined : readPskFile(config.pskFile);
  const x509 = config.certDir === undefined ? undefined : readCertDir(config.certDir);
  const context: SecureContext = createSecureContext({
    ...(x509 !== undefined ? { cert: x509.cert, key: x509.key, ...(x509.ca !== undefined ? { ca: x509.ca } : {}) } : {}),
    // PSK ciphers exist in TLS 1.2 only in Node's OpenSSL binding; a PSK-only server stays there.
    ...(psk !== undefined ? { ciphers: x509 === undefined ? "PSK" : `PSK:${DEFAULT_CIPHERS}` } : {}),
    ...(psk !== undefined && x509 === undefined ? { maxVersion: "TLSv1.2" as const } : {}),
    minVersion: "TLSv1.2",
  });
  const checkClients = x509?.ca !== undefined;
  const upgrade = (raw: Socket, secured: (r: NbdTlsResult) => void): TLSSocket => {
    let identity: string | undefined;
    let done = false;
    const finish = (r: NbdTlsResult): void => {
      if (done) return;
      done = true;
      secured(r);
    };
    const t = new TLSSocket(raw, {
      isServer: true,
      secureContext: context,
      requestCert: checkClients,
      rejectUnauthorized: checkClients,
      ...(psk !== undefined
        ? {
            pskCallback: (_socket: TLSSocket, id: string): Buffer | null => {
              identity = id;
              return psk.get(id) ?? null;
            },
          }
        : {}),
    });
    t.once("secure", () => finish({ ok: true, ...peerOf(t, identity, checkClients) }));
    t.on("error", (e: Error) => finish({ ok: false, error: e.message.trim() }));
    t.once("close", () => finish({ ok: false, error: "the client closed the connection" }));
    return t;
  };
  const what = [x509 !== undefined ? `X.509 (${checkClients ? "client certificates checked against ca-cert.pem" : "no client certificates"})` : "", psk !== undefined ? `PSK (${psk.size} identities)` : ""].filter((x) => x !== "");
  return {
    policy: (unix) => (config.mode === "require" && !unix ? "required" : "optional"),
    upgrade,
    describe: `TLS ${config.mode === "require" ? "required (on TCP)" : "offered"}: ${what.join(" and ")}`,
  };
}

/** The identity a client proved: its PSK identity, or the CN of a certificate the CA checked (none when client certificates are not asked for). */
function peerOf(t: TLSSocket, pskIdentity: string | undefined, checked: boolean): { identity: string | undefined; peer: string } {
  if (pskIdentity !== undefined) return { identity: pskIdentity, peer: `PSK identity "${pskIdentity}"` };
  const cn = checked ? t.getPeerCertificate()?.subject?.CN : undefined;
  const name = typeof cn === "string" && cn !== "" ? cn : undefined;
  return name !== undefined ? { identity: name, peer: `the certificate of "${name}"` } : { identity: undefined, peer: "no client certificate" };
}

function readCertDir(dir: string): { cert: Buffer; key: Buffer; ca?: Buffer } {
  const file = (name: string): string => join(dir, name);
  for (const name of ["server-cert.pem", "server-key.pem"]) {
    if (!existsSync(file(name))) throw new Error(`--nbd-tls-dir ${dir} has no ${name}; it needs server-cert.pem and server-key.pem (and ca-cert.pem to check client certificates), as nbdkit's --tls-certificates does`);
  }
  return {
    cert: readFileSync(file("server-cert.pem")),
    key: readFileSync(file("server-key.pem")),
    ...(existsSync(file("ca-cert.pem")) ? { ca: readFileSync(file("ca-cert.pem")) } : {}),
  };
}

/** identity:hexkey lines; refuses a file that is too large, a malformed line, or more than nbdPskEntriesMax entries. */
export function readPskFile(path: string): Map<string, Buffer> {
  const text = readSmallFile(path, `a PSK file of at most ${nbdPskEntriesMax} entries`, pskFileBytesMax);
  if (text === undefined) throw new Error(`--nbd-tls-psk ${path} does not exist; give a file of identity:hexkey lines`);
  const keys = new Map<string, Buffer>();
  for (const [i, raw] of text.split("\n").entries()) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const colon = line.indexOf(":");
    const id = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (colon < 0 || !pskIdentityPattern.test(id) || !pskKeyPattern.test(hex)) {
      throw new Error(`--nbd-tls-psk ${path} line ${i + 1} is not "identity:hexkey" (an identity of letters, digits, ".", "_", "@", "-" and 16-64 bytes of key in hex, as psktool writes)`);
    }
    if (keys.size >= nbdPskEntriesMax) throw new Error(`--nbd-tls-psk ${path} has more than ${nbdPskEntriesMax} entries`);
    keys.set(id, Buffer.from(hex, "hex"));
  }
  if (keys.size === 0) throw new Error(`--nbd-tls-psk ${path} holds no identity:hexkey line`);
  return keys;
}
