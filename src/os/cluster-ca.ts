// The cluster's certificate authority (docs/security.md, "The cluster CA"):
// made with the openssl CLI when a node bootstraps a cluster, handed to a
// joining node sealed under a key derived from the cluster secret (every node
// holds the CA key, as it holds the secret: the data dir is the root of
// trust), and used by each node to sign its own certificate for the address
// it listens on. Files in DIR/tls, 0600: ca-cert.pem, ca-key.pem,
// node-cert.pem, node-key.pem.

import { createCipheriv, createDecipheriv, createHmac, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { isIP } from "node:net";
import { hostname } from "node:os";
import { join } from "node:path";
import { runCommand } from "./command.js";

export const tlsDirName = "tls";
/** Validity of the CA and of node certificates, in days (openssl -days). */
const caDays = 3650;
const nodeCertDays = 825;
const opensslTimeoutMs = 30_000;

export interface ClusterCa {
  certPem: string;
  keyPem: string;
}

/** What a join answer carries: the CA certificate, and its key sealed with AES-256-GCM under a key derived from the cluster secret (hex: iv | tag | ciphertext). */
export interface SealedCa {
  certPem: string;
  sealedKey: string;
}

export function tlsDir(dataDir: string): string {
  return join(dataDir, tlsDirName);
}

export function readClusterCa(dataDir: string): ClusterCa | undefined {
  const dir = tlsDir(dataDir);
  if (!existsSync(join(dir, "ca-key.pem")) || !existsSync(join(dir, "ca-cert.pem"))) return undefined;
  return { certPem: readFileSync(join(dir, "ca-cert.pem"), "utf8"), keyPem: readFileSync(join(dir, "ca-key.pem"), "utf8") };
}

/** Makes the cluster CA in DIR/tls (a bootstrap). */
export async function makeClusterCa(dataDir: string, clusterId: string): Promise<ClusterCa> {
  const dir = tlsDir(dataDir);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  await openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", join(dir, "ca-key.pem"), "-out", join(dir, "ca-cert.pem"), "-days", String(caDays), "-subj", `/CN=pxd cluster ${clusterId}`]);
  const ca = readClusterCa(dataDir);
  if (ca === undefined) throw new Error(`openssl made no CA in ${dir}`);
  return ca;
}

/** Keeps a CA received at join. */
export function keepClusterCa(dataDir: string, ca: ClusterCa): void {
  const dir = tlsDir(dataDir);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileSync(join(dir, "ca-key.pem"), ca.keyPem, { mode: 0o600 });
  writeFileSync(join(dir, "ca-cert.pem"), ca.certPem, { mode: 0o600 });
}

/** Names a node certificate carries at most besides the --listen address (--tls-name). */
export const nodeCertNamesMax = 16;
const certNamePattern = /^[A-Za-z0-9.:-]{1,253}$/;

/** The subjectAltName entries of a certificate for these addresses (IPs or host names); throws a sentence for one openssl would misread. */
export function subjectAltNames(addresses: string[]): string {
  return addresses
    .map((a) => {
      if (!certNamePattern.test(a) || (isIP(a) === 0 && a.includes(":"))) throw new Error(`"${a}" is not an IP address or a host name a certificate can carry`);
      return `${isIP(a) !== 0 ? "IP" : "DNS"}:${a}`;
    })
    .join(",");
}

/** The names a certificate for --listen ADDRESS carries: the address, or for a wildcard (every interface) the loopback and this host's name, which clients on the host dial. */
function listenNames(address: string): string[] {
  if (address !== "0.0.0.0" && address !== "::") return [address];
  return ["127.0.0.1", "localhost", ...(certNamePattern.test(hostname()) ? [hostname()] : [])];
}

/**
 * This node's key and certificate for `address` (an IP or a host name) and
 * any `moreNames` (a Service name its clients use, --tls-name), signed by the
 * cluster CA; made once, kept in DIR/tls, made again when the names change.
 */
export async function nodeCertificate(dataDir: string, address: string, name: string, moreNames: string[] = []): Promise<{ certPem: string; keyPem: string; caPem: string }> {
  const dir = tlsDir(dataDir);
  const ca = readClusterCa(dataDir);
  if (ca === undefined) throw new Error(`no cluster CA in ${dir}, so no certificate for the API's HTTPS and the peers' TLS; a node gets the CA when it bootstraps a cluster or joins one with this pxd. A cluster made without one (no openssl, or an older pxd) runs in clear: start every node with --api-plain-http --peer-plain`);
  const cert = join(dir, "node-cert.pem");
  const key = join(dir, "node-key.pem");
  const san = join(dir, "node-san.txt");
  if (moreNames.length > nodeCertNamesMax) throw new Error(`at most ${nodeCertNamesMax} --tls-name names, not ${moreNames.length}`);
  const names = [...new Set([...listenNames(address), ...moreNames])];
  const wanted = `subjectAltName=${subjectAltNames(names)}\nextendedKeyUsage=serverAuth,clientAuth\n`;
  // A certificate for another address (the node moved) is made again.
  if (!existsSync(cert) || !existsSync(san) || readFileSync(san, "utf8") !== wanted) {
    writeFileSync(san, wanted, { mode: 0o600 });
    const csr = join(dir, "node.csr");
    await openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", csr, "-subj", `/CN=${name}`]);
    await openssl(["x509", "-req", "-in", csr, "-CA", join(dir, "ca-cert.pem"), "-CAkey", join(dir, "ca-key.pem"), "-set_serial", `0x${randomBytes(8).toString("hex")}`, "-out", cert, "-days", String(nodeCertDays), "-extfile", san]);
  }
  return { certPem: readFileSync(cert, "utf8"), keyPem: readFileSync(key, "utf8"), caPem: ca.certPem };
}

function wrapKey(clusterSecret: Buffer): Buffer {
  return createHmac("sha256", clusterSecret).update("pxd-ca-key-wrap-v1").digest();
}

export function sealCa(ca: ClusterCa, clusterSecret: Buffer): SealedCa {
  const iv = randomBytes(12);
  const c = createCipheriv("aes-256-gcm", wrapKey(clusterSecret), iv);
  c.setAAD(Buffer.from(ca.certPem, "utf8")); // the certificate travels in clear, authenticated with the key
  const body = Buffer.concat([c.update(ca.keyPem, "utf8"), c.final()]);
  return { certPem: ca.certPem, sealedKey: Buffer.concat([iv, c.getAuthTag(), body]).toString("hex") };
}

/** Throws when the seal does not open with this secret (another cluster's answer, or altered). */
export function unsealCa(sealed: SealedCa, clusterSecret: Buffer): ClusterCa {
  const raw = Buffer.from(sealed.sealedKey, "hex");
  if (raw.length < 29) throw new Error("the join answer's sealed CA key is too short");
  const d = createDecipheriv("aes-256-gcm", wrapKey(clusterSecret), raw.subarray(0, 12));
  d.setAuthTag(raw.subarray(12, 28));
  d.setAAD(Buffer.from(sealed.certPem, "utf8"));
  try {
    return { certPem: sealed.certPem, keyPem: Buffer.concat([d.update(raw.subarray(28)), d.final()]).toString("utf8") };
  } catch {
    throw new Error("the join answer's CA key does not open with this node's cluster secret; is --join pointing at a node of this cluster?");
  }
}

async function openssl(args: string[]): Promise<void> {
  const r = await runCommand("openssl", args, opensslTimeoutMs);
  if (r.code === 127) throw new Error("the openssl command is not installed; pxd makes the cluster's certificates with it (apt-get install openssl)");
  if (r.code !== 0) throw new Error(`openssl ${args[0]} failed (${r.stderr.trim().split("\n").pop() ?? `exit ${r.code}`})`);
}
