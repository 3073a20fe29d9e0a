// Backup and restore of one volume (docs/formats/backup.md), run in the CLI
// process like nbdcopy: a backup reads the volume over NBD in fixed-size
// chunks, skips what reads as zeros (base:allocation when the server has it,
// else by looking at the bytes), names every other chunk by its SHA-256,
// uploads (brotli-compressed) only the chunks the target does not hold, and writes the
// manifest last. A restore fetches each chunk, checks its length and hash
// before a byte of it is written, and writes it to a fresh volume; a chunk
// that is missing or wrong fails the restore, naming it.
//
// Work is bounded: `chunksInFlight` chunks (backupChunksInFlight by
// default) are read, compressed, uploaded, fetched or written at once.

import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { promisify } from "node:util";
import { brotliCompress, brotliDecompress, constants as zlibConstants } from "node:zlib";
import { assert } from "../base/assert.js";
import { backupBytesInFlightMax, backupChunkBytes, backupChunksInFlight, backupManifestBytesMax, backupManifestsMax, backupStoredChunkBytesMax } from "../constants.js";
import { NbdProtocolError, type NbdClient } from "../nbd/client.js";
import type { KeySource } from "../os/cluster-key.js";
import { encryptedCodec, newChain, openChain, plainCodec, sealedOverheadBytes, type BackupEncryption, type ChunkCodec } from "./chunk-codec.js";
import { chunkBytesFor, chunkCount, chunkKey, chunkLength, encodeManifest, encryptedManifestVersion, manifestKey, manifestVersion, newBackupId, parseManifest, parseRef, refOfKey, type Manifest } from "./manifest.js";
import { ObjectTooLargeError, type BackupTarget } from "./target.js";

const compress = promisify(brotliCompress);
const decompress = promisify(brotliDecompress);

/**
 * Brotli at quality 1, in libuv's thread pool beside the event loop. Node's
 * zlib deflate at level 1 managed 15 MiB/s on random 4 MiB chunks here and
 * would have been the backup's bottleneck; brotli 1 did 194 MiB/s on the same
 * data and 203 MiB/s on text (compressed to 1.4%), deflate 380 (docs/formats/backup.md).
 */
const brotliQuality = 1;

export type Progress = (doneBytes: number, totalBytes: number) => void;

/** Runs `work(i)` for i in [0, count), at most `inFlight` at once, in index order of starting; the first failure stops new work and is thrown. */
export async function eachBounded(count: number, inFlight: number, work: (i: number) => Promise<void>): Promise<void> {
  assert(inFlight >= 1, "at least one in flight");
  let next = 0;
  let failed: unknown;
  const worker = async (): Promise<void> => {
    while (failed === undefined && next < count) {
      const i = next++;
      try {
        await work(i);
      } catch (e) {
        failed ??= e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(inFlight, count) }, worker));
  if (failed !== undefined) throw failed;
}

/** Chunks in flight: as asked, else backupChunksInFlight, cut so that larger chunks stay within backupBytesInFlightMax. */
function inFlight(chunkBytes: number, asked: number | undefined): number {
  return asked ?? Math.max(1, Math.min(backupChunksInFlight, Math.floor(backupBytesInFlightMax / 2 / chunkBytes)));
}

export { sha256Hex } from "./chunk-codec.js";

/**
 * How a backup's chunks are named and stored: plain, or, for a manifest
 * that says it is encrypted, with its chain key unwrapped by `keys` (the
 * cluster key). Without the key, or with another, a sentence saying what to give.
 */
export function codecOf(m: Manifest, keys: KeySource | undefined): ChunkCodec {
  if (m.encryption === undefined) return plainCodec;
  const what = `backup ${m.volume}/${m.id} is encrypted`;
  if (keys === undefined) throw new Error(`${what}: set PXD_CLUSTER_KEY or give --cluster-key-file FILE with the cluster key of the cluster that made it`);
  try {
    return encryptedCodec(openChain(keys, m.volume, m.encryption));
  } catch (e) {
    throw new Error(`${what} and its key does not open: ${(e as Error).message}; give the cluster key of the cluster that made it`);
  }
}

