// The leader's view of each follower (etcd's tracker/): how far its log
// matches, what to send next, and the flow-control state.
//
//   probe:     we do not know where the follower's log matches; send one
//              append, then wait for its answer (or a heartbeat response).
//   replicate: the follower is keeping up; stream appends optimistically,
//              at most inflightMsgsMax / inflightBytesMax unacknowledged.
//   snapshot:  the follower needs a snapshot; send nothing until the caller
//              reports the snapshot applied or failed, or the follower acks it.

import { assert } from "../base/assert.js";
import { majorityIndex } from "./quorum.js";
import type { ConfState, NodeId } from "./types.js";

export const ProgressState = { probe: 0, replicate: 1, snapshot: 2 } as const;
export type ProgressState = (typeof ProgressState)[keyof typeof ProgressState];
export const progressStateNames = ["probe", "replicate", "snapshot"] as const;

/** A ring of the last index (and bytes) of each append in flight. Grows on demand, so idle followers cost little. */
export class Inflights {
  private indexes: number[] = [];
  private sizes: number[] = [];
  private start = 0;
  count = 0;
  bytes = 0;

  constructor(
    readonly countMax: number,
    readonly bytesMax: number,
  ) {
    assert(countMax > 0, "inflight window holds at least one message");
  }

  full(): boolean {
    return this.count === this.countMax || (this.bytesMax > 0 && this.bytes >= this.bytesMax);
  }

  add(index: number, bytes: number): void {
    assert(!this.full(), "cannot add to a full inflight window");
    if (this.count === this.indexes.length) this.grow();
    const cap = this.indexes.length;
    const at = (this.start + this.count) % cap;
    this.indexes[at] = index;
    this.sizes[at] = bytes;
    this.count++;
    this.bytes += bytes;
  }

  /** Frees every append whose last index is <= `index` (the follower acknowledged them). */
  freeLE(index: number): void {
    const cap = this.indexes.length;
    while (this.count > 0) {
      const at = this.start;
      if ((this.indexes[at] as number) > index) break;
      this.bytes -= this.sizes[at] as number;
      this.start = (at + 1) % cap;
      this.count--;
    }
    if (this.count === 0) this.start = 0;
  }

  freeFirstOne(): void {
    if (this.count === 0) return;
    this.freeLE(this.indexes[this.start] as number);
  }

  reset(): void {
    this.start = 0;
    this.count = 0;
    this.bytes = 0;
  }

  private grow(): void {
    const cap = this.indexes.length;
    const next = Math.min(this.countMax, Math.max(4, cap * 2));
    const indexes: number[] = new Array<number>(next).fill(0);
    const sizes: number[] = new Array<number>(next).fill(0);
    for (let k = 0; k < this.count; k++) {
      indexes[k] = this.indexes[(this.start + k) % cap] as number;
      sizes[k] = this.sizes[(this.start + k) % cap] as number;
    }
    this.indexes = indexes;
    this.sizes = sizes;
    this.start = 0;
  }
}

export class Progress {
  match = 0;
  next: number;
  state: ProgressState = ProgressState.probe;
  /** In snapshot state: the index of the snapshot being sent. */
  pendingSnapshot = 0;
  /** Heard from since the last CheckQuorum round (the leader itself is always active). */
  recentActive = false;
  /** In probe state: an append is out and we wait for its answer before sending another. */
  probeSent = false;
  /** In probe state: the append at the compaction point went out (Raft.sendAppend); if it is refused, a snapshot follows. */
  baseProbed = false;
  /**
   * A heartbeat response may nudge flow control (unpause a probe, free an
   * inflight slot, send an append) once per periodic heartbeat. ReadIndex
   * rounds send heartbeats as often as reads arrive: nudging on each of those
   * sent a lagging follower a full append batch per read round, read from disk
   * on the event loop (a leader stalled for 20 s after a partition healed).
   */
  heartbeatNudge = true;
  readonly inflights: Inflights;

  constructor(next: number, inflightMsgsMax: number, inflightBytesMax: number) {
    this.next = next;
    this.inflights = new Inflights(inflightMsgsMax, inflightBytesMax);
  }

  becomeProbe(): void {
    if (this.state === ProgressState.snapshot) {
      const pending = this.pendingSnapshot;
      this.resetState(ProgressState.probe);
      this.next = Math.max(this.match + 1, pending + 1);
    } else {
      this.resetState(ProgressState.probe);
      this.next = this.match + 1;
    }
  }

  /** The member's log ends at `index`, below the match counted for it (it lost acknowledged entries): probe from there. */
  forgetMatch(index: number): void {
    assert(index < this.match, "only a lower match is forgotten");
    this.match = index;
    this.becomeProbe();
  }

