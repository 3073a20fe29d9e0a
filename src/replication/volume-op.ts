// A volume operation as the data of a Raft entry. The block data comes first
// and the trailer after it, so a committed write's data sits at offset 0 of
// the entry's payload in the segment log and the block map can point straight
// at it (docs/formats/volume-op.md: the log is the data).
//
// A write (version 2) carries, between its data and the trailer, the CRC32C
// of each 4 KiB block of the volume it covers whole (u32 each,
// little-endian), computed once by the leader from the entry it proposes.
// Every replica takes them for its block map instead of hashing the data
// again, and folds them into the record's payload checksum
// (opPayloadCrc): a replicated 4 KiB write is hashed once in the cluster,
// not once per replica, and what every replica stores is checked against
// what the leader took in (docs/architecture.md, "Checksums and repair").
//
// Trailer (16 bytes, little-endian): u8 op, u8 version, u16 block checksum
// count (version 1: 0), u32 length, u64 offset. Version 1 writes (no
// checksums) are still applied; the replica then computes them.
//
// A resize (op 3) is a trailer alone whose u64 is the volume's new size and
// whose length is 0: every replica grows its block map at the same log index,
// so a write past the old end is ordered after it on every replica.

import { assert } from "../base/assert.js";
import { SlabAllocator } from "../base/buffer-pool.js";
import { crc32c } from "../base/crc32c.js";
import { checksumBlockBytes, sectorBytes, volumeBytesMax } from "../constants.js";
import { blockCrcsOf, foldBlockCrcs } from "../store/checksums.js";

export const enum VolumeOpKind {
  Write = 1,
  /** Deallocate whole sectors (TRIM, WRITE_ZEROES); no data. */
  Trim = 2,
  /** Grow the volume to the size in the offset field (never shrinks); no data. */
  Resize = 3,
  /** Take a snapshot of the volume (its id in the offset field); no data. */
  SnapshotCreate = 4,
  /** Drop a snapshot (its id in the offset field); no data. */
  SnapshotDelete = 5,
}

export const volumeOpTrailerBytes = 16;
/** Room an entry takes besides its data: the trailer and, at most, a checksum per block of the largest write. */
export function volumeOpOverheadBytes(dataBytesMax: number): number {
  return volumeOpTrailerBytes + 4 * Math.ceil(dataBytesMax / checksumBlockBytes);
}
const opVersion = 2;

export interface VolumeOp {
  kind: VolumeOpKind;
  offsetBytes: number;
  lengthBytes: number;
  /** A version 2 write: the checksums of blocks [ceil(offset / 4 KiB), floor(end / 4 KiB)), in order. */
  crcs: Uint32Array | undefined;
}

/** The 4 KiB blocks [first, end) a write at [offset, offset + length) covers whole. */
function coveredBlocks(offsetBytes: number, lengthBytes: number): [number, number] {
  const first = Math.ceil(offsetBytes / checksumBlockBytes);
  return [first, Math.max(first, Math.floor((offsetBytes + lengthBytes) / checksumBlockBytes))];
}

/**
 * Where write entries are allocated: small ones (a 4 KiB write is 4,116
 * bytes) share 256 KiB slabs, so the collector tracks one ArrayBuffer per 62
 * of them instead of each (bench/cpu-per-op.sh randwrite shows the cost).
 */
const entrySlabBytes = 256 * 1024;
const entryBuffers = new SlabAllocator(entrySlabBytes);

/** Entry data for a write: the payload slices copied once into one buffer, the blocks' checksums, the trailer. */
export function encodeWrite(offsetBytes: number, data: readonly Uint8Array[], lengthBytes: number): Uint8Array {
  const [first, end] = coveredBlocks(offsetBytes, lengthBytes);
  const count = end - first;
  const out = entryBuffers.take(lengthBytes + 4 * count + volumeOpTrailerBytes);
  let at = 0;
  for (const d of data) {
    out.set(d, at);
    at += d.length;
  }
  assert(at === lengthBytes, "write payload matches its length");
  if (count > 0) {
    const crcs = blockCrcsOf([out.subarray(0, lengthBytes)], first * checksumBlockBytes - offsetBytes, count, checksumBlockBytes);
    for (let i = 0; i < count; i++) out.writeUInt32LE(crcs[i]!, lengthBytes + 4 * i);
  }
  writeTrailer(out, lengthBytes + 4 * count, { kind: VolumeOpKind.Write, offsetBytes, lengthBytes, crcs: undefined }, count);
  return out;
}

export function encodeTrim(offsetBytes: number, lengthBytes: number): Uint8Array {
  const out = Buffer.allocUnsafe(volumeOpTrailerBytes);
  writeTrailer(out, 0, { kind: VolumeOpKind.Trim, offsetBytes, lengthBytes, crcs: undefined }, 0);
  return out;
}

/** Entry data that grows the volume to `sizeBytes` (whole sectors; a replica already that large or larger is left as it is). */
export function encodeResize(sizeBytes: number): Uint8Array {
  assert(volumeSizeOk(sizeBytes), () => `a resize to ${sizeBytes} bytes is whole sectors up to the volume limit`);
  const out = Buffer.allocUnsafe(volumeOpTrailerBytes);
  writeTrailer(out, 0, { kind: VolumeOpKind.Resize, offsetBytes: sizeBytes, lengthBytes: 0, crcs: undefined }, 0);
  return out;
}

/** A size a volume may have: whole sectors, at least one, at most volumeBytesMax. */
export function volumeSizeOk(sizeBytes: number): boolean {
  return Number.isSafeInteger(sizeBytes) && sizeBytes > 0 && sizeBytes % sectorBytes === 0 && sizeBytes <= volumeBytesMax;
}

