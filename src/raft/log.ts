// The log as the core sees it: the persisted part behind the Storage port and
// the unstable tail (entries, or an incoming snapshot) that the caller has
// not yet persisted. Indexes:
//
//   snapshot/first-1 < ... stable (storage) ... < unstableOffset <= ... unstable ... <= lastIndex
//   applied <= applying <= committed <= lastIndex
//
// `applying` is what the application was handed (by a Ready or by
// takeCommitted); `applied` what it confirmed. Committed entries are handed
// out only once they are on disk here (committedOnDisk).

import { assert } from "../base/assert.js";
import type { Storage } from "./storage.js";
import { CompactedError, StorageError, UnavailableError } from "./storage.js";
import type { Entry, Snapshot } from "./types.js";
import { entryBytes } from "./types.js";

export class RaftLog {
  readonly storage: Storage;
  /** Entries not yet persisted; unstable[k] has index unstableOffset + k. */
  unstable: Entry[] = [];
  unstableOffset: number;
  /** A snapshot received from the leader and not yet persisted. */
  unstableSnapshot: Snapshot | null = null;
  committed: number;
  applying: number;
  applied: number;

  constructor(storage: Storage, applied: number) {
    this.storage = storage;
    const first = storage.firstIndex();
    const last = storage.lastIndex();
    this.unstableOffset = last + 1;
    this.committed = first - 1;
    assert(applied >= first - 1 || applied === 0, `applied ${applied} is below the snapshot ${first - 1}`);
    this.applied = Math.max(applied, first - 1);
    this.applying = this.applied;
  }

  firstIndex(): number {
    if (this.unstableSnapshot !== null) return this.unstableSnapshot.meta.index + 1;
    return this.storage.firstIndex();
  }

  lastIndex(): number {
    if (this.unstable.length > 0) return this.unstableOffset + this.unstable.length - 1;
    if (this.unstableSnapshot !== null) return this.unstableSnapshot.meta.index;
    return this.storage.lastIndex();
  }

  /** The term of entry i; throws CompactedError / UnavailableError outside [firstIndex-1, lastIndex]. */
  term(i: number): number {
    const off = this.unstableOffset;
    if (i >= off) {
      const e = this.unstable[i - off];
      if (e === undefined) throw new UnavailableError(`term of ${i} is past the last index ${this.lastIndex()}`);
      return e.term;
    }
    const snap = this.unstableSnapshot;
    if (snap !== null) {
      if (i === snap.meta.index) return snap.meta.term;
      if (i < snap.meta.index) throw new CompactedError(`term of ${i} is below the snapshot ${snap.meta.index}`);
    }
    return this.storage.term(i);
  }

  lastTerm(): number {
    return this.term(this.lastIndex());
  }

  /** The term of i, or -1 if it is compacted or past the end (never a valid term). */
  termOrNone(i: number): number {
    // Bounds first: a follower asks this of every entry past its log (findConflict), and an exception per append costs.
    if (i > this.lastIndex() || i < this.firstIndex() - 1) return -1;
    try {
      return this.term(i);
    } catch (err) {
      if (err instanceof StorageError) return -1;
      throw err;
    }
  }

  matchTerm(i: number, term: number): boolean {
    return this.termOrNone(i) === term;
  }

  /** §5.4.1: is a log ending at (index, term) at least as up-to-date as ours? */
  isUpToDate(index: number, term: number): boolean {
    const lastTerm = this.lastTerm();
    return term > lastTerm || (term === lastTerm && index >= this.lastIndex());
  }

  /**
   * Follower side of AppendEntries (§5.3): if our log has (index, logTerm),
   * append the entries that are new, truncating at the first conflict, and
   * return the index of the last new entry; otherwise return -1.
   * `onTruncate(i)` is called before entries from i on are replaced.
   */
  maybeAppend(index: number, logTerm: number, entries: Entry[], onAppend: (from: number) => void): number {
    if (!this.matchTerm(index, logTerm)) return -1;
    const lastNew = index + entries.length;
    const conflict = this.findConflict(entries);
    if (conflict !== 0) {
      assert(conflict > this.committed, () => `entry ${conflict} conflicts with committed ${this.committed}`);
      const first = entries[0];
      assert(first !== undefined, "a conflict implies entries");
      this.append(entries.slice(conflict - first.index));
      onAppend(conflict);
    }
    return lastNew;
  }

  /** The first entry whose term differs from ours (or that we lack), or 0. */
  findConflict(entries: Entry[]): number {
    for (const e of entries) {
      if (!this.matchTerm(e.index, e.term)) return e.index;
    }
    return 0;
  }

