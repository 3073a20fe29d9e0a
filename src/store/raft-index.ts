// A group's Raft log as the store keeps it: for each uncompacted entry, its
// term, type and where its data lies in the segment log. The entries
// themselves are records in the log (docs/formats/segment-log.md); this index
// is rebuilt by recovery and saved in checkpoints.

import { assert } from "../base/assert.js";

export interface RaftIndexEntry {
  term: number;
  type: number;
  /** Log address of the entry's data (the record payload). */
  address: number;
  lengthBytes: number;
  /**
   * Recovery found this entry's payload damaged under an intact header that
   * names the volume range it changed: the entry is kept, and the group's
   * driver decides (its only voter applies it as lost, a replica with peers
   * cuts its log there). Never saved: the next open finds the damage again.
   */
  lost?: LostRange;
}

/** The volume range a lost entry changed. */
export interface LostRange {
  offsetBytes: number;
  lengthBytes: number;
}

/** A Raft configuration as the store keeps it (the same shape as the core's ConfState). */
export interface RaftConf {
  voters: number[];
  learners: number[];
}

export interface RaftHardState {
  term: number;
  vote: number;
  commit: number;
}

export class RaftIndex {
  /** Index and term of the last compacted entry (0, 0 for a fresh group). */
  snapshotIndex = 0;
  snapshotTerm = 0;
  /** The configuration in force at snapshotIndex, once one was recorded (a compaction or an installed snapshot). */
  snapshotConf: RaftConf | undefined = undefined;
  hardState: RaftHardState = { term: 0, vote: 0, commit: 0 };
  /**
   * Recovery cut this log at a damaged entry: this node may have acknowledged
   * entries up to this index that it no longer holds, so it must not vote or
   * campaign until its log reaches it again (0: no such debt). Cleared once
   * the log is back there; saved in checkpoints until then.
   */
  recoverUntil = 0;
  /** Entries this node applied whose records recovery found damaged: the driver compacts the log past them before the group starts. */
  damagedApplied: number[] = [];
  /** entries[i] is entry snapshotIndex + 1 + i. */
  private entries: RaftIndexEntry[] = [];

  get firstIndex(): number {
    return this.snapshotIndex + 1;
  }

  get lastIndex(): number {
    return this.snapshotIndex + this.entries.length;
  }

  get(index: number): RaftIndexEntry | undefined {
    return index > this.snapshotIndex ? this.entries[index - this.snapshotIndex - 1] : undefined;
  }

  /** The term of `index`, for index in [snapshotIndex, lastIndex]; undefined outside. */
  term(index: number): number | undefined {
    if (index === this.snapshotIndex) return this.snapshotTerm;
    return this.get(index)?.term;
  }

  /**
   * Appends entry `index`; an index at or below the last one first drops the
   * conflicting suffix (a follower taking a new leader's log). Dropped entries
   * are reported so their space can be counted as garbage.
   */
  append(index: number, entry: RaftIndexEntry, dropped: (e: RaftIndexEntry) => void): void {
    assert(index > this.snapshotIndex, () => `entry ${index} is above the compaction point ${this.snapshotIndex}`);
    assert(index <= this.lastIndex + 1, () => `entry ${index} follows the log's last entry ${this.lastIndex}`);
    while (this.lastIndex >= index) dropped(this.entries.pop()!);
    this.entries.push(entry);
  }

  /** Drops entry `index` and every one after it (recovery cuts the log at a damaged entry). */
  truncateFrom(index: number, dropped: (e: RaftIndexEntry) => void): void {
    assert(index > this.snapshotIndex, () => `entry ${index} is above the compaction point ${this.snapshotIndex}`);
    while (this.lastIndex >= index) dropped(this.entries.pop()!);
  }

  /** The log reached the index recovery cut it back from: nothing is owed any more. */
  settleRecovery(): void {
    if (this.recoverUntil > 0 && this.lastIndex >= this.recoverUntil) this.recoverUntil = 0;
  }

  /** Forgets entries up to and including `index` (they are applied and, where needed, checkpointed); `conf` is the configuration in force there. */
  compact(index: number, dropped: (e: RaftIndexEntry) => void, conf?: RaftConf): void {
    if (index <= this.snapshotIndex) return;
    if (conf !== undefined) this.snapshotConf = { voters: [...conf.voters], learners: [...conf.learners] };
    assert(index <= this.lastIndex, "compaction stays inside the log");
    const term = this.term(index)!;
    const n = index - this.snapshotIndex;
    for (const e of this.entries.splice(0, n)) dropped(e);
    this.snapshotIndex = index;
    this.snapshotTerm = term;
  }

  /** Entries from firstIndex on, for checkpoints and GC pinning. */
  all(): readonly RaftIndexEntry[] {
    return this.entries;
  }

  /** Restores a checkpointed index. */
  static restore(snapshotIndex: number, snapshotTerm: number, hardState: RaftHardState, entries: RaftIndexEntry[], conf?: RaftConf): RaftIndex {
    const r = new RaftIndex();
    r.snapshotConf = conf;
    r.snapshotIndex = snapshotIndex;
    r.snapshotTerm = snapshotTerm;
    r.hardState = hardState;
    r.entries = entries;
    return r;
  }
}

/** A configuration as bytes: u32 voter count, u32 learner count, then u64 ids (checkpoints, SnapshotInstall records). */
export function encodeRaftConf(c: RaftConf): Buffer {
  const b = Buffer.alloc(8 + 8 * (c.voters.length + c.learners.length));
  b.writeUInt32LE(c.voters.length, 0);
  b.writeUInt32LE(c.learners.length, 4);
  [...c.voters, ...c.learners].forEach((id, i) => {
    assert(Number.isSafeInteger(id) && id >= 0, "node ids are safe integers");
    b.writeUInt32LE(id % 0x100000000, 8 + 8 * i);
    b.writeUInt32LE(Math.floor(id / 0x100000000), 12 + 8 * i);
  });
  return b;
}

/** Decodes encodeRaftConf's bytes at `at`; undefined when they do not fit `b`. */
export function decodeRaftConf(b: Uint8Array, at: number): { conf: RaftConf; end: number } | undefined {
  if (at + 8 > b.length) return undefined;
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const nv = dv.getUint32(at, true);
  const nl = dv.getUint32(at + 4, true);
  const end = at + 8 + 8 * (nv + nl);
  if (nv > 1024 || nl > 1024 || end > b.length) return undefined;
  const ids: number[] = [];
  for (let i = 0; i < nv + nl; i++) ids.push(dv.getUint32(at + 8 + 8 * i + 4, true) * 0x100000000 + dv.getUint32(at + 8 + 8 * i, true));
  return { conf: { voters: ids.slice(0, nv), learners: ids.slice(nv) }, end };
}
