// Plain-data types of the Raft core. Every value that crosses the core's
// boundary (messages, entries, hard state, snapshots) is a plain object of
// numbers, booleans, arrays and Uint8Arrays, so msgpackr encodes it as is.
// No classes with methods, no Maps.

/** A node id is a positive safe integer; 0 means "nobody". */
export type NodeId = number;
export const noNode: NodeId = 0;

export const EntryType = {
  /** Application data (a volume write, a catalog command) or a leader's empty no-op. */
  normal: 0,
  /** A membership change; `data` is encodeConfChange(...) and carries the whole new configuration. */
  confChange: 1,
} as const;
export type EntryType = (typeof EntryType)[keyof typeof EntryType];

export interface Entry {
  term: number;
  index: number;
  type: EntryType;
  data: Uint8Array;
}

/** The state that must be on disk before any message that depends on it leaves the node. */
export interface HardState {
  term: number;
  /** The candidate this node voted for in `term`, or noNode. */
  vote: NodeId;
  commit: number;
}

/** A configuration: the voters (count for quorums and elections) and learners (receive the log only). */
export interface ConfState {
  voters: NodeId[];
  learners: NodeId[];
}

export interface SnapshotMeta {
  index: number;
  term: number;
  /** The configuration in force at `index` (that of the last config entry at or before it). */
  conf: ConfState;
}

export interface Snapshot {
  meta: SnapshotMeta;
  /** Opaque application state; the core never looks inside. The transport may stream it in chunks. */
  data: Uint8Array;
}

export const MessageType = {
  /** AppendEntries (§5.3): index/logTerm name the entry before `entries`; commit is the leader's. */
  app: 1,
  /** Reply to app or snap: index = last index now matching, or (reject) the rejected index. */
  appResp: 2,
  /** RequestVote (§5.2): index/logTerm are the candidate's last entry. */
  vote: 3,
  voteResp: 4,
  /** PreVote (thesis §9.6): as vote, for term+1, without anyone changing its term. */
  preVote: 5,
  preVoteResp: 6,
  /** InstallSnapshot (§7): snapshot carries the metadata (and the data, or the transport streams it). */
  snap: 7,
  /** Heartbeat: commit = min(follower's match, leader's commit); context = the ReadIndex round, if any. */
  heartbeat: 8,
  heartbeatResp: 9,
  /** Leadership transfer (thesis §3.10): the receiver campaigns at once. */
  timeoutNow: 10,
} as const;
export type MessageType = (typeof MessageType)[keyof typeof MessageType];

/**
 * One message between cores. Every field is always present (one object shape,
 * cheap to build and to encode); fields a type does not use are 0, false,
 * [] or null.
 */
export interface Message {
  type: MessageType;
  from: NodeId;
  to: NodeId;
  term: number;
  logTerm: number;
  index: number;
  entries: Entry[];
  commit: number;
  reject: boolean;
  /** On a rejected appResp: the follower's guess of the last index that may match. */
  rejectHint: number;
  snapshot: Snapshot | null;
  /**
   * heartbeat/heartbeatResp: the ReadIndex context being confirmed.
   * vote/preVote: non-null (campaignTransferContext) when the campaign comes from a leadership
   * transfer, which lets it through the CheckQuorum lease of the voters.
   */
  context: Uint8Array | null;
}

export const StateRole = {
  follower: 0,
  preCandidate: 1,
  candidate: 2,
  leader: 3,
} as const;
export type StateRole = (typeof StateRole)[keyof typeof StateRole];

export const roleNames = ["follower", "pre-candidate", "candidate", "leader"] as const;

/** Volatile state worth showing (who leads, what we are); it needs no persistence. */
export interface SoftState {
  lead: NodeId;
  role: StateRole;
}

/** A confirmed read: once the application has applied `index`, a read for `context` is linearizable. */
export interface ReadState {
  index: number;
  context: Uint8Array;
}

export const campaignTransferContext: Uint8Array = new Uint8Array([0x74]); // 't'

export function emptyHardState(): HardState {
  return { term: 0, vote: noNode, commit: 0 };
}

export function isEmptyHardState(hs: HardState): boolean {
  return hs.term === 0 && hs.vote === noNode && hs.commit === 0;
}

export function entryBytes(e: Entry): number {
  // The payload dominates; 24 bytes approximates term, index and type on the wire.
  return e.data.byteLength + 24;
}

export function newMessage(type: MessageType, from: NodeId, to: NodeId, term: number): Message {
  return {
    type,
    from,
    to,
    term,
    logTerm: 0,
    index: 0,
    entries: [],
    commit: 0,
    reject: false,
    rejectHint: 0,
    snapshot: null,
    context: null,
  };
}

export function isResponse(type: MessageType): boolean {
  return (
    type === MessageType.appResp ||
    type === MessageType.voteResp ||
    type === MessageType.preVoteResp ||
    type === MessageType.heartbeatResp
  );
}

/**
 * A leader's messages that may leave before the Ready carrying them is
 * persisted (Raft thesis 10.2.1): appends, heartbeats and transfer orders.
 * The leader counts itself toward a commit only after advance(), so nothing
 * commits before a quorum has it on disk. Votes and acknowledgements wait for
 * the persist they promise; snapshots are sent by the caller's own path.
 */
export function mayPrecedePersist(type: MessageType): boolean {
  return type === MessageType.app || type === MessageType.heartbeat || type === MessageType.timeoutNow;
}
