// A node whose disk fills up says so: its data dir is a real 512 MiB tmpfs,
// filled by another file; the status turns degraded ("nearly full"), writes
// through NBD then run the store out of room for a new log segment (it stops
// taking writes), and the catalog's next change stops the catalog's Raft
// group on the node. `GET /v1/status` and `pxd status` give each reason.
// Needs root (mount).

import { test } from "uvu";
import * as assert from "uvu/assert";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { DaemonProcess, freePort, pxdEntry } from "../helpers/daemon.js";
import { waitUntil } from "../helpers/cluster.js";
import { run, runOk } from "../helpers/run.js";
import { fillFilesystem, tempDir } from "../helpers/tmp.js";
import { ApiError } from "../../src/api/types.js";

const MiB = 1024 * 1024;

test("a full disk makes the node degraded, with the reasons: nearly full, store stopped, catalog group stopped", async () => {
  const t = tempDir("disk-full");
  const mnt = join(t.dir, "fs");
  mkdirSync(mnt);
  await runOk("mount", ["-t", "tmpfs", "-o", "size=512m", "tmpfs", mnt]);
  const host = "127.0.0.1";
  const d = new DaemonProcess(join(mnt, "node"), host, await freePort(host), await freePort(host), () => {}, await freePort(host));
  try {
    await d.start();
    await d.api.createVolume({ name: "full", sizeBytes: 384 * MiB });
    const fresh = await d.api.status();
    assert.equal([fresh.health, fresh.reasons], ["online", []]);

    const filled = fillFilesystem(join(mnt, "filler"));
    assert.ok(filled > 0, "the filler took what was left");
    const low = await d.api.status();
    assert.is(low.health, "degraded");
    assert.match(low.reasons.join("\n"), /^the data dir's filesystem is nearly full: .* free of 512 MiB, under 128 MiB; the store needs room for new log segments/m);

    // More than the head segment and its preallocated spare hold: a rollover finds no room.
    const writes = await run("qemu-io", ["-f", "raw", d.uri("full"), "-c", "write -P 0x33 0 256M"]);
    assert.match(writes.stdout + writes.stderr, /write failed/i, "the writes that found no room failed");
    const stopped = await waitUntil("the store to report it stopped", async () => {
      const s = await d.api.status();
      return s.reasons.some((r) => r.startsWith("the store stopped taking writes")) ? s : undefined;
    });
    assert.match(stopped.reasons.join("\n"), /^the store stopped taking writes \(.*\); nothing more is written on this node until the daemon restarts: free space or fix the disk, then restart it$/m);

    const refused = await d.api.createVolume({ name: "more", sizeBytes: MiB }).then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(refused instanceof ApiError && refused.status === 503, `a catalog change the node cannot persist is a 503: ${String(refused)}`);
    const status = await d.api.status();
    assert.match(status.reasons.join("\n"), /^the catalog's Raft group stopped on this node \(.*\); this node no longer follows catalog changes: restart the daemon once the store takes writes$/m);

    console.log(`reasons on the full node:\n${status.reasons.join("\n")}`);
    const text = await run(process.execPath, [pxdEntry, "--host", `${host}:${d.apiPort}`, "status"]);
    assert.is(text.code, 0, text.stderr);
    assert.match(text.stdout, /^health\s+degraded$/m);
    assert.match(text.stdout, /^\s+- the store stopped taking writes/m);
    assert.match(text.stdout, /^\s+- the catalog's Raft group stopped on this node/m);
    assert.match(text.stdout, /^\s+- the data dir's filesystem is nearly full/m);
  } finally {
    await d.dispose();
    await run("umount", ["-l", mnt]);
    t.remove();
  }
});

test.run();