/**
 * The chain an encrypted backup of `volume` joins: the key of the newest
 * encrypted backup of the volume in the target that opens with `keys`, so
 * its unchanged chunks have the same names and are not uploaded again; else
 * a new chain.
 */
export async function chainFor(target: BackupTarget, volume: string, keys: KeySource): Promise<{ codec: ChunkCodec; encryption: BackupEncryption }> {
  const keysNewestFirst = (await manifestKeys(target, volume)).reverse();
  for (const k of keysNewestFirst) {
    const m = await readManifest(target, k.volume, k.id).catch(() => undefined);
    if (m?.encryption === undefined) continue;
    try {
      return { codec: encryptedCodec(openChain(keys, volume, m.encryption)), encryption: m.encryption };
    } catch {
      break; // made under another cluster key: a new chain
    }
  }
  const chain = newChain(keys, volume);
  return { codec: encryptedCodec(chain.key), encryption: chain.encryption };
}

const zeros = Buffer.alloc(backupChunkBytes);

function isZero(data: Buffer): boolean {
  for (let at = 0; at < data.length; at += zeros.length) {
    const n = Math.min(zeros.length, data.length - at);
    if (!data.subarray(at, at + n).equals(zeros.subarray(0, n))) return false;
  }
  return true;
}

/** True when base:allocation says the whole range reads as zeros. */
async function readsAsZeros(client: NbdClient, offsetBytes: number, lengthBytes: number): Promise<boolean> {
  const end = offsetBytes + lengthBytes;
  let at = offsetBytes;
  while (at < end) {
    const extents = await client.blockStatus(at, end - at);
    for (const e of extents) {
      if (!e.zero) return false;
      at = e.offsetBytes + e.lengthBytes;
    }
  }
  return true;
}

/**
 * Runs `work` over a connection `connect` makes (attempt 1, 2, ...), and
 * again over a new one each time the connection itself fails
 * (NbdProtocolError: the node died, the connection was cut), at most
 * `attempts` in all and while `again` agrees. Any node serves any volume, so
 * the next connection may go to another node. The work starts over: a backup
 * finds the chunks it uploaded in the target and does not send them again, a
 * restore writes the same bytes again.
 */
export async function overConnections<T>(attempts: number, connect: (attempt: number) => Promise<NbdClient>, work: (client: NbdClient) => Promise<T>, again: (why: Error, attempt: number) => boolean): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    const client = await connect(attempt);
    try {
      return await work(client);
    } catch (e) {
      if (!(e instanceof NbdProtocolError) || attempt >= attempts || !again(e, attempt)) throw e;
    } finally {
      client.close();
    }
  }
}

// ---- create ----

export interface CreateOptions {
  client: NbdClient;
  target: BackupTarget;
  volume: string;
  exportName: string;
  snapshot: string | undefined;
  pxdVersion: string;
  chunkBytes?: number;
  chunksInFlight?: number;
  progress?: Progress;
  now?: Date;
  /** An encrypted backup (of an encrypted volume): its chain (chainFor); absent: plain. */
  chain?: { codec: ChunkCodec; encryption: BackupEncryption };
}

export interface CreateSummary {
  backup: string;
  volume: string;
  sizeBytes: number;
  chunks: number;
  zeroChunks: number;
  /** Chunks this backup uploaded. */
  uploadedChunks: number;
  /** Chunks the target held already (from an earlier backup, or twice in this volume). */
  reusedChunks: number;
  /** Bytes read from the volume (zero chunks found by block status are not read). */
  readBytes: number;
  /** Compressed bytes uploaded, manifest excluded. */
  uploadedBytes: number;
  manifestBytes: number;
  seconds: number;
}

export async function createBackup(o: CreateOptions): Promise<CreateSummary> {
  const sizeBytes = o.client.export.sizeBytes;
  if (sizeBytes === 0) throw new Error(`export ${o.exportName} is empty; nothing to back up`);
  const now = o.now ?? new Date();
  const id = newBackupId(now, randomBytes(3).toString("hex"));
  const lock = await takeLock(o.target, "backup", id, "delete");
  try {
    return await backupUnderLock(o, id, now, sizeBytes);
  } finally {
    await lock.release();
  }
}

