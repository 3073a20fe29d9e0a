// The newcomer's path: `pxd up` starts a real three-node cluster in the
// background, creates a replicated volume and prints how to use it; the
// printed URI works with a real NBD client; the CLI verbs work against it;
// `pxd down` stops every node.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { existsSync, readFileSync, statSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import { pxdEntry } from "../helpers/daemon.js";
import { freeBase, nodeHost } from "../helpers/cluster.js";
import { run, runOk } from "../helpers/run.js";
import { tempDir } from "../helpers/tmp.js";

test("pxd up, the volume verbs, an NBD client on the printed URI, pxd down", async () => {
  const t = tempDir("up");
  const base = await freeBase(3);
  const first = nodeHost(0, base);
  const nbdPort = 10809;
  const host = ["--host", `${first}:9001`];
  const upArgs = ["up", "--address", first];
  const dataDir = join(t.dir, ".pxd");
  // Run where pxd up ran and without the test's own token: the CLI finds the token pxd up wrote (.pxd/admin.token) by itself.
  const { PXD_TOKEN: _token, ...env } = process.env;
  const where = { cwd: t.dir, env };
  const pxd = (...args: string[]): Promise<string> => runOk(process.execPath, [pxdEntry, ...host, ...args], where);
  try {
    const out = await pxd(...upArgs, "--data-dir", dataDir, "--size", "64M");
    const uri = `nbd://${first}:${nbdPort}/demo`;
    assert.match(out, /^pxd is running: 3 nodes/m);
    assert.match(out, /3 replicas/);
    assert.ok(out.includes(uri), out);
    assert.match(out, /nbdinfo|nbdfuse/);
    assert.ok(existsSync(join(dataDir, "node1", "daemon.pid")));
    const info = JSON.parse(await runOk("nbdinfo", ["--json", uri])) as { exports: { "export-size": number }[] };
    assert.is(info.exports[0]!["export-size"], 64 * 1024 * 1024);

    assert.match(await pxd("volume", "create", "db", "--size", "32M"), /db/);
    const dup = await run(process.execPath, [pxdEntry, ...host, "volume", "create", "db", "--size", "32M"], where);
    assert.is(dup.code, 1);
    assert.match(dup.stderr, /already exists/);
    const list = JSON.parse(await pxd("volume", "list", "--json")) as { volumes: { name: string }[] };
    assert.equal(list.volumes.map((v) => v.name), ["db", "demo"]);
    const inspected = JSON.parse(await pxd("volume", "inspect", "db", "--json")) as { sizeBytes: number; nbdUri: string };
    assert.is(inspected.sizeBytes, 32 * 1024 * 1024);
    await runOk("qemu-io", ["-f", "raw", inspected.nbdUri, "-c", "write -P 0x42 0 1M"]);
    assert.match(await pxd("status"), /online/);
    const version = (JSON.parse(readFileSync(fileURLToPath(new URL("../../../package.json", import.meta.url)), "utf8")) as { version: string }).version;
    assert.is((JSON.parse(await pxd("status", "--json")) as { version: string }).version, version, "the daemon's version is the package's");
    assert.is((await pxd("--version")).trim(), version, "and so is the CLI's");
    await pxd("volume", "delete", "db");
    // pxd up made a cluster key (0600) and gave it to its nodes: an encrypted volume works without setting anything.
    const { PXD_CLUSTER_KEY: _key, ...noKeyEnv } = env;
    assert.match(await runOk(process.execPath, [pxdEntry, ...host, "volume", "create", "vault", "--size", "4M", "--encrypted"], { cwd: t.dir, env: noKeyEnv }), /vault/);
    assert.is(statSync(join(dataDir, "cluster.key")).mode & 0o777, 0o600);
    await runOk("qemu-io", ["-f", "raw", `nbd://${first}:${nbdPort}/vault`, "-c", "write -P 0x77 0 64k", "-c", "read -P 0x77 0 64k"]);
    await pxd("volume", "delete", "vault");
    const gone = await run(process.execPath, [pxdEntry, ...host, "volume", "inspect", "db"], where);
    assert.is(gone.code, 1);
    assert.match(gone.stderr, /no volume named "db"/);

    // A second `up` finds the running node and its volume.
    const nodes = JSON.parse(await pxd("node", "list", "--json")) as { nodes: { health: string }[] };
    assert.equal(nodes.nodes.map((n) => n.health), ["up", "up", "up"]);
    const other = await runOk("qemu-io", ["-f", "raw", `nbd://${nodeHost(2, base)}:${nbdPort}/demo`, "-c", "read -P 0 0 4096"]);
    assert.not.match(other, /fail/i, "every node exports the volume");
    assert.ok((await pxd(...upArgs, "--data-dir", dataDir, "--size", "64M")).includes(uri));
    await pxd("down", "--data-dir", dataDir);
    for (const n of [1, 2, 3]) assert.not.ok(existsSync(join(dataDir, `node${n}`, "daemon.pid")));
    const after = await run("nbdinfo", [uri]);
    assert.is.not(after.code, 0, "nothing answers after pxd down");
  } finally {
    await run(process.execPath, [pxdEntry, ...host, "down", "--data-dir", dataDir]);
    t.remove();
  }
});

test.run();
