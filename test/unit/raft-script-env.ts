// The interaction-script environment for the Raft core: a cluster of cores on
// a network that moves only when a script command says so (in the spirit of
// etcd's rafttest/interaction_env, written for pxd's core). The scripts live
// in test/raft-scripts/*.txt; raft-transcripts.test.ts replays them.
//
// A script is a sequence of blocks:
//
//   # comments say what the next command shows
//   command arg key=value key=(1,2,3)
//   ----
//   the output the command must produce (never a blank line; "ok" if nothing)
//
// Commands (ids are node ids; lists are (1,2,3)):
//   add-nodes N [voters=(..)] [learners=(..)] [prevote] [checkquorum]
//             [election=10] [heartbeat=1] [max-append-bytes=N] [inflight=N]
//       N new nodes with the next free ids, booting with that configuration
//       (default: the new nodes are the voters; voters=() for a node that will join).
//   campaign ID                      start an election on ID now
//   tick ID [N] / tick-all [N]       advance time (no message moves)
//   propose ID DATA                  prints the entry's index or "dropped"
//   propose-conf-change ID add-voter|add-learner|remove NODE
//   read-index ID CONTEXT            prints ok or refused; the answer is a read-state in a Ready
//   transfer-leadership FROM TO
//   process-ready ID...              persist, send, apply, advance; prints each Ready
//   deliver-msgs [ID...] [drop=(..)] [type=NAME]
//                                    steps queued messages into their recipients (all if no ID)
//                                    or drops them; messages keep their send order
//   stabilize [ID...] [quiet]        process-ready and deliver-msgs until nothing moves
//                                    (quiet: print nothing, for the setup of a scenario)
//   set-election-timeout ID N        ID campaigns after N ticks without a leader (until its next
//                                    role or term change resets it to `election`)
//   partition A|B[|C]                cut links between the groups (e.g. "partition 1|2,3");
//                                    a message across a cut is dropped when delivered
//   cut FROM>TO / heal               a one-way cut / remove every cut
//   crash ID                         lose everything not persisted; queued messages to ID are lost
//   restart ID                       a new core from ID's storage; the state machine from its
//                                    snapshot; messages sent to ID while it was down are lost
//   compact ID [INDEX]               snapshot the state machine at INDEX (default: applied), compact the log
//   report-snapshot FROM TO ok|fail / report-unreachable FROM TO
//   status [ID...] / log ID... / applied [ID...]
//
// Output conventions: a log position or entry is index/term; entry data is
// quoted, a config entry is conf(...). Election jitter is zero, so a follower
// campaigns after exactly `election` ticks without hearing from a leader.

import { ConfChangeType, decodeConfChange } from "../../src/raft/confchange.js";
import { inspectCore, RaftNode } from "../../src/raft/node.js";
import type { Ready } from "../../src/raft/node.js";
import { ProgressState, progressStateNames } from "../../src/raft/progress.js";
import { MemoryStorage } from "../../src/raft/storage.js";
import type { ConfState, Entry, Message, NodeId, Snapshot } from "../../src/raft/types.js";
import { EntryType, MessageType, roleNames, StateRole } from "../../src/raft/types.js";
import { config, typeNames } from "./raft-helpers.js";
import type { RaftConfig } from "../../src/raft/raft.js";

// ---- the file format ----

export interface ScriptBlock {
  /** Comment lines (with their "#") before the command. */
  comments: string[];
  command: string;
  expected: string[];
  /** 1-based line of the command, for error messages. */
  line: number;
}

export function parseScript(text: string): ScriptBlock[] {
  const lines = text.split("\n");
  const blocks: ScriptBlock[] = [];
  let comments: string[] = [];
  let i = 0;
  while (i < lines.length) {
    const line = (lines[i] as string).trimEnd();
    i++;
    if (line === "") continue;
    if (line.startsWith("#")) {
      comments.push(line);
      continue;
    }
    const sep = lines[i]?.trimEnd();
    if (sep !== "----") throw new Error(`line ${i + 1}: expected "----" after the command "${line}"`);
    i++;
    const expected: string[] = [];
    while (i < lines.length && (lines[i] as string).trimEnd() !== "") {
      expected.push((lines[i] as string).trimEnd());
      i++;
    }
    blocks.push({ comments, command: line, expected, line: i - expected.length - 1 });
    comments = [];
  }
  return blocks;
}