async function backupUnderLock(o: CreateOptions, id: string, now: Date, sizeBytes: number): Promise<CreateSummary> {
  const started = process.hrtime.bigint();
  const chunkBytes = o.chunkBytes ?? chunkBytesFor(sizeBytes);
  const codec = o.chain?.codec ?? plainCodec;
  const m: Manifest = {
    format: "pxd-backup",
    version: o.chain === undefined ? manifestVersion : encryptedManifestVersion,
    ...(o.chain !== undefined ? { encryption: o.chain.encryption } : {}),
    id,
    volume: o.volume,
    sizeBytes,
    createdAt: now.toISOString(),
    chunkBytes,
    compression: "brotli",
    hash: "sha256",
    chunks: new Array<string | null>(chunkCount(sizeBytes, chunkBytes)).fill(null),
    pxdVersion: o.pxdVersion,
    source: { export: o.exportName, snapshot: o.snapshot ?? null },
  };
  const s: CreateSummary = { backup: `${m.volume}/${m.id}`, volume: m.volume, sizeBytes, chunks: m.chunks.length, zeroChunks: 0, uploadedChunks: 0, reusedChunks: 0, readBytes: 0, uploadedBytes: 0, manifestBytes: 0, seconds: 0 };
  /** Hashes this run has stored or found, so a chunk repeated in the volume is looked up once. */
  const known = new Map<string, Promise<void>>();
  let doneBytes = 0;
  await eachBounded(m.chunks.length, inFlight(chunkBytes, o.chunksInFlight), async (i) => {
    const offsetBytes = i * chunkBytes;
    const lengthBytes = chunkLength(m, i);
    const hash = await readChunk(o.client, offsetBytes, lengthBytes, s, codec);
    if (hash === null) s.zeroChunks++;
    else {
      m.chunks[i] = hash.hash;
      let stored = known.get(hash.hash);
      if (stored === undefined) {
        stored = storeChunk(o.target, hash.hash, hash.data, s, codec);
        known.set(hash.hash, stored);
      } else s.reusedChunks++;
      await stored;
    }
    doneBytes += lengthBytes;
    o.progress?.(doneBytes, sizeBytes);
  });
  const manifest = encodeManifest(m);
  parseManifest(manifest, manifestKey(m.volume, m.id)); // what is written is what a restore will accept
  await o.target.put(manifestKey(m.volume, m.id), manifest);
  s.manifestBytes = manifest.length;
  s.seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return s;
}

async function readChunk(client: NbdClient, offsetBytes: number, lengthBytes: number, s: CreateSummary, codec: ChunkCodec): Promise<{ hash: string; data: Buffer } | null> {
  if (client.export.blockStatus && (await readsAsZeros(client, offsetBytes, lengthBytes))) return null;
  const data = await client.read(offsetBytes, lengthBytes);
  s.readBytes += lengthBytes;
  if (isZero(data)) return null;
  return { hash: codec.name(data), data };
}

async function storeChunk(target: BackupTarget, hash: string, data: Buffer, s: CreateSummary, codec: ChunkCodec): Promise<void> {
  const key = chunkKey(hash);
  if (await target.exists(key)) {
    s.reusedChunks++;
    return;
  }
  const packed = await compress(data, { params: { [zlibConstants.BROTLI_PARAM_QUALITY]: brotliQuality, [zlibConstants.BROTLI_PARAM_SIZE_HINT]: data.length } });
  const stored = codec.seal(packed);
  await target.put(key, stored);
  s.uploadedChunks++;
  s.uploadedBytes += stored.length;
}

// ---- reading what a target holds ----

export async function readManifest(target: BackupTarget, volume: string, id: string): Promise<Manifest> {
  const key = manifestKey(volume, id);
  const data = await target.get(key, backupManifestBytesMax);
  if (data === undefined) throw new Error(`backup ${volume}/${id} is not in ${target.url}; "pxd backup list ${target.url}" shows what is`);
  return parseManifest(data, key);
}

/** The manifest keys under backups/ (of one volume, or all). */
async function manifestKeys(target: BackupTarget, volume?: string): Promise<Array<{ key: string; volume: string; id: string }>> {
  const keys = await target.list(volume === undefined ? "backups/" : `backups/${volume}/`, backupManifestsMax);
  return keys.flatMap((key) => {
    const ref = refOfKey(key);
    return ref === undefined ? [] : [{ key, ...ref }];
  });
}

