// Regression tests for bugs known from other Raft implementations, plus the
// flow-control and lifecycle rules that the paper leaves to implementations.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { ConfChangeType } from "../../src/raft/confchange.js";
import { ProgressState } from "../../src/raft/progress.js";
import type { Message } from "../../src/raft/types.js";
import { MessageType, StateRole } from "../../src/raft/types.js";
import { Cluster, config, drain, entry, msg, newNode, persist, progressOf, storageWith, text } from "./raft-helpers.js";
import { inspectCore, RaftNode } from "../../src/raft/node.js";
import { CompactedError, MemoryStorage } from "../../src/raft/storage.js";

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);

test("Figure 8: an old-term entry on a majority is not committed by a later leader, so it may be safely overwritten", () => {
  const c = new Cluster([1, 2, 3, 4, 5]);
  c.campaign(1); // term 1, no-op at 1 committed everywhere
  // (a)/(b): S1 led term 2 and replicated index base+1 only to S2; S5 led term 3 and wrote its own
  // entry at base+1 on itself only. Both crashed. We lay that state down on the storages directly.
  // Build Figure 8 directly on storages: S1,S2 hold (2, term 2); S5 holds (2, term 3).
  const base = c.get(1).storage.lastIndex();
  const put = (id: number, term: number): void => {
    const s = c.get(id).storage;
    s.append([{ index: base + 1, term, type: 0, data: enc(`t${term}`) }]);
  };
  for (const id of [1, 2, 3, 4, 5]) c.crash(id);
  put(1, 2);
  put(2, 2);
  put(5, 3);
  for (const id of [1, 2, 3, 4, 5]) c.get(id).storage.setHardState({ term: 3, vote: 0, commit: base });
  for (const id of [1, 2, 3, 4, 5]) c.restart(id);
  // (c) S1 is elected in term 4 (votes of S2, S3) and replicates its term-2 entry to S3, but not its no-op.
  c.isolate(4);
  c.isolate(5);
  // The network loses S1's term-4 entries (its no-op) but delivers the rest.
  c.rewrite = (m: Message): Message => (m.type === MessageType.app ? { ...m, entries: m.entries.filter((e) => e.term !== 4) } : m);
  c.campaign(1);
  assert.is(c.node(1).status().role, StateRole.leader);
  assert.is(c.node(1).status().term, 4);
  c.tickAll(3);
  assert.is(c.get(3).storage.term(base + 1), 2, "S3 now holds the term-2 entry: it is on a majority");
  assert.ok(c.node(1).status().commit < base + 1, "but S1 must not commit it by counting (§5.4.2)");
  // (d) S1 crashes; S5 (last term 3) wins with S2, S3, S4 and overwrites index base+1 everywhere.
  c.crash(1);
  c.rewrite = null;
  c.heal();
  c.isolate(1);
  c.campaign(5); // term 4: S2 and S3 already voted for S1 in term 4
  if (c.node(5).status().role !== StateRole.leader) c.campaign(5); // term 5: S2, S3, S4 vote (S5's last term 3 > 2)
  assert.is(c.node(5).status().role, StateRole.leader);
  c.tickAll(2);
  for (const id of [2, 3, 4]) assert.is(c.get(id).storage.term(base + 1), 3);
  // No node ever applied the overwritten entry.
  for (const id of [2, 3, 4, 5]) assert.ok(c.get(id).applied.every((e) => e.index !== base + 1 || e.term === 3));
});

function partialPartitionTerms(preVote: boolean, checkQuorum: boolean): { terms: number; leaderKept: boolean } {
  const c = new Cluster([1, 2, 3], { preVote, checkQuorum });
  c.campaign(1);
  const term = c.node(1).status().term;
  // 3 cannot hear the leader but can talk to 2; it misses the writes, so it can never win an election.
  c.cutLink(1, 3);
  c.cutLink(3, 1);
  c.propose(1, "x");
  c.tickAll(200);
  return { terms: c.node(2).status().term - term, leaderKept: c.node(1).status().role === StateRole.leader && c.node(2).status().lead === 1 };
}

