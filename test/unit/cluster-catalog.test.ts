// The catalog state machine (src/cluster/catalog.ts, commands.ts,
// snapshot.ts): each command's effect, each refusal with its message, hostile
// input from the log, determinism across replicas byte for byte, and snapshots.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Packr } from "msgpackr";
import { crc32c } from "../../src/base/crc32c.js";
import { Prng } from "../../src/base/prng.js";
import {
  applyCommand,
  applyEntry,
  catalogCommandVersion,
  CatalogCommandError,
  CatalogSnapshotError,
  checkCatalogInvariants,
  decodeCatalogSnapshot,
  decodeCommand,
  decodeEntry,
  encodeCatalogSnapshot,
  encodeCommand,
  encodeCommandUnchecked,
  newCatalogState,
  promisedBytes,
  replicaSetFor,
  settingValue,
  skipEntry,
  validateCommand,
  type ApplyResult,
  type CatalogCommand,
  type CatalogState,
} from "../../src/cluster/index.js";
import { catalogCommandBytesMax, catalogNodesMax, catalogRefusalsMax, catalogRevokedTokensMax, catalogTimeMsMax, checkClusterConstants, volumeBytesMax } from "../../src/constants.js";

const GiB = 1024 ** 3;
const packr = new Packr({ useRecords: false, mapsAsObjects: true });

function addNodeCmd(id: number, labels: Record<string, string> = {}, capacityBytes = 100 * GiB): CatalogCommand {
  return { kind: "addNode", id, name: `n${id}`, address: `127.0.0.${10 + id}`, nbdPort: 10809, apiPort: 9001, peerPort: 9002, capacityBytes, labels, at: 1_700_000_000_000 + id };
}

/** Applies at the next index. */
function apply(s: CatalogState, c: unknown): ApplyResult {
  return applyCommand(s, c, s.appliedIndex + 1);
}

function must(s: CatalogState, c: unknown): ApplyResult & { ok: true } {
  const r = apply(s, c);
  if (!r.ok) throw new Error(`expected success, got ${r.code}: ${r.error}`);
  return r;
}

function refused(s: CatalogState, c: unknown, code: string, message?: string | RegExp): string {
  const before = contents(s);
  const r = apply(s, c);
  if (r.ok) throw new Error(`expected a refusal for ${JSON.stringify(c)?.slice(0, 200)}`);
  assert.is(r.code, code, r.error);
  if (typeof message === "string") assert.is(r.error, message);
  else if (message) assert.match(r.error, message);
  assert.equal(contents(s), before, "a refused command leaves the catalog unchanged");
  return r.error;
}

/** The catalog's contents, without the applied index and the remembered refusals. */
function contents(s: CatalogState): Uint8Array {
  return encodeCatalogSnapshot({ ...s, appliedIndex: 0, refusals: [] });
}

function cluster(n: number, labels: (id: number) => Record<string, string> = () => ({})): CatalogState {
  const s = newCatalogState();
  for (let id = 1; id <= n; id++) must(s, addNodeCmd(id, labels(id)));
  return s;
}

test("limits agree", () => {
  checkClusterConstants();
});

test("src/cluster imports only src/base, src/constants, msgpackr and itself (it runs in the simulator)", () => {
  const dir = fileURLToPath(new URL("../../../src/cluster/", import.meta.url));
  const files = readdirSync(dir).filter((f) => f.endsWith(".ts"));
  assert.ok(files.length >= 5, `found the sources in ${dir}`);
  for (const f of files) {
    const text = readFileSync(join(dir, f), "utf8");
    for (const m of text.matchAll(/^(?:import|export)[^;]*?from "([^"]+)"/gms)) {
      const spec = m[1]!;
      assert.ok(/^(\.\/[a-z-]+\.js|\.\.\/base\/[a-z0-9-]+\.js|\.\.\/constants\.js|msgpackr)$/.test(spec), `${f} imports ${spec}`);
    }
    assert.not.match(text, /Date\.now|Math\.random|setTimeout|setInterval|process\./, `${f} uses no clock, randomness or process state`);
  }
});

// ---- nodes ----

test("addNode adds an up, undrained node with its labels; free space starts at capacity", () => {
  const s = newCatalogState();
  const r = must(s, addNodeCmd(1, { zone: "a", rack: "r1" }));
  assert.is(r.index, 1);
  assert.is(r.changed, true);
  const n = s.nodes.get(1)!;
  assert.equal(n, {
    id: 1, name: "n1", address: "127.0.0.11", nbdPort: 10809, apiPort: 9001, peerPort: 9002, capacityBytes: 100 * GiB,
    freeBytes: 100 * GiB, usedBytes: 0, labels: { rack: "r1", zone: "a" }, health: "up", draining: false,
    addedAt: 1_700_000_000_001, updatedAt: 1_700_000_000_001,
  });
  r.node!.labels["zone"] = "changed";
  assert.is(n.labels["zone"], "a", "the result is a copy");
  assert.is(s.appliedIndex, 1);
});

test("addNode retried with the same identity succeeds without change; a clash is refused", () => {
  const s = cluster(2);
  const again = must(s, addNodeCmd(1));
  assert.is(again.changed, false);
  refused(s, { ...addNodeCmd(1), name: "other" }, "exists", "node 1 is already in the cluster as n1 at 127.0.0.11:9002; remove it first or use another id");
  refused(s, { ...addNodeCmd(3), name: "n2" }, "exists", 'node name "n2" is taken by node 2; pick another name');
  refused(s, { ...addNodeCmd(3), address: "127.0.0.12" }, "exists", "node 2 (n2) already listens at 127.0.0.12:9002; give the new node its own address or peer port");
  must(s, { ...addNodeCmd(3), address: "127.0.0.12", peerPort: 9003 });
});

test("addNode past the node limit is refused", () => {
  const s = newCatalogState();
  for (let id = 1; id <= catalogNodesMax; id++) must(s, { ...addNodeCmd(id), address: `10.0.${id >> 8}.${id & 255}` });
  refused(s, { ...addNodeCmd(catalogNodesMax + 1), address: "10.9.9.9" }, "limit", `the cluster has ${catalogNodesMax} nodes, the most it holds; remove a node first`);
});

test("updateNode records what the node reports; down nodes get no new replicas", () => {
  const s = cluster(3);
  const r = must(s, { kind: "updateNode", id: 2, at: 5000, freeBytes: 40 * GiB, usedBytes: 60 * GiB, health: "down", labels: { zone: "b" } });
  assert.equal(r.node!.labels, { zone: "b" });
  const n = s.nodes.get(2)!;
  assert.equal([n.freeBytes, n.usedBytes, n.health, n.updatedAt, n.capacityBytes], [40 * GiB, 60 * GiB, "down", 5000, 100 * GiB]);
  refused(s, { kind: "createVolume", name: "db", sizeBytes: GiB, repl: 3, at: 1 }, "placement", 'volume "db" needs 3 replicas but only 2 nodes are up; add a node or use --repl 2');
  must(s, { kind: "updateNode", id: 2, at: 6000, health: "up", capacityBytes: 50 * GiB });
  // Node 2 is now the only one labelled with a zone, so zone spreading puts it second despite less space.
  assert.equal(must(s, { kind: "createVolume", name: "db", sizeBytes: GiB, repl: 3, at: 1 }).volume!.nodes, [1, 2, 3]);
  refused(s, { kind: "updateNode", id: 9, at: 1 }, "not_found", "node 9 is not in the cluster; pxd node list shows the nodes");
});

test("drainNode keeps new replicas off the node; draining false undoes it", () => {
  const s = cluster(3);
  assert.is(must(s, { kind: "drainNode", id: 1 }).changed, true);
  assert.is(must(s, { kind: "drainNode", id: 1 }).changed, false);
  assert.equal(must(s, { kind: "createVolume", name: "a", sizeBytes: GiB, repl: 2, at: 1 }).volume!.nodes, [2, 3]);
  refused(s, { kind: "createVolume", name: "b", sizeBytes: GiB, repl: 3, at: 1 }, "placement", /only 2 of the 3 nodes that are up are not draining \(draining: 1\)/);
  must(s, { kind: "drainNode", id: 1, draining: false });
  assert.equal(must(s, { kind: "createVolume", name: "b", sizeBytes: GiB, repl: 1, at: 1 }).volume!.nodes, [1]);
  refused(s, { kind: "drainNode", id: 7 }, "not_found");
});

