// pxd csi checked the way csi-sanity checks a driver: a real grpc-js client
// over the Unix socket of a real `pxd csi` process, against a real three-node
// cluster. Identity, idempotent create and delete, the status code of each
// malformed request, ListVolumes pages, GetCapacity, topology, and a full
// node flow on this machine (nbdfuse and a loop device): stage, publish,
// write through the target, unpublish, unstage, stage again and read it back.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { startCluster, waitUntil, type Cluster } from "../helpers/cluster.js";
import { pxdEntry } from "../helpers/daemon.js";
import { runOk } from "../helpers/run.js";
import { tempDir } from "../helpers/tmp.js";

const MiB = 1024 * 1024;
const protoPath = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "proto", "csi", "csi.proto");

type Call = (req: object) => Promise<Record<string, any>>;
type Service = Record<string, Call>;

function clients(socket: string): { identity: Service; controller: Service; node: Service; close(): void } {
  const def = protoLoader.loadSync(protoPath, { keepCase: true, enums: String, longs: Number, defaults: true, oneofs: true });
  const v1 = (grpc.loadPackageDefinition(def) as any).csi.v1;
  const made: grpc.Client[] = [];
  const wrap = (Ctor: any): Service => {
    const c = new Ctor(`unix://${socket}`, grpc.credentials.createInsecure());
    made.push(c);
    return new Proxy({} as Service, {
      get: (_t, method: string) => (req: object) =>
        new Promise((resolve, reject) => c[method](req, { deadline: Date.now() + 120_000 }, (err: Error | null, res: any) => (err ? reject(err) : resolve(res)))),
    });
  };
  return { identity: wrap(v1.Identity), controller: wrap(v1.Controller), node: wrap(v1.Node), close: () => made.forEach((c) => c.close()) };
}

async function code(p: Promise<unknown>): Promise<{ code: number; details: string }> {
  try {
    await p;
  } catch (e) {
    const g = e as grpc.ServiceError;
    return { code: g.code, details: g.details };
  }
  return { code: grpc.status.OK, details: "" };
}

async function expectCode(p: Promise<unknown>, want: grpc.status, pattern?: RegExp): Promise<void> {
  const got = await code(p);
  assert.is(grpc.status[got.code], grpc.status[want], got.details);
  assert.ok(got.details.length > 0, "the status carries a message");
  if (pattern !== undefined) assert.match(got.details, pattern);
}

const mountCap = (fs_type = "", mode = "SINGLE_NODE_WRITER") => ({ mount: { fs_type, mount_flags: [] }, access_mode: { mode } });
const blockCap = (mode = "SINGLE_NODE_WRITER") => ({ block: {}, access_mode: { mode } });

function startCsi(api: string, socket: string, runDir: string): ChildProcess & { output: string } {
  const child = spawn(process.execPath, [pxdEntry, "--host", api, "csi", "--endpoint", `unix://${socket}`, "--mode", "both", "--node-id", "node1", "--zone", "z1"], {
    env: { ...process.env, PXD_HOST_NAME: "csi-host", PXD_RUN_DIR: runDir },
    stdio: ["ignore", "pipe", "pipe"],
  }) as ChildProcess & { output: string };
  child.output = "";
  child.stdout!.on("data", (d: Buffer) => (child.output += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (child.output += d.toString()));
  return child;
}

/** Whether this process may grow a mounted ext4 (CAP_SYS_RESOURCE, bit 24 of CapEff). */
function hasCapSysResource(): boolean {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync("/proc/self/status", "utf8"));
  return m !== null && (BigInt(`0x${m[1]}`) & (1n << 24n)) !== 0n;
}

async function stop(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null) return child.exitCode;
  const exited = new Promise<number | null>((r) => child.once("exit", (c) => r(c)));
  child.kill("SIGTERM");
  return exited;
}

const loopsUnder = async (dir: string): Promise<string[]> => (await runOk("losetup", ["-a"])).split("\n").filter((l) => l.includes(dir));
const mountsUnder = (dir: string): string[] => readFileSync("/proc/mounts", "utf8").split("\n").filter((l) => l.includes(dir));

