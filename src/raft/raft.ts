// The Raft protocol as a pure state machine (Ongaro & Ousterhout, "In Search
// of an Understandable Consensus Algorithm", and Ongaro's thesis). It reads
// the log through RaftLog/Storage, and its only outputs are fields the
// RaftNode turns into a Ready: hard state, unstable entries, messages (in
// `msgs`), committed entries and read states. Time is tick(); randomness is
// injected. Section numbers in comments are the paper's.

import { assert, assertNever } from "../base/assert.js";
import { applyConfChange, cloneConfState, decodeConfChange, encodeConfChange } from "./confchange.js";
import type { ConfChange } from "./confchange.js";
import { RaftLog } from "./log.js";
import { Progress, ProgressState, ProgressTracker } from "./progress.js";
import type { MemberProgress } from "./progress.js";
import { isQuorum, voteResult, VoteResult } from "./quorum.js";
import type { Storage } from "./storage.js";
import { CompactedError, SnapshotUnavailableError } from "./storage.js";
import type { ConfState, Entry, Message, NodeId, ReadState, Snapshot } from "./types.js";
import {
  campaignTransferContext,
  EntryType,
  entryBytes,
  MessageType,
  newMessage,
  noNode,
  StateRole,
} from "./types.js";

export interface RaftConfig {
  id: NodeId;
  storage: Storage;
  /** The index the application has applied (its state includes it); committed entries after it are re-delivered. */
  applied?: number;
  electionTicks: number;
  heartbeatTicks: number;
  /** Injected randomness for election jitter: an integer in [0, n). */
  random: { int(n: number): number };
  preVote: boolean;
  checkQuorum: boolean;
  appendBytesMax: number;
  inflightMsgsMax: number;
  inflightBytesMax: number;
  uncommittedBytesMax: number;
  readIndexPendingMax: number;
  committedBytesMax: number;
  /**
   * This node lost log entries it may have acknowledged (its storage found
   * them damaged and cut the log): until its log reaches this index again it
   * neither votes nor campaigns, so a candidate missing a committed entry
   * cannot win with its vote. It still replicates, and counts toward commits
   * of what it really holds. 0 or absent: nothing is owed.
   */
  votesWithheldUntil?: number;
}

interface ReadRequest {
  index: number;
  context: Uint8Array;
  key: string;
  acks: Set<NodeId>;
}

interface ConfPoint {
  index: number;
  conf: ConfState;
}

export class Raft {
  readonly id: NodeId;
  readonly cfg: RaftConfig;
  readonly log: RaftLog;
  readonly tracker: ProgressTracker;
  term = 0;
  vote: NodeId = noNode;
  lead: NodeId = noNode;
  role: StateRole = StateRole.follower;
  /** Outgoing messages; RaftNode hands them out in a Ready after the state they depend on is persisted. */
  msgs: Message[] = [];
  readStates: ReadState[] = [];
  electionElapsed = 0;
  heartbeatElapsed = 0;
  randomizedElectionTimeout = 0;
  leadTransferee: NodeId = noNode;
  /** Leader: bytes of entries proposed in this term and not yet handed out as committed. */
  uncommittedBytes = 0;
  /** Leader: entries were appended and followers have not been sent them yet (batched until ready()). */
  bcastPending = false;
  /** RaftConfig.votesWithheldUntil, cleared once the log reaches it. */
  private votesWithheldUntil: number;
  /** Leader: ReadIndex requests waiting for quorum confirmation, oldest first. */
  private readQueue: ReadRequest[] = [];
  private readByKey = new Map<string, ReadRequest>();
  /** Leader: ReadIndex requests that arrived before the leader committed an entry of its term. */
  private readsBeforeCommit: Uint8Array[] = [];
  /**
   * Config points: [0] is the configuration at or below the commit point (the
   * snapshot's, or the last committed config entry), the rest are config
   * entries above it, in index order. The last one is in force (§4.1 of the thesis:
   * a configuration takes effect when its entry is appended).
   */
  confPoints: ConfPoint[];

