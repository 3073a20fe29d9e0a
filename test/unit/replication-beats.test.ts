// Coalesced heartbeats (src/replication/beats.ts): three multi-raft drivers
// in one process, each with its own store (real files), over an in-memory
// network that encodes every envelope as the peer transport does (msgpack)
// and counts them. Node 1 leads every group: each heartbeat round is one
// envelope per follower and one back, followers keep their leader, the commit
// index and ReadIndex confirmations ride on the items; malformed envelopes
// are dropped with a log line, never thrown; a full or failed batch behaves
// as the messages alone would have.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { Prng } from "../../src/base/prng.js";
import { checkReplicationConstants, peerBeatContextBytesMax, peerBeatsMax } from "../../src/constants.js";
import { NodeDisk, deferImmediate } from "../../src/os/node-disk.js";
import { MessageType, newMessage, StateRole } from "../../src/raft/types.js";
import { beatItem, BeatsOutbox, parseBeats, type BeatItem } from "../../src/replication/beats.js";
import { MultiRaft, type DriverOptions } from "../../src/replication/driver.js";
import { decodeMessage, encodeMessage } from "../../src/replication/frame.js";
import { Store } from "../../src/store/store.js";
import { tempDir } from "../helpers/tmp.js";
import { encodeWrite } from "../../src/replication/volume-op.js";
import { VolumeReplica } from "../../src/replication/volume-replica.js";

const groupCount = 24;
const groups = Array.from({ length: groupCount }, (_, i) => i + 1);
const ids = [1, 2, 3];

type Envelope = Parameters<DriverOptions["send"]>[1];

interface Sent {
  from: number;
  to: number;
  envelope: Envelope;
}

interface Node {
  id: number;
  store: Store;
  driver: MultiRaft;
  logs: string[];
}

/** Three drivers wired over an in-memory network; `sent` records every envelope as it went on the wire. */
class Net {
  readonly nodes = new Map<number, Node>();
  readonly sent: Sent[] = [];
  inflight = 0;
  persisting = 0;
  /** Envelopes this returns true for are lost on the way (the send still succeeds). */
  drop: (s: Sent) => boolean = () => false;
  private readonly dirs = ids.map((id) => tempDir(`beats${id}`));

  async start(): Promise<void> {
    for (const id of ids) {
      const store = await Store.open({ disk: new NodeDisk(this.dirs[id - 1]!.dir), defer: deferImmediate }, groups.map((g) => ({ groupId: g, sizeBytes: 1 << 20 })));
      // Count the driver's persists in flight, so settle() knows when no fdatasync is pending either.
      const append = store.appendRaftEntries.bind(store);
      store.appendRaftEntries = (...args) => {
        this.persisting++;
        return append(...args).finally(() => this.persisting--);
      };
      const logs: string[] = [];
      const prng = new Prng(id * 7919);
      const driver = new MultiRaft({
        nodeId: id,
        store,
        send: (to, envelope) => this.send(id, to, envelope),
        defer: deferImmediate,
        random: { int: (n) => prng.int(n) },
        log: (l) => logs.push(l),
      });
      this.nodes.set(id, { id, store, driver, logs });
      for (const g of groups) driver.addGroup(g, ids, new VolumeReplica(store, g));
    }
  }

  node(id: number): Node {
    return this.nodes.get(id)!;
  }

  private send(from: number, to: number, envelope: Envelope): boolean {
    const body = encodeMessage(envelope);
    const s = { from, to, envelope: decodeMessage(body) as Envelope };
    this.sent.push(s);
    if (this.drop(s)) return true;
    this.inflight++;
    setImmediate(() => {
      this.inflight--;
      const d = this.node(to).driver;
      const m = s.envelope;
      if (m.kind === "raft") d.receive(from, m);
      else if (m.kind === "beats") d.receiveBeats(from, m);
      else if (m.kind === "compact") d.receiveCompact(from, m);
    });
    return true;
  }

