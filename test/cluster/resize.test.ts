// Growing a volume online (docs/architecture.md, "Resize") on a real
// three-node cluster: the resize goes through the volume's Raft group, then
// the catalog; NBD clients see the new size on their next handshake (nbdinfo,
// an independent client), a connection opened before may use the new end; the
// data past the old end survives a leader kill and a SIGKILL of every node
// (each replica applies the resize again from its log); shrinking is refused.
// A follower away during a resize, past --log-retain, comes back through a
// snapshot that carries the new size, and ends with the same bytes. A catalog
// that says more than the group (an entry committed through the
// fault-injection hook) is converged to: the group's leader grows the group.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { createHash, randomBytes } from "node:crypto";
import { join } from "node:path";
import { ApiError } from "../../src/api/types.js";
import { NodeDisk, deferImmediate } from "../../src/os/node-disk.js";
import { Store } from "../../src/store/store.js";
import { startCluster, waitUntil, type Cluster } from "../helpers/cluster.js";
import { NbdTarget } from "../helpers/checker.js";
import type { DaemonProcess } from "../helpers/daemon.js";
import { runOk } from "../helpers/run.js";

const MiB = 1024 * 1024;
let c: Cluster;

test.before(async () => {
  c = await startCluster(3, ["--log-retain", "2M", "--unsafe-debug-api"]);
});

test.after(async () => {
  await c.dispose();
});

/** The message of the error `p` rejects with ("" when it resolves). */
async function failure(p: Promise<unknown>): Promise<string> {
  return p.then(
    () => "",
    (e: Error) => e.message,
  );
}

async function nbdSize(node: DaemonProcess, name: string): Promise<number> {
  return Number((await runOk("nbdinfo", ["--size", node.uri(name)])).trim());
}

async function fill(node: DaemonProcess, name: string, firstMiB: number, mib: number): Promise<Map<number, Buffer>> {
  const t = new NbdTarget(node.host, node.nbdPort, name, MiB, 60000);
  const out = new Map<number, Buffer>();
  try {
    for (let i = firstMiB; i < firstMiB + mib; i++) {
      const data = randomBytes(MiB);
      await t.write(i, data);
      out.set(i, data);
    }
  } finally {
    t.close();
  }
  return out;
}

async function readBack(node: DaemonProcess, name: string, data: Map<number, Buffer>, what: string): Promise<void> {
  const t = new NbdTarget(node.host, node.nbdPort, name, MiB, 60000);
  try {
    for (const [i, d] of data) assert.ok((await t.read(i)).equals(d), `${what}: MiB ${i}`);
  } finally {
    t.close();
  }
}

test("a volume grows online: clients see the size on their next handshake, data past the old end survives a leader kill and a SIGKILL of every node; shrinking is refused", async () => {
  const name = "grow";
  await c.nodes[0]!.api.createVolume({ name, sizeBytes: 32 * MiB, repl: 3 });
  const leader = await c.leaderOf(name);
  const via = c.nodes[(leader + 1) % 3]!; // a follower: requests are forwarded
  const client = new NbdTarget(via.host, via.nbdPort, name, MiB, 60000);
  const before = randomBytes(MiB);
  await client.write(0, before);
  assert.match(await failure(client.write(40, randomBytes(MiB))), /errno 28/, "past the end before the resize: ENOSPC");

  const shrink = await c.nodes[1]!.api.updateVolume(name, { sizeBytes: 16 * MiB }).catch((e: unknown) => e);
  assert.ok(shrink instanceof ApiError && shrink.status === 409, "shrinking is refused with 409");
  assert.match((shrink as Error).message, /volume "grow" is 32\.0 MiB \(33554432 bytes\) and shrinking a volume is not supported \(asked for 16\.0 MiB\)/);

  const t0 = Date.now();
  const grown = await c.nodes[2]!.api.updateVolume(name, { sizeBytes: 64 * MiB });
  console.log(`resize to 64 MiB answered in ${Date.now() - t0} ms`);
  assert.is(grown.sizeBytes, 64 * MiB);
  assert.is((await c.nodes[0]!.api.updateVolume(name, { sizeBytes: 64 * MiB })).sizeBytes, 64 * MiB, "the same size again changes nothing");
  for (const n of c.nodes) {
    await waitUntil(`${n.host} sees 64 MiB`, async () => (await n.api.inspectVolume(name)).sizeBytes === 64 * MiB, 10000);
    assert.is(await nbdSize(n, name), 64 * MiB, `a new handshake on ${n.host} tells the new size`);
  }

  // The connection opened before the resize may use the new end (a kernel device resized in place does).
  const past = randomBytes(MiB);
  await client.write(40, past);
  assert.ok((await client.read(0)).equals(before));
  client.close();
  const last = await fill(c.nodes[leader]!, name, 63, 1);
  assert.match(await failure(fill(c.nodes[leader]!, name, 64, 1)), /errno 28/, "still an end: the new one");

  await c.nodes[leader]!.kill();
  const next = await c.leaderAmong(name, c.others(leader));
  const data = new Map([[0, before], [40, past], ...last]);
  await readBack(c.nodes[c.others(leader).find((i) => i !== next)!]!, name, data, "after the leader was killed");
  await c.nodes[leader]!.start();

  // No checkpoint since the resize: every replica grows again from its Raft log.
  for (const n of c.nodes) await n.kill();
  for (const n of c.nodes) await n.start();
  await c.healthy();
  await c.leaderOf(name);
  for (const n of c.nodes) assert.is(await nbdSize(n, name), 64 * MiB, `${n.host} after the restart`);
  await readBack(c.nodes[leader]!, name, data, "after every node was SIGKILLed");
  const more = await fill(c.nodes[leader]!, name, 50, 1);
  await readBack(c.nodes[(leader + 2) % 3]!, name, more, "a write past the old end after the restart");
});