  constructor(cfg: RaftConfig) {
    assert(cfg.id > 0 && Number.isSafeInteger(cfg.id), "node id is a positive integer");
    assert(cfg.heartbeatTicks > 0 && cfg.electionTicks > cfg.heartbeatTicks, "heartbeats are more frequent than elections");
    assert(cfg.appendBytesMax > 0 && cfg.inflightMsgsMax > 0 && cfg.committedBytesMax > 0, "raft limits are positive");
    this.id = cfg.id;
    this.cfg = cfg;
    this.votesWithheldUntil = cfg.votesWithheldUntil ?? 0;
    const storage = cfg.storage;
    const init = storage.initialState();
    this.log = new RaftLog(storage, cfg.applied ?? 0);
    this.tracker = new ProgressTracker(cfg.inflightMsgsMax, cfg.inflightBytesMax);
    const hs = init.hardState;
    if (hs.term !== 0 || hs.commit !== 0) {
      assert(hs.commit >= this.log.committed && hs.commit <= this.log.lastIndex(),
        `hard state commit ${hs.commit} is outside the stored log [${this.log.committed}, ${this.log.lastIndex()}]`);
      this.log.committed = hs.commit;
    }
    assert(this.log.applied <= this.log.committed, () => `applied ${this.log.applied} is past commit ${this.log.committed}`);
    this.term = hs.term;
    this.vote = hs.vote;
    this.confPoints = [{ index: storage.firstIndex() - 1, conf: cloneConfState(init.confState) }];
    this.replayStoredConfEntries();
    this.tracker.setConf(this.currentConf(), this.log.lastIndex() + 1);
    this.becomeFollower(this.term, noNode);
  }

  // ---- inputs ----

  tick(): void {
    if (this.role === StateRole.leader) this.tickHeartbeat();
    else this.tickElection();
  }

  /** Starts an election now (what a timeout would do); ignored by a leader and a non-voter. */
  campaign(): void {
    this.hup(false);
  }

  step(m: Message): void {
    assert(m.to === this.id, () => `message for ${m.to} stepped into ${this.id}`);
    assert(m.from !== this.id && m.from !== noNode, "messages come from another node");
    if (m.term > this.term) {
      if (m.type === MessageType.vote || m.type === MessageType.preVote) {
        const transfer = m.context !== null;
        const inLease = this.cfg.checkQuorum && this.lead !== noNode && this.electionElapsed < this.cfg.electionTicks;
        // Thesis §4.2.3 / §9.6: while we hear from a leader, a higher-term candidate
        // (a removed node, a partitioned node) is ignored and cannot disrupt the group.
        if (inLease && !transfer) return;
      }
      if (m.type === MessageType.preVote) {
        // A pre-vote does not change our term.
      } else if (m.type === MessageType.preVoteResp && !m.reject) {
        // A granted pre-vote carries the term we asked for; counted below.
      } else if (m.type === MessageType.app || m.type === MessageType.heartbeat || m.type === MessageType.snap) {
        this.becomeFollower(m.term, m.from);
      } else {
        this.becomeFollower(m.term, noNode);
      }
    } else if (m.term < this.term) {
      if (m.type === MessageType.heartbeat || m.type === MessageType.app) {
        // §5.1: a stale leader learns our term from this and steps down. Answering
        // always (not only with PreVote/CheckQuorum as etcd does) matters when peers
        // differ in those settings: a node whose term ran ahead would otherwise stay
        // cut off while its votes are ignored by leased peers.
        this.send(newMessage(MessageType.appResp, this.id, m.from, this.term));
      } else if (m.type === MessageType.preVote) {
        const r = newMessage(MessageType.preVoteResp, this.id, m.from, this.term);
        r.reject = true;
        this.send(r);
      }
      return; // §5.1: stale terms are ignored
    }

    switch (m.type) {
      case MessageType.vote:
      case MessageType.preVote:
        this.handleVoteRequest(m);
        return;
      default:
        break;
    }
    switch (this.role) {
      case StateRole.leader:
        this.stepLeader(m);
        return;
      case StateRole.candidate:
      case StateRole.preCandidate:
        this.stepCandidate(m);
        return;
      case StateRole.follower:
        this.stepFollower(m);
        return;
      default:
        assertNever(this.role);
    }
  }

  /** Appends a normal entry; returns its index, or 0 if dropped (not leader, transferring, too much uncommitted). */
  propose(data: Uint8Array): number {
    if (this.role !== StateRole.leader || this.leadTransferee !== noNode) return 0;
    return this.appendEntry(EntryType.normal, data);
  }

  /**
   * Proposes a one-server membership change. Refused (with the reason) unless
   * this node leads, has committed an entry of its term, and no earlier change is
   * uncommitted: so two changes are never in flight (see confchange.ts).
   */
  proposeConfChange(change: ConfChange): { index: number } | { refused: string } {
    if (this.role !== StateRole.leader) return { refused: `node ${this.id} is not the leader` };
    if (this.leadTransferee !== noNode) return { refused: "a leadership transfer is in progress" };
    if (!this.committedOwnTerm()) return { refused: "the leader has not yet committed an entry of its term" };
    const pending = this.lastConfPoint();
    if (pending.index > this.log.committed) return { refused: `config change at ${pending.index} is not committed yet` };
    const next = applyConfChange(this.currentConf(), change);
    if (typeof next === "string") return { refused: next };
    const index = this.appendEntry(EntryType.confChange, encodeConfChange({ change, conf: next }));
    if (index === 0) return { refused: "too many uncommitted bytes" };
    return { index };
  }

