// Shared test scaffolding for the Raft core: building cores over MemoryStorage,
// draining their output, and a small synchronous network (in the spirit of
// etcd's raft_test.go `network`) that handles Ready in the documented order.

import { Prng } from "../../src/base/prng.js";
import {
  raftAppendBytesMax,
  raftCommittedBytesMax,
  raftInflightBytesMax,
  raftInflightMsgsMax,
  raftReadIndexPendingMax,
  raftUncommittedBytesMax,
} from "../../src/constants.js";
import type { RaftConfig } from "../../src/raft/raft.js";
import { inspectCore, RaftNode } from "../../src/raft/node.js";
import type { Ready } from "../../src/raft/node.js";
import { MemoryStorage } from "../../src/raft/storage.js";
import type { MemberProgress } from "../../src/raft/progress.js";
import type { Entry, Message, NodeId } from "../../src/raft/types.js";
import { MessageType, newMessage } from "../../src/raft/types.js";

export const typeNames: Record<number, string> = {
  [MessageType.app]: "app",
  [MessageType.appResp]: "appResp",
  [MessageType.vote]: "vote",
  [MessageType.voteResp]: "voteResp",
  [MessageType.preVote]: "preVote",
  [MessageType.preVoteResp]: "preVoteResp",
  [MessageType.snap]: "snap",
  [MessageType.heartbeat]: "heartbeat",
  [MessageType.heartbeatResp]: "heartbeatResp",
  [MessageType.timeoutNow]: "timeoutNow",
};

export function config(id: NodeId, storage: MemoryStorage, over: Partial<RaftConfig> = {}): RaftConfig {
  return {
    id,
    storage,
    electionTicks: 10,
    heartbeatTicks: 1,
    random: new Prng(id * 7919),
    preVote: false,
    checkQuorum: false,
    appendBytesMax: raftAppendBytesMax,
    inflightMsgsMax: raftInflightMsgsMax,
    inflightBytesMax: raftInflightBytesMax,
    uncommittedBytesMax: raftUncommittedBytesMax,
    readIndexPendingMax: raftReadIndexPendingMax,
    committedBytesMax: raftCommittedBytesMax,
    ...over,
  };
}

/** A storage whose log holds entries with the given terms at indexes 1, 2, ... */
export function storageWith(voters: NodeId[], terms: number[] = [], learners: NodeId[] = []): MemoryStorage {
  const s = new MemoryStorage({ voters, learners });
  s.append(terms.map((term, k) => entry(k + 1, term)));
  return s;
}

export function entry(index: number, term: number, text = ""): Entry {
  return { index, term, type: 0, data: new TextEncoder().encode(text) };
}

export function newNode(id: NodeId, voters: NodeId[], over: Partial<RaftConfig> = {}, storage?: MemoryStorage): RaftNode {
  return new RaftNode(config(id, storage ?? storageWith(voters), over));
}

/** Everything the core wants to send now (flushing batched appends), removed from it. */
export function drain(n: RaftNode): Message[] {
  const core = inspectCore(n);
  core.flush();
  const out = core.msgs;
  core.msgs = [];
  return out;
}

/** A member's progress on the leader `n` (through the node's API). */
export function progressOf(n: RaftNode, id: NodeId): MemberProgress {
  const p = n.progress()?.find((x) => x.id === id);
  if (p === undefined) throw new Error(`node ${n.status().id} has no progress for ${id} (not the leader, or not a member)`);
  return p;
}

export function msg(type: MessageType, from: NodeId, to: NodeId, term: number, fields: Partial<Message> = {}): Message {
  return { ...newMessage(type, from, to, term), ...fields };
}

/** Persists a Ready to `storage` in the documented order and returns it (the caller sends and applies). */
export function persist(r: Ready, storage: MemoryStorage): void {
  if (r.snapshot !== null) storage.applySnapshot(r.snapshot);
  storage.append(r.entries);
  if (r.hardState !== null) storage.setHardState(r.hardState);
}

export function text(e: Entry): string {
  return new TextDecoder().decode(e.data);
}

export function describe(m: Message): string {
  let s = `${m.from}->${m.to} ${typeNames[m.type]} term=${m.term}`;
  if (m.type === MessageType.app) {
    s += ` prev=${m.index}/${m.logTerm} commit=${m.commit} ents=[${m.entries.map((e) => `${e.index}/${e.term}`).join(",")}]`;
  } else if (m.type === MessageType.appResp) {
    s += m.reject ? ` reject index=${m.index} hint=${m.rejectHint}/${m.logTerm}` : ` index=${m.index}`;
  } else if (m.type === MessageType.vote || m.type === MessageType.preVote) {
    s += ` last=${m.index}/${m.logTerm}`;
  } else if (m.type === MessageType.voteResp || m.type === MessageType.preVoteResp) {
    s += m.reject ? " reject" : " grant";
  } else if (m.type === MessageType.heartbeat) {
    s += ` commit=${m.commit}`;
  } else if (m.type === MessageType.snap && m.snapshot !== null) {
    s += ` snap=${m.snapshot.meta.index}/${m.snapshot.meta.term}`;
  }
  return s;
}