  /** Waits until no envelope and no persist has been in flight for three polls `ms` apart. */
  async settle(ms = 5): Promise<void> {
    for (let quiet = 0; quiet < 3; ) {
      await new Promise((r) => setTimeout(r, ms));
      quiet = this.inflight === 0 && this.persisting === 0 ? quiet + 1 : 0;
    }
  }

  /** One heartbeat round: every driver ticks once, then the network settles. */
  async round(): Promise<void> {
    for (const n of this.nodes.values()) n.driver.tick();
    await this.settle();
  }

  count(from: number, to: number, since: number, pred: (e: Envelope) => boolean): number {
    return this.sent.slice(since).filter((s) => s.from === from && s.to === to && pred(s.envelope)).length;
  }

  async close(): Promise<void> {
    for (const n of this.nodes.values()) {
      n.driver.close();
      await n.store.close();
    }
    for (const d of this.dirs) d.remove();
  }
}

async function waitFor(what: string, f: () => boolean, step: () => Promise<void>, timeoutMs = 20000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!f()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await step();
  }
}

/** A network where node 1 leads every group: only node 1 ticks until it won them all. */
async function ledByNode1(): Promise<Net> {
  const net = new Net();
  await net.start();
  const d1 = net.node(1).driver;
  await waitFor("node 1 to lead every group", () => groups.every((g) => d1.status(g)?.role === StateRole.leader), async () => {
    d1.tick();
    await net.settle(2);
  });
  // Every follower knows the leader and every no-op entry is committed everywhere.
  const caughtUp = (id: number, g: number): boolean => {
    const st = net.node(id).driver.status(g);
    return st?.lead === 1 && st.commit === d1.status(g)?.commit;
  };
  await waitFor("followers to know node 1 and its commit", () => groups.every((g) => caughtUp(2, g) && caughtUp(3, g)), () => net.round());
  return net;
}

/** Runs a test body on a fresh network led by node 1, closed afterwards. */
async function withLedByNode1(body: (net: Net) => Promise<void>): Promise<void> {
  const net = await ledByNode1();
  try {
    await body(net);
  } finally {
    await net.close();
  }
}

const isBeats = (e: Envelope): boolean => e.kind === "beats";
const isRaftBeat = (e: Envelope): boolean => e.kind === "raft" && (e.message.type === MessageType.heartbeat || e.message.type === MessageType.heartbeatResp);
const itemsOf = (e: Envelope): BeatItem[] => (e.kind === "beats" ? e.items : []);

test("limits agree (checkReplicationConstants)", () => {
  checkReplicationConstants();
});

test("N groups led by one node: one beats envelope per follower per round, and one back; followers keep the leader", async () => {
  await withLedByNode1(async (net) => {
    const terms = groups.map((g) => net.node(1).driver.status(g)!.term);
    const since = net.sent.length;
    const rounds = 25; // more than the longest randomized election timeout (2 x raftElectionTicks)
    for (let i = 0; i < rounds; i++) await net.round();
    for (const f of [2, 3]) {
      assert.is(net.count(1, f, since, isBeats), rounds, `heartbeat envelopes 1 -> ${f}`);
      assert.is(net.count(f, 1, since, isBeats), rounds, `response envelopes ${f} -> 1`);
      assert.is(net.count(1, f, since, isRaftBeat) + net.count(f, 1, since, isRaftBeat), 0, "no heartbeat travels alone");
      for (const s of net.sent.slice(since).filter((s) => s.to === f && s.envelope.kind === "beats")) {
        assert.equal(itemsOf(s.envelope).map((i) => i[0]).sort((a, b) => a - b), groups, "every group's heartbeat, once");
        assert.ok(itemsOf(s.envelope).every((i) => i[1] === MessageType.heartbeat));
      }
      groups.forEach((g, i) => {
        const st = net.node(f).driver.status(g)!;
        assert.is(st.lead, 1, `node ${f} keeps node 1 as the leader of group ${g}`);
        assert.is(st.term, terms[i], `group ${g}: no election`);
      });
    }
    assert.equal([1, 2, 3].flatMap((id) => net.node(id).logs), []);
  });
});

