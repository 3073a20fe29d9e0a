// Seeded deterministic simulation of a Raft group (TigerBeetle's VOPR in
// spirit). One seed drives everything: N cores plus spare nodes, a network
// that drops, delays, duplicates and reorders messages, partitions (two-way
// and one-way) that come and heal, crashes that lose all unpersisted state,
// membership changes, leadership transfers, compaction and snapshots (streamed
// in chunks by the simulated transport, which reports each transfer's outcome
// to the leader's core), client writes and linearizable reads. Every message goes through msgpackr, which
// proves the core's messages are plain data.
//
// Disk and process faults:
//   - a crash loses every write not yet synced: a Ready whose mustSync was
//     false (a commit-only hard state) was written but not fdatasynced, so a
//     crash drops it and every such write before the last sync;
//   - a crash in the middle of a Ready's persist: its entries (and snapshot)
//     reached the disk but not its hard state, or the hard state but not the
//     entries (a storage that writes them to different places, in any order);
//   - a paused process (SIGSTOP, a long GC, a stalled VM): a node stops
//     ticking, stepping and handling Readies for up to four election timeouts,
//     and resumes with its state as it was, its messages queued meanwhile.
//
// Clients: writes and ReadIndex reads of a few registers go through whichever
// node believes it leads. A write completes when its node applies its entry
// (with the term it was proposed in; another term there means it failed); a
// read completes once its node has applied up to the read's index, with the
// register's value there. At the end the history of invocations and
// completions the clients saw must be linearizable (linearizability.ts).
//
// Invariants, checked after every step:
//   - election safety: at most one leader per term;
//   - log matching on the committed prefix: every node applies, at each index,
//     the same entry (term and data) as every other node, so state machines
//     apply the same sequence (their hashes agree index by index);
//   - leader completeness: a new leader holds every entry known committed;
//   - durability: a node's commit index never passes its own log, and what any
//     node ever saw committed is never overwritten;
//   - reads: a ReadIndex answer is at least the highest commit index anyone knew
//     when the read was issued (linearizable);
//   - commit safety, checked whenever a node's commit index moves: the entry at
//     its commit point is durable (in storage) on a quorum, and no node that
//     lacks it could win an election (its log is at least as up-to-date as a
//     quorum of voters'). Raft's leader-completeness argument says this always
//     holds; a leader that commits an older term's entry by counting (Figure 8)
//     or a follower that commits past what it knows matches breaks it at once,
//     long before a later leader actually overwrites the entry.
// Half the seeds run a "churn" profile that makes the Figure 8 situation common:
// one entry per append, new leaders crashed or cut off right after persisting
// their first entries, leaders that replicate to one follower and then crash,
// and forced campaigns.
//   - monotony: within one incarnation a node's commit index never goes back,
//     and a snapshot it installs is past what its state machine applied.
// Liveness: after the fault phase the network heals, every node restarts, and
// within a bounded number of ticks a leader must commit a new entry on every member.

import { Packr } from "msgpackr";
import { Prng } from "../../src/base/prng.js";
import { ConfChangeType, decodeConfChange } from "../../src/raft/confchange.js";
import { inspectCore, RaftNode } from "../../src/raft/node.js";
import type { Raft, RaftConfig } from "../../src/raft/raft.js";
import type { Ready } from "../../src/raft/node.js";
import { MemoryStorage } from "../../src/raft/storage.js";
import type { ConfState, Entry, HardState, Message, NodeId } from "../../src/raft/types.js";
import { EntryType, mayPrecedePersist, MessageType, StateRole } from "../../src/raft/types.js";
import { checkRegisters, RegisterHistory } from "./linearizability.js";

export interface SimOptions {
  seed: number;
  /** Voters at start (3 or 5). Two more spare nodes can join through membership changes. */
  nodes: number;
  /** Ticks with faults, then the liveness phase. */
  faultTicks: number;
  livenessTicks: number;
  log?: (line: string) => void;
}

export interface SimResult {
  seed: number;
  ticks: number;
  commits: number;
  elections: number;
  reads: number;
  crashes: number;
  confChanges: number;
  snapshots: number;
  transfers: number;
  messages: number;
  /** Snapshot transfers the transport completed / gave up on (reported to the leader's core). */
  snapshotTransfersOk: number;
  snapshotTransfersFailed: number;
  /** Crashes that dropped a written, unsynced hard state; crashes in the middle of a Ready's persist. */
  unsyncedLost: number;
  tornPersists: number;
  pauses: number;
  /** Client operations on the registers in the history checked for linearizability. */
  registerOps: number;
}

export class SimFailure extends Error {
  override name = "SimFailure";
}

interface StateMachine {
  applied: number;
  hash: number;
  conf: ConfState;
  /** The registers clients write and read: the value of the last write applied to each. */
  regs: string[];
}

interface SimNode {
  id: NodeId;
  storage: MemoryStorage;
  node: RaftNode | null; // null while crashed
  incarnation: number;
  sm: StateMachine;
  downUntil: number;
  /** The commit index whose entry the commit-safety check last looked at. */
  commitChecked: number;
  /** Churn: what to do to this node after its next Ready is persisted. */
  pendingFault: "none" | "crash" | "oneThenCrash";
  /** Transport state (lost on a crash): snapshot transfers sent and being received, by transfer id. */
  sending: Map<number, Transfer>;
  receiving: Map<number, Assembly>;
  received: Set<number>;
  /**
   * A Ready taken whose persist is still "running" (lost on a crash), with
   * whether the node led when it took it. Meanwhile messages are stepped and
   * takeCommitted() applies what they commit, as the driver does.
   */
  held: { r: Ready; leader: boolean } | undefined;
  /** This incarnation sends a leader's appends and heartbeats when it takes a Ready, before persisting it, as the driver does (sendEarly). */
  sendEarly: boolean;
  /** How likely a held Ready's persist is still running at each chance to finish it: 0.3, or 0.7 for a slow disk (acknowledgements then often arrive first). */
  holdChance: number;
  /** The hard state as of the last fdatasync: what a crash leaves of the hard state. */
  syncedHardState: HardState;
  /** A paused process does nothing before this tick (0: running). */
  pausedUntil: number;
  /** The highest commit index this incarnation had. */
  commitSeen: number;
  /** Client writes this incarnation proposed, by log index, until it applies that index. */
  proposals: Map<number, { term: number; op: number }>;
  /** Confirmed client reads waiting for the apply to reach their index. */
  readsAwaitingApply: { index: number; op: number; key: number }[];
}

