// A real three-node cluster (daemon processes on 127.0.0.11-13): a volume with
// three replicas is written through one node's NBD export and read through
// another's; the leader is killed and the survivors keep serving; it comes
// back and catches up.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { startCluster, waitUntil, type Cluster } from "../helpers/cluster.js";
import { run, runOk } from "../helpers/run.js";
import { fileURLToPath } from "node:url";
import { freeSegmentsMax, segmentBytes } from "../../src/constants.js";

let c: Cluster;

test.before(async () => {
  c = await startCluster(3);
});

test.after(async () => {
  await c.dispose();
});

test("a repl-3 volume is written on one node and read on the others, through a leader crash", async () => {
  const v = await c.nodes[1]!.api.createVolume({ name: "r3", sizeBytes: 64 * 1024 * 1024, repl: 3 });
  assert.is(v.replicas.length, 3);
  assert.is(new Set(v.replicas.map((r) => r.nodeId)).size, 3, "three distinct nodes");
  await runOk("qemu-io", ["-f", "raw", c.nodes[0]!.uri("r3"), "-c", "write -P 0x61 0 2M", "-c", "write -P 0x62 5000 3000"]);
  for (const n of c.nodes) {
    const out = await runOk("qemu-io", ["-f", "raw", n.uri("r3"), "-c", "read -P 0x61 0 4096", "-c", "read -P 0x62 5000 3000", "-c", "read -P 0x61 1M 1M"]);
    assert.not.match(out, /fail/i, `read through ${n.host}`);
  }
  const leader = await c.leaderOf("r3");
  await c.nodes[leader]!.kill();
  const survivor = c.nodes[(leader + 1) % 3]!;
  await runOk("qemu-io", ["-f", "raw", survivor.uri("r3"), "-c", "write -P 0x63 4M 1M"]);
  const out = await runOk("qemu-io", ["-f", "raw", c.nodes[(leader + 2) % 3]!.uri("r3"), "-c", "read -P 0x63 4M 1M", "-c", "read -P 0x61 0 4096"]);
  assert.not.match(out, /fail/i);
  await c.nodes[leader]!.start();
  await c.healthy();
  const back = await runOk("qemu-io", ["-f", "raw", c.nodes[leader]!.uri("r3"), "-c", "read -P 0x63 4M 1M", "-c", "read -P 0x62 5000 3000"]);
  assert.not.match(back, /fail/i, "the restarted node serves what it missed");
});

test("rewriting a replicated volume keeps each node's disk bounded: logs are compacted and collected", async () => {
  await c.nodes[0]!.api.createVolume({ name: "churn", sizeBytes: 32 * 1024 * 1024, repl: 3 });
  const rewrites = 40;
  const commands: string[] = [];
  for (let i = 0; i < rewrites; i++) commands.push("-c", `write -P ${0x30 + i} 0 32M`);
  await runOk("qemu-io", ["-f", "raw", c.nodes[0]!.uri("churn"), ...commands], { timeoutMs: 240000 });
  const written = rewrites * 32 * 1024 * 1024;
  // The live 32 MiB, the head, a checkpoint's lag, a segment the meta group's
  // log pins, and the free files kept for reuse: well under what was written.
  const bound = (4 + freeSegmentsMax) * segmentBytes;
  assert.ok(bound < written / 2, "the bound means something");
  // A write is acknowledged once a quorum has it: the third node may still be receiving the tail.
  await waitUntil("every node to take the whole write load", async () => {
    for (const n of c.nodes) if ((await n.api.status()).store.logBytesAppended! < written) return false;
    return true;
  }, 60000);
  let stores = "";
  await waitUntil("every node's store to shrink after compaction and GC", async () => {
    const all = await Promise.all(c.nodes.map(async (n) => (await n.api.status()).store));
    stores = all.map((st, i) => `${c.nodes[i]!.host}: ${JSON.stringify(st)}`).join("\n");
    return all.every((st) => st.diskBytes! <= bound);
  }, 60000).catch((e: Error) => {
    throw new Error(`${e.message}; bound ${bound} bytes; stores:\n${stores}`);
  });
  for (const n of c.nodes) assert.ok((await n.api.status()).store.gcSegments! > 0, `node ${n.host} collected segments`);
  const out = await runOk("qemu-io", ["-f", "raw", c.nodes[2]!.uri("churn"), "-c", `read -P ${0x30 + rewrites - 1} 0 32M`]);
  assert.not.match(out, /fail/i, "the last rewrite is what every read sees");
});

test("--nodes puts the replicas on the named nodes; --zones without zone labels says what to do", async () => {
  const pxd = fileURLToPath(new URL("../../bin/pxd.js", import.meta.url));
  const cli = (...args: string[]) => run(process.execPath, [pxd, "--host", `${c.nodes[0]!.host}:9001`, ...args]);
  const made = await cli("volume", "create", "pinned", "--size", "1M", "--nodes", "node3,node2", "--json");
  assert.is(made.code, 0, made.stderr);
  const v = JSON.parse(made.stdout) as { repl: number; replicas: { node: string }[] };
  assert.equal([v.repl, v.replicas.map((r) => r.node)], [2, ["node3", "node2"]]);
  const unknown = await cli("volume", "create", "pinned2", "--size", "1M", "--nodes", "node9");
  assert.is(unknown.code, 1);
  assert.match(unknown.stderr, /no node named or numbered "node9"; pxd node list shows the nodes/);
  const zones = await cli("volume", "create", "spread", "--size", "1M", "--repl", "2", "--zones");
  assert.is(zones.code, 1);
  assert.match(zones.stderr, /in distinct zones but no node that can take it has a zone label; label nodes with a zone or drop --zones/);
});

test("creating a volume with more replicas than nodes says what to do", async () => {
  try {
    await c.nodes[0]!.api.createVolume({ name: "r4", sizeBytes: 1024 * 1024, repl: 4 });
    assert.unreachable();
  } catch (e) {
    assert.match((e as Error).message, /needs 4 replicas but only 3 nodes/);
  }
});

test("a dead node is marked down and gets no new replicas; back, it is up again", async () => {
  const victim = c.nodes[2]!;
  await victim.kill();
  await waitUntil("the catalog to mark the dead node down", async () => {
    const nodes = await c.nodes[0]!.api.listNodes();
    return nodes.filter((n) => n.catalogHealth === "down").length === 1;
  });
  const refused = await c.nodes[0]!.api.createVolume({ name: "r3b", sizeBytes: 1024 * 1024, repl: 3 }).then(
    () => "created",
    (e: Error) => e.message,
  );
  assert.match(refused, /needs 3 replicas but only 2 nodes are up/);
  const v = await c.nodes[1]!.api.createVolume({ name: "r2", sizeBytes: 1024 * 1024, repl: 2 });
  assert.not.ok(v.replicas.some((r) => r.node === "node3"), "no replica on the dead node");
  await victim.start();
  // Right after its restart the node's catalog predates r2; naming r2 over NBD
  // must wait for the catalog to catch up, not answer "no export".
  const fresh = await runOk("qemu-io", ["-f", "raw", victim.uri("r2"), "-c", "write -P 0x44 0 4096", "-c", "read -P 0x44 0 4096"]);
  assert.not.match(fresh, /fail/i, "the restarted node serves a volume created while it was down");
  await c.healthy();
  await waitUntil("the catalog to mark it up again", async () => (await c.nodes[0]!.api.listNodes()).every((n) => n.catalogHealth === "up"));
});

test.run();
