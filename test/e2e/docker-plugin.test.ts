// The Docker volume plugin (pxd docker-plugin) spoken to over its Unix socket
// exactly as dockerd speaks to it: POST, `Accept:
// application/vnd.docker.plugins.v1.2+json`, a JSON body (none for
// Activate), keep-alive. Against a real three-node cluster, on this
// machine's attach fallback (nbdfuse + a loop device): create with options,
// an unknown option named, mount by two caller IDs with the plugin restarted
// between them, a file written through the mountpoint, unmount, unmount,
// remove; nothing is left attached, mounted or looped.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { request, Agent } from "node:http";
import { join } from "node:path";
import { startCluster, type Cluster } from "../helpers/cluster.js";
import { pxdEntry } from "../helpers/daemon.js";
import { runOk } from "../helpers/run.js";
import { tempDir } from "../helpers/tmp.js";

type Answer = { status: number; contentType: string; body: Record<string, unknown> };

/** One call as dockerd's plugin client makes it (pkg/plugins: POST, Accept the v1.2 mime type, JSON or no body). */
function dockerCall(agent: Agent, socketPath: string, method: string, args?: unknown): Promise<Answer> {
  const data = args === undefined ? undefined : Buffer.from(JSON.stringify(args) + "\n");
  return new Promise((resolve, reject) => {
    const req = request(
      { socketPath, agent, method: "POST", path: `/${method}`, headers: { Host: "plugin", Accept: "application/vnd.docker.plugins.v1.2+json", ...(data ? { "Content-Length": data.length } : { "Content-Length": 0 }) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, contentType: String(res.headers["content-type"]), body: JSON.parse(Buffer.concat(chunks).toString("utf8")) as Record<string, unknown> }));
      },
    );
    req.on("error", reject);
    req.end(data);
  });
}

function startPlugin(api: string, socketPath: string, stateDir: string, runDir: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, [pxdEntry, "--host", api, "docker-plugin", "--socket", socketPath, "--state-dir", stateDir], {
    env: { ...process.env, PXD_HOST_NAME: "docker-host", PXD_RUN_DIR: runDir },
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    child.stdout!.on("data", (d: Buffer) => {
      if (d.toString().includes("serving")) resolve(child);
    });
    child.once("exit", (code) => reject(new Error(`pxd docker-plugin exited ${code}`)));
  });
}

async function stopPlugin(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  child.kill("SIGTERM");
  await new Promise((r) => child.once("exit", r));
}