/** A node's log as the commit-safety check sees it: in memory while up, its storage while down. */
interface LogView {
  snapIndex: number;
  lastIndex: number;
  term(i: number): number; // -1 if unknown
}

/**
 * What travels on the simulated network: a whole message, one chunk of a snapshot
 * transfer, or the receiver transport's acknowledgment that a transfer completed.
 */
interface InFlight {
  at: number;
  kind: "msg" | "chunk" | "chunkAck";
  /** msg: the packed Message; chunk: a packed Chunk; chunkAck: empty. */
  bytes: Uint8Array;
  from: NodeId;
  to: NodeId;
  fromIncarnation: number;
  transfer: number;
}

/** Chunk 0 carries the snap message with empty data; chunks 1..total-1 carry the data in order. */
interface Chunk {
  seq: number;
  total: number;
  payload: Uint8Array;
}

/** The receiving transport's reassembly of one snapshot transfer. */
interface Assembly {
  chunks: (Uint8Array | undefined)[];
  got: number;
}

/** The sending transport's record of a transfer the core is waiting on. */
interface Transfer {
  to: NodeId;
  deadline: number;
}

interface PendingRead {
  node: NodeId;
  incarnation: number;
  minIndex: number;
  /** The register it reads and its operation in the client history. */
  key: number;
  op: number;
}

/** Registers the clients use; few, so that reads often meet the writes they must see. */
const registerCount = 3;


const packr = new Packr({ useRecords: false });

export function runSim(opts: SimOptions): SimResult {
  return new Sim(opts).run();
}

class Sim {
  private readonly rng: Prng;
  private readonly nodes = new Map<NodeId, SimNode>();
  private readonly ids: NodeId[] = [];
  private net: InFlight[] = [];
  private now = 0;
  private faults = true;
  private readonly cut = new Set<string>();
  private dropP: number;
  private dupP: number;
  private delayMax: number;
  // Global truth.
  private readonly leaderOfTerm = new Map<number, NodeId>();
  private readonly committedTerm: number[] = [0];
  private readonly committedData: string[] = [""];
  private readonly hashAt: number[] = [0];
  private maxCommit = 0;
  private readonly reads = new Map<string, PendingRead>();
  private seq = 0;
  private readonly result: SimResult;
  /** The configuration of the highest committed config entry (or the bootstrap one). */
  private committedConf: ConfState;
  /** Every voter set a leader had in force, with the leader's term: one of them decided each commit. */
  private readonly leaderConfs: { term: number; voters: NodeId[] }[] = [];
  /** The churn profile (see the header); fixed per seed. */
  private readonly churn: boolean;
  private readonly appendBytesMax: number;
  /** The transport streams snapshot data in chunks of this many bytes. */
  private readonly chunkBytes: number;
  private transferSeq = 0;
  /** What the clients saw of their register operations. */
  private readonly history = new RegisterHistory();

  constructor(private readonly opts: SimOptions) {
    this.rng = new Prng(opts.seed);
    this.dropP = 0.02 + this.rng.int(8) / 100;
    this.dupP = this.rng.int(5) / 100;
    this.delayMax = 1 + this.rng.int(4);
    this.churn = this.rng.chance(0.5);
    this.appendBytesMax = this.churn ? [1, 64, 256][this.rng.int(3)] as number : 4096;
    this.chunkBytes = [4, 8, 16][this.rng.int(3)] as number;
    this.result = { seed: opts.seed, ticks: 0, commits: 0, elections: 0, reads: 0, crashes: 0, confChanges: 0, snapshots: 0, transfers: 0, messages: 0, snapshotTransfersOk: 0, snapshotTransfersFailed: 0,
      unsyncedLost: 0, tornPersists: 0, pauses: 0, registerOps: 0 };
    const voters = Array.from({ length: opts.nodes }, (_, i) => i + 1);
    this.committedConf = { voters, learners: [] };
    for (let id = 1; id <= opts.nodes + 2; id++) {
      const conf = id <= opts.nodes ? { voters, learners: [] } : { voters: [], learners: [] };
      const storage = new MemoryStorage(conf);
      const n: SimNode = { id, storage, node: null, incarnation: 0, sm: { applied: 0, hash: 0, conf, regs: emptyRegs() }, downUntil: 0, commitChecked: 0, pendingFault: "none",
        sending: new Map(), receiving: new Map(), received: new Set(), held: undefined, sendEarly: false, holdChance: 0.3,
        syncedHardState: storage.hardStateNow(), pausedUntil: 0, commitSeen: 0, proposals: new Map(), readsAwaitingApply: [] };
      this.nodes.set(id, n);
      this.ids.push(id);
      this.start(n);
    }
  }

