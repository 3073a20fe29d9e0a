// A backup's manifest (docs/formats/backup.md): which chunk of the volume is
// which content hash, or zeros. Written last, so a backup without one was
// never finished and is not listed. A manifest read from a target is
// untrusted: parseManifest checks every field, and that the manifest is the
// one its key names, before anything uses it.

import { volumeNameProblem } from "../api/validate.js";
import type { BackupEncryption } from "./chunk-codec.js";
import { backupChunkBytes, backupChunkBytesMax, backupChunkBytesMin, backupManifestBytesMax, backupManifestEntryBytes, sectorBytes, volumeBytesMax } from "../constants.js";

export const manifestFormat = "pxd-backup";
/** A plain backup's manifest is version 1 (older pxd reads it); an encrypted one's is 2, which an older pxd refuses instead of restoring ciphertext. */
export const manifestVersion = 1;
export const encryptedManifestVersion = 2;

export interface Manifest {
  format: typeof manifestFormat;
  version: typeof manifestVersion | typeof encryptedManifestVersion;
  /** YYYYMMDDTHHMMSSmmmZ-xxxxxx (UTC, to the millisecond): sorts by time, also for two backups in one second. */
  id: string;
  volume: string;
  sizeBytes: number;
  /** ISO 8601, UTC. */
  createdAt: string;
  chunkBytes: number;
  compression: "brotli";
  hash: "sha256";
  /** One per chunk of the volume, in order: its name (plain: the SHA-256 of its bytes; encrypted: a keyed hash, chunk-codec.ts) in hex, or null when it reads as zeros. */
  chunks: Array<string | null>;
  pxdVersion: string;
  /** What was read: the export name, and the snapshot when there was one. */
  source: { export: string; snapshot: string | null };
  /** Version 2 only: the backup is encrypted, its chain key wrapped by the cluster key (chunk-codec.ts). */
  encryption?: BackupEncryption;
}

const idPattern = /^\d{8}T\d{9}Z-[0-9a-f]{6}$/;
const hashPattern = /^[0-9a-f]{64}$/;
const isoPattern = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$/;
const shortText = /^[\x20-\x7e]{0,256}$/;

export function newBackupId(now: Date, random: string): string {
  const stamp = now.toISOString().replace(/[-:.]/g, "");
  const id = `${stamp}-${random}`;
  if (!idPattern.test(id)) throw new Error(`bad backup id ${id}`);
  return id;
}

export function manifestKey(volume: string, id: string): string {
  return `backups/${volume}/${id}.json`;
}

export function chunkKey(hash: string): string {
  return `chunks/${hash.slice(0, 2)}/${hash}`;
}

/** "VOLUME/ID" from a manifest key, or undefined for a key that is not one. */
export function refOfKey(key: string): { volume: string; id: string } | undefined {
  const m = /^backups\/([^/]+)\/([^/]+)\.json$/.exec(key);
  if (m === null || volumeNameProblem(m[1]!) !== null || !idPattern.test(m[2]!)) return undefined;
  return { volume: m[1]!, id: m[2]! };
}

/** Parses "VOLUME/ID", "VOLUME/latest" or "ID"; undefined fields are to be found by listing. */
export function parseRef(text: string): { volume: string | undefined; id: string | "latest" } | string {
  const slash = text.indexOf("/");
  const volume = slash < 0 ? undefined : text.slice(0, slash);
  const id = slash < 0 ? text : text.slice(slash + 1);
  if (volume !== undefined && volumeNameProblem(volume) !== null) return `${JSON.stringify(text)}: ${volumeNameProblem(volume)}`;
  if (id === "latest" && volume !== undefined) return { volume, id };
  if (!idPattern.test(id)) return `${JSON.stringify(text)} is not a backup; name one as VOLUME/ID (pxd backup list shows them), VOLUME/latest, or ID`;
  return { volume, id };
}

export function chunkCount(sizeBytes: number, chunkBytes: number): number {
  return Math.ceil(sizeBytes / chunkBytes);
}

/**
 * The chunk size for a volume: backupChunkBytes, doubled while the manifest
 * would not fit backupManifestBytesMax (above about 16 TiB), so that every
 * backup made can be read back.
 */
export function chunkBytesFor(sizeBytes: number): number {
  let chunkBytes = backupChunkBytes;
  while (chunkCount(sizeBytes, chunkBytes) * backupManifestEntryBytes + 64 * 1024 > backupManifestBytesMax && chunkBytes < backupChunkBytesMax) chunkBytes *= 2;
  return chunkBytes;
}

/** Bytes of chunk `index`: chunkBytes, or less for the last one. */
export function chunkLength(m: Pick<Manifest, "sizeBytes" | "chunkBytes">, index: number): number {
  return Math.min(m.chunkBytes, m.sizeBytes - index * m.chunkBytes);
}

