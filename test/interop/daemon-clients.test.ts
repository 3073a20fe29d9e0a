// Real NBD clients that no one here wrote, against a real pxd daemon process:
// nbdinfo, qemu-io, nbdcopy and fio's nbd engine with verification.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { createHash, randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { startDaemon, type DaemonProcess } from "../helpers/daemon.js";
import { runOk } from "../helpers/run.js";
import { tempDir } from "../helpers/tmp.js";

const MiB = 1024 * 1024;
let daemon: DaemonProcess;

test.before(async () => {
  daemon = await startDaemon();
  await daemon.api.createVolume({ name: "vol", sizeBytes: 256 * MiB });
});

test.after(async () => {
  await daemon.dispose();
});

test("nbdinfo sees the size and the exact flags pxd advertises", async () => {
  const info = JSON.parse(await runOk("nbdinfo", ["--json", daemon.uri("vol")])) as Record<string, unknown>;
  const exp = (info["exports"] as Record<string, unknown>[])[0]!;
  assert.is(exp["export-size"], 256 * MiB);
  for (const flag of ["can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_multi_conn", "can_df", "can_cache"]) {
    assert.is(exp[flag], true, flag);
  }
  assert.is(exp["is_read_only"], false);
  assert.is(exp["block_size_minimum"], 1);
  assert.is(exp["block_size_preferred"], 4096);
  assert.equal(info["protocol"], "newstyle-fixed");
  assert.ok(JSON.stringify(exp["contexts"]).includes("base:allocation"));
  const list = await runOk("nbdinfo", ["--list", `nbd://127.0.0.1:${daemon.nbdPort}`]);
  assert.match(list, /export="vol"/);
});

test("qemu-io write and read patterns verify, aligned and not", async () => {
  const out = await runOk("qemu-io", [
    "-f", "raw", daemon.uri("vol"),
    "-c", "write -P 0xab 0 1M",
    "-c", "write -P 0xcd 1M 64k",
    "-c", "write -P 0x11 3000000 777",
    "-c", "write -z 2M 512k",
    "-c", "flush",
    "-c", "read -P 0xab 0 1M",
    "-c", "read -P 0xcd 1M 64k",
    "-c", "read -P 0x11 3000000 777",
    "-c", "read -P 0 2M 512k",
    "-c", "discard 4M 1M",
    "-c", "read -P 0 4M 1M",
  ]);
  assert.not.match(out, /verification failed|error/i);
  assert.is((out.match(/^read /gm) ?? []).length, 5);
});

test("nbdcopy of 64 MiB random data in and out keeps its checksum, and nbdinfo --map sees the holes", async () => {
  const t = tempDir("copy");
  try {
    const data = randomBytes(64 * MiB);
    const src = join(t.dir, "in.img");
    const dst = join(t.dir, "out.img");
    writeFileSync(src, data);
    await daemon.api.createVolume({ name: "copy", sizeBytes: 128 * MiB });
    await runOk("nbdcopy", [src, daemon.uri("copy")]);
    await runOk("nbdcopy", [daemon.uri("copy"), dst]);
    const sum = (b: Buffer): string => createHash("sha256").update(b).digest("hex");
    const { readFileSync } = await import("node:fs");
    const back = readFileSync(dst);
    assert.is(back.length, 128 * MiB);
    assert.is(sum(back.subarray(0, 64 * MiB)), sum(data));
    assert.ok(back.subarray(64 * MiB).equals(Buffer.alloc(64 * MiB)));
    const map = JSON.parse(await runOk("nbdinfo", ["--map", "--json", daemon.uri("copy")])) as { offset: number; length: number; type: number }[];
    assert.equal(map.map((e) => [e.offset, e.length, e.type & 1]), [
      [0, 64 * MiB, 0],
      [64 * MiB, 64 * MiB, 1],
    ]);
  } finally {
    t.remove();
  }
});

test("fio's nbd engine writes with crc32c verification and reads it all back", async () => {
  const out = await runOk("fio", [
    "--name=verify", "--ioengine=nbd", `--uri=${daemon.uri("vol")}`,
    "--rw=randwrite", "--bs=4k", "--size=32M", "--iodepth=16",
    "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--output-format=json",
  ], { timeoutMs: 300000 });
  const r = JSON.parse(out.slice(out.indexOf("{"))) as { jobs: { error: number; write: { io_bytes: number }; read: { io_bytes: number } }[] };
  const job = r.jobs[0]!;
  assert.is(job.error, 0);
  assert.is(job.write.io_bytes, 32 * MiB);
  assert.is(job.read.io_bytes, 32 * MiB, "the verify pass read everything back");
});

test("data survives an orderly restart of the daemon", async () => {
  await runOk("qemu-io", ["-f", "raw", daemon.uri("vol"), "-c", "write -P 0x5a 100M 2M", "-c", "write -P 0x6b 200M 4k"]);
  await daemon.restart();
  const out = await runOk("qemu-io", ["-f", "raw", daemon.uri("vol"), "-c", "read -P 0x5a 100M 2M", "-c", "read -P 0x6b 200M 4k"]);
  assert.not.match(out, /verification failed/i);
});

test.run();