  run(): SimResult {
    const total = this.opts.faultTicks + this.opts.livenessTicks;
    let finalIndex = 0;
    let finalTerm = 0;
    let done = false;
    for (this.now = 1; this.now <= total && !done; this.now++) {
      if (this.now === this.opts.faultTicks + 1) this.stopFaults();
      if (this.faults) this.injectFaults();
      else this.decommissionRemoved();
      this.clientRequests();
      this.tickAll();
      this.expireTransfers();
      this.deliver();
      if (!this.faults) {
        const lead = this.stableLeader();
        if (lead !== null) {
          const r = lead.node as RaftNode;
          if (finalIndex === 0 || r.status().term !== finalTerm) {
            const idx = r.propose(this.data(`final-${this.now}`));
            if (idx > 0) {
              finalIndex = idx;
              finalTerm = r.status().term;
            }
          }
          if (finalIndex > 0 && this.committedTerm[finalIndex] === finalTerm) {
            const members = [...r.status().voters, ...r.status().learners];
            done = members.every((id) => this.node(id).sm.applied >= finalIndex);
          }
        }
      }
    }
    this.result.ticks = this.now - 1;
    if (!done) this.fail(`liveness: no leader committed a new entry on every member within ${this.opts.livenessTicks} ticks after the faults stopped (final ${finalIndex}/${finalTerm})\n${this.describe()}`);
    const lin = checkRegisters(this.history.ops(), "");
    if (!lin.ok) this.fail(`linearizability: the register history clients saw is not linearizable: ${lin.why}`);
    this.result.registerOps = lin.ok ? lin.ops : 0;
    return this.result;
  }

  // ---- nodes ----

  private node(id: NodeId): SimNode {
    const n = this.nodes.get(id);
    if (n === undefined) throw new SimFailure(`no node ${id}`);
    return n;
  }

  private start(n: SimNode): void {
    const snap = n.storage.snapshot();
    n.incarnation++;
    n.commitChecked = 0;
    n.pendingFault = "none";
    n.sending = new Map();
    n.receiving = new Map();
    n.received = new Set();
    n.held = undefined;
    n.sendEarly = this.rng.chance(0.5);
    n.holdChance = this.rng.chance(0.5) ? 0.3 : 0.7;
    n.pausedUntil = 0;
    n.commitSeen = 0;
    n.proposals = new Map();
    n.readsAwaitingApply = [];
    n.syncedHardState = n.storage.hardStateNow();
    if (snap.meta.index > 0) {
      const s = decodeState(snap.data);
      n.sm = { applied: snap.meta.index, hash: s.hash, conf: snap.meta.conf, regs: [...s.regs] };
    } else {
      n.sm = { applied: 0, hash: 0, conf: snap.meta.conf, regs: emptyRegs() };
    }
    const cfg: RaftConfig = {
      id: n.id,
      storage: n.storage,
      applied: n.sm.applied,
      electionTicks: 10,
      heartbeatTicks: 1 + this.rng.int(2),
      random: new Prng(this.rng.nextU32()),
      preVote: this.rng.chance(0.7),
      checkQuorum: this.rng.chance(0.7),
      appendBytesMax: this.appendBytesMax,
      inflightMsgsMax: 4,
      inflightBytesMax: 16384,
      uncommittedBytesMax: 1 << 20,
      readIndexPendingMax: 64,
      committedBytesMax: 8192,
    };
    try {
      n.node = new RaftNode(cfg);
    } catch (err) {
      this.fail(`node ${n.id} cannot restart from what it persisted: ${(err as Error).message}\n${this.describe()}`);
    }
  }

  /**
   * The process dies: everything in memory is gone, and of the disk only what
   * was synced stays (a commit-only hard state written since the last
   * fdatasync is lost). Client operations in flight there stay open: their
   * outcome is unknown to the client.
   */
  private crash(n: SimNode): void {
    if (n.node === null) return;
    this.trace(`crash ${n.id}`);
    n.node = null;
    n.downUntil = this.now + 5 + this.rng.int(this.churn ? 15 : 40);
    this.result.crashes++;
    const written = n.storage.hardStateNow();
    const synced = n.syncedHardState;
    if (written.term !== synced.term || written.vote !== synced.vote || written.commit !== synced.commit) {
      this.trace(`crash ${n.id} loses its unsynced hard state (commit ${written.commit} -> ${synced.commit})`);
      n.storage.setHardState(synced);
      this.result.unsyncedLost++;
    }
  }

  private paused(n: SimNode): boolean {
    return n.node !== null && this.now < n.pausedUntil;
  }

  /** The process stops (SIGSTOP, a long GC pause) for up to four election timeouts; it resumes with its state as it was. */
  private pause(n: SimNode): void {
    if (n.node === null || this.paused(n)) return;
    n.pausedUntil = this.now + 5 + this.rng.int(40);
    this.trace(`pause ${n.id} until ${n.pausedUntil}`);
    this.result.pauses++;
  }

  // ---- faults and client load ----

  private injectFaults(): void {
    const rng = this.rng;
    if (rng.chance(0.004)) {
      const up = this.ids.filter((id) => this.node(id).node !== null);
      const victim = up[rng.int(up.length)];
      if (victim !== undefined) this.crash(this.node(victim));
    }
    for (const n of this.nodes.values()) {
      if (n.node === null && this.now >= n.downUntil) {
        this.trace(`restart ${n.id}`);
        this.start(n);
      }
    }
    if (rng.chance(0.003)) this.pause(this.node(this.ids[rng.int(this.ids.length)] as NodeId));
    if (rng.chance(0.01)) this.partition();
    if (this.cut.size > 0 && rng.chance(0.02)) {
      this.trace("heal");
      this.cut.clear();
    }
    const lead = this.anyLeader();
    if (lead !== null) {
      if (rng.chance(0.01)) this.changeMembership(lead);
      if (rng.chance(0.004)) {
        const voters = lead.status().voters;
        const to = voters[rng.int(voters.length)];
        if (to !== undefined && lead.transferLeadership(to)) {
          this.trace(`transfer ${lead.status().id} -> ${to}`);
          this.result.transfers++;
        }
      }
    }
    if (rng.chance(0.02)) this.compact(this.node(this.ids[rng.int(this.ids.length)] as NodeId));
    if (this.churn && rng.chance(0.03)) this.forceCampaign();
  }

