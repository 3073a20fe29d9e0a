// The catalog as the meta group's state machine (the driver's
// GroupStateMachine, src/replication/state-machine.ts, which this layer
// implements without importing it). The catalog lives in memory, so its
// snapshots are small inline blobs (docs/formats/catalog-snapshot.md): each
// node saves one every `catalogSnapshotEntries` applied entries and keeps
// `catalogLogTailEntries` of log behind it.

import { assert } from "../base/assert.js";
import { catalogLogTailEntries, catalogSnapshotEntries } from "../constants.js";
import { applyEntry, newCatalogState, skipEntry, type ApplyResult, type CatalogState } from "./catalog.js";
import { decodeCatalogSnapshot, encodeCatalogSnapshot } from "./snapshot.js";

/** What the node does with what the catalog applied (the daemon acts on changes for itself). */
export interface CatalogHooks {
  /** Entry `index` was applied; `result` is undefined for an entry that carried no command. */
  applied(index: number, result: ApplyResult | undefined): void;
  /** A snapshot replaced the catalog: at start the node's latest saved one, later one the meta leader sent. */
  restored(index: number, atStart: boolean): void;
}

const catalogRecord = Object.freeze({ payloadCrc: undefined, range: undefined });

export class CatalogMachine {
  state: CatalogState = newCatalogState();
  readonly snapshots = {
    kind: "inline" as const,
    everyEntries: catalogSnapshotEntries,
    logTailEntries: catalogLogTailEntries,
    snapshot: (index: number): Uint8Array => {
      assert(this.state.appliedIndex === index, () => `the catalog applied entry ${this.state.appliedIndex}, not ${index}, when its snapshot was taken`);
      return encodeCatalogSnapshot(this.state);
    },
    check: (index: number, data: Uint8Array): string | null => {
      try {
        const state = decodeCatalogSnapshot(data);
        return state.appliedIndex === index ? null : `it holds the catalog as of entry ${state.appliedIndex}, not ${index}`;
      } catch (e) {
        return (e as Error).message;
      }
    },
    restore: (index: number, data: Uint8Array, atStart: boolean): void => {
      const state = decodeCatalogSnapshot(data);
      assert(state.appliedIndex === index, () => `the catalog snapshot at entry ${index} holds entry ${state.appliedIndex}`);
      this.state = state;
      this.hooks.restored(index, atStart);
    },
  };

  constructor(private readonly hooks: CatalogHooks) {}

  /** A committed entry of the meta group; null: no command (a configuration change, a new leader's empty entry), which moves only the applied index. */
  apply(index: number, command: Uint8Array | null): void {
    if (command === null) {
      skipEntry(this.state, index);
      this.hooks.applied(index, undefined);
      return;
    }
    this.hooks.applied(index, applyEntry(this.state, command, index));
  }

  /** Catalog commands carry no checksums (the store hashes them) and name no volume range (a damaged one cuts the log). */
  commandRecord(_command: Uint8Array): { payloadCrc: undefined; range: undefined } {
    return catalogRecord;
  }

  lost(index: number): void {
    assert(false, () => `catalog entry ${index} cannot be lost: it names no range`);
  }
}
