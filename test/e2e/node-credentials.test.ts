// A joined node keeps its credentials (docs/security.md, "The cluster secret
// and a node's credentials"): after its join it holds the cluster secret in
// DIR/cluster.secret (0600) and restarts with only --data-dir; its data dir
// refuses another secret, and --join naming a member of another cluster.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { startCluster, type Cluster } from "../helpers/cluster.js";
import { startDaemon, type DaemonProcess } from "../helpers/daemon.js";

let c: Cluster;
let other: DaemonProcess;

test.before(async () => {
  c = await startCluster(2);
  other = await startDaemon("127.0.0.1"); // a cluster of its own
});

test.after(async () => {
  await other.dispose();
  await c.dispose();
});

async function refusedStart(d: DaemonProcess): Promise<string> {
  try {
    await d.start();
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error("the daemon started");
}

test("a joined node keeps the secret 0600 and restarts with only --data-dir", async () => {
  const n = c.nodes[1]!;
  const file = join(n.dataDir, "cluster.secret");
  assert.is(readFileSync(file, "utf8"), `${c.secret}\n`);
  assert.is(statSync(file).mode & 0o777, 0o600);
  await n.stop();
  n.extraArgs = ["--name", "node2"];
  n.env = { ...process.env, PXD_CLUSTER_SECRET: undefined };
  await n.start();
  await c.healthy();
});

test("its data dir refuses another cluster's secret, and --join of another cluster's member", async () => {
  const n = c.nodes[1]!;
  await n.stop();
  n.env = { ...process.env, PXD_CLUSTER_SECRET: "another-secret-entirely-0123456789" };
  assert.match(await refusedStart(n), /the data dir .* belongs to a cluster whose secret \(in .*cluster\.secret\) is not the one given; start this node without a secret \(it keeps its own\)/);
  n.env = { ...process.env, PXD_CLUSTER_SECRET: undefined };
  n.extraArgs = ["--name", "node2", "--join", `${other.host}:${other.apiPort}`];
  assert.match(await refusedStart(n), /belongs to cluster [0-9a-f-]+, but 127\.0\.0\.1:\d+ is in cluster [0-9a-f-]+; to join .* start this node with an empty --data-dir, or leave out --join/);
  // --join naming its own cluster's member is a plain restart.
  n.extraArgs = ["--name", "node2", "--join", `${c.nodes[0]!.host}:9001`];
  await n.start();
  await c.healthy();
});

test.run();
