// RaftNode: the core's public face (etcd's RawNode). Inputs are tick, step,
// propose, proposeConfChange, readIndex, transferLeadership; the output is a
// Ready, which the caller handles in this order and then acknowledges with
// advance():
//
//   1. persist: write `snapshot` (if any), `entries` (replacing any stored
//      suffix from the first entry's index on) and `hardState` (if any) to
//      stable storage, in any order (the hard state's commit index covers
//      only entries on disk before this Ready, so a crash between the writes
//      is safe); if `mustSync`, fdatasync before step 2;
//   2. send `messages` (they may depend on the state persisted in step 1: a
//      vote, an append acknowledgment; that is why they wait for it);
//   3. apply `snapshot` to the state machine (if any), then `committedEntries`
//      in order; answer `readStates` once the applied index reaches each one's index;
//   4. call advance().
//
// `committedEntries` are already on disk here (the core hands out no others),
// so the caller may apply them at once, before step 1 completes. Between
// ready() and advance() the caller may keep calling tick/step/propose (their
// effects come out in the next Ready) and takeCommitted() (commits learned
// meanwhile, applied at once), but not ready() again. A leader
// counts its own log toward commit only after advance() confirmed it is on
// disk, so nothing is ever committed (or acknowledged to a client) before a
// quorum has persisted it, even in a single-node group.

import { assert } from "../base/assert.js";
import type { ConfChange } from "./confchange.js";
import { Raft } from "./raft.js";
import type { RaftConfig } from "./raft.js";
import type { MemberProgress } from "./progress.js";
import type { Entry, HardState, Message, NodeId, ReadState, Snapshot, SoftState } from "./types.js";
import { entryBytes, StateRole } from "./types.js";

export interface Ready {
  /** Set when the leader or this node's role changed; needs no persistence. */
  softState: SoftState | null;
  /** Set when term, vote or commit changed: persist it. Its commit covers only entries on disk before this Ready (see commitToPersist). */
  hardState: HardState | null;
  /** Entries to append to stable storage before sending messages. */
  entries: Entry[];
  /** A snapshot from the leader to persist and apply (the log before it is gone). */
  snapshot: Snapshot | null;
  /** Entries to apply, in order; all are committed and already persisted here, so they may be applied before step 1. */
  committedEntries: Entry[];
  /** Messages to send after step 1. */
  messages: Message[];
  /** Confirmed ReadIndex requests. */
  readStates: ReadState[];
  /** Whether step 1 must fdatasync (term, vote or entries changed); a commit-only change need not. */
  mustSync: boolean;
}

/** What a node is now. Cheap (one object; the configuration's arrays are shared and frozen), so callers may ask per request. */
export interface Status {
  id: NodeId;
  term: number;
  vote: NodeId;
  commit: number;
  applied: number;
  lastIndex: number;
  lead: NodeId;
  role: StateRole;
  /** The configuration in force (the last config entry in the log, committed or not), sorted. */
  voters: readonly NodeId[];
  learners: readonly NodeId[];
  /** This node owes log entries it lost (RaftConfig.votesWithheldUntil): it neither votes nor campaigns yet. */
  votesWithheld: boolean;
  /** A snapshot from the leader taken and not yet persisted (the next Ready carries it): its index, or 0. */
  pendingSnapshotIndex: number;
}

const noMessages: Message[] = [];
const noEntries: Entry[] = [];
const noReads: ReadState[] = [];
Object.freeze(noMessages);
Object.freeze(noEntries);
Object.freeze(noReads);

export class RaftNode {
  // The protocol state. Not part of the API: callers ask through the methods
  // below; the core's own tests and simulator look inside with inspectCore().
  private readonly raft: Raft;
  // What the caller already has (persisted hard state, last soft state), compared field by field so hasReady() allocates nothing.
  private hsTerm: number;
  private hsVote: NodeId;
  private hsCommit: number;
  private ssLead: NodeId;
  private ssRole: StateRole;
  private outstanding = false;
  // What the outstanding Ready handed out, for advance().
  private readyLastIndex = 0;
  private readyLastTerm = 0;
  private readySnapshotIndex = 0;
  private readyApplied = 0;

  constructor(cfg: RaftConfig) {
    this.raft = new Raft(cfg);
    const hs = cfg.storage.initialState().hardState;
    this.hsTerm = hs.term;
    this.hsVote = hs.vote;
    this.hsCommit = hs.commit;
    this.ssLead = this.raft.lead;
    this.ssRole = this.raft.role;
  }

