// Issue 13, item 5: a volume is not deleted while any node of the cluster
// serves it to an NBD client, nor while a node does not answer the question;
// --force has every node disconnect its clients first. Real daemons, a real
// NBD writer on one node, the delete asked of another.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { startCluster, waitUntil, type Cluster } from "../helpers/cluster.js";
import { RawClient, pattern } from "../helpers/nbd-raw-client.js";
import { run } from "../helpers/run.js";
import { pxdEntry } from "../helpers/daemon.js";
import { ApiError } from "../../src/api/types.js";

const MiB = 1024 * 1024;
let c: Cluster;

test.before(async () => {
  c = await startCluster(3);
});

test.after(async () => {
  await c.dispose();
});

async function deleteRefusal(via: number, name: string): Promise<ApiError> {
  const e = await c.nodes[via]!.api.deleteVolume(name).then(() => undefined, (err: unknown) => err);
  assert.ok(e instanceof ApiError, `the delete is refused: ${String(e)}`);
  return e;
}

test("a delete is refused while another node serves the volume, or a node does not answer; --force disconnects every client", async () => {
  const status = await c.nodes[0]!.api.status();
  const leader = status.nodes.find((n) => n.metaLeader)!.name;
  // Test clusters name their nodes node1, node2 ... in index order.
  const paused = [0, 1, 2].find((i) => `node${i + 1}` !== leader)!;
  const serving = [0, 1, 2].find((i) => i !== paused)!;
  const asking = [0, 1, 2].find((i) => i !== paused && i !== serving)!;
  await c.nodes[asking]!.api.createVolume({ name: "busy", sizeBytes: 16 * MiB, repl: 2 });

  const writer = await RawClient.connect(c.nodes[serving]!.nbdPort, c.nodes[serving]!.host);
  await writer.go("busy");
  assert.is(await writer.writeAt(0, pattern(4096, 1)), 0);
  const inUse = await deleteRefusal(asking, "busy");
  assert.equal([inUse.status, inUse.code], [409, "busy"]);
  assert.is(
    inUse.message,
    `volume "busy" is in use: NBD clients are connected to it on node${serving + 1} (1); disconnect the clients (nbd-client -d, or stop nbdfuse/qemu) and try again, or delete it with --force, which disconnects them`,
  );
  assert.is(await writer.writeAt(4096, pattern(4096, 2)), 0, "the writer is still served");

  c.nodes[paused]!.pause();
  try {
    const silent = await deleteRefusal(asking, "busy");
    assert.match(silent.message, new RegExp(`node${paused + 1} \\(ETIMEDOUT\\) did not answer, so it may be served there`));
    assert.match(silent.message, new RegExp(`connected to it on node${serving + 1} \\(1\\)`));
  } finally {
    c.nodes[paused]!.resume();
  }

  const forced = await run(process.execPath, [pxdEntry, "--host", `${c.nodes[asking]!.host}:9001`, "volume", "delete", "busy", "--force"]);
  assert.is(forced.code, 0, forced.stderr);
  assert.is(forced.stdout, 'volume "busy" deleted (its NBD clients were disconnected)\n');
  assert.ok(await writer.waitClosed(), "the writer's connection was closed");
  for (const n of c.nodes) {
    await waitUntil(`${n.host} to drop the volume`, async () => (await n.api.listVolumes()).every((v) => v.name !== "busy"));
  }
  assert.match(c.nodes[serving]!.output, /volume busy is being deleted \(--force\): disconnected/);
  const late = await RawClient.connect(c.nodes[serving]!.nbdPort, c.nodes[serving]!.host);
  const refused = await late.go("busy").then(() => "connected", (e: Error) => e.message);
  assert.is.not(refused, "connected", "no one connects to a deleted volume");
  late.destroy();
});

test("a volume no one serves is deleted at once; the connections route answers for its own node only", async () => {
  await c.nodes[0]!.api.createVolume({ name: "idle", sizeBytes: MiB, repl: 1 });
  const counts = await Promise.all(c.nodes.map((n) => n.api.volumeConnections("idle")));
  assert.equal(counts.map((x) => [x.node, x.connections]), [["node1", 0], ["node2", 0], ["node3", 0]]);
  await c.nodes[2]!.api.deleteVolume("idle");
  assert.not.ok((await c.nodes[0]!.api.listVolumes()).some((v) => v.name === "idle"));
});

test.run();
