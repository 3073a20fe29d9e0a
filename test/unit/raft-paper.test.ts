// The rules of the Raft paper (Figure 2, §5.1-§5.4, §6 membership, §7 snapshots,
// §8 reads), one test each, in the style of etcd's raft_paper_test.go. Each
// test name states the rule and cites where the paper (or Ongaro's thesis) says it.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { ConfChangeType } from "../../src/raft/confchange.js";
import { inspectCore, RaftNode } from "../../src/raft/node.js";
import { ProgressState } from "../../src/raft/progress.js";
import { MemoryStorage } from "../../src/raft/storage.js";
import type { Message, NodeId } from "../../src/raft/types.js";
import { MessageType, StateRole } from "../../src/raft/types.js";
import { Cluster, config, drain, entry, msg, newNode, persist, progressOf, storageWith } from "./raft-helpers.js";

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);

/** Makes `n` (a fresh member of `voters`) the leader of term 1 with all votes, and drains its messages. */
function electLeader(n: RaftNode, voters: NodeId[]): void {
  n.campaign();
  const term = n.status().term;
  for (const v of voters) if (v !== n.status().id) n.step(msg(MessageType.voteResp, v, n.status().id, term));
  assert.is(n.status().role, StateRole.leader);
  drain(n);
}

/** Handles the node's Ready against its storage (so the leader counts its own log as persisted). */
function persistNode(n: RaftNode, s: MemoryStorage): Message[] {
  const r = n.ready();
  persist(r, s);
  n.advance();
  return [...r.messages, ...drain(n)];
}

function types(ms: Message[]): string {
  return ms.map((m) => `${m.to}:${m.type}`).join(" ");
}

// ---- §5.1 ----

for (const role of ["follower", "candidate", "leader"] as const) {
  test(`§5.1 a ${role} that sees a larger term adopts it and becomes (or stays) a follower`, () => {
    const n = newNode(1, [1, 2, 3]);
    if (role === "candidate") n.campaign();
    if (role === "leader") electLeader(n, [1, 2, 3]);
    n.step(msg(MessageType.app, 2, 1, 5));
    assert.is(n.status().term, 5);
    assert.is(n.status().role, StateRole.follower);
    assert.is(n.status().lead, 2);
  });
}

test("§5.1 a request with a stale term is rejected: it changes nothing", () => {
  const n = newNode(1, [1, 2, 3], {}, storageWith([1, 2, 3], [1, 2]));
  n.step(msg(MessageType.app, 2, 1, 3));
  drain(n);
  n.step(msg(MessageType.app, 3, 1, 2, { index: 2, logTerm: 2, entries: [entry(3, 2)], commit: 3 }));
  assert.is(n.status().term, 3);
  assert.is(n.status().lastIndex, 2, "stale append not applied");
  assert.is(n.status().lead, 2);
});

// ---- §5.2 leader election ----

test("§5.2 servers start up as followers", () => {
  const n = newNode(1, [1, 2, 3]);
  assert.is(n.status().role, StateRole.follower);
  assert.is(n.status().term, 0);
});

test("§5.2 a leader sends heartbeats (empty appends) to all followers every heartbeat timeout", () => {
  const n = newNode(1, [1, 2, 3], { heartbeatTicks: 2 });
  electLeader(n, [1, 2, 3]);
  n.tick();
  assert.is(drain(n).length, 0, "no heartbeat before the timeout");
  n.tick();
  const ms = drain(n);
  assert.equal(ms.map((m) => [m.to, m.type]), [[2, MessageType.heartbeat], [3, MessageType.heartbeat]]);
});

for (const role of ["follower", "candidate"] as const) {
  test(`§5.2 a ${role} whose election timeout elapses starts an election: term+1, votes for itself, asks everyone`, () => {
    const n = newNode(1, [1, 2, 3]);
    if (role === "candidate") n.campaign();
    drain(n);
    const before = n.status().term;
    for (let i = 0; i < 2 * 10; i++) n.tick();
    assert.is(n.status().term, before + 1);
    assert.is(n.status().role, StateRole.candidate);
    assert.is(n.status().vote, 1);
    const ms = drain(n);
    assert.equal(ms.map((m) => [m.to, m.type, m.term]), [[2, MessageType.vote, before + 1], [3, MessageType.vote, before + 1]]);
  });
}

test("§5.2 a candidate wins with votes from a majority, stays candidate without, loses on a majority of rejections", () => {
  const cases: { size: number; votes: Record<number, boolean>; role: StateRole }[] = [
    { size: 1, votes: {}, role: StateRole.leader },
    { size: 3, votes: { 2: true, 3: true }, role: StateRole.leader },
    { size: 3, votes: { 2: true }, role: StateRole.leader },
    { size: 5, votes: { 2: true, 3: true, 4: true, 5: true }, role: StateRole.leader },
    { size: 5, votes: { 2: true, 3: true }, role: StateRole.leader },
    { size: 3, votes: {}, role: StateRole.candidate },
    { size: 5, votes: { 2: true }, role: StateRole.candidate },
    { size: 5, votes: { 2: false, 3: false }, role: StateRole.candidate },
    { size: 3, votes: { 2: false, 3: false }, role: StateRole.follower },
    { size: 5, votes: { 2: false, 3: false, 4: false }, role: StateRole.follower },
  ];
  for (const c of cases) {
    const voters = Array.from({ length: c.size }, (_, i) => i + 1);
    const n = newNode(1, voters);
    n.campaign();
    for (const [id, granted] of Object.entries(c.votes)) {
      n.step(msg(MessageType.voteResp, Number(id), 1, n.status().term, { reject: !granted }));
    }
    assert.is(n.status().role, c.role, JSON.stringify(c));
    assert.is(n.status().term, 1);
  }
});

