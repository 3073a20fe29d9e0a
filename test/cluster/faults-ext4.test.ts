// ext4 through nbdfuse + a loop device on a node that survives, while the
// volume's leader (another node) is SIGKILLed in the middle of a file-writing
// load: the filesystem never sees an error, e2fsck -fn is clean afterwards and
// every file reads back with its checksum -- also after the killed node is
// back and has caught up.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { readFile, writeFile, open } from "node:fs/promises";
import { join } from "node:path";
import { startCluster, type Cluster } from "../helpers/cluster.js";
import { run, runOk } from "../helpers/run.js";
import { attach, detach, type Attached } from "../helpers/nbdfuse.js";
import { tempDir } from "../helpers/tmp.js";

const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash("sha256").update(b).digest("hex");


let c: Cluster;

test.before(async () => {
  c = await startCluster(3);
});

test.after(async () => {
  await c.dispose();
});

test("ext4 on a surviving node's export stays consistent through a SIGKILL of the leader", async () => {
  await c.nodes[0]!.api.createVolume({ name: "fs", sizeBytes: 256 * MiB, repl: 3 });
  const leader = await c.leaderOf("fs");
  const survivor = c.nodes[(leader + 1) % 3]!;
  const t = tempDir("faults-ext4");
  const mnt = join(t.dir, "mnt");
  mkdirSync(mnt);
  let a: Attached | undefined;
  let mounted = false;
  try {
    a = await attach(survivor.uri("fs"), t.dir);
    await runOk("mkfs.ext4", ["-q", "-F", a.loop]);
    await runOk("mount", [a.loop, mnt]);
    mounted = true;
    const sums = new Map<string, string>();
    let killed = false;
    let killedAfter = 0;
    const deadline = Date.now() + 90000;
    // The load: files of 64 KiB to 1 MiB, each fsynced, in a few directories.
    for (let i = 0; i < 40; i++) {
      assert.ok(Date.now() < deadline, `the file load finishes in time (${i} files written)`);
      const dir = join(mnt, `d${i % 4}`);
      mkdirSync(dir, { recursive: true });
      const data = randomBytes(64 * 1024 + ((i * 97 * 1024) % (960 * 1024)));
      const name = join(`d${i % 4}`, `f${i}.bin`);
      const fh = await open(join(mnt, name), "w");
      const write = (async () => {
        await fh.writeFile(data);
        await fh.sync();
        await fh.close();
      })();
      if (i === 8) {
        // Kill the leader while this file's data is on its way.
        await new Promise((r) => setTimeout(r, 5));
        await c.nodes[leader]!.kill();
        killed = true;
        killedAfter = i;
      }
      await write;
      sums.set(name, sha(data));
    }
    await writeFile(join(mnt, "done.txt"), "all written\n");
    assert.ok(killed);
    console.log(`40 files written and fsynced on ${survivor.host}; leader node ${leader + 1} SIGKILLed during file ${killedAfter}`);
    await runOk("umount", [mnt]);
    mounted = false;
    const fsck = await run("e2fsck", ["-fn", a.loop]);
    assert.is(fsck.code, 0, `e2fsck -fn is clean:\n${fsck.stdout}${fsck.stderr}`);
    await detach(a);
    a = undefined;

    await c.nodes[leader]!.start();
    await c.healthy();
    // Mount again through the node that was killed: same files, same bytes.
    a = await attach(c.nodes[leader]!.uri("fs"), t.dir);
    const fsck2 = await run("e2fsck", ["-fn", a.loop]);
    assert.is(fsck2.code, 0, `e2fsck -fn is clean through the restarted node:\n${fsck2.stdout}${fsck2.stderr}`);
    await runOk("mount", ["-o", "ro", a.loop, mnt]);
    mounted = true;
    for (const [name, sum] of sums) assert.is(sha(await readFile(join(mnt, name))), sum, name);
    assert.is(await readFile(join(mnt, "done.txt"), "utf8"), "all written\n");
    await runOk("umount", [mnt]);
    mounted = false;
    await detach(a);
    a = undefined;
  } finally {
    if (mounted) await run("umount", ["-l", mnt]);
    if (a) await detach(a).catch(() => {});
    t.remove();
  }
});

test.run();