/** The new size a resize op carries. */
export function resizeBytesOf(op: VolumeOp): number {
  assert(op.kind === VolumeOpKind.Resize, "only a resize carries a size");
  return op.offsetBytes;
}

function writeTrailer(b: Buffer, at: number, op: VolumeOp, crcCount: number): void {
  b[at] = op.kind;
  b[at + 1] = opVersion;
  b.writeUInt16LE(crcCount, at + 2);
  b.writeUInt32LE(op.lengthBytes, at + 4);
  b.writeUInt32LE(op.offsetBytes % 0x100000000, at + 8);
  b.writeUInt32LE(Math.floor(op.offsetBytes / 0x100000000), at + 12);
}

/**
 * The operation an entry carries; undefined for empty (no-op) entries or data
 * that is not a volume op. Every replica decodes every entry twice (for its
 * record's checksum and to apply it): byte reads, one object, and the
 * checksums as a view of the entry where it lies 4-byte aligned.
 */
export function decodeOp(data: Uint8Array): VolumeOp | undefined {
  if (data.length < volumeOpTrailerBytes) return undefined;
  const at = data.length - volumeOpTrailerBytes;
  const kind = data[at]!;
  const version = data[at + 1]!;
  if (!knownOp(kind, version)) return undefined;
  const crcCount = version === 1 ? 0 : data[at + 2]! | (data[at + 3]! << 8);
  const lengthBytes = u32(data, at + 4);
  const offsetBytes = u32(data, at + 12) * 0x100000000 + u32(data, at + 8);
  if (kind === VolumeOpKind.Resize) return at === 0 && crcCount === 0 && lengthBytes === 0 && volumeSizeOk(offsetBytes) ? { kind, offsetBytes, lengthBytes, crcs: undefined } : undefined;
  if (kind !== VolumeOpKind.Write) return crcCount === 0 ? { kind, offsetBytes, lengthBytes, crcs: undefined } : undefined;
  if (lengthBytes + 4 * crcCount !== at) return undefined;
  if (version === 1) return { kind, offsetBytes, lengthBytes, crcs: undefined };
  const first = Math.ceil(offsetBytes / checksumBlockBytes);
  if (crcCount !== Math.max(0, Math.floor((offsetBytes + lengthBytes) / checksumBlockBytes) - first)) return undefined;
  return { kind, offsetBytes, lengthBytes, crcs: crcsAt(data, lengthBytes, crcCount) };
}

/** Ops and versions this code applies: writes and trims of version 1 or 2, resizes of version 2. */
function knownOp(kind: number, version: number): boolean {
  if (version !== 1 && version !== opVersion) return false;
  return kind === VolumeOpKind.Write || kind === VolumeOpKind.Trim || (kind === VolumeOpKind.Resize && version === opVersion);
}

function u32(b: Uint8Array, at: number): number {
  return (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
}

/** `count` little-endian u32 at `at` (pxd runs on little-endian hosts only: src/store/checkpoint.ts). */
function crcsAt(data: Uint8Array, at: number, count: number): Uint32Array {
  const offset = data.byteOffset + at;
  if (offset % 4 === 0) return new Uint32Array(data.buffer, offset, count);
  const out = new Uint32Array(count);
  for (let i = 0; i < count; i++) out[i] = u32(data, at + 4 * i);
  return out;
}

/**
 * The CRC32C of a volume entry's whole data (its record payload) folded from
 * the checksums it carries, when its data is exactly the whole blocks they
 * cover; undefined otherwise (the store then hashes it).
 */
export function opPayloadCrc(op: VolumeOp, data: Uint8Array): number | undefined {
  if (op.crcs === undefined || op.crcs.length === 0) return undefined;
  if (op.offsetBytes % checksumBlockBytes !== 0 || op.lengthBytes !== op.crcs.length * checksumBlockBytes) return undefined;
  return crc32c(data.subarray(op.lengthBytes), foldBlockCrcs(op.crcs, 0, op.crcs.length, checksumBlockBytes));
}

/** A snapshot operation: what a volume's group applies at one log index on every replica. */
export interface SnapshotOp {
  kind: VolumeOpKind.SnapshotCreate | VolumeOpKind.SnapshotDelete;
  snapshotId: number;
}

/** Entry data for a snapshot operation: the trailer alone, the snapshot id where a write has its offset. */
export function encodeSnapshotOp(op: SnapshotOp): Uint8Array {
  assert(Number.isSafeInteger(op.snapshotId) && op.snapshotId > 0 && op.snapshotId < 2 ** 32, "a snapshot id fits the trailer");
  const out = Buffer.allocUnsafe(volumeOpTrailerBytes);
  writeTrailer(out, 0, { kind: op.kind, offsetBytes: op.snapshotId, lengthBytes: 0, crcs: undefined }, 0);
  return out;
}

/** The snapshot operation an entry carries; undefined for any other entry (decodeOp reads those). */
export function decodeSnapshotOp(data: Uint8Array): SnapshotOp | undefined {
  if (data.length !== volumeOpTrailerBytes || data[1] !== opVersion) return undefined;
  const kind = data[0]!;
  if (kind !== VolumeOpKind.SnapshotCreate && kind !== VolumeOpKind.SnapshotDelete) return undefined;
  if ((data[2]! | data[3]!) !== 0 || u32(data, 4) !== 0 || u32(data, 12) !== 0) return undefined;
  const snapshotId = u32(data, 8);
  return snapshotId === 0 ? undefined : { kind, snapshotId };
}
