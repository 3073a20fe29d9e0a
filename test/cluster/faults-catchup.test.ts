// Delta catch-up: a follower that was down for a short time gets only what it
// missed. The volume is large (512 MiB) and a good part of it is written
// before the follower stops, so a full copy would stand out in the peer byte
// counters (GET /metrics: pxd_peer_sent_bytes_total{peer="<node id>"}): the bytes
// the other nodes send it while it catches up must be close to what was
// written while it was away, and far below what the volume holds.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { randomBytes } from "node:crypto";
import { startCluster, waitUntil, type Cluster } from "../helpers/cluster.js";
import { NbdTarget } from "../helpers/checker.js";
import type { DaemonProcess } from "../helpers/daemon.js";

const MiB = 1024 * 1024;
let c: Cluster;

test.before(async () => {
  c = await startCluster(3);
});

test.after(async () => {
  await c.dispose();
});

/** Writes `mib` MiB in 1 MiB requests, `depth` at a time, from MiB `firstMiB` on; returns the data by MiB index. */
async function fill(node: DaemonProcess, volume: string, firstMiB: number, mib: number, depth = 8): Promise<Map<number, Buffer>> {
  const t = new NbdTarget(node.host, node.nbdPort, volume, MiB, 60000);
  const written = new Map<number, Buffer>();
  let next = firstMiB;
  try {
    await Promise.all(
      Array.from({ length: depth }, async () => {
        while (next < firstMiB + mib) {
          const i = next++;
          const data = randomBytes(MiB);
          await t.write(i, data);
          written.set(i, data);
        }
      }),
    );
  } finally {
    t.close();
  }
  return written;
}

/** Sum over `from` of the bytes each has sent to node `to` (by node id), from /metrics. */
async function bytesSentTo(from: DaemonProcess[], toId: number): Promise<number> {
  let sum = 0;
  for (const n of from) {
    const m = new RegExp(`^pxd_peer_sent_bytes_total\\{peer="${toId}"\\} (\\d+)$`, "m").exec(await n.api.metrics());
    sum += Number(m?.[1] ?? 0);
  }
  return sum;
}

for (const how of ["SIGTERM", "SIGKILL"] as const)
test(`a follower down (${how}) for a short time catches up with about the bytes it missed, not the volume`, async () => {
  const name = `cu-${how}`;
  const volumeBytes = 512 * MiB;
  const preMiB = 160;
  const missedMiB = 16;
  await c.nodes[0]!.api.createVolume({ name, sizeBytes: volumeBytes, repl: 3 });
  const leader = await c.leaderOf(name);
  const fi = (leader + 1) % 3;
  const follower = c.nodes[fi]!;
  const rest = c.nodes.filter((_, i) => i !== fi);
  const fid = (await c.nodes[leader]!.api.status()).nodes.find((n) => n.name === `node${fi + 1}`)!.id;

  let t0 = Date.now();
  await fill(c.nodes[leader]!, name, 0, preMiB);
  console.log(`pre-wrote ${preMiB} MiB of the ${volumeBytes / MiB} MiB volume in ${Date.now() - t0} ms`);
  const inSync = async (): Promise<boolean> => {
    const info = await c.nodes[leader]!.api.inspectVolume(name);
    return info.replicas.every((r) => r.state === "in-sync") && info.replicas.find((r) => r.leader)?.node === `node${leader + 1}`;
  };
  await waitUntil("every replica in sync before the follower stops", inSync, 30000);

  if (how === "SIGTERM") assert.is(await follower.stop(), 0, "orderly stop");
  else await follower.kill();
  await waitUntil("the leader sees the follower down", async () => (await c.nodes[leader]!.api.inspectVolume(name)).replicas.find((r) => r.nodeId === fid)?.state === "down", 20000);
  t0 = Date.now();
  const missed = await fill(c.nodes[leader]!, name, preMiB + 32, missedMiB);
  console.log(`wrote ${missedMiB} MiB while node ${fi + 1} was down, in ${Date.now() - t0} ms`);
  const before = await bytesSentTo(rest, fid);

  t0 = Date.now();
  await follower.start();
  await waitUntil("the follower back in sync", inSync, 60000);
  await c.healthy();
  const sent = (await bytesSentTo(rest, fid)) - before;
  console.log(`node ${fi + 1} caught up in ${Date.now() - t0} ms; ${(sent / MiB).toFixed(2)} MiB sent to it for ${missedMiB} MiB missed (the volume holds ${preMiB + missedMiB} MiB)`);
  assert.ok(sent >= 0.8 * missedMiB * MiB, `at least the missed writes were sent (${sent} bytes)`);
  assert.ok(sent <= 3 * missedMiB * MiB + 4 * MiB, `only about the missed writes were sent, not a full copy (${sent} bytes for ${missedMiB} MiB missed, ${preMiB + missedMiB} MiB in the volume)`);

  // The data is all there, read through the node that was away.
  const r = new NbdTarget(follower.host, follower.nbdPort, name, MiB, 60000);
  try {
    for (const [i, data] of missed) assert.ok((await r.read(i)).equals(data), `MiB ${i} written while the follower was away`);
  } finally {
    r.close();
  }
});

test.run();
