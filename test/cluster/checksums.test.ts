// A flipped bit on disk never reaches a client (issue 13, item 2 and 3): real
// daemons, real segment files changed while the nodes are stopped (a clean
// stop: the checkpoint covers the data, so nothing re-reads it at start), a
// real NBD client, the real CLI.
//
// Volume r3 (3 replicas): blocks X, Y and Z are each damaged on two of the
// three nodes, in a different pair, so whichever node leads after the
// restart holds two damaged blocks, and every block has exactly one good
// copy. Reads return the right data (the leader repairs from the good copy);
// `pxd scrub r3` repairs the followers' damaged copies; a second scrub finds
// nothing. Volume r1 (1 replica, on node1): its damaged block fails with EIO
// and is logged with the volume, offset and segment; its other blocks and
// every other volume on node1 are still served.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { closeSync, openSync, readdirSync, readFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { ScrubResponse } from "../../src/api/types.js";
import { NbdTarget, OpError } from "../helpers/checker.js";
import { startCluster, waitUntil, type Cluster } from "../helpers/cluster.js";
import { run } from "../helpers/run.js";

const pxd = fileURLToPath(new URL("../../bin/pxd.js", import.meta.url));
const MiB = 1024 * 1024;
const block = 4096;

/** 4 KiB that say which volume and block they are, so the test finds them in a segment file. */
function marked(volume: string, b: number): Buffer {
  const out = Buffer.alloc(block);
  const text = Buffer.from(`pxd checksum test ${volume} block ${b} `);
  for (let at = 0; at + text.length <= block; at += text.length) text.copy(out, at);
  return out;
}

/** Flips a bit in every copy of `needle` in the node's segment files; returns the segment ids it was found in. */
function damage(dataDir: string, needle: Buffer): number[] {
  const dir = join(dataDir, "store");
  const found: number[] = [];
  for (const name of readdirSync(dir).filter((n) => n.startsWith("seg-"))) {
    const file = join(dir, name);
    const bytes = readFileSync(file);
    for (let at = bytes.indexOf(needle); at >= 0; at = bytes.indexOf(needle, at + 1)) {
      const fd = openSync(file, "r+");
      writeSync(fd, Buffer.from([bytes[at + 1234]! ^ 0x04]), 0, 1, at + 1234);
      closeSync(fd);
      found.push(Number(name.slice(4)));
    }
  }
  assert.ok(found.length > 0, `the data is in ${dir}`);
  return found;
}

function lastSegment(dataDir: string): number {
  return Math.max(...readdirSync(join(dataDir, "store")).filter((n) => n.startsWith("seg-")).map((n) => Number(n.slice(4))));
}

async function scrub(c: Cluster, volume: string): Promise<{ code: number | null; result: ScrubResponse }> {
  const r = await run(process.execPath, [pxd, "--host", `${c.nodes[0]!.host}:9001`, "scrub", volume, "--json"], { timeoutMs: 120000 });
  const json = r.stdout.slice(0, r.stdout.lastIndexOf("}") + 1);
  return { code: r.code, result: JSON.parse(json) as ScrubResponse };
}

function sum(r: ScrubResponse, key: "blocksDamaged" | "blocksRepaired" | "blocksUnrepaired"): number {
  return r.nodes.reduce((a, n) => a + n.volumes.reduce((b, v) => b + v[key], 0), 0);
}