/** Finds the backup a user named: VOLUME/ID, VOLUME/latest, or an ID alone (searched in every volume). */
export async function findBackup(target: BackupTarget, text: string): Promise<Manifest> {
  const ref = parseRef(text);
  if (typeof ref === "string") throw new Error(ref);
  if (ref.volume !== undefined && ref.id !== "latest") return readManifest(target, ref.volume, ref.id);
  const keys = await manifestKeys(target, ref.volume);
  const match = ref.id === "latest" ? keys.at(-1) : keys.find((k) => k.id === ref.id);
  if (match === undefined) throw new Error(`no backup ${text} in ${target.url}; "pxd backup list ${target.url}" shows what is there`);
  return readManifest(target, match.volume, match.id);
}

export interface Listed {
  manifests: Manifest[];
  /** Manifests that could not be read or are not valid: key and why. */
  broken: Array<{ key: string; error: string }>;
}

export async function listBackups(target: BackupTarget, volume?: string): Promise<Listed> {
  const out: Listed = { manifests: [], broken: [] };
  for (const k of await manifestKeys(target, volume)) {
    try {
      out.manifests.push(await readManifest(target, k.volume, k.id));
    } catch (e) {
      out.broken.push({ key: k.key, error: (e as Error).message });
    }
  }
  return out;
}

/** A chunk that is not what its manifest says: missing, unreadable, the wrong size, or the wrong hash. */
export class BadChunkError extends Error {
  override name = "BadChunkError";
  constructor(
    readonly hash: string,
    readonly index: number,
    why: string,
  ) {
    super(`chunk ${index} (${chunkKey(hash)}) ${why}`);
  }
}

/** Fetches chunk `index` and checks it; only bytes whose name (plain: SHA-256) is the manifest's come back. */
export async function fetchChunk(target: BackupTarget, m: Manifest, index: number, codec: ChunkCodec): Promise<Buffer> {
  const hash = m.chunks[index];
  assert(typeof hash === "string", "only a data chunk is fetched");
  const lengthBytes = chunkLength(m, index);
  // What brotli can make of lengthBytes at worst, with room to spare (backupStoredChunkBytesMax for the largest chunk).
  const storedBytesMax = Math.min(backupStoredChunkBytesMax, lengthBytes + Math.ceil(lengthBytes / 1024) + 1024) + (codec === plainCodec ? 0 : sealedOverheadBytes);
  // An object too large is a bad chunk; a target that cannot be reached is not (the error goes up as it is).
  const packed = await target.get(chunkKey(hash), storedBytesMax).catch((e: Error) => {
    throw e instanceof ObjectTooLargeError ? new BadChunkError(hash, index, `is too large: ${e.message}`) : e;
  });
  if (packed === undefined) throw new BadChunkError(hash, index, "is missing");
  let data: Buffer;
  let opened: Buffer;
  try {
    opened = codec.open(packed);
  } catch (e) {
    throw new BadChunkError(hash, index, (e as Error).message);
  }
  try {
    data = await decompress(opened, { maxOutputLength: lengthBytes });
  } catch (e) {
    throw new BadChunkError(hash, index, `does not decompress to ${lengthBytes} bytes (${(e as Error).message})`);
  }
  if (data.length !== lengthBytes) throw new BadChunkError(hash, index, `holds ${data.length} bytes, not ${lengthBytes}`);
  const got = codec.name(data);
  if (got !== hash) throw new BadChunkError(hash, index, `is corrupt: its ${codec === plainCodec ? "SHA-256" : "keyed hash"} is ${got}`);
  return data;
}

// ---- restore and verify ----

export interface RestoreOptions {
  client: NbdClient;
  target: BackupTarget;
  manifest: Manifest;
  /** How its chunks are stored (codecOf). */
  codec: ChunkCodec;
  /** The export reads as zeros everywhere (a volume just created): zero chunks are not written. */
  fresh: boolean;
  chunksInFlight?: number;
  progress?: Progress;
}