  /**
   * Asks for a linearizable read point (§6.4). Only the leader answers; the
   * answer is a ReadState once a quorum confirmed the leadership. Returns false
   * if the request was not taken (not leader, too many pending).
   */
  readIndex(context: Uint8Array): boolean {
    if (this.role !== StateRole.leader) return false;
    if (!this.committedOwnTerm()) {
      // §6.4 step 1: the commit index is only known current after an entry of this term commits.
      if (this.readsBeforeCommit.length >= this.cfg.readIndexPendingMax) return false;
      this.readsBeforeCommit.push(context);
      return true;
    }
    return this.startRead(context);
  }

  /** Hands leadership to `to` (thesis §3.10) once its log is caught up. Returns false if refused. */
  transferLeadership(to: NodeId): boolean {
    if (this.role !== StateRole.leader) return false;
    if (to === this.id || !this.tracker.isVoter(to)) return false;
    if (this.leadTransferee === to) return true;
    this.leadTransferee = to;
    // The transfer must finish within an election timeout or it is abandoned (tickHeartbeat).
    this.electionElapsed = 0;
    const pr = this.progressOf(to);
    if (pr.match === this.log.lastIndex()) this.sendTimeoutNow(to);
    else this.sendAppend(to, true);
    return true;
  }

  reportUnreachable(id: NodeId): void {
    if (this.role !== StateRole.leader) return;
    const pr = this.tracker.progress.get(id);
    if (pr !== undefined && pr.state === ProgressState.replicate) pr.becomeProbe();
  }

  /** The caller finished (ok) or gave up on sending the snapshot to `id`. */
  reportSnapshot(id: NodeId, ok: boolean): void {
    if (this.role !== StateRole.leader) return;
    const pr = this.tracker.progress.get(id);
    if (pr === undefined || pr.state !== ProgressState.snapshot) return;
    if (!ok) pr.pendingSnapshot = 0;
    pr.becomeProbe();
    // Wait for the follower's next heartbeat response before probing again.
    pr.probeSent = true;
  }

  /**
   * The caller learned out of band that the leader's entry at `index` has
   * `term` and is committed: the base of a delta snapshot the leader streams
   * (at or below the snapshot's index, which the leader had applied). Commits
   * up to `index` if this node follows `leader` and its own entry at `index`
   * has `term`; returns whether it did (or had already).
   *
   * Why that is safe, by Log Matching (§5.3): two logs that hold an entry with
   * the same index and term are identical up to it, so this node's log up to
   * `index` is the leader's, all of it committed; and a committed entry stays
   * committed (Leader Completeness, §5.4). It is what a heartbeat carrying
   * commit = `index` would let a follower whose match is `index` do, without a
   * message the leader never sent. An entry this node lacks (past its last
   * index, or compacted) or holds with another term commits nothing: there its
   * log is not known to be the leader's, and the leader's appends will decide.
   */
  commitFromLeaderBase(leader: NodeId, index: number, term: number): boolean {
    if (this.role !== StateRole.follower || leader === noNode || this.lead !== leader) return false;
    if (!this.log.matchTerm(index, term)) return false;
    assert(index <= this.log.lastIndex(), "a matching entry is in the log");
    this.log.commitTo(index);
    return true;
  }

  /** Leader: every member's replication progress, in member order (voters, then learners); undefined elsewhere. */
  memberProgress(): MemberProgress[] | undefined {
    if (this.role !== StateRole.leader) return undefined;
    const out: MemberProgress[] = [];
    for (const id of this.tracker.members) {
      const pr = this.progressOf(id);
      out.push({
        id,
        learner: this.tracker.isLearner(id),
        match: pr.match,
        next: pr.next,
        state: pr.state,
        recentActive: id === this.id || pr.recentActive,
        pendingSnapshot: pr.pendingSnapshot,
        paused: pr.isPaused(),
        inflightMsgs: pr.inflights.count,
      });
    }
    return out;
  }

  /** The index of a snapshot from the leader that this node took and has not yet persisted (a Ready carries it), or 0. */
  pendingSnapshotIndex(): number {
    return this.log.unstableSnapshot === null ? 0 : this.log.unstableSnapshot.meta.index;
  }

  /** RaftNode calls this from advance(): entries up to the stable last index are on our disk. */
  onPersisted(): void {
    if (this.role !== StateRole.leader) return;
    const self = this.tracker.progress.get(this.id);
    if (self === undefined) return; // a leader removing itself does not count its own log
    if (self.maybeUpdate(this.stableLastIndex()) && this.maybeCommit()) this.bcastAppend();
  }

  /** Called before a Ready is built: sends the appends that proposals since the last Ready batched up. */
  flush(): void {
    if (this.bcastPending) {
      this.bcastPending = false;
      if (this.role === StateRole.leader) this.bcastAppend();
    }
  }

