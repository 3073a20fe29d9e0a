// Real NBD clients that no one here wrote (libnbd's nbdinfo and nbdcopy,
// qemu-io, qemu-nbd --list, fio's nbd engine) against the test target.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { startNbdTarget, MiB, type NbdTarget } from "../helpers/nbd-target.js";

const run = promisify(execFile);
let t: NbdTarget;
let dir: string;

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), "pxd-nbd-interop-"));
  t = await startNbdTarget({ unixPath: join(dir, "nbd.sock") });
});
test.after(async () => {
  await t.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function sh(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
  const { stdout } = await run(cmd, args, { timeout: timeoutMs, maxBuffer: 16 * MiB });
  return stdout;
}

interface NbdinfoExport {
  "export-size": number;
  is_read_only: boolean;
  can_flush: boolean;
  can_fua: boolean;
  can_trim: boolean;
  can_zero: boolean;
  can_fast_zero: boolean;
  can_df: boolean;
  can_multi_conn: boolean;
  can_cache: boolean;
  block_size_maximum: number;
  contexts: string[];
}

async function nbdinfo(uri: string): Promise<NbdinfoExport> {
  const j = JSON.parse(await sh("nbdinfo", ["--json", uri])) as { structured: boolean; exports: NbdinfoExport[] };
  assert.ok(j.structured);
  const e = j.exports[0];
  assert.ok(e);
  return e;
}

test("nbdinfo: size and capabilities of a writable and a read-only export", async () => {
  const rw = await nbdinfo(t.uri("disk"));
  assert.is(rw["export-size"], 64 * MiB);
  assert.equal(
    [rw.is_read_only, rw.can_flush, rw.can_fua, rw.can_trim, rw.can_zero, rw.can_fast_zero, rw.can_df, rw.can_multi_conn, rw.can_cache],
    [false, true, true, true, true, true, true, true, true],
  );
  assert.is(rw.block_size_maximum, 32 * MiB);
  assert.equal(rw.contexts, ["base:allocation"]);
  const ro = await nbdinfo(t.uri("ro"));
  assert.equal([ro.is_read_only, ro.can_flush, ro.can_fua, ro.can_trim, ro.can_zero, ro.can_fast_zero], [true, true, false, false, false, false]);
});

test("qemu-nbd --list: exact transmission flag bits", async () => {
  const out = await sh("qemu-nbd", ["--list", "--bind", t.host, "--port", String(t.port)]);
  const flags = [...out.matchAll(/export: '([^']*)'[\s\S]*?flags: (0x[0-9a-f]+)/g)].map((m) => [m[1], m[2]]);
  // HAS_FLAGS|SEND_FLUSH|SEND_FUA|SEND_TRIM|SEND_WRITE_ZEROES|SEND_DF|CAN_MULTI_CONN|SEND_CACHE|SEND_FAST_ZERO = 0xded;
  // read-only: HAS_FLAGS|READ_ONLY|SEND_FLUSH|SEND_DF|CAN_MULTI_CONN|SEND_CACHE = 0x587.
  assert.equal(flags, [
    ["disk", "0xded"],
    ["ro", "0x587"],
    ["small", "0xded"],
  ]);
});

test("nbdinfo over the Unix socket", async () => {
  const e = await nbdinfo(`nbd+unix:///small?socket=${join(dir, "nbd.sock")}`);
  assert.is(e["export-size"], MiB);
});

test("qemu-io: write patterns and read them back with -P verification", async () => {
  const out = await sh("qemu-io", [
    "-f", "raw",
    "-c", "write -P 0x11 0 64k",
    "-c", "write -P 0x22 1M 1M",
    "-c", "write -P 0x33 3M 4k",
    "-c", "aio_write -P 0x44 5M 512k",
    "-c", "aio_flush",
    "-c", "write -z 1536k 256k",
    "-c", "read -P 0x11 0 64k",
    "-c", "read -P 0x22 1M 512k",
    "-c", "read -P 0 1536k 256k",
    "-c", "read -P 0x22 1792k 256k",
    "-c", "read -P 0x33 3M 4k",
    "-c", "read -P 0x44 5M 512k",
    "-c", "read -P 0 8M 64k",
    t.uri("small").replace("/small", "/disk"),
  ]);
  assert.not.match(out, /fail|error/i);
  assert.is((out.match(/^read \d+\/\d+ bytes/gm) ?? []).length, 7);
  // A wrong pattern must be reported, or the checks above prove nothing.
  const bad = await sh("qemu-io", ["-f", "raw", "-c", "read -P 0x55 0 4k", t.uri("disk")]).catch((e: { stdout?: string }) => e.stdout ?? "");
  assert.match(bad, /Pattern verification failed/);
});

test("nbdinfo --map shows the hole a trim made", async () => {
  await sh("qemu-io", ["-f", "raw", "-c", "write -P 0x66 0 1M", "-c", "discard 256k 256k", t.uri("small")]);
  const map = JSON.parse(await sh("nbdinfo", ["--map", "--json", t.uri("small")])) as { offset: number; length: number; type: number }[];
  assert.equal(
    map.map((e) => [e.offset, e.length, e.type]),
    [
      [0, 256 * 1024, 0],
      [256 * 1024, 256 * 1024, 3],
      [512 * 1024, 512 * 1024, 0],
    ],
  );
});

test("nbdcopy: 64 MiB of random data in and out, checksums equal", async () => {
  const src = join(dir, "src.img");
  const back = join(dir, "back.img");
  const data = randomBytes(64 * MiB);
  // A hole in the source: nbdcopy should zero it, and it must read back as zeroes.
  data.fill(0, 8 * MiB, 12 * MiB);
  writeFileSync(src, data);
  await sh("nbdcopy", [src, t.uri("disk")], 120_000);
  await sh("nbdcopy", [t.uri("disk"), back], 120_000);
  const sum = (b: Buffer): string => createHash("sha256").update(b).digest("hex");
  assert.is(sum(readFileSync(back)), sum(data));
  assert.is(sum(t.registry.get("disk").snapshot(0, 64 * MiB)), sum(data));
});

test("fio nbd engine: random 4k writes with crc32c verify", async () => {
  const out = await sh("fio", [
    "--name=verify", "--ioengine=nbd", `--uri=${t.uri("small")}`, "--rw=randwrite", "--bs=4k",
    "--size=1M", "--iodepth=16", "--verify=crc32c", "--do_verify=1", "--verify_state_save=0", "--output-format=json",
  ], 120_000);
  const j = JSON.parse(out.slice(out.indexOf("{"))) as { jobs: { error: number; write: { total_ios: number }; read: { total_ios: number } }[] };
  const job = j.jobs[0];
  assert.ok(job);
  assert.is(job.error, 0);
  assert.is(job.write.total_ios, 256);
  assert.is(job.read.total_ios, 256);
});

test.run();