test("§5.2 a follower votes for at most one candidate per term, first come first served", () => {
  const cases: { vote: NodeId; from: NodeId; reject: boolean }[] = [
    { vote: 0, from: 2, reject: false },
    { vote: 0, from: 3, reject: false },
    { vote: 2, from: 2, reject: false },
    { vote: 3, from: 3, reject: false },
    { vote: 2, from: 3, reject: true },
    { vote: 3, from: 2, reject: true },
  ];
  for (const c of cases) {
    const s = storageWith([1, 2, 3]);
    s.setHardState({ term: 1, vote: c.vote, commit: 0 });
    const n = newNode(1, [1, 2, 3], {}, s);
    n.step(msg(MessageType.vote, c.from, 1, 1));
    const ms = drain(n);
    assert.is(ms.length, 1);
    assert.is(ms[0]?.type, MessageType.voteResp);
    assert.is(ms[0]?.reject, c.reject, JSON.stringify(c));
    if (!c.reject) assert.is(n.status().vote, c.from);
  }
});

test("§5.2 a candidate that receives an append from a leader of its term (or later) returns to follower", () => {
  for (const term of [1, 2]) {
    const n = newNode(1, [1, 2, 3]);
    n.campaign();
    n.step(msg(MessageType.app, 2, 1, term));
    assert.is(n.status().role, StateRole.follower);
    assert.is(n.status().term, term);
    assert.is(n.status().lead, 2);
  }
});

test("§5.2 election timeouts are randomized over [et, 2et) so that split votes are rare", () => {
  const seen = new Set<number>();
  for (let seed = 1; seed <= 50; seed++) {
    const n = newNode(1, [1, 2, 3], { random: { int: (k: number) => (seed * 7) % k } });
    let ticks = 0;
    while (n.status().role === StateRole.follower) {
      n.tick();
      ticks++;
    }
    assert.ok(ticks >= 10 && ticks < 20, `timeout ${ticks}`);
    seen.add(ticks);
  }
  assert.ok(seen.size > 5, "timeouts spread over the range");
});

test("§5.2 with randomized timeouts, usually only one follower times out first (no split vote)", () => {
  let conflicts = 0;
  const rounds = 200;
  for (let round = 0; round < rounds; round++) {
    const nodes = [1, 2, 3, 4, 5].map((id) => newNode(id, [1, 2, 3, 4, 5], { random: new (class {
      private x = round * 131 + id * 17;
      int(k: number): number {
        this.x = (this.x * 1103515245 + 12345) % 2147483648;
        return this.x % k;
      }
    })() }));
    let first = 0;
    for (let t = 0; t < 20 && first === 0; t++) {
      for (const n of nodes) n.tick();
      first = nodes.filter((n) => n.status().role !== StateRole.follower).length;
    }
    if (first > 1) conflicts++;
  }
  assert.ok(conflicts / rounds < 0.3, `split elections ${conflicts}/${rounds}`);
});

// ---- §5.3 log replication ----

test("§5.3 the leader appends a proposal to its log and sends it to every follower", () => {
  const s = storageWith([1, 2, 3]);
  const n = newNode(1, [1, 2, 3], {}, s);
  electLeader(n, [1, 2, 3]);
  for (const f of [2, 3]) n.step(msg(MessageType.appResp, f, 1, 1, { index: 1 }));
  drain(n);
  const index = n.propose(enc("x"));
  assert.is(index, 2);
  const ms = drain(n);
  assert.is(ms.length, 2);
  for (const m of ms) {
    assert.is(m.type, MessageType.app);
    assert.is(m.index, 1);
    assert.is(m.logTerm, 1);
    assert.equal(m.entries.map((e) => [e.index, e.term]), [[2, 1]]);
  }
  assert.ok(n.status().commit < index, "not committed before a majority acknowledged it");
});

test("§5.3 an entry is committed once the leader replicated it on a majority; the commit index goes out in later appends", () => {
  const s = storageWith([1, 2, 3]);
  const n = newNode(1, [1, 2, 3], {}, s);
  electLeader(n, [1, 2, 3]);
  persistNode(n, s);
  n.step(msg(MessageType.appResp, 2, 1, 1, { index: 1 }));
  assert.is(n.status().commit, 1, "no-op committed by leader + node 2");
  n.step(msg(MessageType.appResp, 3, 1, 1, { index: 1 }));
  n.propose(enc("a"));
  persistNode(n, s);
  n.step(msg(MessageType.appResp, 2, 1, 1, { index: 2 }));
  assert.is(n.status().commit, 2);
  const ms = drain(n);
  assert.ok(ms.some((m) => m.type === MessageType.app && m.to === 3 && m.commit === 2), "commit index broadcast");
});

