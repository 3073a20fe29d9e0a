// The Raft core's public surface. See docs/raft.md for the contract.

export { RaftNode, entriesBytes } from "./node.js";
export type { Ready, Status } from "./node.js";
export type { RaftConfig } from "./raft.js";
export {
  MemoryStorage,
  StorageError,
  CompactedError,
  UnavailableError,
  SnapshotUnavailableError,
  SnapshotOutOfDateError,
} from "./storage.js";
export type { Storage, InitialState } from "./storage.js";
export {
  ConfChangeType,
  applyConfChange,
  encodeConfChange,
  decodeConfChange,
  confStatesEqual,
} from "./confchange.js";
export type { ConfChange, ConfChangeEntry } from "./confchange.js";
export { ProgressState, progressStateNames } from "./progress.js";
export type { MemberProgress } from "./progress.js";
export {
  EntryType,
  MessageType,
  StateRole,
  noNode,
  roleNames,
  campaignTransferContext,
  emptyHardState,
  isEmptyHardState,
} from "./types.js";
export type { ConfState, Entry, HardState, Message, NodeId, ReadState, Snapshot, SnapshotMeta, SoftState } from "./types.js";
