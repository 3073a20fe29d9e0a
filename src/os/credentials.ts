// Small secret files: the cluster secret and API tokens (docs/security.md).
// Written 0600 and only when absent (never over another cluster's secret);
// read with their size bounded first, so a wrong path (a disk image, a log)
// is refused instead of read whole.

import { closeSync, fstatSync, openSync, readSync, writeFileSync } from "node:fs";
import { privateFileMode } from "./private-files.js";

/** Where a node keeps the cluster secret in its data dir (0600): made by a bootstrap, written by a join once it succeeded. */
export const clusterSecretFile = "cluster.secret";
/** Where a bootstrapping node writes the first admin token (0600); pxd up writes its own beside its node dirs. */
export const adminTokenFile = "admin.token";
/** The cluster key `pxd up` makes for its local cluster (encrypted volumes), 0600 beside its admin token. */
export const localClusterKeyFile = "cluster.key";

/** Where `pxd up` copies its cluster's CA certificate, beside the admin token (a node's own is DIR/tls/ca-cert.pem). */
export const localCaFile = "ca-cert.pem";
/** A CA certificate file read by a client (a PEM certificate or a short chain). */
export const caFileBytesMax = 64 * 1024;

/** The longest credential file read: a token (at most 1024 characters) or a secret, with room for a newline and spaces. */
export const credentialFileBytesMax = 4096;

/** The file's text, trimmed; undefined when it does not exist. Throws a sentence for one that is too large or unreadable. */
export function readCredentialFile(path: string, what: string): string | undefined {
  return readSmallFile(path, what, credentialFileBytesMax)?.trim();
}

/** A file of at most bytesMax bytes (its size is checked before it is read); undefined when it does not exist. */
export function readSmallFile(path: string, what: string, bytesMax: number): string | undefined {
  return readSmallFileBytes(path, what, bytesMax)?.toString("utf8");
}

/** readSmallFile's bytes, for a file that may hold binary (a raw key). */
export function readSmallFileBytes(path: string, what: string, bytesMax: number): Buffer | undefined {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return undefined;
    throw new Error(`cannot read ${what} from ${path} (${code ?? (e as Error).message}); check the path and that this user may read it`);
  }
  try {
    const size = fstatSync(fd).size;
    if (size > bytesMax) throw new Error(`${path} is ${size} bytes, too large for ${what} (at most ${bytesMax}); check the path`);
    const buf = Buffer.alloc(size);
    const got = readSync(fd, buf, 0, size, 0);
    return buf.subarray(0, got);
  } finally {
    closeSync(fd);
  }
}

/** Creates the file 0600 with the text and a newline; false when it exists already (it is left as it is). */
export function writeCredentialFile(path: string, text: string): boolean {
  try {
    writeFileSync(path, text + "\n", { mode: privateFileMode, flag: "wx" });
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw e;
  }
}