export function formatScript(blocks: readonly ScriptBlock[], outputs: readonly string[][]): string {
  const parts: string[] = [];
  blocks.forEach((b, k) => {
    parts.push([...b.comments, b.command, "----", ...(outputs[k] ?? [])].join("\n"));
  });
  return parts.join("\n\n") + "\n";
}

// ---- arguments ----

interface Args {
  positional: string[];
  keys: Map<string, string>;
}

function parseArgs(tokens: string[]): Args {
  const positional: string[] = [];
  const keys = new Map<string, string>();
  for (const t of tokens) {
    const eq = t.indexOf("=");
    if (eq > 0) keys.set(t.slice(0, eq), t.slice(eq + 1));
    else positional.push(t);
  }
  return { positional, keys };
}

function ids(list: string): NodeId[] {
  return (list.match(/\d+/g) ?? []).map(Number);
}

function int(s: string | undefined, what: string): number {
  const n = Number(s);
  if (s === undefined || !Number.isSafeInteger(n)) throw new Error(`${what}: expected an integer, got "${s}"`);
  return n;
}

// ---- formatting ----

const dec = new TextDecoder();
const enc = new TextEncoder();
const changeNames: Record<number, string> = {
  [ConfChangeType.addVoter]: "add-voter",
  [ConfChangeType.addLearner]: "add-learner",
  [ConfChangeType.removeNode]: "remove",
};

export function fmtConf(c: ConfState): string {
  return `voters=(${c.voters.join(",")}) learners=(${c.learners.join(",")})`;
}

export function fmtEntry(e: Entry): string {
  if (e.type === EntryType.confChange) {
    const c = decodeConfChange(e.data);
    return `${e.index}/${e.term} conf(${changeNames[c.change.type]} ${c.change.nodeId})`;
  }
  return `${e.index}/${e.term} ${JSON.stringify(dec.decode(e.data))}`;
}

function fmtContext(c: Uint8Array | null): string {
  return c === null ? "" : ` ctx=${dec.decode(c)}`;
}

export function fmtMessage(m: Message): string {
  let s = `${m.from}->${m.to} ${typeNames[m.type]} term=${m.term}`;
  switch (m.type) {
    case MessageType.app:
      s += ` prev=${m.index}/${m.logTerm} commit=${m.commit} ents=[${m.entries.map(fmtEntry).join(", ")}]`;
      break;
    case MessageType.appResp:
      s += m.reject ? ` reject index=${m.index} hint=${m.rejectHint}/${m.logTerm}` : ` index=${m.index}`;
      break;
    case MessageType.vote:
    case MessageType.preVote:
      s += ` last=${m.index}/${m.logTerm}${m.context === null ? "" : " transfer"}`;
      break;
    case MessageType.voteResp:
    case MessageType.preVoteResp:
      s += m.reject ? " reject" : " grant";
      break;
    case MessageType.heartbeat:
      s += ` commit=${m.commit}${fmtContext(m.context)}`;
      break;
    case MessageType.heartbeatResp:
      s += fmtContext(m.context);
      break;
    case MessageType.snap:
      if (m.snapshot !== null) s += ` snap=${m.snapshot.meta.index}/${m.snapshot.meta.term} ${fmtConf(m.snapshot.meta.conf)}`;
      break;
    default:
      break;
  }
  return s;
}

// ---- the environment ----

/** The application: the data of every applied normal entry and the configuration, per index. */
interface StateMachine {
  applied: number;
  values: string[];
  conf: ConfState;
  /** What the state was after each applied index (to snapshot at an index below applied). */
  history: { index: number; values: number; conf: ConfState }[];
}

