// The multi-raft driver: runs every Raft group on this node (DESIGN §4).
//
// Each turn it takes a Ready from every group that has one, hands all their
// entries and hard states to the store at once (one group commit, one
// fdatasync for every group), and when that is durable sends the messages,
// applies committed entries to the group's state machine
// (src/replication/state-machine.ts: a volume replica or the catalog, which
// the driver does not tell apart), answers proposals and reads, then advances.
//
// Heartbeats and their responses of every group go to each node as one
// envelope per turn (beats.ts): all groups tick together, so they fall due
// together.
//
// Pure: the store, the peer transport and the clock come in from the daemon.

import { assert } from "../base/assert.js";
import type { ErrorKind } from "../base/error-kind.js";
import { failStop } from "../base/fail-stop.js";
import {
  raftLogRetainBytes,
  raftAppendBytesMax,
  raftCommittedBytesMax,
  raftElectionTicks,
  raftHeartbeatTicks,
  raftInflightBytesMax,
  raftInflightMsgsMax,
  raftReadIndexPendingMax,
  raftUncommittedBytesMax,
} from "../constants.js";
import { decodeConfChange, type ConfChange } from "../raft/confchange.js";
import { RaftNode } from "../raft/node.js";
import type { RaftConfig } from "../raft/raft.js";
import type { Storage } from "../raft/storage.js";
import type { Ready } from "../raft/node.js";
import { EntryType, MessageType, mayPrecedePersist, StateRole, type ConfState, type Entry, type Message, type NodeId } from "../raft/types.js";
import { DamagedEntryError, StoreError, type ChecksumError } from "../store/errors.js";
import type { RaftEntryInput, Store } from "../store/store.js";
import { BeatsOutbox, isBeat, parseBeats, type BeatsEnvelope } from "./beats.js";
import { StoreRaftStorage } from "./raft-storage.js";
import { SnapshotReceiver, SnapshotSender, type ResyncPacer, type SnapAckEnvelope, type SnapChunkEnvelope } from "./snapshot.js";
import { ProgressState } from "../raft/progress.js";
import type { ChangeMap } from "./changes.js";
import type { GroupStateMachine, InlineSnapshots, StreamedSnapshots } from "./state-machine.js";

export type { GroupStateMachine } from "./state-machine.js";

/** What travels between drivers: a Raft message of one group. */
export interface RaftEnvelope {
  kind: "raft";
  group: number;
  message: Message;
}

/**
 * From a group's leader to its members: the leader compacted its log up to
 * `index`, so each may forget its entries up to there (at most its applied
 * index). A member the leader left behind gets a snapshot (src/replication/snapshot.ts).
 */
export interface CompactEnvelope {
  kind: "compact";
  group: number;
  index: number;
}

export interface DriverOptions {
  nodeId: NodeId;
  store: Store;
  /** Sends to a peer; false when it cannot (the core is told the peer is unreachable). */
  send(to: NodeId, envelope: RaftEnvelope | CompactEnvelope | SnapChunkEnvelope | SnapAckEnvelope | BeatsEnvelope): boolean;
  /** Raft log kept for a member that is down (default raftLogRetainBytes); past it the member will need a snapshot. */
  logRetainBytes?: number;
  defer(fn: () => void): void;
  /**
   * Runs what follows a log write the driver waited for (a persist's
   * completion). Whatever it throws ends this node: a committed entry found
   * damaged when it is read back to be applied (the restart cuts the log
   * there, withholds the node's vote, and the leader resends it), or a bug.
   * Default: the fail-stop handler; the simulator ends the node's incarnation.
   */
  resume?(fn: () => void): void;
  random: { int(n: number): number };
  log(line: string): void;
  /** Blocks of this node's copy of a volume failed their checksum where the driver read them (a snapshot stream): repair them. */
  damaged?(e: ChecksumError): void;
  /** The node's rebuild bandwidth, shared by every volume copy it sends; absent: no limit. */
  resync?: ResyncPacer;
}

/** A member of a group as its leader sees it. */
export interface ReplicaProgress {
  node: NodeId;
  /** Highest index known to be on that node. */
  match: number;
  /** Whether the leader heard from it within the last election timeout. */
  active: boolean;
}

/**
 * Ticks between compaction rounds, and applied entries every log keeps behind
 * the compaction point (none needed: the point is at most the match of every
 * member the leader still keeps the log for).
 */
const compactEveryTicks = 20;
const compactKeepEntries = 0;
/** Log entries, and bytes of them, a change map reads per event-loop turn when it begins (whole entries, checked). */
const changeScanEntriesPerTurn = 2048;
const changeScanBytesPerTurn = 8 * 1024 * 1024;

/** The configuration every pxd Raft group runs with (PreVote and CheckQuorum on; limits from src/constants.ts). */
export function raftConfig(id: NodeId, storage: Storage, random: { int(n: number): number }, applied = 0, votesWithheldUntil = 0): RaftConfig {
  return {
    votesWithheldUntil,
    id,
    storage,
    applied,
    electionTicks: raftElectionTicks,
    heartbeatTicks: raftHeartbeatTicks,
    random,
    preVote: true,
    checkQuorum: true,
    appendBytesMax: raftAppendBytesMax,
    inflightMsgsMax: raftInflightMsgsMax,
    inflightBytesMax: raftInflightBytesMax,
    uncommittedBytesMax: raftUncommittedBytesMax,
    readIndexPendingMax: raftReadIndexPendingMax,
    committedBytesMax: raftCommittedBytesMax,
  };
}

/** The configuration in force at `index`: the last applied one at or before it (undefined: none since the compaction point). */
function confAt(points: readonly { index: number; conf: ConfState }[], index: number): ConfState | undefined {
  let conf: ConfState | undefined;
  for (const p of points) if (p.index <= index) conf = p.conf;
  return conf;
}

/** A proposal or read reached a node that is not the group's leader. */
export class NotLeaderError extends Error {
  constructor(
    readonly groupId: number,
    readonly leader: NodeId,
  ) {
    super(`this node does not lead group ${groupId}${leader ? `; node ${leader} does` : "; no leader is known yet"}`);
    this.name = "NotLeaderError";
  }
}

/** A proposal was overwritten by a new leader's log: it will never apply. The client may retry. */
export class ProposalDroppedError extends Error {
  override name = "ProposalDroppedError";
}

/**
 * The group stopped on this node because its log could not be persisted (the
 * store stopped: no room for a segment, a failed write or fdatasync). Another
 * replica may still take the request; `kind` is why this one could not.
 */
