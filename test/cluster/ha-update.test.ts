// pxd volume ha-update: replicas added to a live volume get a full copy and
// join its Raft group; the proof is that the volume keeps every byte when the
// node that held its only original replica is killed. Then the count goes
// down again and the dropped replicas leave their nodes.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { fileURLToPath } from "node:url";
import { waitUntil, type Cluster } from "../helpers/cluster.js";
import { runOk } from "../helpers/run.js";
import { checkedClusterHooks, finishChecked, startChecked } from "../helpers/checker.js";

const pxd = fileURLToPath(new URL("../../bin/pxd.js", import.meta.url));
let c: Cluster;

checkedClusterHooks(test, 3, (x) => (c = x));

function cli(at: number, ...args: string[]): Promise<string> {
  return runOk(process.execPath, [pxd, "--host", `${c.nodes[at]!.host}:9001`, ...args]);
}

async function replicasInSync(at: number, name: string, count: number): Promise<string[] | undefined> {
  const v = await c.nodes[at]!.api.inspectVolume(name);
  if (v.replicas.length !== count || v.replicas.some((r) => r.state !== "in-sync")) return undefined;
  return v.replicas.map((r) => r.node);
}

const patterns = ["-c", "write -P 0x41 0 4M", "-c", "write -P 0x42 6M 1M", "-c", "write -P 0x43 5255513 5000"];
const checks = ["-c", "read -P 0x41 0 4M", "-c", "read -P 0x42 6M 1M", "-c", "read -P 0x43 5255513 5000", "-c", "read -P 0x44 9M 512k", "-c", "read -P 0 20M 1M"];

test("a single-replica volume grows to three replicas, survives losing its first node, and shrinks back", async () => {
  const v = await c.nodes[0]!.api.createVolume({ name: "ha", sizeBytes: 32 * 1024 * 1024, repl: 1 });
  const first = Number(/^node(\d+)$/.exec(v.replicas[0]!.node)![1]) - 1;
  await runOk("qemu-io", ["-f", "raw", c.nodes[first]!.uri("ha"), ...patterns]);

  const out = await cli(first, "volume", "ha-update", "ha", "--repl", "2");
  assert.match(out, /2 replicas wanted/);
  const two = await waitUntil("two replicas in sync", () => replicasInSync(first, "ha", 2), 60000);
  // Written while the group has two members: replicated through Raft.
  await runOk("qemu-io", ["-f", "raw", c.nodes[first]!.uri("ha"), "-c", "write -P 0x44 9M 512k"]);
  await cli(first, "volume", "ha-update", "ha", "--repl", "3");
  const three = await waitUntil("three replicas in sync", () => replicasInSync(first, "ha", 3), 60000);
  console.log(`replicas: ${v.replicas[0]!.node} -> ${two.join(", ")} -> ${three.join(", ")}`);
  // A group with one member compacts its log behind every apply, so the first added replica is filled by a snapshot; the reads below check the bytes.
  let installed = 0;
  for (const n of c.nodes) installed += Number(/^pxd_store_snapshots_installed_total (\d+)$/m.exec(await n.api.metrics())?.[1] ?? 0);
  assert.ok(installed >= 1, `the first added replica was filled by a snapshot (${installed} installed)`);

  // The node that held the only original copy dies: the added replicas hold everything.
  await c.nodes[first]!.kill();
  const survivor = c.nodes[(first + 1) % 3]!;
  const read = await runOk("qemu-io", ["-f", "raw", survivor.uri("ha"), ...checks]);
  assert.not.match(read, /fail/i, "every byte written before and during ha-update is on the added replicas");
  await c.nodes[first]!.start();
  await c.healthy();
  await waitUntil("three replicas in sync again", () => replicasInSync((first + 1) % 3, "ha", 3), 60000);

  // Down to one replica: the others leave the group and drop their data.
  await cli((first + 1) % 3, "volume", "ha-update", "ha", "--repl", "1");
  const one = await waitUntil("one replica left", () => replicasInSync((first + 1) % 3, "ha", 1), 60000);
  const keeper = Number(/^node(\d+)$/.exec(one[0]!)![1]) - 1;
  await waitUntil("the dropped replicas are gone from their nodes", async () => {
    for (const [i, n] of c.nodes.entries()) {
      if (i === keeper) continue;
      if (/pxd_volume_allocated_bytes\{volume="ha"\}/.test(await n.api.metrics())) return false;
    }
    return true;
  }, 40000);
  const after = await runOk("qemu-io", ["-f", "raw", c.nodes[(keeper + 1) % 3]!.uri("ha"), ...checks]);
  assert.not.match(after, /fail/i, "the remaining replica serves everything, through any node");
});

test("writes going on while a single replica becomes three are all on the new replicas (checker), through losing the first node", async () => {
  const v = await c.nodes[0]!.api.createVolume({ name: "hal", sizeBytes: 64 * 1024 * 1024, repl: 1 });
  const first = Number(/^node(\d+)$/.exec(v.replicas[0]!.node)![1]) - 1;
  const ch = await startChecked("hal", c.others(first).map((i) => c.nodes[i]!));
  await c.nodes[first]!.api.updateVolume("hal", { repl: 3 });
  await waitUntil("three replicas in sync", () => replicasInSync(first, "hal", 3), 60000);
  await ch.load.progress(100, 30000, "progress with three replicas");
  await c.nodes[first]!.kill();
  await ch.load.progress(100, 30000, "progress after the first node's SIGKILL");
  await finishChecked(ch, c.nodes[c.others(first)[0]!]!, c.nodes);
  await c.nodes[first]!.start();
  await c.healthy();
});

test("ha-update says what is wrong: too many replicas, unknown volume, bad count", async () => {
  await c.nodes[0]!.api.createVolume({ name: "ha2", sizeBytes: 1024 * 1024, repl: 1 });
  const err = (p: Promise<unknown>): Promise<string> => p.then(() => "ok", (e: Error) => e.message);
  const four = await err(c.nodes[1]!.api.updateVolume("ha2", { repl: 4 }));
  assert.match(four, /cannot add 3 replica\(s\) to volume "ha2"/, four);
  const nope = await err(c.nodes[1]!.api.updateVolume("nope", { repl: 2 }));
  assert.match(nope, /no volume named "nope"/, nope);
  assert.match(await err(c.nodes[1]!.api.updateVolume("ha2", { repl: 0 })), /replica count from 1 to 5/);
});

test.run();