test("the commit index reaches a follower on a heartbeat item when the commit-only append is lost", async () => {
  await withLedByNode1(async (net) => {
    const d1 = net.node(1).driver;
    const g = groups[3]!;
    // Node 3 gets appends with entries, but not the empty one that only carries the new commit index.
    net.drop = (s) => s.to === 3 && s.envelope.kind === "raft" && s.envelope.message.type === MessageType.app && s.envelope.message.entries.length === 0;
    await d1.proposeData(g, encodeWrite(0, [Buffer.alloc(4096, 0x5a)], 4096));
    await net.settle();
    const commit = d1.status(g)!.commit;
    assert.is(net.node(3).driver.status(g)!.lastIndex, commit, "node 3 holds the entry");
    assert.is(net.node(3).driver.status(g)!.commit, commit - 1, "but does not know it is committed");
    await net.round();
    assert.is(net.node(3).driver.status(g)!.commit, commit, "the heartbeat told it");
    assert.is(net.node(2).driver.status(g)!.commit, commit);
  });
});

test("ReadIndex rounds of every group go out as one envelope per follower and are confirmed", async () => {
  await withLedByNode1(async (net) => {
    const d1 = net.node(1).driver;
    const since = net.sent.length;
    await Promise.all(groups.map((g) => d1.readBarrier(g)));
    for (const f of [2, 3]) {
      assert.is(net.count(1, f, since, isBeats), 1, `one envelope 1 -> ${f} for ${groupCount} read rounds`);
      const out = net.sent.slice(since).find((s) => s.from === 1 && s.to === f)!;
      assert.is(itemsOf(out.envelope).length, groupCount);
      assert.ok(itemsOf(out.envelope).every((i) => i[4] !== null && i[4].length === 8), "each carries its round's context");
    }
    const back = net.sent.slice(since).filter((s) => s.to === 1 && s.envelope.kind === "beats");
    assert.ok(back.length >= 1 && back.length <= 2, `responses: one envelope from each follower at most (${back.length})`);
    assert.ok(itemsOf(back[0]!.envelope).every((i) => i[1] === MessageType.heartbeatResp && i[3] === 0 && i[4] !== null), "responses echo the context");
  });
});

test("malformed envelopes are dropped whole with a log line, never thrown; unknown groups are ignored", async () => {
  await withLedByNode1(async (net) => {
    const d2 = net.node(2).driver;
    const logs = net.node(2).logs;
    const g = groups[0]!;
    const term = d2.status(g)!.term;
    const commit = d2.status(g)!.commit;
    // Each would move group g to a higher term if any item of it were stepped.
    const bump: BeatItem = [g, MessageType.heartbeat, term + 5, commit, null];
    const bad: [string, unknown][] = [
      ["not an object", null],
      ["no items", { kind: "beats" }],
      ["items not an array", { kind: "beats", items: "x" }],
      ["no item", { kind: "beats", items: [] }],
      ["too many items", { kind: "beats", items: Array.from({ length: peerBeatsMax + 1 }, () => bump) }],
      ["item not an array", { kind: "beats", items: [bump, { group: g }] }],
      ["item of 4", { kind: "beats", items: [bump, [g, 8, term, 0]] }],
      ["negative group", { kind: "beats", items: [bump, [-1, 8, term, 0, null]] }],
      ["fractional group", { kind: "beats", items: [bump, [1.5, 8, term, 0, null]] }],
      ["group as string", { kind: "beats", items: [bump, ["1", 8, term, 0, null]] }],
      ["type of an append", { kind: "beats", items: [bump, [g, MessageType.app, term, 0, null]] }],
      ["term 0", { kind: "beats", items: [bump, [g, 8, 0, 0, null]] }],
      ["term past 2^53", { kind: "beats", items: [bump, [g, 8, 2 ** 64, 0, null]] }],
      ["term as bigint", { kind: "beats", items: [bump, [g, 8, 2n ** 63n, 0, null]] }],
      ["term NaN", { kind: "beats", items: [bump, [g, 8, NaN, 0, null]] }],
      ["negative commit", { kind: "beats", items: [bump, [g, 8, term, -1, null]] }],
      ["commit Infinity", { kind: "beats", items: [bump, [g, 8, term, Infinity, null]] }],
      ["response with a commit", { kind: "beats", items: [bump, [g, MessageType.heartbeatResp, term, 3, null]] }],
      ["context as string", { kind: "beats", items: [bump, [g, 8, term, 0, "abc"]] }],
      ["context too long", { kind: "beats", items: [bump, [g, 8, term, 0, new Uint8Array(peerBeatContextBytesMax + 1)]] }],
    ];
    for (const [what, envelope] of bad) {
      const wire = decodeMessage(encodeMessage(envelope)); // as the transport hands it over
      const before = logs.length;
      try {
        d2.receiveBeats(1, wire);
      } catch (e) {
        assert.unreachable(`${what}: threw ${(e as Error).message}`);
      }
      assert.is(logs.length, before + 1, `${what}: one log line`);
      assert.match(logs[logs.length - 1]!, /^replication: dropped a heartbeat envelope from node 1: /, what);
    }
    await net.settle();
    assert.is(d2.status(g)!.term, term, "no item of a malformed envelope was stepped");
    assert.ok(!logs.some((l) => l.includes("abc")), "a peer's strings are not echoed into the log");

    // Well-formed: an item for a group node 2 does not host is ignored, the rest is stepped.
    const logged = logs.length;
    d2.receiveBeats(1, decodeMessage(encodeMessage({ kind: "beats", items: [[999, 8, term, 0, null], [g, 8, term, commit, null]] })));
    await net.settle();
    assert.is(logs.length, logged);
    assert.is(d2.status(g)!.lead, 1);
  });
});