  /** Churn: a follower campaigns now, half the time the one with the most up-to-date log (it wins most often). */
  private forceCampaign(): void {
    const up = this.ids.map((id) => this.node(id)).filter((n) => n.node !== null && !this.paused(n) && n.node.status().role !== StateRole.leader);
    let pick = up[this.rng.int(up.length)];
    if (this.rng.chance(0.5)) {
      for (const n of up) {
        const a = inspectCore(n.node as RaftNode).log;
        const b = pick?.node == null ? undefined : inspectCore(pick.node).log;
        if (b === undefined || a.lastTerm() > b.lastTerm() || (a.lastTerm() === b.lastTerm() && a.lastIndex() > b.lastIndex())) pick = n;
      }
    }
    if (pick === undefined || pick.node === null) return;
    this.trace(`campaign ${pick.id}`);
    pick.node.campaign();
    this.handleReady(pick);
  }

  private partition(): void {
    const rng = this.rng;
    if (rng.chance(0.3)) {
      const a = this.ids[rng.int(this.ids.length)] as NodeId;
      const b = this.ids[rng.int(this.ids.length)] as NodeId;
      if (a !== b) {
        this.cut.add(`${a}>${b}`);
        this.trace(`cut ${a}>${b} (one way)`);
      }
      return;
    }
    const side = new Set(this.ids.filter(() => rng.chance(0.4)));
    for (const a of this.ids) for (const b of this.ids) if (side.has(a) !== side.has(b)) this.cut.add(`${a}>${b}`);
    this.trace(`partition {${[...side].join(",")}} | rest`);
  }

  private changeMembership(lead: RaftNode): void {
    const conf = inspectCore(lead).currentConf();
    const rng = this.rng;
    const outsiders = this.ids.filter((id) => !conf.voters.includes(id) && !conf.learners.includes(id));
    const choices: { type: ConfChangeType; nodeId: NodeId }[] = [];
    for (const id of outsiders) choices.push({ type: ConfChangeType.addLearner, nodeId: id });
    for (const id of conf.learners) {
      if (conf.voters.length < 5) choices.push({ type: ConfChangeType.addVoter, nodeId: id });
      choices.push({ type: ConfChangeType.removeNode, nodeId: id });
    }
    if (conf.voters.length > 3) for (const id of conf.voters) choices.push({ type: ConfChangeType.removeNode, nodeId: id });
    const change = choices[rng.int(choices.length)];
    if (change === undefined) return;
    const r = lead.proposeConfChange(change);
    if ("index" in r) {
      this.trace(`conf ${["", "addVoter", "addLearner", "remove"][change.type]} ${change.nodeId} at ${r.index}`);
      this.result.confChanges++;
    }
  }

  private compact(n: SimNode): void {
    if (n.node === null || this.paused(n)) return;
    const at = n.sm.applied;
    if (at <= n.storage.firstIndex() || at > n.storage.lastIndex()) return;
    n.storage.createSnapshot(at, n.sm.conf, encodeState(at, n.sm.hash, n.sm.regs));
    n.storage.compact(at);
    this.trace(`compact ${n.id} at ${at}`);
  }

  private stopFaults(): void {
    this.trace("faults stop");
    this.faults = false;
    this.cut.clear();
    this.dropP = 0;
    this.dupP = 0;
    this.delayMax = 1;
    for (const n of this.nodes.values()) n.pausedUntil = 0;
    for (const n of this.nodes.values()) if (n.node === null) this.start(n);
    this.decommissionRemoved();
  }

  /**
   * After the faults, nodes outside the group are shut down, as pxd's driver shuts down a
   * replica once its removal commits. A removed node may never learn of its removal (the
   * leader stops sending to it), and one without PreVote would keep raising terms and
   * deposing leaders: that is Raft's known removed-server problem, not a liveness bug.
   */
  private decommissionRemoved(): void {
    const keep = new Set([...this.committedConf.voters, ...this.committedConf.learners]);
    // A member in anyone else's configuration in force (an addition not yet committed) stays.
    for (const id of this.ids) {
      const r = coreOf(this.node(id));
      if (r === undefined) continue;
      const conf = r.currentConf();
      for (const m of [...conf.voters, ...conf.learners]) if (m !== id) keep.add(m);
    }
    for (const id of this.ids) {
      const n = this.node(id);
      if (n.node !== null && !keep.has(id)) {
        this.trace(`decommission ${id}`);
        n.node = null;
        n.downUntil = Number.MAX_SAFE_INTEGER;
      }
    }
  }

  private clientRequests(): void {
    // Clients reach any node that believes it leads, including a deposed leader
    // that has not noticed yet (but not a paused one: it answers nothing).
    const leaders = this.ids.map((id) => this.node(id)).filter((n) => n.node !== null && !this.paused(n) && n.node.status().role === StateRole.leader);
    const sn = leaders[this.rng.int(leaders.length)];
    if (sn === undefined || sn.node === null) return;
    const lead = sn.node;
    const rng = this.rng;
    if (this.faults && rng.chance(0.5)) {
      const count = 1 + rng.int(3);
      for (let i = 0; i < count; i++) {
        const key = rng.int(registerCount);
        const value = `w${++this.seq}`;
        const index = lead.propose(this.data(encodeWrite(key, value, "x".repeat(rng.int(3) === 0 ? rng.int(3000) : rng.int(20)))));
        if (index === 0) continue;
        const term = lead.status().term;
        sn.proposals.set(index, { term, op: this.history.invoke("write", key, value, `node ${sn.id} at ${index}/${term}`) });
      }
    }
    if (rng.chance(0.1)) {
      const ctx = `r${++this.seq}`;
      const key = rng.int(registerCount);
      const op = this.history.invoke("read", key, "", `node ${sn.id} read ${ctx}`);
      if (lead.readIndex(new TextEncoder().encode(ctx))) {
        this.reads.set(ctx, { node: sn.id, incarnation: sn.incarnation, minIndex: this.maxCommit, key, op });
      } else this.history.fail(op);
    }
  }

