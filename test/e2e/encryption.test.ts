// Encryption at rest against a real daemon, real files and real NBD clients
// (qemu-io, nbdcopy, nbdinfo): a known plaintext written to an encrypted
// volume reads back, and appears nowhere under the node's data dir (segments,
// checkpoints, the catalog, node state), while the same kind of pattern
// written to a plain volume beside it is found there (so the scan can fail);
// holes, trims and zeroed ranges read as zeroes; a sub-4 KiB write is merged
// with its unit; the snapshot export and a clone decrypt; a restart reads the
// same bytes; a daemon started without the key refuses the export with a
// sentence and refuses to create an encrypted volume. A backup of it holds
// no plaintext and restores on another cluster that has the same key. On a
// 3-node cluster no node's files (followers' included) hold the plaintext.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { randomBytes } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { startCluster, waitUntil } from "../helpers/cluster.js";
import { pxdEntry, startDaemon, type DaemonProcess } from "../helpers/daemon.js";
import { run, runOk } from "../helpers/run.js";
import { tempDir } from "../helpers/tmp.js";

const MiB = 1024 * 1024;
const sizeBytes = 16 * MiB;
const dataBytes = 4 * MiB;

/** `marker` and a counter, over and over: easy to find in a file, and no two 4 KiB units alike. */
function marked(marker: string, bytes: number): Buffer {
  const out = Buffer.alloc(bytes);
  let at = 0;
  for (let i = 0; at < bytes; i++) at += out.write(`${marker}${String(i).padStart(8, "0")};`, at, "latin1");
  return out;
}

/** Every file under dir, recursively. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    const s = statSync(p);
    return s.isDirectory() ? filesUnder(p) : s.isFile() ? [p] : [];
  });
}

/** The files under dir that hold `needle`. */
function holding(dir: string, needle: string): string[] {
  const n = Buffer.from(needle, "latin1");
  return filesUnder(dir).filter((f) => readFileSync(f).includes(n));
}

async function readVolume(d: DaemonProcess, exportName: string, dir: string): Promise<Buffer> {
  const out = join(dir, `${exportName.replace("@", "_")}.img`);
  await runOk("nbdcopy", [d.uri(exportName), out]);
  return readFileSync(out);
}