test("a partially partitioned node does not keep forcing elections when PreVote and CheckQuorum are on", () => {
  const on = partialPartitionTerms(true, true);
  assert.is(on.terms, 0, "no term change");
  assert.ok(on.leaderKept);
  const off = partialPartitionTerms(false, false);
  // The same scenario without them: the cut-off node's campaigns depose the leader.
  assert.ok(off.terms > 0 && !off.leaderKept, `without them the node disrupts the group (terms advanced ${off.terms})`);
});

test("a deposed leader never answers a read: its ReadIndex gets no quorum and is dropped when it steps down", () => {
  const c = new Cluster([1, 2, 3]);
  c.campaign(1);
  c.propose(1, "v1");
  c.isolate(1);
  c.campaign(2);
  c.propose(2, "v2");
  assert.is(c.node(1).status().role, StateRole.leader, "1 still believes it leads");
  assert.ok(c.node(1).readIndex(enc("stale-read")));
  const reads: number[] = [];
  for (let i = 0; i < 5; i++) {
    c.node(1).tick();
    const r = c.node(1).ready();
    reads.push(...r.readStates.map((x) => x.index));
    c.node(1).advance();
  }
  c.heal();
  for (let i = 0; i < 5; i++) {
    c.node(1).tick();
    c.node(2).tick();
    c.node(3).tick();
    const n1 = c.node(1);
    if (n1.hasReady()) {
      const r = n1.ready();
      reads.push(...r.readStates.map((x) => x.index));
      persist(r, c.get(1).storage);
      for (const m of r.messages) c.node(m.to).step(m);
      n1.advance();
    }
    c.stabilize();
  }
  assert.equal(reads, [], "no read state from the deposed leader");
  assert.is(c.node(1).status().role, StateRole.follower);
});

test("a deposed leader on the minority side gets no read confirmed from the followers it still reaches", () => {
  const c = new Cluster([1, 2, 3, 4, 5]);
  c.campaign(1);
  c.propose(1, "v1");
  for (const a of [1, 2]) for (const b of [3, 4, 5]) {
    c.cutLink(a, b);
    c.cutLink(b, a);
  }
  c.campaign(3);
  c.propose(3, "v2");
  assert.is(c.node(3).status().role, StateRole.leader);
  assert.is(c.node(1).status().role, StateRole.leader, "1 has not noticed");
  assert.ok(c.node(1).readIndex(enc("minority-read")));
  const reads: number[] = [];
  for (let i = 0; i < 5; i++) {
    c.tick(1);
    const r = c.node(1).ready();
    reads.push(...r.readStates.map((x) => x.index));
    for (const m of r.messages) if (m.to === 2) c.node(2).step(m);
    persist(r, c.get(1).storage);
    c.node(1).advance();
    for (const m of drain(c.node(2))) if (m.to === 1) c.node(1).step(m);
  }
  assert.equal(reads, [], "leader + one follower of five is no quorum");
});

test("a leader that has not persisted its own entry does not count itself toward commit", () => {
  const s = storageWith([1, 2, 3]);
  const n = newNode(1, [1, 2, 3], {}, s);
  n.campaign();
  n.step(msg(MessageType.voteResp, 2, 1, 1));
  drain(n);
  n.step(msg(MessageType.appResp, 2, 1, 1, { index: 1 }));
  assert.is(n.status().commit, 0, "leader's copy not yet on disk: only one of three");
  const r = n.ready();
  persist(r, s);
  n.advance();
  assert.is(n.status().commit, 1);
});

test("a removed node with a higher term does not disrupt the cluster (CheckQuorum lease)", () => {
  const c = new Cluster([1, 2, 3], { checkQuorum: true });
  c.campaign(1);
  c.node(1).proposeConfChange({ type: ConfChangeType.removeNode, nodeId: 3 });
  c.isolate(3);
  c.stabilize();
  // 3 never heard of its removal; alone, it campaigns over and over and its term climbs.
  for (let i = 0; i < 100; i++) c.tick(3);
  c.stabilize();
  assert.ok(c.node(3).status().term > c.node(1).status().term + 2);
  const term = c.node(1).status().term;
  c.heal();
  c.tickAll(60);
  assert.is(c.node(1).status().role, StateRole.leader);
  assert.is(c.node(1).status().term, term, "the leader was not deposed by the removed node's votes");
});