  /** Committed entries were handed to the application: they no longer count against uncommittedBytesMax. */
  releaseUncommitted(bytes: number): void {
    this.uncommittedBytes = Math.max(0, this.uncommittedBytes - bytes);
  }

  currentConf(): ConfState {
    return this.lastConfPoint().conf;
  }

  // ---- roles (§5.2) ----

  becomeFollower(term: number, lead: NodeId): void {
    this.reset(term);
    this.lead = lead;
    this.role = StateRole.follower;
  }

  private becomePreCandidate(): void {
    assert(this.role !== StateRole.leader, "a leader does not pre-campaign");
    // A pre-candidate keeps its term and vote: nothing to persist (thesis §9.6).
    this.tracker.resetVotes();
    this.lead = noNode;
    this.role = StateRole.preCandidate;
  }

  private becomeCandidate(): void {
    assert(this.role !== StateRole.leader, "a leader does not campaign");
    this.reset(this.term + 1);
    this.vote = this.id; // §5.2: a candidate votes for itself
    this.role = StateRole.candidate;
  }

  private becomeLeader(): void {
    assert(this.role === StateRole.candidate, "only a candidate becomes leader");
    this.reset(this.term);
    this.lead = this.id;
    this.role = StateRole.leader;
    const self = this.tracker.progress.get(this.id);
    if (self !== undefined) {
      self.match = this.stableLastIndex();
      self.becomeReplicate();
      self.next = this.log.lastIndex() + 1;
      self.recentActive = true;
    }
    // §5.4.2 / §8: a new leader commits a no-op of its term, which commits everything before it.
    const noop = this.appendEntry(EntryType.normal, new Uint8Array(0));
    assert(noop > 0, "the leader's no-op is never dropped");
    this.uncommittedBytes = 0;
  }

  private reset(term: number): void {
    if (this.term !== term) {
      this.term = term;
      this.vote = noNode;
    }
    this.lead = noNode;
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.randomizedElectionTimeout = this.cfg.electionTicks + this.cfg.random.int(this.cfg.electionTicks);
    this.leadTransferee = noNode;
    this.tracker.resetVotes();
    this.tracker.resetProgress(this.log.lastIndex() + 1);
    this.uncommittedBytes = 0;
    this.bcastPending = false;
    this.readQueue = [];
    this.readByKey.clear();
    this.readsBeforeCommit = [];
  }

  private promotable(): boolean {
    return this.tracker.isVoter(this.id) && this.log.unstableSnapshot === null && !this.withholdingVotes();
  }

  /** Whether this node still owes log entries it lost (votesWithheldUntil); true until its log is back there. */
  withholdingVotes(): boolean {
    if (this.votesWithheldUntil > 0 && this.log.lastIndex() >= this.votesWithheldUntil) this.votesWithheldUntil = 0;
    return this.votesWithheldUntil > 0;
  }

  // ---- time ----

  private tickElection(): void {
    this.electionElapsed++;
    if (this.promotable() && this.electionElapsed >= this.randomizedElectionTimeout) {
      this.electionElapsed = 0;
      this.hup(false);
    }
  }

