// Snapshots: a follower that was down while more than the leader's log
// retention (--log-retain) was written comes back behind the compaction
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

test("a follower behind the compaction point gets what changed while it was away, installs it, and ends with the same bytes and holes", async () => {
  const name = "snap";
  const sizeBytes = 64 * MiB;
  const v = await c.nodes[0]!.api.createVolume({ name, sizeBytes, repl: 3 });
  const leader = await c.leaderOf(name);
  const fi = (leader + 1) % 3;
  const follower = c.nodes[fi]!;
  const fid = v.replicas.find((r) => r.node === `node${fi + 1}`)!.nodeId;
  const inSync = async (): Promise<boolean> => (await c.nodes[leader]!.api.inspectVolume(name)).replicas.every((r) => r.state === "in-sync");

  await fill(c.nodes[leader]!, name, 0, 8);
  await waitUntil("every replica in sync", inSync, 30000);
  const heldAt = (await c.nodes[leader]!.api.inspectVolume(name)).log!.lastIndex;
  await follower.kill();
  await waitUntil("the leader sees the follower down", async () => (await c.nodes[leader]!.api.inspectVolume(name)).replicas.find((r) => r.nodeId === fid)?.state === "down", 20000);

  // Far more than --log-retain 2M while it is away, a MiB of what it had rewritten, and a hole punched in what it had.
  await fill(c.nodes[leader]!, name, 16, 24);
  await fill(c.nodes[leader]!, name, 5, 1);
  await runOk("qemu-io", ["-f", "raw", c.nodes[leader]!.uri(name), "-c", "discard 2M 2M"]);
  // Past --log-retain the leader compacts without the follower (every 2 s): its log no longer reaches back to what the follower has.
  await waitUntil("the leader's log compacted past the follower", async () => (await c.nodes[leader]!.api.inspectVolume(name)).log!.firstIndex > heldAt + 1, 20000);
  const sentBefore = await metric(c.nodes[leader]!, "pxd_raft_snapshot_bytes_sent");
  const keptBefore = await metric(c.nodes[leader]!, "pxd_raft_snapshot_bytes_kept");

  await follower.start();
  await waitUntil("the follower back in sync", inSync, 60000);
  const started = await metric(c.nodes[leader]!, "pxd_raft_snapshots_started");
  const bytes = (await metric(c.nodes[leader]!, "pxd_raft_snapshot_bytes_sent")) - sentBefore;
  const kept = (await metric(c.nodes[leader]!, "pxd_raft_snapshot_bytes_kept")) - keptBefore;
  const deltas = await metric(c.nodes[leader]!, "pxd_raft_snapshot_deltas");
  const installed = await metric(follower, "pxd_store_snapshots_installed");
  console.log(
    `follower node ${fi + 1}: ${started} snapshot(s) started (${deltas} deltas), ${(bytes / MiB).toFixed(2)} MiB of volume data sent, ${(kept / MiB).toFixed(2)} MiB kept from its own copy, ${installed} installed`,
  );
  assert.ok(started >= 1 && installed >= 1, "the follower came back through a snapshot, not the log");
  assert.ok(deltas >= 1, "the leader sent what changed, not a full copy");
  if (started === 1) {
    assert.is(bytes, 25 * MiB, "sent: the 24 MiB written while it was away and the rewritten MiB, not the 30 MiB the volume holds");
    assert.is(kept, 5 * MiB, "kept: what it held, less the rewritten MiB and the discarded 2 MiB");
  } else assert.ok(bytes >= 25 * MiB, `a stream was given up and sent again (${started} streams, ${bytes} bytes)`);

  // Replication goes on after the snapshot.
  await fill(c.nodes[leader]!, name, 48, 2);
  await waitUntil("in sync after more writes", inSync, 30000);
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
});

test.run();