test("damaged blocks: repaired from a good replica on read and by scrub; EIO on a single replica, which keeps serving the rest", async () => {
  const c = await startCluster(3, ["--scrub-interval", "0"]);
  try {
    const [n1, n2, n3] = c.nodes as [(typeof c.nodes)[0], (typeof c.nodes)[0], (typeof c.nodes)[0]];
    await n1.api.createVolume({ name: "r3", sizeBytes: 256 * MiB, repl: 3 });
    await n1.api.createVolume({ name: "r1", sizeBytes: 16 * MiB, repl: 1, nodes: ["node1"] });
    const r3 = new NbdTarget(n1.host, 10809, "r3");
    const r1 = new NbdTarget(n1.host, 10809, "r1");
    const [X, Y, Z] = [10, 20, 30];
    for (const b of [X, Y, Z]) await r3.write(b, marked("r3", b));
    for (let b = 0; b < 4; b++) await r1.write(b, marked("r1", b));
    // 70 MiB more: the first segment of every node fills up and is sealed.
    const filler = new NbdTarget(n1.host, 10809, "r3", MiB);
    for (let m = 1; m <= 70; m++) await filler.write(m, Buffer.alloc(MiB, m));
    filler.close();
    r3.close();
    r1.close();
    await waitUntil("every replica of r3 in sync", async () => {
      const v = await n1.api.inspectVolume("r3");
      return v.replicas.every((r) => r.state === "in-sync");
    });
    for (const n of c.nodes) await n.stop();

    const pairs: [number, (typeof c.nodes)[0][]][] = [
      [X, [n1, n2]],
      [Y, [n2, n3]],
      [Z, [n1, n3]],
    ];
    for (const [b, nodes] of pairs) {
      for (const n of nodes) {
        const segments = damage(n.dataDir, marked("r3", b));
        assert.ok(segments.every((s) => s < lastSegment(n.dataDir)), `block ${b} on ${n.host} sits in a sealed segment`);
      }
    }
    damage(n1.dataDir, marked("r1", 2));
    for (const n of c.nodes) await n.start();
    await c.healthy();

    // Reads return the good copy, whichever node leads.
    const read3 = new NbdTarget(n1.host, 10809, "r3");
    for (const b of [X, Y, Z]) assert.ok((await read3.read(b)).equals(marked("r3", b)), `r3 block ${b} reads right`);
    read3.close();

    // The single replica: EIO for the damaged block, the others served, and a log line that says where.
    const read1 = new NbdTarget(n1.host, 10809, "r1");
    for (const b of [0, 1, 3]) assert.ok((await read1.read(b)).equals(marked("r1", b)), `r1 block ${b} reads right`);
    try {
      await read1.read(2);
      assert.unreachable("the damaged block of a single replica was returned");
    } catch (e) {
      assert.instance(e, OpError);
      assert.is((e as OpError).errno, 5, "EIO");
    }
    read1.close();
    // A 1 MiB read across it is checked on the daemon's checksum thread (verifyOffThreadBytesMin): EIO as well.
    const large1 = new NbdTarget(n1.host, 10809, "r1", MiB);
    const largeErr = await large1.read(0).then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.instance(largeErr, OpError, "the 1 MiB read across the damaged block failed");
    assert.is((largeErr as OpError).errno, 5, "EIO");
    large1.close();
    assert.match(n1.output, /DATA DAMAGED: volume r1: 1 block\(s\) of 4096 bytes fail their checksum and cannot be repaired \(it has no other replica\); the first at volume offset 8192, log segment \d+ byte \d+/);
    const health = await n1.api.status();
    assert.is(health.health, "degraded");
    assert.ok(health.reasons.some((r) => r.startsWith("1 block(s) of r1 failed their checksum here and no replica had a good copy")), health.reasons.join("\n"));
    assert.is((await n1.api.inspectVolume("r1")).state, "damaged");

    // The scrub repairs the followers' damaged copies; a second one finds nothing.
    const first = await scrub(c, "r3");
    assert.is(first.code, 0, JSON.stringify(first.result));
    assert.is(sum(first.result, "blocksUnrepaired"), 0);
    assert.is(sum(first.result, "blocksRepaired"), sum(first.result, "blocksDamaged"));
    let repaired = 0;
    for (const n of c.nodes) repaired += (await n.api.status()).integrity.blocksRepaired;
    assert.is(repaired, 6, "every damaged copy was repaired: on read or by the scrub");
    const second = await scrub(c, "r3");
    assert.is(second.code, 0);
    assert.is(sum(second.result, "blocksDamaged"), 0, "nothing left to repair");
    assert.is(second.result.nodes.length, 3);

    // Scrubbing the single replica finds its block and says it cannot be repaired (exit code 1).
    const lone = await scrub(c, "r1");
    assert.is(lone.code, 1);
    assert.is(sum(lone.result, "blocksUnrepaired"), 1);
    const status = await run(process.execPath, [pxd, "--host", `${n1.host}:9001`, "status"]);
    assert.match(status.stdout, /checksums\s+\d+ check\(s\) found damage; \d+ block\(s\) repaired from replicas, \d+ NOT REPAIRABLE/);
    const inspect = await run(process.execPath, [pxd, "--host", `${n1.host}:9001`, "volume", "inspect", "r3"]);
    assert.match(inspect.stdout, /scrubbed\s+node\d \S+ no damage/);
  } finally {
    await c.dispose();
  }
});