test("CheckQuorum: a leader that hears from no quorum within an election timeout steps down", () => {
  const c = new Cluster([1, 2, 3], { checkQuorum: true });
  c.campaign(1);
  c.isolate(1);
  for (let i = 0; i < 10; i++) c.tick(1);
  c.stabilize();
  assert.is(c.node(1).status().role, StateRole.leader);
  for (let i = 0; i < 10; i++) c.tick(1);
  assert.is(c.node(1).status().role, StateRole.follower);
});

test("leadership transfer to an up-to-date follower: TimeoutNow, it wins at once despite the lease", () => {
  const c = new Cluster([1, 2, 3], { checkQuorum: true, preVote: true });
  c.campaign(1);
  c.propose(1, "x");
  const term = c.node(1).status().term;
  assert.ok(c.node(1).transferLeadership(3));
  c.stabilize();
  assert.is(c.node(3).status().role, StateRole.leader);
  assert.is(c.node(3).status().term, term + 1);
  assert.is(c.node(1).status().lead, 3);
});

test("leadership transfer to a lagging follower waits until it has caught up; proposals are dropped meanwhile", () => {
  const c = new Cluster([1, 2, 3]);
  c.campaign(1);
  c.isolate(3);
  for (let i = 0; i < 5; i++) c.propose(1, `w${i}`);
  c.node(1).transferLeadership(3);
  assert.is(c.node(1).propose(enc("during")), 0, "dropped during the transfer");
  c.stabilize();
  assert.is(c.node(1).status().role, StateRole.leader, "no transfer while 3 is unreachable");
  c.heal();
  c.tickAll(2);
  assert.is(c.node(3).status().role, StateRole.leader);
  assert.is(c.get(3).storage.lastIndex() >= 7, true);
});

test("leadership transfer to an unreachable follower is abandoned after an election timeout", () => {
  const c = new Cluster([1, 2, 3]);
  c.campaign(1);
  c.isolate(3);
  c.node(1).transferLeadership(3);
  for (let i = 0; i < 10; i++) c.tick(1);
  c.stabilize();
  assert.is(inspectCore(c.node(1)).leadTransferee, 0);
  assert.ok(c.node(1).propose(enc("ok")) > 0);
});

/** Node 1 leads 1 and 2, with 2 in replicate state and a window of 3 appends. */
function replicatingLeader(): RaftNode {
  const n = newNode(1, [1, 2], { inflightMsgsMax: 3 }, storageWith([1, 2]));
  n.campaign();
  n.step(msg(MessageType.voteResp, 2, 1, 1));
  drain(n);
  n.step(msg(MessageType.appResp, 2, 1, 1, { index: 1 }));
  assert.is(progressOf(n, 2).state, ProgressState.replicate);
  drain(n);
  return n;
}

test("flow control: in replicate state at most inflightMsgsMax appends are unacknowledged", () => {
  const n = replicatingLeader();
  let apps = 0;
  for (let i = 0; i < 10; i++) {
    n.propose(enc(`p${i}`));
    apps += drain(n).filter((m) => m.type === MessageType.app && m.entries.length > 0).length;
  }
  assert.is(apps, 3);
  n.step(msg(MessageType.appResp, 2, 1, 1, { index: 3 }));
  const more = drain(n).filter((m) => m.type === MessageType.app);
  assert.ok(more.length >= 1, "acks reopen the window");
});

test("flow control: heartbeat responses of ReadIndex rounds nudge a full window once per heartbeat interval, not once each", () => {
  const n = replicatingLeader();
  for (let i = 0; i < 10; i++) {
    n.propose(enc(`p${i}`));
    drain(n);
  }
  assert.ok(inspectCore(n).progressOf(2).inflights.full(), "the follower's window is full");
  // Many read rounds, each answered by a heartbeat response with its context, all before the next heartbeat tick.
  const appsAfter = (responses: number): number => {
    let apps = 0;
    for (let i = 0; i < responses; i++) {
      n.step(msg(MessageType.heartbeatResp, 2, 1, 1, { context: enc(`read${i}`) }));
      apps += drain(n).filter((m) => m.type === MessageType.app).length;
    }
    return apps;
  };
  assert.is(appsAfter(20), 1, "one append for twenty responses in one interval");
  // The next periodic heartbeat allows one more.
  for (let t = 0; t < inspectCore(n).cfg.heartbeatTicks; t++) n.tick();
  drain(n);
  assert.is(appsAfter(20), 1, "and one per interval after that");
});