  private data(s: string): Uint8Array {
    return new TextEncoder().encode(s);
  }

  // ---- time and network ----

  private tickAll(): void {
    for (const id of this.ids) {
      const n = this.node(id);
      if (n.node === null || this.paused(n)) continue;
      n.node.tick();
      this.check();
      this.handleReady(n);
    }
  }

  private deliver(): void {
    const due: InFlight[] = [];
    const later: InFlight[] = [];
    for (const f of this.net) (f.at <= this.now ? due : later).push(f);
    this.net = later;
    // Reorder: deliver the due messages in a random order.
    for (let i = due.length - 1; i > 0; i--) {
      const j = this.rng.int(i + 1);
      const t = due[i] as InFlight;
      due[i] = due[j] as InFlight;
      due[j] = t;
    }
    for (const f of due) {
      const to = this.node(f.to);
      if (to.node === null) continue; // lost; a sender waiting on a snapshot transfer times out
      if (this.paused(to)) {
        this.net.push({ ...f, at: to.pausedUntil }); // queued for it (a socket buffer) until it resumes
        continue;
      }
      if (f.kind === "chunk") this.receiveChunk(to, f);
      else if (f.kind === "chunkAck") this.transferDone(to, f.transfer, true);
      else this.stepInto(to, packr.unpack(f.bytes) as Message);
    }
    for (const id of this.ids) this.handleReady(this.node(id));
  }

  private stepInto(to: SimNode, m: Message): void {
    (to.node as RaftNode).step(m);
    this.result.messages++;
    this.check();
    this.handleReady(to);
  }

  private send(from: SimNode, m: Message): void {
    if (m.type === MessageType.snap) {
      this.sendSnapshot(from, m);
      return;
    }
    this.transmit(from, m.to, "msg", packr.pack(m), 0);
  }

  /** Puts one packet on the network: maybe cut or dropped, maybe duplicated, delayed a random time. */
  private transmit(from: SimNode, to: NodeId, kind: InFlight["kind"], bytes: Uint8Array, transfer: number): void {
    if (this.cut.has(`${from.id}>${to}`) || this.rng.chance(this.dropP)) return;
    const copies = this.rng.chance(this.dupP) ? 2 : 1;
    for (let k = 0; k < copies; k++) {
      this.net.push({ at: this.now + this.rng.int(this.delayMax + 1), kind, bytes, from: from.id, to, fromIncarnation: from.incarnation, transfer });
    }
  }

  // ---- snapshot transfers, as a real transport does them ----
  //
  // The core hands out one snap message; the transport streams it as chunks, any of
  // which may be lost, delayed, duplicated or reordered. The receiver reassembles
  // them, steps the whole message into its core and acknowledges; the sender reports
  // reportSnapshot(to, true) on the acknowledgment, or reportSnapshot(to, false) when
  // the transfer did not finish in time (it may have: the acknowledgment can be lost).

  private sendSnapshot(from: SimNode, m: Message): void {
    const snap = m.snapshot;
    if (snap === null) throw new SimFailure("a snap message without a snapshot");
    const id = ++this.transferSeq;
    from.sending.set(id, { to: m.to, deadline: this.now + 8 + 3 * this.delayMax });
    const header = packr.pack({ ...m, snapshot: { meta: snap.meta, data: new Uint8Array(0) } });
    const parts: Uint8Array[] = [header];
    for (let at = 0; at < snap.data.byteLength; at += this.chunkBytes) parts.push(snap.data.subarray(at, at + this.chunkBytes));
    parts.forEach((payload, seq) => {
      const chunk: Chunk = { seq, total: parts.length, payload };
      this.transmit(from, m.to, "chunk", packr.pack(chunk), id);
    });
  }

  private receiveChunk(to: SimNode, f: InFlight): void {
    if (to.received.has(f.transfer)) return; // a duplicate of a finished transfer
    const c = packr.unpack(f.bytes) as Chunk;
    if (!(c.payload instanceof Uint8Array)) throw new SimFailure("chunk data did not survive encoding");
    let a = to.receiving.get(f.transfer);
    if (a === undefined) {
      a = { chunks: new Array<Uint8Array | undefined>(c.total).fill(undefined), got: 0 };
      to.receiving.set(f.transfer, a);
    }
    if (a.chunks[c.seq] !== undefined) return;
    a.chunks[c.seq] = c.payload;
    a.got++;
    if (a.got < c.total) return;
    to.receiving.delete(f.transfer);
    to.received.add(f.transfer);
    const m = packr.unpack(a.chunks[0] as Uint8Array) as Message;
    const snap = m.snapshot;
    if (snap === null) throw new SimFailure("chunk 0 of a transfer is not a snap message");
    const data = new Uint8Array(a.chunks.slice(1).reduce((k, p) => k + (p as Uint8Array).byteLength, 0));
    let at = 0;
    for (const p of a.chunks.slice(1)) {
      data.set(p as Uint8Array, at);
      at += (p as Uint8Array).byteLength;
    }
    m.snapshot = { meta: snap.meta, data };
    this.stepInto(to, m);
    // Acknowledge to the sender's transport (the core's own answer, an appResp, travels separately).
    if (to.node !== null) this.transmit(to, f.from, "chunkAck", new Uint8Array(0), f.transfer);
  }

  /** The sending transport learns a transfer's outcome; only the incarnation that started it reports it. */
  private transferDone(sender: SimNode, transfer: number, ok: boolean): void {
    const t = sender.sending.get(transfer);
    if (t === undefined || sender.node === null) return; // already reported, or started by an earlier incarnation
    sender.sending.delete(transfer);
    if (ok) this.result.snapshotTransfersOk++;
    else this.result.snapshotTransfersFailed++;
    this.trace(`snapshot transfer ${transfer} to ${t.to} ${ok ? "done" : "failed"}`);
    sender.node.reportSnapshot(t.to, ok);
    this.handleReady(sender);
  }

