// Checkpoint file (docs/formats/checkpoint.md): every group's block map and
// Raft position as of a log position, so recovery replays only the log after it.
// Written tmp -> fdatasync -> rename -> fsync dir; a trailing CRC32C covers it all.

import { assert } from "../base/assert.js";
import { crc32c, crc32cOf } from "../base/crc32c.js";
import { chunkBlocks, chunkSectors } from "./block-map.js";
import type { Disk } from "./disk.js";
import { writeFileDurably } from "./disk.js";
import { CorruptionError } from "./errors.js";
import type { LogPosition } from "./log.js";
import { decodeRaftConf, encodeRaftConf, type RaftConf, type RaftHardState, type RaftIndexEntry } from "./raft-index.js";
import { checkpointName } from "./segment-names.js";

const checkpointMagic = 0x4b445850; // "PXDK"
/**
 * 4: each chunk carries its blocks' checksums after its sector addresses.
 * 3 (each group's Raft section ends with its configuration at the snapshot
 * point) and 2 (without it) are still read; their blocks have no checksums,
 * which the store computes when it opens.
 */
const checkpointVersion = 4;
const checkpointVersionsRead = [2, 3, 4];
const fileHeaderBytes = 40;
const groupHeaderBytes = 48;
const chunkBytes = chunkSectors * 8;
const chunkCrcBytes = chunkBlocks * 4;

// Block-map chunks are written as the host's Float64Array bytes: little-endian hosts only.
assert(new Uint8Array(new Float64Array([1]).buffer)[7] === 0x3f, "pxd's checkpoint format needs a little-endian host");

export interface GroupCheckpoint {
  groupId: number;
  sizeBytes: number;
  lastTerm: number;
  lastIndex: number;
  chunks: Map<number, Float64Array>;
  /** Each chunk's block checksums; absent in a checkpoint older than version 4. */
  crcs: Map<number, Uint32Array> | undefined;
  raft: {
    snapshotIndex: number;
    snapshotTerm: number;
    hardState: RaftHardState;
    entries: readonly RaftIndexEntry[];
    /** The configuration at snapshotIndex, when one was recorded. */
    conf?: RaftConf | undefined;
    /** RaftIndex.recoverUntil (version 4; 0 before). */
    recoverUntil?: number;
  };
}

export interface Checkpoint {
  end: LogPosition;
  groups: GroupCheckpoint[];
}

function u64(b: Buffer, at: number, v: number): void {
  b.writeUInt32LE(v % 0x100000000, at);
  b.writeUInt32LE(Math.floor(v / 0x100000000), at + 4);
}

function readU64(b: Buffer, at: number): number {
  return b.readUInt32LE(at + 4) * 0x100000000 + b.readUInt32LE(at);
}

export function encodeCheckpoint(c: Checkpoint): Uint8Array[] {
  const head = Buffer.alloc(fileHeaderBytes);
  head.writeUInt32LE(checkpointMagic, 0);
  head.writeUInt32LE(checkpointVersion, 4);
  u64(head, 8, c.end.commitSeq);
  u64(head, 16, c.end.segmentId);
  u64(head, 24, c.end.position);
  head.writeUInt32LE(c.groups.length, 32);
  const parts: Uint8Array[] = [head];
  for (const g of c.groups) {
    const gh = Buffer.alloc(groupHeaderBytes);
    u64(gh, 0, g.groupId);
    u64(gh, 8, g.sizeBytes);
    u64(gh, 16, g.lastTerm);
    u64(gh, 24, g.lastIndex);
    gh.writeUInt32LE(g.chunks.size, 32);
    parts.push(gh);
    for (const [index, chunk] of g.chunks) {
      const ch = Buffer.alloc(8);
      ch.writeUInt32LE(index, 0);
      const crcs = g.crcs?.get(index);
      assert(crcs !== undefined && crcs.length === chunkBlocks, "every chunk has its block checksums");
      parts.push(ch, new Uint8Array(chunk.buffer, chunk.byteOffset, chunkBytes), new Uint8Array(crcs.buffer, crcs.byteOffset, chunkCrcBytes));
    }
    parts.push(encodeRaft(g.raft));
  }
  const crc = Buffer.alloc(4);
  crc.writeUInt32LE(crc32cOf(parts), 0);
  parts.push(crc);
  return parts;
}

