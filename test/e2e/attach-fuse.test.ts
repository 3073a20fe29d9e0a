// pxd volume attach/mount/unmount/detach through the real CLI on this machine,
// which has no kernel nbd module: attach falls back to nbdfuse and a loop
// device. Two "hosts" are two host names with their own run dirs, against a
// real three-node cluster: the second host's read-write attach is refused,
// a delete of an attached volume is refused, a mount never makes a
// filesystem over data, and detach leaves no loop device, FUSE mount or
// process behind. Leadership then follows an attachment to the replica that
// serves it. A node that requires NBD TLS is refused at once, with what to do.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, readdirSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { startCluster, type Cluster } from "../helpers/cluster.js";
import { pxdEntry, startDaemon } from "../helpers/daemon.js";
import { runOk } from "../helpers/run.js";
import { tempDir } from "../helpers/tmp.js";

const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

function cliAs(api: string, host: string, runDir: string) {
  return (...args: string[]): Promise<CliResult> =>
    new Promise((resolve) => {
      execFile(process.execPath, [pxdEntry, "--host", api, ...args], { env: { ...process.env, PXD_HOST_NAME: host, PXD_RUN_DIR: runDir }, encoding: "utf8", timeout: 120_000 }, (err, stdout, stderr) => {
        resolve({ code: err === null ? 0 : typeof err.code === "number" ? err.code : 1, stdout, stderr });
      });
    });
}

