// The core reads the persisted log through this narrow read-only port; the
// caller (the multi-raft driver, the simulator) writes to it when it handles
// a Ready. In the spirit of etcd's storage.go.
//
// Contract:
//   - The stored log is the entries (firstIndex() .. lastIndex()) after the
//     latest snapshot, whose index is firstIndex() - 1. The term of that index
//     is still known (term(firstIndex() - 1) works): it is the snapshot's term.
//   - Ranges are half open: entries(lo, hi) returns [lo, hi).
//   - Asking for anything at or below the snapshot index throws CompactedError
//     (term(snapshotIndex) is the one exception); asking past lastIndex() throws
//     UnavailableError. Both are normal and the core handles them; any other
//     exception is a bug or an I/O failure and propagates.
//   - entries() returns at least one entry when lo < hi, even if it alone is
//     larger than maxBytes, and otherwise stops before exceeding maxBytes.
//   - A fresh node's storage holds an empty log and a snapshot at index 0 whose
//     conf is the bootstrap configuration (or empty for a node that will join).

import { assert } from "../base/assert.js";
import { cloneConfState } from "./confchange.js";
import type { ConfState, Entry, HardState, Snapshot } from "./types.js";
import { emptyHardState, entryBytes } from "./types.js";

export class StorageError extends Error {
  override name = "StorageError";
}
/** The requested index is at or below the latest snapshot: the entries are gone. */
export class CompactedError extends StorageError {
  override name = "CompactedError";
}
/** The requested index is past the last stored entry. */
export class UnavailableError extends StorageError {
  override name = "UnavailableError";
}
/** The snapshot is being produced; the core retries later. */
export class SnapshotUnavailableError extends StorageError {
  override name = "SnapshotUnavailableError";
}
/** A snapshot older than the one already stored was offered. */
export class SnapshotOutOfDateError extends StorageError {
  override name = "SnapshotOutOfDateError";
}

export interface InitialState {
  hardState: HardState;
  /** The configuration of the latest snapshot; the core replays config entries after it itself. */
  confState: ConfState;
}

export interface Storage {
  initialState(): InitialState;
  /** Entries [lo, hi), at most maxBytes (but at least one). */
  entries(lo: number, hi: number, maxBytes: number): Entry[];
  /** The term of entry i, for i in [firstIndex() - 1, lastIndex()]. */
  term(i: number): number;
  firstIndex(): number;
  lastIndex(): number;
  /** The latest snapshot (metadata and data) to send to a follower behind the compaction point. */
  snapshot(): Snapshot;
}

/**
 * The log in memory: for tests, the simulator and the benchmark. `entries[0]`
 * is a placeholder for the snapshot point (its index and term), as in etcd.
 */
export class MemoryStorage implements Storage {
  private hardState: HardState = emptyHardState();
  private snap: Snapshot;
  private ents: Entry[];

  constructor(conf: ConfState = { voters: [], learners: [] }) {
    this.snap = { meta: { index: 0, term: 0, conf: cloneConfState(conf) }, data: new Uint8Array(0) };
    this.ents = [placeholder(0, 0)];
  }

  initialState(): InitialState {
    // Committed entries may be applied, and then compacted, before the hard
    // state that records their commit is persisted (RaftNode.takeCommitted):
    // the snapshot point is committed too. The store's storage does the same
    // with its applied index (src/replication/raft-storage.ts).
    const hardState = { ...this.hardState, commit: Math.max(this.hardState.commit, this.snap.meta.index) };
    return { hardState, confState: cloneConfState(this.snap.meta.conf) };
  }

  setHardState(hs: HardState): void {
    this.hardState = { ...hs };
  }