test("§5.3 the leader counts acknowledgments from a majority, including its own persisted log", () => {
  const cases: { size: number; acks: NodeId[]; commit: boolean }[] = [
    { size: 1, acks: [], commit: true },
    { size: 3, acks: [], commit: false },
    { size: 3, acks: [2], commit: true },
    { size: 3, acks: [2, 3], commit: true },
    { size: 5, acks: [2], commit: false },
    { size: 5, acks: [2, 3], commit: true },
    { size: 5, acks: [2, 3, 4, 5], commit: true },
  ];
  for (const c of cases) {
    const voters = Array.from({ length: c.size }, (_, i) => i + 1);
    const s = storageWith(voters);
    const n = newNode(1, voters, {}, s);
    electLeader(n, voters);
    persistNode(n, s);
    for (const a of c.acks) n.step(msg(MessageType.appResp, a, 1, 1, { index: 1 }));
    assert.is(n.status().commit >= 1, c.commit, JSON.stringify(c));
  }
});

test("§5.3 committing an entry commits all preceding entries, including those of earlier leaders", () => {
  const s = storageWith([1, 2, 3], [1, 2]);
  s.setHardState({ term: 2, vote: 0, commit: 0 });
  const n = newNode(1, [1, 2, 3], {}, s);
  n.campaign();
  n.step(msg(MessageType.voteResp, 2, 1, 3));
  persistNode(n, s);
  n.step(msg(MessageType.appResp, 2, 1, 3, { index: 3 }));
  assert.is(n.status().commit, 3);
  const r = n.ready();
  assert.equal(r.committedEntries.map((e) => [e.index, e.term]), [[1, 1], [2, 2], [3, 3]]);
});

test("§5.3 a follower applies an entry once it learns from the leader's commit index that it is committed, and once it is on its disk", () => {
  const s = storageWith([1, 2, 3]);
  const n = newNode(1, [1, 2, 3], {}, s);
  n.step(msg(MessageType.app, 2, 1, 1, { index: 0, logTerm: 0, entries: [entry(1, 1, "a"), entry(2, 1, "b")], commit: 1 }));
  assert.is(n.status().commit, 1);
  let r = n.ready();
  assert.equal(r.entries.map((e) => e.index), [1, 2]);
  assert.equal(r.committedEntries, [], "entry 1 is committed but not yet on this node's disk");
  assert.equal(n.takeCommitted(), [], "nor while its persist runs");
  persist(r, s);
  n.advance();
  r = n.ready();
  assert.equal(r.committedEntries.map((e) => e.index), [1]);
  n.advance();
});

test("§5.3 a leader applies what an acknowledgement commits while its next batch is being persisted (takeCommitted)", () => {
  const s = storageWith([1, 2, 3]);
  const n = newNode(1, [1, 2, 3], {}, s);
  n.campaign();
  n.step(msg(MessageType.voteResp, 2, 1, 1));
  persistNode(n, s);
  const first = n.propose(enc("a"));
  persistNode(n, s);
  const second = n.propose(enc("b"));
  const held = n.ready(); // the second batch is being persisted
  assert.equal(held.entries.map((e) => e.index), [second]);
  n.step(msg(MessageType.appResp, 2, 1, 1, { index: second }));
  assert.is(n.status().commit, first, "the leader counts its own log only up to what it persisted");
  assert.equal(n.takeCommitted().map((e) => e.index), [1, first], "committed and on disk: applied without waiting for the held persist");
  assert.equal(n.takeCommitted(), [], "handed out once");
  assert.is(n.status().applied, first);
  persist(held, s);
  n.advance();
  assert.is(n.status().commit, second, "the held batch commits once persisted");
  const r = n.ready();
  assert.equal(r.committedEntries.map((e) => e.index), [second], "the next Ready starts after what takeCommitted handed out");
  n.advance();
});

test("§5.3 (Log Matching) a follower commits up to the leader's snapshot base only if it holds that entry with the leader's term, and never past it", () => {
  const s = storageWith([1, 2, 3], [1, 1, 2, 2]);
  s.setHardState({ term: 2, vote: 0, commit: 0 });
  const n = newNode(2, [1, 2, 3], {}, s);
  n.step(msg(MessageType.heartbeat, 1, 2, 2)); // node 2 follows node 1 in term 2
  drain(n);
  assert.not.ok(n.commitFromLeaderBase(3, 3, 2), "only the leader it follows can vouch for a commit");
  assert.not.ok(n.commitFromLeaderBase(1, 3, 1), "its entry at 3 has another term: its log may differ from the leader's up to there");
  assert.not.ok(n.commitFromLeaderBase(1, 5, 2), "an entry it does not hold");
  assert.is(n.status().commit, 0);
  // Its entry at 3 has the leader's term there: its log up to 3 is the leader's, committed.
  assert.ok(n.commitFromLeaderBase(1, 3, 2));
  assert.is(n.status().commit, 3, "up to the base, not to its last index 4");
  let r = n.ready();
  assert.equal(r.committedEntries.map((e) => e.index), [1, 2, 3]);
  assert.equal(r.messages, [], "the leader is sent nothing: no message was stepped");
  n.advance();
  assert.ok(n.commitFromLeaderBase(1, 2, 1), "an index already committed");
  assert.is(n.status().commit, 3, "the commit index never goes back");
  // A node that does not follow (a candidate) learns nothing this way.
  n.campaign();
  assert.not.ok(n.commitFromLeaderBase(1, 4, 2));
  r = n.ready();
  assert.is(n.status().commit, 3);
});