  becomeReplicate(): void {
    this.resetState(ProgressState.replicate);
    this.next = this.match + 1;
  }

  becomeSnapshot(index: number): void {
    this.resetState(ProgressState.snapshot);
    this.pendingSnapshot = index;
  }

  /** An acknowledgment up to n; returns whether match moved. */
  maybeUpdate(n: number): boolean {
    let updated = false;
    if (this.match < n) {
      this.match = n;
      updated = true;
      this.probeSent = false;
    }
    this.next = Math.max(this.next, n + 1);
    return updated;
  }

  /**
   * A rejection of the append at `rejected`; `matchHint` is the highest index
   * that may match. Returns false if the rejection is stale (out of order).
   */
  maybeDecrTo(rejected: number, matchHint: number): boolean {
    if (this.state === ProgressState.replicate) {
      if (rejected <= this.match) return false;
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, matchHint + 1), this.match + 1);
    this.probeSent = false;
    return true;
  }

  isPaused(): boolean {
    switch (this.state) {
      case ProgressState.probe:
        return this.probeSent;
      case ProgressState.replicate:
        return this.inflights.full();
      default:
        return true;
    }
  }

  private resetState(state: ProgressState): void {
    this.probeSent = false;
    this.baseProbed = false;
    this.pendingSnapshot = 0;
    this.state = state;
    this.inflights.reset();
  }
}

/** A member's replication as its leader sees it: plain data, a copy of the leader's Progress. */
export interface MemberProgress {
  id: NodeId;
  /** A learner receives the log but counts for neither commit nor elections. */
  learner: boolean;
  /** The highest index known to be in the member's log. */
  match: number;
  /** The next index the leader sends it. */
  next: number;
  state: ProgressState;
  /** Heard from within the leader's current CheckQuorum round (an election timeout); the leader itself always is. */
  recentActive: boolean;
  /** In snapshot state: the index of the snapshot being sent; otherwise 0. */
  pendingSnapshot: number;
  /** The leader sends it nothing now (a probe unanswered, a full window, a snapshot in flight). */
  paused: boolean;
  /** Appends sent and not yet acknowledged. */
  inflightMsgs: number;
}

/** The configuration in force and, on the leader, the progress of every member. */
export class ProgressTracker {
  // Replaced (never changed in place) when a configuration takes effect, and
  // frozen: RaftNode.status() hands them out without a copy.
  voters: readonly NodeId[] = Object.freeze([]);
  learners: readonly NodeId[] = Object.freeze([]);
  /** Every member (voters and learners), in a stable order for deterministic sends. */
  members: readonly NodeId[] = Object.freeze([]);
  readonly progress = new Map<NodeId, Progress>();
  readonly votes = new Map<NodeId, boolean>();
  private readonly scratch: number[] = [];
  private readonly matchOf = (id: NodeId): number => this.progress.get(id)?.match ?? 0;

  constructor(
    readonly inflightMsgsMax: number,
    readonly inflightBytesMax: number,
  ) {}

  isVoter(id: NodeId): boolean {
    return this.voters.includes(id);
  }

  isLearner(id: NodeId): boolean {
    return this.learners.includes(id);
  }

  confState(): ConfState {
    return { voters: [...this.voters], learners: [...this.learners] };
  }

  /** Takes `conf` into force; members that are new start probing at `nextIndex`. */
  setConf(conf: ConfState, nextIndex: number): void {
    this.voters = Object.freeze([...conf.voters].sort((a, b) => a - b));
    this.learners = Object.freeze([...conf.learners].sort((a, b) => a - b));
    this.members = Object.freeze([...this.voters, ...this.learners]);
    for (const id of [...this.progress.keys()]) {
      if (!this.members.includes(id)) this.progress.delete(id);
    }
    for (const id of this.members) {
      if (!this.progress.has(id)) {
        const pr = new Progress(nextIndex, this.inflightMsgsMax, this.inflightBytesMax);
        // A new member counts as active so that CheckQuorum gives it a round to answer.
        pr.recentActive = true;
        this.progress.set(id, pr);
      }
    }
  }

  /** Forgets every follower's state (a new term): all probe from `nextIndex`. */
  resetProgress(nextIndex: number): void {
    for (const pr of this.progress.values()) {
      pr.match = 0;
      pr.next = nextIndex;
      pr.recentActive = false;
      pr.becomeProbe();
      pr.next = nextIndex;
    }
  }

  /** The highest index acknowledged by a majority of voters. */
  committedIndex(): number {
    return majorityIndex(this.voters, this.matchOf, this.scratch);
  }

  resetVotes(): void {
    this.votes.clear();
  }

  recordVote(id: NodeId, granted: boolean): void {
    if (!this.votes.has(id)) this.votes.set(id, granted);
  }
}
