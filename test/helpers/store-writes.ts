// A volume's writes on a bare store, as its group's only voter makes them:
// the volume replica (src/replication/volume-replica.ts) turns a request into
// volume ops (alignment, read-modify-write, zeroing, splitting), each is
// appended as the group's next Raft entry and applied once durable, and the
// log is compacted behind it. No Raft core: in a one-voter group an entry is
// committed once it is on disk, which is all the store sees. Tests of the
// store (test/unit/store*.test.ts, test/sim/store-sim.ts, bench/store-read.ts)
// write through this.

import { EntryType } from "../../src/raft/types.js";
import type { Store } from "../../src/store/store.js";
import { VolumeReplica, type ReplicaPort } from "../../src/replication/volume-replica.js";
import type { SnapshotOp } from "../../src/replication/volume-op.js";

const term = 1;

export class StoreWrites {
  private readonly replicas = new Map<number, { replica: VolumeReplica; port: ReplicaPort; next: number }>();

  constructor(private readonly store: Store) {}

  write(groupId: number, offsetBytes: number, data: readonly Uint8Array[], lengthBytes: number): Promise<void> {
    const r = this.of(groupId);
    return r.replica.write(r.port, offsetBytes, data, lengthBytes);
  }

  trim(groupId: number, offsetBytes: number, lengthBytes: number): Promise<void> {
    const r = this.of(groupId);
    return r.replica.trim(r.port, offsetBytes, lengthBytes);
  }

  writeZeroes(groupId: number, offsetBytes: number, lengthBytes: number, noHole: boolean): Promise<void> {
    const r = this.of(groupId);
    return r.replica.writeZeroes(r.port, offsetBytes, lengthBytes, noHole);
  }

  /** Takes or drops a snapshot through the volume's log, as its group's leader does. */
  snapshot(groupId: number, op: SnapshotOp): Promise<void> {
    const r = this.of(groupId);
    return r.replica.snapshot(r.port, op);
  }

  rollback(groupId: number, snapshotId: number): Promise<{ writtenBytes: number; trimmedBytes: number }> {
    const r = this.of(groupId);
    return r.replica.rollback(r.port, snapshotId);
  }

  /**
   * Applies the entries the store holds after its applied index, as a
   * restarted group does before it serves (the store maps a volume's
   * entries only when they are applied). Call once after Store.open.
   */
  replay(groupId: number): void {
    const r = this.of(groupId);
    const st = this.store.raftState(groupId);
    // Entries whose records recovery found damaged are applied as lost, as the driver does for a group's only voter.
    const lost = new Map(this.store.lostRaftEntries(groupId).map((l) => [l.index, l.range]));
    for (let i = st.appliedIndex + 1; i <= st.lastIndex; i++) {
      const range = lost.get(i);
      if (range !== undefined) {
        r.replica.lost(i, range);
        this.store.markApplied(groupId, i);
        continue;
      }
      const [e] = this.store.raftEntries(groupId, i, i + 1, Infinity);
      this.applied(groupId, r.replica, i, e!.type === EntryType.normal ? e!.data : null);
    }
    if (st.lastIndex > this.store.raftState(groupId).snapshotIndex) this.store.compactRaftLog(groupId, st.lastIndex);
  }

  private of(groupId: number): { replica: VolumeReplica; port: ReplicaPort; next: number } {
    let r = this.replicas.get(groupId);
    if (r !== undefined) return r;
    const replica = new VolumeReplica(this.store, groupId);
    const entry = { replica, next: this.store.raftLastIndex(groupId) + 1, port: undefined as unknown as ReplicaPort };
    entry.port = {
      propose: (command) => {
        const index = entry.next++;
        const input = { index, term, type: EntryType.normal, data: [command], ...replica.commandRecord(command) };
        return this.store.appendRaftEntries(groupId, [input]).then(() => this.applied(groupId, replica, index, command));
      },
      readBarrier: () => undefined,
      read: (offsetBytes, lengthBytes) => this.store.read(groupId, offsetBytes, lengthBytes),
      cipher: () => undefined,
    };
    this.replicas.set(groupId, entry);
    return entry;
  }

  private applied(groupId: number, replica: VolumeReplica, index: number, command: Uint8Array | null): void {
    if (!this.store.hasGroup(groupId)) return;
    replica.apply(index, command);
    this.store.markApplied(groupId, index);
    this.store.compactRaftLog(groupId, index);
  }
}

const byStore = new WeakMap<Store, StoreWrites>();

/** The writer of a store (one per store, so a volume's entries get consecutive indexes). */
export function writesTo(store: Store): StoreWrites {
  let w = byStore.get(store);
  if (w === undefined) byStore.set(store, (w = new StoreWrites(store)));
  return w;
}

/** A store just opened, with every entry of its groups applied (as their groups do when they start). */
export function replayed(store: Store, groupIds: readonly number[]): Store {
  for (const id of groupIds) if (store.hasGroup(id)) writesTo(store).replay(id);
  return store;
}
