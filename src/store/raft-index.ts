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
  hardState: RaftHardState = { term: 0, vote: 0, commit: 0 };
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
    assert(index > this.snapshotIndex, `entry ${index} is above the compaction point ${this.snapshotIndex}`);
    assert(index <= this.lastIndex + 1, `entry ${index} follows the log's last entry ${this.lastIndex}`);
    while (this.lastIndex >= index) dropped(this.entries.pop()!);
    this.entries.push(entry);
  }

  /** Forgets entries up to and including `index` (they are applied and, where needed, checkpointed). */
  compact(index: number, dropped: (e: RaftIndexEntry) => void): void {
    if (index <= this.snapshotIndex) return;
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
  static restore(snapshotIndex: number, snapshotTerm: number, hardState: RaftHardState, entries: RaftIndexEntry[]): RaftIndex {
    const r = new RaftIndex();
    r.snapshotIndex = snapshotIndex;
    r.snapshotTerm = snapshotTerm;
    r.hardState = hardState;
    r.entries = entries;
    return r;
  }
}