test("§5.3 a follower rejects an append whose previous entry (index, term) it does not hold", () => {
  const cases = [
    { index: 0, logTerm: 0, reject: false },
    { index: 1, logTerm: 1, reject: false },
    { index: 2, logTerm: 2, reject: false },
    { index: 1, logTerm: 2, reject: true }, // term mismatch
    { index: 3, logTerm: 3, reject: true }, // beyond the end
  ];
  for (const c of cases) {
    const s = storageWith([1, 2, 3], [1, 2]);
    s.setHardState({ term: 2, vote: 0, commit: 1 });
    const n = newNode(1, [1, 2, 3], {}, s);
    n.step(msg(MessageType.app, 2, 1, 2, { index: c.index, logTerm: c.logTerm, commit: 1 }));
    const resp = drain(n).find((m) => m.type === MessageType.appResp);
    assert.ok(resp !== undefined);
    assert.is(resp.reject, c.reject, JSON.stringify(c));
  }
});

test("§5.3 a follower deletes a conflicting entry and all that follow it, then appends the new ones", () => {
  const cases: { index: number; logTerm: number; ents: [number, number][]; want: [number, number][] }[] = [
    { index: 2, logTerm: 2, ents: [[3, 3]], want: [[1, 1], [2, 2], [3, 3]] },
    { index: 1, logTerm: 1, ents: [[2, 3], [3, 4]], want: [[1, 1], [2, 3], [3, 4]] },
    { index: 0, logTerm: 0, ents: [[1, 1]], want: [[1, 1], [2, 2]] },
    { index: 0, logTerm: 0, ents: [[1, 3]], want: [[1, 3]] },
  ];
  for (const c of cases) {
    const s = storageWith([1, 2, 3], [1, 2]);
    const n = newNode(1, [1, 2, 3], {}, s);
    n.step(msg(MessageType.app, 2, 1, 2, { index: c.index, logTerm: c.logTerm, entries: c.ents.map(([i, t]) => entry(i, t)) }));
    const r = n.ready();
    persist(r, s);
    n.advance();
    const got = s.entries(1, s.lastIndex() + 1, Infinity).map((e) => [e.index, e.term]);
    assert.equal(got, c.want, JSON.stringify(c));
  }
});

test("§5.3 (Figure 7) a new leader brings every follower's log into agreement with its own", () => {
  const leaderLog = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
  const followers: number[][] = [
    [1, 1, 1, 4, 4, 5, 5, 6, 6], // (a) missing one
    [1, 1, 1, 4], // (b) missing many
    [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6], // (c) one extra
    [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], // (d) extra of a later term
    [1, 1, 1, 4, 4, 4, 4], // (e) conflicting tail
    [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3], // (f) long conflicting tail
  ];
  for (const f of followers) {
    const c = new Cluster([1, 2, 3]);
    c.members.delete(1);
    c.members.delete(2);
    c.members.delete(3);
    const ls = storageWith([1, 2, 3], leaderLog);
    ls.setHardState({ term: 7, vote: 0, commit: 0 });
    const fs = storageWith([1, 2, 3], f);
    fs.setHardState({ term: 7, vote: 0, commit: 0 });
    const vs = storageWith([1, 2, 3]); // a voter with an empty log that helps elect 1
    vs.setHardState({ term: 7, vote: 0, commit: 0 });
    c.add(1, ls);
    c.add(2, fs);
    c.add(3, vs);
    c.campaign(1);
    assert.is(c.node(1).status().role, StateRole.leader, `leader elected for follower log ${f}`);
    c.stabilize();
    const lead = ls.entries(1, ls.lastIndex() + 1, Infinity).map((e) => `${e.index}/${e.term}`);
    const foll = fs.entries(1, fs.lastIndex() + 1, Infinity).map((e) => `${e.index}/${e.term}`);
    assert.equal(foll, lead, `follower log ${f}`);
  }
});

test("§5.3 fast backtracking: a conflicting follower is found in a few round trips, not one per entry", () => {
  const c = new Cluster([1, 2, 3]);
  for (const id of [1, 2, 3]) c.members.delete(id);
  const leader = Array.from({ length: 100 }, () => 1).concat(Array.from({ length: 100 }, () => 3));
  const follower = Array.from({ length: 100 }, () => 1).concat(Array.from({ length: 300 }, () => 2));
  const ls = storageWith([1, 2, 3], leader);
  ls.setHardState({ term: 3, vote: 0, commit: 100 });
  const fs = storageWith([1, 2, 3], follower);
  fs.setHardState({ term: 3, vote: 0, commit: 100 });
  const vs = storageWith([1, 2, 3], leader);
  vs.setHardState({ term: 3, vote: 0, commit: 100 });
  c.add(1, ls);
  c.add(2, fs);
  c.add(3, vs);
  c.record = true;
  c.campaign(1);
  c.stabilize();
  const rejects = c.transcript.filter((l) => l.startsWith("2->1 appResp") && l.includes("reject"));
  assert.ok(rejects.length <= 3, `rejections: ${rejects.join("; ")}`);
  assert.is(fs.lastIndex(), ls.lastIndex());
  assert.is(fs.term(fs.lastIndex()), 4);
});