test("damage found at start-up after a crash: the node starts, only the damaged volume's blocks fail, and its replicated volume catches up from the others", async () => {
  const c = await startCluster(3, ["--scrub-interval", "0"]);
  try {
    const n1 = c.nodes[0]!;
    const n2 = c.nodes[1]!;
    await n1.api.createVolume({ name: "s3", sizeBytes: 64 * MiB, repl: 3 });
    await n1.api.createVolume({ name: "s1", sizeBytes: 16 * MiB, repl: 1, nodes: ["node2"] });
    const s3 = new NbdTarget(n1.host, 10809, "s3");
    const s1 = new NbdTarget(n2.host, 10809, "s1");
    for (let b = 0; b < 8; b++) await s3.write(b, marked("s3", b));
    for (let b = 0; b < 8; b++) await s1.write(b, marked("s1", b));
    // Later commits on node 2: they prove the damaged records were acknowledged (not a torn tail).
    for (let b = 8; b < 40; b++) {
      await s3.write(b, marked("s3", b));
      await s1.write(b, marked("s1", b));
    }
    s3.close();
    s1.close();
    await waitUntil("node2 holds every write of s3", async () => (await n1.api.inspectVolume("s3")).replicas.every((r) => r.state === "in-sync"));
    await n2.kill(); // a crash: no checkpoint, so recovery replays these records
    damage(n2.dataDir, marked("s3", 3));
    damage(n2.dataDir, marked("s1", 5));
    await n2.start();
    await c.healthy();
    assert.match(n2.output, /Raft entry \d+ is damaged \(log segment \d+ byte \d+\)/);
    assert.match(n2.output, /withholds its vote until its log reaches index \d+ again/);
    // The single replica on node 2 is its group's only voter: the damaged
    // entry is applied as lost (its header names its range) and every later
    // acknowledged write is kept.
    assert.match(n2.output, /DATA DAMAGED: group \d+: this node is the group's only voter and lost entry \d+ \(4096 bytes at volume offset 20480\)/);
    // Only the damaged write's block fails.
    const read1 = new NbdTarget(n2.host, 10809, "s1");
    for (let b = 0; b < 40; b++) {
      if (b === 5) {
        const err = await read1.read(b).then(() => undefined, (e: unknown) => e);
        assert.instance(err, OpError, "the damaged block of s1 is not returned");
        assert.is((err as OpError).errno, 5);
      } else assert.ok((await read1.read(b)).equals(marked("s1", b)), `s1 block ${b}`);
    }
    read1.close();
    // The replicated volume: node 2 gets back what its log lost; every replica then holds every block, undamaged.
    await waitUntil("s3 in sync on every node", async () => (await n1.api.inspectVolume("s3")).replicas.every((r) => r.state === "in-sync"), 30000);
    const read3 = new NbdTarget(n2.host, 10809, "s3");
    for (let b = 0; b < 40; b++) assert.ok((await read3.read(b)).equals(marked("s3", b)), `s3 block ${b}`);
    read3.close();
    const scrubbed = await scrub(c, "s3");
    assert.is(scrubbed.code, 0);
    assert.is(sum(scrubbed.result, "blocksDamaged"), 0, "node 2's copy was rebuilt from the entries its leader resent");
    assert.ok(((await n2.api.status()).store["damagedRecords"] ?? 0) >= 2);
  } finally {
    await c.dispose();
  }
});

test.run();