interface EnvNode {
  id: NodeId;
  storage: MemoryStorage;
  node: RaftNode | null; // null while crashed
  over: Partial<RaftConfig>;
  sm: StateMachine;
}

const typeByName = new Map<string, number>(Object.entries(typeNames).map(([k, v]) => [v, Number(k)]));
const noJitter = { int: (): number => 0 };

export class ScriptEnv {
  private readonly nodes = new Map<NodeId, EnvNode>();
  private queue: Message[] = [];
  private readonly cuts = new Set<string>();
  private out: string[] = [];
  private indent = "";

  /** Runs one command line and returns its output lines ("ok" if it printed nothing). */
  run(command: string): string[] {
    this.out = [];
    this.indent = "";
    const [name, ...rest] = command.trim().split(/\s+/);
    const a = parseArgs(rest);
    const p = a.positional;
    switch (name) {
      case "add-nodes": this.addNodes(int(p[0], "add-nodes"), a); break;
      case "campaign": this.live(int(p[0], "campaign")).campaign(); this.brief(int(p[0], "")); break;
      case "tick": this.tick([int(p[0], "tick")], p[1] === undefined ? 1 : int(p[1], "tick count")); break;
      case "tick-all": this.tick(this.upIds(), p[0] === undefined ? 1 : int(p[0], "tick count")); break;
      case "propose": this.propose(int(p[0], "propose"), p.slice(1).join(" ")); break;
      case "propose-conf-change": this.proposeConfChange(int(p[0], "propose-conf-change"), p[1] ?? "", int(p[2], "node")); break;
      case "read-index": this.print(this.live(int(p[0], "read-index")).readIndex(enc.encode(p[1] ?? "")) ? "ok" : "refused"); break;
      case "transfer-leadership": this.print(this.live(int(p[0], "transfer")).transferLeadership(int(p[1], "to")) ? "ok" : "refused"); break;
      case "process-ready": for (const id of this.idsOr(p)) this.processReady(id); break;
      case "deliver-msgs": this.deliverMsgs(a); break;
      case "stabilize": this.stabilizeCommand(p); break;
      case "set-election-timeout": inspectCore(this.live(int(p[0], "set-election-timeout"))).randomizedElectionTimeout = int(p[1], "ticks"); break;
      case "partition": this.partition(p.join(" ")); break;
      case "cut": { const [f, t] = ids(p.join(" ")); this.cuts.add(`${f}>${t}`); break; }
      case "heal": this.cuts.clear(); break;
      case "crash": this.crash(int(p[0], "crash")); break;
      case "restart": this.restart(int(p[0], "restart")); break;
      case "compact": this.compact(int(p[0], "compact"), p[1] === undefined ? undefined : int(p[1], "index")); break;
      case "report-snapshot": this.live(int(p[0], "report-snapshot")).reportSnapshot(int(p[1], "to"), p[2] === "ok"); this.print("ok"); break;
      case "report-unreachable": this.live(int(p[0], "report-unreachable")).reportUnreachable(int(p[1], "to")); this.print("ok"); break;
      case "status": for (const id of this.idsOr(p)) this.status(id); break;
      case "log": for (const id of this.idsOr(p)) this.log(id); break;
      case "applied": for (const id of this.idsOr(p)) this.print(`${id}: ${this.get(id).sm.values.join(" ")}`); break;
      default: throw new Error(`unknown command "${name}"`);
    }
    return this.out.length === 0 ? ["ok"] : this.out;
  }

  // ---- nodes ----