  /** Once a tick: transfers that did not finish in time are reported failed. */
  private expireTransfers(): void {
    for (const id of this.ids) {
      const n = this.node(id);
      if (this.paused(n)) continue; // its timers fire when it resumes
      for (const [transfer, t] of n.sending) if (this.now >= t.deadline) this.transferDone(n, transfer, false);
    }
  }

  // ---- the Ready loop, in the documented order ----

  private handleReady(n: SimNode): void {
    for (;;) {
      const node = n.node;
      if (node === null || this.paused(n)) return;
      if (n.held === undefined) {
        if (!node.hasReady()) return;
        const r = node.ready();
        // Committed entries are on disk already: applied before the persist, as the driver does.
        for (const e of r.committedEntries) this.apply(n, e);
        const leader = node.status().role === StateRole.leader;
        if (leader && n.sendEarly) r.messages = this.sendEarly(n, r.messages);
        n.held = { r, leader };
      } else {
        for (const e of node.takeCommitted()) this.apply(n, e);
      }
      this.check();
      // Sometimes the persist is still running when the next messages or tick arrive.
      if (this.rng.chance(n.holdChance)) return;
      const held = n.held;
      n.held = undefined;
      if (!this.processReady(n, node, held.r, held.leader)) return;
    }
  }

  /**
   * A leader's appends, heartbeats and transfer orders leave before its persist
   * (it counts itself toward a commit only after advance()), so followers can
   * commit its entries before they are on its own disk; returns the rest.
   */
  private sendEarly(n: SimNode, messages: Message[]): Message[] {
    const later: Message[] = [];
    for (const m of messages) {
      if (mayPrecedePersist(m.type)) this.send(n, m);
      else later.push(m);
    }
    return later;
  }

  /** Persists, sends and advances a held Ready; false if the node crashed on the way. */
  private processReady(n: SimNode, node: RaftNode, r: Ready, ledWhenTaken: boolean): boolean {
    if (this.faults && r.hardState !== null && (r.entries.length > 0 || r.snapshot !== null) && this.rng.chance(0.003)) {
      // A crash between the Ready's two writes: one reached the disk, the other did not.
      const part = this.rng.chance(0.5) ? "entries" : "hardState";
      this.trace(`crash ${n.id} in the middle of a persist: only its ${part === "entries" ? "entries" : "hard state"} reached the disk`);
      this.persist(n, r, part);
      this.result.tornPersists++;
      this.crash(n);
      return false;
    }
    this.persist(n, r, "all");
    const fault = this.faults ? n.pendingFault : "none";
    if (this.faults && r.entries.length > 0 && node.status().role === StateRole.leader && this.churn && fault === "none" && this.rng.chance(0.03)) {
      n.pendingFault = "oneThenCrash"; // a leader that replicates its new entries to one follower only, then crashes
    }
    if ((this.faults && this.rng.chance(0.002)) || fault === "crash") {
      // Crash after the fsync, before anything was sent: the persisted state must stand on its own.
      this.crash(n);
      return false;
    }
    if (n.pendingFault === "oneThenCrash" && this.faults) {
      const peers = [...new Set(r.messages.map((m) => m.to))];
      const only = peers[this.rng.int(peers.length)];
      this.trace(`leader ${n.id} replicates to ${only ?? "nobody"} only, then crashes`);
      for (const m of r.messages) if (m.to === only) this.send(n, m);
      this.crash(n);
      return false;
    }
    for (const m of r.messages) this.send(n, m);
    if (r.snapshot !== null) this.applySnapshot(n, r);
    // Reads of a Ready taken after the node stepped down are refused, as the
    // driver does (the client retries elsewhere).
    for (const rs of r.readStates) this.answerRead(n, rs.index, new TextDecoder().decode(rs.context), ledWhenTaken);
    node.advance();
    this.check();
    return true;
  }

  /**
   * Writes a Ready's snapshot and entries, then its hard state; `part` says
   * which of the two writes reached the disk before a crash. A hard state
   * written with mustSync is synced along with everything written before it;
   * one written without stays unsynced (a crash drops it) until the next sync.
   */
  private persist(n: SimNode, r: Ready, part: "all" | "entries" | "hardState"): void {
    const snap = r.snapshot;
    if (snap !== null && snap.meta.index <= n.sm.applied) {
      this.fail(`node ${n.id} would install a snapshot at ${snap.meta.index}, not past what it applied (${n.sm.applied}): its state would go back`);
    }
    if (part !== "hardState") {
      if (snap !== null) n.storage.applySnapshot(snap);
      n.storage.append(r.entries);
    }
    if (part !== "entries" && r.hardState !== null) {
      const hs = r.hardState;
      if (hs.commit > n.storage.lastIndex()) this.fail(`node ${n.id} persisted commit ${hs.commit} past its log ${n.storage.lastIndex()}`);
      n.storage.setHardState(hs);
    }
    if (part === "hardState" || (part === "all" && r.mustSync)) n.syncedHardState = n.storage.hardStateNow();
  }

  private applySnapshot(n: SimNode, r: Ready): void {
    const snap = r.snapshot;
    if (snap === null) return;
    const s = decodeState(snap.data);
    const want = this.hashAt[snap.meta.index];
    if (want !== undefined && want !== s.hash) this.fail(`node ${n.id} installed a snapshot at ${snap.meta.index} with a state that differs from the committed one`);
    n.sm = { applied: snap.meta.index, hash: s.hash, conf: snap.meta.conf, regs: [...s.regs] };
    this.result.snapshots++;
    // Writes proposed here at or below the snapshot are never applied here: their client does not learn the outcome.
    for (const index of [...n.proposals.keys()]) if (index <= snap.meta.index) n.proposals.delete(index);
    this.releaseReads(n);
  }

