// A volume operation as the data of a Raft entry. The block data comes first
// and the trailer after it, so a committed write's data sits at offset 0 of
// the entry's payload in the segment log and the block map can point straight
// at it (docs/replication-plan.md, "the log is the data").
//
// A write (version 2) carries, between its data and the trailer, the CRC32C
// of each 4 KiB block of the volume it covers whole (u32 each,
// little-endian), computed once by the leader from the entry it proposes.
// Every replica takes them for its block map instead of hashing the data
// again, and folds them into the record's payload checksum
// (entryPayloadCrc): a replicated 4 KiB write is hashed once in the cluster,
// not once per replica, and what every replica stores is checked against
// what the leader took in (docs/architecture.md, "Checksums and repair").
//
// Trailer (16 bytes, little-endian): u8 op, u8 version, u16 block checksum
// count (version 1: 0), u32 length, u64 offset. Version 1 writes (no
// checksums) are still applied; the replica then computes them.

import { assert } from "../base/assert.js";
import { crc32c } from "../base/crc32c.js";
import { checksumBlockBytes } from "../constants.js";
import { blockCrcsOf, foldBlockCrcs } from "../store/checksums.js";

export const enum VolumeOpKind {
  Write = 1,
  /** Deallocate whole sectors (TRIM, WRITE_ZEROES); no data. */
  Trim = 2,
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
  crcs?: Uint32Array;
}

/** The 4 KiB blocks [first, end) a write at [offset, offset + length) covers whole. */
function coveredBlocks(offsetBytes: number, lengthBytes: number): [number, number] {
  const first = Math.ceil(offsetBytes / checksumBlockBytes);
  return [first, Math.max(first, Math.floor((offsetBytes + lengthBytes) / checksumBlockBytes))];
}

/** Entry data for a write: the payload slices copied once into one buffer, the blocks' checksums, the trailer. */
export function encodeWrite(offsetBytes: number, data: readonly Uint8Array[], lengthBytes: number): Uint8Array {
  const [first, end] = coveredBlocks(offsetBytes, lengthBytes);
  const count = end - first;
  const out = Buffer.allocUnsafe(lengthBytes + 4 * count + volumeOpTrailerBytes);
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
  writeTrailer(out, lengthBytes + 4 * count, { kind: VolumeOpKind.Write, offsetBytes, lengthBytes }, count);
  return out;
}

export function encodeTrim(offsetBytes: number, lengthBytes: number): Uint8Array {
  const out = Buffer.allocUnsafe(volumeOpTrailerBytes);
  writeTrailer(out, 0, { kind: VolumeOpKind.Trim, offsetBytes, lengthBytes }, 0);
  return out;
}

function writeTrailer(b: Buffer, at: number, op: VolumeOp, crcCount: number): void {
  b[at] = op.kind;
  b[at + 1] = opVersion;
  b.writeUInt16LE(crcCount, at + 2);
  b.writeUInt32LE(op.lengthBytes, at + 4);
  b.writeUInt32LE(op.offsetBytes % 0x100000000, at + 8);
  b.writeUInt32LE(Math.floor(op.offsetBytes / 0x100000000), at + 12);
}

/** The operation an entry carries; undefined for empty (no-op) entries or data that is not a volume op. */
export function decodeOp(data: Uint8Array): VolumeOp | undefined {
  if (data.length < volumeOpTrailerBytes) return undefined;
  const at = data.length - volumeOpTrailerBytes;
  const t = readTrailer(data, at);
  if (t === undefined) return undefined;
  const { op, crcCount } = t;
  if (op.kind !== VolumeOpKind.Write) return crcCount === 0 ? op : undefined;
  if (op.lengthBytes + 4 * crcCount !== at) return undefined;
  if (t.version === 1) return op;
  const [first, end] = coveredBlocks(op.offsetBytes, op.lengthBytes);
  if (crcCount !== end - first) return undefined;
  const dv = new DataView(data.buffer, data.byteOffset + op.lengthBytes, 4 * crcCount);
  const crcs = new Uint32Array(crcCount);
  for (let i = 0; i < crcCount; i++) crcs[i] = dv.getUint32(4 * i, true);
  return { ...op, crcs };
}

/**
 * The CRC32C of a volume entry's whole data (its record payload) folded from
 * the checksums it carries, when its data is exactly the whole blocks they
 * cover; undefined otherwise (the store then hashes it). Only for entries of a
 * volume's group: other data is not a volume op, whatever its last bytes say.
 */
export function entryPayloadCrc(data: Uint8Array): number | undefined {
  const op = decodeOp(data);
  if (op?.crcs === undefined || op.crcs.length === 0) return undefined;
  if (op.offsetBytes % checksumBlockBytes !== 0 || op.lengthBytes !== op.crcs.length * checksumBlockBytes) return undefined;
  return crc32c(data.subarray(op.lengthBytes), foldBlockCrcs(op.crcs, 0, op.crcs.length, checksumBlockBytes));
}

/** The operation named by an entry's last 16 bytes, read without its data; undefined when they are not a trailer. */
export function decodeTrailer(trailer: Uint8Array): VolumeOp | undefined {
  return trailer.length === volumeOpTrailerBytes ? readTrailer(trailer, 0)?.op : undefined;
}

function readTrailer(b: Uint8Array, at: number): { op: VolumeOp; version: number; crcCount: number } | undefined {
  const dv = new DataView(b.buffer, b.byteOffset + at, volumeOpTrailerBytes);
  const kind = dv.getUint8(0);
  const version = dv.getUint8(1);
  if ((version !== 1 && version !== opVersion) || (kind !== VolumeOpKind.Write && kind !== VolumeOpKind.Trim)) return undefined;
  const crcCount = version === 1 ? 0 : dv.getUint16(2, true);
  const lengthBytes = dv.getUint32(4, true);
  const offsetBytes = dv.getUint32(12, true) * 0x100000000 + dv.getUint32(8, true);
  return { op: { kind, offsetBytes, lengthBytes }, version, crcCount };
}
