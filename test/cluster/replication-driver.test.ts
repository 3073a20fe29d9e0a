// Three replicas of a volume group, each with its own store (real files), its
// own multi-raft driver and a real authenticated peer transport on
// 127.0.0.11-13: writes through the leader reach every store, a killed leader
// is replaced and nothing acknowledged is lost, a restarted node catches up
// from its own log, and reads are refused off the leader.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { Prng } from "../../src/base/prng.js";
import { startPeerTransport } from "../../src/os/peer-listener.js";
import { NodeDisk, deferImmediate } from "../../src/os/node-disk.js";
import { dispatchPeerMessage } from "../../src/replication/dispatch.js";
import { MultiRaft, NotLeaderError } from "../../src/replication/driver.js";
import { Repairer } from "../../src/replication/repair.js";
import { VolumeIo } from "../../src/replication/volume-io.js";
import { StateRole } from "../../src/raft/types.js";
import { Store } from "../../src/store/store.js";
import { crashReplica, waitFor, type Replica } from "../helpers/replica.js";
import { tempDir } from "../helpers/tmp.js";
import { encodeWrite } from "../../src/replication/volume-op.js";
import { VolumeReplica } from "../../src/replication/volume-replica.js";

const group = 7;
const volume = { groupId: group, sizeBytes: 16 * 1024 * 1024 };
const secret = Buffer.from("test-cluster-secret-0123456789");
const tickMs = 20;

const silent = { info: () => {}, warn: () => {}, error: (m: string) => console.error(m) };

async function startReplica(r: Replica, all: Replica[]): Promise<void> {
  r.store = await Store.open({ disk: new NodeDisk(r.dir), defer: deferImmediate }, [volume]);
  r.peer = await startPeerTransport({ nodeId: r.id, clusterId: "test", secret, host: r.host, port: r.port, log: silent });
  r.port = r.peer.address.port;
  const prng = new Prng(r.id * 7919);
  r.driver = new MultiRaft({
    nodeId: r.id,
    store: r.store,
    send: (to, env) => r.peer!.transport.send(to, env),
    defer: deferImmediate,
    random: { int: (n) => prng.int(n) },
    log: (l) => console.error(`node ${r.id}: ${l}`),
  });
  const driver = r.driver;
  const peer = r.peer;
  const after = (ms: number, fn: () => void): (() => void) => {
    const t = setTimeout(fn, ms);
    return () => clearTimeout(t);
  };
  const repairer = new Repairer({
    nodeId: r.id,
    store: r.store,
    send: (to, m) => peer.transport.send(to, m),
    replicasOf: () => all.map((x) => x.id),
    nameOf: () => "v",
    after,
    now: () => performance.now(),
    log: (l) => console.error(`node ${r.id}: ${l}`),
  });
  const io = new VolumeIo({
    nodeId: r.id,
    driver,
    store: r.store,
    repairer,
    send: (to, m) => peer.transport.send(to, m),
    after,
    now: () => performance.now(),
    random: { int: (n) => prng.int(n) },
    deadlineMs: 5000,
    replicasOf: () => all.map((x) => x.id),
    cipherOf: () => null,
  });
  r.io = io;
  peer.transport.onMessage((from, m) => dispatchPeerMessage({ driver, io, repairer }, from, m));
  driver.addGroup(group, all.map((x) => x.id), new VolumeReplica(r.store!, group));
  r.timer = setInterval(() => driver.tick(), tickMs);
}

function connect(all: Replica[]): void {
  for (const r of all) r.peer?.transport.setPeers(all.filter((x) => x.peer).map((x) => ({ id: x.id, host: x.host, port: x.port })));
}

const crash = crashReplica;

function leaderOf(all: Replica[]): Replica | undefined {
  return all.find((r) => r.driver?.status(group)?.role === StateRole.leader);
}

/** Writes through whoever leads, retrying on a leader change as a client would. */
async function writeVia(all: Replica[], offset: number, data: Buffer): Promise<void> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const l = await waitFor("a leader", () => leaderOf(all));
    try {
      await l.driver!.proposeData(group, encodeWrite(offset, [data], data.length));
      return;
    } catch (e) {
      if (!(e instanceof NotLeaderError) && (e as Error).name !== "ProposalDroppedError") throw e;
      await new Promise((res) => setTimeout(res, 50));
    }
  }
  throw new Error("no leader took the write");
}

function sameOnAll(all: Replica[], model: Map<number, Buffer>): boolean {
  return all.every((r) => r.store !== undefined && [...model].every(([off, d]) => r.store!.read(group, off, d.length).equals(d)));
}