export class GroupStoppedError extends ProposalDroppedError {
  override name = "GroupStoppedError";
  constructor(
    readonly kind: ErrorKind,
    message: string,
  ) {
    super(message);
  }
}

interface Waiter {
  term: number;
  resolve(): void;
  reject(e: Error): void;
}

class Group {
  readonly proposals = new Map<number, Waiter>();
  /** Reads waiting for a ReadIndex round, and rounds waiting for the apply to reach their index. */
  pendingReads: Waiter[] = [];
  readonly readRounds = new Map<string, Waiter[]>();
  readonly readsAwaitingApply: { index: number; waiters: Waiter[] }[] = [];
  readyInFlight = false;
  applied: number;
  /**
   * Configurations applied since the compaction point, oldest first (a config
   * entry's data holds the whole resulting configuration): compaction records
   * the one in force at the point it compacts to.
   */
  confPoints: { index: number; conf: ConfState }[] = [];
  /** An inline snapshot of `sm` is being saved (one at a time). */
  savingSnapshot = false;
  /** The index of the last snapshot of `sm` this node tried to save (a failed one is retried only after as many entries again). */
  snapshotTriedAt = 0;
  lead: NodeId = 0;
  role: StateRole = StateRole.follower;
  /** The last index handed to the store (by a Ready's persist or an early append). */
  appendedThrough = 0;
  /**
   * Entries [earlyFrom, earlyThrough] of term earlyTerm went to the store as
   * they were proposed (appendEarly); the Ready that lists them waits for
   * `earlyDurable` instead of appending them again.
   */
  earlyFrom = Infinity;
  earlyThrough = 0;
  earlyTerm = 0;
  earlyDurable: Promise<void> = Promise.resolve();
  /** Term and vote of the hard state last handed to the store. */
  hardTerm = 0;
  /** The term of the last persisted hard state (proposals of older terms are dropped when it moves). */
  term = 0;
  hardVote = 0;

  constructor(
    readonly id: number,
    readonly node: RaftNode,
    readonly sm: GroupStateMachine,
    applied: number,
  ) {
    this.applied = applied;
  }
}

export class MultiRaft {
  private readonly groups = new Map<number, Group>();
  private readonly storages = new Map<number, StoreRaftStorage>();
  private scheduled = false;
  private readSeq = 0;
  private ticks = 0;
  private closed = false;
  readonly snapshotSender: SnapshotSender;
  private readonly snapshotReceiver: SnapshotReceiver;
  private readonly beats = new BeatsOutbox({
    send: (to, envelope) => this.o.send(to, envelope),
    unreachable: (to, groups) => {
      for (const id of groups) this.groups.get(id)?.node.reportUnreachable(to);
    },
  });
  private beatsFlushQueued = false;
  /** At most one entry per group this node ran. */
  private readonly stopped = new Map<number, string>();
  /** Change maps still reading the ranges of entries applied before they began, oldest first. */
  private readonly changeScans: { g: Group; snaps: StreamedSnapshots; changes: ChangeMap; next: number; end: number }[] = [];
  private changeScanQueued = false;

  constructor(private readonly o: DriverOptions) {
    const ports = {
      store: o.store,
      send: (to: NodeId, env: RaftEnvelope | SnapChunkEnvelope | SnapAckEnvelope) => o.send(to, env),
      reportSnapshot: (group: number, to: NodeId, ok: boolean) => {
        this.groups.get(group)?.node.reportSnapshot(to, ok);
        this.schedule();
      },
      stillSending: (group: number, to: NodeId) => {
        const g = this.groups.get(group);
        return g?.node.progress()?.find((p) => p.id === to)?.state === ProgressState.snapshot;
      },
      catchUp: (group: number, leader: NodeId, index: number, term: number) => this.catchUp(group, leader, index, term),
      damaged: (e: ChecksumError) => o.damaged?.(e),
      ...(o.resync !== undefined ? { pace: o.resync } : {}),
      log: (line: string) => o.log(line),
    };
    this.snapshotSender = new SnapshotSender(ports);
    this.snapshotReceiver = new SnapshotReceiver(ports, (group) => {
      const g = this.groups.get(group);
      if (g === undefined || g.sm.snapshots.kind !== "streamed") return undefined;
      return { leader: g.node.status().lead, sizeBytes: g.sm.snapshots.sizeBytes(), applied: g.applied };
    });
  }

  /**
   * Starts (or restarts from the store) this node's replica of a group whose
   * initial configuration is `voters` (later changes come from the log),
   * running `sm`. A state machine with inline snapshots starts from its
   * latest saved snapshot, restored into it here, and re-applies every
   * committed entry after it; one in the store from the store's applied index.
   */
  addGroup(groupId: number, voters: NodeId[], sm: GroupStateMachine): void {
    assert(!this.groups.has(groupId), `group ${groupId} runs once`);
    const inline = sm.snapshots.kind === "inline" ? sm.snapshots : undefined;
    const saved = inline === undefined ? undefined : this.o.store.stateSnapshot(groupId);
    if (inline !== undefined && saved !== undefined) {
      inline.restore(saved.index, saved.data, true);
      // Whatever the snapshot holds was committed and is applied: the core starts from there.
      this.o.store.markApplied(groupId, saved.index);
    }
    const initialConf = { voters: [...voters].sort((a, b) => a - b), learners: [] };
    const storage = new StoreRaftStorage(this.o.store, groupId, initialConf, (index) => this.compactPastDamage(groupId, index));
    this.storages.set(groupId, storage);
    let st = this.o.store.raftState(groupId);
    let applied = inline !== undefined ? (saved?.index ?? 0) : st.appliedIndex;
    // Configurations applied before the restart, after the compaction point: compaction still needs them.
    const confPoints: Group["confPoints"] = [];
    for (const e of this.o.store.raftEntriesOfType(groupId, EntryType.confChange, 0, applied + 1)) {
      confPoints.push({ index: e.index, conf: decodeConfChange(e.data).conf });
    }
    // Entries applied here whose records are damaged: nothing needs them but a follower, which gets a snapshot instead.
    const damaged = st.damagedApplied.at(-1);
    if (damaged !== undefined) {
      assert(damaged <= applied, () => `group ${groupId}: entry ${damaged}, after its saved snapshot (entry ${applied}), is damaged; this node cannot rebuild the group's state from its log`);
      this.o.store.compactRaftLog(groupId, applied, confAt(confPoints, applied));
      this.o.log(`replication: group ${groupId}: compacted the Raft log to ${applied}, past damaged entries ${st.damagedApplied.join(", ")}`);
    }
    applied = this.settleLostEntries(groupId, sm, storage, applied, confPoints);
    st = this.o.store.raftState(groupId);
    if (st.recoverUntil > 0) this.o.log(`replication: group ${groupId}: this node lost Raft entries it may have acknowledged; it withholds its vote until its log reaches index ${st.recoverUntil} again`);
    const node = new RaftNode(raftConfig(this.o.nodeId, storage, this.o.random, applied, st.recoverUntil));
    const group = new Group(groupId, node, sm, applied);
    group.appendedThrough = this.o.store.raftLastIndex(groupId);
    group.hardTerm = st.hardState.term;
    group.hardVote = st.hardState.vote;
    group.confPoints = confPoints;
    this.groups.set(groupId, group);
    // The only voter of a new group (empty, or a clone's, compacted at entry 1 of term 1) need not wait out an election timeout: nobody can compete.
    const st0 = node.status();
    if (voters.length === 1 && voters[0] === this.o.nodeId && st0.lastIndex <= 1 && st0.term <= 1) node.campaign();
    this.schedule();
  }