export interface Member {
  id: NodeId;
  storage: MemoryStorage;
  node: RaftNode;
  applied: Entry[];
  down: boolean;
}

/**
 * A cluster on a synchronous network. `stabilize()` handles every Ready
 * (persist, send, apply, advance) and delivers messages until nothing moves.
 * Links can be cut both ways or one way; a node can crash (losing whatever
 * it had not persisted) and restart from its storage.
 */
export class Cluster {
  readonly members = new Map<NodeId, Member>();
  readonly transcript: string[] = [];
  private inbox: Message[] = [];
  private cut = new Set<string>();
  record = false;
  dropFilter: ((m: Message) => boolean) | null = null;
  /** Rewrites a message in flight (e.g. strips some entries); null delivers it as is. */
  rewrite: ((m: Message) => Message) | null = null;

  constructor(
    voters: NodeId[],
    readonly over: Partial<RaftConfig> = {},
    extra: NodeId[] = [],
  ) {
    for (const id of voters) this.add(id, storageWith(voters));
    for (const id of extra) this.add(id, storageWith([]));
  }

  add(id: NodeId, storage: MemoryStorage): Member {
    const m: Member = { id, storage, node: new RaftNode(config(id, storage, this.over)), applied: [], down: false };
    this.members.set(id, m);
    return m;
  }

  get(id: NodeId): Member {
    const m = this.members.get(id);
    if (m === undefined) throw new Error(`no node ${id}`);
    return m;
  }

  node(id: NodeId): RaftNode {
    return this.get(id).node;
  }

  cutLink(from: NodeId, to: NodeId): void {
    this.cut.add(`${from}>${to}`);
  }

  isolate(id: NodeId): void {
    for (const other of this.members.keys()) {
      if (other === id) continue;
      this.cutLink(id, other);
      this.cutLink(other, id);
    }
  }

  heal(): void {
    this.cut.clear();
  }

  /** Loses everything not persisted: the node restarts from its storage, applied state replayed from scratch. */
  crash(id: NodeId): void {
    const m = this.get(id);
    m.down = true;
    this.inbox = this.inbox.filter((x) => x.to !== id);
  }

  restart(id: NodeId): void {
    const m = this.get(id);
    m.node = new RaftNode(config(id, m.storage, { ...this.over, random: new Prng(id * 31 + m.storage.lastIndex()) }));
    m.applied = [];
    m.down = false;
  }

  /** Handles one node's Ready in the documented order; its messages go to the inbox. */
  handle(id: NodeId): boolean {
    const m = this.get(id);
    if (m.down || !m.node.hasReady()) return false;
    const r = m.node.ready();
    persist(r, m.storage);
    for (const x of r.messages) this.inbox.push(x);
    for (const e of r.committedEntries) m.applied.push(e);
    m.node.advance();
    return true;
  }

  deliverAll(): number {
    const batch = this.inbox;
    this.inbox = [];
    let n = 0;
    for (const x of batch) {
      const to = this.members.get(x.to);
      if (to === undefined || to.down) continue;
      if (this.cut.has(`${x.from}>${x.to}`)) continue;
      if (this.dropFilter !== null && this.dropFilter(x)) continue;
      const y = this.rewrite === null ? x : this.rewrite(x);
      if (this.record) this.transcript.push(describe(y));
      to.node.step(y);
      n++;
    }
    return n;
  }

  stabilize(roundsMax = 1000): void {
    for (let round = 0; round < roundsMax; round++) {
      let moved = false;
      for (const id of this.members.keys()) moved = this.handle(id) || moved;
      moved = this.deliverAll() > 0 || moved;
      if (!moved && this.inbox.length === 0) return;
    }
    throw new Error("cluster did not stabilize");
  }

  tick(id: NodeId, times = 1): void {
    for (let i = 0; i < times; i++) this.get(id).node.tick();
  }

  tickAll(times = 1): void {
    for (let i = 0; i < times; i++) {
      for (const m of this.members.values()) if (!m.down) m.node.tick();
      this.stabilize();
    }
  }

  campaign(id: NodeId): void {
    this.node(id).campaign();
    this.stabilize();
  }

  propose(id: NodeId, data: string): number {
    const index = this.node(id).propose(new TextEncoder().encode(data));
    this.stabilize();
    return index;
  }

  leaders(): NodeId[] {
    return [...this.members.values()].filter((m) => !m.down && m.node.status().role === 3).map((m) => m.id);
  }
}