test("an encrypted volume's plaintext is nowhere on disk, reads back through restarts, snapshots and clones, and a node without the key refuses it", async () => {
  const t = tempDir("encryption");
  const keyFile = join(t.dir, "cluster.key");
  writeFileSync(keyFile, randomBytes(32).toString("hex") + "\n", { mode: 0o600 });
  const d = await startDaemon("127.0.0.1", ["--cluster-key-file", keyFile]);
  try {
    const v = await d.api.createVolume({ name: "sec", sizeBytes, encrypted: true });
    assert.is(v.encrypted, true);
    assert.is((await d.api.inspectVolume("sec")).encrypted, true);
    assert.is((await d.api.createVolume({ name: "plain", sizeBytes })).encrypted, false);
    const secret = marked("SECRET-PLAINTEXT-OF-SEC-", dataBytes);
    const open = marked("PLAIN-VOLUME-PATTERN-", dataBytes);
    writeFileSync(join(t.dir, "secret.bin"), secret);
    writeFileSync(join(t.dir, "open.bin"), open);
    await runOk("qemu-io", ["-f", "raw", d.uri("sec"), "-c", `write -s ${join(t.dir, "secret.bin")} 0 ${dataBytes}`]);
    await runOk("qemu-io", ["-f", "raw", d.uri("plain"), "-c", `write -s ${join(t.dir, "open.bin")} 0 ${dataBytes}`]);

    // What the volume should hold: the pattern, a write inside a unit (merged with it on the leader), a range written then zeroed, one written then trimmed.
    const want = Buffer.alloc(sizeBytes);
    secret.copy(want, 0);
    want.fill(0x5a, 300 * 4096 + 100, 300 * 4096 + 1100);
    await runOk("qemu-io", ["-f", "raw", d.uri("sec"), "-c", `write -P 0x5a ${300 * 4096 + 100} 1000`, "-c", `write -P 0x33 ${8 * MiB} ${MiB}`, "-c", `write -z ${8 * MiB} ${MiB}`, "-c", `write -P 0x44 ${10 * MiB} ${MiB}`, "-c", `discard ${10 * MiB} ${MiB}`, "-c", `write -z ${12 * MiB + 512} 1024`]);
    assert.ok((await readVolume(d, "sec", t.dir)).equals(want), "the encrypted volume reads back what was written, zeroes where nothing is");

    const leaks = holding(d.dataDir, "SECRET-PLAINTEXT-OF-SEC-");
    assert.equal(leaks, [], `the encrypted volume's plaintext is in ${leaks.join(", ")}`);
    assert.ok(holding(d.dataDir, "PLAIN-VOLUME-PATTERN-").length > 0, "the plain volume's pattern is on disk (the scan finds what is there)");

    // The snapshot export decrypts; a clone of an encrypted volume is encrypted, with the same bytes.
    await d.api.createSnapshot("sec", { name: "s1" });
    assert.ok((await readVolume(d, "sec@s1", t.dir)).equals(want), "the snapshot export reads the plaintext");
    const clone = await run(process.execPath, [pxdEntry, "volume", "clone", "sec@s1", "sec2"], { env: { ...process.env, PXD_HOST: `127.0.0.1:${d.apiPort}` }, timeoutMs: 60_000 });
    assert.is(clone.code, 0, clone.stderr);
    assert.is((await d.api.inspectVolume("sec2")).encrypted, true);
    assert.ok((await readVolume(d, "sec2", t.dir)).equals(want), "the clone holds the snapshot's bytes");

    // A backup of the encrypted volume is encrypted; another cluster with the same cluster key restores it, one without the key is told what to give.
    const url = `file://${t.dir}/target`;
    mkdirSync(join(t.dir, "target"));
    const key = readFileSync(keyFile, "utf8").trim();
    const pxd = (node: DaemonProcess, args: string[], env: NodeJS.ProcessEnv = {}) => run(process.execPath, [pxdEntry, ...args], { env: { ...process.env, PXD_HOST: `127.0.0.1:${node.apiPort}`, ...env }, timeoutMs: 60_000 });
    const made = await pxd(d, ["backup", "create", "sec", "--to", url], { PXD_CLUSTER_KEY: key });
    assert.is(made.code, 0, made.stderr);
    const stored = holding(join(t.dir, "target"), "SECRET-PLAINTEXT-OF-SEC-");
    assert.equal(stored, [], "the backup target holds no plaintext");
    const other = await startDaemon("127.0.0.1", ["--cluster-key-file", keyFile]);
    try {
      const refused = await pxd(other, ["backup", "restore", url, "sec/latest", "back"]);
      assert.is.not(refused.code, 0);
      assert.match(refused.stderr, /backup sec\/\S+ is encrypted: set PXD_CLUSTER_KEY or give --cluster-key-file FILE/);
      const restored = await pxd(other, ["backup", "restore", url, "sec/latest", "back", "--cluster-key-file", keyFile]);
      assert.is(restored.code, 0, restored.stderr);
      assert.is((await other.api.inspectVolume("back")).encrypted, true, "a restored encrypted backup is an encrypted volume");
      assert.ok((await readVolume(other, "back", t.dir)).equals(want), "another cluster with the same key restores the same bytes");
    } finally {
      await other.dispose();
    }

    await d.restart();
    assert.ok((await readVolume(d, "sec", t.dir)).equals(want), "after a restart the volume reads the same");
    assert.equal(holding(d.dataDir, "SECRET-PLAINTEXT-OF-SEC-"), [], "nor is it on disk after the restart");

    // Without the key: the export is refused with a sentence, the plain volume is still served, and no encrypted volume can be made.
    d.extraArgs = [];
    delete d.env["PXD_CLUSTER_KEY"];
    await d.restart();
    const info = await run("nbdinfo", [d.uri("sec")]);
    assert.is.not(info.code, 0, "nbdinfo of an encrypted volume on a node without the key fails");
    // qemu shows the server's sentence (libnbd only in its debug output).
    const qemu = await run("qemu-io", ["-f", "raw", d.uri("sec"), "-c", "read 0 4096"]);
    assert.is.not(qemu.code, 0);
    assert.match(qemu.stderr, /server reported: volume "sec" is encrypted and node \d+ has no cluster key, .* start the node with --cluster-key-file FILE or PXD_CLUSTER_KEY/, qemu.stderr);
    assert.match(d.output, /export sec refused/);
    await runOk("nbdinfo", [d.uri("plain")]);
    const snap = await run("nbdinfo", [d.uri("sec@s1")]);
    assert.is.not(snap.code, 0, "nor its snapshot");
    try {
      await d.api.createVolume({ name: "sec3", sizeBytes, encrypted: true });
      assert.unreachable("an encrypted volume was created on a node without the cluster key");
    } catch (e) {
      assert.match((e as Error).message, /has no cluster key; start every node with --cluster-key-file FILE .* or PXD_CLUSTER_KEY/);
    }
  } finally {
    await d.dispose();
    t.remove();
  }
});

test("on a 3-node cluster no node's data dir holds an encrypted volume's plaintext, while every node holds a plain volume's", async () => {
  const t = tempDir("encryption-cluster");
  const keyFile = join(t.dir, "cluster.key");
  writeFileSync(keyFile, randomBytes(32), { mode: 0o600 }); // raw bytes this time
  const c = await startCluster(3, ["--cluster-key-file", keyFile]);
  try {
    const [n1, n2, n3] = c.nodes as [DaemonProcess, DaemonProcess, DaemonProcess];
    await n1.api.createVolume({ name: "sec", sizeBytes, repl: 3, encrypted: true });
    await n1.api.createVolume({ name: "plain", sizeBytes, repl: 3 });
    const secret = marked("CLUSTER-SECRET-OF-SEC-", MiB);
    writeFileSync(join(t.dir, "secret.bin"), secret);
    writeFileSync(join(t.dir, "open.bin"), marked("CLUSTER-PLAIN-PATTERN-", MiB));
    // Written through one node and read through another: wherever the leader is, requests are forwarded to it.
    await runOk("qemu-io", ["-f", "raw", n2.uri("sec"), "-c", `write -s ${join(t.dir, "secret.bin")} 0 ${MiB}`]);
    await runOk("qemu-io", ["-f", "raw", n2.uri("plain"), "-c", `write -s ${join(t.dir, "open.bin")} 0 ${MiB}`]);
    assert.ok((await readVolume(n3, "sec", t.dir)).subarray(0, MiB).equals(secret));
    await waitUntil("the plain volume's pattern on every node", async () => c.nodes.every((n) => holding(n.dataDir, "CLUSTER-PLAIN-PATTERN-").length > 0));
    for (const n of c.nodes) assert.equal(holding(n.dataDir, "CLUSTER-SECRET-OF-SEC-"), [], `node ${n.host} holds the plaintext`);
  } finally {
    await c.dispose();
    t.remove();
  }
});

test.run();
