// Snapshots under the fault tests' checker: a 3-node cluster, clients writing
// and reading through every node, snapshots taken while a follower is down,
// after it is back, and after the volume's leader is killed. Each snapshot
// must be a cut of the acknowledged history: every block holds the write
// acknowledged last before the snapshot was asked for, or one invoked before
// it was answered (never older, never garbage), and every node that holds it
// holds the same bytes.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { waitUntil, type Cluster } from "../helpers/cluster.js";
import { checkedClusterHooks, checkerBlockBytes, decodeBlock, finishChecked, startChecked, type Checked } from "../helpers/checker.js";
import { runOk } from "../helpers/run.js";
import { tempDir } from "../helpers/tmp.js";

let c: Cluster;
checkedClusterHooks(test, 3, (x) => (c = x));

const blocks = 512;

interface Taken {
  name: string;
  /** Per block: the floor (last acknowledged or observed) when the snapshot was asked for, and the newest write invoked when it was answered. */
  floors: number[];
  invoked: number[];
}

async function snapshot(ch: Checked, at: number, name: string): Promise<Taken> {
  const floors = ch.history.blocks.map((b) => b.floor);
  await waitUntil(`snapshot ${name}`, async () => (await c.nodes[at]!.api.createSnapshot(ch.volume, { name }), true), 60000);
  const invoked = ch.history.blocks.map((b) => b.invoked);
  return { name, floors, invoked };
}

/** Reads the snapshot through every node that holds it; checks each block against its bounds and the copies against each other. */
async function check(ch: Checked, s: Taken, dir: string): Promise<string[]> {
  const holders: string[] = [];
  let first: Buffer | undefined;
  for (const [i, n] of c.nodes.entries()) {
    if (!(await n.api.snapshotHolding(ch.volume, s.name)).held) continue;
    const file = join(dir, `${s.name}-${i}.raw`);
    await runOk("nbdcopy", [n.uri(`${ch.volume}@${s.name}`), file]);
    const bytes = readFileSync(file);
    holders.push(n.host);
    if (first === undefined) first = bytes;
    else assert.ok(bytes.equals(first), `${s.name}: node ${n.host}'s copy differs from the first holder's`);
  }
  assert.ok(first !== undefined, `${s.name}: some node holds it`);
  for (let b = 0; b < blocks; b++) {
    const seq = decodeBlock(b, first!.subarray(b * checkerBlockBytes, (b + 1) * checkerBlockBytes));
    const where = `${s.name} block ${b}`;
    assert.ok(seq !== undefined, `${where}: garbage`);
    assert.ok(seq === 0 || ch.history.blocks[b]!.seqs.has(seq!), `${where}: seq ${seq} was never written to this block`);
    assert.ok(seq! >= s.floors[b]!, `${where}: STALE: seq ${seq}, older than seq ${s.floors[b]} acknowledged before the snapshot was asked for`);
    assert.ok(seq! <= s.invoked[b]!, `${where}: seq ${seq}, invoked after the snapshot was answered (newest then ${s.invoked[b]})`);
  }
  return holders;
}

test("snapshots taken while clients write and nodes are killed are cuts of the acknowledged history, the same on every holder", async () => {
  const t = tempDir("snapck");
  await c.nodes[0]!.api.createVolume({ name: "ck", sizeBytes: blocks * checkerBlockBytes, repl: 3, nodes: ["node1", "node2", "node3"] });
  const ch = await startChecked("ck", c.nodes, { blocks, warmup: 200 });
  const taken: Taken[] = [];
  taken.push(await snapshot(ch, 0, "s1"));
  await ch.load.progress(100, 30000, "writes after s1");

  // A follower down: the snapshot is taken by the two others; the node catches up from the log and takes it too.
  const leader = await c.leaderOf("ck");
  const follower = (leader + 1) % 3;
  await c.nodes[follower]!.kill();
  taken.push(await snapshot(ch, leader, "s2"));
  await ch.load.progress(100, 30000, "writes with a node down");
  await c.nodes[follower]!.start();
  await c.healthy();
  taken.push(await snapshot(ch, follower, "s3"));

  // The volume's leader killed while the load runs; a snapshot asked for right after is taken by the new leader.
  const old = await c.leaderOf("ck");
  await c.nodes[old]!.kill();
  taken.push(await snapshot(ch, (old + 1) % 3, "s4"));
  await ch.load.progress(100, 30000, "writes after the leader died");
  await c.nodes[old]!.start();
  await c.healthy();
  console.log(await finishChecked(ch, c.nodes[(old + 1) % 3]!, c.nodes));

  for (const s of taken) {
    const holders = await waitUntil(`every replica holds ${s.name}`, async () => {
      const h = await Promise.all(c.nodes.map((n) => n.api.snapshotHolding("ck", s.name)));
      return h.every((x) => x.held) ? true : undefined;
    }, 60000).then(() => check(ch, s, t.dir));
    console.log(`${s.name}: a cut of the history on ${holders.join(", ")}`);
    assert.is(holders.length, 3);
  }
  t.remove();
});

test.run();
