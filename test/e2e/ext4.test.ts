// A real ext4 filesystem on a pxd volume through nbdfuse + a loop device:
// write files, unmount, restart the daemon, mount again, same checksums, and
// e2fsck finds nothing wrong. And ext4 grown with its volume: files written
// on a 64 MiB volume, the volume grown to 160 MiB, attached again (nbdfuse's
// device keeps the size of its handshake), resize2fs (offline: growing a
// mounted ext4 needs CAP_SYS_RESOURCE, which a test here may lack); the old
// files are intact, the new room takes a file larger than the old volume,
// and e2fsck is clean.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, statfsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { startDaemon } from "../helpers/daemon.js";
import { attach, detach, type Attached } from "../helpers/nbdfuse.js";
import { run, runOk } from "../helpers/run.js";
import { tempDir } from "../helpers/tmp.js";

const MiB = 1024 * 1024;


const sha = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

test("ext4 on a pxd volume keeps its files across a daemon restart and passes e2fsck", async () => {
  const daemon = await startDaemon();
  const t = tempDir("ext4");
  const mnt = join(t.dir, "mnt");
  mkdirSync(mnt);
  let a: Attached | undefined;
  try {
    await daemon.api.createVolume({ name: "fs", sizeBytes: 256 * MiB });
    a = await attach(daemon.uri("fs"), t.dir);
    await runOk("mkfs.ext4", ["-q", "-F", a.loop]);
    await runOk("mount", [a.loop, mnt]);
    const sums = new Map<string, string>();
    for (let i = 0; i < 12; i++) {
      const data = randomBytes((i + 1) * 300 * 1024 + i);
      const name = `file-${i}.bin`;
      writeFileSync(join(mnt, name), data);
      sums.set(name, sha(data));
    }
    mkdirSync(join(mnt, "dir/sub"), { recursive: true });
    writeFileSync(join(mnt, "dir/sub/note.txt"), "nothing lost\n");
    await runOk("umount", [mnt]);
    await detach(a);
    a = undefined;

    await daemon.restart();

    a = await attach(daemon.uri("fs"), t.dir);
    const fsck = await run("e2fsck", ["-fn", a.loop]);
    assert.is(fsck.code, 0, `e2fsck -fn is clean:\n${fsck.stdout}${fsck.stderr}`);
    await runOk("mount", [a.loop, mnt]);
    for (const [name, sum] of sums) assert.is(sha(readFileSync(join(mnt, name))), sum, name);
    assert.is(readFileSync(join(mnt, "dir/sub/note.txt"), "utf8"), "nothing lost\n");
    await runOk("umount", [mnt]);
    await detach(a);
    a = undefined;
    const info = await daemon.api.inspectVolume("fs");
    assert.ok(info.allocatedBytes > 4 * MiB && info.allocatedBytes < 128 * MiB, `ext4 allocated ${info.allocatedBytes} bytes, the rest stays holes`);
  } finally {
    await run("umount", [mnt]);
    if (a) await detach(a).catch(() => {});
    await daemon.dispose();
    t.remove();
  }
});

test("ext4 on a pxd volume grows with the volume: old files intact, new room usable, e2fsck clean", async () => {
  const daemon = await startDaemon();
  const t = tempDir("resize-ext4");
  const mnt = join(t.dir, "mnt");
  mkdirSync(mnt);
  let a: Attached | undefined;
  try {
    await daemon.api.createVolume({ name: "fs", sizeBytes: 64 * MiB });
    a = await attach(daemon.uri("fs"), t.dir);
    await runOk("mkfs.ext4", ["-q", "-F", a.loop]);
    await runOk("mount", [a.loop, mnt]);
    const old = randomBytes(20 * MiB);
    writeFileSync(join(mnt, "old.bin"), old);
    const before = statfsSync(mnt);
    await runOk("umount", [mnt]);
    await detach(a);
    a = undefined;

    const grown = await daemon.api.updateVolume("fs", { sizeBytes: 160 * MiB });
    assert.is(grown.sizeBytes, 160 * MiB);
    a = await attach(daemon.uri("fs"), t.dir);
    assert.is(Number((await runOk("blockdev", ["--getsize64", a.loop])).trim()), 160 * MiB, "attached again, the device has the new size");
    await runOk("e2fsck", ["-fy", a.loop]);
    await runOk("resize2fs", [a.loop]);
    const fsck = await run("e2fsck", ["-fn", a.loop]);
    assert.is(fsck.code, 0, `e2fsck -fn is clean:\n${fsck.stdout}${fsck.stderr}`);
    await runOk("mount", [a.loop, mnt]);
    const after = statfsSync(mnt);
    assert.ok(after.blocks * after.bsize > 2 * before.blocks * before.bsize, `the filesystem grew: ${before.blocks * before.bsize} -> ${after.blocks * after.bsize} bytes`);
    assert.is(sha(readFileSync(join(mnt, "old.bin"))), sha(old), "the old file is intact");
    const big = randomBytes(80 * MiB); // more than the old volume held
    writeFileSync(join(mnt, "big.bin"), big);
    await runOk("umount", [mnt]);
    await runOk("mount", [a.loop, mnt]);
    assert.is(sha(readFileSync(join(mnt, "big.bin"))), sha(big));
    await runOk("umount", [mnt]);
    await detach(a);
    a = undefined;
  } finally {
    await run("umount", [mnt]);
    if (a) await detach(a).catch(() => {});
    await daemon.dispose();
    t.remove();
  }
});

test.run();