  private addNodes(count: number, a: Args): void {
    const first = Math.max(0, ...this.nodes.keys()) + 1;
    const fresh = Array.from({ length: count }, (_, k) => first + k);
    const voters = a.keys.has("voters") ? ids(a.keys.get("voters") as string) : fresh;
    const learners = a.keys.has("learners") ? ids(a.keys.get("learners") as string) : [];
    const over: Partial<RaftConfig> = {
      random: noJitter,
      preVote: a.positional.includes("prevote"),
      checkQuorum: a.positional.includes("checkquorum"),
      electionTicks: Number(a.keys.get("election") ?? 10),
      heartbeatTicks: Number(a.keys.get("heartbeat") ?? 1),
    };
    if (a.keys.has("max-append-bytes")) over.appendBytesMax = int(a.keys.get("max-append-bytes"), "max-append-bytes");
    if (a.keys.has("inflight")) over.inflightMsgsMax = int(a.keys.get("inflight"), "inflight");
    for (const id of fresh) {
      const conf = { voters: [...voters], learners: [...learners] };
      const storage = new MemoryStorage(conf);
      const n: EnvNode = { id, storage, node: null, over, sm: emptySm(conf) };
      this.nodes.set(id, n);
      this.start(n);
      const flags = [over.preVote ? " prevote" : "", over.checkQuorum ? " checkquorum" : ""].join("");
      this.print(`${id}: ${fmtConf(conf)}${flags}`);
    }
  }

  private start(n: EnvNode): void {
    const snap = n.storage.snapshot();
    n.sm = snap.meta.index > 0 ? restoreSm(snap) : emptySm(snap.meta.conf);
    n.node = new RaftNode(config(n.id, n.storage, { ...n.over, applied: n.sm.applied }));
  }

  private crash(id: NodeId): void {
    this.get(id).node = null;
    this.loseMessagesTo(id);
  }

  private restart(id: NodeId): void {
    const n = this.get(id);
    if (n.node !== null) throw new Error(`node ${id} is running; crash it first`);
    this.loseMessagesTo(id); // what was sent to it while it was down
    this.start(n);
    this.status(id);
  }

  private loseMessagesTo(id: NodeId): void {
    const lost = this.queue.filter((m) => m.to === id).length;
    this.queue = this.queue.filter((m) => m.to !== id);
    if (lost > 0) this.print(`${lost} queued message(s) to ${id} lost`);
  }

  private get(id: NodeId): EnvNode {
    const n = this.nodes.get(id);
    if (n === undefined) throw new Error(`no node ${id}`);
    return n;
  }

  private live(id: NodeId): RaftNode {
    const node = this.get(id).node;
    if (node === null) throw new Error(`node ${id} is down`);
    return node;
  }

  private upIds(): NodeId[] {
    return [...this.nodes.values()].filter((n) => n.node !== null).map((n) => n.id);
  }

  private idsOr(p: string[]): NodeId[] {
    return p.length > 0 ? p.map((s) => int(s, "node id")) : [...this.nodes.keys()];
  }

  // ---- inputs ----

  private tick(which: NodeId[], times: number): void {
    const before = which.map((id) => this.briefOf(id));
    for (let k = 0; k < times; k++) for (const id of which) this.live(id).tick();
    // Only what changed: a follower that campaigned, a leader that stepped down.
    which.forEach((id, k) => {
      const now = this.briefOf(id);
      if (now !== before[k]) this.print(now);
    });
  }

  private propose(id: NodeId, data: string): void {
    const index = this.live(id).propose(enc.encode(data));
    this.print(index > 0 ? `index ${index}` : "dropped");
  }

  private proposeConfChange(id: NodeId, kind: string, nodeId: NodeId): void {
    const type = { "add-voter": ConfChangeType.addVoter, "add-learner": ConfChangeType.addLearner, remove: ConfChangeType.removeNode }[kind];
    if (type === undefined) throw new Error(`unknown conf change "${kind}"`);
    const r = this.live(id).proposeConfChange({ type, nodeId });
    this.print("index" in r ? `index ${r.index}` : `refused: ${r.refused}`);
  }

  private compact(id: NodeId, at: number | undefined): void {
    const n = this.get(id);
    const index = at ?? n.sm.applied;
    const h = n.sm.history.find((x) => x.index === index);
    if (h === undefined) throw new Error(`node ${id} has not applied ${index} (applied ${n.sm.applied})`);
    const data = enc.encode(JSON.stringify({ index, values: n.sm.values.slice(0, h.values) }));
    const snap = n.storage.createSnapshot(index, h.conf, data);
    n.storage.compact(index);
    this.print(`${id}: snapshot at ${snap.meta.index}/${snap.meta.term} ${fmtConf(snap.meta.conf)}; log now first=${n.storage.firstIndex()} last=${n.storage.lastIndex()}`);
  }

