// A daemon's data dir is its user's alone: after a start every directory is
// 0700, every file 0600 and the NBD socket open to no one else, both for what
// it creates (umask 077) and for a tree an older pxd left world-readable.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { chmodSync, lstatSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { startDaemon, type DaemonProcess } from "../helpers/daemon.js";
import { runOk } from "../helpers/run.js";

let d: DaemonProcess;

test.before(async () => {
  d = await startDaemon();
});

test.after(async () => {
  await d.dispose();
});

/** Every path under dir with its type and permission bits. */
function modes(dir: string): { path: string; kind: "dir" | "file" | "socket" | "other"; mode: number }[] {
  const out: ReturnType<typeof modes> = [];
  const walk = (p: string): void => {
    const st = lstatSync(p);
    const kind = st.isDirectory() ? "dir" : st.isFile() ? "file" : st.isSocket() ? "socket" : "other";
    out.push({ path: p, kind, mode: st.mode & 0o777 });
    if (st.isDirectory()) for (const n of readdirSync(p)) walk(join(p, n));
  };
  walk(dir);
  return out;
}

function assertPrivate(dir: string): void {
  const all = modes(dir);
  assert.ok(all.some((e) => e.path.includes("/store/") && e.kind === "file"), "segment files are there");
  assert.ok(all.some((e) => e.path.includes("/node/") && e.kind === "file"), "LevelDB files are there");
  assert.ok(all.some((e) => e.kind === "socket"), "the NBD socket is there");
  for (const e of all) {
    if (e.kind === "dir") assert.is(e.mode, 0o700, `${e.path} is ${e.mode.toString(8)}`);
    else if (e.kind === "socket") assert.is(e.mode & 0o077, 0, `${e.path} is ${e.mode.toString(8)}: open to the daemon's user only`);
    else assert.is(e.mode, 0o600, `${e.path} is ${e.mode.toString(8)}`);
  }
}

test("what the daemon creates is 0600 and 0700", async () => {
  await d.api.createVolume({ name: "m", sizeBytes: 4 * 1024 * 1024 });
  await runOk("qemu-io", ["-f", "raw", d.uri("m"), "-c", "write -P 0x11 0 1M"]);
  assertPrivate(d.dataDir);
});

test("a tree left world-readable by an older pxd is made private at start", async () => {
  await d.stop();
  for (const e of modes(d.dataDir)) if (e.kind !== "socket") chmodSync(e.path, e.kind === "dir" ? 0o755 : 0o644);
  await d.start();
  assert.match(d.output, /made \d+ files and directories under .* private to this user \(0600\/0700\)/);
  assertPrivate(d.dataDir);
  const out = await runOk("qemu-io", ["-f", "raw", d.uri("m"), "-c", "read -P 0x11 0 1M"]);
  assert.not.match(out, /fail/i, "the data is still served");
});

test.run();