test("an append carries at most appendBytesMax of entries (but always one)", () => {
  const c = new Cluster([1, 2], { appendBytesMax: 1000 });
  c.campaign(1);
  c.record = true;
  for (let i = 0; i < 10; i++) c.node(1).propose(new Uint8Array(400));
  c.node(1).propose(new Uint8Array(5000));
  c.stabilize();
  const sizes = c.transcript.filter((l) => l.startsWith("1->2 app ")).map((l) => (l.match(/ents=\[([^\]]*)\]/)?.[1] ?? "").split(",").filter(Boolean).length);
  assert.ok(sizes.every((k) => k <= 2), `entries per message: ${sizes}`);
  assert.is(c.get(2).storage.lastIndex(), c.get(1).storage.lastIndex());
});

test("snapshot status: a failed snapshot sends the follower back to probe; it gets another", () => {
  const c = new Cluster([1, 2, 3]);
  c.campaign(1);
  c.isolate(3);
  for (let i = 0; i < 5; i++) c.propose(1, `w${i}`);
  const ls = c.get(1).storage;
  const applied = c.node(1).status().applied;
  ls.createSnapshot(applied, { voters: [1, 2, 3], learners: [] }, enc("s"));
  ls.compact(applied);
  c.heal();
  c.dropFilter = (m) => m.type === MessageType.snap;
  c.tickAll(2);
  assert.is(progressOf(c.node(1), 3).state, ProgressState.snapshot);
  c.node(1).reportSnapshot(3, false);
  assert.is(progressOf(c.node(1), 3).state, ProgressState.probe);
  c.dropFilter = null;
  c.tickAll(3);
  assert.is(c.get(3).storage.firstIndex(), applied + 1, "snapshot installed on retry");
});

test("a follower that installed a snapshot is replicated to at once, without waiting for a heartbeat", () => {
  // The snapshot_catchup transcript shows the step: the probe that follows the snapshot is answered at its
  // match, and the leader must move the follower to replicate then, or a new proposal waits for the next heartbeat.
  const c = new Cluster([1, 2, 3]);
  c.campaign(1);
  c.isolate(3);
  for (let i = 0; i < 3; i++) c.propose(1, `w${i}`);
  const ls = c.get(1).storage;
  const applied = c.node(1).status().applied;
  ls.createSnapshot(applied, { voters: [1, 2, 3], learners: [] }, enc("s"));
  ls.compact(applied);
  c.heal();
  c.tickAll(2);
  assert.is(c.get(3).storage.firstIndex(), applied + 1, "snapshot installed");
  assert.is(progressOf(c.node(1), 3).state, ProgressState.replicate);
  const index = c.propose(1, "after"); // no tick: only the append itself can carry it
  assert.is(c.get(3).storage.lastIndex(), index);
});

test("a leader that removes itself sends the commit as leader and no append after it stepped down", () => {
  // The remove_node transcript shows the step: the commit broadcast must go out before the step-down, since
  // an append from a follower would be taken for the leader's by its receiver. send() asserts only leaders append.
  const c = new Cluster([1, 2, 3]);
  c.campaign(1);
  const r = c.node(1).proposeConfChange({ type: ConfChangeType.removeNode, nodeId: 1 });
  assert.ok("index" in r);
  c.stabilize();
  assert.is(c.node(1).status().role, StateRole.follower);
  for (const id of [2, 3]) assert.ok(c.node(id).status().commit >= r.index, `node ${id} learned the removal committed`);
});

test("crash and restart: term and vote survive, so a node never votes twice in one term", () => {
  const c = new Cluster([1, 2, 3]);
  c.isolate(1);
  c.campaign(1);
  const term = c.node(1).status().term;
  c.heal();
  c.node(2).step(msg(MessageType.vote, 1, 2, term, { index: 0, logTerm: 0 }));
  c.handle(2);
  c.crash(2);
  c.restart(2);
  assert.is(c.node(2).status().term, term);
  assert.is(c.node(2).status().vote, 1);
  c.node(2).step(msg(MessageType.vote, 3, 2, term, { index: 10, logTerm: 5 }));
  const r = drain(c.node(2));
  assert.ok(r[0]?.reject, "already voted for 1 in this term");
});

