// What the multi-raft driver runs for each group: a state machine behind one
// interface (DESIGN §7). The driver knows Raft (entries, terms,
// configurations, who holds which part of the log); the state machine knows
// what a command means. Two implement it: a volume replica
// (src/replication/volume-replica.ts, its state in the store's block map) and
// the catalog (src/cluster/state-machine.ts, its state in memory).
//
// How a state machine snapshots decides how its group's log is retained:
// * inline: the state is small and in memory. Each node saves a snapshot of it
//   every `everyEntries` applied entries and compacts its own log behind it,
//   keeping `logTailEntries`; a member behind that point gets the snapshot as
//   the data of the core's snap message.
// * streamed: the state is in the store (a volume). The leader compacts every
//   log up to what the members hold (keeping at most the retained bytes for a
//   member that is down); a member behind gets the volume streamed in chunks
//   (src/replication/snapshot.ts), or only what changed since a point its log
//   reaches (the state machine's change map).

import type { ChangeMap } from "./changes.js";

export interface GroupStateMachine {
  /**
   * Applies committed entry `index`. `command` is its data; null for an entry
   * that carries none for the state machine (a configuration change, a new
   * leader's empty entry). Every index is applied once, in order.
   */
  apply(index: number, command: Uint8Array | null): void;
  /**
   * Committed entry `index` was lost from this node's log (its record is
   * damaged) and this node holds the group's only copy: the state machine
   * records the loss of what it changed, `range` (named by commandRange when
   * it was written). Applied in order, like apply().
   */
  lost(index: number, range: CommandRange): void;
  /** What a command's store record carries besides its data (one decode per entry). */
  commandRecord(command: Uint8Array): CommandRecord;
  readonly snapshots: InlineSnapshots | StreamedSnapshots;
}

export interface CommandRange {
  offsetBytes: number;
  lengthBytes: number;
}

export interface CommandRecord {
  /** The CRC32C of the command's whole data when it folds from checksums the command carries; undefined: the store hashes the data. */
  payloadCrc: number | undefined;
  /** The volume range the command changes, kept in its record's header so a damaged record still says what it changed (undefined: none). */
  range: CommandRange | undefined;
}

export interface InlineSnapshots {
  kind: "inline";
  everyEntries: number;
  logTailEntries: number;
  /** The state after applying entry `index`, the last one applied, encoded. */
  snapshot(index: number): Uint8Array;
  /** Why `data` is not a snapshot of this state machine at entry `index`, or null. Checked before the core takes a leader's snapshot. */
  check(index: number, data: Uint8Array): string | null;
  /** Replaces the state with a snapshot's: at start with the latest saved one, later with one the leader sent. */
  restore(index: number, data: Uint8Array, atStart: boolean): void;
}

export interface StreamedSnapshots {
  kind: "streamed";
  /** The bytes a full copy streams (the volume's size). */
  sizeBytes(): number;
  /** What changed after a point (delta catch-up), while the leader tracks it; marked by apply(). */
  readonly changes: ChangeMap | undefined;
  /** Starts a new change map after entry `base` (term `baseTerm`); apply() marks every later entry from now on. */
  trackChanges(base: number, baseTerm: number): ChangeMap;
  /** Drops the change map (nobody is behind, or the state was replaced). */
  dropChanges(): void;
  /** Marks in `changes` what a command applied before tracking began changed (read back from the log). */
  markCommand(changes: ChangeMap, command: Uint8Array): void;
}