export interface RestoreSummary {
  backup: string;
  sizeBytes: number;
  chunks: number;
  zeroChunks: number;
  writtenBytes: number;
  seconds: number;
}

export async function restoreBackup(o: RestoreOptions): Promise<RestoreSummary> {
  const started = process.hrtime.bigint();
  const m = o.manifest;
  if (o.client.export.sizeBytes !== m.sizeBytes) throw new Error(`the volume to restore into is ${o.client.export.sizeBytes} bytes; backup ${m.volume}/${m.id} is ${m.sizeBytes}`);
  if (o.client.export.readOnly) throw new Error("the export to restore into is read-only");
  const s: RestoreSummary = { backup: `${m.volume}/${m.id}`, sizeBytes: m.sizeBytes, chunks: m.chunks.length, zeroChunks: 0, writtenBytes: 0, seconds: 0 };
  let doneBytes = 0;
  await eachBounded(m.chunks.length, inFlight(m.chunkBytes, o.chunksInFlight), async (i) => {
    const offsetBytes = i * m.chunkBytes;
    const lengthBytes = chunkLength(m, i);
    if (m.chunks[i] === null) {
      s.zeroChunks++;
      if (!o.fresh) await o.client.zero(offsetBytes, lengthBytes);
    } else {
      await o.client.write(offsetBytes, await fetchChunk(o.target, m, i, o.codec));
      s.writtenBytes += lengthBytes;
    }
    doneBytes += lengthBytes;
    o.progress?.(doneBytes, m.sizeBytes);
  });
  await o.client.flush();
  s.seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return s;
}

export interface VerifySummary {
  backup: string;
  chunks: number;
  /** Distinct data chunks checked. */
  checkedChunks: number;
  bad: Array<{ index: number; key: string; error: string }>;
}

/** Fetches and checks every distinct data chunk of the backup; never stops at the first bad one. */
export async function verifyBackup(target: BackupTarget, m: Manifest, codec: ChunkCodec, o: { chunksInFlight?: number; progress?: Progress } = {}): Promise<VerifySummary> {
  const first = new Map<string, number>();
  m.chunks.forEach((h, i) => {
    if (h !== null && !first.has(h)) first.set(h, i);
  });
  const indexes = [...first.values()];
  const s: VerifySummary = { backup: `${m.volume}/${m.id}`, chunks: m.chunks.length, checkedChunks: 0, bad: [] };
  const totalBytes = indexes.reduce((sum, i) => sum + chunkLength(m, i), 0);
  let doneBytes = 0;
  await eachBounded(indexes.length, inFlight(m.chunkBytes, o.chunksInFlight), async (n) => {
    const i = indexes[n]!;
    try {
      await fetchChunk(target, m, i, codec);
    } catch (e) {
      if (!(e instanceof BadChunkError)) throw e;
      s.bad.push({ index: i, key: chunkKey(e.hash), error: e.message });
    }
    s.checkedChunks++;
    doneBytes += chunkLength(m, i);
    o.progress?.(doneBytes, totalBytes);
  });
  s.bad.sort((a, b) => a.index - b.index);
  return s;
}

// ---- delete ----

export interface DeleteSummary {
  backup: string;
  deletedChunks: number;
  /** Chunks of the deleted backup that other backups still use. */
  keptChunks: number;
}

/**
 * Removes the manifest, then those of its chunks no other manifest
 * references. Every other manifest is read first: one that cannot be read
 * might reference any chunk, so the delete is refused before anything is
 * removed. It is refused while a backup to the same target runs (locks,
 * below): that backup may count on a chunk this removes. Chunks left by a
 * backup that never finished (no manifest) are not touched.
 */
export async function deleteBackup(target: BackupTarget, m: Manifest): Promise<DeleteSummary> {
  const lock = await takeLock(target, "delete", m.id, "backup");
  try {
    return await deleteUnderLock(target, m);
  } finally {
    await lock.release();
  }
}