test("docker-plugin: the VolumeDriver protocol through create, two mounts across a plugin restart, unmount, unmount, remove", async () => {
  const t = tempDir("docker-plugin");
  const socketPath = join(t.dir, "pxd.sock");
  const stateDir = join(t.dir, "state");
  const runDir = join(t.dir, "run");
  const agent = new Agent({ keepAlive: true });
  let c: Cluster | undefined;
  let plugin: ChildProcess | undefined;
  try {
    c = await startCluster(3);
    await c.healthy();
    const api = `${c.nodes[0]!.host}:9001`;
    plugin = await startPlugin(api, socketPath, stateDir, runDir);
    const call = (method: string, args?: unknown): Promise<Answer> => dockerCall(agent, socketPath, method, args);

    const activate = await call("Plugin.Activate");
    assert.equal(activate.body, { Implements: ["VolumeDriver"] });
    assert.is(activate.contentType, "application/vnd.docker.plugins.v1+json");
    assert.equal((await call("VolumeDriver.Capabilities", {})).body, { Capabilities: { Scope: "global" } });

    const unknown = await call("VolumeDriver.Create", { Name: "pg", Opts: { sise: "1G" } });
    assert.is(unknown.status, 500);
    assert.match(String(unknown.body["Err"]), /unknown option "sise"; the options are size, repl, zones, nodes, fs, snapshot/);
    const badName = await call("VolumeDriver.Create", { Name: "../etc", Opts: {} });
    assert.match(String(badName.body["Err"]), /is not a valid volume name/);

    const created = await call("VolumeDriver.Create", { Name: "pg", Opts: { size: "64M", repl: "3", fs: "ext4" } });
    assert.equal([created.status, created.body], [200, { Err: "" }]);
    assert.equal((await call("VolumeDriver.Create", { Name: "pg", Opts: null })).body, { Err: "" }, "dockerd's create of an existing volume is not an error");
    const got = await call("VolumeDriver.Get", { Name: "pg" });
    const status = (got.body["Volume"] as { Status: { size: number; repl: number } }).Status;
    assert.equal([status.size, status.repl], [64 * 1024 * 1024, 3]);
    const listed = (await call("VolumeDriver.List", {})).body["Volumes"] as { Name: string }[];
    assert.ok(listed.some((v) => v.Name === "pg"));
    assert.match(String((await call("VolumeDriver.Get", { Name: "nosuch" })).body["Err"]), /volume nosuch does not exist/);

    // The first container's mount attaches, makes ext4 and mounts it.
    const m1 = await call("VolumeDriver.Mount", { Name: "pg", ID: "a".repeat(64) });
    assert.is(m1.status, 200, JSON.stringify(m1.body));
    const mountpoint = String(m1.body["Mountpoint"]);
    assert.is(mountpoint, join(stateDir, "mounts", "pg"));
    writeFileSync(join(mountpoint, "PG_VERSION"), "16\n");
    assert.equal((await call("VolumeDriver.Path", { Name: "pg" })).body, { Mountpoint: mountpoint, Err: "" });

    // The plugin restarts; the second container's mount finds the first's. A field the plugin does not keep ("filling") is dropped.
    await stopPlugin(plugin);
    const statePath = join(stateDir, "state.json");
    const saved = JSON.parse(readFileSync(statePath, "utf8")) as { volumes: Record<string, Record<string, unknown>> };
    saved.volumes["pg"]!["filling"] = "pg@gone";
    writeFileSync(statePath, JSON.stringify(saved));
    plugin = await startPlugin(api, socketPath, stateDir, runDir);
    const m2 = await call("VolumeDriver.Mount", { Name: "pg", ID: "b".repeat(64) });
    assert.equal(m2.body, { Mountpoint: mountpoint, Err: "" });
    assert.equal(JSON.parse(readFileSync(statePath, "utf8")).volumes["pg"], { ids: ["a".repeat(64), "b".repeat(64)], fs: "ext4" });
    assert.is(readFileSync(join(mountpoint, "PG_VERSION"), "utf8"), "16\n");
    const busy = await call("VolumeDriver.Remove", { Name: "pg" });
    assert.match(String(busy.body["Err"]), /mounted for 2 container\(s\) here; stop them first/);

    assert.equal((await call("VolumeDriver.Unmount", { Name: "pg", ID: "a".repeat(64) })).body, { Err: "" });
    assert.ok(existsSync(join(mountpoint, "PG_VERSION")), "still mounted for the second container");
    assert.equal((await call("VolumeDriver.Unmount", { Name: "pg", ID: "b".repeat(64) })).body, { Err: "" });
    assert.not.ok(existsSync(join(mountpoint, "PG_VERSION")), "the last unmount unmounted it");
    assert.equal((await call("VolumeDriver.Path", { Name: "pg" })).body, { Mountpoint: "", Err: "" });
    assert.equal(await c.nodes[0]!.api.listAttachments(), [], "and detached it");
    assert.not.ok((await runOk("losetup", ["-a"])).includes(t.dir), "no loop device is left");

    // A volume from a snapshot of pg: a clone of it, of its size or larger, its files there; zones refused with it.
    await c.nodes[0]!.api.createSnapshot("pg", { name: "s" });
    assert.match(String((await call("VolumeDriver.Create", { Name: "pg2", Opts: { snapshot: "pg@nope" } })).body["Err"]), /snapshot pg@nope does not exist/);
    assert.match(String((await call("VolumeDriver.Create", { Name: "pg2", Opts: { snapshot: "pg@s", size: "1M" } })).body["Err"]), /smaller than snapshot pg@s/);
    assert.match(String((await call("VolumeDriver.Create", { Name: "pg2", Opts: { snapshot: "pg@s", zones: "true" } })).body["Err"]), /option zones cannot be used with option snapshot/);
    assert.match(String((await call("VolumeDriver.Create", { Name: "pg", Opts: { snapshot: "pg@s" } })).body["Err"]), /volume pg exists and is not a clone of snapshot pg@s/);
    for (const [name, opts, sizeBytes] of [["pg2", { snapshot: "pg@s" }, 64 * 1024 * 1024], ["pg3", { snapshot: "pg@s", size: "96M" }, 96 * 1024 * 1024]] as const) {
      assert.equal((await call("VolumeDriver.Create", { Name: name, Opts: opts })).body, { Err: "" });
      assert.equal((await call("VolumeDriver.Create", { Name: name, Opts: opts })).body, { Err: "" }, "created again: the same volume");
      const made = await c.nodes[0]!.api.inspectVolume(name);
      assert.equal([made.sizeBytes, made.clonedFrom], [sizeBytes, "pg@s"], `${name}: a clone of the snapshot, of its size or option size`);
      const m = await call("VolumeDriver.Mount", { Name: name, ID: "c".repeat(64) });
      assert.is(m.status, 200, JSON.stringify(m.body));
      assert.is(readFileSync(join(String(m.body["Mountpoint"]), "PG_VERSION"), "utf8"), "16\n", "the snapshot's files");
      assert.equal((await call("VolumeDriver.Unmount", { Name: name, ID: "c".repeat(64) })).body, { Err: "" });
      assert.equal((await call("VolumeDriver.Remove", { Name: name })).body, { Err: "" });
    }

    assert.equal((await call("VolumeDriver.Remove", { Name: "pg" })).body, { Err: "" });
    assert.is((await c.nodes[0]!.api.listVolumes()).length, 0);
    assert.is((await call("VolumeDriver.Snapshot", {})).status, 404);
  } finally {
    agent.destroy();
    if (plugin) await stopPlugin(plugin);
    await runOk("umount", ["-l", join(stateDir, "mounts", "pg")]).catch(() => undefined);
    await runOk("umount", ["-l", join(stateDir, "mounts", "pg2")]).catch(() => undefined);
    await runOk("umount", ["-l", join(stateDir, "mounts", "pg3")]).catch(() => undefined);
    await c?.dispose();
    t.remove();
  }
});

test.run();