export function encodeManifest(m: Manifest): Buffer {
  return Buffer.from(JSON.stringify(m, null, 1) + "\n", "utf8");
}

/** The manifest in `data`, read from `key`; throws a sentence naming the first thing wrong. */
export function parseManifest(data: Buffer, key: string): Manifest {
  const bad = (why: string): Error => new Error(`manifest ${key} is not a valid pxd backup manifest: ${why}`);
  let v: unknown;
  try {
    v = JSON.parse(data.toString("utf8"));
  } catch (e) {
    throw bad(`not JSON (${(e as Error).message})`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw bad("not an object");
  const o = v as Record<string, unknown>;
  if (o["format"] !== manifestFormat) throw bad(`format is ${JSON.stringify(o["format"])}, not "${manifestFormat}"`);
  const version = o["version"];
  if (version !== manifestVersion && version !== encryptedManifestVersion) throw bad(`version ${JSON.stringify(version)}; this pxd reads versions ${manifestVersion} and ${encryptedManifestVersion} (a newer pxd wrote it?)`);
  const encryption = version === encryptedManifestVersion ? encryptionOf(o["encryption"], bad) : undefined;
  if (version === manifestVersion && o["encryption"] !== undefined) throw bad(`a version ${manifestVersion} manifest has no encryption`);
  const { id, volume, sizeBytes, createdAt, chunkBytes, compression, hash, chunks, pxdVersion, source } = o;
  if (typeof id !== "string" || !idPattern.test(id)) throw bad("bad id");
  if (typeof volume !== "string" || volumeNameProblem(volume) !== null) throw bad("bad volume name");
  if (key !== manifestKey(volume, id)) throw bad(`it names backup ${volume}/${id}, not the one its key names`);
  if (typeof sizeBytes !== "number" || !Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes > volumeBytesMax || sizeBytes % sectorBytes !== 0) throw bad(`size ${String(sizeBytes)} is not a volume size`);
  if (typeof createdAt !== "string" || !isoPattern.test(createdAt)) throw bad("bad createdAt");
  if (typeof chunkBytes !== "number" || !Number.isSafeInteger(chunkBytes) || chunkBytes < backupChunkBytesMin || chunkBytes > backupChunkBytesMax || chunkBytes % sectorBytes !== 0) throw bad(`chunk size ${String(chunkBytes)} is outside [${backupChunkBytesMin}, ${backupChunkBytesMax}] or not whole sectors`);
  if (compression !== "brotli") throw bad(`compression ${JSON.stringify(compression)} is not "brotli"`);
  if (hash !== "sha256") throw bad(`hash ${JSON.stringify(hash)} is not "sha256"`);
  if (!Array.isArray(chunks) || chunks.length !== chunkCount(sizeBytes, chunkBytes)) throw bad(`it lists ${Array.isArray(chunks) ? chunks.length : "no"} chunks; ${chunkCount(sizeBytes, chunkBytes)} cover ${sizeBytes} bytes`);
  for (let i = 0; i < chunks.length; i++) {
    const c: unknown = chunks[i];
    if (c !== null && (typeof c !== "string" || !hashPattern.test(c))) throw bad(`chunk ${i} is neither a 256-bit hash in hex nor null`);
  }
  if (typeof pxdVersion !== "string" || !shortText.test(pxdVersion)) throw bad("bad pxdVersion");
  if (typeof source !== "object" || source === null) throw bad("no source");
  const s = source as Record<string, unknown>;
  if (typeof s["export"] !== "string" || !shortText.test(s["export"]) || (s["snapshot"] !== null && (typeof s["snapshot"] !== "string" || !shortText.test(s["snapshot"])))) throw bad("bad source");
  return { format: manifestFormat, version, ...(encryption !== undefined ? { encryption } : {}), id, volume, sizeBytes, createdAt, chunkBytes, compression, hash, chunks: chunks as Array<string | null>, pxdVersion, source: { export: s["export"], snapshot: s["snapshot"] as string | null } };
}

const wrappedKeyPattern = /^[0-9a-f]{2,512}$/;

function encryptionOf(v: unknown, bad: (why: string) => Error): BackupEncryption {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw bad("a version 2 manifest names its encryption");
  const e = v as Record<string, unknown>;
  if (Object.keys(e).length !== 3 || e["cipher"] !== "aes-256-gcm" || e["chunkNames"] !== "hmac-sha256") throw bad(`its encryption is not {"cipher":"aes-256-gcm","chunkNames":"hmac-sha256","wrappedKey":...}`);
  const wrappedKey = e["wrappedKey"];
  if (typeof wrappedKey !== "string" || !wrappedKeyPattern.test(wrappedKey)) throw bad("its wrapped key is not hex");
  return { cipher: "aes-256-gcm", chunkNames: "hmac-sha256", wrappedKey };
}