  private tickHeartbeat(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.cfg.electionTicks) {
      this.electionElapsed = 0;
      if (this.cfg.checkQuorum) {
        // CheckQuorum (thesis §6.2): a leader that did not hear from a quorum in an election timeout steps down.
        if (!this.quorumActive()) {
          this.becomeFollower(this.term, noNode);
          return;
        }
        for (const [id, pr] of this.tracker.progress) if (id !== this.id) pr.recentActive = false;
      }
      this.leadTransferee = noNode; // a transfer that did not finish in an election timeout is abandoned
    }
    if (this.heartbeatElapsed >= this.cfg.heartbeatTicks) {
      this.heartbeatElapsed = 0;
      for (const pr of this.tracker.progress.values()) pr.heartbeatNudge = true;
      const last = this.readQueue[this.readQueue.length - 1];
      this.bcastHeartbeat(last === undefined ? null : last.context);
    }
  }

  private quorumActive(): boolean {
    return isQuorum(this.tracker.voters, (id) => id === this.id || this.tracker.progress.get(id)?.recentActive === true);
  }

  // ---- elections (§5.2, §5.4.1, PreVote thesis §9.6) ----

  private hup(transfer: boolean): void {
    if (this.role === StateRole.leader || !this.promotable()) return;
    if (this.cfg.preVote && !transfer) this.runCampaign(true, false);
    else this.runCampaign(false, transfer);
  }

  private runCampaign(pre: boolean, transfer: boolean): void {
    let voteTerm: number;
    let type: MessageType;
    if (pre) {
      this.becomePreCandidate();
      voteTerm = this.term + 1;
      type = MessageType.preVote;
    } else {
      this.becomeCandidate();
      voteTerm = this.term;
      type = MessageType.vote;
    }
    if (this.poll(this.id, true) === VoteResult.won) {
      // A single voter wins at once.
      if (pre) this.runCampaign(false, transfer);
      else this.becomeLeader();
      return;
    }
    const lastIndex = this.log.lastIndex();
    const lastTerm = this.log.lastTerm();
    for (const id of this.tracker.voters) {
      if (id === this.id) continue;
      const m = newMessage(type, this.id, id, voteTerm);
      m.index = lastIndex;
      m.logTerm = lastTerm;
      if (transfer) m.context = campaignTransferContext;
      this.send(m);
    }
  }

  private poll(id: NodeId, granted: boolean): VoteResult {
    this.tracker.recordVote(id, granted);
    return voteResult(this.tracker.voters, this.tracker.votes);
  }

  private handleVoteRequest(m: Message): void {
    const pre = m.type === MessageType.preVote;
    // §5.2: at most one vote per term, first come first served; a pre-vote for a later term binds nothing.
    const canVote = this.vote === m.from || (this.vote === noNode && this.lead === noNode) || (pre && m.term > this.term);
    // §5.4.1: only for a candidate whose log is at least as up-to-date as ours (and ours is all we acknowledged).
    if (canVote && this.log.isUpToDate(m.index, m.logTerm) && !this.withholdingVotes()) {
      const r = newMessage(pre ? MessageType.preVoteResp : MessageType.voteResp, this.id, m.from, m.term);
      this.send(r);
      if (!pre) {
        this.electionElapsed = 0;
        this.vote = m.from;
      }
    } else {
      const r = newMessage(pre ? MessageType.preVoteResp : MessageType.voteResp, this.id, m.from, this.term);
      r.reject = true;
      this.send(r);
    }
  }

  // ---- per role ----

  private stepLeader(m: Message): void {
    const pr = this.tracker.progress.get(m.from);
    switch (m.type) {
      case MessageType.appResp:
        if (pr !== undefined) this.handleAppendResponse(m, pr);
        return;
      case MessageType.heartbeatResp:
        if (pr !== undefined) this.handleHeartbeatResponse(m, pr);
        return;
      case MessageType.app:
      case MessageType.heartbeat:
      case MessageType.snap:
        assert(false, `two leaders in term ${this.term}: ${this.id} and ${m.from}`);
        return;
      default:
        return; // late vote responses, timeoutNow: nothing to do
    }
  }

  private stepCandidate(m: Message): void {
    switch (m.type) {
      case MessageType.app:
        this.becomeFollower(m.term, m.from); // §5.2: a candidate that hears from the leader of its term steps down
        this.handleAppendEntries(m);
        return;
      case MessageType.heartbeat:
        this.becomeFollower(m.term, m.from);
        this.handleHeartbeat(m);
        return;
      case MessageType.snap:
        this.becomeFollower(m.term, m.from);
        this.handleSnapshot(m);
        return;
      case MessageType.preVoteResp:
      case MessageType.voteResp: {
        const pre = this.role === StateRole.preCandidate;
        if (pre !== (m.type === MessageType.preVoteResp)) return; // an answer to an earlier phase
        const result = this.poll(m.from, !m.reject);
        if (result === VoteResult.won) {
          if (pre) this.runCampaign(false, false);
          else {
            this.becomeLeader();
            this.bcastAppend();
          }
        } else if (result === VoteResult.lost) {
          this.becomeFollower(this.term, noNode);
        }
        return;
      }
      default:
        return;
    }
  }

  private stepFollower(m: Message): void {
    switch (m.type) {
      case MessageType.app:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleAppendEntries(m);
        return;
      case MessageType.heartbeat:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleHeartbeat(m);
        return;
      case MessageType.snap:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleSnapshot(m);
        return;
      case MessageType.timeoutNow:
        // Thesis §3.10: campaign at once, skipping PreVote and the voters' lease.
        this.hup(true);
        return;
      default:
        return;
    }
  }

  // ---- replication, follower side (§5.3) ----

  private handleAppendEntries(m: Message): void {
    const log = this.log;
    if (m.index < log.committed) {
      const r = newMessage(MessageType.appResp, this.id, m.from, this.term);
      r.index = log.committed;
      this.send(r);
      return;
    }
    const lastNew = log.maybeAppend(m.index, m.logTerm, m.entries, (from) => this.onAppended(from, m.entries));
    if (lastNew >= 0) {
      // Figure 2: commitIndex = min(leaderCommit, index of last new entry), never past what is known to match.
      log.commitTo(Math.min(m.commit, lastNew));
      const r = newMessage(MessageType.appResp, this.id, m.from, this.term);
      r.index = lastNew;
      this.send(r);
      return;
    }
    // §5.3 (with the optimization at its end): reject and say where our log may match, skipping a whole term.
    const hint = log.findConflictByTerm(Math.min(m.index, log.lastIndex()), m.logTerm);
    const r = newMessage(MessageType.appResp, this.id, m.from, this.term);
    r.index = m.index;
    r.reject = true;
    r.rejectHint = hint.index;
    r.logTerm = hint.term;
    this.send(r);
  }

  private handleHeartbeat(m: Message): void {
    // The leader sends min(our match, its commit), so this never passes what we hold.
    this.log.commitTo(Math.min(m.commit, this.log.lastIndex()));
    const r = newMessage(MessageType.heartbeatResp, this.id, m.from, this.term);
    r.context = m.context;
    this.send(r);
  }

  private handleSnapshot(m: Message): void {
    const snap = m.snapshot;
    assert(snap !== null, "a snap message carries a snapshot");
    const r = newMessage(MessageType.appResp, this.id, m.from, this.term);
    if (this.restore(snap)) r.index = this.log.lastIndex();
    else r.index = this.log.committed;
    this.send(r);
  }

  /** §7: install a leader's snapshot unless our log already holds its last entry. */
  private restore(snap: Snapshot): boolean {
    const log = this.log;
    if (snap.meta.index <= log.committed) return false;
    if (log.matchTerm(snap.meta.index, snap.meta.term)) {
      // Our log already has the snapshot's last entry: just learn the commit.
      log.commitTo(snap.meta.index);
      return false;
    }
    log.restore(snap);
    this.confPoints = [{ index: snap.meta.index, conf: cloneConfState(snap.meta.conf) }];
    this.applyConf();
    return true;
  }

  /** Entries from `from` on were appended (replacing any conflicting tail): track config entries. */
  private onAppended(from: number, entries: Entry[]): void {
    const points = this.confPoints;
    let changed = false;
    while (points.length > 1 && (points[points.length - 1] as ConfPoint).index >= from) {
      points.pop(); // §4.1 of the thesis: a truncated config entry no longer applies
      changed = true;
    }
    for (const e of entries) {
      if (e.index >= from && e.type === EntryType.confChange) {
        points.push({ index: e.index, conf: decodeConfChange(e.data).conf });
        changed = true;
      }
    }
    if (changed) this.applyConf();
  }

  // ---- replication, leader side (§5.3, §5.4.2) ----

  private appendEntry(type: EntryType, data: Uint8Array): number {
    const bytes = data.byteLength;
    if (type === EntryType.normal && this.uncommittedBytes > 0 && this.uncommittedBytes + bytes > this.cfg.uncommittedBytesMax) {
      return 0;
    }
    const index = this.log.lastIndex() + 1;
    const e: Entry = { term: this.term, index, type, data };
    this.log.append([e]);
    this.uncommittedBytes += bytes;
    if (type === EntryType.confChange) this.onAppended(index, [e]);
    this.bcastPending = true;
    return index;
  }

  private handleAppendResponse(m: Message, pr: Progress): void {
    pr.recentActive = true;
    if (m.reject) {
      if (m.index >= pr.match && m.rejectHint < pr.match) {
        // Asked for an index at or past its match, the follower says its log
        // ends before it: it lost entries it had acknowledged (pxd's recovery
        // cuts a log at a damaged record, and the follower withholds its vote
        // until it has them back). Count only what it holds and resend the rest.
        // A late rejection from before an earlier catch-up can land here too;
        // lowering the match then only resends entries the follower has.
        pr.forgetMatch(m.rejectHint);
        this.sendAppend(m.from, true);
        return;
      }
      let next = m.rejectHint;
      if (m.logTerm > 0) next = this.log.findConflictByTerm(m.rejectHint, m.logTerm).index;
      if (pr.maybeDecrTo(m.index, next)) {
        if (pr.state === ProgressState.replicate) pr.becomeProbe();
        // Its log ends (or stops matching) before the compaction point: no append there can take.
        if (m.rejectHint < this.log.firstIndex() - 1) pr.baseProbed = true;
        this.sendAppend(m.from, true);
      }
      return;
    }
    const wasPaused = pr.isPaused();
    // A probe answered at exactly the match we knew (e.g. the probe that follows a
    // snapshot) moves nothing, but it proves where the logs agree: replicate from there.
    const probeConfirmed = pr.state === ProgressState.probe && m.index === pr.match;
    if (!pr.maybeUpdate(m.index) && !probeConfirmed) return;
    if (pr.state === ProgressState.probe) pr.becomeReplicate();
    else if (pr.state === ProgressState.snapshot) {
      if (pr.match + 1 >= this.log.firstIndex()) {
        // The snapshot is in: back to normal replication (through probe, which accounts for the pending snapshot).
        pr.becomeProbe();
        pr.becomeReplicate();
      }
    } else pr.inflights.freeLE(m.index);

    if (this.maybeCommit()) this.bcastAppend();
    else if (wasPaused) this.sendAppend(m.from, true);
    // Keep the window full while the follower is behind.
    const last = this.log.lastIndex();
    while (pr.state === ProgressState.replicate && !pr.isPaused() && pr.next <= last) {
      if (!this.sendAppend(m.from, false)) break;
    }
    if (m.from === this.leadTransferee && pr.match === last) this.sendTimeoutNow(m.from);
  }

  private handleHeartbeatResponse(m: Message, pr: Progress): void {
    pr.recentActive = true;
    if (pr.heartbeatNudge) {
      pr.heartbeatNudge = false;
      pr.probeSent = false;
      if (pr.state === ProgressState.replicate && pr.inflights.full()) pr.inflights.freeFirstOne();
      if (pr.match < this.log.lastIndex()) this.sendAppend(m.from, true);
    }
    if (m.context !== null && this.tracker.isVoter(m.from)) this.ackRead(m.from, m.context);
  }

  /**
   * §5.3/§5.4.2 (Figure 8): commit the highest index a majority holds, but only
   * if that entry is of the current term; earlier entries commit with it.
   */
  private maybeCommit(): boolean {
    const index = this.tracker.committedIndex();
    if (index <= this.log.committed || this.log.termOrNone(index) !== this.term) return false;
    this.log.commitTo(index);
    this.onLeaderCommit();
    return true;
  }

  private onLeaderCommit(): void {
    this.pruneConfPoints();
    if (this.readsBeforeCommit.length > 0 && this.committedOwnTerm()) {
      const waiting = this.readsBeforeCommit;
      this.readsBeforeCommit = [];
      for (const ctx of waiting) this.startRead(ctx);
    }
    // Thesis §4.2.2: a leader that is not part of the committed configuration steps down,
    // after telling the others the commit (as leader: a follower sends no appends).
    if (!this.tracker.isVoter(this.id) && this.lastConfPoint().index <= this.log.committed) {
      this.bcastAppend();
      this.becomeFollower(this.term, noNode);
    }
  }

  /** Sends an append to `to` if its flow control allows; returns whether a message went out. */
  private sendAppend(to: NodeId, sendIfEmpty: boolean): boolean {
    const pr = this.progressOf(to);
    if (pr.isPaused()) return false;
    const log = this.log;
    if (pr.next - 1 < log.firstIndex() - 1 && pr.state === ProgressState.probe && !pr.baseProbed) {
      // The entries this follower needs next are compacted, by what the leader
      // knows of it. It may hold the log up to the compaction point anyway (it
      // took entries it never learned were committed, or the leader's count
      // of it is from before a restart): one append at that point asks before
      // a whole copy is sent, which the leader may not even be able to read.
      pr.baseProbed = true;
      pr.next = log.firstIndex();
    }
    const prevIndex = pr.next - 1;
    if (prevIndex < log.firstIndex() - 1) return this.sendSnapshot(to, pr);
    const prevTerm = log.term(prevIndex);
    const last = log.lastIndex();
    let entries: Entry[];
    try {
      entries = pr.next <= last ? log.slice(pr.next, last + 1, this.cfg.appendBytesMax) : [];
    } catch (err) {
      // The storage compacted past entries it could not read (etcd raft does the same): a snapshot instead.
      if (err instanceof CompactedError) return this.sendSnapshot(to, pr);
      throw err;
    }
    if (entries.length === 0 && !sendIfEmpty) return false;
    const m = newMessage(MessageType.app, this.id, to, this.term);
    m.index = prevIndex;
    m.logTerm = prevTerm;
    m.entries = entries;
    m.commit = log.committed;
    this.send(m);
    const tail = entries[entries.length - 1];
    if (tail !== undefined && pr.state === ProgressState.replicate) {
      let bytes = 0;
      for (const e of entries) bytes += entryBytes(e);
      pr.next = tail.index + 1; // optimistic: assume it arrives
      pr.inflights.add(tail.index, bytes);
    } else if (pr.state === ProgressState.probe) {
      pr.probeSent = true;
    }
    return true;
  }

  private sendSnapshot(to: NodeId, pr: Progress): boolean {
    if (!pr.recentActive) return false; // do not ship a snapshot to a node that may be down
    let snap: Snapshot;
    try {
      snap = this.log.storage.snapshot();
    } catch (err) {
      if (err instanceof SnapshotUnavailableError) return false;
      throw err;
    }
    assert(snap.meta.index >= this.log.firstIndex() - 1, "the snapshot covers the compacted log");
    pr.becomeSnapshot(snap.meta.index);
    const m = newMessage(MessageType.snap, this.id, to, this.term);
    m.snapshot = snap;
    this.send(m);
    return true;
  }

  private bcastAppend(): void {
    if (this.role !== StateRole.leader) return; // stepped down while handling this input (removed itself)
    for (const id of this.tracker.members) if (id !== this.id) this.sendAppend(id, true);
  }

  private bcastHeartbeat(context: Uint8Array | null): void {
    for (const id of this.tracker.members) {
      if (id === this.id) continue;
      const pr = this.progressOf(id);
      const m = newMessage(MessageType.heartbeat, this.id, id, this.term);
      // A follower may not hold entries past its match: never tell it to commit them.
      m.commit = Math.min(pr.match, this.log.committed);
      m.context = context;
      this.send(m);
    }
  }

  private sendTimeoutNow(to: NodeId): void {
    this.send(newMessage(MessageType.timeoutNow, this.id, to, this.term));
  }

  // ---- ReadIndex (§6.4) ----

  private startRead(context: Uint8Array): boolean {
    const index = this.log.committed;
    const voters = this.tracker.voters;
    if (voters.length === 1 && voters[0] === this.id) {
      this.readStates.push({ index, context });
      return true;
    }
    const key = contextKey(context);
    if (this.readByKey.has(key)) return true; // the same request again: already being confirmed
    if (this.readQueue.length >= this.cfg.readIndexPendingMax) return false;
    const req: ReadRequest = { index, context, key, acks: new Set([this.id]) };
    this.readQueue.push(req);
    this.readByKey.set(key, req);
    this.bcastHeartbeat(context);
    return true;
  }

  private ackRead(from: NodeId, context: Uint8Array): void {
    const req = this.readByKey.get(contextKey(context));
    if (req === undefined) return;
    req.acks.add(from);
    if (!isQuorum(this.tracker.voters, (id) => req.acks.has(id))) return;
    // A quorum still follows us: this request and every earlier one are confirmed.
    while (this.readQueue.length > 0) {
      const r = this.readQueue.shift() as ReadRequest;
      this.readByKey.delete(r.key);
      this.readStates.push({ index: r.index, context: r.context });
      if (r === req) break;
    }
  }

  // ---- helpers ----

  private send(m: Message): void {
    // Only a leader speaks for its term: an append, heartbeat or snapshot from anyone else
    // would make its receiver take a follower for the leader.
    assert(this.role === StateRole.leader || (m.type !== MessageType.app && m.type !== MessageType.heartbeat && m.type !== MessageType.snap),
      () => `node ${this.id} (${this.role}) would send a leader's message of type ${m.type}`);
    this.msgs.push(m);
  }

  progressOf(id: NodeId): Progress {
    const pr = this.tracker.progress.get(id);
    assert(pr !== undefined, () => `no progress for node ${id}`);
    return pr;
  }

  committedOwnTerm(): boolean {
    return this.log.termOrNone(this.log.committed) === this.term;
  }

  /** The last index that is on our disk and agrees with our log (unstable entries may replace a stored tail). */
  stableLastIndex(): number {
    if (this.log.unstableSnapshot !== null) return this.log.unstableSnapshot.meta.index - 1;
    return Math.min(this.log.unstableOffset - 1, this.log.storage.lastIndex());
  }

  private lastConfPoint(): ConfPoint {
    const p = this.confPoints[this.confPoints.length - 1];
    assert(p !== undefined, "there is always a configuration");
    return p;
  }

  private pruneConfPoints(): void {
    const points = this.confPoints;
    let k = 0;
    while (k + 1 < points.length && (points[k + 1] as ConfPoint).index <= this.log.committed) k++;
    if (k > 0) points.splice(0, k);
  }

  private applyConf(): void {
    const conf = this.currentConf();
    this.tracker.setConf(conf, this.log.lastIndex() + 1);
    if (this.role !== StateRole.leader) return;
    if (this.leadTransferee !== noNode && !this.tracker.isVoter(this.leadTransferee)) this.leadTransferee = noNode;
    // Fewer voters may make a quorum of what is already acknowledged.
    if (this.maybeCommit()) this.bcastPending = true;
  }

  /** At start: config entries after the snapshot are in force as soon as they are in the log. */
  private replayStoredConfEntries(): void {
    const storage = this.log.storage;
    let lo = storage.firstIndex();
    const hi = storage.lastIndex() + 1;
    while (lo < hi) {
      const chunk = storage.entries(lo, hi, this.cfg.committedBytesMax);
      for (const e of chunk) {
        if (e.type === EntryType.confChange) this.confPoints.push({ index: e.index, conf: decodeConfChange(e.data).conf });
      }
      lo += chunk.length;
    }
    this.pruneConfPoints();
  }
}

function contextKey(context: Uint8Array): string {
  let s = "";
  for (let i = 0; i < context.length; i++) s += String.fromCharCode(context[i] as number);
  return s;
}