export function decodeCheckpoint(b: Buffer): Checkpoint {
  const bad = (why: string): never => {
    throw new CorruptionError(0, 0, `checkpoint file is damaged (${why}); restore the data dir from a replica or backup`);
  };
  if (b.length < fileHeaderBytes + 4) bad("too short");
  if (crc32c(b.subarray(0, b.length - 4)) !== b.readUInt32LE(b.length - 4)) bad("checksum mismatch");
  const version = b.readUInt32LE(4);
  if (b.readUInt32LE(0) !== checkpointMagic || !checkpointVersionsRead.includes(version)) bad("bad magic or version");
  const end = { commitSeq: readU64(b, 8), segmentId: readU64(b, 16), position: readU64(b, 24) };
  const groupCount = b.readUInt32LE(32);
  let at = fileHeaderBytes;
  const groups: GroupCheckpoint[] = [];
  for (let i = 0; i < groupCount; i++) {
    if (at + groupHeaderBytes > b.length - 4) bad("group header past the end");
    const g: GroupCheckpoint = {
      groupId: readU64(b, at),
      sizeBytes: readU64(b, at + 8),
      lastTerm: readU64(b, at + 16),
      lastIndex: readU64(b, at + 24),
      chunks: new Map(),
      crcs: version >= 4 ? new Map() : undefined,
      raft: { snapshotIndex: 0, snapshotTerm: 0, hardState: { term: 0, vote: 0, commit: 0 }, entries: [] },
    };
    const chunkCount = b.readUInt32LE(at + 32);
    at += groupHeaderBytes;
    const perChunk = 8 + chunkBytes + (g.crcs !== undefined ? chunkCrcBytes : 0);
    if (at + chunkCount * perChunk > b.length - 4) bad("chunks past the end");
    for (let c = 0; c < chunkCount; c++) {
      const index = b.readUInt32LE(at);
      const chunk = new Float64Array(chunkSectors);
      new Uint8Array(chunk.buffer).set(b.subarray(at + 8, at + 8 + chunkBytes));
      g.chunks.set(index, chunk);
      if (g.crcs !== undefined) {
        const crcs = new Uint32Array(chunkBlocks);
        new Uint8Array(crcs.buffer).set(b.subarray(at + 8 + chunkBytes, at + 8 + chunkBytes + chunkCrcBytes));
        g.crcs.set(index, crcs);
      }
      at += perChunk;
    }
    at = decodeRaft(b, at, g, bad, version);
    groups.push(g);
  }
  if (at !== b.length - 4) bad("trailing bytes");
  return { end, groups };
}

const raftHeaderBytes = 48;
const raftEntryBytes = 24;

/**
 * A group's Raft index: snapshot index and term, hard state, then per entry
 * term, address, length, type; then its configuration at the snapshot point
 * (u32 0xffffffff: none recorded, else encodeRaftConf); then (version 4) u64
 * recoverUntil.
 */
function encodeRaft(r: GroupCheckpoint["raft"]): Buffer {
  const conf = r.conf === undefined ? Buffer.from([0xff, 0xff, 0xff, 0xff]) : encodeRaftConf(r.conf);
  const confAt = raftHeaderBytes + r.entries.length * raftEntryBytes;
  const b = Buffer.alloc(confAt + conf.length + 8);
  conf.copy(b, confAt);
  u64(b, confAt + conf.length, r.recoverUntil ?? 0);
  u64(b, 0, r.snapshotIndex);
  u64(b, 8, r.snapshotTerm);
  u64(b, 16, r.hardState.term);
  u64(b, 24, r.hardState.vote);
  u64(b, 32, r.hardState.commit);
  b.writeUInt32LE(r.entries.length, 40);
  r.entries.forEach((e, i) => {
    const at = raftHeaderBytes + i * raftEntryBytes;
    u64(b, at, e.term);
    u64(b, at + 8, e.address);
    b.writeUInt32LE(e.lengthBytes, at + 16);
    b.writeUInt32LE(e.type, at + 20);
  });
  return b;
}

function decodeRaft(b: Buffer, at: number, g: GroupCheckpoint, bad: (why: string) => never, version: number): number {
  if (at + raftHeaderBytes > b.length - 4) bad("raft section past the end");
  const count = b.readUInt32LE(at + 40);
  if (at + raftHeaderBytes + count * raftEntryBytes > b.length - 4) bad("raft entries past the end");
  const entries: RaftIndexEntry[] = [];
  for (let i = 0; i < count; i++) {
    const e = at + raftHeaderBytes + i * raftEntryBytes;
    entries.push({ term: readU64(b, e), address: readU64(b, e + 8), lengthBytes: b.readUInt32LE(e + 16), type: b.readUInt32LE(e + 20) });
  }
  g.raft = {
    snapshotIndex: readU64(b, at),
    snapshotTerm: readU64(b, at + 8),
    hardState: { term: readU64(b, at + 16), vote: readU64(b, at + 24), commit: readU64(b, at + 32) },
    entries,
  };
  let end = at + raftHeaderBytes + count * raftEntryBytes;
  if (version >= 3) {
    if (end + 4 > b.length - 4) bad("raft configuration past the end");
    if (b.readUInt32LE(end) === 0xffffffff) end += 4;
    else {
      const c = decodeRaftConf(b.subarray(0, b.length - 4), end);
      if (c === undefined) bad("raft configuration past the end");
      g.raft.conf = c.conf;
      end = c.end;
    }
  }
  if (version >= 4) {
    if (end + 8 > b.length - 4) bad("raft recovery index past the end");
    g.raft.recoverUntil = readU64(b, end);
    end += 8;
  }
  return end;
}

export async function writeCheckpoint(disk: Disk, c: Checkpoint): Promise<void> {
  await writeFileDurably(disk, checkpointName, encodeCheckpoint(c));
}

export function readCheckpoint(disk: Disk): Checkpoint | undefined {
  if (!disk.exists(checkpointName)) return undefined;
  const file = disk.open(checkpointName, false);
  try {
    const size = file.sizeBytes();
    const b = Buffer.alloc(size);
    if (file.readSync(b, 0, size, 0) !== size) throw new CorruptionError(0, 0, "checkpoint file could not be read whole");
    return decodeCheckpoint(b);
  } finally {
    file.close();
  }
}
