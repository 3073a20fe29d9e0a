// Issue 13, item 1: the catalog never crashes a node. Invalid commands are
// committed to the meta group's log of a real three-node cluster past the
// API's checks (the fault-injection hook `pxd daemon --unsafe-debug-api`),
// among them a volume of 1 byte, which no store can hold: applied unchecked,
// it would stop every node holding a replica, at every restart too (the log
// replays it). Every node applies each one as the same refusal, keeps
// serving, shows the refusals in its status, and after all three restart
// (replaying the log from its first entry) comes back and serves the data
// written before.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { startCluster, waitUntil, type Cluster } from "../helpers/cluster.js";
import { run, runOk } from "../helpers/run.js";
import { pxdEntry } from "../helpers/daemon.js";
import { catalogRefusalsMax, volumeBytesMax } from "../../src/constants.js";
import type { CatalogRefusalInfo, DebugProposeRequest } from "../../src/api/types.js";

const MiB = 1024 * 1024;
let c: Cluster;

test.before(async () => {
  c = await startCluster(3, ["--unsafe-debug-api"]);
});

test.after(async () => {
  await c.dispose();
});

const create = (fields: Record<string, unknown>): DebugProposeRequest => ({
  command: { kind: "createVolume", name: "bad", sizeBytes: MiB, repl: 2, at: 1_700_000_000_000, ...fields },
});

/** Each invalid entry and what its refusal must say. */
const invalid: [string, DebugProposeRequest, RegExp][] = [
  ["size 1 (the volume that stopped every replica node)", create({ name: "s1b", sizeBytes: 1 }), /multiple of 512 bytes \(the sector size\), not 1; 512 would do; volume "s1b" was not created and id \d+ stays unused/],
  ["size 511", create({ sizeBytes: 511, repl: 3 }), /not 511; 512 would do/],
  ["size 513", create({ sizeBytes: 513, repl: 1 }), /not 513; 512 or 1024 would do/],
  ["size 0", create({ sizeBytes: 0 }), /field "sizeBytes" must be an integer of bytes in \[1, 70368744177664\], not 0/],
  ["a negative size", create({ sizeBytes: -512 }), /not -512/],
  ["a size that is not an integer", create({ sizeBytes: 1.5 }), /not 1\.5/],
  ["a size over the maximum", create({ sizeBytes: volumeBytesMax + 512 }), /not 70368744178176/],
  ["repl 0", create({ repl: 0 }), /field "repl" must be an integer in \[1, 5\], not 0/],
  ["repl 100", create({ repl: 100 }), /field "repl" must be an integer in \[1, 5\], not 100/],
  ["a time past what a Date holds", create({ at: 9e15 }), /field "at" must be an integer/],
  ["an unknown kind", { command: { kind: "drop", name: "good" } }, /^unknown catalog command kind "drop"; the kinds are addNode/],
  ["an unknown field", create({ size: 1 }), /createVolume: unknown field "size"/],
  ["a resize to a size that is not whole sectors", { command: { kind: "resizeVolume", name: "good", sizeBytes: 64 * MiB + 1 } }, /resizeVolume: field "sizeBytes" must be a multiple of 512/],
  ["a node name with control characters", { command: { kind: "addNode", id: 99, name: "\u001b[31mx", address: "127.0.0.99", nbdPort: 1, apiPort: 1, peerPort: 1, capacityBytes: 1, labels: {}, at: 0 } }, /addNode: field "name"/],
  ["garbage msgpack", { hex: "01c1" }, /must be an object, not a value of type/],
  ["a truncated msgpack array", { hex: "01dd7fffffff" }, /not valid msgpack/],
  ["another version byte", { hex: "ff80" }, /version 255 is not 1/],
  ["a lone version byte", { hex: "01" }, /not valid msgpack/],
  ["deleting the volume that never existed", { command: { kind: "deleteVolume", name: "s1b" } }, /volume "s1b" does not exist/],
];

async function refusalsOf(i: number, atLeast: number): Promise<CatalogRefusalInfo[]> {
  return waitUntil(`node ${i + 1} to apply catalog entry ${atLeast}`, async () => {
    const s = await c.nodes[i]!.api.status();
    return s.catalog.appliedIndex >= atLeast ? s.catalog.refusals : undefined;
  });
}

test("invalid catalog entries committed past the API apply as the same refusal on every node, and no node stops", async () => {
  await c.nodes[0]!.api.createVolume({ name: "good", sizeBytes: 64 * MiB, repl: 3 });
  await runOk("qemu-io", ["-f", "raw", c.nodes[0]!.uri("good"), "-c", "write -P 0x5a 0 1M"]);
  const pids = c.nodes.map((n) => n.pid);
  let last = 0;
  for (const [what, request, message] of invalid) {
    // Through a follower as well as the leader: the hook forwards to the catalog's leader.
    const r = await c.nodes[last % 3]!.api.debugCatalogPropose(request);
    assert.is(r.ok, false, what);
    assert.match(r.error ?? "", message, what);
    last = r.index;
  }
  const seen = await Promise.all(c.nodes.map((_, i) => refusalsOf(i, last)));
  assert.is(seen[0]!.length, catalogRefusalsMax, "the latest refusals are kept, no more");
  assert.equal(seen[1], seen[0], "node 2 shows what node 1 shows");
  assert.equal(seen[2], seen[0], "node 3 shows what node 1 shows");
  assert.is(seen[0]!.at(-1)!.index, last);
  assert.equal(seen[0]!.at(-1)!.kind, "deleteVolume");
  assert.equal(c.nodes.map((n) => n.pid), pids, "every daemon is still the process it was");
  const volumes = await c.nodes[2]!.api.listVolumes();
  assert.equal(volumes.map((v) => [v.name, v.sizeBytes]), [["good", 64 * MiB]], "no invalid volume exists, and good kept its size");
  const status = await run(process.execPath, [pxdEntry, "--host", `${c.nodes[1]!.host}:9001`, "status"]);
  assert.is(status.code, 0, status.stderr);
  assert.match(status.stdout, new RegExp(`entry ${last} deleteVolume \\(not_found\\): volume "s1b" does not exist`));
});

test("all three nodes restart over that log, replay it, and serve", async () => {
  const before = (await c.nodes[0]!.api.status()).catalog;
  for (const n of c.nodes) assert.is(await n.stop(), 0, `${n.host} stopped cleanly`);
  await Promise.all(c.nodes.map((n) => n.start()));
  await c.healthy(45000);
  const after = await Promise.all(c.nodes.map((_, i) => refusalsOf(i, before.appliedIndex)));
  for (const r of after) assert.equal(r.slice(0, before.refusals.length), before.refusals, "the replay refuses the same entries with the same sentences");
  for (const n of c.nodes) {
    const out = await runOk("qemu-io", ["-f", "raw", n.uri("good"), "-c", "read -P 0x5a 0 1M", "-c", "write -P 0x61 1M 4096", "-c", "read -P 0x61 1M 4096"]);
    assert.not.match(out, /fail/i, `${n.host} serves good`);
  }
  const v = await c.nodes[1]!.api.createVolume({ name: "later", sizeBytes: 8 * MiB, repl: 3 });
  assert.is(v.id, 5, "the three unaligned creates (1, 511 and 513 bytes) keep ids 2, 3 and 4, as older pxd gave them");
  for (const n of c.nodes) assert.not.match(n.output, /uncaught|StoreError|AssertionError/i, `${n.host}'s log`);
});

test.run();