test("removeNode is refused while the node holds replicas, unless forced; force drops it from replica sets", () => {
  const s = cluster(3);
  must(s, { kind: "createVolume", name: "db", sizeBytes: GiB, repl: 3, at: 1 });
  must(s, { kind: "createVolume", name: "logs", sizeBytes: GiB, repl: 2, nodes: [2, 3], at: 1 });
  refused(s, { kind: "removeNode", id: 2 }, "conflict", "node 2 (n2) still holds replicas of 2 volumes (db, logs); drain it and wait for re-replication, or use --force");
  must(s, { kind: "setReplicas", name: "db", nodes: [1, 3] });
  refused(s, { kind: "removeNode", id: 2 }, "conflict", "node 2 (n2) still holds replicas of 1 volume (logs); drain it and wait for re-replication, or use --force");
  must(s, { kind: "removeNode", id: 2, force: true });
  assert.is(s.nodes.has(2), false);
  assert.equal(s.volumes.get("logs")!.nodes, [3]);
  refused(s, { kind: "removeNode", id: 2 }, "not_found", "node 2 is not in the cluster; pxd node list shows the nodes");
  assert.is(checkCatalogInvariants(s), null);
});

// ---- volumes ----

test("createVolume assigns increasing ids that are never reused, and places replicas", () => {
  const s = cluster(3);
  const a = must(s, { kind: "createVolume", name: "a", sizeBytes: GiB, repl: 2, at: 42 }).volume!;
  assert.equal(a, { id: 1, name: "a", sizeBytes: GiB, repl: 2, nodes: [1, 2], zones: false, shared: false, attachments: [], owner: "", qos: { maxIops: 0, maxBandwidthBytes: 0, burstSec: 1 }, createdAt: 42, snapshots: [], nextSnapshotId: 1, snapshotEveryMs: 0, snapshotKeep: 0, encryption: null, source: null });
  must(s, { kind: "deleteVolume", name: "a" });
  const b = must(s, { kind: "createVolume", name: "a", sizeBytes: GiB, repl: 2, at: 43 }).volume!;
  assert.is(b.id, 2, "a deleted volume's id (its Raft group) is not reused");
  assert.equal(b.nodes, [1, 2], "the delete freed the promises: all tie, lower ids first");
  assert.is(s.nextVolumeId, 3);
});

test("createVolume: duplicates and impossible placements are refused in the house style", () => {
  const s = cluster(2);
  must(s, { kind: "createVolume", name: "db", sizeBytes: 10 * GiB, repl: 1, at: 1 });
  refused(s, { kind: "createVolume", name: "db", sizeBytes: GiB, repl: 1, at: 1 }, "exists", 'volume "db" already exists (id 1, 10.0 GiB); delete it first or pick another name');
  refused(s, { kind: "createVolume", name: "web", sizeBytes: GiB, repl: 3, at: 1 }, "placement", 'volume "web" needs 3 replicas but only 2 nodes are up; add a node or use --repl 2');
  refused(s, { kind: "createVolume", name: "web", sizeBytes: GiB, repl: 2, nodes: [1, 5], at: 1 }, "placement", 'volume "web": node 5 in --nodes is not in the cluster; pxd node list shows the nodes');
  refused(s, { kind: "createVolume", name: "web", sizeBytes: GiB, repl: 2, nodes: [1, 1], at: 1 }, "placement", 'volume "web": node 1 is named twice in --nodes; name each node once');
  assert.is(s.nextVolumeId, 2, "a refused create takes no id");
});

test("createVolume counts promised bytes, so creates in a row spread over nodes", () => {
  const s = cluster(4);
  const placed = ["a", "b", "c", "d"].map((name) => must(s, { kind: "createVolume", name, sizeBytes: 10 * GiB, repl: 2, at: 1 }).volume!.nodes);
  assert.equal(placed, [[1, 2], [3, 4], [1, 2], [3, 4]]);
  assert.equal([...promisedBytes(s)].sort((x, y) => x[0] - y[0]), [[1, 20 * GiB], [2, 20 * GiB], [3, 20 * GiB], [4, 20 * GiB]]);
});

test("createVolume honours zones (required and preferred) and explicit nodes", () => {
  const s = cluster(4, (id) => ({ zone: id <= 2 ? "a" : "b" }));
  assert.equal(must(s, { kind: "createVolume", name: "p", sizeBytes: GiB, repl: 2, at: 1 }).volume!.nodes, [1, 3]);
  const z = must(s, { kind: "createVolume", name: "z", sizeBytes: GiB, repl: 2, zones: true, at: 1 }).volume!;
  assert.equal([z.nodes, z.zones], [[2, 4], true]);
  refused(s, { kind: "createVolume", name: "x", sizeBytes: GiB, repl: 3, zones: true, at: 1 }, "placement", /span only 2 zones \(a, b\)/);
  assert.equal(must(s, { kind: "createVolume", name: "e", sizeBytes: GiB, repl: 2, nodes: [4, 2], at: 1 }).volume!.nodes, [4, 2]);
});

test("the overcommitPercent setting decides how far promises may pass capacity", () => {
  const s = cluster(1);
  must(s, { kind: "createVolume", name: "a", sizeBytes: 100 * GiB, repl: 1, at: 1 });
  refused(s, { kind: "createVolume", name: "b", sizeBytes: GiB, repl: 1, at: 1 }, "placement", /no node has 1.00 GiB unpromised/);
  must(s, { kind: "setSetting", key: "overcommitPercent", value: 200 });
  assert.is(settingValue(s, "overcommitPercent"), 200);
  must(s, { kind: "createVolume", name: "b", sizeBytes: 100 * GiB, repl: 1, at: 1 });
  refused(s, { kind: "createVolume", name: "c", sizeBytes: 512, repl: 1, at: 1 }, "placement");
});

test("deleteVolume removes it and frees its promised bytes; an unknown name says where to look", () => {
  const s = cluster(1);
  must(s, { kind: "createVolume", name: "db", sizeBytes: GiB, repl: 1, at: 1 });
  assert.equal(must(s, { kind: "deleteVolume", name: "db" }).volume!.name, "db");
  assert.is(promisedBytes(s).get(1), undefined);
  refused(s, { kind: "deleteVolume", name: "db" }, "not_found", 'volume "db" does not exist; pxd volume list shows the volumes');
});

test("attachVolume: one read-write host unless shared, read-only hosts beside it, one record per host; detachVolume forgets it; delete is refused while attached unless forced", () => {
  const s = cluster(1);
  must(s, { kind: "createVolume", name: "db", sizeBytes: GiB, repl: 1, at: 1 });
  must(s, { kind: "attachVolume", name: "db", host: "web1", via: "kernel", readOnly: false, at: 5 });
  must(s, { kind: "attachVolume", name: "db", host: "web1", via: "kernel", readOnly: false, device: "/dev/nbd0", node: "n1", at: 6 });
  assert.equal(s.volumes.get("db")!.attachments, [{ host: "web1", device: "/dev/nbd0", via: "kernel", readOnly: false, node: "n1", at: 6 }]);
  refused(s, { kind: "attachVolume", name: "db", host: "web2", via: "fuse", readOnly: false, at: 7 }, "conflict", /attached read-write on host web1 as \/dev\/nbd0; detach it there first, attach --read-only, or create volumes that several hosts write with --shared/);
  must(s, { kind: "attachVolume", name: "db", host: "web2", via: "fuse", readOnly: true, at: 7 });
  refused(s, { kind: "deleteVolume", name: "db" }, "conflict", /attached on web1 \(\/dev\/nbd0\), web2; detach it there first/);
  refused(s, { kind: "attachVolume", name: "nosuch", host: "web2", via: "fuse", readOnly: true, at: 7 }, "not_found");
  refused(s, { kind: "attachVolume", name: "db", host: "web 2", via: "fuse", readOnly: true, at: 7 }, "invalid", /field "host"/);
  refused(s, { kind: "attachVolume", name: "db", host: "web2", via: "iscsi", readOnly: true, at: 7 }, "invalid", /field "via" must be one of kernel, fuse/);
  refused(s, { kind: "attachVolume", name: "db", host: "web2", via: "fuse", readOnly: true, device: "/etc/passwd", at: 7 }, "invalid", /field "device"/);
  assert.is(must(s, { kind: "detachVolume", name: "db", host: "web1" }).changed, true);
  assert.is(must(s, { kind: "detachVolume", name: "db", host: "web1" }).changed, false);
  must(s, { kind: "attachVolume", name: "db", host: "web3", via: "kernel", readOnly: false, at: 8 });
  must(s, { kind: "deleteVolume", name: "db", force: true });
  must(s, { kind: "createVolume", name: "shared", sizeBytes: GiB, repl: 1, shared: true, at: 9 });
  must(s, { kind: "attachVolume", name: "shared", host: "a", via: "kernel", readOnly: false, at: 9 });
  must(s, { kind: "attachVolume", name: "shared", host: "b", via: "kernel", readOnly: false, at: 9 });
  const back = decodeCatalogSnapshot(encodeCatalogSnapshot(s));
  assert.equal(back.volumes.get("shared"), s.volumes.get("shared"));
});

