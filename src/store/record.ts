// Record codec of the segment log (docs/formats/segment-log.md). Every field is
// little-endian. A record is a header followed by its payload. Version 2 (what
// this code writes) has a 72-byte header carrying two checksums: one of the
// payload and one of the header itself, so a record whose payload is damaged
// still tells which group and Raft entry it belonged to. Version 1 (64 bytes,
// one CRC32C over header and payload) is still read.

import { assert } from "../base/assert.js";
import { crc32c, crc32cOf } from "../base/crc32c.js";
import { commitsInFlightMax, recordHeaderBytes, recordPayloadBytesMax, sectorBytes, segmentBytes } from "../constants.js";

export const recordMagic = 0x52445850; // "PXDR"
/** The version this code writes. */
export const recordVersion = 2;
/** Header bytes of a version 1 record (one CRC over header and payload at byte 60). */
export const recordHeaderBytesV1 = 64;

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
  /** RaftEntry: sectors of the volume range the entry changes, starting at raftRangeOffset(offsetBytes) (0: it names none). */
  rangeSectors: number;
  /** Version 2: CRC32C of the payload. Version 1: CRC32C of header bytes [0, 60) then the payload. */
  crc: number;
  version: number;
  /** Bytes of this record's header: the payload starts this far after the record. */
  headerBytes: number;
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
  /** RaftEntry only: see RecordHeader.rangeSectors. */
  rangeSectors?: number;
}

export interface CommitFields {
  batchPos: number;
  batchCount: number;
  segmentId: number;
  commitSeq: number;
}

/**
 * Encodes a version 2 header. `payloadCrc` is the CRC32C of the payload when
 * the caller already has it (folded from its blocks' checksums); else it is
 * computed here.
 */
export function encodeHeader(r: RecordFields, c: CommitFields, payload: readonly Uint8Array[], payloadCrc?: number): Buffer {
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
  b.writeUInt32LE(payloadCrc ?? crc32cOf(payload), 60);
  b.writeUInt32LE(r.rangeSectors ?? 0, 64);
  b.writeUInt32LE(crc32c(b.subarray(0, 68)), 68);
  return b;
}

/**
 * Decodes a header from `b` (the bytes at `position`, as many as the segment
 * has up to recordHeaderBytes), or returns undefined when it cannot be one of
 * ours in this segment: bad magic, version, segment id, lengths out of
 * bounds, or (version 2) a header checksum that does not match. The payload
 * is checked separately (payloadMatches), once it has been read.
 */
export function decodeHeader(b: Uint8Array, segmentId: number, position: number): RecordHeader | undefined {
  if (b.length < recordHeaderBytesV1) return undefined;
  const dv = new DataView(b.buffer, b.byteOffset, b.length);
  const version = b[5]!;
  if (dv.getUint32(0, true) !== recordMagic || (version !== 1 && version !== recordVersion)) return undefined;
  const headerBytes = version === 1 ? recordHeaderBytesV1 : recordHeaderBytes;
  if (b.length < headerBytes) return undefined;
  if (version !== 1 && dv.getUint32(68, true) !== crc32c(b.subarray(0, 68))) return undefined;
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
    rangeSectors: version === 1 || kind !== RecordKind.RaftEntry ? 0 : dv.getUint32(64, true),
    crc: dv.getUint32(60, true),
    version,
    headerBytes,
  };
  const payload = payloadBytesOf(kind, h.lengthBytes);
  if (payload > recordPayloadBytesMax) return undefined;
  if (position + headerBytes + payload > segmentBytes) return undefined;
  if (h.batchCount === 0 || h.batchPos >= h.batchCount || h.commitWindow === 0) return undefined;
  if (h.offsetBytes > u64Max) return undefined;
  return h;
}

/**
 * A RaftEntry record's offset field holds the entry type plus the byte offset
 * of the volume range it changes (a multiple of 512, so the type, below 512,
 * keeps the low bits): the header says what an entry whose payload is lost
 * had changed.
 */
export const raftEntryTypeLimit = sectorBytes;

export function raftOffsetField(type: number, rangeOffsetBytes: number): number {
  assert(type >= 0 && type < raftEntryTypeLimit && rangeOffsetBytes % sectorBytes === 0, "a Raft entry's type fits below its sector-aligned range offset");
  return rangeOffsetBytes + type;
}

export function raftEntryType(offsetField: number): number {
  return offsetField % raftEntryTypeLimit;
}

export function raftRangeOffset(offsetField: number): number {
  return offsetField - (offsetField % raftEntryTypeLimit);
}

/** Whether a decoded record's payload is what its header's checksum says. */
export function payloadMatches(h: RecordHeader, header: Uint8Array, payload: Uint8Array): boolean {
  if (h.version === 1) return crc32c(payload, crc32c(header.subarray(0, 60))) === h.crc;
  return crc32c(payload) === h.crc;
}