test("pxd csi: identity, controller and node services as csi-sanity checks them, against a real cluster", async () => {
  const t = tempDir("csi");
  const socket = join(t.dir, "csi.sock");
  const runDir = join(t.dir, "run");
  const staging = join(t.dir, "staging", "db");
  const target = join(t.dir, "pods", "p1", "mount");
  const blockTarget = join(t.dir, "pods", "p2", "dev");
  let c: Cluster | undefined;
  let csi: (ChildProcess & { output: string }) | undefined;
  let cl: ReturnType<typeof clients> | undefined;
  try {
    c = await startCluster(3);
    const api = `${c.nodes[0]!.host}:9001`;
    csi = startCsi(api, socket, runDir);
    await waitUntil("the CSI socket", async () => existsSync(socket) || (csi!.exitCode !== null ? Promise.reject(new Error(csi!.output)) : false));
    cl = clients(socket);
    const { identity, controller, node } = cl;

    // Identity.
    const info = await identity["GetPluginInfo"]!({});
    assert.is(info["name"], "pxd.csi.io");
    assert.is(info["vendor_version"], JSON.parse(readFileSync(join(dirname(protoPath), "..", "..", "package.json"), "utf8")).version);
    const pcaps = (await identity["GetPluginCapabilities"]!({}))["capabilities"].filter((x: any) => x.service).map((x: any) => x.service.type).sort();
    assert.equal(pcaps, ["CONTROLLER_SERVICE", "VOLUME_ACCESSIBILITY_CONSTRAINTS"]);
    const expansion = (await identity["GetPluginCapabilities"]!({}))["capabilities"].find((x: any) => x.volume_expansion);
    assert.is(expansion.volume_expansion.type, "OFFLINE", "a device attached before a resize keeps its size until staged again");
    assert.equal((await identity["Probe"]!({}))["ready"], { value: true });

    // Controller capabilities: expand and snapshots.
    const ccaps = (await controller["ControllerGetCapabilities"]!({}))["capabilities"].map((x: any) => x.rpc.type).sort();
    assert.equal(ccaps, ["CREATE_DELETE_SNAPSHOT", "CREATE_DELETE_VOLUME", "EXPAND_VOLUME", "GET_CAPACITY", "LIST_SNAPSHOTS", "LIST_VOLUMES"]);
    await expectCode(controller["ControllerExpandVolume"]!({ volume_id: "x", capacity_range: { required_bytes: MiB } }), grpc.status.NOT_FOUND, /x does not exist/);
    await expectCode(controller["ControllerExpandVolume"]!({ volume_id: "x" }), grpc.status.INVALID_ARGUMENT, /capacity_range/);
    await expectCode(controller["CreateSnapshot"]!({ source_volume_id: "x", name: "s" }), grpc.status.NOT_FOUND, /does not exist/);
    await expectCode(controller["ControllerPublishVolume"]!({ volume_id: "x", node_id: "n" }), grpc.status.UNIMPLEMENTED);
    await expectCode(node["NodeExpandVolume"]!({ volume_id: "x", volume_path: "/x" }), grpc.status.NOT_FOUND, /not staged on this host/);
    await expectCode(node["NodeExpandVolume"]!({ volume_id: "x" }), grpc.status.INVALID_ARGUMENT, /volume_path/);

    // CreateVolume: sizes rounded up to sectors, idempotent by name, ALREADY_EXISTS on a conflicting size.
    const made = (await controller["CreateVolume"]!({ name: "db", capacity_range: { required_bytes: 64 * MiB - 100 }, volume_capabilities: [mountCap()], parameters: { repl: "3", fs: "ext4" } }))["volume"];
    assert.is(made.volume_id, "db");
    assert.is(made.capacity_bytes, 64 * MiB);
    assert.equal(made.volume_context, { fs: "ext4" });
    assert.equal(made.accessible_topology.map((s: any) => s.segments["topology.pxd.io/node"]).sort(), ["node1", "node2", "node3"]);
    const again = (await controller["CreateVolume"]!({ name: "db", capacity_range: { required_bytes: 64 * MiB - 100 }, volume_capabilities: [mountCap()], parameters: { repl: "3", fs: "ext4" } }))["volume"];
    assert.is(again.capacity_bytes, 64 * MiB);
    await expectCode(controller["CreateVolume"]!({ name: "db", capacity_range: { required_bytes: 128 * MiB }, volume_capabilities: [mountCap()] }), grpc.status.ALREADY_EXISTS, /db/);
    const small = (await controller["CreateVolume"]!({ name: "dflt", volume_capabilities: [blockCap()], parameters: { repl: "1" } }))["volume"];
    assert.is(small.capacity_bytes, 1024 * MiB, "no capacity_range: 1 GiB");
    assert.is(small.accessible_topology.length, 1);

    // Malformed requests: the spec's codes, each with a message, and the server lives on.
    await expectCode(controller["CreateVolume"]!({ volume_capabilities: [mountCap()] }), grpc.status.INVALID_ARGUMENT, /name/);
    await expectCode(controller["CreateVolume"]!({ name: "nocaps" }), grpc.status.INVALID_ARGUMENT, /volume_capabilities/);
    await expectCode(controller["CreateVolume"]!({ name: "nomode", volume_capabilities: [{ mount: {} }] }), grpc.status.INVALID_ARGUMENT, /access_mode/);
    await expectCode(controller["CreateVolume"]!({ name: "badp", volume_capabilities: [mountCap()], parameters: { color: "red" } }), grpc.status.INVALID_ARGUMENT, /repl, zones, fs/);
    await expectCode(controller["CreateVolume"]!({ name: "badrepl", volume_capabilities: [mountCap()], parameters: { repl: "0" } }), grpc.status.INVALID_ARGUMENT, /repl/);
    await expectCode(controller["CreateVolume"]!({ name: "bad/name", volume_capabilities: [mountCap()] }), grpc.status.INVALID_ARGUMENT, /volume name/);
    await expectCode(controller["CreateVolume"]!({ name: "x".repeat(2000), volume_capabilities: [mountCap()] }), grpc.status.INVALID_ARGUMENT);
    await expectCode(controller["CreateVolume"]!({ name: "multi", volume_capabilities: [mountCap("", "MULTI_NODE_MULTI_WRITER")] }), grpc.status.INVALID_ARGUMENT, /one host/);
    await expectCode(controller["CreateVolume"]!({ name: "range", capacity_range: { required_bytes: 2 * MiB, limit_bytes: MiB }, volume_capabilities: [mountCap()] }), grpc.status.INVALID_ARGUMENT);
    await expectCode(controller["CreateVolume"]!({ name: "huge", capacity_range: { required_bytes: 2 ** 52 }, volume_capabilities: [mountCap()] }), grpc.status.OUT_OF_RANGE);
    const manyParams = Object.fromEntries(Array.from({ length: 100 }, (_, i) => [`k${i}`, "v"]));
    await expectCode(controller["CreateVolume"]!({ name: "many", volume_capabilities: [mountCap()], parameters: manyParams }), grpc.status.INVALID_ARGUMENT, /at most/);
    await expectCode(controller["CreateVolume"]!({ name: "big", volume_capabilities: [mountCap()], parameters: { k: "v".repeat(100_000) } }), grpc.status.RESOURCE_EXHAUSTED);
    await expectCode(controller["DeleteVolume"]!({}), grpc.status.INVALID_ARGUMENT, /volume_id/);
    await expectCode(controller["ValidateVolumeCapabilities"]!({ volume_id: "db" }), grpc.status.INVALID_ARGUMENT, /volume_capabilities/);
    await expectCode(controller["ValidateVolumeCapabilities"]!({ volume_id: "nosuch", volume_capabilities: [mountCap()] }), grpc.status.NOT_FOUND);
    await expectCode(controller["ValidateVolumeCapabilities"]!({ volume_capabilities: [mountCap()] }), grpc.status.INVALID_ARGUMENT);
    const valid = await controller["ValidateVolumeCapabilities"]!({ volume_id: "db", volume_capabilities: [mountCap("ext4")] });
    assert.is(valid["confirmed"].volume_capabilities.length, 1);
    const notValid = await controller["ValidateVolumeCapabilities"]!({ volume_id: "db", volume_capabilities: [mountCap("btrfs")] });
    assert.is(notValid["confirmed"], null);
    assert.match(notValid["message"], /btrfs/);
    await expectCode(node["NodeStageVolume"]!({ staging_target_path: staging, volume_capability: mountCap() }), grpc.status.INVALID_ARGUMENT, /volume_id/);
    await expectCode(node["NodeStageVolume"]!({ volume_id: "db", volume_capability: mountCap() }), grpc.status.INVALID_ARGUMENT, /staging_target_path/);
    await expectCode(node["NodeStageVolume"]!({ volume_id: "db", staging_target_path: staging }), grpc.status.INVALID_ARGUMENT, /volume_capability/);
    await expectCode(node["NodeStageVolume"]!({ volume_id: "nosuch", staging_target_path: staging, volume_capability: mountCap() }), grpc.status.NOT_FOUND);
    await expectCode(node["NodeStageVolume"]!({ volume_id: "db", staging_target_path: "relative/path", volume_capability: mountCap() }), grpc.status.INVALID_ARGUMENT);
    await expectCode(node["NodePublishVolume"]!({ volume_id: "db", staging_target_path: staging, volume_capability: mountCap() }), grpc.status.INVALID_ARGUMENT, /target_path/);
    await expectCode(node["NodePublishVolume"]!({ volume_id: "db", staging_target_path: staging, target_path: target, volume_capability: mountCap() }), grpc.status.FAILED_PRECONDITION, /NodeStageVolume/);
    await expectCode(node["NodeUnpublishVolume"]!({ volume_id: "db" }), grpc.status.INVALID_ARGUMENT, /target_path/);
    await expectCode(node["NodeUnstageVolume"]!({ volume_id: "db" }), grpc.status.INVALID_ARGUMENT, /staging_target_path/);
    await expectCode(node["NodeGetVolumeStats"]!({ volume_id: "db", volume_path: join(t.dir, "nowhere") }), grpc.status.NOT_FOUND);
    await expectCode(node["NodeGetVolumeStats"]!({ volume_id: "db" }), grpc.status.INVALID_ARGUMENT, /volume_path/);
    await expectCode(node["NodeGetVolumeStats"]!({ volume_id: "nosuch", volume_path: t.dir }), grpc.status.NOT_FOUND, /nosuch/);
    await expectCode(node["NodePublishVolume"]!({ volume_id: "db", staging_target_path: staging, target_path: "/" + "p".repeat(5000), volume_capability: mountCap() }), grpc.status.INVALID_ARGUMENT, /longer than/);
    await expectCode(node["NodeStageVolume"]!({ volume_id: "db", staging_target_path: `${t.dir}/../x`, volume_capability: mountCap() }), grpc.status.INVALID_ARGUMENT, /absolute path/);
    assert.equal((await identity["Probe"]!({}))["ready"], { value: true }, "the server lives after every bad request");

    // Snapshots: idempotent by name, a name on another volume is ALREADY_EXISTS, listed by id and source, deleted twice without error.
    await expectCode(controller["CreateSnapshot"]!({ source_volume_id: "db" }), grpc.status.INVALID_ARGUMENT, /name/);
    await expectCode(controller["CreateSnapshot"]!({ source_volume_id: "db", name: "a@b" }), grpc.status.INVALID_ARGUMENT, /snapshot name/);
    const snap = (await controller["CreateSnapshot"]!({ source_volume_id: "db", name: "snapshot-1" }))["snapshot"];
    assert.equal([snap.snapshot_id, snap.source_volume_id, snap.size_bytes, snap.ready_to_use], ["db@snapshot-1", "db", 64 * MiB, true]);
    assert.equal((await controller["CreateSnapshot"]!({ source_volume_id: "db", name: "snapshot-1" }))["snapshot"].snapshot_id, "db@snapshot-1");
    await controller["CreateVolume"]!({ name: "other", capacity_range: { required_bytes: 4 * MiB }, volume_capabilities: [mountCap()], parameters: { repl: "1" } });
    await expectCode(controller["CreateSnapshot"]!({ source_volume_id: "other", name: "snapshot-1" }), grpc.status.ALREADY_EXISTS, /taken/);
    await controller["CreateSnapshot"]!({ source_volume_id: "other", name: "snapshot-2" });
    assert.equal((await controller["ListSnapshots"]!({ source_volume_id: "db" }))["entries"].map((e: any) => e.snapshot.snapshot_id), ["db@snapshot-1"]);
    assert.equal((await controller["ListSnapshots"]!({ snapshot_id: "other@snapshot-2" }))["entries"].length, 1);
    const firstPage = await controller["ListSnapshots"]!({ max_entries: 1 });
    assert.equal([firstPage["entries"].length, firstPage["next_token"]], [1, "1"]);
    await expectCode(controller["ListSnapshots"]!({ starting_token: "x" }), grpc.status.ABORTED);
    for (const id of ["other@snapshot-2", "other@snapshot-2", "nosuch@x", "not-an-id"]) await controller["DeleteSnapshot"]!({ snapshot_id: id });
    await expectCode(controller["DeleteSnapshot"]!({}), grpc.status.INVALID_ARGUMENT, /snapshot_id/);
    await controller["DeleteVolume"]!({ volume_id: "other" });
    assert.equal((await controller["ListSnapshots"]!({}))["entries"].map((e: any) => e.snapshot.snapshot_id), ["db@snapshot-1"]);

    // A volume from a snapshot: a clone of it, grown to the size asked (larger than the snapshot is fine), the snapshot's bytes there at once; idempotent by name.
    await runOk("qemu-io", ["-f", "raw", c.nodes[1]!.uri("db"), "-c", "write -P 0x5a 1M 2M"]);
    await controller["CreateSnapshot"]!({ source_volume_id: "db", name: "snapshot-3" });
    const fromSnap = { name: "fromsnap", capacity_range: { required_bytes: 96 * MiB }, volume_capabilities: [mountCap()], parameters: { repl: "2" }, volume_content_source: { snapshot: { snapshot_id: "db@snapshot-3" } } };
    const restored = (await controller["CreateVolume"]!(fromSnap))["volume"];
    assert.equal([restored.volume_id, restored.capacity_bytes, restored.content_source.snapshot.snapshot_id], ["fromsnap", 96 * MiB, "db@snapshot-3"]);
    assert.not.match(await runOk("qemu-io", ["-f", "raw", c.nodes[2]!.uri("fromsnap"), "-c", "read -P 0 0 1M", "-c", "read -P 0x5a 1M 2M", "-c", "read -P 0 64M 32M"]), /fail/i, "the snapshot's bytes, then zeroes");
    const cloned = await c.nodes[0]!.api.inspectVolume("fromsnap");
    assert.equal([cloned.clonedFrom, cloned.sizeBytes, cloned.repl], ["db@snapshot-3", 96 * MiB, 2], "a clone of the snapshot, grown to required_bytes");
    assert.is((await controller["CreateVolume"]!(fromSnap))["volume"].volume_id, "fromsnap", "asked again: the same volume");
    const asIs = (await controller["CreateVolume"]!({ ...fromSnap, name: "asis", capacity_range: {} }))["volume"];
    assert.equal([asIs.capacity_bytes, (await c.nodes[0]!.api.inspectVolume("asis")).clonedFrom], [64 * MiB, "db@snapshot-3"], "no required_bytes: the snapshot's size");
    // A clone left at the snapshot's size (a call that ended before its resize) is grown by the next call.
    await c.nodes[0]!.api.createVolume({ name: "half", sizeBytes: 64 * MiB, clone: { volume: "db", snapshot: "snapshot-3" }, repl: 2 });
    assert.is((await controller["CreateVolume"]!({ ...fromSnap, name: "half" }))["volume"].capacity_bytes, 96 * MiB);
    assert.is((await c.nodes[0]!.api.inspectVolume("half")).sizeBytes, 96 * MiB);
    await expectCode(controller["CreateVolume"]!({ ...fromSnap, name: "db", capacity_range: { required_bytes: 64 * MiB } }), grpc.status.ALREADY_EXISTS, /not a clone of snapshot db@snapshot-3/);
    await expectCode(controller["CreateVolume"]!({ ...fromSnap, name: "zoned", parameters: { zones: "true" } }), grpc.status.INVALID_ARGUMENT, /zones .* snapshot/);
    await expectCode(controller["CreateVolume"]!({ ...fromSnap, name: "nosnap", volume_content_source: { snapshot: { snapshot_id: "db@nope" } } }), grpc.status.NOT_FOUND, /does not exist/);
    await expectCode(controller["CreateVolume"]!({ ...fromSnap, name: "small", capacity_range: { required_bytes: MiB, limit_bytes: MiB } }), grpc.status.OUT_OF_RANGE, /limit_bytes/);
    await expectCode(controller["CreateVolume"]!({ ...fromSnap, name: "vclone", volume_content_source: { volume: { volume_id: "db" } } }), grpc.status.INVALID_ARGUMENT, /only a snapshot/);
    for (const n of ["fromsnap", "asis", "half"]) await controller["DeleteVolume"]!({ volume_id: n });
    await controller["DeleteSnapshot"]!({ snapshot_id: "db@snapshot-3" });

    // ListVolumes pages; a token it did not give out is ABORTED.
    for (const n of ["v1", "v2", "v3"]) await controller["CreateVolume"]!({ name: n, capacity_range: { required_bytes: 4 * MiB }, volume_capabilities: [mountCap()], parameters: { repl: "1" } });
    const seen: string[] = [];
    let token = "";
    let pages = 0;
    do {
      const page = await controller["ListVolumes"]!({ max_entries: 2, starting_token: token });
      assert.ok(page["entries"].length <= 2);
      seen.push(...page["entries"].map((e: any) => e.volume.volume_id));
      token = page["next_token"];
      pages++;
    } while (token !== "" && pages < 10);
    assert.equal(seen, ["db", "dflt", "v1", "v2", "v3"]);
    assert.is(pages, 3);
    assert.is((await controller["ListVolumes"]!({}))["entries"].length, 5);
    await expectCode(controller["ListVolumes"]!({ starting_token: "bogus" }), grpc.status.ABORTED);
    await expectCode(controller["ListVolumes"]!({ starting_token: "99" }), grpc.status.ABORTED);

    // GetCapacity: the pool's free bytes.
    const cap = await controller["GetCapacity"]!({});
    const pool = (await c.nodes[0]!.api.status()).pool;
    assert.ok(cap["available_capacity"] > 0 && Math.abs(cap["available_capacity"] - pool.freeBytes) < pool.totalBytes / 10, `${cap["available_capacity"]} vs ${pool.freeBytes}`);

    // DeleteVolume: idempotent, also for ids it never made.
    for (const n of ["v1", "v2", "v3", "v3", "nosuch", "bad/id"]) await controller["DeleteVolume"]!({ volume_id: n });
    assert.is((await controller["ListVolumes"]!({}))["entries"].length, 2);

    // Node: info and capabilities.
    const ni = await node["NodeGetInfo"]!({});
    assert.is(ni["node_id"], "node1");
    assert.equal(ni["accessible_topology"].segments, { "topology.pxd.io/node": "node1", "topology.pxd.io/zone": "z1" });
    assert.ok(ni["max_volumes_per_node"] > 0);
    assert.equal((await node["NodeGetCapabilities"]!({}))["capabilities"].map((x: any) => x.rpc.type).sort(), ["EXPAND_VOLUME", "GET_VOLUME_STATS", "STAGE_UNSTAGE_VOLUME"]);

    // The node flow: stage (makes ext4), publish, write through the target, unpublish, unstage.
    const stage = { volume_id: "db", staging_target_path: staging, volume_capability: mountCap("", "SINGLE_NODE_WRITER"), volume_context: { fs: "ext4" } };
    const publish = { volume_id: "db", staging_target_path: staging, target_path: target, volume_capability: mountCap(), readonly: false };
    await node["NodeStageVolume"]!(stage);
    await node["NodeStageVolume"]!(stage);
    await expectCode(controller["DeleteVolume"]!({ volume_id: "db" }), grpc.status.FAILED_PRECONDITION, /attached on csi-host/);
    await node["NodePublishVolume"]!(publish);
    await node["NodePublishVolume"]!(publish);
    const data = randomBytes(300 * 1024);
    writeFileSync(join(target, "hello"), data, { flush: true });
    const stats = (await node["NodeGetVolumeStats"]!({ volume_id: "db", volume_path: target }))["usage"];
    const bytes = stats.find((u: any) => u.unit === "BYTES");
    assert.ok(bytes.total > 50 * MiB && bytes.total <= 64 * MiB && bytes.used >= data.length, JSON.stringify(stats));
    assert.ok(stats.find((u: any) => u.unit === "INODES").total > 0);
    // A second, read-only publish of the same staging.
    const roTarget = join(t.dir, "pods", "p3", "mount");
    await node["NodePublishVolume"]!({ ...publish, target_path: roTarget, readonly: true });
    assert.equal(readFileSync(join(roTarget, "hello")), data);
    assert.throws(() => writeFileSync(join(roTarget, "nope"), "x"), /EROFS|read-only/);
    await expectCode(node["NodeUnstageVolume"]!({ volume_id: "db", staging_target_path: staging }), grpc.status.FAILED_PRECONDITION, /still published at .*p1\/mount/);
    assert.equal(readFileSync(join(target, "hello")), data, "a refused unstage leaves the volume in service");
    for (const p of [target, roTarget]) {
      await node["NodeUnpublishVolume"]!({ volume_id: "db", target_path: p });
      await node["NodeUnpublishVolume"]!({ volume_id: "db", target_path: p });
      assert.not.ok(existsSync(p));
    }
    await node["NodeUnstageVolume"]!({ volume_id: "db", staging_target_path: staging });
    await node["NodeUnstageVolume"]!({ volume_id: "db", staging_target_path: staging });
    assert.equal(await loopsUnder(runDir), []);
    assert.equal(mountsUnder(t.dir), []);

    // Expanded while not staged (OFFLINE): grown once, a repeat or a smaller size changes nothing, a limit below the size cannot shrink it.
    const grown = await controller["ControllerExpandVolume"]!({ volume_id: "db", capacity_range: { required_bytes: 96 * MiB - 100 }, volume_capability: mountCap() });
    assert.equal([grown["capacity_bytes"], grown["node_expansion_required"]], [96 * MiB, true]);
    assert.is((await controller["ControllerExpandVolume"]!({ volume_id: "db", capacity_range: { required_bytes: 96 * MiB } }))["capacity_bytes"], 96 * MiB);
    assert.is((await controller["ControllerExpandVolume"]!({ volume_id: "db", capacity_range: { required_bytes: 32 * MiB } }))["capacity_bytes"], 96 * MiB);
    await expectCode(controller["ControllerExpandVolume"]!({ volume_id: "db", capacity_range: { required_bytes: 32 * MiB, limit_bytes: 64 * MiB } }), grpc.status.OUT_OF_RANGE, /shrinking a volume is not supported/);
    assert.is((await c.nodes[1]!.api.inspectVolume("db")).sizeBytes, 96 * MiB);

    // Staged again: the filesystem is found (no mkfs over data), the file reads back, NodeExpandVolume grows ext4 to the new size.
    await node["NodeStageVolume"]!(stage);
    await node["NodePublishVolume"]!(publish);
    assert.equal(readFileSync(join(target, "hello")), data);
    const expand = node["NodeExpandVolume"]!({ volume_id: "db", volume_path: target, staging_target_path: staging, capacity_range: { required_bytes: 96 * MiB }, volume_capability: mountCap() });
    if (hasCapSysResource()) {
      assert.is((await expand)["capacity_bytes"], 96 * MiB);
      const grownFs = (await node["NodeGetVolumeStats"]!({ volume_id: "db", volume_path: target }))["usage"].find((u: any) => u.unit === "BYTES");
      assert.ok(grownFs.total > 80 * MiB && grownFs.total <= 96 * MiB, `ext4 grew with the volume: ${grownFs.total} bytes`);
    } else {
      // Growing a mounted ext4 (EXT4_IOC_RESIZE_FS) needs CAP_SYS_RESOURCE, which a node plugin has and this sandbox does not.
      await expectCode(expand, grpc.status.INTERNAL, /resize2fs exit 1.*Permission denied/s);
      console.log("NodeExpandVolume: resize2fs of a mounted ext4 needs CAP_SYS_RESOURCE, which this process lacks: checked that it ran and said so");
    }
    assert.equal(readFileSync(join(target, "hello")), data);
    // Grown again while staged: this host's device keeps its size until it is staged again.
    await controller["ControllerExpandVolume"]!({ volume_id: "db", capacity_range: { required_bytes: 128 * MiB } });
    await expectCode(node["NodeExpandVolume"]!({ volume_id: "db", volume_path: target, capacity_range: { required_bytes: 128 * MiB } }), grpc.status.FAILED_PRECONDITION, /attached before the volume grew; unstage and stage/);
    await node["NodeUnpublishVolume"]!({ volume_id: "db", target_path: target });
    await node["NodeUnstageVolume"]!({ volume_id: "db", staging_target_path: staging });

    // Block access: the device bound onto a file at the target.
    const blockStage = { volume_id: "dflt", staging_target_path: join(t.dir, "staging", "dflt"), volume_capability: blockCap() };
    await node["NodeStageVolume"]!(blockStage);
    await node["NodePublishVolume"]!({ ...blockStage, target_path: blockTarget, readonly: false });
    assert.ok(mountsUnder(blockTarget).length === 1, "the device is bound at the target");
    const size = Number((await runOk("blockdev", ["--getsize64", blockTarget])).trim());
    assert.is(size, 1024 * MiB);
    await node["NodeUnpublishVolume"]!({ volume_id: "dflt", target_path: blockTarget });
    await node["NodeUnstageVolume"]!(blockStage);

    for (const n of ["db", "dflt", "db"]) await controller["DeleteVolume"]!({ volume_id: n });
    assert.equal((await controller["ListVolumes"]!({}))["entries"], []);
    assert.equal(await loopsUnder(runDir), []);
    assert.equal(mountsUnder(t.dir), []);
    assert.equal(readdirSync(runDir), [], "no attach record is left");
    cl.close();
    cl = undefined;
    assert.is(await stop(csi), 0, csi.output);
    assert.not.ok(existsSync(socket), "the socket is removed on SIGTERM");
  } catch (e) {
    if (csi !== undefined) console.error(`pxd csi printed:\n${csi.output}`);
    throw e;
  } finally {
    cl?.close();
    if (csi !== undefined) await stop(csi);
    for (const m of mountsUnder(t.dir).reverse()) await runOk("umount", ["-l", m.split(" ")[1]!]).catch(() => undefined);
    for (const l of await loopsUnder(runDir).catch(() => [])) await runOk("losetup", ["-d", l.split(":")[0]!]).catch(() => undefined);
    await c?.dispose();
    t.remove();
  }
});

test("pxd csi: a bad --endpoint or --mode is a usage error, and a file that is not a socket is left alone", async () => {
  const t = tempDir("csi-args");
  try {
    const file = join(t.dir, "data");
    writeFileSync(file, "keep");
    const pxd = (...args: string[]) => spawnSync(process.execPath, [pxdEntry, "--host", "127.0.0.1:1", "csi", ...args], { encoding: "utf8", env: { ...process.env, PXD_HOST_NAME: "csi-host" } });
    const notSocket = pxd("--endpoint", `unix://${file}`);
    assert.is(notSocket.status, 1);
    assert.match(notSocket.stderr, /is not a socket; give --endpoint a path of its own/);
    assert.is(readFileSync(file, "utf8"), "keep");
    const tcp = pxd("--endpoint", "tcp://127.0.0.1:5000");
    assert.is(tcp.status, 2);
    assert.match(tcp.stderr, /is not unix:\/\/\/PATH/);
    const mode = pxd("--endpoint", `unix://${t.dir}/s.sock`, "--mode", "all");
    assert.is(mode.status, 2);
    assert.match(mode.stderr, /not controller, node or both/);
  } finally {
    t.remove();
  }
});

test.run();