test("writes through the leader reach every replica; a crashed leader is replaced and catches up on restart", async () => {
  const dirs = [tempDir("r1"), tempDir("r2"), tempDir("r3")];
  const all: Replica[] = [11, 12, 13].map((n, i) => ({ id: i + 1, host: `127.0.0.${n}`, dir: dirs[i]!.dir, port: 0 }));
  try {
    for (const r of all) await startReplica(r, all);
    connect(all);
    const prng = new Prng(1);
    const model = new Map<number, Buffer>();
    const burst = async (n: number): Promise<void> => {
      const writes: Promise<void>[] = [];
      for (let i = 0; i < n; i++) {
        const offset = prng.int(4096) * 4096;
        const data = Buffer.alloc(4096);
        prng.fill(data);
        model.set(offset, data);
        writes.push(writeVia(all, offset, data));
        if (i % 16 === 15) await Promise.all(writes.splice(0)); // no two writes to one block in flight
      }
      await Promise.all(writes);
    };
    await burst(200);
    await waitFor("every replica to apply every write", () => sameOnAll(all, model));

    const first = leaderOf(all)!;
    const follower = all.find((r) => r !== first)!;
    await first.driver!.readBarrier(group);
    try {
      await follower.driver!.readBarrier(group);
      assert.unreachable("a follower must not serve reads");
    } catch (e) {
      assert.instance(e, NotLeaderError);
    }

    await crash(first);
    const survivors = all.filter((r) => r !== first);
    const second = await waitFor("a new leader among the survivors", () => leaderOf(survivors));
    assert.is.not(second.id, first.id);
    await burst(100);
    assert.ok(sameOnAll(survivors.filter((r) => r === second), model), "the new leader has every acknowledged write");

    first.port = 0;
    await startReplica(first, all);
    connect(all);
    await waitFor("the restarted node to catch up", () => sameOnAll(all, model), 15000);
    const st = first.driver!.status(group)!;
    assert.ok(st.applied >= 300, `the restarted node applied the whole log (${st.applied})`);
  } finally {
    for (const r of all) await crash(r);
    for (const d of dirs) d.remove();
  }
});

test("any node serves the volume: reads and writes on a follower are forwarded, across a leader crash", async () => {
  const dirs = [tempDir("f1"), tempDir("f2"), tempDir("f3")];
  const all: Replica[] = [11, 12, 13].map((n, i) => ({ id: i + 1, host: `127.0.0.${n}`, dir: dirs[i]!.dir, port: 0 }));
  try {
    for (const r of all) await startReplica(r, all);
    connect(all);
    const leader = await waitFor("a leader", () => leaderOf(all));
    const followers = all.filter((r) => r !== leader);
    const f = followers[0]!;
    const data = Buffer.alloc(64 * 1024);
    new Prng(3).fill(data);
    await f.io!.write(group, 1024 * 1024, [data.subarray(0, 1000), data.subarray(1000)], data.length);
    assert.ok((await f.io!.read(group, 1024 * 1024, data.length)).equals(data), "a follower reads its own forwarded write");
    const odd = Buffer.from("unaligned bytes in the middle of a sector");
    await f.io!.write(group, 1024 * 1024 + 100, [odd], odd.length);
    const expect = Buffer.from(data);
    odd.copy(expect, 100);
    assert.ok((await followers[1]!.io!.read(group, 1024 * 1024, data.length)).equals(expect), "the other follower sees it too");
    await f.io!.writeZeroes(group, 1024 * 1024 + 4096, 8192, false);
    expect.fill(0, 4096, 4096 + 8192);
    assert.ok((await leader.io!.read(group, 1024 * 1024, data.length)).equals(expect));
    const status = await f.io!.blockStatus(group, 0, 4 * 1024 * 1024);
    assert.ok(status.some((e) => !e.hole) && status.some((e) => e.hole));

    // The leader dies while a follower keeps writing through the cluster.
    const survivor = followers[1]!;
    const writes: Promise<void>[] = [];
    const model = new Map<number, Buffer>();
    for (let i = 0; i < 60; i++) {
      const b = Buffer.alloc(4096, i + 1);
      model.set(8 * 1024 * 1024 + i * 4096, b);
      writes.push(survivor.io!.write(group, 8 * 1024 * 1024 + i * 4096, [b], 4096));
      if (i === 20) await crash(leader);
    }
    await Promise.all(writes);
    for (const [off, b] of model) assert.ok((await survivor.io!.read(group, off, 4096)).equals(b), `block at ${off}`);
  } finally {
    for (const r of all) await crash(r);
    for (const d of dirs) d.remove();
  }
});

test.run();
