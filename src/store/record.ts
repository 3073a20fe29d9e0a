// Record codec of the segment log (docs/formats/segment-log.md). Every field is
// little-endian. A record is a 64-byte header followed by its payload; the
// CRC32C at the end of the header covers header bytes [0, 60) and the payload.

import { assert } from "../base/assert.js";
import { crc32c, crc32cOf } from "../base/crc32c.js";
import { commitsInFlightMax, recordHeaderBytes, recordPayloadBytesMax, segmentBytes } from "../constants.js";

export const recordMagic = 0x52445850; // "PXDR"
export const recordVersion = 1;

export const enum RecordKind {
  /** Volume data: payload lands at [offset, offset + length). */
  Write = 1,
  /** Deallocate [offset, offset + length): reads return zeroes. */
  Trim = 2,
  /** GC copy of live data; applies only where the block map still points at `sourceAddress`. */
  Relocate = 3,
  /** Last record of a segment: the log continues in the next segment. */
  Seal = 4,
  /** A Raft entry of a replicated group: term and index; the offset field holds the entry type; payload = entry data. */
  RaftEntry = 5,
  /** A Raft group's hard state: term in the term field, commit in the index field, vote in the offset field. */
  HardState = 6,
  /**
   * A Raft snapshot is installed: the group's block map becomes its staging
   * group's, its Raft log restarts after (index, term in the term field).
   * Payload: the configuration at the index (encodeRaftConf).
   */
  SnapshotInstall = 7,
}

export interface RecordHeader {
  kind: RecordKind;
  batchPos: number;
  batchCount: number;
  /** Commits the writer allowed in flight at once; recovery's torn/corrupt rule depends on it. */
  commitWindow: number;
  segmentId: number;
  commitSeq: number;
  groupId: number;
  /** Raft term of the entry; for Relocate, the log address the data was copied from. */
  termOrSource: number;
  index: number;
  offsetBytes: number;
  lengthBytes: number;
  crc: number;
}

const u64Max = Number.MAX_SAFE_INTEGER;

function writeU64(b: Buffer, at: number, v: number): void {
  assert(Number.isSafeInteger(v) && v >= 0, "u64 field holds a safe non-negative integer");
  b.writeUInt32LE(v % 0x100000000, at);
  b.writeUInt32LE(Math.floor(v / 0x100000000), at + 4);
}

function readU64(b: Uint8Array, at: number): number {
  const lo = (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16)) + b[at + 3]! * 0x1000000;
  const hi = (b[at + 4]! | (b[at + 5]! << 8) | (b[at + 6]! << 16)) + b[at + 7]! * 0x1000000;
  return hi * 0x100000000 + lo;
}

export function payloadBytesOf(kind: RecordKind, lengthBytes: number): number {
  return kind === RecordKind.Write || kind === RecordKind.Relocate || kind === RecordKind.RaftEntry || kind === RecordKind.SnapshotInstall ? lengthBytes : 0;
}

/** What a record says about itself; the log adds where and in which commit it lands. */
export interface RecordFields {
  kind: RecordKind;
  groupId: number;
  termOrSource: number;
  index: number;
  offsetBytes: number;
  lengthBytes: number;
}

export interface CommitFields {
  batchPos: number;
  batchCount: number;
  segmentId: number;
  commitSeq: number;
}

/** Encodes a header and computes its CRC over the header and `payload`. */
export function encodeHeader(r: RecordFields, c: CommitFields, payload: readonly Uint8Array[]): Buffer {
  const b = Buffer.allocUnsafe(recordHeaderBytes);
  b.writeUInt32LE(recordMagic, 0);
  b[4] = r.kind;
  b[5] = recordVersion;
  b.writeUInt16LE(c.batchPos, 6);
  b.writeUInt16LE(c.batchCount, 8);
  b.writeUInt16LE(commitsInFlightMax, 10);
  b.writeUInt32LE(c.segmentId, 12);
  writeU64(b, 16, c.commitSeq);
  writeU64(b, 24, r.groupId);
  writeU64(b, 32, r.termOrSource);
  writeU64(b, 40, r.index);
  writeU64(b, 48, r.offsetBytes);
  b.writeUInt32LE(r.lengthBytes, 56);
  const crc = crc32cOf(payload, crc32c(b.subarray(0, 60)));
  b.writeUInt32LE(crc, 60);
  return b;
}

/**
 * Decodes a header, or returns undefined when it cannot be one of ours in this
 * segment (bad magic, version, segment id, or lengths out of bounds). The CRC
 * is checked separately, once the payload has been read.
 */
export function decodeHeader(b: Uint8Array, segmentId: number, position: number): RecordHeader | undefined {
  assert(b.length >= recordHeaderBytes, "header buffer holds a whole header");
  const dv = new DataView(b.buffer, b.byteOffset, recordHeaderBytes);
  if (dv.getUint32(0, true) !== recordMagic || b[5] !== recordVersion) return undefined;
  const kind = b[4]!;
  if (kind < RecordKind.Write || kind > RecordKind.SnapshotInstall) return undefined;
  if (dv.getUint32(12, true) !== segmentId) return undefined;
  const h: RecordHeader = {
    kind,
    batchPos: dv.getUint16(6, true),
    batchCount: dv.getUint16(8, true),
    commitWindow: dv.getUint16(10, true),
    segmentId,
    commitSeq: readU64(b, 16),
    groupId: readU64(b, 24),
    termOrSource: readU64(b, 32),
    index: readU64(b, 40),
    offsetBytes: readU64(b, 48),
    lengthBytes: dv.getUint32(56, true),
    crc: dv.getUint32(60, true),
  };
  const payload = payloadBytesOf(kind, h.lengthBytes);
  if (payload > recordPayloadBytesMax) return undefined;
  if (position + recordHeaderBytes + payload > segmentBytes) return undefined;
  if (h.batchCount === 0 || h.batchPos >= h.batchCount || h.commitWindow === 0) return undefined;
  if (h.offsetBytes > u64Max) return undefined;
  return h;
}

export function headerCrcMatches(header: Uint8Array, payload: Uint8Array, expected: number): boolean {
  return crc32c(payload, crc32c(header.subarray(0, 60))) === expected;
}