  private partition(spec: string): void {
    const groups = spec.split("|").map(ids);
    if (groups.length < 2) throw new Error(`partition needs two groups or more: "${spec}"`);
    for (const g of groups) {
      for (const h of groups) {
        if (g === h) continue;
        for (const a of g) for (const b of h) this.cuts.add(`${a}>${b}`);
      }
    }
  }

  // ---- the Ready loop (persist, send, apply, advance: docs/raft.md) ----

  private processReady(id: NodeId): boolean {
    const n = this.get(id);
    const node = n.node;
    if (node === null || !node.hasReady()) return false;
    const r = node.ready();
    this.print(`> ${id} handling Ready${r.mustSync ? " (sync)" : ""}`);
    this.withIndent(() => this.printReady(r));
    if (r.snapshot !== null) n.storage.applySnapshot(r.snapshot);
    n.storage.append(r.entries);
    if (r.hardState !== null) n.storage.setHardState(r.hardState);
    for (const m of r.messages) this.queue.push(m);
    if (r.snapshot !== null) n.sm = restoreSm(r.snapshot);
    for (const e of r.committedEntries) applyEntry(n.sm, e);
    node.advance();
    return true;
  }

  private printReady(r: Ready): void {
    if (r.softState !== null) this.print(`soft-state lead=${r.softState.lead} role=${roleNames[r.softState.role]}`);
    if (r.hardState !== null) this.print(`hard-state term=${r.hardState.term} vote=${r.hardState.vote} commit=${r.hardState.commit}`);
    if (r.snapshot !== null) this.print(`snapshot ${r.snapshot.meta.index}/${r.snapshot.meta.term} ${fmtConf(r.snapshot.meta.conf)}`);
    if (r.entries.length > 0) this.print(`persist ${r.entries.map(fmtEntry).join(", ")}`);
    if (r.committedEntries.length > 0) this.print(`apply ${r.committedEntries.map(fmtEntry).join(", ")}`);
    for (const rs of r.readStates) this.print(`read-state ${dec.decode(rs.context)} at ${rs.index}`);
    for (const m of r.messages) this.print(`send ${fmtMessage(m)}`);
  }

  private deliverMsgs(a: Args): void {
    const drop = ids(a.keys.get("drop") ?? "");
    const to = a.positional.length > 0 ? a.positional.map((s) => int(s, "node id")) : [];
    const typeName = a.keys.get("type");
    const type = typeName === undefined ? undefined : typeByName.get(typeName);
    if (typeName !== undefined && type === undefined) throw new Error(`unknown message type "${typeName}"`);
    const pick = (m: Message): boolean =>
      (type === undefined || m.type === type) && (drop.includes(m.to) || to.length === 0 || to.includes(m.to));
    if (this.deliver(pick, drop) === 0) this.print("no messages");
  }

  /** Delivers (or drops) the queued messages `pick` selects, in send order; returns how many were handled. */
  private deliver(pick: (m: Message) => boolean, drop: NodeId[] = []): number {
    const batch = this.queue.filter(pick);
    this.queue = this.queue.filter((m) => !pick(m));
    for (const m of batch) {
      const target = this.nodes.get(m.to);
      if (drop.includes(m.to)) this.print(`dropped: ${fmtMessage(m)}`);
      else if (this.cuts.has(`${m.from}>${m.to}`)) this.print(`dropped (cut): ${fmtMessage(m)}`);
      else if (target === undefined || target.node === null) this.print(`dropped (down): ${fmtMessage(m)}`);
      else {
        this.print(fmtMessage(m));
        target.node.step(m);
      }
    }
    return batch.length;
  }