test("addSnapshot records a volume's snapshot once, never reuses an id, keeps the bounds; removeSnapshot and deleteVolume drop it", () => {
  const s = cluster(2);
  must(s, { kind: "createVolume", name: "db", sizeBytes: GiB, repl: 2, at: 1 });
  const v = must(s, { kind: "addSnapshot", name: "db", snapshot: "s1", id: 1, sizeBytes: GiB, at: 5 }).volume!;
  assert.equal([v.snapshots, v.nextSnapshotId], [[{ id: 1, name: "s1", sizeBytes: GiB, createdAt: 5 }], 2]);
  assert.is(must(s, { kind: "addSnapshot", name: "db", snapshot: "s1", id: 1, sizeBytes: GiB, at: 6 }).changed, false, "the same snapshot again");
  refused(s, { kind: "addSnapshot", name: "db", snapshot: "s1", id: 2, sizeBytes: GiB, at: 6 }, "exists", 'volume db has a snapshot named "s1" already; pick another name or delete it first');
  refused(s, { kind: "addSnapshot", name: "db", snapshot: "s2", id: 1, sizeBytes: GiB, at: 6 }, "conflict", "snapshot id 1 of volume db was used before (the next is 2); retry");
  refused(s, { kind: "addSnapshot", name: "nope", snapshot: "s2", id: 3, sizeBytes: GiB, at: 6 }, "not_found");
  refused(s, { kind: "addSnapshot", name: "db", snapshot: "a@b", id: 3, sizeBytes: GiB, at: 6 }, "invalid");
  must(s, { kind: "addSnapshot", name: "db", snapshot: "s3", id: 5, sizeBytes: GiB, at: 7 });
  const back = decodeCatalogSnapshot(encodeCatalogSnapshot(s));
  assert.equal(back.volumes.get("db"), s.volumes.get("db"));
  assert.is(must(s, { kind: "removeSnapshot", name: "db", snapshot: "s1" }).changed, true);
  assert.is(must(s, { kind: "removeSnapshot", name: "db", snapshot: "s1" }).changed, false);
  refused(s, { kind: "addSnapshot", name: "db", snapshot: "s1", id: 4, sizeBytes: GiB, at: 8 }, "conflict");
  assert.equal(s.volumes.get("db")!.snapshots.map((x) => x.name), ["s3"]);
  for (let i = 0; i < 63; i++) must(s, { kind: "addSnapshot", name: "db", snapshot: `m${i}`, id: 6 + i, sizeBytes: GiB, at: 9 });
  refused(s, { kind: "addSnapshot", name: "db", snapshot: "one-more", id: 100, sizeBytes: GiB, at: 9 }, "limit");
  must(s, { kind: "deleteVolume", name: "db" });
  assert.is(checkCatalogInvariants(s), null);
});

