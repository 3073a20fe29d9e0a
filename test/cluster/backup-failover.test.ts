// A node killed in the middle of a backup: a three-node cluster, a repl-3
// volume of random bytes, `pxd backup create` through the node that then
// serves its NBD connection, which is killed once the first chunk is done.
// The backup starts over on another node (saying so), finds the chunks it
// had uploaded, and finishes; restored (once the node is back) through
// another node, the volume has the source's bytes.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { startCluster } from "../helpers/cluster.js";
import { pxdEntry } from "../helpers/daemon.js";
import { run, runOk } from "../helpers/run.js";
import { tempDir } from "../helpers/tmp.js";

const MiB = 1024 * 1024;

test("a node killed mid-backup: the backup starts over on another node and restores whole", async () => {
  const c = await startCluster(3);
  const t = tempDir("backup-failover");
  try {
    const [a, b, victim] = c.nodes as [(typeof c.nodes)[0], (typeof c.nodes)[0], (typeof c.nodes)[0]];
    await a.api.createVolume({ name: "v", sizeBytes: 96 * MiB, repl: 3 });
    const image = join(t.dir, "v.img");
    writeFileSync(image, randomBytes(96 * MiB));
    await runOk("nbdcopy", ["--", image, a.uri("v")]);
    const url = `file://${t.dir}`;
    // Through the victim's API: it lists itself first, so the backup's NBD connection is to it.
    const child = spawn(process.execPath, [pxdEntry, "backup", "create", "v", "--to", url, "--json", "--chunks-in-flight", "1"], {
      env: { ...process.env, PXD_HOST: `${victim.host}:${victim.apiPort}` },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    let killed: Promise<void> | undefined;
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
      if (killed === undefined && stderr.includes('"doneBytes"')) killed = victim.kill();
    });
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
    await killed;
    assert.ok(killed !== undefined, "the node was killed after the first chunk");
    assert.is(code, 0, stderr);
    const at = `${victim.host}:${victim.nbdPort}`.replace(/\./g, "\\.");
    assert.ok(new RegExp(`the NBD (server at|connection to) ${at}[^\n]*; starting over on another connection \\(2 of 3\\)`).test(stderr), `the backup says it starts over:\n${stderr}`);
    const s = JSON.parse(stdout) as { chunks: number; reusedChunks: number; uploadedChunks: number };
    assert.is(s.chunks, 24);
    assert.ok(s.reusedChunks >= 1 && s.uploadedChunks + s.reusedChunks === 24, `the chunks uploaded before the kill are found: ${stdout}`);
    // Back up before the restore: placement may pick a node killed a moment ago, before the cluster sees it down.
    await victim.start();
    await c.healthy();
    const r = await run(process.execPath, [pxdEntry, "backup", "restore", url, "v/latest", "w"], { env: { ...process.env, PXD_HOST: `${a.host}:${a.apiPort}` }, timeoutMs: 120_000 });
    assert.is(r.code, 0, r.stderr);
    const cmp = await run("qemu-img", ["compare", "-f", "raw", "-F", "raw", image, b.uri("w")]);
    assert.is(cmp.code, 0, `${cmp.stdout}${cmp.stderr}`);
  } finally {
    await c.dispose();
    t.remove();
  }
});

test.run();