// ---- §5.4 safety ----

test("§5.4.1 a RequestVote carries the candidate's last log index and term", () => {
  const s = storageWith([1, 2, 3], [1, 2, 2]);
  s.setHardState({ term: 2, vote: 0, commit: 0 });
  const n = newNode(1, [1, 2, 3], {}, s);
  n.campaign();
  for (const m of drain(n)) {
    assert.is(m.type, MessageType.vote);
    assert.is(m.index, 3);
    assert.is(m.logTerm, 2);
    assert.is(m.term, 3);
  }
});

test("§5.4.1 a follower votes only for a candidate whose log is at least as up-to-date as its own", () => {
  const cases: { log: number[]; index: number; logTerm: number; reject: boolean }[] = [
    { log: [1, 1], index: 2, logTerm: 1, reject: false }, // same last term, same length
    { log: [1, 1], index: 3, logTerm: 1, reject: false }, // same term, longer
    { log: [1, 1], index: 1, logTerm: 1, reject: true }, // same term, shorter
    { log: [2], index: 1, logTerm: 2, reject: false },
    { log: [2], index: 5, logTerm: 1, reject: true }, // longer but older last term
    { log: [1], index: 1, logTerm: 2, reject: false }, // later last term wins even if shorter
    { log: [2, 2], index: 1, logTerm: 3, reject: false },
  ];
  for (const c of cases) {
    const s = storageWith([1, 2, 3], c.log);
    const n = newNode(1, [1, 2, 3], {}, s);
    n.step(msg(MessageType.vote, 2, 1, 5, { index: c.index, logTerm: c.logTerm }));
    const r = drain(n)[0];
    assert.is(r?.reject, c.reject, JSON.stringify(c));
  }
});

test("§5.4.2 a leader does not commit an entry of an earlier term by counting replicas; only its own term's", () => {
  const s = storageWith([1, 2, 3], [1, 2]);
  s.setHardState({ term: 2, vote: 0, commit: 0 });
  const n = newNode(1, [1, 2, 3], {}, s);
  n.campaign();
  n.step(msg(MessageType.voteResp, 2, 1, 3));
  persistNode(n, s);
  // Follower 2 holds the term-2 entry at index 2 but not yet the term-3 no-op.
  n.step(msg(MessageType.appResp, 2, 1, 3, { index: 2 }));
  assert.is(n.status().commit, 0, "index 2 (term 2) is on a majority but must not commit by counting");
  n.step(msg(MessageType.appResp, 2, 1, 3, { index: 3 }));
  assert.is(n.status().commit, 3, "the term-3 no-op commits, and index 2 with it");
});

test("§5.4.2 a new leader appends a no-op entry of its term at once", () => {
  const n = newNode(1, [1, 2, 3], {}, storageWith([1, 2, 3], [1, 1]));
  electLeader(n, [1, 2, 3]);
  assert.is(n.status().lastIndex, 3);
  assert.is(inspectCore(n).log.term(3), n.status().term);
});

// ---- Figure 2: persistence before responding ----

test("Figure 2: term and vote are persisted (Ready.hardState, mustSync) before the vote response is sent", () => {
  const n = newNode(1, [1, 2, 3]);
  n.step(msg(MessageType.vote, 2, 1, 4));
  const r = n.ready();
  assert.equal(r.hardState, { term: 4, vote: 2, commit: 0 });
  assert.ok(r.mustSync);
  assert.is(r.messages[0]?.type, MessageType.voteResp, "the response comes out in the same Ready as the state it depends on");
  n.advance();
});

test("Figure 2: a vote granted in a term the node already knew is persisted (Ready.hardState, mustSync) before the vote response is sent", () => {
  const s = storageWith([1, 2, 3], [1, 1]);
  let n = newNode(1, [1, 2, 3], {}, s);
  // Candidate 2's log is behind ours: refused, but its term is ours now.
  n.step(msg(MessageType.vote, 2, 1, 4, { index: 1, logTerm: 1 }));
  let r = n.ready();
  assert.equal(r.hardState, { term: 4, vote: 0, commit: 0 });
  assert.ok(r.messages[0]?.reject);
  persist(r, s);
  n.advance();
  // Candidate 3 asks in that same term: only the vote changes, and it must reach the disk first.
  n.step(msg(MessageType.vote, 3, 1, 4, { index: 2, logTerm: 1 }));
  r = n.ready();
  assert.equal(r.hardState, { term: 4, vote: 3, commit: 0 }, "the vote is in the hard state to persist");
  assert.ok(r.mustSync, "and synced before the response leaves");
  assert.equal(r.messages.map((m) => [m.to, m.type, m.reject]), [[3, MessageType.voteResp, false]]);
  persist(r, s);
  n.advance();
  // A crash after the response left: the restarted node remembers its vote and
  // grants no other in term 4, even to a candidate whose log is up to date.
  n = newNode(1, [1, 2, 3], {}, s);
  n.step(msg(MessageType.vote, 2, 1, 4, { index: 2, logTerm: 1 }));
  r = n.ready();
  assert.equal(r.messages.map((m) => [m.to, m.type, m.reject]), [[2, MessageType.voteResp, true]], "§5.2: one vote per term");
});

