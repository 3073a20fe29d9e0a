// The cluster key: the key that wraps every encrypted volume's data key and
// every encrypted backup chain's key (docs/architecture.md, "Encryption at
// rest"). It never leaves the process that read it and is never written by
// pxd. Where it comes from is a KeySource, so a KMS can take the place of
// the file or the environment: wrap and unwrap are all the rest of pxd asks.
//
// A wrapped key is AES-256-GCM under the cluster key: version byte (1), a
// random 12-byte nonce, the ciphertext, the 16-byte tag, as lower-case hex.
// The additional data names what the key is for (the cluster and volume),
// so a wrapped key copied to another volume's record does not unwrap.

import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { readSmallFileBytes } from "./credentials.js";

/** Wraps and unwraps keys under the cluster key (a file, the environment, later a KMS). */
export interface KeySource {
  /** What the key is, for messages (never the key): "the cluster key file /etc/pxd/key". */
  readonly description: string;
  wrap(key: Uint8Array, aad: string): string;
  /** The key; throws a KeyUnwrapError when the wrapped key was not made by this cluster key for `aad`, or was changed. */
  unwrap(wrapped: string, aad: string): Buffer;
}

export class KeyUnwrapError extends Error {}

export const clusterKeyBytes = 32;
const wrapVersion = 1;
const nonceBytes = 12;
const tagBytes = 16;
/** The longest key a wrapped key holds (a 512-bit XTS key); bounds what unwrap reads. */
const wrappedKeyBytesMax = 64;
/** Hex characters of a wrapped key of `keyBytes`. */
export function wrappedKeyChars(keyBytes: number): number {
  return 2 * (1 + nonceBytes + keyBytes + tagBytes);
}
/** The environment variable that holds the cluster key (64 hex digits). */
export const clusterKeyEnv = "PXD_CLUSTER_KEY";
/** A key file holds 32 raw bytes or 64 hex digits; anything larger is the wrong file. */
const keyFileBytesMax = 4096;

/**
 * The cluster key from `--cluster-key-file` or else PXD_CLUSTER_KEY; undefined
 * when neither is set. Throws a sentence for a key that is not 32 bytes.
 */
export function clusterKeySource(keyFile: string | undefined, env: NodeJS.ProcessEnv = process.env): KeySource | undefined {
  if (keyFile !== undefined) {
    const bytes = readSmallFileBytes(keyFile, "the cluster key", keyFileBytesMax);
    if (bytes === undefined) throw new Error(`--cluster-key-file ${keyFile} does not exist; give the file that holds the cluster key (32 bytes, raw or as 64 hex digits)`);
    return new StaticKeySource(keyOf(bytes, `--cluster-key-file ${keyFile}`), `the cluster key file ${keyFile}`);
  }
  const text = env[clusterKeyEnv];
  if (text === undefined || text === "") return undefined;
  return new StaticKeySource(keyOf(Buffer.from(text, "utf8"), clusterKeyEnv), clusterKeyEnv);
}

/** 32 raw bytes, or 64 hex digits (spaces and a newline around them allowed). */
function keyOf(bytes: Buffer, where: string): Buffer {
  if (bytes.length === clusterKeyBytes) return Buffer.from(bytes);
  const text = bytes.toString("latin1").trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, "hex");
  throw new Error(`${where} does not hold a cluster key: it must be ${clusterKeyBytes} bytes, raw or as 64 hex digits (make one with: head -c 32 /dev/urandom | xxd -p -c 64)`);
}

/** A cluster key held in memory (from a file or the environment). */
export class StaticKeySource implements KeySource {
  constructor(
    private readonly key: Buffer,
    readonly description: string,
  ) {
    if (key.length !== clusterKeyBytes) throw new Error(`a cluster key is ${clusterKeyBytes} bytes, not ${key.length}`);
  }

  wrap(key: Uint8Array, aad: string): string {
    if (key.length === 0 || key.length > wrappedKeyBytesMax) throw new Error(`a wrapped key is 1 to ${wrappedKeyBytesMax} bytes, not ${key.length}`);
    const nonce = randomBytes(nonceBytes);
    const c = createCipheriv("aes-256-gcm", this.key, nonce);
    c.setAAD(Buffer.from(aad, "utf8"));
    const body = Buffer.concat([c.update(key), c.final()]);
    return Buffer.concat([Buffer.from([wrapVersion]), nonce, body, c.getAuthTag()]).toString("hex");
  }

  unwrap(wrapped: string, aad: string): Buffer {
    const chars = wrapped.length;
    if (chars > wrappedKeyChars(wrappedKeyBytesMax) || chars <= wrappedKeyChars(0) || !/^[0-9a-f]*$/.test(wrapped) || chars % 2 !== 0) throw new KeyUnwrapError("the wrapped key is not hex of the right length");
    const b = Buffer.from(wrapped, "hex");
    if (b[0] !== wrapVersion) throw new KeyUnwrapError(`the wrapped key has version ${b[0]}, not ${wrapVersion}`);
    const d = createDecipheriv("aes-256-gcm", this.key, b.subarray(1, 1 + nonceBytes));
    d.setAAD(Buffer.from(aad, "utf8"));
    d.setAuthTag(b.subarray(b.length - tagBytes));
    try {
      return Buffer.concat([d.update(b.subarray(1 + nonceBytes, b.length - tagBytes)), d.final()]);
    } catch {
      throw new KeyUnwrapError(`the wrapped key does not open with ${this.description}: another cluster key made it, or it was changed`);
    }
  }
}

/** A new random key of `bytes` bytes. An XTS key's two halves differ (OpenSSL refuses equal halves). */
export function newDataKey(bytes: number): Buffer {
  for (;;) {
    const k = randomBytes(bytes);
    if (bytes % 2 !== 0 || !k.subarray(0, bytes / 2).equals(k.subarray(bytes / 2))) return k;
  }
}