test("a clone starts on its seeds (replicas of the source that hold the snapshot) plus placed nodes; a gone source, snapshot or seed, another size, a plain clone of an encrypted source are refused", () => {
  const s = cluster(4);
  must(s, { kind: "createVolume", name: "db", sizeBytes: GiB, repl: 2, nodes: [1, 2], at: 1 });
  const db = s.volumes.get("db")!;
  must(s, { kind: "addSnapshot", name: "db", snapshot: "s1", id: 1, sizeBytes: GiB, at: 2 });
  const source = { volumeId: db.id, snapshotId: 1, seeds: [2] };
  const c = must(s, { kind: "createVolume", name: "c1", sizeBytes: GiB, repl: 3, source, at: 3 }).volume!;
  assert.equal(c.nodes.slice(0, 1), [2], "the seed first");
  assert.is(c.nodes.length, 3);
  assert.ok(!c.nodes.slice(1).includes(2), "placed nodes besides the seed");
  assert.equal(c.source, source);
  const back = decodeCatalogSnapshot(encodeCatalogSnapshot(s));
  assert.equal(back.volumes.get("c1"), s.volumes.get("c1"), "the source survives a catalog snapshot");
  assert.equal(must(s, { kind: "createVolume", name: "c2", sizeBytes: GiB, repl: 2, nodes: [2, 4], source, at: 3 }).volume!.nodes, [2, 4]);
  refused(s, { kind: "createVolume", name: "c3", sizeBytes: GiB, repl: 2, nodes: [3, 4], source, at: 3 }, "invalid", /the clone's seeds \(nodes 2\) must be among its nodes/);
  refused(s, { kind: "createVolume", name: "c3", sizeBytes: 2 * GiB, repl: 1, source, at: 3 }, "invalid", /a clone of db@s1 is its size, 1\.00 GiB/);
  refused(s, { kind: "createVolume", name: "c3", sizeBytes: GiB, repl: 1, source: { ...source, seeds: [3] }, at: 3 }, "conflict", "node(s) 3 no longer hold replicas of volume db; try the clone again");
  refused(s, { kind: "createVolume", name: "c3", sizeBytes: GiB, repl: 1, source: { ...source, seeds: [1, 2] }, at: 3 }, "invalid", "a clone of 1 replica(s) cannot start on 2 nodes");
  refused(s, { kind: "createVolume", name: "c3", sizeBytes: GiB, repl: 1, source: { ...source, snapshotId: 7 }, at: 3 }, "not_found", "the clone's source snapshot (id 7 of volume db) was deleted");
  refused(s, { kind: "createVolume", name: "c3", sizeBytes: GiB, repl: 1, source, encryption: { cipher: "aes-256-xts", wrappedKey: "01" + "ab".repeat(92) }, at: 3 }, "invalid", "a clone of db@s1 is plain, as its source");
  refused(s, { kind: "createVolume", name: "c3", sizeBytes: GiB, repl: 1, source: { ...source, seeds: [2, 2] }, at: 3 }, "invalid", /names a node twice/);
  must(s, { kind: "deleteVolume", name: "db" });
  refused(s, { kind: "createVolume", name: "c3", sizeBytes: GiB, repl: 1, source, at: 3 }, "not_found", `the clone's source volume (id ${db.id}) was deleted`);
  assert.is(checkCatalogInvariants(s), null);
});

test("an encrypted volume keeps its cipher and wrapped key through a snapshot; a bad record or a size that is not whole 4 KiB units is refused", () => {
  const s = cluster(2);
  const encryption = { cipher: "aes-256-xts", wrappedKey: "01" + "ab".repeat(92) };
  assert.equal(must(s, { kind: "createVolume", name: "sec", sizeBytes: GiB, repl: 1, encryption, at: 1 }).volume!.encryption, encryption);
  const back = decodeCatalogSnapshot(encodeCatalogSnapshot(s));
  assert.equal(back.volumes.get("sec"), s.volumes.get("sec"));
  refused(s, { kind: "createVolume", name: "x", sizeBytes: GiB, repl: 1, encryption: { ...encryption, cipher: "aes-128-ecb" }, at: 1 }, "invalid", /field "encryption.cipher" must be one of aes-256-xts/);
  refused(s, { kind: "createVolume", name: "x", sizeBytes: GiB, repl: 1, encryption: { ...encryption, wrappedKey: "00" }, at: 1 }, "invalid", /field "encryption.wrappedKey" must be 186 lower-case hex digits/);
  refused(s, { kind: "createVolume", name: "x", sizeBytes: GiB, repl: 1, encryption: { ...encryption, extra: 1 }, at: 1 }, "invalid", /must be an object of "cipher" and "wrappedKey"/);
  refused(s, { kind: "createVolume", name: "x", sizeBytes: GiB + 512, repl: 1, encryption, at: 1 }, "invalid", /an encrypted volume's size is a multiple of 4096 bytes \(its data unit\); 1073745920 would do/);
  refused(s, { kind: "resizeVolume", name: "sec", sizeBytes: 2 * GiB + 512 }, "invalid", /cannot grow volume "sec": the new size is 2147484160 bytes, and an encrypted volume's size is a multiple of 4096 bytes/);
  must(s, { kind: "resizeVolume", name: "sec", sizeBytes: 2 * GiB });
  assert.is(checkCatalogInvariants(s), null);
});

test("resizeVolume grows only, and only where the replicas have room", () => {
  const s = cluster(2);
  must(s, { kind: "createVolume", name: "db", sizeBytes: 10 * GiB, repl: 2, at: 1 });
  assert.is(must(s, { kind: "resizeVolume", name: "db", sizeBytes: 20 * GiB }).volume!.sizeBytes, 20 * GiB);
  assert.is(must(s, { kind: "resizeVolume", name: "db", sizeBytes: 20 * GiB }).changed, false);
  refused(s, { kind: "resizeVolume", name: "db", sizeBytes: 5 * GiB }, "conflict", 'volume "db" is 20.0 GiB (21474836480 bytes) and shrinking a volume is not supported (asked for 5.00 GiB); create a new volume and copy the data to shrink');
  refused(
    s,
    { kind: "resizeVolume", name: "db", sizeBytes: 200 * GiB },
    "placement",
    'cannot grow volume "db" to 200 GiB: its replica on node 1 (n1) has 80.0 GiB unpromised and needs 180 GiB more; add capacity, move the replica or raise the setting overcommitPercent',
  );
  assert.is(must(s, { kind: "resizeVolume", name: "db", sizeBytes: 100 * GiB }).volume!.sizeBytes, 100 * GiB);
  refused(s, { kind: "resizeVolume", name: "nope", sizeBytes: GiB }, "not_found");
});

test("QoS limits: set at create, changed field by field by setVolumeQos (0 removes one), checked, and kept by a snapshot", () => {
  const s = cluster(2);
  const v = must(s, { kind: "createVolume", name: "db", sizeBytes: GiB, repl: 1, maxIops: 200, at: 1 }).volume!;
  assert.equal(v.qos, { maxIops: 200, maxBandwidthBytes: 0, burstSec: 1 });
  const r = must(s, { kind: "setVolumeQos", name: "db", maxBandwidthBytes: 100 * 1024 * 1024, burstSec: 5 });
  assert.is(r.changed, true);
  assert.equal(s.volumes.get("db")!.qos, { maxIops: 200, maxBandwidthBytes: 100 * 1024 * 1024, burstSec: 5 });
  assert.is(must(s, { kind: "setVolumeQos", name: "db", maxIops: 200 }).changed, false);
  must(s, { kind: "setVolumeQos", name: "db", maxIops: 0 });
  assert.equal(s.volumes.get("db")!.qos, { maxIops: 0, maxBandwidthBytes: 100 * 1024 * 1024, burstSec: 5 });
  assert.equal(decodeCatalogSnapshot(encodeCatalogSnapshot(s)).volumes.get("db")!.qos, s.volumes.get("db")!.qos);
  refused(s, { kind: "setVolumeQos", name: "nope", maxIops: 1 }, "not_found");
  refused(s, { kind: "setVolumeQos", name: "db" }, "invalid", "setVolumeQos: name at least one of maxIops, maxBandwidthBytes, burstSec");
  refused(s, { kind: "setVolumeQos", name: "db", maxBandwidthBytes: 100 }, "invalid", 'setVolumeQos: field "maxBandwidthBytes" must be 0 (no limit) or at least 4096 bytes a second, not 100');
  refused(s, { kind: "setVolumeQos", name: "db", burstSec: 0 }, "invalid", /field "burstSec" must be an integer of seconds in \[1, 3600\]/);
  refused(s, { kind: "createVolume", name: "x", sizeBytes: GiB, repl: 1, maxIops: 1.5, at: 1 }, "invalid", /field "maxIops"/);
});

test("setReplicas replaces the replica set, checks the nodes, and honours expect as compare-and-set", () => {
  const s = cluster(4);
  must(s, { kind: "createVolume", name: "db", sizeBytes: GiB, repl: 2, at: 1 });
  const r = must(s, { kind: "setReplicas", name: "db", nodes: [1, 2, 4], expect: [1, 2] });
  assert.equal([r.volume!.nodes, r.volume!.repl, r.changed], [[1, 2, 4], 2, true]);
  refused(s, { kind: "setReplicas", name: "db", nodes: [1, 4], expect: [1, 2] }, "conflict", 'volume "db" has replicas on [1, 2, 4], not [1, 2] as expected; read the volume again and retry');
  refused(s, { kind: "setReplicas", name: "db", nodes: [1, 9] }, "not_found", 'volume "db": node 9 is not in the cluster; pxd node list shows the nodes');
  refused(s, { kind: "setReplicas", name: "db", nodes: [1, 1] }, "invalid", 'volume "db": node 1 is named twice in the replica set; name each node once');
  assert.equal(must(s, { kind: "setReplicas", name: "db", nodes: [4, 1, 3], repl: 3 }).volume!.repl, 3);
  assert.is(must(s, { kind: "setReplicas", name: "db", nodes: [4, 1, 3] }).changed, false);
  refused(s, { kind: "setReplicas", name: "x", nodes: [1] }, "not_found");
});

test("replicaSetFor (ha-update): more replicas go to the emptiest other nodes; fewer drop down, then draining, then the fullest nodes", () => {
  const s = cluster(4);
  must(s, { kind: "createVolume", name: "big", sizeBytes: 50 * GiB, repl: 1, nodes: [3], at: 1 });
  must(s, { kind: "createVolume", name: "db", sizeBytes: GiB, repl: 1, nodes: [1], at: 2 });
  assert.equal(replicaSetFor(s, "db", 1), { nodes: [1] }, "same count: same set");
  assert.equal(replicaSetFor(s, "db", 3), { nodes: [1, 2, 4] }, "node 3 holds the most: last choice");
  const grown = replicaSetFor(s, "db", 5);
  assert.ok("error" in grown && /cannot add 4 replica\(s\) to volume "db"/.test(grown.error), JSON.stringify(grown));
  must(s, { kind: "setReplicas", name: "db", nodes: [1, 2, 3, 4], repl: 4 });
  assert.equal(replicaSetFor(s, "db", 3), { nodes: [1, 2, 4] }, "the fullest node goes first");
  must(s, { kind: "updateNode", id: 2, health: "down", at: 3 });
  must(s, { kind: "drainNode", id: 4 });
  assert.equal(replicaSetFor(s, "db", 2), { nodes: [1, 3] }, "a down node, then a draining one, before any healthy node");
  assert.ok("error" in replicaSetFor(s, "nope", 2));
});

test("replicaSetFor adds replicas in zones the volume is not in: required with --zones, preferred without", () => {
  const zone = (id: number): Record<string, string> => ({ zone: id <= 2 ? "a" : id <= 4 ? "b" : "c" });
  const s = cluster(5, zone);
  must(s, { kind: "createVolume", name: "z", sizeBytes: GiB, repl: 2, nodes: [1, 3], zones: true, at: 1 });
  assert.equal(replicaSetFor(s, "z", 3), { nodes: [1, 3, 5] }, "zone c is the only one left");
  const four = replicaSetFor(s, "z", 4);
  assert.ok("error" in four && /in zones it is not in yet/.test(four.error), JSON.stringify(four));
  must(s, { kind: "createVolume", name: "p", sizeBytes: GiB, repl: 2, nodes: [1, 2], at: 2 });
  const grown = replicaSetFor(s, "p", 4);
  assert.ok(!("error" in grown) && grown.nodes.slice(2).every((id) => id >= 3), `zones b and c before a third replica in zone a: ${JSON.stringify(grown)}`);
  assert.ok(!("error" in replicaSetFor(s, "p", 5)), "without --zones a zone may hold two replicas when nothing else is left");
  // Replacing a dead replica: its zone is free again.
  must(s, { kind: "createVolume", name: "r", sizeBytes: GiB, repl: 3, nodes: [1, 3, 5], zones: true, at: 3 });
  const replaced = replicaSetFor(s, "r", 4, [3]);
  assert.equal(replaced, { nodes: [1, 3, 5, 4] }, "node 3's replacement may sit in zone b, node 3's own");
});

test("setSetting validates key and value; null returns to the default", () => {
  const s = newCatalogState();
  assert.is(settingValue(s, "defaultRepl"), 1);
  must(s, { kind: "setSetting", key: "defaultRepl", value: 3 });
  must(s, { kind: "setSetting", key: "clusterName", value: "prod-1" });
  assert.equal([settingValue(s, "defaultRepl"), settingValue(s, "clusterName")], [3, "prod-1"]);
  assert.is(must(s, { kind: "setSetting", key: "defaultRepl", value: 3 }).changed, false);
  must(s, { kind: "setSetting", key: "defaultRepl", value: null });
  assert.is(settingValue(s, "defaultRepl"), 1);
  refused(s, { kind: "setSetting", key: "replicas", value: 3 }, "invalid", 'setSetting: unknown setting "replicas"; the settings are overcommitPercent, defaultRepl, resyncBandwidthBytesPerSec, clusterName');
  refused(s, { kind: "setSetting", key: "defaultRepl", value: 9 }, "invalid", 'setSetting: setting "defaultRepl" must be an integer in [1, 5], not 9');
  refused(s, { kind: "setSetting", key: "overcommitPercent", value: "200" }, "invalid", /must be an integer in \[100, 10000\], not the string "200"/);
  refused(s, { kind: "setSetting", key: "toString", value: 1 }, "invalid", /unknown setting "toString"/);
  // The rebuild bandwidth: -1 (each node's flag) by default, 0 for no limit.
  assert.is(settingValue(s, "resyncBandwidthBytesPerSec"), -1);
  must(s, { kind: "setSetting", key: "resyncBandwidthBytesPerSec", value: 0 });
  refused(s, { kind: "setSetting", key: "resyncBandwidthBytesPerSec", value: -2 }, "invalid", /must be an integer in \[-1, 1099511627776\], not -2/);
});

// ---- hostile input ----

const hostile: unknown[] = [
  undefined, null, 0, "addNode", [], [{ kind: "addNode" }], new Uint8Array(4), new Date(0), new Map([["kind", "deleteVolume"]]), 10n,
  {}, { kind: "nope" }, { kind: "__proto__" }, { kind: "toString" }, { kind: 1 }, { kind: null },
  { kind: "deleteVolume" }, { kind: "deleteVolume", name: "" }, { kind: "deleteVolume", name: "x".repeat(64) },
  { kind: "deleteVolume", name: "x".repeat(1_000_000) }, { kind: "deleteVolume", name: "../etc" }, { kind: "deleteVolume", name: "a b" },
  { kind: "deleteVolume", name: "db", extra: 1 }, { kind: "deleteVolume", name: ["db"] }, { kind: "deleteVolume", name: { toString: () => "db" } },
  { kind: "createVolume", name: "db", sizeBytes: -1, repl: 1, at: 0 }, { kind: "createVolume", name: "db", sizeBytes: NaN, repl: 1, at: 0 },
  { kind: "createVolume", name: "db", sizeBytes: Infinity, repl: 1, at: 0 }, { kind: "createVolume", name: "db", sizeBytes: 1.5, repl: 1, at: 0 },
  { kind: "createVolume", name: "db", sizeBytes: volumeBytesMax + 1, repl: 1, at: 0 }, { kind: "createVolume", name: "db", sizeBytes: "1G", repl: 1, at: 0 },
  { kind: "createVolume", name: "db", sizeBytes: 2n ** 70n, repl: 1, at: 0 }, { kind: "createVolume", name: "db", sizeBytes: 512, repl: 0, at: 0 },
  { kind: "createVolume", name: "db", sizeBytes: 512, repl: 6, at: 0 }, { kind: "createVolume", name: "db", sizeBytes: 512, repl: 1, at: -1 },
  { kind: "createVolume", name: "db", sizeBytes: 512, repl: 1 }, { kind: "createVolume", name: "db", sizeBytes: 512, repl: 1, at: 0, nodes: [] },
  { kind: "createVolume", name: "db", sizeBytes: 512, repl: 1, at: 0, nodes: [1, 2, 3, 4, 5, 6] }, { kind: "createVolume", name: "db", sizeBytes: 512, repl: 1, at: 0, nodes: [0] },
  { kind: "createVolume", name: "db", sizeBytes: 512, repl: 1, at: 0, nodes: ["1"] }, { kind: "createVolume", name: "db", sizeBytes: 512, repl: 1, at: 0, nodes: new Array(1e6).fill(1) },
  { kind: "createVolume", name: "db", sizeBytes: 512, repl: 1, at: 0, zones: "yes" },
  { kind: "addNode", id: 1, name: "n", address: "h", nbdPort: 0, apiPort: 1, peerPort: 1, capacityBytes: 1, labels: {}, at: 0 },
  { kind: "addNode", id: 1, name: "n", address: "h", nbdPort: 1, apiPort: 1, peerPort: 65536, capacityBytes: 1, labels: {}, at: 0 },
  { kind: "addNode", id: 1, name: "n", address: "h; rm -rf /", nbdPort: 1, apiPort: 1, peerPort: 1, capacityBytes: 1, labels: {}, at: 0 },
  { kind: "addNode", id: 1, name: "n", address: "h".repeat(254), nbdPort: 1, apiPort: 1, peerPort: 1, capacityBytes: 1, labels: {}, at: 0 },
  { kind: "addNode", id: 1, name: "n", address: "h", nbdPort: 1, apiPort: 1, peerPort: 1, capacityBytes: 2 ** 60, labels: {}, at: 0 },
  { kind: "addNode", id: 1, name: "n", address: "h", nbdPort: 1, apiPort: 1, peerPort: 1, capacityBytes: 1, labels: [], at: 0 },
  { kind: "addNode", id: 1, name: "n", address: "h", nbdPort: 1, apiPort: 1, peerPort: 1, capacityBytes: 1, labels: { zone: 1 }, at: 0 },
  { kind: "addNode", id: 1, name: "n", address: "h", nbdPort: 1, apiPort: 1, peerPort: 1, capacityBytes: 1, labels: { Zone: "a" }, at: 0 },
  { kind: "addNode", id: 1, name: "n", address: "h", nbdPort: 1, apiPort: 1, peerPort: 1, capacityBytes: 1, labels: { zone: "a".repeat(64) }, at: 0 },
  { kind: "addNode", id: 1, name: "n", address: "h", nbdPort: 1, apiPort: 1, peerPort: 1, capacityBytes: 1, labels: Object.fromEntries([...Array(17).keys()].map((i) => [`k${i}`, "v"])), at: 0 },
  { kind: "addNode", id: 0, name: "n", address: "h", nbdPort: 1, apiPort: 1, peerPort: 1, capacityBytes: 1, labels: {}, at: 0 },
  { kind: "addNode", id: 2 ** 53, name: "n", address: "h", nbdPort: 1, apiPort: 1, peerPort: 1, capacityBytes: 1, labels: {}, at: 0 },
  { kind: "updateNode", id: 1, at: 0, health: "sick" }, { kind: "updateNode", id: 1, at: 0, freeBytes: -5 }, { kind: "updateNode", id: 1 },
  { kind: "removeNode", id: 1, force: "yes" }, { kind: "drainNode", id: "1" }, { kind: "resizeVolume", name: "db", sizeBytes: 0 },
  { kind: "setReplicas", name: "db", nodes: 3 }, { kind: "setReplicas", name: "db", nodes: [1], expect: [] }, { kind: "setReplicas", name: "db", nodes: [1], repl: 0 },
  { kind: "setSetting", key: "overcommitPercent" }, { kind: "setSetting", key: "clusterName", value: "x".repeat(100_000) }, { kind: "setSetting", key: "__proto__", value: 1 },
  JSON.parse('{"kind":"deleteVolume","__proto__":{"name":"db"}}'), Object.assign(Object.create({ name: "db" }), { kind: "deleteVolume" }),
];

test("hostile commands are refused as invalid, the catalog unchanged, and nothing throws", () => {
  const s = cluster(3);
  must(s, { kind: "createVolume", name: "db", sizeBytes: GiB, repl: 3, at: 1 });
  for (const [i, c] of hostile.entries()) {
    const error = refused(s, c, "invalid");
    assert.ok(error.length < 400, `message ${i} stays short: ${error.slice(0, 100)}…`);
  }
  assert.is(s.appliedIndex, 4 + hostile.length, "refused commands still advance the applied index");
});

test("field errors name the field, the rule and what was given", () => {
  const s = cluster(1);
  refused(s, { kind: "createVolume", name: "db", sizeBytes: -1, repl: 1, at: 0 }, "invalid", `createVolume: field "sizeBytes" must be an integer of bytes in [1, ${volumeBytesMax}], not -1`);
  refused(s, { kind: "createVolume", name: "db", sizeBytes: NaN, repl: 1, at: 0 }, "invalid", /field "sizeBytes" must be .* not NaN/);
  refused(s, { kind: "deleteVolume", name: "x".repeat(1000) }, "invalid", /field "name" must be .* \(1-63 characters\), not the string "x{40}…"$/);
  refused(s, { kind: "deleteVolume", name: "db", forced: true }, "invalid", 'deleteVolume: unknown field "forced"; the fields are name, force');
  refused(s, { kind: "drop" }, "invalid", /^unknown catalog command kind "drop"; the kinds are addNode, updateNode/);
  refused(s, { kind: "createVolume", name: "db", sizeBytes: 2n ** 70n, repl: 1, at: 0 }, "invalid", /not the 64-bit integer 1180591620717411303424/);
});

test("a volume size that is not whole sectors is refused when proposed and when applied; the store never sees it", () => {
  for (const size of [1, 511, 513, 1024 ** 3 + 1, volumeBytesMax - 1]) {
    assert.throws(() => encodeCommand({ kind: "createVolume", name: "db", sizeBytes: size, repl: 1, at: 0 }), /must be a multiple of 512 bytes \(the sector size\)/);
    assert.throws(() => encodeCommand({ kind: "resizeVolume", name: "db", sizeBytes: size }), /must be a multiple of 512 bytes/);
  }
  const s = cluster(1);
  must(s, { kind: "createVolume", name: "db", sizeBytes: GiB, repl: 1, at: 0 });
  refused(s, { kind: "resizeVolume", name: "db", sizeBytes: GiB + 1 }, "invalid", `resizeVolume: field "sizeBytes" must be a multiple of 512 bytes (the sector size), not ${GiB + 1}; ${GiB} or ${GiB + 512} would do`);
  refused(s, { kind: "createVolume", name: "db", sizeBytes: 0, repl: 1, at: 0 }, "invalid", /field "sizeBytes" must be an integer of bytes in \[1, /);
  assert.ok(encodeCommand({ kind: "createVolume", name: "db", sizeBytes: 512, repl: 1, at: 0 }), "one sector is a volume");
});

test("an unaligned create from an existing log is refused but keeps the id it took, so later volumes keep theirs", () => {
  // What older pxd committed: the size rule was not checked, and such a create took an id when it was placed.
  const s = cluster(2);
  assert.is(must(s, { kind: "createVolume", name: "a", sizeBytes: GiB, repl: 1, at: 0 }).volume!.id, 1);
  const r = apply(s, { kind: "createVolume", name: "s1b", sizeBytes: 1, repl: 2, at: 0 });
  assert.equal([r.ok, r.ok ? "" : r.code, r.ok ? "" : r.error], [false, "invalid", 'createVolume: field "sizeBytes" must be a multiple of 512 bytes (the sector size), not 1; 512 would do; volume "s1b" was not created and id 2 stays unused']);
  assert.not.ok(s.volumes.has("s1b"), "the volume never existed");
  // One that would not have been placed took no id then, and takes none now.
  refused(s, { kind: "createVolume", name: "big", sizeBytes: 513, repl: 3, at: 0 }, "placement", /needs 3 replicas but only 2 nodes/);
  refused(s, { kind: "createVolume", name: "a", sizeBytes: 513, repl: 1, at: 0 }, "exists");
  assert.is(must(s, { kind: "createVolume", name: "b", sizeBytes: GiB, repl: 1, at: 0 }).volume!.id, 3);
  refused(s, { kind: "deleteVolume", name: "s1b" }, "not_found");
  assert.is(checkCatalogInvariants(s), null);
});

test("refusals are remembered in the catalog, the latest catalogRefusalsMax, the same from objects and from log bytes", () => {
  const a = cluster(1);
  const b = cluster(1);
  const entries: Uint8Array[] = [
    Uint8Array.of(1, 0xc1),
    encodeCommandUnchecked({ kind: "createVolume", name: "x", sizeBytes: 511, repl: 1, at: 0 }),
    encodeCommandUnchecked({ kind: "drop" }),
    encodeCommand({ kind: "deleteVolume", name: "nothing" }),
  ];
  for (let i = 0; i < catalogRefusalsMax + 3; i++) entries.push(encodeCommandUnchecked({ kind: "createVolume", name: `v${i}`, sizeBytes: 512, repl: 9, at: 0 }));
  for (const e of entries) {
    const ra = applyEntry(a, e, a.appliedIndex + 1);
    const d = decodeEntry(e);
    const rb = d.ok ? applyCommand(b, d.value, b.appliedIndex + 1) : applyEntry(b, e, b.appliedIndex + 1);
    assert.equal(rb, ra);
  }
  assert.is(a.refusals.length, catalogRefusalsMax);
  assert.equal(a.refusals, b.refusals);
  assert.equal(encodeCatalogSnapshot(a), encodeCatalogSnapshot(b));
  const last = a.refusals.at(-1)!;
  assert.equal(last, { index: a.appliedIndex, kind: "createVolume", code: "invalid", error: 'createVolume: field "repl" must be an integer in [1, 5], not 9' });
  const early = cluster(1);
  for (const e of entries.slice(0, 4)) applyEntry(early, e, early.appliedIndex + 1);
  assert.equal(early.refusals.map((r) => [r.kind, r.code]), [["unknown", "invalid"], ["createVolume", "invalid"], ["unknown", "invalid"], ["deleteVolume", "not_found"]]);
  assert.equal(decodeCatalogSnapshot(encodeCatalogSnapshot(early)).refusals, early.refusals, "refusals survive a snapshot");
  const stale = applyCommand(early, { kind: "drop" }, 1);
  assert.is(stale.ok ? "" : stale.code, "stale");
  assert.is(early.refusals.length, 4, "a replay is not a refusal");
});

test("a command time past what a Date holds is refused: the API turns createdAt into an ISO string", () => {
  const s = cluster(1);
  refused(s, { kind: "createVolume", name: "late", sizeBytes: GiB, repl: 1, at: catalogTimeMsMax + 1 }, "invalid", /field "at" must be an integer \(milliseconds since the epoch\) in \[0, 8640000000000000\]/);
  const v = must(s, { kind: "createVolume", name: "last", sizeBytes: GiB, repl: 1, at: catalogTimeMsMax }).volume!;
  assert.is(new Date(v.createdAt).toISOString(), "+275760-09-13T00:00:00.000Z");
});

test("a replayed or out-of-order index is ignored without touching the catalog", () => {
  const s = cluster(1);
  const before = encodeCatalogSnapshot(s);
  const r = applyCommand(s, { kind: "deleteVolume", name: "x" }, 1);
  assert.equal([r.ok, r.ok ? "" : r.code], [false, "stale"]);
  assert.is(applyCommand(s, addNodeCmd(5), NaN).ok, false);
  assert.equal(encodeCatalogSnapshot(s), before);
  assert.is(applyEntry(s, encodeCommand(addNodeCmd(5)), 1).ok, false);
  assert.equal(encodeCatalogSnapshot(s), before);
});

// ---- encoding ----

test("commands round-trip through encodeCommand/decodeCommand, normalized", () => {
  const c: CatalogCommand = { at: 7, labels: { zone: "a", rack: "r" }, capacityBytes: 5, peerPort: 3, apiPort: 2, nbdPort: 1, address: "::1", name: "x", id: 9, kind: "addNode" };
  const bytes = encodeCommand(c);
  assert.is(bytes[0], catalogCommandVersion);
  const d = decodeCommand(bytes);
  assert.ok(d.ok);
  if (d.ok) assert.equal(Object.keys(d.command), ["kind", "id", "name", "address", "nbdPort", "apiPort", "peerPort", "capacityBytes", "labels", "at"]);
  if (d.ok && d.command.kind === "addNode") assert.equal(Object.keys(d.command.labels), ["rack", "zone"]);
  const same = encodeCommand({ ...addNodeCmd(9), ...c, labels: { rack: "r", zone: "a" } });
  assert.equal(same, bytes, "equal meaning, equal bytes");
  const withUndefined = encodeCommand({ kind: "createVolume", name: "v", sizeBytes: 512, repl: 1, at: 0, nodes: undefined, zones: undefined } as CatalogCommand);
  assert.equal(withUndefined, encodeCommand({ kind: "createVolume", name: "v", sizeBytes: 512, repl: 1, at: 0 }));
});

test("encodeCommand throws for an invalid command; decodeCommand never throws", () => {
  assert.throws(() => encodeCommand({ kind: "deleteVolume", name: "" }), (e: Error) => e instanceof CatalogCommandError && /field "name"/.test(e.message));
  const body = packr.pack({ kind: "deleteVolume", name: "db" });
  const cases: [Uint8Array, RegExp][] = [
    [new Uint8Array(0), /empty/],
    [Uint8Array.of(2, ...body), /version 2 is not 1/],
    [new Uint8Array(catalogCommandBytesMax + 1).fill(1), /over the 65536-byte limit/],
    [Uint8Array.of(1, 0xc1), /must be an object, not a value of type/],
    [Uint8Array.of(1, 0x92, 1), /not valid msgpack/],
    [Uint8Array.of(1, ...body, 0), /not valid msgpack/],
    [Uint8Array.of(1, 0xdd, 0xff, 0xff, 0xff, 0xff), /not valid msgpack/],
    [Uint8Array.of(1, 0xc6, 0x7f, 0xff, 0xff, 0xff), /not valid msgpack/],
    [Uint8Array.of(1, ...new Array(10000).fill(0x91), 1), /.+/],
    [Uint8Array.of(1, 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff), /must be an object, not the 64-bit integer/],
  ];
  for (const [bytes, re] of cases) {
    const d = decodeCommand(bytes);
    assert.is(d.ok, false);
    if (!d.ok) assert.match(d.error, re);
  }
  assert.ok(decodeCommand(Uint8Array.of(1, ...body)).ok);
});

test("random bytes in the log never crash the applier", () => {
  const rng = new Prng(99);
  const s = cluster(2);
  const before = contents({ ...s, nextVolumeId: 1 });
  const valid = encodeCommand({ kind: "createVolume", name: "db", sizeBytes: GiB, repl: 2, at: 1 });
  for (let i = 0; i < 3000; i++) {
    let bytes: Uint8Array;
    if (rng.chance(0.5)) {
      bytes = new Uint8Array(1 + rng.int(64));
      rng.fill(bytes);
      bytes[0] = 1;
    } else {
      bytes = Uint8Array.from(valid);
      for (let k = 0; k < 1 + rng.int(3); k++) bytes[1 + rng.int(bytes.length - 1)] = rng.int(256);
    }
    const r = applyEntry(s, bytes, s.appliedIndex + 1);
    // A mutation that still decodes to a valid create is fine; undo it.
    if (r.ok) must(s, { kind: "deleteVolume", name: r.volume?.name ?? "" });
  }
  assert.equal(contents({ ...s, nextVolumeId: 1 }), before);
  assert.is(checkCatalogInvariants(s), null);
});

// ---- determinism and snapshots ----

/** A random command: mostly plausible (small id and name pools, so they interact), some hostile. */
function randomCommand(rng: Prng): unknown {
  const id = 1 + rng.int(7);
  const name = ["db", "logs", "web", "cache", "q"][rng.int(5)]!;
  const size = (1 + rng.int(40)) * GiB;
  const zones = ["a", "b", "c"];
  const labels = (): Record<string, string> => (rng.chance(0.7) ? { zone: zones[rng.int(3)]!, rack: `r${rng.int(3)}` } : {});
  const ids = (): number[] => Array.from({ length: 1 + rng.int(3) }, () => 1 + rng.int(8));
  const host = ["h1", "h2", "h3"][rng.int(3)]!;
  switch (rng.int(16)) {
    case 0:
    case 1:
      return { ...addNodeCmd(id, labels(), (1 + rng.int(20)) * 10 * GiB), at: rng.int(1e9) };
    case 2:
      return { kind: "updateNode", id, at: rng.int(1e9), health: rng.chance(0.3) ? "down" : "up", freeBytes: rng.int(1e12), ...(rng.chance(0.2) ? { labels: labels() } : {}) };
    case 3:
      return { kind: "removeNode", id, force: rng.chance(0.3) };
    case 4:
      return { kind: "drainNode", id, draining: rng.chance(0.6) };
    case 5:
    case 6:
      return { kind: "createVolume", name, sizeBytes: size, repl: 1 + rng.int(3), at: rng.int(1e9), ...(rng.chance(0.2) ? { zones: true } : {}), ...(rng.chance(0.2) ? { shared: true } : {}), ...(rng.chance(0.15) ? { nodes: ids() } : {}) };
    case 7:
      return { kind: "deleteVolume", name, ...(rng.chance(0.5) ? { force: true } : {}) };
    case 8:
      return { kind: "resizeVolume", name, sizeBytes: size };
    case 9:
      return { kind: "setReplicas", name, nodes: ids(), ...(rng.chance(0.3) ? { repl: 1 + rng.int(3) } : {}) };
    case 11:
    case 12:
      return { kind: "attachVolume", name, host, via: rng.chance(0.5) ? "kernel" : "fuse", readOnly: rng.chance(0.3), at: rng.int(1e9), ...(rng.chance(0.7) ? { device: `/dev/nbd${rng.int(4)}`, node: `n${id}` } : {}) };
    case 13:
      return { kind: "detachVolume", name, host };
    case 10:
      return { kind: "setSetting", key: ["overcommitPercent", "defaultRepl", "clusterName", "bogus"][rng.int(4)], value: rng.chance(0.2) ? null : [100 + rng.int(300), 1 + rng.int(5), "c1"][rng.int(3)] };
    default:
      return hostile[rng.int(hostile.length)];
  }
}

/** Whether a command survives msgpack unchanged (some hostile values, like undefined or a Map, do not). */
function encodable(c: unknown): Uint8Array | undefined {
  const v = validateCommand(c);
  return v.ok ? encodeCommand(v.command) : undefined;
}

test("determinism: two replicas applying the same random sequence agree on every result and every snapshot byte", () => {
  for (let seed = 1; seed <= 30; seed++) {
    const rng = new Prng(seed);
    const a = newCatalogState();
    const b = newCatalogState();
    let oks = 0;
    for (let i = 1; i <= 400; i++) {
      const c = randomCommand(rng);
      const ra = applyCommand(a, c, i);
      // Replica b reads the log's bytes when the command has an encoding, the object otherwise.
      const bytes = encodable(c);
      const rb = bytes ? applyEntry(b, bytes, i) : applyCommand(b, c, i);
      assert.equal(rb, ra, `seed ${seed}, entry ${i}`);
      if (ra.ok) oks++;
    }
    assert.equal(encodeCatalogSnapshot(a), encodeCatalogSnapshot(b), `seed ${seed}`);
    assert.is(checkCatalogInvariants(a), null, `seed ${seed}`);
    assert.ok(oks > 50, `seed ${seed}: the sequence does something (${oks} applied)`);
  }
});

test("snapshots round-trip after a long random sequence, and a restored replica continues identically", () => {
  const rng = new Prng(7);
  const live = newCatalogState();
  let restored: CatalogState | undefined;
  for (let i = 1; i <= 5000; i++) {
    const c = randomCommand(rng);
    const r = applyCommand(live, c, i);
    if (restored) assert.equal(applyCommand(restored, c, i), r, `entry ${i} after the restore`);
    if (i === 2500) {
      const snap = encodeCatalogSnapshot(live);
      restored = decodeCatalogSnapshot(snap);
      assert.equal(encodeCatalogSnapshot(restored), snap, "re-encoding a decoded snapshot gives the same bytes");
      assert.is(restored.appliedIndex, 2500);
    }
  }
  assert.ok(live.volumes.size > 0 && live.nodes.size > 0, "the catalog is not empty at the end");
  assert.equal(encodeCatalogSnapshot(restored!), encodeCatalogSnapshot(live));
  const again = decodeCatalogSnapshot(encodeCatalogSnapshot(live));
  assert.equal(again, live);
});

test("a log entry that is not a command (a leader's empty entry, a configuration change) moves only the applied index, and a snapshot after it says so", () => {
  const s = cluster(2);
  const at = s.appliedIndex;
  const before = contents(s);
  skipEntry(s, at + 1);
  skipEntry(s, at + 1);
  skipEntry(s, at);
  assert.is(s.appliedIndex, at + 1, "only forward");
  assert.equal(contents(s), before);
  assert.is(decodeCatalogSnapshot(encodeCatalogSnapshot(s)).appliedIndex, at + 1);
  assert.is(apply(s, { kind: "deleteVolume", name: "x" }).index, at + 2, "the next command follows it");
  assert.is(applyCommand(s, { kind: "deleteVolume", name: "x" }, at + 1).ok, false, "and one at the skipped index is a replay");
});

test("damaged and inconsistent snapshots are refused with the reason", () => {
  const s = cluster(2);
  must(s, { kind: "createVolume", name: "db", sizeBytes: GiB, repl: 2, at: 1 });
  must(s, { kind: "setSetting", key: "defaultRepl", value: 2 });
  const good = encodeCatalogSnapshot(s);
  const refusedWith = (bytes: Uint8Array, re: RegExp): void => {
    assert.throws(() => decodeCatalogSnapshot(bytes), (e: Error) => e instanceof CatalogSnapshotError && re.test(e.message));
  };
  refusedWith(good.subarray(0, 3), /shorter than its 5-byte header/);
  refusedWith(Uint8Array.of(9, ...good.subarray(1)), /version 9 is not 1/);
  const flipped = Uint8Array.from(good);
  flipped[good.length - 3]! ^= 0x40;
  refusedWith(flipped, /checksum mismatch/);
  const reseal = (body: unknown): Uint8Array => {
    const bytes = encodeCatalogSnapshot(newCatalogState());
    const packed = packr.pack(body);
    const out = new Uint8Array(5 + packed.length);
    out.set(bytes.subarray(0, 1));
    out.set(packed, 5);
    return withCrc(out); // the real checksum, so only the content is wrong
  };
  const body = packr.unpack(good.subarray(5)) as Record<string, any>;
  refusedWith(reseal({ ...body, extra: 1 }), /expected appliedIndex, nextVolumeId, nodes, volumes, settings, refusals, revokedTokens/);
  refusedWith(reseal({ ...body, nextVolumeId: 1 }), /has id 1, not below the next id 1/);
  refusedWith(reseal({ ...body, volumes: [{ ...body.volumes[0], nodes: [1, 3] }] }), /replica on node 3, which is not in the catalog/);
  refusedWith(reseal({ ...body, nodes: [{ ...body.nodes[0], name: "" }, body.nodes[1]] }), /node record 0: addNode: field "name"/);
  refusedWith(reseal({ ...body, nodes: [body.nodes[1], body.nodes[0]] }), /not in increasing id order/);
  refusedWith(reseal({ ...body, settings: [["defaultRepl", 99]] }), /setting "defaultRepl" must be an integer/);
  refusedWith(reseal({ ...body, settings: [["bogus", 1]] }), /unknown setting "bogus"/);
  refusedWith(reseal({ ...body, nodes: [{ ...body.nodes[0], health: "sick" }, body.nodes[1]] }), /field "health"/);
  refusedWith(reseal({ ...body, volumes: [{ ...body.volumes[0], zones: 1 }] }), /zones must be true or false/);
  // A snapshot from before attachments (no shared, no attachments) loads: nothing was shared or attached then.
  const { shared: _shared, attachments: _attachments, ...older } = body.volumes[0];
  assert.equal(decodeCatalogSnapshot(reseal({ ...body, volumes: [older] })).volumes.get("db"), s.volumes.get("db"));
  refusedWith(reseal({ ...body, volumes: [{ ...older, shared: false }] }), /expected id, name, sizeBytes, repl, nodes, zones, shared, attachments, owner, qos, createdAt/);
  // Nor one from before owners and revocations: no volume had an owner (only admins reach it), no token was revoked.
  const { owner: _owner, ...unowned } = body.volumes[0];
  const { revokedTokens: _revoked, ...unrevoked } = body;
  const fromBefore = decodeCatalogSnapshot(reseal({ ...unrevoked, volumes: [unowned] }));
  assert.equal(fromBefore.volumes.get("db")?.owner, "");
  assert.equal(fromBefore.revokedTokens.size, 0);
  refusedWith(reseal({ ...body, volumes: [{ ...body.volumes[0], owner: "bad name" }] }), /field "owner"/);
  // Nor one from before QoS limits: no volume had any.
  const { qos: _qos, ...unlimited } = body.volumes[0];
  assert.equal(decodeCatalogSnapshot(reseal({ ...body, volumes: [unlimited] })).volumes.get("db")?.qos, { maxIops: 0, maxBandwidthBytes: 0, burstSec: 1 });
  refusedWith(reseal({ ...body, volumes: [{ ...body.volumes[0], qos: { maxIops: -1, maxBandwidthBytes: 0, burstSec: 1 } }] }), /field "maxIops"/);
  refusedWith(reseal({ ...body, volumes: [{ ...body.volumes[0], qos: { maxIops: 1 } }] }), /qos has fields maxIops; expected maxIops, maxBandwidthBytes, burstSec/);
  refusedWith(reseal({ ...body, revokedTokens: [["xyz", 5]] }), /revokedTokens\[0\] must be an \[id, expiresAt\] pair/);
  refusedWith(reseal({ ...body, revokedTokens: [["00000000000000bb", 5], ["00000000000000aa", 5]] }), /in id order/);
  refusedWith(reseal([]), /body must be an object/);
  const refusal = { index: 2, kind: "createVolume", code: "invalid", error: "x" };
  refusedWith(reseal({ ...body, refusals: [{ ...refusal, kind: "drop" }] }), /refusal record 0: unknown kind/);
  refusedWith(reseal({ ...body, refusals: [{ ...refusal, code: "stale" }] }), /refusal record 0: unknown kind .* or code/);
  refusedWith(reseal({ ...body, refusals: [refusal, refusal] }), /refusal of entry 2 is out of order/);
  refusedWith(reseal({ ...body, refusals: [{ ...refusal, index: 99 }] }), /after the applied index/);
  refusedWith(reseal({ ...body, refusals: Array(17).fill(refusal) }), /refusals must be a list of at most 16/);
  assert.equal(decodeCatalogSnapshot(reseal(body)), s, "the resealed original decodes");
});

test("a volume keeps the owner its create named; revoked tokens are remembered until they expire, within a bound, and survive a snapshot", () => {
  const s = cluster(2);
  must(s, { kind: "createVolume", name: "mine", sizeBytes: GiB, repl: 1, owner: "alice", at: 1 });
  assert.is(s.volumes.get("mine")?.owner, "alice");
  refused(s, { kind: "createVolume", name: "x", sizeBytes: GiB, repl: 1, owner: "no way", at: 1 }, "invalid");
  const id = (n: number): string => n.toString(16).padStart(16, "0");
  assert.ok(must(s, { kind: "revokeToken", id: id(1), expiresAt: 100, at: 10 }).changed);
  assert.not.ok(must(s, { kind: "revokeToken", id: id(1), expiresAt: 100, at: 11 }).changed, "a second revoke changes nothing");
  must(s, { kind: "revokeToken", id: id(2), expiresAt: 1000, at: 12 });
  assert.equal([...s.revokedTokens.keys()], [id(1), id(2)]);
  // A later command drops what expired by its time: every node drops the same.
  must(s, { kind: "revokeToken", id: id(3), expiresAt: 2000, at: 500 });
  assert.equal([...s.revokedTokens.keys()], [id(2), id(3)]);
  refused(s, { kind: "revokeToken", id: "not-hex", expiresAt: 1, at: 1 }, "invalid");
  assert.equal(decodeCatalogSnapshot(encodeCatalogSnapshot(s)), s);
  for (let i = s.revokedTokens.size; i < catalogRevokedTokensMax; i++) must(s, { kind: "revokeToken", id: id(1000 + i), expiresAt: 10_000, at: 600 });
  const full = refused(s, { kind: "revokeToken", id: id(99_999), expiresAt: 10_000, at: 600 }, "limit");
  assert.match(full, /wait for some to expire/);
  must(s, { kind: "revokeToken", id: id(99_999), expiresAt: 20_000, at: 10_000 }); // by then the others expired
  assert.equal([...s.revokedTokens.keys()], [id(99_999)]);
});

function withCrc(out: Uint8Array): Uint8Array {
  new DataView(out.buffer, out.byteOffset, out.byteLength).setUint32(1, crc32c(out.subarray(5)) >>> 0);
  return out;
}

test.run();
