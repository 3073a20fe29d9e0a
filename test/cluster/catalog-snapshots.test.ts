// Issue 14, item 6: the meta group's log is compacted behind catalog
// snapshots (docs/formats/catalog-snapshot.md). A real three-node cluster
// commits 10,000 catalog entries; a node restarted after that loads its
// latest snapshot and replays only the entries after it; a node that was down
// while the others compacted past its log gets the catalog as a Raft snapshot
// from the leader and ends with the same catalog as the others; so does a
// node that joins after the log was compacted.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { join } from "node:path";
import { startCluster, waitUntil, type Cluster } from "../helpers/cluster.js";
import { DaemonProcess } from "../helpers/daemon.js";
import { catalogLogTailEntries, catalogSnapshotEntries } from "../../src/constants.js";
import type { ApiClient } from "../../src/api/client.js";

const MiB = 1024 * 1024;
let c: Cluster;

test.before(async () => {
  c = await startCluster(3);
});

test.after(async () => {
  await c.dispose();
});

/** Commits `count` catalog entries (setSetting, through the API of `api`'s node), `parallel` at a time; returns the meta log's commit index after them. */
async function commitEntries(api: ApiClient, count: number, parallel = 32): Promise<number> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      const i = next++;
      await api.setSetting("overcommitPercent", 100 + (i % 50));
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  return (await api.status()).catalog.commitIndex;
}

test("10,000 catalog entries: every node snapshots its catalog and compacts the meta log behind it", async () => {
  const last = await commitEntries(c.nodes[0]!.api, 10_000);
  assert.ok(last >= 10_000, `the log reached index ${last}`);
  for (const n of c.nodes) {
    // A snapshot follows the batch of applied entries that reaches catalogSnapshotEntries past the last one; its save may still be running.
    const s = await waitUntil(`${n.host} to apply ${last} and save a snapshot within ${catalogSnapshotEntries + catalogLogTailEntries} entries of it`, async () => {
      const st = (await n.api.status()).catalog;
      return st.appliedIndex >= last && st.snapshotIndex > last - catalogSnapshotEntries - catalogLogTailEntries ? st : undefined;
    });
    assert.ok(s.logFirstIndex > 1 && s.logFirstIndex <= s.snapshotIndex - catalogLogTailEntries + 1, `${n.host}: log from ${s.logFirstIndex}, snapshot at ${s.snapshotIndex}`);
  }
});

test("a restarted node loads its latest catalog snapshot and replays only the entries after it", async () => {
  const n = c.nodes[1]!;
  const before = (await n.api.status()).catalog;
  assert.is(await n.stop(), 0);
  await n.start();
  await c.healthy(45000);
  const after = await waitUntil("the replay count", async () => {
    const s = (await n.api.status()).catalog;
    return /catalog: loaded the snapshot at index \d+, replayed \d+ entries/.test(n.output) ? s : undefined;
  });
  const line = /catalog: loaded the snapshot at index (\d+), replayed (\d+) entries \(to index (\d+)\)/.exec(n.output);
  assert.ok(line, n.output.slice(-2000));
  const [loaded, replayed, to] = [Number(line![1]), Number(line![2]), Number(line![3])];
  console.log(`  restart: loaded the snapshot at index ${loaded}, replayed ${replayed} entries (to index ${to}); ${before.appliedIndex} were applied before the stop`);
  assert.is(after.startSnapshotIndex, loaded);
  assert.is(after.startReplayedEntries, replayed);
  assert.ok(loaded >= before.snapshotIndex, "the latest snapshot it saved");
  assert.is(replayed, to - loaded, "every entry after the snapshot, and no other");
  assert.ok(replayed < catalogSnapshotEntries + catalogLogTailEntries, `${replayed} entries replayed of ${before.appliedIndex}`);
});