  private apply(n: SimNode, e: Entry): void {
    if (e.index !== n.sm.applied + 1) this.fail(`node ${n.id} applied ${e.index} after ${n.sm.applied}`);
    const text = new TextDecoder().decode(e.data);
    const knownTerm = this.committedTerm[e.index];
    if (knownTerm === undefined) {
      if (e.index !== this.committedTerm.length) this.fail(`gap in the committed log at ${e.index}`);
      this.committedTerm.push(e.term);
      this.committedData.push(text);
      this.result.commits++;
      if (e.type === EntryType.confChange) this.committedConf = decodeConfChange(e.data).conf;
    } else if (knownTerm !== e.term || this.committedData[e.index] !== text) {
      this.fail(`node ${n.id} applied ${e.index}/${e.term} "${text.slice(0, 20)}" but ${e.index}/${knownTerm} "${(this.committedData[e.index] ?? "").slice(0, 20)}" was committed`);
    }
    n.sm.hash = mix(n.sm.hash, e.term, text);
    n.sm.applied = e.index;
    if (e.type === EntryType.confChange) n.sm.conf = decodeConfChange(e.data).conf;
    const w = e.type === EntryType.normal ? decodeWrite(text) : undefined;
    if (w !== undefined) n.sm.regs[w.key] = w.value;
    const h = this.hashAt[e.index];
    if (h === undefined) this.hashAt[e.index] = n.sm.hash;
    else if (h !== n.sm.hash) this.fail(`node ${n.id} state after ${e.index} differs from the others'`);
    // The client of a write proposed here learns its outcome: its entry, or another leader's in its place.
    const p = n.proposals.get(e.index);
    if (p !== undefined) {
      n.proposals.delete(e.index);
      if (p.term === e.term) this.history.complete(p.op);
      else this.history.fail(p.op);
    }
    this.releaseReads(n);
  }

  /** A ReadState came out of a Ready: the read is served once the apply reaches its index, unless the node stopped leading meanwhile. */
  private answerRead(n: SimNode, index: number, ctx: string, ledWhenTaken: boolean): void {
    const req = this.reads.get(ctx);
    if (req === undefined) return; // a retried context answered twice
    this.reads.delete(ctx);
    if (!ledWhenTaken) {
      // Refused, as the driver does (the client retries elsewhere).
      this.trace(`node ${n.id} refuses read ${ctx}: it no longer leads`);
      this.history.fail(req.op);
      return;
    }
    if (req.node !== n.id || req.incarnation !== n.incarnation) this.fail(`read ${ctx} answered by the wrong node`);
    if (index < req.minIndex) this.fail(`read ${ctx} at index ${index} misses commit ${req.minIndex} known when it was issued (stale read)`);
    this.result.reads++;
    n.readsAwaitingApply.push({ index, op: req.op, key: req.key });
    this.releaseReads(n);
  }

  private releaseReads(n: SimNode): void {
    const waiting = n.readsAwaitingApply;
    for (let i = 0; i < waiting.length; ) {
      const r = waiting[i] as { index: number; op: number; key: number };
      if (r.index <= n.sm.applied) {
        this.history.complete(r.op, n.sm.regs[r.key] ?? "");
        waiting.splice(i, 1);
      } else i++;
    }
  }

  // ---- invariants ----

  private check(): void {
    // First the leaders' configurations: a commit may have come from one just put in force.
    for (const id of this.ids) {
      const r = coreOf(this.node(id));
      if (r !== undefined && r.role === StateRole.leader) this.noteLeaderConf(r.term, r.currentConf().voters);
    }
    for (const id of this.ids) {
      const n = this.node(id);
      const r = coreOf(n);
      if (r === undefined) continue;
      if (r.log.committed > this.maxCommit) this.maxCommit = r.log.committed;
      if (r.log.committed < n.commitSeen) this.fail(`node ${n.id}'s commit index went back from ${n.commitSeen} to ${r.log.committed}`);
      n.commitSeen = r.log.committed;
      if (r.log.committed > n.commitChecked) {
        n.commitChecked = r.log.committed;
        this.checkCommitSafety(n, r.log.committed);
      }
      if (r.role !== StateRole.leader) continue;
      const other = this.leaderOfTerm.get(r.term);
      if (other === undefined) {
        this.leaderOfTerm.set(r.term, id);
        this.result.elections++;
        this.trace(`leader ${id} term ${r.term}`);
        this.checkLeaderCompleteness(n);
        if (this.churn && this.faults && n.pendingFault === "none" && this.rng.chance(0.3)) {
          // A new leader persists its no-op (an entry of its term at an index others fill differently) and is lost.
          n.pendingFault = this.rng.chance(0.5) ? "crash" : "oneThenCrash";
        }
      } else if (other !== id) {
        this.fail(`two leaders in term ${r.term}: ${other} and ${id}`);
      }
    }
  }

  private checkLeaderCompleteness(n: SimNode): void {
    const log = inspectCore(n.node as RaftNode).log;
    const first = log.firstIndex();
    const upTo = this.committedTerm.length - 1;
    if (log.lastIndex() < upTo) this.fail(`leader ${n.id} lacks committed entries: last ${log.lastIndex()} < ${upTo}`);
    for (let i = Math.max(first, 1); i <= upTo; i++) {
      if (log.term(i) !== this.committedTerm[i]) this.fail(`leader ${n.id} has ${i}/${log.term(i)} but ${i}/${this.committedTerm[i]} was committed`);
    }
  }