  /**
   * The largest index <= `index` whose term is <= `term` (or the first index we
   * cannot look up). Used for fast backtracking: both sides skip whole terms.
   */
  findConflictByTerm(index: number, term: number): { index: number; term: number } {
    for (let i = index; i > 0; i--) {
      const t = this.termOrNone(i);
      if (t < 0) return { index: i, term: 0 };
      if (t <= term) return { index: i, term: t };
    }
    return { index: 0, term: 0 };
  }

  append(entries: Entry[]): number {
    if (entries.length === 0) return this.lastIndex();
    const first = entries[0];
    assert(first !== undefined, "append has a first entry");
    assert(first.index - 1 >= this.committed, () => `append at ${first.index} would overwrite committed ${this.committed}`);
    assert(first.index <= this.lastIndex() + 1, () => `append at ${first.index} leaves a gap after ${this.lastIndex()}`);
    const off = this.unstableOffset;
    if (first.index === off + this.unstable.length) {
      for (const e of entries) this.unstable.push(e);
    } else if (first.index <= off) {
      // Replace the whole unstable tail; the stale stored suffix is overwritten when persisted.
      this.unstableOffset = first.index;
      this.unstable = entries.slice();
    } else {
      this.unstable = this.unstable.slice(0, first.index - off);
      for (const e of entries) this.unstable.push(e);
    }
    return this.lastIndex();
  }

  /** Entries [lo, hi) up to maxBytes (at least one), from storage and the unstable tail. */
  slice(lo: number, hi: number, maxBytes: number): Entry[] {
    if (lo >= hi) return [];
    const first = this.firstIndex();
    if (lo < first) throw new CompactedError(`entry ${lo} is compacted (first index ${first})`);
    assert(hi <= this.lastIndex() + 1, () => `slice [${lo}, ${hi}) past the last index ${this.lastIndex()}`);
    const off = this.unstableOffset;
    let out: Entry[] = [];
    let bytes = 0;
    if (lo < off) {
      const end = Math.min(hi, off);
      out = this.storage.entries(lo, end, maxBytes);
      if (out.length < end - lo) return out; // hit the byte limit
      for (const e of out) bytes += entryBytes(e);
    }
    for (let i = Math.max(lo, off); i < hi; i++) {
      const e = this.unstable[i - off];
      assert(e !== undefined, "unstable slice in range");
      bytes += entryBytes(e);
      if (out.length > 0 && bytes > maxBytes) break;
      out.push(e);
    }
    return out;
  }

  commitTo(index: number): void {
    if (index <= this.committed) return;
    assert(index <= this.lastIndex(), () => `commit ${index} is past the last index ${this.lastIndex()}`);
    this.committed = index;
  }

  /**
   * Committed entries are handed to the application only once they are on disk
   * here (below the unstable tail), so the caller may apply them at once, even
   * while a later Ready's entries are being persisted. The commit index can
   * run ahead of this node's disk: a follower's when the leader's commit covers
   * entries it is still writing, a leader's when followers acknowledge its
   * appends (sent before its own persist ends) before that persist ends; those
   * entries wait for it.
   */
  private committedOnDisk(): number {
    return Math.min(this.committed, this.unstableOffset - 1);
  }

  hasNextCommittedEntries(): boolean {
    return this.unstableSnapshot === null && this.committedOnDisk() > this.applying;
  }

  nextCommittedEntries(maxBytes: number): Entry[] {
    if (!this.hasNextCommittedEntries()) return [];
    return this.slice(Math.max(this.applying + 1, this.firstIndex()), this.committedOnDisk() + 1, maxBytes);
  }

  /** Called by advance(): everything up to (index, term) is on disk. */
  stableTo(index: number, term: number): void {
    const off = this.unstableOffset;
    const e = this.unstable[index - off];
    // The tail was replaced after the Ready was taken: the new entries go out in the next Ready.
    if (e === undefined || e.term !== term) return;
    const keep = off + this.unstable.length - 1 - index;
    this.unstable = keep === 0 ? [] : this.unstable.slice(index - off + 1);
    this.unstableOffset = index + 1;
  }

  stableSnapshotTo(index: number): void {
    if (this.unstableSnapshot !== null && this.unstableSnapshot.meta.index === index) this.unstableSnapshot = null;
  }

  appliedTo(index: number): void {
    assert(index <= this.committed, () => `applied ${index} is past committed ${this.committed}`);
    if (index > this.applied) this.applied = index;
    if (index > this.applying) this.applying = index;
  }

  /** Replace the log with a snapshot from the leader (§7). */
  restore(snap: Snapshot): void {
    this.committed = snap.meta.index;
    this.unstableOffset = snap.meta.index + 1;
    this.unstable = [];
    this.unstableSnapshot = snap;
    this.applying = snap.meta.index;
  }

  hasUnstable(): boolean {
    return this.unstable.length > 0 || this.unstableSnapshot !== null;
  }
}