  private stabilizeCommand(p: string[]): void {
    const quiet = p.includes("quiet");
    const which = this.idsOr(p.filter((s) => s !== "quiet"));
    const mark = this.out.length;
    this.stabilize(which);
    if (quiet) this.out.length = mark;
  }

  private stabilize(which: NodeId[]): void {
    for (let round = 0; round < 1000; round++) {
      let moved = false;
      for (const id of which) moved = this.processReady(id) || moved;
      for (const id of which) {
        if (!this.queue.some((m) => m.to === id)) continue;
        this.print(`> ${id} receiving messages`);
        this.withIndent(() => this.deliver((m) => m.to === id));
        moved = true;
      }
      if (!moved) return;
    }
    throw new Error("stabilize: the cluster did not settle in 1000 rounds");
  }

  // ---- inspection ----

  private briefOf(id: NodeId): string {
    const node = this.get(id).node;
    if (node === null) return `${id}: down`;
    const s = node.status();
    return `${id}: ${roleNames[s.role]} term=${s.term} lead=${s.lead}`;
  }

  private brief(id: NodeId): void {
    this.print(this.briefOf(id));
  }

  private status(id: NodeId): void {
    const n = this.get(id);
    if (n.node === null) {
      this.print(`${id}: down`);
      return;
    }
    const st = n.node.status();
    const first = inspectCore(n.node).log.firstIndex();
    this.print(`${id}: ${roleNames[st.role]} term=${st.term} vote=${st.vote} lead=${st.lead} commit=${st.commit} ` +
      `applied=${n.sm.applied} first=${first} last=${st.lastIndex} ${fmtConf({ voters: [...st.voters], learners: [...st.learners] })}`);
    for (const pr of n.node.progress() ?? []) {
      if (pr.id === id) continue;
      let s = `  ${pr.id}: ${progressStateNames[pr.state]} match=${pr.match} next=${pr.next}`;
      if (pr.state === ProgressState.snapshot) s += ` pending-snapshot=${pr.pendingSnapshot}`;
      if (pr.paused) s += " paused";
      if (pr.inflightMsgs > 0) s += ` inflight=${pr.inflightMsgs}`;
      this.print(s);
    }
  }

  private log(id: NodeId): void {
    const node = this.get(id).node;
    if (node === null) {
      this.print(`${id}: down`);
      return;
    }
    const log = inspectCore(node).log;
    const first = log.firstIndex();
    const entries = log.slice(first, log.lastIndex() + 1, Number.MAX_SAFE_INTEGER);
    const head = first > 1 ? ` (snapshot at ${first - 1}/${log.term(first - 1)})` : "";
    this.print(`${id}:${head}${entries.length === 0 ? " empty" : ""}`);
    for (const e of entries) this.print(`  ${fmtEntry(e)}`);
  }

  private print(line: string): void {
    this.out.push((this.indent + line).trimEnd()); // the file format has no trailing blanks
  }

  private withIndent(f: () => void): void {
    const was = this.indent;
    this.indent += "  ";
    f();
    this.indent = was;
  }
}

function emptySm(conf: ConfState): StateMachine {
  return { applied: 0, values: [], conf, history: [{ index: 0, values: 0, conf }] };
}

function restoreSm(snap: Snapshot): StateMachine {
  const s = JSON.parse(dec.decode(snap.data)) as { index: number; values: string[] };
  const conf = snap.meta.conf;
  return { applied: snap.meta.index, values: s.values, conf, history: [{ index: snap.meta.index, values: s.values.length, conf }] };
}

function applyEntry(sm: StateMachine, e: Entry): void {
  if (e.index !== sm.applied + 1) throw new Error(`applied ${e.index} after ${sm.applied}`);
  sm.applied = e.index;
  if (e.type === EntryType.confChange) sm.conf = decodeConfChange(e.data).conf;
  else if (e.data.byteLength > 0) sm.values.push(dec.decode(e.data));
  sm.history.push({ index: e.index, values: sm.values.length, conf: sm.conf });
}