  tick(): void {
    this.raft.tick();
  }

  step(m: Message): void {
    this.raft.step(m);
  }

  campaign(): void {
    this.raft.campaign();
  }

  /** The role, term and leader known now; unlike status(), these allocate nothing (the driver asks on every proposal). */
  role(): StateRole {
    return this.raft.role;
  }

  term(): number {
    return this.raft.term;
  }

  lead(): NodeId {
    return this.raft.lead;
  }

  /** Whether `id` is the configuration's only member (one voter, no learners). */
  onlyMember(id: NodeId): boolean {
    const voters = this.raft.tracker.voters;
    return voters.length === 1 && voters[0] === id && this.raft.tracker.learners.length === 0;
  }

  /** Whether `id` is the configuration's only voter. */
  soleVoter(id: NodeId): boolean {
    const voters = this.raft.tracker.voters;
    return voters.length === 1 && voters[0] === id;
  }

  /** Returns the new entry's index, or 0 if dropped (not the leader, transferring, or over uncommittedBytesMax). */
  propose(data: Uint8Array): number {
    return this.raft.propose(data);
  }

  proposeConfChange(change: ConfChange): { index: number } | { refused: string } {
    return this.raft.proposeConfChange(change);
  }

  readIndex(context: Uint8Array): boolean {
    return this.raft.readIndex(context);
  }

  transferLeadership(to: NodeId): boolean {
    return this.raft.transferLeadership(to);
  }

  reportUnreachable(id: NodeId): void {
    this.raft.reportUnreachable(id);
  }

  reportSnapshot(id: NodeId, ok: boolean): void {
    this.raft.reportSnapshot(id, ok);
  }

  status(): Status {
    const r = this.raft;
    return {
      id: r.id,
      term: r.term,
      vote: r.vote,
      commit: r.log.committed,
      applied: r.log.applied,
      lastIndex: r.log.lastIndex(),
      lead: r.lead,
      role: r.role,
      voters: r.tracker.voters,
      learners: r.tracker.learners,
      votesWithheld: r.withholdingVotes(),
      pendingSnapshotIndex: r.pendingSnapshotIndex(),
    };
  }

  /** On the leader: every member's replication progress (itself included), voters then learners; undefined elsewhere. Allocates per member. */
  progress(): MemberProgress[] | undefined {
    return this.raft.memberProgress();
  }

  /**
   * The leader's snapshot base shows its entry at `index` has `term` and is
   * committed: commit up to `index` if this node follows `leader` and holds
   * that entry with that term (Log Matching: its log up to there is then the
   * leader's). Returns whether the commit index now covers `index`; the
   * entries come out in a later Ready's committedEntries. See
   * Raft.commitFromLeaderBase.
   */
  commitFromLeaderBase(leader: NodeId, index: number, term: number): boolean {
    return this.raft.commitFromLeaderBase(leader, index, term);
  }

  /** Cheap: whether ready() would return anything. */
  hasReady(): boolean {
    const r = this.raft;
    if (this.outstanding) return false;
    return (
      r.bcastPending ||
      r.msgs.length > 0 ||
      r.readStates.length > 0 ||
      r.log.hasUnstable() ||
      r.log.hasNextCommittedEntries() ||
      r.term !== this.hsTerm ||
      r.vote !== this.hsVote ||
      (r.log.committed !== this.hsCommit && this.commitToPersist() !== this.hsCommit) ||
      r.lead !== this.ssLead ||
      r.role !== this.ssRole
    );
  }