test("Figure 2: a hard state persists a commit index only over entries on disk before its Ready, so a crash between its writes, in either order, never commits what the node does not hold", () => {
  // The follower holds a stale suffix 3..5 of term 1; the leader of term 2 replaces it from 3 on and says 3 is committed.
  const s = storageWith([1, 2, 3], [1, 1, 1, 1, 1]);
  s.setHardState({ term: 1, vote: 0, commit: 2 });
  let n = newNode(2, [1, 2, 3], { applied: 2 }, s);
  n.step(msg(MessageType.app, 1, 2, 2, { index: 2, logTerm: 1, entries: [entry(3, 2, "new")], commit: 3 }));
  assert.is(n.status().commit, 3);
  let r = n.ready();
  assert.equal(r.entries.map((e) => `${e.index}/${e.term}`), ["3/2"]);
  assert.equal(r.hardState, { term: 2, vote: 0, commit: 2 }, "its commit stays on what is already on disk (index 3 there is still the stale entry)");
  // The hard state reaches the disk, the entries do not, and the node crashes.
  if (r.hardState !== null) s.setHardState(r.hardState);
  n = newNode(2, [1, 2, 3], { applied: 2 }, s);
  assert.is(n.status().commit, 2, "restarted: the stale entry at 3 is not committed");
  assert.is(n.hasReady(), false, "and nothing is applied");
  // Without the crash, the commit follows in the next Ready, once the entry is on disk (no sync needed).
  n.step(msg(MessageType.app, 1, 2, 2, { index: 2, logTerm: 1, entries: [entry(3, 2, "new")], commit: 3 }));
  r = n.ready();
  persist(r, s);
  n.advance();
  r = n.ready();
  assert.equal(r.hardState, { term: 2, vote: 0, commit: 3 });
  assert.not.ok(r.mustSync);
  assert.equal(r.committedEntries.map((e) => `${e.index}/${e.term}`), ["3/2"]);
});

test("Figure 2: a follower's append acknowledgment comes out in the Ready that persists the entries", () => {
  const n = newNode(1, [1, 2, 3]);
  n.step(msg(MessageType.app, 2, 1, 1, { entries: [entry(1, 1, "a")] }));
  const r = n.ready();
  assert.equal(r.entries.map((e) => e.index), [1]);
  assert.ok(r.mustSync);
  assert.ok(r.messages.some((m) => m.type === MessageType.appResp && m.index === 1));
});

test("Figure 2: a single-node leader does not commit (acknowledge) an entry before it is persisted", () => {
  const s = storageWith([1]);
  const n = newNode(1, [1], {}, s);
  n.campaign();
  assert.is(n.status().role, StateRole.leader);
  const idx = n.propose(enc("w"));
  let r = n.ready();
  assert.equal(r.committedEntries, [], "nothing is committed in the Ready that carries the entries to persist");
  assert.is(n.status().commit, 0);
  persist(r, s);
  n.advance();
  assert.is(n.status().commit, idx, "committed once advance() confirmed the write");
  r = n.ready();
  assert.equal(r.committedEntries.map((e) => e.index), [1, 2]);
  n.advance();
});

// ---- §6 membership changes (one server at a time, thesis §4.1) ----

test("§6 (thesis §4.1) a configuration takes effect as soon as its entry is in the log, before it commits", () => {
  const c = new Cluster([1, 2, 3], {}, [4]);
  c.campaign(1);
  const r = c.node(1).proposeConfChange({ type: ConfChangeType.addVoter, nodeId: 4 });
  assert.ok("index" in r);
  assert.equal(c.node(1).status().voters, [1, 2, 3, 4], "leader uses the new config at once");
  c.stabilize();
  assert.equal(c.node(4).status().voters, [1, 2, 3, 4], "the new node learns its config from the entry");
});

test("§6 (thesis §4.1) a leader refuses a second change while the first is uncommitted: never two in flight", () => {
  const c = new Cluster([1, 2, 3], {}, [4, 5]);
  c.campaign(1);
  c.isolate(2);
  c.isolate(3);
  const a = c.node(1).proposeConfChange({ type: ConfChangeType.addLearner, nodeId: 4 });
  assert.ok("index" in a);
  c.stabilize();
  const b = c.node(1).proposeConfChange({ type: ConfChangeType.addLearner, nodeId: 5 });
  assert.ok("refused" in b && /not committed/.test(b.refused), JSON.stringify(b));
  c.heal();
  c.tickAll(2);
  const d = c.node(1).proposeConfChange({ type: ConfChangeType.addLearner, nodeId: 5 });
  assert.ok("index" in d, "accepted once the first committed");
});

test("§6 (raft-dev 2015 fix) a new leader refuses a change until it has committed an entry of its own term", () => {
  const c = new Cluster([1, 2, 3], {}, [4]);
  c.isolate(1);
  c.campaign(1);
  assert.is(c.node(1).status().role, StateRole.candidate);
  // Elect 1 by hand: votes arrive, the no-op has not committed.
  c.node(1).step(msg(MessageType.voteResp, 2, 1, c.node(1).status().term));
  assert.is(c.node(1).status().role, StateRole.leader);
  const r = c.node(1).proposeConfChange({ type: ConfChangeType.addVoter, nodeId: 4 });
  assert.ok("refused" in r && /own|its term/.test(r.refused), JSON.stringify(r));
});

