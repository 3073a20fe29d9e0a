// Snapshot files of groups that hold only a Raft log (docs/formats/catalog-snapshot.md).
//
// The meta group's state machine, the catalog, lives in memory; its Raft log
// is compacted only behind a snapshot of that state saved here first, so the
// latest file and the log after it always rebuild the catalog. One file per
// such group, `snapshot-<group id>`, replaced whole (tmp -> fdatasync ->
// rename -> fsync dir). The file carries the Raft position of the state (index,
// term, configuration) and the state machine's own bytes, which the store
// does not interpret. Little-endian like the checkpoint; a trailing CRC32C
// covers it all.

import { assert } from "../base/assert.js";
import { crc32c } from "../base/crc32c.js";
import { catalogSnapshotBytesMax } from "../constants.js";
import { writeFileDurably, type Disk } from "./disk.js";
import { StoreError } from "./errors.js";
import { decodeRaftConf, encodeRaftConf, type RaftConf } from "./raft-index.js";

/** A group's state machine state as of Raft entry `index` (of term `term`), with the configuration in force there. */
export interface StateSnapshot {
  index: number;
  term: number;
  conf: RaftConf;
  /** The state machine's encoding (a catalog snapshot, src/cluster/snapshot.ts); at most catalogSnapshotBytesMax. */
  data: Uint8Array;
}

const magic = 0x53445850; // "PXDS"
/** The byte at offset 4; a reader refuses any other. */
export const stateSnapshotFileVersion = 1;
const headBytes = 32;
/** Voters and learners one file may list (as the checkpoint's configuration decoder allows). */
const confIdsMax = 2048;
const fileBytesMax = headBytes + 8 + 8 * confIdsMax + 4 + catalogSnapshotBytesMax + 4;

export function stateSnapshotName(groupId: number): string {
  return `snapshot-${String(groupId).padStart(10, "0")}`;
}

function u64(b: Buffer, at: number, v: number): void {
  assert(Number.isSafeInteger(v) && v >= 0, () => `${v} is a u64 the file can hold`);
  b.writeUInt32LE(v % 0x100000000, at);
  b.writeUInt32LE(Math.floor(v / 0x100000000), at + 4);
}

function readU64(b: Buffer, at: number): number {
  return b.readUInt32LE(at + 4) * 0x100000000 + b.readUInt32LE(at);
}

export function encodeStateSnapshot(groupId: number, s: StateSnapshot): Buffer {
  assert(s.data.length <= catalogSnapshotBytesMax, () => `a state snapshot of ${s.data.length} bytes is over the ${catalogSnapshotBytesMax}-byte bound`);
  assert(s.index >= 1 && s.term >= 1, "a state snapshot is of an entry");
  const conf = encodeRaftConf(s.conf);
  const out = Buffer.alloc(headBytes + conf.length + 4 + s.data.length + 4);
  out.writeUInt32LE(magic, 0);
  out.writeUInt8(stateSnapshotFileVersion, 4);
  u64(out, 8, groupId);
  u64(out, 16, s.index);
  u64(out, 24, s.term);
  conf.copy(out, headBytes);
  let at = headBytes + conf.length;
  out.writeUInt32LE(s.data.length, at);
  out.set(s.data, at + 4);
  at += 4 + s.data.length;
  out.writeUInt32LE(crc32c(out.subarray(0, at)) >>> 0, at);
  return out;
}

/** The snapshot a file holds; throws a StoreError (EIO), saying what is wrong, for anything else. */
export function decodeStateSnapshot(groupId: number, b: Buffer): StateSnapshot {
  const bad = (why: string): StoreError => new StoreError("EIO", `snapshot file ${stateSnapshotName(groupId)}: ${why}`);
  if (b.length < headBytes + 8 + 4 + 4 || b.length > fileBytesMax) throw bad(`${b.length} bytes is not the size of a snapshot file`);
  const end = b.length - 4;
  if ((crc32c(b.subarray(0, end)) >>> 0) !== b.readUInt32LE(end)) throw bad("checksum mismatch: the file is damaged");
  if (b.readUInt32LE(0) !== magic) throw bad("not a pxd snapshot file (bad magic)");
  if (b.readUInt8(4) !== stateSnapshotFileVersion) throw bad(`version ${b.readUInt8(4)} is not ${stateSnapshotFileVersion}; is this an older pxd's data dir?`);
  if (readU64(b, 8) !== groupId) throw bad(`holds group ${readU64(b, 8)}, not ${groupId}`);
  const conf = decodeRaftConf(b.subarray(0, end), headBytes);
  if (conf === undefined || conf.end + 4 > end) throw bad("the configuration does not fit the file");
  const length = b.readUInt32LE(conf.end);
  if (conf.end + 4 + length !== end) throw bad(`data of ${length} bytes does not end where the checksum begins`);
  const index = readU64(b, 16);
  const term = readU64(b, 24);
  if (index < 1 || term < 1) throw bad(`index ${index} and term ${term} are not an entry's`);
  return { index, term, conf: conf.conf, data: Uint8Array.prototype.slice.call(b, conf.end + 4, end) };
}

/** The group's saved snapshot, or undefined when it has none. */
export function readStateSnapshot(disk: Disk, groupId: number): StateSnapshot | undefined {
  const name = stateSnapshotName(groupId);
  if (disk.exists(`${name}.tmp`)) disk.remove(`${name}.tmp`);
  if (!disk.exists(name)) return undefined;
  const file = disk.open(name, false);
  try {
    const size = file.sizeBytes();
    if (size > fileBytesMax) throw new StoreError("EIO", `snapshot file ${name}: ${size} bytes is over the ${fileBytesMax}-byte bound of a snapshot file`);
    const b = Buffer.alloc(size);
    if (file.readSync(b, 0, size, 0) !== size) throw new StoreError("EIO", `snapshot file ${name} could not be read whole`);
    return decodeStateSnapshot(groupId, b);
  } finally {
    file.close();
  }
}

/** Replaces the group's snapshot file; durable once it resolves. */
export function writeStateSnapshot(disk: Disk, groupId: number, s: StateSnapshot): Promise<void> {
  return writeFileDurably(disk, stateSnapshotName(groupId), [encodeStateSnapshot(groupId, s)]);
}
