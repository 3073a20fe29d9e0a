// A volume operation as the data of a Raft entry. The block data comes first
// and a 16-byte trailer after it, so a committed write's data sits at offset 0
// of the entry's payload in the segment log and the block map can point
// straight at it (docs/replication-plan.md, "the log is the data").
//
// Trailer (little-endian): u8 op, u8 version, u16 reserved, u32 length, u64 offset.

import { assert } from "../base/assert.js";

export const enum VolumeOpKind {
  Write = 1,
  /** Deallocate whole sectors (TRIM, WRITE_ZEROES); no data. */
  Trim = 2,
}

export const volumeOpTrailerBytes = 16;
const opVersion = 1;

export interface VolumeOp {
  kind: VolumeOpKind;
  offsetBytes: number;
  lengthBytes: number;
}

/** Entry data for a write: the payload slices copied once into one buffer, then the trailer. */
export function encodeWrite(offsetBytes: number, data: readonly Uint8Array[], lengthBytes: number): Uint8Array {
  const out = Buffer.allocUnsafe(lengthBytes + volumeOpTrailerBytes);
  let at = 0;
  for (const d of data) {
    out.set(d, at);
    at += d.length;
  }
  assert(at === lengthBytes, "write payload matches its length");
  writeTrailer(out, lengthBytes, { kind: VolumeOpKind.Write, offsetBytes, lengthBytes });
  return out;
}

export function encodeTrim(offsetBytes: number, lengthBytes: number): Uint8Array {
  const out = Buffer.allocUnsafe(volumeOpTrailerBytes);
  writeTrailer(out, 0, { kind: VolumeOpKind.Trim, offsetBytes, lengthBytes });
  return out;
}

function writeTrailer(b: Buffer, at: number, op: VolumeOp): void {
  b[at] = op.kind;
  b[at + 1] = opVersion;
  b.writeUInt16LE(0, at + 2);
  b.writeUInt32LE(op.lengthBytes, at + 4);
  b.writeUInt32LE(op.offsetBytes % 0x100000000, at + 8);
  b.writeUInt32LE(Math.floor(op.offsetBytes / 0x100000000), at + 12);
}

/** The operation an entry carries; undefined for empty (no-op) entries or data that is not a volume op. */
export function decodeOp(data: Uint8Array): VolumeOp | undefined {
  if (data.length < volumeOpTrailerBytes) return undefined;
  const at = data.length - volumeOpTrailerBytes;
  const op = readTrailer(data, at);
  return op?.kind === VolumeOpKind.Write && op.lengthBytes !== at ? undefined : op;
}

/** The operation named by an entry's last 16 bytes, read without its data; undefined when they are not a trailer. */
export function decodeTrailer(trailer: Uint8Array): VolumeOp | undefined {
  return trailer.length === volumeOpTrailerBytes ? readTrailer(trailer, 0) : undefined;
}

function readTrailer(b: Uint8Array, at: number): VolumeOp | undefined {
  const dv = new DataView(b.buffer, b.byteOffset + at, volumeOpTrailerBytes);
  const kind = dv.getUint8(0);
  if (dv.getUint8(1) !== opVersion || (kind !== VolumeOpKind.Write && kind !== VolumeOpKind.Trim)) return undefined;
  const lengthBytes = dv.getUint32(4, true);
  const offsetBytes = dv.getUint32(12, true) * 0x100000000 + dv.getUint32(8, true);
  return { kind, offsetBytes, lengthBytes };
}
