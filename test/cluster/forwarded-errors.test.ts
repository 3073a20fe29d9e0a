// Errors keep their kind across forwarding: a client of any node gets the
// NBD errno of what went wrong where the request was served, not a generic
// EIO. node1's data dir is a real 512 MiB tmpfs, filled by another file, so
// its store runs out of room for a log segment (it stops taking writes):
//   * "solo" (one replica, on node1), written from node3, which forwards to
//     node1: NBD_ENOSPC at once; from node1 itself too; reads still work;
//   * "pair" (two replicas, node1 leads), written from its other replica,
//     a follower: node1's group stops, no other replica can take the write
//     (no quorum), and at the deadline the client gets NBD_ENOSPC, the reason
//     node1 gave, not the EIO of "no leader";
//   * "gone", deleted while a client on node3 still has it open (node3's API
//     port is cut by an nftables rule, so the delete's disconnect does not
//     reach it): NBD_ESHUTDOWN, the errno of "no such volume".
// Needs root (mount, nft).

import { test } from "uvu";
import * as assert from "uvu/assert";
import { mkdirSync } from "node:fs";
import { startCluster, waitUntil, type Cluster } from "../helpers/cluster.js";
import { CMD, ERR, RawClient } from "../helpers/nbd-raw-client.js";
import { run, runOk } from "../helpers/run.js";
import { fillFilesystem } from "../helpers/tmp.js";

const MiB = 1024 * 1024;
/** VolumeIo's deadline for a request without a leader (src/daemon/daemon.ts forwardDeadlineMs), with room to spare. */
const deadlineWaitMs = 30_000;
let c: Cluster;
let filler = "";

async function client(node: number, volume: string): Promise<RawClient> {
  const n = c.nodes[node]!;
  const r = await RawClient.connect(n.nbdPort, n.host);
  await r.go(volume);
  return r;
}

/** WRITE of `bytes` at `offset`; the reply's errno (waiting up to timeoutMs for it). */
async function write(r: RawClient, offset: number, bytes: number, timeoutMs = 10_000): Promise<number> {
  r.sendRequest(CMD.WRITE, 0, BigInt(offset + 1), offset, bytes, Buffer.alloc(bytes, 0x5a));
  const reply = await r.readReply(0, timeoutMs);
  assert.is(reply.cookie, BigInt(offset + 1));
  return reply.errno;
}

const index = (name: string): number => Number(/^node(\d+)$/.exec(name)?.[1] ?? "0") - 1;

test.before(async () => {
  c = await startCluster(3, [], {
    async prepare(i, dir) {
      if (i !== 0) return;
      mkdirSync(dir, { recursive: true });
      await runOk("mount", ["-t", "tmpfs", "-o", "size=512m", "tmpfs", dir]);
      filler = `${dir}/filler`;
      return async () => void (await run("umount", ["-l", dir]));
    },
  });
});

test.after(async () => {
  await c?.dispose();
});

test("no such volume: a client of a deleted volume gets NBD_ESHUTDOWN", async () => {
  await c.nodes[1]!.api.createVolume({ name: "gone", sizeBytes: 16 * MiB, nodes: ["node2"] });
  const r = await client(2, "gone");
  // node3's API does not answer while the rule drops what is sent to it: the forced delete goes ahead without its disconnect.
  const table = `pxdtest_api_${c.nodes[2]!.host.replace(/\./g, "_")}`;
  await run("nft", ["delete", "table", "inet", table]);
  try {
    assert.is(await write(r, 0, 4096), 0);
    await runOk("nft", ["add", "table", "inet", table]);
    await runOk("nft", ["add", "chain", "inet", table, "output", "{ type filter hook output priority 0 ; policy accept ; }"]);
    await runOk("nft", ["add", "rule", "inet", table, "output", "ip", "daddr", c.nodes[2]!.host, "tcp", "dport", "9001", "drop"]);
    await c.nodes[0]!.api.deleteVolume("gone", { force: true });
    await run("nft", ["delete", "table", "inet", table]);
    await waitUntil("node3's catalog to drop gone", async () => (await c.nodes[2]!.api.listVolumes()).every((v) => v.name !== "gone"));
    assert.is(await write(r, 4096, 4096, deadlineWaitMs), ERR.ESHUTDOWN);
  } finally {
    await run("nft", ["delete", "table", "inet", table]);
    r.destroy();
  }
});

test("ENOSPC from the node that holds the only replica reaches a client of another node as NBD_ENOSPC", async () => {
  await c.nodes[1]!.api.createVolume({ name: "solo", sizeBytes: 256 * MiB, nodes: ["node1"] });
  await c.nodes[1]!.api.createVolume({ name: "pair", sizeBytes: 16 * MiB, nodes: ["node1"] });
  await c.nodes[1]!.api.updateVolume("pair", { repl: 2 });
  const pair = await waitUntil("pair's two replicas in sync", async () => {
    const v = await c.nodes[0]!.api.inspectVolume("pair");
    return v.replicas.length === 2 && v.replicas.every((x) => x.state === "in-sync") ? v : undefined;
  }, 60_000);
  assert.ok(pair.replicas.find((x) => x.leader)?.node === "node1", "node1 still leads pair after it gained a replica");

  assert.ok(fillFilesystem(filler) > 0, "the filler took what was left of node1's tmpfs");
  const remote = await client(2, "solo");
  const local = await client(0, "solo");
  try {
    // Each write goes through node3 to node1; the log's current and spare segments take the first ones.
    let errno = 0;
    let offset = 0;
    for (; errno === 0 && offset < 256 * MiB; offset += MiB) errno = await write(remote, offset, MiB);
    console.log(`solo: the write at ${offset / MiB - 1} MiB failed with errno ${errno}`);
    assert.is(errno, ERR.ENOSPC, "node3's client gets node1's ENOSPC");
    assert.is(await write(remote, 0, 4096), ERR.ENOSPC, "and so does its next write");
    assert.is(await write(local, 0, 4096), ERR.ENOSPC, "node1's own client gets it too");
    assert.equal(await remote.readAt(0, 4096), Buffer.alloc(4096, 0x5a), "what was written before is still read");
  } finally {
    remote.destroy();
    local.destroy();
  }

  // pair's leader is node1, whose store stopped: a write from its follower finds no replica to take it.
  const follower = index(pair.replicas.find((x) => !x.leader)!.node);
  const r = await client(follower, "pair");
  try {
    const started = Date.now();
    assert.is(await write(r, 0, 4096, deadlineWaitMs), ERR.ENOSPC, "the follower's client gets the leader's ENOSPC, not EIO");
    console.log(`pair: a write on node${follower + 1} failed with ENOSPC after ${Date.now() - started} ms`);
    assert.is(await write(r, 4096, 4096, deadlineWaitMs), ERR.ENOSPC, "and so does the next one");
  } finally {
    r.destroy();
  }
  const status = await c.nodes[0]!.api.status();
  assert.match(status.reasons.join("\n"), /^the store stopped taking writes \(cannot start log segment \d+: ENOSPC/m);
});

test.run();