test("a node down while the others compacted past its log catches up through a catalog snapshot", async () => {
  const down = c.nodes[2]!;
  await c.nodes[0]!.api.createVolume({ name: "gone", sizeBytes: 8 * MiB, repl: 3 });
  await waitUntil("volume gone on node 3", async () => (await down.api.listVolumes()).some((v) => v.name === "gone"));
  const at = (await down.api.status()).catalog.appliedIndex;
  assert.is(await down.stop(), 0);
  await c.nodes[0]!.api.deleteVolume("gone", { force: true });
  await c.nodes[0]!.api.createVolume({ name: "while-away", sizeBytes: 8 * MiB, repl: 2 });
  await commitEntries(c.nodes[0]!.api, catalogSnapshotEntries + catalogLogTailEntries + 200);
  const leader = await waitUntil("the others to compact past node 3's log", async () => {
    const s = await Promise.all([0, 1].map((i) => c.nodes[i]!.api.status()));
    return s.every((x) => x.catalog.logFirstIndex > at + 1) ? s : undefined;
  });
  await down.start();
  await c.healthy(45000);
  await waitUntil("node 3 to install the leader's snapshot", async () => /catalog: installed the meta leader's snapshot at index \d+/.test(down.output));
  const target = leader[0]!.catalog.appliedIndex;
  const [a, b] = await Promise.all([c.nodes[0]!, down].map((n) => waitUntil(`${n.host} to apply ${target}`, async () => {
    const s = await n.api.status();
    return s.catalog.appliedIndex >= target ? n : undefined;
  })));
  const view = async (api: ApiClient): Promise<unknown> => {
    const s = await api.status();
    return {
      nodes: s.nodes.map((x) => [x.id, x.name, x.capacityBytes, x.draining, x.metaVoter]),
      refusals: s.catalog.refusals,
      settings: await api.listSettings(),
      volumes: (await api.listVolumes()).map((v) => [v.name, v.id, v.sizeBytes, v.repl, v.replicas.map((r) => r.node)]),
    };
  };
  assert.equal(await view(b!.api), await view(a!.api), "node 3's catalog is the leader's");
  const names = (await down.api.listVolumes()).map((v) => v.name);
  assert.equal(names, ["while-away"], "the volume created while it was away is there, the one deleted is not");
  await waitUntil("node 3 to drop its replica of the deleted volume", async () => /group \d+: replica removed from this node/.test(down.output));
  const installed = Number(/installed the meta leader's snapshot at index (\d+)/.exec(down.output)![1]);
  // The install is in its log: a restart starts from that snapshot (or a later one it saved since).
  assert.is(await down.stop(), 0);
  await down.start();
  await c.healthy(45000);
  const again = await waitUntil("node 3's replay count", async () => {
    const s = (await down.api.status()).catalog;
    return /catalog: loaded the snapshot at index/.test(down.output) ? s : undefined;
  });
  assert.ok(again.startSnapshotIndex >= installed, `loaded ${again.startSnapshotIndex}, installed ${installed}`);
  assert.equal(await view(down.api), await view(c.nodes[0]!.api), "and after the restart");
  for (const n of c.nodes) assert.not.match(n.output, /uncaught|AssertionError/i, `${n.host}'s log`);
});

test("a node joining after the meta log was compacted gets the catalog as a snapshot and becomes a voter", async () => {
  const host = c.nodes[0]!.host.replace(/\d+$/, (d) => String(Number(d) + 3));
  const joiner = new DaemonProcess(join(c.dir, "node4"), host, 10809, 9001, () => {}, 9002);
  joiner.extraArgs = ["--cluster-secret", c.secret, "--name", "node4", "--join", `${c.nodes[0]!.host}:9001`];
  try {
    await joiner.start();
    await waitUntil("node4 to install the catalog snapshot", async () => /catalog: installed the meta leader's snapshot at index \d+/.test(joiner.output), 30000);
    const nodes = await waitUntil("node4 to be a voter of the catalog's group", async () => {
      const n = await c.nodes[0]!.api.listNodes();
      return n.find((x) => x.name === "node4")?.metaVoter === true ? n : undefined;
    }, 30000);
    assert.is(nodes.length, 4);
    assert.equal((await joiner.api.listVolumes()).map((v) => v.name), ["while-away"]);
    assert.equal(await joiner.api.listSettings(), await c.nodes[0]!.api.listSettings());
    assert.not.match(joiner.output, /uncaught|AssertionError/i);
  } finally {
    await joiner.dispose();
  }
});

test.run();