  /**
   * The entry at node n's commit point must be safe: durable on a quorum, and present in
   * every node that could still win an election (Raft's leader completeness, §5.4).
   */
  private checkCommitSafety(n: SimNode, c: number): void {
    const self = this.viewOf(n);
    if (c <= self.snapIndex) return;
    const t = self.term(c);
    if (t < 0) this.fail(`node ${n.id} committed ${c}, which is not in its log`);
    const contains = (v: LogView): boolean => c <= v.snapIndex || v.term(c) === t;
    const durable = (id: NodeId): boolean => contains(this.storageView(this.node(id)));
    // The quorum that decided the commit is one of a configuration some leader of term >= t had
    // in force (a removal counts before it commits; that leader may be down by now).
    const cc = this.committedConf.voters;
    const confs = [cc];
    for (const lc of this.leaderConfs) if (lc.term >= t) confs.push(lc.voters);
    if (!confs.some((voters) => isQuorumOf(voters, durable))) {
      this.fail(`node ${n.id} committed ${c}/${t}, which is durable on no quorum of [${confs.join("] [")}]\n${this.describe()}`);
    }
    for (const cand of cc) {
      const cv = this.viewOf(this.node(cand));
      if (contains(cv)) continue;
      const cLast = cv.term(cv.lastIndex);
      const grant = (id: NodeId): boolean => {
        if (id === cand) return true;
        const v = this.viewOf(this.node(id));
        const vLast = v.term(v.lastIndex);
        return cLast > vLast || (cLast === vLast && cv.lastIndex >= v.lastIndex); // §5.4.1
      };
      if (isQuorumOf(cc, grant)) {
        this.fail(`node ${n.id} committed ${c}/${t}, but node ${cand} lacks it and could be elected by a quorum of [${cc}] (Figure 8)\n${this.describe()}`);
      }
    }
  }

  private noteLeaderConf(term: number, voters: NodeId[]): void {
    for (let k = this.leaderConfs.length - 1; k >= 0; k--) {
      const lc = this.leaderConfs[k] as { term: number; voters: NodeId[] };
      if (lc.term < term) break;
      if (lc.term === term && lc.voters.join() === voters.join()) return;
    }
    this.leaderConfs.push({ term, voters: [...voters] });
  }

  private viewOf(n: SimNode): LogView {
    const r = coreOf(n);
    if (r === undefined) return this.storageView(n);
    const log = r.log;
    return { snapIndex: log.firstIndex() - 1, lastIndex: log.lastIndex(), term: (i) => log.termOrNone(i) };
  }

  private storageView(n: SimNode): LogView {
    const s = n.storage;
    const term = (i: number): number => (i >= s.firstIndex() - 1 && i <= s.lastIndex() ? s.term(i) : -1);
    return { snapIndex: s.firstIndex() - 1, lastIndex: s.lastIndex(), term };
  }

  // ---- helpers ----

  private anyLeader(): RaftNode | null {
    let best: RaftNode | null = null;
    for (const id of this.ids) {
      const node = this.node(id).node;
      if (node !== null && node.status().role === StateRole.leader && (best === null || node.status().term > best.status().term)) best = node;
    }
    return best;
  }

  private stableLeader(): SimNode | null {
    const lead = this.anyLeader();
    if (lead === null || !inspectCore(lead).committedOwnTerm()) return null;
    return this.node(lead.status().id);
  }

  private describe(): string {
    const lines: string[] = [];
    for (const n of this.nodes.values()) {
      const r = coreOf(n);
      if (r === undefined) {
        lines.push(`  node ${n.id}: down`);
        continue;
      }
      const conf = r.currentConf();
      let line = `  node ${n.id}: role ${r.role} term ${r.term} lead ${r.lead} commit ${r.log.committed} applied ${n.sm.applied} ` +
        `last ${r.log.lastIndex()} first ${r.log.firstIndex()} voters [${conf.voters}] learners [${conf.learners}]` +
        `${r.cfg.preVote ? " prevote" : ""}${r.cfg.checkQuorum ? " checkquorum" : ""}${this.paused(n) ? ` paused until ${n.pausedUntil}` : ""}`;
      if (r.role === StateRole.leader) {
        for (const [id, pr] of r.tracker.progress) line += `\n    ${id}: ${["probe", "replicate", "snapshot"][pr.state]} match ${pr.match} next ${pr.next} paused ${pr.isPaused()} active ${pr.recentActive}`;
      }
      lines.push(line);
    }
    return lines.join("\n");
  }

  private trace(line: string): void {
    this.opts.log?.(`[${this.now}] ${line}`);
  }

  private fail(what: string): never {
    throw new SimFailure(`seed ${this.opts.seed} (nodes ${this.opts.nodes}) failed at tick ${this.now}: ${what}`);
  }
}

/** The protocol state of a node that is up, for the invariant checks. */
function coreOf(n: SimNode): Raft | undefined {
  return n.node === null ? undefined : inspectCore(n.node);
}

function isQuorumOf(voters: readonly NodeId[], has: (id: NodeId) => boolean): boolean {
  let k = 0;
  for (const id of voters) if (has(id)) k++;
  return k >= Math.floor(voters.length / 2) + 1;
}

function mix(h: number, term: number, text: string): number {
  let x = (h ^ Math.imul(term, 0x9e3779b1)) >>> 0;
  for (let i = 0; i < text.length; i++) x = Math.imul(x ^ text.charCodeAt(i), 16777619) >>> 0;
  return x;
}

function encodeState(index: number, hash: number, regs: string[]): Uint8Array {
  return new TextEncoder().encode(JSON.stringify({ index, hash, regs }));
}

function decodeState(data: Uint8Array): { index: number; hash: number; regs: string[] } {
  return JSON.parse(new TextDecoder().decode(data)) as { index: number; hash: number; regs: string[] };
}

function emptyRegs(): string[] {
  return new Array<string>(registerCount).fill("");
}

/** A client write's entry: `k<key>=<value>;<padding>` (values are unique: w<sequence>). */
function encodeWrite(key: number, value: string, padding: string): string {
  return `k${key}=${value};${padding}`;
}

function decodeWrite(text: string): { key: number; value: string } | undefined {
  if (!text.startsWith("k")) return undefined;
  const eq = text.indexOf("=");
  const end = text.indexOf(";");
  if (eq < 0 || end < eq) return undefined;
  return { key: Number(text.slice(1, eq)), value: text.slice(eq + 1, end) };
}