  /**
   * Entries recovery kept as lost (the record's payload damaged, its header
   * naming the volume range the entry changed; Store.lostRaftEntries), not
   * applied yet. The only voter of a group holds the only copy of its log,
   * and every entry in it will commit (no other node can lead): it applies
   * its log to the end now, each lost entry as lost (the state machine marks
   * its range: a volume's blocks there fail their checksums until rewritten),
   * and compacts the log past them, so no acknowledged write after them is
   * lost and no member is ever sent one. A replica with peers cuts its log
   * before the first one instead, and its leader resends them. Returns the
   * applied index.
   */
  private settleLostEntries(groupId: number, sm: GroupStateMachine, storage: StoreRaftStorage, applied: number, confPoints: Group["confPoints"]): number {
    const lost = this.o.store.lostRaftEntries(groupId);
    if (lost.length === 0) return applied;
    const last = this.o.store.raftLastIndex(groupId);
    let conf = confAt(confPoints, applied) ?? storage.conf();
    for (const e of this.o.store.raftEntriesOfType(groupId, EntryType.confChange, applied + 1, last + 1)) conf = decodeConfChange(e.data).conf;
    const sole = conf.voters.length === 1 && conf.voters[0] === this.o.nodeId && conf.learners.length === 0;
    if (!sole) {
      this.o.store.cutRaftLog(groupId, lost[0]!.index);
      this.o.log(`replication: group ${groupId}: Raft entry ${lost[0]!.index} is damaged in this node's log; the log is cut before it, and the group's leader resends it`);
      return applied;
    }
    const ranges = new Map(lost.map((l) => [l.index, l.range]));
    for (let i = applied + 1; i <= last; i++) {
      const range = ranges.get(i);
      if (range !== undefined) sm.lost(i, range);
      else {
        const e = this.o.store.raftEntries(groupId, i, i + 1, Infinity)[0]!;
        sm.apply(i, e.type === EntryType.normal && e.data.length > 0 ? e.data : null);
        if (e.type === EntryType.confChange) confPoints.push({ index: i, conf: decodeConfChange(e.data).conf });
      }
      this.o.store.markApplied(groupId, i);
    }
    this.o.store.compactRaftLog(groupId, last, conf);
    const what = lost.map((l) => `entry ${l.index} (${l.range.lengthBytes} bytes at volume offset ${l.range.offsetBytes})`).join(", ");
    this.o.log(`DATA DAMAGED: group ${groupId}: this node is the group's only voter and lost ${what} from its log; applied its log to index ${last} with those ranges marked damaged (reads of them fail with EIO until rewritten)`);
    return last;
  }

  hasGroup(groupId: number): boolean {
    return this.groups.has(groupId);
  }

  /** Groups stopped here because their log could not be persisted, with why (the node's health reports them). */
  stoppedGroups(): ReadonlyMap<number, string> {
    return this.stopped;
  }

  /** The group's voters as this node's core knows them (its configuration). */
  voters(groupId: number): NodeId[] {
    return [...(this.groups.get(groupId)?.node.status().voters ?? [])];
  }

  learners(groupId: number): NodeId[] {
    return [...(this.groups.get(groupId)?.node.status().learners ?? [])];
  }

  /** On the leader: every member's replication progress; undefined elsewhere. */
  progress(groupId: number): ReplicaProgress[] | undefined {
    return this.groups.get(groupId)?.node.progress()?.map((p) => ({ node: p.id, match: p.match, active: p.recentActive }));
  }

  /**
   * A delta snapshot's base (`index`, `term`: the leader's entry there, which
   * it committed) is past what this follower applied: the core commits up to
   * it if this node follows `leader` and holds that entry with that term
   * (RaftNode.commitFromLeaderBase: by Log Matching its log up to there is the
   * leader's); resolves once applied, undefined if the core refused.
   */
  private catchUp(groupId: number, leader: NodeId, index: number, term: number): Promise<void> | undefined {
    const g = this.groups.get(groupId);
    if (g === undefined || !g.node.commitFromLeaderBase(leader, index, term)) return undefined;
    if (g.applied >= index) return Promise.resolve();
    this.o.log(`snapshot: group ${groupId}: applying this node's own log from index ${g.applied + 1} to ${index} (the leader's entry there) before copying what did not change`);
    this.schedule();
    return new Promise((resolve, reject) => g.readsAwaitingApply.push({ index, waiters: [{ term: 0, resolve, reject }] }));
  }

  /** Proposes opaque data (a meta-group command); resolves with its index once applied here. */
  proposeData(groupId: number, data: Uint8Array): Promise<number> {
    return new Promise((resolve, reject) => {
      const index = this.proposeWith(groupId, data, () => resolve(index), reject);
    });
  }

