// Volume snapshots on a real 3-node cluster: taken through the volume's Raft
// group, readable as a read-only NBD export VOLUME@SNAPSHOT from any node
// (held or not), kept across a SIGKILL, the only space they hold counted by
// inspect, cloned (the clone's replicas on holders share its extents, others
// get a copy), a rollback refused while a client is connected and then making
// the volume what the snapshot holds; deleted, the export is gone. A replica
// added after a snapshot was taken copies it from a holder.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { fileURLToPath } from "node:url";
import { startCluster, waitUntil, type Cluster } from "../helpers/cluster.js";
import { run, runOk } from "../helpers/run.js";
import { ApiError } from "../../src/api/types.js";
import { RawClient } from "../helpers/nbd-raw-client.js";

const pxd = fileURLToPath(new URL("../../bin/pxd.js", import.meta.url));
const MiB = 1024 * 1024;
let c: Cluster;

test.before(async () => {
  c = await startCluster(4);
});
test.after(async () => {
  await c?.dispose();
});

function cli(at: number, ...args: string[]): Promise<string> {
  return runOk(process.execPath, [pxd, "--host", `${c.nodes[at]!.host}:9001`, ...args]);
}

/** qemu-io's output for the commands; a failed check prints "Pattern verification failed". */
function qemuIo(uri: string, ...commands: string[]): Promise<string> {
  // A snapshot's export is read-only: qemu opens it only read-only (-r).
  return runOk("qemu-io", ["-f", "raw", ...(uri.includes("@") ? ["-r"] : []), uri, ...commands.flatMap((x) => ["-c", x])]);
}

const before = ["read -P 0x41 0 4M", "read -P 0x42 6M 1M", "read -P 0 7M 9M"];
const after = ["read -P 0x41 0 1M", "read -P 0x51 1M 1M", "read -P 0x41 2M 2M", "read -P 0x42 6M 1M", "read -P 0x52 10M 2M"];