  ready(): Ready {
    assert(!this.outstanding, "ready() called again before advance()");
    const r = this.raft;
    r.flush();
    const log = r.log;
    const termOrVoteChanged = r.term !== this.hsTerm || r.vote !== this.hsVote;
    const commit = this.commitToPersist();
    let hardState: HardState | null = null;
    if (termOrVoteChanged || commit !== this.hsCommit) {
      hardState = { term: r.term, vote: r.vote, commit };
      this.hsTerm = r.term;
      this.hsVote = r.vote;
      this.hsCommit = commit;
    }
    let softState: SoftState | null = null;
    if (r.lead !== this.ssLead || r.role !== this.ssRole) {
      softState = { lead: r.lead, role: r.role };
      this.ssLead = r.lead;
      this.ssRole = r.role;
    }
    const entries = log.unstable.length > 0 ? log.unstable.slice() : noEntries;
    const tail = entries[entries.length - 1];
    this.readyLastIndex = tail === undefined ? 0 : tail.index;
    this.readyLastTerm = tail === undefined ? 0 : tail.term;
    const snapshot = log.unstableSnapshot;
    this.readySnapshotIndex = snapshot === null ? 0 : snapshot.meta.index;
    const committedEntries = this.handOutCommitted();
    const lastApplied = committedEntries[committedEntries.length - 1];
    this.readyApplied = lastApplied === undefined ? 0 : lastApplied.index;
    const messages = r.msgs.length > 0 ? r.msgs : noMessages;
    if (messages !== noMessages) r.msgs = [];
    const readStates = r.readStates.length > 0 ? r.readStates : noReads;
    if (readStates !== noReads) r.readStates = [];
    this.outstanding = true;
    return {
      softState,
      hardState,
      entries,
      snapshot,
      committedEntries,
      messages,
      readStates,
      mustSync: termOrVoteChanged || entries.length > 0 || snapshot !== null,
    };
  }

  /**
   * The commit index a Ready's hard state carries: at most the last entry that
   * was on disk, and agreed with this log, before the Ready's own writes. Step
   * 1 writes entries and hard state, and a crash may leave either without the
   * other; a commit index over entries of the same Ready would then, after a
   * restart, cover entries the node does not hold, or a stale suffix the Ready
   * was replacing (applied as committed). While a snapshot waits to be
   * persisted, the log on disk may disagree anywhere above the last commit
   * persisted, so that one stays. The rest follows in the next Ready (a
   * commit-only hard state, no sync): the commit index is volatile in Raft,
   * learned again from the leader.
   */
  private commitToPersist(): number {
    const r = this.raft;
    if (r.log.unstableSnapshot !== null) return this.hsCommit;
    return Math.max(this.hsCommit, Math.min(r.log.committed, r.stableLastIndex()));
  }

  /**
   * While the caller holds a Ready (its persist is running): committed entries
   * that are on disk here and were not handed out yet, for the caller to apply
   * now, after the Ready's own committedEntries; they count as applied at once.
   * A leader learns most commits from acknowledgements that arrive while its
   * next batch is being persisted; without this they would wait for that
   * fdatasync as well (etcd raft's asynchronous storage writes allow the same).
   */
  takeCommitted(): Entry[] {
    if (!this.outstanding) return noEntries;
    const entries = this.handOutCommitted();
    const last = entries[entries.length - 1];
    if (last !== undefined) this.raft.log.appliedTo(last.index);
    return entries;
  }

  /** The next committed entries on disk, marked as handed out; a leader stops counting them as uncommitted. */
  private handOutCommitted(): Entry[] {
    const r = this.raft;
    const log = r.log;
    if (!log.hasNextCommittedEntries()) return noEntries;
    const entries = log.nextCommittedEntries(r.cfg.committedBytesMax);
    const last = entries[entries.length - 1];
    if (last === undefined) return noEntries;
    log.applying = last.index;
    if (r.role === StateRole.leader) {
      let bytes = 0;
      for (const e of entries) bytes += e.data.byteLength;
      r.releaseUncommitted(bytes);
    }
    return entries;
  }

  /** The caller handled the last Ready (persisted, sent, applied). */
  advance(): void {
    assert(this.outstanding, "advance() without a Ready");
    this.outstanding = false;
    const log = this.raft.log;
    if (this.readySnapshotIndex > 0) {
      log.stableSnapshotTo(this.readySnapshotIndex);
      log.appliedTo(this.readySnapshotIndex);
    }
    if (this.readyLastIndex > 0) log.stableTo(this.readyLastIndex, this.readyLastTerm);
    if (this.readyApplied > 0) log.appliedTo(this.readyApplied);
    this.readySnapshotIndex = 0;
    this.readyLastIndex = 0;
    this.readyApplied = 0;
    this.raft.onPersisted();
  }
}

/**
 * The protocol state under a node, for the core's own tests, transcripts and
 * simulator, which check invariants inside it. Not exported by index.ts;
 * code outside src/raft and test/ must not use it (test/unit/raft-boundary.test.ts).
 */
export function inspectCore(node: RaftNode): Raft {
  // Element access reaches a TypeScript-private field: this one accessor is the way in.
  return node["raft"];
}

/** Bytes of entries, as the core counts them against its limits. */
export function entriesBytes(entries: readonly Entry[]): number {
  let n = 0;
  for (const e of entries) n += entryBytes(e);
  return n;
}
