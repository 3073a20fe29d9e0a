// A volume as a block device without the kernel nbd module: nbdfuse exposes
// the export as a file, losetup makes it /dev/loopN (root needed).

import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { runOk } from "./run.js";

export interface Attached {
  loop: string;
  fuse: ChildProcess;
  fuseDir: string;
}

/** Mounts `uri` with nbdfuse under `work`/fuse and attaches a loop device to it. */
export async function attach(uri: string, work: string): Promise<Attached> {
  const fuseDir = join(work, "fuse");
  mkdirSync(fuseDir, { recursive: true });
  const pidFile = join(work, "nbdfuse.pid");
  rmSync(pidFile, { force: true });
  const fuse = spawn("nbdfuse", ["-P", pidFile, join(fuseDir, "disk"), uri], { stdio: "inherit" });
  const deadline = Date.now() + 10000;
  while (!existsSync(pidFile) || !existsSync(join(fuseDir, "disk"))) {
    if (Date.now() > deadline || fuse.exitCode !== null) throw new Error(`nbdfuse did not come up for ${uri}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const loop = (await runOk("losetup", ["-f", "--show", join(fuseDir, "disk")])).trim();
  return { loop, fuse, fuseDir };
}

export async function detach(a: Attached): Promise<void> {
  await runOk("losetup", ["-d", a.loop]);
  await runOk("fusermount3", ["-u", a.fuseDir]);
  if (a.fuse.exitCode === null) await new Promise((r) => a.fuse.once("exit", r));
}