async function ok(p: Promise<CliResult>): Promise<string> {
  const r = await p;
  assert.is(r.code, 0, `the CLI failed: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** Loop devices backed by a file under `dir`. */
async function loopsUnder(dir: string): Promise<string[]> {
  return (await runOk("losetup", ["-a"])).split("\n").filter((l) => l.includes(dir));
}

function fuseMountsUnder(dir: string): string[] {
  return readFileSync("/proc/mounts", "utf8").split("\n").filter((l) => l.includes(dir));
}

function writeSynced(path: string, data: Buffer): void {
  const fd = openSync(path, "w");
  writeSync(fd, data);
  fsyncSync(fd);
  closeSync(fd);
}

test("attach via fuse: mount, write, refusals for a second host and a delete, unmount, remount keeps the data, nothing left behind", async () => {
  const t = tempDir("attach-fuse");
  let c: Cluster | undefined;
  const runA = join(t.dir, "run-a");
  const runB = join(t.dir, "run-b");
  const mnt = join(t.dir, "mnt");
  try {
    c = await startCluster(3);
    await c.healthy();
    const api = `${c.nodes[0]!.host}:9001`;
    const a = cliAs(api, "host-a", runA);
    const b = cliAs(api, "host-b", runB);
    await ok(a("volume", "create", "db", "--size", "64M", "--repl", "3"));

    // A missing volume and an impossible --via leave nothing in the catalog.
    const missing = await a("volume", "attach", "nosuch");
    assert.is(missing.code, 1);
    assert.match(missing.stderr, /no volume named "nosuch"/);
    const kernel = await a("volume", "attach", "db", "--via", "kernel");
    assert.is(kernel.code, 1);
    assert.match(kernel.stderr, /cannot attach via the kernel: .*--via fuse/);
    const device = await a("volume", "attach", "db", "--via", "fuse", "--device", "/dev/nbd3");
    assert.is(device.code, 2);
    assert.match(device.stderr, /--device and --connections apply to the kernel's nbd devices/);
    assert.equal(JSON.parse(await ok(a("attachments", "--json"))), { attachments: [] });

    // Host A mounts it: fuse chosen automatically, with one line saying why; a fresh volume gets ext4.
    const mounted = await a("volume", "mount", "db", mnt);
    assert.is(mounted.code, 0, mounted.stderr);
    assert.match(mounted.stderr, /attaching via fuse .*: the kernel has no nbd module/);
    assert.match(mounted.stdout, /volume db mounted at .* \(\/dev\/loop\d+, ext4, made ext4\)/);
    const files = new Map<string, string>();
    for (let i = 0; i < 4; i++) {
      const data = randomBytes(256 * 1024 + i * 4096);
      writeSynced(join(mnt, `f${i}`), data);
      files.set(`f${i}`, sha(data));
    }

    const list = JSON.parse(await ok(a("attachments", "--json"))) as { attachments: { volume: string; host: string; device: string; via: string; readOnly: boolean; node: string }[] };
    assert.is(list.attachments.length, 1);
    const att = list.attachments[0]!;
    assert.equal([att.volume, att.host, att.via, att.readOnly], ["db", "host-a", "fuse", false]);
    assert.match(att.device, /^\/dev\/loop\d+$/);
    assert.match(att.node, /^node[123]$/);
    assert.match(await ok(a("volume", "inspect", "db")), /attached\s+host-a \/dev\/loop\d+ via fuse from node[123]/);

    // Host B may not attach it read-write; the refusal names host A and leaves nothing on B.
    const second = await b("volume", "attach", "db");
    assert.is(second.code, 1);
    assert.match(second.stderr, /attached read-write on host host-a/);
    assert.equal(existsSync(runB) ? readdirSync(runB).filter((f) => f.endsWith(".json")) : [], []);
    // Deleting an attached volume is refused, naming the host.
    const del = await a("volume", "delete", "db");
    assert.is(del.code, 1);
    assert.match(del.stderr, /attached on host-a/);
    // Detach while mounted is refused too.
    const busy = await a("volume", "detach", "db");
    assert.is(busy.code, 1);
    assert.match(busy.stderr, /is mounted at/);

    assert.match(await ok(a("volume", "unmount", mnt)), /unmounted .* and detached/);
    assert.equal(await loopsUnder(t.dir), []);
    assert.equal(fuseMountsUnder(t.dir), []);
    assert.equal(readdirSync(runA), [], "no record, log, pid file or FUSE directory is left");
    assert.equal(JSON.parse(await ok(a("attachments", "--json"))), { attachments: [] });

    // Mounting again finds the filesystem (no mkfs over data) and every fsynced file intact.
    assert.match(await ok(a("volume", "mount", "db", mnt)), /\(\/dev\/loop\d+, ext4\)$/m);
    for (const [name, sum] of files) assert.is(sha(readFileSync(join(mnt, name))), sum, name);
    await ok(a("volume", "unmount", mnt));
    await runOk("e2fsck", ["-fn", await attachedDevice(b)]).finally(() => ok(b("volume", "detach", "db")));

    assert.match(await ok(a("volume", "delete", "db")), /deleted/);
    assert.equal(await loopsUnder(t.dir), []);
    assert.equal(fuseMountsUnder(t.dir), []);

    // Leadership follows the host: attached read-write through a replica that does not lead, that replica comes to lead.
    await ok(a("volume", "create", "near", "--size", "16M", "--repl", "3"));
    const leader = await c.leaderOf("near");
    const near = c.others(leader)[0]!;
    await c.nodes[0]!.api.attachVolume("near", { host: "host-c", via: "kernel", readOnly: false, device: "/dev/nbd0", node: `node${near + 1}` });
    assert.is(await c.leaderAmong("near", [near], -1, 60_000), near);
    await c.nodes[0]!.api.detachVolume("near", "host-c");
  } finally {
    await runOk("umount", ["-l", mnt]).catch(() => undefined);
    for (const l of await loopsUnder(t.dir).catch(() => [])) await runOk("losetup", ["-d", l.split(":")[0]!]).catch(() => undefined);
    for (const m of fuseMountsUnder(t.dir)) await runOk("fusermount3", ["-u", "-z", m.split(" ")[1]!]).catch(() => undefined);
    await c?.dispose();
    t.remove();
  }
});

test("attach against a node that requires NBD TLS stops before anything is made, saying what to do", async () => {
  const t = tempDir("attach-tls");
  const keys = join(t.dir, "keys.psk");
  writeFileSync(keys, `alice:${"a1".repeat(32)}\n`);
  const d = await startDaemon("127.0.0.1", ["--nbd-tls", "require", "--nbd-tls-psk", keys]);
  try {
    await d.api.createVolume({ name: "t", sizeBytes: 8 * MiB });
    const a = cliAs(`127.0.0.1:${d.apiPort}`, "host-t", join(t.dir, "run"));
    const r = await a("volume", "attach", "t");
    assert.is(r.code, 1, r.stderr);
    assert.match(r.stderr, /^error: cannot attach t: the node at 127\.0\.0\.1:\d+ requires TLS on NBD \(--nbd-tls require\), and the kernel's NBD driver and nbdfuse speak none; run the nodes with --nbd-tls on/m);
    assert.equal((await d.api.inspectVolume("t")).attachments, [], "nothing reserved in the catalog");
    assert.equal(await loopsUnder(t.dir), []);
  } finally {
    await d.dispose();
    t.remove();
  }
});

/** Host B attaches (now that A let go) and returns the device, for e2fsck. */
async function attachedDevice(b: (...args: string[]) => Promise<CliResult>): Promise<string> {
  const out = (await ok(b("volume", "attach", "db", "--read-only"))).trim();
  assert.match(out, /^\/dev\/loop\d+$/);
  return out;
}

test.run();
