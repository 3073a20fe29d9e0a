// Snapshots: a follower, or the leader, that was down while more than the
// log retention (--log-retain) was written comes back behind the compaction
// point. The leader streams it what changed since it left (a Raft snapshot
// as a delta: the rest the follower copies from its own replica), it installs
// the copy atomically, and replication goes on from there. The bytes sent are
// what it missed, not the volume. The proof is offline: after an orderly
// stop, each node's store is opened here and the replicas must hold the same
// bytes and the same holes.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { createHash, randomBytes } from "node:crypto";
import { join } from "node:path";
import { NodeDisk, deferImmediate } from "../../src/os/node-disk.js";
import { Store } from "../../src/store/store.js";
import { startCluster, waitUntil, type Cluster } from "../helpers/cluster.js";
import { NbdTarget } from "../helpers/checker.js";
import type { DaemonProcess } from "../helpers/daemon.js";
import { runOk } from "../helpers/run.js";

const MiB = 1024 * 1024;
let c: Cluster;

test.before(async () => {
  c = await startCluster(3, ["--log-retain", "2M"]);
});

test.after(async () => {
  await c.dispose();
});

async function fill(node: DaemonProcess, volume: string, firstMiB: number, mib: number): Promise<void> {
  const t = new NbdTarget(node.host, node.nbdPort, volume, MiB, 60000);
  try {
    for (let i = firstMiB; i < firstMiB + mib; i += 4) {
      await Promise.all([0, 1, 2, 3].filter((k) => i + k < firstMiB + mib).map((k) => t.write(i + k, randomBytes(MiB))));
    }
  } finally {
    t.close();
  }
}

async function metric(node: DaemonProcess, name: string): Promise<number> {
  const m = new RegExp(`^${name} (\\d+)$`, "m").exec(await node.api.metrics());
  return Number(m?.[1] ?? 0);
}

/** The replica as its store on disk holds it: a hash of the bytes, the allocated bytes and the applied index. */
async function replicaImage(dataDir: string, groupId: number, sizeBytes: number): Promise<{ hash: string; allocated: number; applied: number }> {
  const store = await Store.open({ disk: new NodeDisk(join(dataDir, "store")), defer: deferImmediate }, [{ groupId: 0, sizeBytes: 0 }, { groupId, sizeBytes }]);
  try {
    const h = createHash("sha256");
    for (let at = 0; at < sizeBytes; at += MiB) h.update(store.read(groupId, at, MiB));
    return { hash: h.digest("hex"), allocated: store.allocatedBytes(groupId), applied: store.raftState(groupId).appliedIndex };
  } finally {
    await store.close();
  }
}

/**
 * The scenario both tests run on volume `name` (64 MiB, repl 3): 8 MiB written
 * and compacted on every node, then node `away` is SIGKILLed. Through the
 * leader of the other two, 24 MiB more are written (far past --log-retain
 * 2M), 1 MiB of what `away` held is rewritten and 2 MiB of it discarded,
 * until that leader's log is compacted past `away`'s. Then `away` returns:
 * it must come back through a delta (exactly the 25 MiB that changed sent,
 * 5 MiB kept), keep replicating, and, after an orderly stop, the three stores
 * must hold the same bytes and holes.
 */