test("items keep exactly what the core reads and rebuild the same messages", () => {
  const hb = newMessage(MessageType.heartbeat, 1, 2, 7);
  hb.commit = 41;
  hb.context = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]);
  const resp = newMessage(MessageType.heartbeatResp, 1, 2, 9);
  const wire = decodeMessage(encodeMessage({ kind: "beats", items: [beatItem(5, hb), beatItem(0, resp)] }));
  const beats = parseBeats(wire, 1, 2);
  assert.ok(typeof beats !== "string", String(beats));
  assert.equal(beats.map((b) => b.group), [5, 0]);
  assert.equal({ ...beats[0]!.message, context: [...beats[0]!.message.context!] }, { ...hb, context: [1, 2, 3, 4, 5, 6, 7, 8] });
  assert.equal(beats[1]!.message, resp);
  const app = newMessage(MessageType.app, 1, 2, 7);
  assert.throws(() => beatItem(5, app), /not a heartbeat/);
  const odd = newMessage(MessageType.heartbeat, 1, 2, 7);
  odd.index = 3;
  assert.throws(() => beatItem(5, odd), /only term, commit and context/);
});

test("outbox: a full envelope goes at once, the rest on flush; a failed send reports every group in it once", () => {
  const sends: { to: number; items: BeatItem[] }[] = [];
  const unreachable: { to: number; groups: readonly number[] }[] = [];
  let accept = true;
  const box = new BeatsOutbox({
    send: (to, e) => (sends.push({ to, items: e.items }), accept),
    unreachable: (to, groups) => unreachable.push({ to, groups }),
  });
  const hb = (to: number): ReturnType<typeof newMessage> => newMessage(MessageType.heartbeat, 1, to, 3);
  for (let i = 0; i <= peerBeatsMax; i++) box.add(i % 7, hb(2));
  box.add(1, hb(3));
  assert.equal(sends.map((s) => [s.to, s.items.length]), [[2, peerBeatsMax]], "the full one left at once");
  box.flush();
  assert.equal(sends.map((s) => [s.to, s.items.length]), [[2, peerBeatsMax], [2, 1], [3, 1]]);
  box.flush();
  assert.is(sends.length, 3, "nothing twice");
  accept = false;
  box.add(4, hb(2));
  box.add(5, hb(2));
  box.add(4, hb(2));
  box.flush();
  assert.equal(unreachable, [{ to: 2, groups: [4, 5] }]);
});

test.run();