/** The replica as its store on disk holds it, after an orderly stop: its size and a hash of its bytes. */
async function replicaImage(dataDir: string, groupId: number, createdBytes: number): Promise<{ size: number; hash: string }> {
  // The node state says the size the replica started with; the checkpoint the size it grew to.
  const store = await Store.open({ disk: new NodeDisk(join(dataDir, "store")), defer: deferImmediate }, [{ groupId: 0, sizeBytes: 0 }, { groupId, sizeBytes: createdBytes }]);
  try {
    const size = store.sizeOf(groupId);
    const h = createHash("sha256");
    for (let at = 0; at < size; at += MiB) h.update(store.read(groupId, at, Math.min(MiB, size - at)));
    return { size, hash: h.digest("hex") };
  } finally {
    await store.close();
  }
}

test("a follower away while the volume grew comes back through a snapshot of the new size, with the same bytes", async () => {
  const name = "away";
  const v = await c.nodes[0]!.api.createVolume({ name, sizeBytes: 16 * MiB, repl: 3 });
  const leader = await c.leaderOf(name);
  const ai = (leader + 1) % 3;
  const away = c.nodes[ai]!;
  const aid = v.replicas.find((r) => r.node === `node${ai + 1}`)!.nodeId;
  const inSync = async (): Promise<boolean> => (await c.nodes[leader]!.api.inspectVolume(name)).replicas.every((r) => r.state === "in-sync");
  await fill(c.nodes[leader]!, name, 0, 4);
  await waitUntil("every replica in sync", inSync, 30000);
  const heldAt = (await c.nodes[leader]!.api.inspectVolume(name)).log!.lastIndex;
  await away.kill();
  await waitUntil("the leader sees the member down", async () => (await c.nodes[leader]!.api.inspectVolume(name)).replicas.find((r) => r.nodeId === aid)?.state === "down", 20000);

  // The member killed may have led the catalog: the API answers once a new meta leader is elected.
  await waitUntil("the resize taken", async () => (await c.nodes[leader]!.api.updateVolume(name, { sizeBytes: 48 * MiB })).sizeBytes === 48 * MiB, 20000);
  await fill(c.nodes[leader]!, name, 30, 8); // past the old end, and far more than --log-retain 2M
  await waitUntil("the leader's log compacted past the member", async () => (await c.nodes[leader]!.api.inspectVolume(name)).log!.firstIndex > heldAt + 1, 20000);
  const installedBefore = 0;
  await away.start();
  await waitUntil("the member back in sync", inSync, 60000);
  const installed = Number(/^pxd_store_snapshots_installed_total (\d+)$/m.exec(await away.api.metrics())?.[1] ?? 0);
  assert.ok(installed > installedBefore, "it came back through a snapshot, not the log");
  await new Promise((r) => setTimeout(r, 1000)); // followers learn the last commit index from a heartbeat

  for (const n of c.nodes) assert.is(await n.stop(), 0, `orderly stop of ${n.host}`);
  const images = [];
  for (const n of c.nodes) images.push(await replicaImage(n.dataDir, v.id, 16 * MiB));
  for (const [i, im] of images.entries()) {
    assert.is(im.size, 48 * MiB, `node${i + 1} holds the grown volume`);
    assert.is(im.hash, images[0]!.hash, `node${i + 1} holds the same bytes`);
  }
  for (const n of c.nodes) await n.start();
  await c.healthy();
});

test("a one-replica volume on each node grows: the meta leader forwards the resize to the node that holds it", async () => {
  for (const [i, n] of c.nodes.entries()) {
    const name = `one${i + 1}`;
    await c.nodes[0]!.api.createVolume({ name, sizeBytes: 8 * MiB, nodes: [`node${i + 1}`] });
    await waitUntil(`${name} has a leader`, async () => (await n.api.inspectVolume(name)).replicas.some((r) => r.leader), 10000);
    assert.is((await c.nodes[(i + 1) % 3]!.api.updateVolume(name, { sizeBytes: 24 * MiB })).sizeBytes, 24 * MiB);
    // Each node's catalog learns the size with the entry's commit, a heartbeat after the meta leader's.
    const via = c.nodes[(i + 2) % 3]!;
    await waitUntil(`${via.host} sees 24 MiB`, async () => (await via.api.inspectVolume(name)).sizeBytes === 24 * MiB, 10000);
    const data = await fill(via, name, 20, 1);
    await readBack(n, name, data, `${name}, past the old end`);
  }
});

test("a catalog entry that grows a volume without its group: the group's leader grows the group", async () => {
  const name = "cat";
  await c.nodes[0]!.api.createVolume({ name, sizeBytes: 8 * MiB, repl: 3 });
  const leader = await c.leaderOf(name);
  const r = await c.nodes[1]!.api.debugCatalogPropose({ command: { kind: "resizeVolume", name, sizeBytes: 16 * MiB } });
  assert.ok(r.ok, "the catalog took it");
  const data = randomBytes(MiB);
  await waitUntil("a write past the old end taken", async () => {
    const t = new NbdTarget(c.nodes[leader]!.host, c.nodes[leader]!.nbdPort, name, MiB, 5000);
    try {
      await t.write(12, data);
      return true;
    } finally {
      t.close();
    }
  }, 10000);
  await readBack(c.nodes[(leader + 1) % 3]!, name, new Map([[12, data]]), "grown by the group's leader");
  assert.match(c.nodes[leader]!.output, /the catalog says 16\.0 MiB but the group is 8\.00 MiB; growing the group/);
});

test.run();
