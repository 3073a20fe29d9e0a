// How a backup names and stores its chunks (docs/formats/backup.md): a plain
// backup names a chunk by the SHA-256 of its bytes and stores it compressed;
// an encrypted one (of an encrypted volume) names it by a keyed hash and
// stores it compressed, then sealed with AES-256-GCM, so the target learns
// neither the bytes nor a hash of them that could be checked against a guess.
//
// The encrypted codec's keys come from one random 32-byte chain key per
// volume in a target, wrapped by the cluster key in every manifest of that
// volume (so any cluster that holds the same cluster key restores it). From
// it, by HMAC-SHA256 with fixed labels: a naming key, a sealing key and a
// nonce key. The nonce is HMAC(nonce key, the compressed chunk) cut to 96
// bits, so equal chunks seal to equal objects and still dedupe, while two
// different chunks never share a nonce (a synthetic IV: only equal messages
// repeat one, and for them it reveals only that they are equal, which the
// name reveals already).

import { createCipheriv, createDecipheriv, createHash, createHmac, randomBytes } from "node:crypto";
import type { KeySource } from "../os/cluster-key.js";

/** Bytes a sealed chunk adds to the compressed one: the nonce and the tag. */
export const sealedOverheadBytes = 12 + 16;
const chainKeyBytes = 32;

export interface ChunkCodec {
  /** The chunk's name in the manifest and the target: 64 hex digits. */
  name(data: Buffer): string;
  /** The object stored for a chunk, from its compressed bytes. */
  seal(packed: Buffer): Buffer;
  /** The compressed bytes from a stored object; throws a sentence when it does not open. */
  open(stored: Buffer): Buffer;
}

export function sha256Hex(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

export const plainCodec: ChunkCodec = {
  name: sha256Hex,
  seal: (packed) => packed,
  open: (stored) => stored,
};

/** What a manifest of an encrypted backup records: its chain key, wrapped. */
export interface BackupEncryption {
  cipher: "aes-256-gcm";
  chunkNames: "hmac-sha256";
  /** The chain key wrapped by the cluster key (src/os/cluster-key.ts), hex. */
  wrappedKey: string;
}

/** What a wrapped chain key is bound to: the volume whose backups it encrypts (not the cluster, so another cluster with the key restores it). */
export function chainKeyAad(volume: string): string {
  return `pxd backup chain key v1; volume ${volume}`;
}

/** A new chain for a volume: a random key, and the record that carries it wrapped. */
export function newChain(keys: KeySource, volume: string): { key: Buffer; encryption: BackupEncryption } {
  const key = randomBytes(chainKeyBytes);
  return { key, encryption: { cipher: "aes-256-gcm", chunkNames: "hmac-sha256", wrappedKey: keys.wrap(key, chainKeyAad(volume)) } };
}

/** The chain key of a manifest's record; throws the key source's sentence when it does not open. */
export function openChain(keys: KeySource, volume: string, e: BackupEncryption): Buffer {
  return keys.unwrap(e.wrappedKey, chainKeyAad(volume));
}

export function encryptedCodec(chainKey: Buffer): ChunkCodec {
  const sub = (label: string): Buffer => createHmac("sha256", chainKey).update(`pxd backup ${label}`).digest();
  const nameKey = sub("chunk name");
  const sealKey = sub("chunk seal");
  const nonceKey = sub("chunk nonce");
  return {
    name: (data) => createHmac("sha256", nameKey).update(data).digest("hex"),
    seal: (packed) => {
      const nonce = createHmac("sha256", nonceKey).update(packed).digest().subarray(0, 12);
      const c = createCipheriv("aes-256-gcm", sealKey, nonce);
      const body = Buffer.concat([c.update(packed), c.final()]);
      return Buffer.concat([nonce, body, c.getAuthTag()]);
    },
    open: (stored) => {
      if (stored.length < sealedOverheadBytes) throw new Error(`is ${stored.length} bytes, too short to be a sealed chunk`);
      const d = createDecipheriv("aes-256-gcm", sealKey, stored.subarray(0, 12));
      d.setAuthTag(stored.subarray(stored.length - 16));
      try {
        return Buffer.concat([d.update(stored.subarray(12, stored.length - 16)), d.final()]);
      } catch {
        throw new Error("does not open with this backup chain's key: it was changed, or another chain's chunk has its name");
      }
    },
  };
}
