// Re-replication: a node that stays down (--replace-down-after) has its
// replicas moved to a node that had none. The linearizability checker runs
// throughout; then a second original replica is killed, so the volume can
// only keep serving, with every acknowledged write, if the new replica holds
// everything. When the first dead node returns it leaves the volume's group
// and drops its stale replica.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { startCluster, waitUntil, type Cluster } from "../helpers/cluster.js";
import { abortRunning, finishChecked, startChecked } from "../helpers/checker.js";

const MiB = 1024 * 1024;
let c: Cluster;

test.before(async () => {
  c = await startCluster(4, ["--replace-down-after", "3"]);
});

test.after.each(abortRunning);

test.after(async () => {
  await c.dispose();
});

const indexOf = (node: string): number => Number(/^node(\d+)$/.exec(node)![1]) - 1;

test("a replica on a node down past --replace-down-after moves to a spare node, which then carries the volume", async () => {
  const v = await c.nodes[0]!.api.createVolume({ name: "rr", sizeBytes: 64 * MiB, repl: 3 });
  const holders = v.replicas.map((r) => indexOf(r.node));
  const spare = [0, 1, 2, 3].find((i) => !holders.includes(i))!;
  const metaLeader = (await c.nodes[0]!.api.listNodes()).find((n) => n.metaLeader)!;
  // Kill a holder that does not lead the catalog, so the leader that moves the replica stays up.
  const victim = holders.find((i) => `node${i + 1}` !== metaLeader.name)!;
  const rest = holders.filter((i) => i !== victim);
  const ch = await startChecked("rr", rest.map((i) => c.nodes[i]!));
  await c.nodes[victim]!.kill();
  const moved = await waitUntil("the replica moved to the spare node and every replica in sync", async () => {
    const info = await c.nodes[rest[0]!]!.api.inspectVolume("rr");
    const at = info.replicas.map((r) => indexOf(r.node));
    return at.includes(spare) && !at.includes(victim) && info.replicas.every((r) => r.state === "in-sync") ? at : undefined;
  }, 60000);
  console.log(`replicas on nodes ${holders.map((i) => i + 1).join(", ")}; node ${victim + 1} killed; now on ${moved.map((i) => i + 1).join(", ")}`);
  await ch.load.progress(100, 30000, "progress after the move");

  // Only the new replica and one original remain: they must hold everything.
  await c.nodes[rest[1]!]!.kill();
  await ch.load.progress(100, 60000, "progress with the new replica in the quorum");
  await finishChecked(ch, c.nodes[spare]!, c.nodes);

  // The first dead node comes back, finds itself dropped, and removes its stale replica.
  await c.nodes[victim]!.start();
  await c.nodes[rest[1]!]!.start();
  await waitUntil("the returning node dropped its replica", async () => !/pxd_volume_allocated_bytes\{volume="rr"\}/.test(await c.nodes[victim]!.api.metrics()), 40000);
  const info = await c.nodes[spare]!.api.inspectVolume("rr");
  assert.equal(info.replicas.map((r) => indexOf(r.node)).sort(), [...rest, spare].sort());
});

test.run();