  /** Proposes a command (a volume op) on the group's leader, this node; resolves once it is applied here. */
  propose(groupId: number, data: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => void this.proposeWith(groupId, data, resolve, reject));
  }

  /** Adds or removes a member, one change at a time; resolves once the change is applied here. */
  proposeConfChange(groupId: number, change: ConfChange): Promise<void> {
    const g = this.mustLead(groupId);
    const r = g.node.proposeConfChange(change);
    if ("refused" in r) return Promise.reject(new ProposalDroppedError(`group ${groupId}: ${r.refused}`));
    const term = g.node.status().term;
    this.schedule();
    return new Promise((resolve, reject) => g.proposals.set(r.index, { term, resolve: () => resolve(), reject }));
  }

  removeGroup(groupId: number, why: ProposalDroppedError = new ProposalDroppedError(`group ${groupId} was removed from this node`)): void {
    const g = this.groups.get(groupId);
    if (!g) return;
    this.groups.delete(groupId);
    this.storages.delete(groupId);
    this.snapshotReceiver.forget(groupId);
    this.failAll(g, why);
  }

  /** Asks the group's leader (this node) to hand leadership to `to` (TimeoutNow once it has caught up). */
  transferLeadership(groupId: number, to: NodeId): boolean {
    const g = this.groups.get(groupId);
    if (g === undefined) return false;
    const ok = g.node.transferLeadership(to);
    this.schedule();
    return ok;
  }

  /** Groups whose core withholds its vote: recovery cut their log, and they have not got back what they may have acknowledged. */
  withholdingVotes(): number[] {
    return [...this.groups.values()].filter((g) => g.node.status().votesWithheld).map((g) => g.id);
  }

  /** The current leader of a group as this node knows it (0: none known). */
  leader(groupId: number): NodeId {
    return this.groups.get(groupId)?.lead ?? 0;
  }

  status(groupId: number): ReturnType<RaftNode["status"]> | undefined {
    return this.groups.get(groupId)?.node.status();
  }

  /** Advances every group's logical clock; the daemon calls it on an interval. */
  tick(): void {
    for (const g of this.groups.values()) g.node.tick();
    this.snapshotSender.tick();
    if (++this.ticks % compactEveryTicks === 0) this.compactLogs();
    this.schedule();
  }

  /** A leader's word that every member holds the log up to an index. */
  receiveCompact(from: NodeId, m: CompactEnvelope): void {
    const g = this.groups.get(m.group);
    // A group with a state machine compacts behind its own snapshots, whatever its leader does.
    if (g === undefined || g.sm.snapshots.kind === "inline" || g.node.status().lead !== from) return;
    this.compact(g, m.index);
  }

  /**
   * On each group this node leads: compacts up to what every live member's
   * log reaches (their match), tells the members, and does it here. A member
   * that is down holds the point back while the log it misses is under
   * logRetainBytes, so a short absence costs only what it missed; past that
   * the log is compacted without it, and when it returns it gets a snapshot:
   * what changed while it was away (a change map kept meanwhile), or a full
   * copy. A snapshot being sent holds the point at its index: the follower
   * needs every entry after it.
   */
  private compactLogs(): void {
    const retain = this.o.logRetainBytes ?? raftLogRetainBytes;
    for (const g of this.groups.values()) {
      const snaps = g.sm.snapshots;
      if (snaps.kind === "inline") continue; // compacted behind its snapshots (saveSnapshot)
      const progress = this.progress(g.id);
      if (progress === undefined) {
        snaps.dropChanges();
        continue;
      }
      const held = this.snapshotSender.holdIndex(g.id);
      const snapshotIndex = this.o.store.raftState(g.id).snapshotIndex;
      let safe = held;
      // Members this round leaves behind (down, and missing more than the
      // retained log), and members already behind the compaction point (or
      // not heard from since this node was elected: their match is unknown).
      let leavingAt = Infinity;
      let pastPoint = false;
      for (const p of progress) {
        if (p.active || this.o.store.raftLogBytesFrom(g.id, p.match + 1) <= retain) safe = Math.min(safe, p.match);
        else leavingAt = Math.min(leavingAt, p.match);
        if (p.match < snapshotIndex) pastPoint = true;
      }
      const behind = leavingAt !== Infinity || pastPoint;
      // While there is one, keep what changes after a point its log reaches,
      // so a snapshot it needs later carries only that: the match of the one
      // leaving now, else the compaction point (a member behind it held it, or
      // led when it went down). In a log never compacted, after entry 1 (index
      // 0 would take in data written before the group existed, when a
      // single-replica volume gained replicas). A map from an older point is
      // replaced when no one else needs it: the newer point marks less.
      const base = Math.max(pastPoint ? snapshotIndex : Math.min(leavingAt, g.applied), 1);
      const changes = snaps.changes;
      const stale = changes !== undefined && changes.base < base && !pastPoint && held === Infinity;
      if (behind && (changes === undefined || stale) && g.applied >= base) this.startChanges(g, snaps, base);
      if (!behind && held === Infinity) snaps.dropChanges();
      // A change map being filled reads entries after its base from the log: they stay until it is done.
      if (snaps.changes !== undefined && !snaps.changes.complete) safe = Math.min(safe, snaps.changes.base);
      if (safe === Infinity || safe <= snapshotIndex) continue;
      for (const p of progress) if (p.node !== this.o.nodeId) this.o.send(p.node, { kind: "compact", group: g.id, index: safe });
      this.compact(g, safe);
    }
  }

  /**
   * A change map from `base` on. apply() marks the entries applied from now
   * on; the ones after `base` applied already are still in the log (base is
   * at or above the compaction point), and are read for their ranges a slice
   * per turn, so a long retained log does not stall the event loop.
   */
  private startChanges(g: Group, snaps: StreamedSnapshots, base: number): void {
    assert(base >= this.o.store.raftState(g.id).snapshotIndex, "the entries after a change map's base are in the log");
    const changes = snaps.trackChanges(base, this.o.store.raftTerm(g.id, base) ?? 0);
    this.changeScans.push({ g, snaps, changes, next: base + 1, end: g.applied });
    this.o.log(`snapshot: group ${g.id}: a member is behind; tracking what changes after index ${base}`);
    this.queueChangeScan();
  }

  private queueChangeScan(): void {
    if (this.changeScanQueued || this.changeScans.length === 0 || this.closed) return;
    this.changeScanQueued = true;
    this.o.defer(() => {
      this.changeScanQueued = false;
      this.scanChanges();
    });
  }

  private scanChanges(): void {
    let budget = changeScanEntriesPerTurn;
    while (budget > 0 && this.changeScans.length > 0) {
      const s = this.changeScans[0]!;
      // Dropped meanwhile (leadership lost, a snapshot installed here, the group gone).
      if (s.snaps.changes !== s.changes || !this.groups.has(s.g.id)) {
        this.changeScans.shift();
        continue;
      }
      while (s.next <= s.end && budget > 0) {
        if (s.next < this.o.store.raftFirstIndex(s.g.id)) {
          // Compacted under it (this node follows another leader now): no map.
          s.snaps.dropChanges();
          break;
        }
        // Whole entries, checked against their record checksums: a range read
        // from a rotten entry would leave a block out of every delta.
        let entries: readonly { index: number; type: number; data: Uint8Array }[];
        try {
          entries = this.o.store.raftEntries(s.g.id, s.next, s.end + 1, changeScanBytesPerTurn);
        } catch (e) {
          if (!(e instanceof DamagedEntryError)) throw e;
          this.o.log(`snapshot: group ${s.g.id}: entry ${e.index} is damaged here, so what changed since index ${s.changes.base} cannot be known; a member behind gets a full copy`);
          s.snaps.dropChanges();
          break;
        }
        for (const e of entries) if (e.type === EntryType.normal && e.data.length > 0) s.snaps.markCommand(s.changes, e.data);
        s.next += entries.length;
        budget -= entries.length;
      }
      if (s.snaps.changes !== s.changes) continue;
      if (s.next > s.end) {
        s.changes.complete = true;
        this.changeScans.shift();
        this.o.log(`snapshot: group ${s.g.id}: what changed since index ${s.changes.base} is known (${s.changes.changedBlocks} blocks of 4 KiB so far)`);
      }
    }
    this.queueChangeScan();
  }

  /**
   * The log holds entry `index`, applied here, whose record is damaged: the
   * log is compacted past it (to the applied index), so a follower that
   * needs it gets a snapshot. False when the entry is not applied here yet:
   * its data is gone, and the node must not go on (a restart cuts the log
   * there and recovers from the leader).
   */
  private compactPastDamage(groupId: number, index: number): boolean {
    const g = this.groups.get(groupId);
    if (g === undefined) return false;
    // A group with inline snapshots compacts only behind its saved snapshot.
    const upTo = g.sm.snapshots.kind === "streamed" ? g.applied : (this.o.store.stateSnapshot(g.id)?.index ?? 0);
    if (index > upTo) return false;
    this.o.log(`replication: group ${groupId}: Raft entry ${index} is damaged in this node's log; compacting the log to ${upTo} (a follower that needs it gets a snapshot)`);
    this.compact(g, upTo);
    return true;
  }

  private compact(g: Group, index: number): void {
    const st = this.o.store.raftState(g.id);
    const saved = g.sm.snapshots.kind === "streamed" ? Infinity : (this.o.store.stateSnapshot(g.id)?.index ?? 0);
    const upTo = Math.min(index, st.appliedIndex, g.applied, saved) - compactKeepEntries;
    if (upTo <= st.snapshotIndex) return;
    const conf = confAt(g.confPoints, upTo);
    let k = -1;
    while (k + 1 < g.confPoints.length && g.confPoints[k + 1]!.index <= upTo) k++;
    if (k > 0) g.confPoints.splice(0, k);
    this.o.store.compactRaftLog(g.id, upTo, conf);
  }

  /** A message from a peer. */
  receive(from: NodeId, envelope: RaftEnvelope): void {
    const g = this.groups.get(envelope.group);
    if (g === undefined || envelope.message.to !== this.o.nodeId || envelope.message.from !== from) return;
    const m = envelope.message;
    const snaps = g.sm.snapshots;
    if (m.type !== MessageType.snap) g.node.step(m);
    else if (snaps.kind === "inline") {
      // The state travels in the message: checked whole before the core may take it.
      const problem = m.snapshot === null ? "no snapshot" : snaps.check(m.snapshot.meta.index, m.snapshot.data);
      if (problem !== null) {
        this.o.log(`snapshot: group ${g.id}: refused the snapshot node ${from} sent: ${problem}`);
        return;
      }
      g.node.step(m);
    } else if (!this.snapshotReceiver.ready(g.id, from, m)) {
      // A snapshot is taken only once all of its data is durable here (its staging group).
      this.o.log(`snapshot: group ${g.id}: install message from node ${from} before its data; ignored (the leader will send it again)`);
      return;
    } else {
      g.node.step(m);
      // Taken: the core holds it for the next persist, which installs the staging group as it is then.
      this.snapshotReceiver.stepped(g.id, g.node.status().pendingSnapshotIndex === m.snapshot?.meta.index);
    }
    this.schedule();
  }

  receiveSnapChunk(from: NodeId, c: SnapChunkEnvelope): void {
    this.snapshotReceiver.onChunk(from, c);
  }

  receiveSnapAck(from: NodeId, a: SnapAckEnvelope): void {
    this.snapshotSender.onAck(from, a);
  }

  /** Heartbeats and responses of many groups from a peer: checked whole before any is stepped. */
  receiveBeats(from: NodeId, envelope: unknown): void {
    const beats = parseBeats(envelope, from, this.o.nodeId);
    if (typeof beats === "string") {
      this.o.log(`replication: dropped a heartbeat envelope from node ${from}: ${beats}`);
      return;
    }
    // A group this node does not host (any more) ignores its item, as receive() does.
    for (const b of beats) this.groups.get(b.group)?.node.step(b.message);
    this.schedule();
  }

  /**
   * Resolves when this node may serve a linearizable read of the group: it is
   * the leader, a quorum confirmed it after the read arrived (ReadIndex), and
   * it has applied up to the index that round returned. Undefined when it may
   * read now (readsHere).
   */
  readBarrier(groupId: number): Promise<void> | undefined {
    let g: Group;
    try {
      g = this.mustLead(groupId);
    } catch (e) {
      return Promise.reject(e);
    }
    if (this.soleVoter(g)) return undefined;
    return new Promise((resolve, reject) => {
      g.pendingReads.push({ term: 0, resolve, reject });
      this.schedule();
    });
  }

  close(): void {
    this.closed = true;
    for (const g of this.groups.values()) this.failAll(g, new ProposalDroppedError("the node is shutting down"));
  }

  /**
   * Whether this node may read the group's state now, without a ReadIndex
   * round: it leads, and it is the only voter, so no other leader can exist
   * and every write it acknowledged is applied here.
   */
  readsHere(groupId: number): boolean {
    const g = this.groups.get(groupId);
    return g !== undefined && g.role === StateRole.leader && this.soleVoter(g);
  }

  /** The group's state machine on this node (undefined: not hosted here). */
  stateMachine(groupId: number): GroupStateMachine | undefined {
    return this.groups.get(groupId)?.sm;
  }

  // ---- internals ----

  /** This node leads the group and no other node is a member (voter or learner). */
  private onlyMember(g: Group): boolean {
    return g.node.role() === StateRole.leader && g.node.onlyMember(this.o.nodeId);
  }

  private soleVoter(g: Group): boolean {
    return g.node.role() === StateRole.leader && g.node.soleVoter(this.o.nodeId);
  }

  /** Proposes data on the group's leader (this node): the waiter settles once it is applied here, or never will be. Returns its index, 0 when refused. */
  private proposeWith(groupId: number, data: Uint8Array, resolve: () => void, reject: (e: Error) => void): number {
    const g = this.groups.get(groupId);
    if (g === undefined || g.node.role() !== StateRole.leader) {
      reject(new NotLeaderError(groupId, g?.node.lead() ?? 0));
      return 0;
    }
    const index = g.node.propose(data);
    if (index === 0) {
      reject(new NotLeaderError(groupId, g.node.lead()));
      return 0;
    }
    const term = g.node.term();
    if (index === g.appendedThrough + 1 && this.soleVoter(g)) this.appendEarly(g, index, term, data);
    this.schedule();
    g.proposals.set(index, { term, resolve, reject });
    return index;
  }

  /**
   * The only voter's own proposal goes to the store at once, not with the
   * next Ready: it joins the log's next group commit while the previous
   * Ready's fdatasync runs, so a single-voter group's fdatasyncs overlap as
   * the log pipelines them (commitsInFlightMax) instead of one per Ready. A
   * leader may persist its entries before the Ready that lists them (the
   * core counts them toward a commit only after advance()), and an entry is
   * handed over only right after the last one, so the log stays in order.
   * Once durable it is committed (applyEarly), without waiting for a Ready.
   */
  private appendEarly(g: Group, index: number, term: number, data: Uint8Array): void {
    const durable = this.o.store.appendRaftEntries(g.id, [this.entryInput(g, index, term, EntryType.normal, data)]);
    // A failure reaches the Ready that lists the entry (its persist waits on this), which stops the group.
    durable.then(() => this.applyEarly(g, index, term, data), ignore);
    if (g.earlyThrough !== index - 1 || g.earlyTerm !== term) g.earlyFrom = index;
    g.earlyThrough = index;
    g.earlyTerm = term;
    g.earlyDurable = durable;
    g.appendedThrough = index;
  }

  /**
   * An early-appended entry is durable here. While this node leads in the
   * term it was proposed in and is the group's only voter, that is a quorum:
   * the entry is committed (the core would say so after the Ready that lists
   * it, a fdatasync later when that Ready waits on a newer entry's commit), so
   * it is applied and acknowledged now, if everything before it is applied.
   * The core hands it out later as committed, and applyCommitted skips it.
   * Otherwise (another entry before it waits for the core, the term moved,
   * a voter was added) the core commits it as usual.
   */
  private applyEarly(g: Group, index: number, term: number, data: Uint8Array): void {
    if (index !== g.applied + 1 || this.groups.get(g.id) !== g || g.node.term() !== term || !this.soleVoter(g)) return;
    this.apply(g, { index, term, type: EntryType.normal, data });
    this.releaseReads(g);
  }

  /** An entry for the store: a command's record carries its checksum when the command has one, and names the range it changes. */
  private entryInput(g: Group, index: number, term: number, type: number, data: Uint8Array): RaftEntryInput {
    if (type !== EntryType.normal || data.length === 0) return { index, term, type, data: [data] };
    const record = g.sm.commandRecord(data);
    return { index, term, type, data: [data], payloadCrc: record.payloadCrc, range: record.range };
  }

  private mustLead(groupId: number): Group {
    const g = this.groups.get(groupId);
    if (g === undefined) throw new NotLeaderError(groupId, 0);
    if (g.node.role() !== StateRole.leader) throw new NotLeaderError(groupId, g.node.lead());
    return g;
  }

  private schedule(): void {
    if (this.scheduled || this.closed) return;
    this.scheduled = true;
    this.o.defer(() => {
      this.scheduled = false;
      this.processReadies();
    });
  }

  /** One pass over every group: their persists join one group commit in the store. */
  private processReadies(): void {
    for (const g of this.groups.values()) this.processReady(g);
  }

  private processReady(g: Group): void {
    this.startReadRound(g);
    // A persist is running: commits learned since (a leader's from the
    // acknowledgements of its previous batch) are applied now, not after
    // that fdatasync as well.
    if (g.readyInFlight) {
      this.applyCommitted(g, g.node.takeCommitted());
      return;
    }
    if (!g.node.hasReady()) return;
    const rd = g.node.ready();
    g.readyInFlight = true;
    // Committed entries are already on disk here (the core hands out no
    // others): applied now, while the new entries' fdatasync runs, so a
    // write is acknowledged one fsync after it is proposed, not two.
    this.applyCommitted(g, rd.committedEntries);
    // A leader's appends and heartbeats go out now, while its own fdatasync
    // runs (Raft thesis 10.2.1): it counts itself toward a commit only after
    // advance(), so nothing commits before a quorum has it on disk. Votes and
    // acknowledgements wait for the persist they promise.
    rd.messages = this.sendEarly(g, rd.messages);
    this.persist(g, rd).then(
      () => this.resume(() => this.afterPersist(g, rd)),
      (e: unknown) => {
        // The store stopped taking writes (no room, a failed write or fdatasync):
        // nothing this group does is safe any more. Anything else is a bug.
        if (!(e instanceof StoreError)) failStop(e, `replication: group ${g.id}: persisting its Ready`);
        this.o.log(`replication: group ${g.id} cannot persist its log, stopping it: ${e.message}`);
        this.removeGroup(g.id, new GroupStoppedError(e.code, `group ${g.id} stopped on node ${this.o.nodeId}: ${e.message}`));
        this.stopped.set(g.id, e.message);
      },
    );
  }

  private resume(fn: () => void): void {
    if (this.o.resume !== undefined) return this.o.resume(fn);
    try {
      fn();
    } catch (e) {
      failStop(e, `replication: node ${this.o.nodeId}: after a log write${e instanceof DamagedEntryError ? " (a committed entry is damaged in this node's log; the restart cuts the log before it, and the leader resends it)" : ""}`);
    }
  }

  private persist(g: Group, rd: Ready): Promise<void> {
    // Only the commit index moved: it may lag on disk (a restarted node learns
    // it again from the leader, and never below what it applied), so it is not
    // written on its own; it rides along with the next entries or vote.
    if (!rd.mustSync) return Promise.resolve();
    const snap = rd.snapshot;
    if (snap === null || g.sm.snapshots.kind !== "inline") return this.persistLog(g, rd);
    // The leader's snapshot of a state machine is saved before the log
    // restarts after it: the state it replaces is gone once it does.
    return this.o.store
      .saveStateSnapshot(g.id, { index: snap.meta.index, term: snap.meta.term, conf: snap.meta.conf, data: snap.data })
      .then(() => this.persistLog(g, rd));
  }

  private persistLog(g: Group, rd: Ready): Promise<void> {
    const storage = this.storages.get(g.id)!;
    // The snapshot's install record goes first: entries of this Ready follow it in the log.
    const meta = rd.snapshot?.meta;
    let installed: Promise<void> | undefined;
    if (meta !== undefined) {
      // The state is replaced wholesale, unmarked: a change map kept from an earlier term as leader no longer says what changed.
      if (g.sm.snapshots.kind === "streamed") g.sm.snapshots.dropChanges();
      storage.forgetAll();
      installed = this.o.store.installSnapshot(g.id, meta.index, meta.term, meta.conf);
      g.confPoints = [{ index: meta.index, conf: meta.conf }];
    }
    for (const e of rd.entries) storage.remember(e);
    // Entries appended as they were proposed (appendEarly) are not appended again: same index and term, same entry.
    const early = (e: Entry): boolean => e.index >= g.earlyFrom && e.index <= g.earlyThrough && e.term === g.earlyTerm;
    const waitEarly = rd.entries.length > 0 && early(rd.entries[0]!);
    // A command may carry checksums its record's checksum folds from (a volume write's blocks).
    const entries = [];
    for (const e of rd.entries) {
      if (early(e)) continue;
      entries.push(this.entryInput(g, e.index, e.term, e.type, e.data));
    }
    const last = rd.entries.at(-1)?.index;
    if (meta !== undefined) g.appendedThrough = meta.index;
    if (last !== undefined) g.appendedThrough = Math.max(last, g.earlyThrough >= last && g.earlyTerm === rd.entries.at(-1)!.term ? g.earlyThrough : 0);
    // Listed now, or replaced in the store by entries of another term (a conflicting suffix): no longer early.
    if (last !== undefined && (last >= g.earlyThrough || entries.some((e) => e.index <= g.earlyThrough))) {
      g.earlyFrom = Infinity;
      g.earlyThrough = 0;
    }
    // A hard state whose only change is the commit index is not written alone
    // (it may lag on disk; it rides along with the next entries or vote): when
    // every entry of the Ready went early, writing it would add a group commit
    // to the wait for entries already durable or on their way.
    let hardState = rd.hardState ?? undefined;
    if (hardState !== undefined && entries.length === 0 && meta === undefined && hardState.term === g.hardTerm && hardState.vote === g.hardVote) hardState = undefined;
    if (hardState !== undefined) [g.hardTerm, g.hardVote] = [hardState.term, hardState.vote];
    const written = this.o.store.appendRaftEntries(g.id, entries, hardState);
    const appended = waitEarly ? Promise.all([g.earlyDurable, written]).then(() => {}) : written;
    if (meta === undefined) return appended;
    const data = rd.snapshot?.data;
    const snaps = g.sm.snapshots;
    return Promise.all([installed, appended]).then(() => {
      if (snaps.kind === "inline") snaps.restore(meta.index, data!, false);
      else this.snapshotReceiver.installed(g.id);
      g.applied = meta.index;
      this.o.log(`snapshot: group ${g.id}: installed the ${snaps.kind === "inline" ? `snapshot (${data?.length ?? 0} bytes)` : "copy"} at index ${meta.index}`);
    });
  }

  /** Sends the leader's appends, heartbeats, snapshots and transfer orders; returns the messages left for after persist. */
  private sendEarly(g: Group, messages: Message[]): Message[] {
    if (messages.length === 0 || g.node.status().role !== StateRole.leader) return messages;
    const later: Message[] = [];
    const snaps = g.sm.snapshots;
    for (const m of messages) {
      if (m.type === MessageType.snap) {
        if (snaps.kind === "inline") {
          // A state machine's snapshot is small and travels in the message. Once sent it
          // counts as delivered: the member's answer moves the leader on, and if the
          // message is lost the next probe finds the member still behind and sends it again.
          g.node.reportSnapshot(m.to, this.o.send(m.to, { kind: "raft", group: g.id, message: m }));
        } else {
          // The state's data goes first, in chunks; the message follows the last one.
          // A delta for a member that was away (it refuses one whose base it has not applied); a new replica, a learner, holds nothing.
          const changes = snaps.changes?.complete && !g.node.status().learners.includes(m.to) ? snaps.changes : undefined;
          this.snapshotSender.start(g.id, snaps.sizeBytes(), m, changes);
        }
      } else if (mayPrecedePersist(m.type)) {
        this.sendMessage(g, m);
      } else later.push(m);
    }
    return later;
  }

  /** Sends a message of a group: heartbeats and responses join this turn's envelope to their node, the rest go alone. */
  private sendMessage(g: Group, m: Message): void {
    if (!isBeat(m)) {
      if (!this.o.send(m.to, { kind: "raft", group: g.id, message: m })) g.node.reportUnreachable(m.to);
      return;
    }
    this.beats.add(g.id, m);
    if (this.beatsFlushQueued) return;
    this.beatsFlushQueued = true;
    // A microtask runs once the code that made them has returned: the pass
    // over every group's Ready (sendEarly), or the persist callbacks of one
    // group commit, which resolve together (afterPersist). So one envelope
    // spans every group, no message leaves before the point it would have
    // left alone, and none is written to the socket a turn later (the
    // transport writes once per event-loop turn anyway).
    queueMicrotask(() => {
      this.beatsFlushQueued = false;
      this.beats.flush();
    });
  }

  private applyCommitted(g: Group, entries: readonly Entry[]): void {
    if (entries.length === 0) return;
    // An entry at or below the applied index was applied as it became durable (applyEarly).
    for (const e of entries) if (e.index > g.applied) this.apply(g, e);
    const handed = entries[entries.length - 1]!.index;
    this.releaseReads(g);
    this.storages.get(g.id)?.releaseThrough(this.cachedEntriesDoneThrough(g));
    const snaps = g.sm.snapshots;
    // The group's only member needs no log behind what it applied: compacted
    // now, not at the next round, the store's Raft index (an object per
    // entry) stays short instead of holding every write of the last
    // compactEveryTicks (which the collector then copies and promotes).
    // Only as far as the core has handed out as committed: an entry applied
    // early may still be in the core's unstable log, to be listed in a Ready.
    if (snaps.kind === "streamed" && this.onlyMember(g)) this.compact(g, handed);
    if (snaps.kind !== "inline" || g.savingSnapshot) return;
    const last = Math.max(g.snapshotTriedAt, this.o.store.stateSnapshot(g.id)?.index ?? 0);
    if (g.applied - last >= snaps.everyEntries) this.saveSnapshot(g, snaps);
  }

  /**
   * Saves a snapshot of a group's state machine at its applied index, then
   * compacts the log behind it, keeping the tail for members a little behind
   * (each node does this on its own; no member needs another's log for it).
   */
  private saveSnapshot(g: Group, sm: InlineSnapshots): void {
    const index = g.applied;
    const term = this.o.store.raftTerm(g.id, index);
    assert(term !== undefined, () => `group ${g.id}: the applied entry ${index} is in the log`);
    const conf = confAt(g.confPoints, index) ?? this.storages.get(g.id)!.conf();
    const data = sm.snapshot(index);
    g.savingSnapshot = true;
    g.snapshotTriedAt = index;
    this.o.store.saveStateSnapshot(g.id, { index, term, conf, data }).then(
      () => {
        g.savingSnapshot = false;
        if (this.groups.get(g.id) !== g) return;
        const before = this.o.store.raftFirstIndex(g.id);
        this.compact(g, index - sm.logTailEntries);
        const after = this.o.store.raftFirstIndex(g.id);
        this.o.log(`snapshot: group ${g.id}: saved a snapshot at index ${index} (${data.length} bytes)${after > before ? `; log compacted to ${after - 1}` : ""}`);
      },
      (e: Error) => {
        // Nothing is compacted: the log still holds everything since the last snapshot.
        g.savingSnapshot = false;
        this.o.log(`snapshot: group ${g.id}: could not save a snapshot at index ${index}: ${e.message}`);
      },
    );
  }

  /** The last index no one here needs from memory: applied, and on a leader held by every follower it streams entries to. */
  private cachedEntriesDoneThrough(g: Group): number {
    let upTo = g.applied;
    const progress = g.node.progress();
    if (progress === undefined) return upTo;
    for (const p of progress) {
      if (p.id !== this.o.nodeId && p.state === ProgressState.replicate) upTo = Math.min(upTo, p.match);
    }
    return upTo;
  }

  private afterPersist(g: Group, rd: Ready): void {
    if (!this.groups.has(g.id)) return;
    if (rd.softState) {
      g.lead = rd.softState.lead;
      g.role = rd.softState.role;
      this.snapshotReceiver.leaderIs(g.id, g.lead);
      if (g.role !== StateRole.leader) this.failReads(g, new NotLeaderError(g.id, g.lead));
    }
    if (rd.hardState !== null && rd.hardState.term > g.term) {
      g.term = rd.hardState.term;
      this.dropOlderProposals(g);
    }
    for (const m of rd.messages) this.sendMessage(g, m);
    for (const rs of rd.readStates) {
      const waiters = g.readRounds.get(Buffer.from(rs.context).toString("hex"));
      if (waiters === undefined) continue;
      g.readRounds.delete(Buffer.from(rs.context).toString("hex"));
      g.readsAwaitingApply.push({ index: rs.index, waiters });
    }
    this.releaseReads(g);
    g.node.advance();
    g.readyInFlight = false;
    // What the persist made committable (all of it, when this node is the
    // only voter) is applied and its next entries go to the log now, not a
    // turn later; the other groups' Readies come in the scheduled pass.
    this.processReady(g);
    this.schedule();
  }

  private apply(g: Group, e: Entry): void {
    g.sm.apply(e.index, e.type === EntryType.normal && e.data.length > 0 ? e.data : null);
    this.o.store.markApplied(g.id, e.index);
    if (e.type === EntryType.confChange) g.confPoints.push({ index: e.index, conf: decodeConfChange(e.data).conf });
    g.applied = e.index;
    const w = g.proposals.get(e.index);
    if (w === undefined) return;
    g.proposals.delete(e.index);
    // The entry at this index is ours only if it still has the term we proposed it in.
    if (w.term === e.term) w.resolve();
    else w.reject(new ProposalDroppedError(`entry ${e.index} of group ${g.id} was replaced by a newer leader's log; retry the request`));
  }

  /**
   * The term moved on: a proposal of an older term not applied yet may never
   * be. The new leader may have cut its entry from this node's log, and if
   * nothing is ever proposed at that index again, nothing would answer it.
   * Its outcome is unknown (the entry may still commit); the caller retries,
   * which is safe for volume writes and trims (they are idempotent).
   */
  private dropOlderProposals(g: Group): void {
    for (const [index, w] of g.proposals) {
      if (w.term >= g.term) continue;
      g.proposals.delete(index);
      w.reject(new ProposalDroppedError(`entry ${index} of group ${g.id} was proposed in term ${w.term}, and leadership moved on (term ${g.term}) before it was applied; its outcome is unknown, retry the request`));
    }
  }

  /** Starts one ReadIndex round for every read that arrived since the last one. */
  private startReadRound(g: Group): void {
    if (g.pendingReads.length === 0) return;
    const waiters = g.pendingReads;
    g.pendingReads = [];
    const context = Buffer.alloc(8);
    context.writeUInt32LE(this.readSeq++ >>> 0, 0);
    context.writeUInt32LE(g.id >>> 0, 4);
    if (!g.node.readIndex(context)) {
      for (const w of waiters) w.reject(new NotLeaderError(g.id, g.node.status().lead));
      return;
    }
    g.readRounds.set(context.toString("hex"), waiters);
  }

  private releaseReads(g: Group): void {
    for (let i = 0; i < g.readsAwaitingApply.length; ) {
      const r = g.readsAwaitingApply[i]!;
      if (r.index <= g.applied) {
        for (const w of r.waiters) w.resolve();
        g.readsAwaitingApply.splice(i, 1);
      } else i++;
    }
  }

  private failReads(g: Group, e: Error): void {
    for (const w of g.pendingReads) w.reject(e);
    g.pendingReads = [];
    for (const ws of g.readRounds.values()) for (const w of ws) w.reject(e);
    g.readRounds.clear();
    for (const r of g.readsAwaitingApply) for (const w of r.waiters) w.reject(e);
    g.readsAwaitingApply.length = 0;
  }

  private failAll(g: Group, e: Error): void {
    for (const w of g.proposals.values()) w.reject(e);
    g.proposals.clear();
    this.failReads(g, e);
  }
}

function ignore(): void {}