test("a snapshot is the volume as it was, from every node, through a kill, until it is rolled back to and deleted", async () => {
  const v = await c.nodes[0]!.api.createVolume({ name: "sv", sizeBytes: 16 * MiB, repl: 3, nodes: ["node1", "node2", "node3"] });
  assert.is(v.replicas.length, 3);
  await qemuIo(c.nodes[0]!.uri("sv"), "write -P 0x41 0 4M", "write -P 0x42 6M 1M");
  const out = await cli(1, "snapshot", "create", "sv", "s1");
  assert.match(out, /snapshot "sv@s1" taken/);
  await qemuIo(c.nodes[2]!.uri("sv"), "write -P 0x51 1M 1M", "write -P 0x52 10M 2M");

  // Every node serves both: the three replicas from their own copy, node 4 (no replica) from theirs.
  for (const n of c.nodes) {
    assert.not.match(await qemuIo(n.uri("sv@s1"), ...before), /fail/i, `${n.host} reads the snapshot as it was`);
    assert.not.match(await qemuIo(n.uri("sv"), ...after), /fail/i, `${n.host} reads the volume as it is`);
  }
  const refused = await run("qemu-io", ["-f", "raw", c.nodes[0]!.uri("sv@s1"), "-c", "write -P 0x99 0 4k"]);
  assert.ok(refused.code !== 0 && /Permission denied|read-only/i.test(refused.stdout + refused.stderr), `a writer cannot open the snapshot: ${refused.stdout} ${refused.stderr}`);

  const info = await c.nodes[3]!.api.inspectSnapshot("sv", "s1");
  assert.equal(info.holders?.sort(), ["node1", "node2", "node3"]);
  assert.is(info.allocatedBytes, 5 * MiB);
  assert.is(info.exclusiveBytes, MiB, "only the overwritten MiB is the snapshot's alone");
  assert.match(await cli(3, "snapshot", "list"), /sv\s+s1\s+16\.0 MiB/);

  // A clone, asked through a node that holds no replica of the source: its two replicas start on nodes holding s1, sharing its extents; nothing is copied.
  const appended = async (): Promise<number[]> => Promise.all(c.nodes.map(async (n) => Number(/^pxd_store_log_appended_bytes_total (\d+)$/m.exec(await n.api.metrics())![1])));
  const appendedBefore = await appended();
  const cloned = await cli(3, "volume", "clone", "sv@s1", "svc", "--repl", "2", "--json");
  const c1 = JSON.parse(cloned) as { sizeBytes: number; sharedOn: string[]; copiedTo: string[]; inSync: boolean };
  assert.is(c1.sizeBytes, 16 * MiB);
  assert.is(c1.sharedOn.length, 2, cloned);
  assert.equal([c1.copiedTo, c1.inSync], [[], true], cloned);
  const svc = await c.nodes[3]!.api.inspectVolume("svc");
  assert.is(svc.clonedFrom, "sv@s1");
  assert.match(await cli(3, "volume", "inspect", "svc"), /cloned from\s+sv@s1/);
  assert.not.match(await qemuIo(c.nodes[3]!.uri("svc"), ...before), /fail/i, "the clone holds the snapshot's bytes");
  const appendedAfter = await appended();
  for (const [i, n] of c.nodes.entries()) assert.ok(appendedAfter[i]! - appendedBefore[i]! < MiB, `${n.host} wrote ${appendedAfter[i]! - appendedBefore[i]!} bytes for a clone of 5 MiB of data: none of it copied`);
  assert.not.match(await qemuIo(c.nodes[0]!.uri("svc"), "write -P 0x61 0 1M", "read -P 0x61 0 1M", "read -P 0x41 1M 3M"), /fail/i, "the clone takes writes");
  assert.not.match(await qemuIo(c.nodes[0]!.uri("sv@s1"), ...before), /fail/i, "the snapshot is unchanged by the clone's writes");
  // A seed killed and restarted has the clone as it was written (its checkpoint, then its log).
  const seed = Number(/^node(\d+)$/.exec(c1.sharedOn[0]!)![1]) - 1;
  await c.nodes[seed]!.kill();
  await c.nodes[seed]!.start();
  await c.healthy();
  await waitUntil("the clone's replicas in sync again", async () => (await c.nodes[3]!.api.inspectVolume("svc")).replicas.every((r) => r.state === "in-sync"), 60000);
  assert.not.match(await qemuIo(c.nodes[seed]!.uri("svc"), "read -P 0x61 0 1M", "read -P 0x41 1M 3M", "read -P 0x42 6M 1M", "read -P 0 7M 9M"), /fail/i, "the restarted seed's clone reads back");
  const taken = await run(process.execPath, [pxd, "--host", `${c.nodes[0]!.host}:9001`, "volume", "clone", "sv@s1", "svc"]);
  assert.ok(taken.code !== 0 && /already exists/.test(taken.stderr), taken.stderr);
  await c.nodes[0]!.api.deleteVolume("svc");

  // A clone with a replica on a node without the snapshot: the seed starts it, node4 gets a copy (5 MiB of data), with progress lines.
  const mixed = await run(process.execPath, [pxd, "--host", `${c.nodes[3]!.host}:9001`, "volume", "clone", "sv@s1", "svm", "--nodes", "node1,node4"]);
  assert.is(mixed.code, 0, mixed.stderr);
  assert.match(mixed.stdout, /sharing the snapshot's data on node1; copied to node4/);
  assert.match(mixed.stderr, /"settled":true/, "progress as JSON lines when stderr is no terminal");
  assert.match(await c.nodes[3]!.api.metrics(), /pxd_volume_allocated_bytes\{volume="svm"\} 5242880/, "node4's replica holds the snapshot's 5 MiB");
  assert.not.match(await qemuIo(c.nodes[3]!.uri("svm"), ...before), /fail/i);
  const none = await run(process.execPath, [pxd, "--host", `${c.nodes[3]!.host}:9001`, "volume", "clone", "sv@s1", "svn", "--nodes", "node4"]);
  assert.ok(none.code !== 0 && /none of the nodes given \(node4\) holds sv@s1, which is on node1, node2, node3/.test(none.stderr), none.stderr);
  await c.nodes[0]!.api.deleteVolume("svm");

  // A SIGKILLed replica comes back with the snapshot (its checkpoint or its log).
  await c.nodes[1]!.kill();
  await c.nodes[1]!.start();
  await c.healthy();
  assert.not.match(await qemuIo(c.nodes[1]!.uri("sv@s1"), ...before), /fail/i, "the restarted node reads the snapshot");
  // It applies the volume's log again once its leader tells it the commit index.
  await waitUntil("the restarted node holds the snapshot", async () => (await c.nodes[1]!.api.snapshotHolding("sv", "s1")).held);
  await waitUntil("sv has a leader again", async () => (await c.nodes[2]!.api.inspectVolume("sv")).replicas.some((r) => r.leader));

  // A rollback is refused while a client has the volume open, then makes it the snapshot.
  const client = await RawClient.connect(c.nodes[3]!.nbdPort, c.nodes[3]!.host);
  await client.greet();
  await client.negotiate("sv");
  const busy = await c.nodes[2]!.api.rollbackVolume("sv", { snapshot: "s1" }).catch((e: unknown) => e);
  assert.ok(busy instanceof ApiError && busy.status === 409 && /in use/.test(busy.message), String(busy));
  client.destroy();
  await waitUntil("no client on sv", async () => (await Promise.all(c.nodes.map((n) => n.api.volumeConnections("sv")))).every((x) => x.connections === 0));
  const rolled = await c.nodes[2]!.api.rollbackVolume("sv", { snapshot: "s1" });
  assert.equal([rolled.writtenBytes, rolled.trimmedBytes], [MiB, 2 * MiB]);
  for (const n of c.nodes.slice(0, 3)) assert.not.match(await qemuIo(n.uri("sv"), ...before), /fail/i, `${n.host} reads the rolled-back volume`);

  await cli(0, "snapshot", "delete", "sv@s1");
  assert.equal(await c.nodes[0]!.api.listSnapshots("sv"), []);
  const gone = await run("nbdinfo", ["--size", c.nodes[0]!.uri("sv@s1")]);
  assert.ok(gone.code !== 0, "the export is gone");
  await waitUntil("every replica dropped it", async () => (await Promise.all(c.nodes.slice(0, 3).map((n) => n.api.snapshotHolding("sv", "s1").catch(() => ({ held: false }))))).every((h) => !h.held));
});

test("a replica added after a snapshot copies it from a holder (only the blocks that differ), keeps it through a kill, and serves it once the original holder is gone", async () => {
  await c.nodes[0]!.api.createVolume({ name: "sa", sizeBytes: 16 * MiB, repl: 1, nodes: ["node1"] });
  await qemuIo(c.nodes[0]!.uri("sa"), "write -P 0x41 0 4M", "write -P 0x42 6M 1M");
  await cli(0, "snapshot", "create", "sa", "s1");
  await qemuIo(c.nodes[0]!.uri("sa"), "write -P 0x51 1M 1M", "write -P 0x52 10M 2M");
  await cli(0, "volume", "ha-update", "sa", "--repl", "2");
  // The added replica is filled by a copy of the volume as it is now, past the entry that took s1: it copies s1 itself.
  const added = await waitUntil("a second replica", async () => (await c.nodes[0]!.api.inspectVolume("sa")).replicas.map((r) => r.node).find((n) => n !== "node1"), 60000);
  const at = Number(/^node(\d+)$/.exec(added)![1]) - 1;
  const holding = await waitUntil(`${added} holds s1`, async () => {
    const h = await c.nodes[at]!.api.snapshotHolding("sa", "s1");
    return h.held ? h : undefined;
  }, 60000);
  assert.is(holding.exclusiveBytes, MiB, "the copy shares every block the volume still holds as it was: only the overwritten MiB is its own");
  // The only original holder goes; the added replica, killed and restarted, still has s1 (a checkpoint holds it) and serves it.
  await c.nodes[0]!.kill();
  await c.nodes[at]!.kill();
  await c.nodes[at]!.start();
  assert.ok((await c.nodes[at]!.api.snapshotHolding("sa", "s1")).held, "the copy survives a SIGKILL");
  assert.not.match(await qemuIo(c.nodes[at]!.uri("sa@s1"), ...before), /fail/i, `${added} serves the snapshot as it was`);
  await c.nodes[0]!.start();
  await c.healthy();
  await c.nodes[0]!.api.deleteVolume("sa");
});

test("names are checked, and taken names refused with a sentence", async () => {
  await c.nodes[0]!.api.createVolume({ name: "sw", sizeBytes: 4 * MiB, repl: 1 });
  await c.nodes[0]!.api.createSnapshot("sw", { name: "a" });
  const again = await c.nodes[1]!.api.createSnapshot("sw", { name: "a" }).catch((e: unknown) => e);
  assert.ok(again instanceof ApiError && again.status === 409 && /already/.test(again.message), String(again));
  const bad = await run(process.execPath, [pxd, "--host", `${c.nodes[0]!.host}:9001`, "snapshot", "create", "sw", "no@pe"]);
  assert.ok(bad.code !== 0 && /snapshot name/.test(bad.stderr), bad.stderr);
  const missing = await c.nodes[0]!.api.inspectSnapshot("sw", "zz").catch((e: unknown) => e);
  assert.ok(missing instanceof ApiError && missing.status === 404, String(missing));
  const scheduled = await cli(2, "snapshot", "schedule", "sw", "--every", "1h", "--keep", "24");
  assert.match(scheduled, /a snapshot every 1h 0m 0s, the newest 24 kept/);
  assert.equal((await c.nodes[1]!.api.inspectVolume("sw")).snapshotSchedule, { everySec: 3600, keep: 24 });
  const tooOften = await run(process.execPath, [pxd, "--host", `${c.nodes[0]!.host}:9001`, "snapshot", "schedule", "sw", "--every", "10s"]);
  assert.ok(tooOften.code !== 0 && /everySec/.test(tooOften.stderr), tooOften.stderr);
  await cli(0, "snapshot", "schedule", "sw", "--off");
  assert.is((await c.nodes[0]!.api.inspectVolume("sw")).snapshotSchedule, undefined);
  await c.nodes[0]!.api.deleteVolume("sw");
  assert.equal(await c.nodes[0]!.api.listSnapshots(), (await c.nodes[0]!.api.listSnapshots()).filter((s) => s.volume !== "sw"));
});

test.run();