test("§6 a change adds, removes or promotes exactly one node; a node already present is refused", () => {
  const c = new Cluster([1, 2, 3], {}, [4]);
  c.campaign(1);
  const dup = c.node(1).proposeConfChange({ type: ConfChangeType.addVoter, nodeId: 2 });
  assert.ok("refused" in dup);
  assert.ok("index" in c.node(1).proposeConfChange({ type: ConfChangeType.addLearner, nodeId: 4 }));
  c.stabilize();
  assert.ok("index" in c.node(1).proposeConfChange({ type: ConfChangeType.addVoter, nodeId: 4 }), "promote the learner");
  c.stabilize();
  assert.equal(c.node(3).status().voters, [1, 2, 3, 4]);
  assert.equal(c.node(3).status().learners, []);
});

test("§6 a learner receives the log but does not count toward commit or elections", () => {
  const c = new Cluster([1, 2, 3], {}, [4]);
  c.campaign(1);
  c.node(1).proposeConfChange({ type: ConfChangeType.addLearner, nodeId: 4 });
  c.stabilize();
  c.propose(1, "x");
  assert.is(c.get(4).storage.lastIndex(), c.get(1).storage.lastIndex(), "the learner caught up");
  c.isolate(2);
  c.isolate(3);
  const before = c.node(1).status().commit;
  c.propose(1, "y");
  assert.is(c.node(1).status().commit, before, "leader + learner are not a quorum of 3 voters");
  for (let i = 0; i < 40; i++) c.node(4).tick();
  assert.is(c.node(4).status().role, StateRole.follower, "a learner never campaigns");
});

test("§6 (thesis §4.2.2) a leader removed from the configuration steps down once the removal commits", () => {
  const c = new Cluster([1, 2, 3]);
  c.campaign(1);
  c.node(1).proposeConfChange({ type: ConfChangeType.removeNode, nodeId: 1 });
  assert.is(c.node(1).status().role, StateRole.leader, "still leads while the change is uncommitted");
  c.stabilize();
  assert.is(c.node(1).status().role, StateRole.follower);
  assert.equal(c.node(2).status().voters, [2, 3]);
  c.tickAll(25);
  const leaders = c.leaders();
  assert.is(leaders.length, 1);
  assert.ok(leaders[0] !== 1);
});

test("§6 (thesis §4.2.3) a removed server that times out cannot disrupt the cluster while the leader is heard", () => {
  const c = new Cluster([1, 2, 3], { checkQuorum: true, preVote: true });
  c.campaign(1);
  c.node(1).proposeConfChange({ type: ConfChangeType.removeNode, nodeId: 3 });
  c.isolate(3); // 3 never learns it was removed
  c.stabilize();
  c.heal();
  const term = c.node(1).status().term;
  // 3 still believes it is a voter: its campaigns are pre-votes the others reject.
  for (let i = 0; i < 100; i++) {
    c.node(3).tick();
    c.tick(1);
    c.tick(2);
    c.stabilize();
  }
  assert.is(c.node(1).status().role, StateRole.leader);
  assert.is(c.node(1).status().term, term);
});

test("§6 a configuration entry that is truncated from a follower's log no longer applies", () => {
  const s = storageWith([1, 2, 3]);
  const n = new RaftNode(config(2, s));
  const c = new Cluster([1, 2, 3], {}, [4]);
  c.campaign(1);
  const r = c.node(1).proposeConfChange({ type: ConfChangeType.addVoter, nodeId: 4 });
  assert.ok("index" in r);
  const ms = drain(c.node(1)).filter((m) => m.to === 2);
  const app = ms.find((m) => m.type === MessageType.app);
  assert.ok(app !== undefined);
  // Follower 2 (a fresh core) takes the entries: the change is in force.
  n.step({ ...app, index: 0, logTerm: 0, entries: inspectCore(c.node(1)).log.slice(1, 3, Infinity) });
  assert.equal(n.status().voters, [1, 2, 3, 4]);
  // A later leader overwrites index 2 with another entry: the change is gone.
  n.step(msg(MessageType.app, 3, 2, 5, { index: 1, logTerm: 1, entries: [entry(2, 5)] }));
  assert.equal(n.status().voters, [1, 2, 3]);
});

// ---- §7 log compaction ----

test("§7 a follower behind the leader's compaction point gets a snapshot and resumes normal replication after it", () => {
  const c = new Cluster([1, 2, 3]);
  c.campaign(1);
  c.isolate(3);
  for (let i = 0; i < 10; i++) c.propose(1, `w${i}`);
  const ls = c.get(1).storage;
  const applied = c.node(1).status().applied;
  ls.createSnapshot(applied, { voters: [1, 2, 3], learners: [] }, enc(`state@${applied}`));
  ls.compact(applied);
  c.heal();
  c.record = true;
  c.tickAll(3);
  assert.ok(c.transcript.some((l) => l.startsWith("1->3 snap")), "snapshot sent");
  assert.is(c.get(3).storage.firstIndex(), applied + 1);
  c.propose(1, "after");
  assert.is(c.get(3).storage.lastIndex(), ls.lastIndex(), "appends resume after the snapshot");
  assert.is(progressOf(c.node(1), 3).state, ProgressState.replicate);
});