async function awayAndBack(name: string, pick: (leader: number) => number): Promise<void> {
  const sizeBytes = 64 * MiB;
  const v = await c.nodes[0]!.api.createVolume({ name, sizeBytes, repl: 3 });
  const first = await c.leaderOf(name);
  const ai = pick(first);
  const away = c.nodes[ai]!;
  const aid = v.replicas.find((r) => r.node === `node${ai + 1}`)!.nodeId;
  const inSync = async (at: number): Promise<boolean> => (await c.nodes[at]!.api.inspectVolume(name)).replicas.every((r) => r.state === "in-sync");

  await fill(c.nodes[first]!, name, 0, 8);
  await waitUntil("every replica in sync", () => inSync(first), 30000);
  const heldAt = (await c.nodes[first]!.api.inspectVolume(name)).log!.lastIndex;
  // Compaction runs every 2 s up to what all three hold: let it pass the first writes once, on every node.
  // A new leader's change map starts at its own compaction point: one that had not compacted yet would rightly send everything.
  const compacted = async (at: number): Promise<boolean> => (await c.nodes[at]!.api.inspectVolume(name)).log!.firstIndex > heldAt;
  await waitUntil("the first writes compacted on every node", async () => (await Promise.all([0, 1, 2].map(compacted))).every(Boolean), 20000);
  await away.kill();
  const leader = ai === first ? await c.leaderAmong(name, c.others(ai)) : first;
  await waitUntil("the leader sees the member down", async () => (await c.nodes[leader]!.api.inspectVolume(name)).replicas.find((r) => r.nodeId === aid)?.state === "down", 20000);
  const counters = async (): Promise<number[]> =>
    Promise.all(["pxd_raft_snapshots_started_total", "pxd_raft_snapshot_deltas_total", "pxd_raft_snapshot_sent_bytes_total", "pxd_raft_snapshot_kept_bytes_total"].map((m) => metric(c.nodes[leader]!, m)));
  const before = await counters();

  // Far more than --log-retain 2M while it is away, a MiB of what it had rewritten, and a hole punched in what it had.
  await fill(c.nodes[leader]!, name, 16, 24);
  await fill(c.nodes[leader]!, name, 5, 1);
  await runOk("qemu-io", ["-f", "raw", c.nodes[leader]!.uri(name), "-c", "discard 2M 2M"]);
  // Past --log-retain the leader compacts without it (every 2 s): its log no longer reaches back to what the member has.
  await waitUntil("the leader's log compacted past the member", async () => (await c.nodes[leader]!.api.inspectVolume(name)).log!.firstIndex > heldAt + 1, 20000);

  await away.start();
  await waitUntil("the member back in sync", () => inSync(leader), 60000);
  const [started, deltas, bytes, kept] = (await counters()).map((x, i) => x - before[i]!) as [number, number, number, number];
  const installed = await metric(away, "pxd_store_snapshots_installed_total");
  console.log(
    `${name}: node ${ai + 1} back from node ${leader + 1}: ${started} snapshot(s) started (${deltas} deltas), ${(bytes / MiB).toFixed(2)} MiB of volume data sent, ${(kept / MiB).toFixed(2)} MiB kept from its own copy, ${installed} installed`,
  );
  assert.ok(started >= 1 && installed >= 1, "it came back through a snapshot, not the log");
  assert.ok(deltas >= 1, "the leader sent what changed, not a full copy");
  if (started === 1) {
    assert.is(bytes, 25 * MiB, "sent: the 24 MiB written while it was away and the rewritten MiB, not the 30 MiB the volume holds");
    assert.is(kept, 5 * MiB, "kept: what it held, less the rewritten MiB and the discarded 2 MiB");
  } else assert.ok(bytes >= 25 * MiB, `a stream was given up and sent again (${started} streams, ${bytes} bytes)`);

  // Replication goes on after the snapshot.
  await fill(c.nodes[leader]!, name, 48, 2);
  await waitUntil("in sync after more writes", () => inSync(leader), 30000);
  await new Promise((r) => setTimeout(r, 1000)); // followers learn the last commit index from a heartbeat

  for (const n of c.nodes) assert.is(await n.stop(), 0, `orderly stop of ${n.host}`);
  const images = [];
  for (const n of c.nodes) images.push(await replicaImage(n.dataDir, v.id, sizeBytes));
  console.log(images.map((im, i) => `node${i + 1}: applied ${im.applied}, ${(im.allocated / MiB).toFixed(1)} MiB allocated, ${im.hash.slice(0, 12)}`).join("; "));
  for (const im of images.slice(1)) {
    assert.is(im.applied, images[0]!.applied, "every replica applied the same log");
    assert.is(im.hash, images[0]!.hash, "every replica holds the same bytes");
    assert.is(im.allocated, images[0]!.allocated, "and the same holes");
  }
  assert.is(images[0]!.allocated, (8 - 2 + 24 + 2) * MiB, "the discarded range is a hole everywhere");
  for (const n of c.nodes) await n.start();
  await c.healthy();
}

test("a follower behind the compaction point gets what changed while it was away, installs it, and ends with the same bytes and holes", async () => {
  await awayAndBack("snap", (leader) => (leader + 1) % 3);
});

test("the leader is killed and comes back behind the compaction point: the new leader, which never saw it leave, sends what changed", async () => {
  // It restarts having applied only what its last checkpoint and persisted commit index say: it applies its own log up to the delta's base first.
  await awayAndBack("snapleader", (leader) => leader);
});

test.run();