test("a restarted node re-delivers committed entries after its applied index, once", () => {
  const c = new Cluster([1, 2, 3]);
  c.campaign(1);
  for (let i = 0; i < 3; i++) c.propose(1, `w${i}`);
  c.crash(2);
  c.restart(2);
  c.stabilize();
  c.tickAll(2);
  assert.equal(c.get(2).applied.map((e) => e.index), [1, 2, 3, 4]);
});

test("a follower never lets a leader's commit index run past the entries it knows match", () => {
  const s = storageWith([1, 2, 3], [1, 1, 1]);
  const n = newNode(2, [1, 2, 3], {}, s);
  // Leader says commit=3 but sends only up to index 1 (prev=0): commit must stop at 1.
  n.step(msg(MessageType.app, 1, 2, 2, { index: 0, logTerm: 0, entries: [{ index: 1, term: 1, type: 0, data: new Uint8Array() }], commit: 3 }));
  assert.is(n.status().commit, 1);
});

test("a node that applied and compacted entries whose commit it had not yet persisted restarts (the snapshot point counts as committed)", () => {
  // Committed entries are applied when handed out, before the Ready carrying
  // the new commit index is persisted; a compaction at the applied index and a
  // crash then leave a stored commit below the snapshot.
  const s = storageWith([1, 2, 3]);
  let n = newNode(2, [1, 2, 3], {}, s);
  n.step(msg(MessageType.app, 1, 2, 1, { index: 0, logTerm: 0, entries: [entry(1, 1, "a"), entry(2, 1, "b"), entry(3, 1, "c")], commit: 0 }));
  let r = n.ready();
  persist(r, s);
  n.advance();
  n.step(msg(MessageType.heartbeat, 1, 2, 1, { commit: 3 }));
  r = n.ready(); // held: its hard state (commit 3) is never persisted
  assert.equal(r.committedEntries.map((e) => e.index), [1, 2, 3]);
  s.createSnapshot(3, { voters: [1, 2, 3], learners: [] }, new Uint8Array(0));
  s.compact(3);
  assert.is(s.hardStateNow().commit, 0);
  n = newNode(2, [1, 2, 3], { applied: 3 }, s); // the crash and restart
  assert.is(n.status().commit, 3);
  assert.is(n.status().applied, 3);
});

test("a node whose storage lost entries it acknowledged withholds its vote until its log is back, so a candidate missing a committed entry cannot win", () => {
  const c = new Cluster([1, 2, 3]);
  c.campaign(1);
  c.isolate(3);
  const committed = c.propose(1, "acknowledged by 1 and 2 only");
  assert.is(c.node(1).status().commit, committed, "committed on the quorum {1, 2}");
  const owed = c.get(2).storage.lastIndex();
  // Node 2's disk damaged the entry: recovery cut its log before it and told the core what it owes.
  c.crash(2);
  const m2 = c.get(2);
  const cut = new MemoryStorage({ voters: [1, 2, 3], learners: [] });
  cut.append(m2.storage.entries(1, committed, Number.MAX_SAFE_INTEGER));
  cut.setHardState({ ...m2.storage.hardStateNow(), commit: committed - 1 });
  m2.storage = cut;
  m2.node = new RaftNode(config(2, cut, { votesWithheldUntil: owed }));
  m2.down = false;
  // Node 1 is gone; node 3 never saw the committed entry. With node 2's vote it would win and lose the entry.
  c.crash(1);
  c.heal();
  c.isolate(1);
  c.campaign(3);
  c.tickAll(30);
  assert.equal(c.leaders(), [], "node 3 cannot win: node 2 withholds its vote, and does not campaign itself");
  assert.is(c.node(2).status().votesWithheld, true);
  // Node 1 returns and leads again; node 2 gets the entry back and votes again.
  c.restart(1);
  c.heal();
  c.tickAll(200); // two voters with logs that differ may split a few elections first
  const leader = c.leaders()[0];
  assert.ok(leader === 1 || leader === 2, `the leader holds the committed entry (leader ${leader})`);
  assert.ok(c.get(2).storage.lastIndex() >= owed, "node 2 holds the entries it owed again");
  assert.is(c.node(2).status().votesWithheld, false);
  assert.equal(text(c.get(2).storage.entries(committed, committed + 1, 1 << 20)[0]!), "acknowledged by 1 and 2 only");
});

