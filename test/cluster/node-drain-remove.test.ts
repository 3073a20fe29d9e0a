// pxd node drain and pxd node remove on a real three-node cluster: a drained
// node's replicas move to another node with every byte, and it then holds
// none; a node that is up is not removed; once down it leaves the catalog and
// the catalog's Raft group, and the two nodes left go on creating and serving
// volumes.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { startCluster, waitUntil, type Cluster } from "../helpers/cluster.js";
import { pxdEntry } from "../helpers/daemon.js";
import { run, runOk } from "../helpers/run.js";

const MiB = 1024 * 1024;
let c: Cluster;

test.before(async () => {
  c = await startCluster(3);
});

test.after(async () => {
  await c.dispose();
});

function cli(at: number, ...args: string[]): ReturnType<typeof run> {
  return run(process.execPath, [pxdEntry, "--host", `${c.nodes[at]!.host}:9001`, ...args]);
}

async function replicasInSync(at: number, name: string): Promise<string[] | undefined> {
  const v = await c.nodes[at]!.api.inspectVolume(name);
  if (v.replicas.some((r) => r.state !== "in-sync")) return undefined;
  return v.replicas.map((r) => r.node).sort();
}

test("pxd node drain moves the node's replicas to another node, with their data, and it then holds none", async () => {
  await c.nodes[0]!.api.createVolume({ name: "d", sizeBytes: 16 * MiB, nodes: ["node1", "node2"] });
  await runOk("qemu-io", ["-f", "raw", c.nodes[0]!.uri("d"), "-c", "write -P 0x5a 0 1M", "-c", "write -P 0x5b 15M 1M"]);
  const drained = await cli(2, "node", "drain", "node2");
  assert.is(drained.code, 0, drained.stderr);
  assert.match(drained.stdout, /node node2 is draining/);
  const nodes = await waitUntil("the replica on node2 to move to node3", async () => {
    const r = await replicasInSync(0, "d");
    return r?.join(",") === "node1,node3" ? r : undefined;
  }, 60000);
  assert.equal(nodes, ["node1", "node3"]);
  assert.ok((await c.nodes[0]!.api.listNodes()).find((n) => n.name === "node2")!.draining, "node2 stays draining");
  await waitUntil("node2 to drop its replica", async () => /group \d+: replica removed from this node/.test(c.nodes[1]!.output), 30000);
  // node3 is in sync: its log (or the copy it installed) reaches the leader's last entry. The volume, read through node3, has every byte.
  const read = await runOk("qemu-io", ["-f", "raw", c.nodes[2]!.uri("d"), "-c", "read -P 0x5a 0 1M", "-c", "read -P 0x5b 15M 1M", "-c", "read -P 0 1M 14M"]);
  assert.not.match(read, /fail/i);
  const undo = await cli(0, "node", "drain", "node2", "--undo");
  assert.match(undo.stdout, /node node2 is no longer draining/);
});

test("a node that is up is not removed; once down it leaves the catalog and the catalog's group, and the rest go on", async () => {
  const refused = await cli(0, "node", "remove", "node2");
  assert.is(refused.code, 1);
  assert.match(refused.stderr, /node \d+ \(node2\) is up; stop its daemon first/);
  assert.is(await c.nodes[1]!.stop(), 0);
  await waitUntil("the catalog to mark node2 down", async () => (await c.nodes[0]!.api.listNodes()).find((n) => n.name === "node2")?.catalogHealth === "down", 30000);
  const removed = await cli(2, "node", "remove", "node2");
  assert.is(removed.code, 0, removed.stderr);
  const left = await waitUntil("two nodes, both voters of the catalog's group", async () => {
    const n = await c.nodes[2]!.api.listNodes();
    return n.length === 2 && n.every((x) => x.metaVoter && x.health === "up") ? n : undefined;
  });
  assert.equal(left.map((n) => n.name).sort(), ["node1", "node3"]);
  const again = await cli(0, "node", "remove", "node2");
  assert.is(again.code, 1, "it is gone");
  assert.match(again.stderr, /no node named or numbered "node2"/);
  // The catalog's group commits with the two voters left: a new volume on both.
  await c.nodes[2]!.api.createVolume({ name: "after", sizeBytes: 8 * MiB, repl: 2 });
  const out = await runOk("qemu-io", ["-f", "raw", c.nodes[0]!.uri("after"), "-c", "write -P 0x61 0 64k", "-c", "read -P 0x61 0 64k"]);
  assert.not.match(out, /fail/i);
  for (const i of [0, 2]) assert.not.match(c.nodes[i]!.output, /uncaught|AssertionError/i);
});

test.run();
