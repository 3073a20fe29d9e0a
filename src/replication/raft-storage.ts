// The Raft core's Storage port (src/raft/storage.ts) over the store's Raft log
// for one group: entries are read back from the segment log on demand.

import { CompactedError, UnavailableError, type Storage, type InitialState } from "../raft/storage.js";
import type { ConfState, Entry, EntryType, Snapshot } from "../raft/types.js";
import type { Store } from "../store/store.js";

export class StoreRaftStorage implements Storage {
  constructor(
    private readonly store: Store,
    private readonly groupId: number,
    /** The group's configuration at its snapshot point (the bootstrap voters until snapshots exist). */
    private readonly conf: ConfState,
  ) {}

  initialState(): InitialState {
    const s = this.store.raftState(this.groupId);
    return { hardState: s.hardState, confState: { voters: [...this.conf.voters], learners: [...this.conf.learners] } };
  }

  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    const s = this.store.raftState(this.groupId);
    if (lo <= s.snapshotIndex) throw new CompactedError(`entry ${lo} of group ${this.groupId} is compacted (at ${s.snapshotIndex})`);
    if (hi > s.lastIndex + 1) throw new UnavailableError(`entry ${hi - 1} of group ${this.groupId} is past the last index ${s.lastIndex}`);
    if (lo >= hi) return [];
    return this.store.raftEntries(this.groupId, lo, hi, maxBytes).map((e) => ({ term: e.term, index: e.index, type: e.type as EntryType, data: e.data }));
  }

  term(i: number): number {
    const t = this.store.raftTerm(this.groupId, i);
    if (t !== undefined) return t;
    const s = this.store.raftState(this.groupId);
    if (i < s.snapshotIndex) throw new CompactedError(`term of ${i} of group ${this.groupId} is compacted (at ${s.snapshotIndex})`);
    throw new UnavailableError(`term of ${i} of group ${this.groupId} is past the last index ${s.lastIndex}`);
  }

  firstIndex(): number {
    return this.store.raftState(this.groupId).firstIndex;
  }

  lastIndex(): number {
    return this.store.raftState(this.groupId).lastIndex;
  }

  snapshot(): Snapshot {
    const s = this.store.raftState(this.groupId);
    return { meta: { index: s.snapshotIndex, term: s.snapshotTerm, conf: { voters: [...this.conf.voters], learners: [...this.conf.learners] } }, data: new Uint8Array(0) };
  }
}