  hardStateNow(): HardState {
    return { ...this.hardState };
  }

  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    const offset = this.offset();
    if (lo <= offset) throw new CompactedError(`entry ${lo} is compacted (snapshot at ${offset})`);
    if (hi > this.lastIndex() + 1) throw new UnavailableError(`entry ${hi - 1} is past the last index ${this.lastIndex()}`);
    assert(lo <= hi, "entries range is ordered");
    const out: Entry[] = [];
    let bytes = 0;
    for (let i = lo; i < hi; i++) {
      const e = this.ents[i - offset];
      assert(e !== undefined && e.index === i, "memory storage entries are contiguous");
      bytes += entryBytes(e);
      if (out.length > 0 && bytes > maxBytes) break;
      out.push(e);
    }
    return out;
  }

  term(i: number): number {
    const offset = this.offset();
    if (i < offset) throw new CompactedError(`term of ${i} is compacted (snapshot at ${offset})`);
    if (i > this.lastIndex()) throw new UnavailableError(`term of ${i} is past the last index ${this.lastIndex()}`);
    const e = this.ents[i - offset];
    assert(e !== undefined, "memory storage term lookup");
    return e.term;
  }

  firstIndex(): number {
    return this.offset() + 1;
  }

  lastIndex(): number {
    return this.offset() + this.ents.length - 1;
  }

  snapshot(): Snapshot {
    return this.snap;
  }

  /** Replaces the log with a snapshot received from the leader (handled from Ready.snapshot). */
  applySnapshot(snap: Snapshot): void {
    if (snap.meta.index <= this.snap.meta.index) {
      throw new SnapshotOutOfDateError(`snapshot ${snap.meta.index} is not newer than ${this.snap.meta.index}`);
    }
    this.snap = snap;
    this.ents = [placeholder(snap.meta.index, snap.meta.term)];
  }

  /** Records that the application's state at index i is `data` (the log before it may then be compacted). */
  createSnapshot(i: number, conf: ConfState, data: Uint8Array): Snapshot {
    if (i <= this.snap.meta.index) throw new SnapshotOutOfDateError(`snapshot ${i} is not newer than ${this.snap.meta.index}`);
    assert(i <= this.lastIndex(), () => `snapshot index ${i} is past the last index ${this.lastIndex()}`);
    this.snap = { meta: { index: i, term: this.term(i), conf: cloneConfState(conf) }, data };
    return this.snap;
  }

  /** Drops the entries before `compactIndex`; entry compactIndex becomes the placeholder. */
  compact(compactIndex: number): void {
    const offset = this.offset();
    if (compactIndex <= offset) throw new CompactedError(`already compacted to ${offset}`);
    assert(compactIndex <= this.lastIndex(), () => `compact ${compactIndex} is past the last index ${this.lastIndex()}`);
    const e = this.ents[compactIndex - offset];
    assert(e !== undefined, "compact target exists");
    const rest = this.ents.slice(compactIndex - offset + 1);
    this.ents = [placeholder(e.index, e.term), ...rest];
  }

  /** Appends entries handed out by Ready.entries, truncating any conflicting suffix first. */
  append(entries: readonly Entry[]): void {
    if (entries.length === 0) return;
    const first = this.firstIndex();
    const head = entries[0];
    assert(head !== undefined, "append has a first entry");
    const last = head.index + entries.length - 1;
    if (last < first) return; // all compacted already
    const skip = first > head.index ? first - head.index : 0;
    const start = head.index + skip;
    assert(start <= this.lastIndex() + 1, () => `append at ${start} leaves a gap after ${this.lastIndex()}`);
    this.ents.length = start - this.offset(); // truncate the conflicting suffix
    for (let k = skip; k < entries.length; k++) {
      const e = entries[k];
      assert(e !== undefined && e.index === start + (k - skip), "appended entries are contiguous");
      this.ents.push(e);
    }
  }

  private offset(): number {
    const p = this.ents[0];
    assert(p !== undefined, "memory storage has a placeholder");
    return p.index;
  }
}

function placeholder(index: number, term: number): Entry {
  return { term, index, type: 0, data: new Uint8Array(0) };
}