test("§7 a follower ignores a snapshot that is not past its commit index: what it committed is never rolled back", () => {
  // The follower committed and applied 1..8, then compacted its log to a snapshot at 5.
  const s = storageWith([1, 2, 3], [1, 1, 1, 1, 1, 1, 1, 1]);
  s.setHardState({ term: 1, vote: 0, commit: 8 });
  s.createSnapshot(5, { voters: [1, 2, 3], learners: [] }, enc("state@5"));
  s.compact(5);
  const n = newNode(2, [1, 2, 3], { applied: 8 }, s);
  // An older snapshot of the leader's arrives late (a retried transfer), below what the follower
  // committed and below its own compaction point, so its log cannot show the entry at 3.
  const old = { meta: { index: 3, term: 1, conf: { voters: [1, 2, 3], learners: [] } }, data: enc("state@3") };
  n.step(msg(MessageType.snap, 1, 2, 1, { snapshot: old }));
  const r = n.ready();
  assert.is(r.snapshot, null, "nothing to install");
  assert.is(n.status().commit, 8);
  assert.is(n.status().lastIndex, 8, "the entries after the follower's own snapshot stay");
  assert.equal(r.messages.map((m) => [m.type, m.index, m.reject]), [[MessageType.appResp, 8, false]], "the leader learns where the follower is");
  n.advance();
});

// ---- §8 client interaction: reads ----

test("§8 (thesis §6.4) a ReadIndex is answered only after a quorum confirms the leadership, at the commit index", () => {
  const c = new Cluster([1, 2, 3]);
  c.campaign(1);
  c.propose(1, "a");
  const ctx = enc("r1");
  c.isolate(2);
  c.isolate(3);
  assert.ok(c.node(1).readIndex(ctx));
  const r1 = c.node(1).ready();
  assert.equal(r1.readStates, [], "no answer without a quorum");
  c.node(1).advance();
  c.heal();
  c.tickAll(1);
  const leader = c.node(1);
  // The read state came out in a Ready handled by the cluster: find it by re-reading through a fresh read.
  assert.ok(leader.readIndex(enc("r2")));
  const hb = drain(leader).filter((m) => m.type === MessageType.heartbeat);
  assert.is(hb.length, 2);
  for (const m of hb) {
    c.node(m.to).step(m);
    for (const resp of drain(c.node(m.to))) leader.step(resp);
  }
  const rs = leader.ready().readStates;
  assert.ok(rs.some((x) => new TextDecoder().decode(x.context) === "r2" && x.index === leader.status().commit));
});

test("§8 (thesis §6.4) a read is confirmed only by answers to a heartbeat round sent after it arrived: an answer to an older round confirms only the older reads", () => {
  const s = storageWith([1, 2, 3]);
  const n = newNode(1, [1, 2, 3], {}, s);
  electLeader(n, [1, 2, 3]);
  persistNode(n, s);
  n.step(msg(MessageType.appResp, 2, 1, 1, { index: 1 }));
  assert.is(n.status().commit, 1, "the leader committed its no-op");
  persistNode(n, s);
  const round = (ctx: string): Message[] => {
    assert.ok(n.readIndex(enc(ctx)));
    const hb = persistNode(n, s).filter((m) => m.type === MessageType.heartbeat);
    assert.equal(hb.map((m) => new TextDecoder().decode(m.context ?? new Uint8Array(0))), [ctx, ctx]);
    return hb;
  };
  const confirmed = (): string[] => {
    const r = n.ready();
    n.advance();
    return r.readStates.map((x) => new TextDecoder().decode(x.context));
  };
  const older = round("r1");
  round("r2");
  // Node 2 answers the first round. That proves node 1 led when r1 arrived, not
  // when r2 did: a newer leader may have committed a write in between, which r2
  // must see, so r2 waits for answers to its own round.
  n.step(msg(MessageType.heartbeatResp, 2, 1, 1, { context: older[0]?.context ?? null }));
  assert.equal(confirmed(), ["r1"]);
  n.step(msg(MessageType.heartbeatResp, 3, 1, 1, { context: older[1]?.context ?? null }));
  assert.equal(confirmed(), [], "more answers to the old round confirm nothing newer");
  n.step(msg(MessageType.heartbeatResp, 3, 1, 1, { context: enc("r2") }));
  assert.equal(confirmed(), ["r2"]);
});

test("§8 (thesis §6.4) a new leader answers no read until it has committed an entry of its term", () => {
  const s = storageWith([1, 2, 3]);
  const n = newNode(1, [1, 2, 3], {}, s);
  electLeader(n, [1, 2, 3]);
  assert.ok(n.readIndex(enc("early")));
  persistNode(n, s);
  assert.is(inspectCore(n).readStates.length, 0);
  n.step(msg(MessageType.appResp, 2, 1, 1, { index: 1 }));
  const hb = drain(n).filter((m) => m.type === MessageType.heartbeat);
  assert.ok(hb.length > 0, "the held read is confirmed once the no-op commits");
  n.step(msg(MessageType.heartbeatResp, 2, 1, 1, { context: hb[0]?.context ?? null }));
  assert.is(inspectCore(n).readStates.length, 1);
  assert.is(inspectCore(n).readStates[0]?.index, 1);
});

test.run();