test("a leader resends the entries a follower lost after acknowledging them (its rejection's hint is below the match the leader counted)", () => {
  const c = new Cluster([1, 2, 3]);
  c.campaign(1);
  for (let i = 0; i < 5; i++) c.propose(1, `w${i}`);
  const acked = c.get(2).storage.lastIndex();
  assert.is(c.node(1).progress()?.find((p) => p.id === 2)?.match, acked, "the leader counted node 2's acknowledgement");
  // Node 2's disk damaged its last two entries: recovery cut its log before them; node 1 stays leader throughout.
  c.crash(2);
  const m2 = c.get(2);
  const cut = new MemoryStorage({ voters: [1, 2, 3], learners: [] });
  cut.append(m2.storage.entries(1, acked - 1, Number.MAX_SAFE_INTEGER));
  cut.setHardState({ ...m2.storage.hardStateNow(), commit: acked - 2 });
  m2.storage = cut;
  m2.node = new RaftNode(config(2, cut, { votesWithheldUntil: acked }));
  m2.down = false;
  c.propose(1, "after the loss");
  c.tickAll(10);
  assert.equal(c.leaders(), [1]);
  assert.is(c.get(2).storage.lastIndex(), c.get(1).storage.lastIndex(), "node 2 holds the leader's whole log again");
  assert.equal(text(c.get(2).storage.entries(acked, acked + 1, 1 << 20)[0]!), text(c.get(1).storage.entries(acked, acked + 1, 1 << 20)[0]!));
  assert.is(c.node(2).status().votesWithheld, false);
});

test("a leader whose storage cannot read an entry a follower needs compacts past it and sends a snapshot instead", () => {
  const c = new Cluster([1, 2, 3]);
  c.campaign(1);
  c.isolate(3);
  for (let i = 0; i < 5; i++) c.propose(1, `w${i}`);
  const ls = c.get(1).storage;
  const applied = c.node(1).status().applied;
  // Entry 3 is damaged on the leader's disk: reading it, the storage compacts past it (it was applied) and says so.
  const entries = ls.entries.bind(ls);
  let compacted = false;
  ls.entries = (lo: number, hi: number, maxBytes: number) => {
    if (lo <= 3 && hi > 3 && !compacted) {
      compacted = true;
      ls.createSnapshot(applied, { voters: [1, 2, 3], learners: [] }, enc("s"));
      ls.compact(applied);
      throw new CompactedError("entry 3 is damaged; compacted past it");
    }
    return entries(lo, hi, maxBytes);
  };
  c.heal();
  c.tickAll(5);
  assert.ok(compacted, "the leader read entry 3 for the follower");
  assert.is(c.get(3).storage.firstIndex(), applied + 1, "the follower got the snapshot instead");
  assert.is(c.node(3).status().commit, c.node(1).status().commit);
});

test("a follower the leader counts as behind its compaction point, but which holds the log up to it, gets an append there, not a snapshot", () => {
  const c = new Cluster([1, 2, 3]);
  c.campaign(1);
  for (let i = 0; i < 5; i++) c.propose(1, `e${i}`);
  c.stabilize();
  const last = c.node(1).status().lastIndex;
  assert.is(c.node(3).status().lastIndex, last, "3 holds the whole log");
  // The leader compacts everything, and its count of 3 is stale: a copy it tried to send failed, and it
  // knows only an old match (as a leader whose own copy cannot be read for a snapshot would).
  c.get(1).storage.compact(last);
  const pr = inspectCore(c.node(1)).progressOf(3);
  pr.match = 1;
  pr.becomeSnapshot(last);
  c.node(1).reportSnapshot(3, false);
  const sent: Message[] = [];
  c.rewrite = (m: Message): Message => (sent.push(m), m);
  c.tick(1, inspectCore(c.node(1)).cfg.heartbeatTicks);
  c.stabilize();
  assert.not.ok(sent.some((m) => m.type === MessageType.snap), "no snapshot was sent");
  assert.ok(sent.some((m) => m.type === MessageType.app && m.to === 3 && m.index === last), "an append at the compaction point asked 3");
  assert.is(progressOf(c.node(1), 3).match, last, "the leader knows 3 holds the log again");
});

test.run();