async function deleteUnderLock(target: BackupTarget, m: Manifest): Promise<DeleteSummary> {
  const key = manifestKey(m.volume, m.id);
  const all = await listBackups(target);
  const broken = all.broken.filter((b) => b.key !== key);
  if (broken.length > 0) throw new Error(`nothing deleted: ${broken[0]!.error}${broken.length > 1 ? ` (and ${broken.length - 1} more)` : ""}; a manifest that cannot be read might use any chunk: fix or remove it first`);
  const mine = new Set(m.chunks.filter((h): h is string => h !== null));
  const distinct = mine.size;
  for (const other of all.manifests) if (other.id !== m.id || other.volume !== m.volume) for (const h of other.chunks) if (h !== null) mine.delete(h);
  await target.delete(key);
  const doomed = [...mine];
  await eachBounded(doomed.length, backupChunksInFlight, async (n) => target.delete(chunkKey(doomed[n]!)));
  return { backup: `${m.volume}/${m.id}`, deletedChunks: doomed.length, keptChunks: distinct - doomed.length };
}

// ---- locks: a delete never removes a chunk a running backup counts on ----

/**
 * A backup counts on the chunks it finds in the target until its manifest
 * is written; a delete removes chunks no manifest names. So the two never
 * run at once on a target: each writes its lock object (locks/KIND-ID), then
 * lists the other kind's, and gives up (removing its own) when one is
 * fresh. Whichever writes second sees the first (the targets' reads follow
 * their writes). A lock is rewritten every lockRefreshMs while its work
 * runs; one older than lockStaleMs was left by a client that died and is
 * ignored (its age is judged by this host's clock against the writer's).
 */
const lockRefreshMs = 60 * 1000;
const lockStaleMs = 10 * 60 * 1000;
/** Locks one listing reads at most: more is not a target pxd made. */
const locksMax = 10_000;
/** Bytes of a lock object read at most. */
const lockBytesMax = 4096;

type LockKind = "backup" | "delete";

interface LockBody {
  kind: LockKind;
  id: string;
  host: string;
  pid: number;
  at: string;
}

function lockKey(kind: LockKind, id: string): string {
  return `locks/${kind}-${id}`;
}

async function takeLock(target: BackupTarget, kind: LockKind, id: string, excludes: LockKind): Promise<{ release(): Promise<void> }> {
  const key = lockKey(kind, id);
  const write = (): Promise<void> => target.put(key, Buffer.from(JSON.stringify({ kind, id, host: hostname(), pid: process.pid, at: new Date().toISOString() } satisfies LockBody)));
  await write();
  const release = async (): Promise<void> => {
    clearInterval(refresh);
    await target.delete(key).catch(() => {});
  };
  const refresh = setInterval(() => void write().catch(() => {}), lockRefreshMs);
  refresh.unref();
  try {
    const other = await freshLock(target, excludes);
    if (other !== undefined) {
      const what = excludes === "delete" ? "a backup delete" : "a backup";
      throw new Error(`${what} is running on ${target.url} (${other.kind} ${other.id} by ${other.host} pid ${other.pid}, lock written ${other.at}); ${kind === "backup" ? "back up" : "delete"} once it is done (a lock not rewritten for ${lockStaleMs / 60000} minutes is taken as left by a client that died)`);
    }
  } catch (e) {
    await release();
    throw e;
  }
  return { release };
}

/** A lock of `kind` written less than lockStaleMs ago, if any. */
async function freshLock(target: BackupTarget, kind: LockKind): Promise<LockBody | undefined> {
  for (const key of await target.list("locks/", locksMax)) {
    if (!key.startsWith(`locks/${kind}-`)) continue;
    const raw = await target.get(key, lockBytesMax).catch(() => undefined);
    let body: Partial<LockBody> | undefined;
    try {
      body = raw === undefined ? undefined : (JSON.parse(raw.toString("utf8")) as Partial<LockBody>);
    } catch {
      body = undefined;
    }
    const at = typeof body?.at === "string" ? Date.parse(body.at) : NaN;
    // A lock that cannot be read is taken as fresh: it may be one being written.
    if (!Number.isFinite(at)) return { kind, id: key.slice(`locks/${kind}-`.length), host: "?", pid: 0, at: "?" };
    if (Date.now() - at < lockStaleMs) return { kind, id: String(body!.id), host: String(body!.host), pid: Number(body!.pid), at: body!.at! };
  }
  return undefined;
}

