// pxd backup against a real daemon and a real directory: a volume with holes
// is backed up, a few blocks change, the second backup uploads only the
// chunks that changed; both restore to new volumes with the bytes of their
// moment (read back by nbdcopy, an independent client); a corrupt chunk is
// named by verify and refused by restore, which leaves no volume behind;
// delete frees only the chunks no other backup uses.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { brotliCompressSync } from "node:zlib";
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { startDaemon, pxdEntry, type DaemonProcess } from "../helpers/daemon.js";
import { run, runOk, type RunResult } from "../helpers/run.js";
import { tempDir } from "../helpers/tmp.js";
import { pattern } from "../helpers/nbd-raw-client.js";

const MiB = 1024 * 1024;
const sizeBytes = 48 * MiB; // 12 chunks of 4 MiB

function chunkFiles(dir: string): string[] {
  const root = join(dir, "chunks");
  try {
    return readdirSync(root).flatMap((d) => readdirSync(join(root, d)).map((f) => join(root, d, f)));
  } catch {
    return [];
  }
}

function pxd(d: DaemonProcess, args: string[]): Promise<RunResult> {
  return run(process.execPath, [pxdEntry, ...args], { env: { ...process.env, PXD_HOST: `127.0.0.1:${d.apiPort}` }, timeoutMs: 60_000 });
}

async function pxdJson<T>(d: DaemonProcess, args: string[]): Promise<T> {
  const r = await pxd(d, [...args, "--json"]);
  assert.is(r.code, 0, `pxd ${args.join(" ")}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

/** qemu-io writes: [offset, length, byte]. */
async function writeBlocks(d: DaemonProcess, volume: string, state: Buffer, writes: Array<[number, number, number]>): Promise<void> {
  await runOk("qemu-io", ["-f", "raw", d.uri(volume), ...writes.flatMap(([at, n, b]) => ["-c", `write -P ${b} ${at} ${n}`])]);
  for (const [at, n, b] of writes) state.fill(b, at, at + n);
}

/** The volume's bytes, read by nbdcopy. */
async function readVolume(d: DaemonProcess, volume: string, dir: string): Promise<Buffer> {
  const out = join(dir, `${volume}.img`);
  await runOk("nbdcopy", [d.uri(volume), out]);
  return readFileSync(out);
}

interface Created {
  backup: string;
  chunks: number;
  zeroChunks: number;
  uploadedChunks: number;
  reusedChunks: number;
  readBytes: number;
}

test("incremental backups to file:// restore each moment's bytes; a corrupt chunk is named and refused; delete frees only unused chunks", async () => {
  const d = await startDaemon();
  const t = tempDir("backup");
  const url = `file://${t.dir}/target`;
  await runOk("mkdir", [join(t.dir, "target")]);
  try {
    await d.api.createVolume({ name: "src", sizeBytes });
    const state = Buffer.alloc(sizeBytes);
    // Data in chunks 0, 2 (a partial 64 KiB), 5 (two copies of one 4 MiB pattern: 5 and 6) and 11; holes elsewhere.
    const same = pattern(4 * MiB, 7);
    await writeBlocks(d, "src", state, [[0, 4 * MiB, 0x11], [2 * 4 * MiB + 1234 * 512, 64 * 1024, 0x22], [11 * 4 * MiB + 4 * MiB - 4096, 4096, 0x33]]);
    const f = join(t.dir, "same.bin");
    writeFileSync(f, same);
    await runOk("qemu-io", ["-f", "raw", d.uri("src"), "-c", `write -s ${f} ${5 * 4 * MiB} ${4 * MiB}`, "-c", `write -s ${f} ${6 * 4 * MiB} ${4 * MiB}`]);
    same.copy(state, 5 * 4 * MiB);
    same.copy(state, 6 * 4 * MiB);
    const state1 = Buffer.from(state);

    const b1 = await pxdJson<Created>(d, ["backup", "create", "src", "--to", url]);
    assert.is(b1.chunks, 12);
    assert.is(b1.zeroChunks, 7, "chunks 1, 3, 4, 7, 8, 9, 10 are holes");
    assert.is(b1.uploadedChunks, 4, "chunks 0, 2, 5 (and 6, the same bytes) and 11");
    assert.is(b1.reusedChunks, 1, "chunk 6 is chunk 5 again");
    assert.is(b1.readBytes, 5 * 4 * MiB, "holes are skipped by base:allocation, not read");
    assert.is(chunkFiles(join(t.dir, "target")).length, 4);
    // Read from a snapshot taken for the backup, and deleted after it.
    const m1 = JSON.parse(readFileSync(join(t.dir, "target", "backups", "src", `${b1.backup.split("/")[1]}.json`), "utf8")) as { source: { export: string; snapshot: string } };
    assert.match(m1.source.export, /^src@backup-\d{8}T\d{9}$/);
    assert.equal(await d.api.listSnapshots("src"), [], "the backup's snapshot is gone");

    // Change 4 KiB in chunk 2 and 8 KiB in the hole at chunk 9.
    await writeBlocks(d, "src", state, [[2 * 4 * MiB, 4096, 0x44], [9 * 4 * MiB + MiB, 8192, 0x55]]);
    const state2 = Buffer.from(state);
    const b2 = await pxdJson<Created>(d, ["backup", "create", "src", "--to", url]);
    assert.is(b2.uploadedChunks, 2, "only the two changed chunks are uploaded");
    assert.is(b2.reusedChunks, 4, "chunks 0, 5, 6 (the same bytes) and 11 are in the target already");
    assert.is(b2.zeroChunks, 6);
    assert.is(chunkFiles(join(t.dir, "target")).length, 6);

    const list = await pxdJson<{ backups: Array<{ backup: string; sizeBytes: number; dataChunks: number }> }>(d, ["backup", "list", url]);
    assert.equal(list.backups.map((b) => b.backup), [b1.backup, b2.backup], "oldest first");
    assert.equal(list.backups.map((b) => b.dataChunks), [5, 6]);

    for (const [b, name, want] of [[b1, "r1", state1], [b2, "r2", state2]] as const) {
      const r = await pxd(d, ["backup", "restore", url, b.backup, name]);
      assert.is(r.code, 0, r.stderr);
      assert.is((await d.api.inspectVolume(name)).sizeBytes, sizeBytes);
      assert.ok((await readVolume(d, name, t.dir)).equals(want), `${name} holds the bytes of ${b.backup}`);
    }

    const ok = await pxd(d, ["backup", "verify", url, b2.backup]);
    assert.is(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /is whole: 5 distinct chunks/);

    // Corrupt the chunk only backup 2 has for chunk 2: valid brotli, other bytes.
    const manifest2 = JSON.parse(readFileSync(join(t.dir, "target", "backups", "src", `${b2.backup.split("/")[1]}.json`), "utf8")) as { chunks: Array<string | null> };
    const hash = manifest2.chunks[2]!;
    const chunkPath = join(t.dir, "target", "chunks", hash.slice(0, 2), hash);
    const good = readFileSync(chunkPath);
    const bad = Buffer.from(state2.subarray(2 * 4 * MiB, 3 * 4 * MiB));
    bad.writeUInt8(bad[100]! ^ 1, 100);
    writeFileSync(chunkPath, brotliCompressSync(bad));
    const v = await pxd(d, ["backup", "verify", url, b2.backup]);
    assert.is(v.code, 1, "verify fails");
    assert.ok(v.stdout.includes(`chunks/${hash.slice(0, 2)}/${hash}`) && v.stderr.includes(hash), `verify names the chunk:\n${v.stdout}${v.stderr}`);
    assert.match(v.stdout, /chunk 2 .* is corrupt/);
    const rr = await pxd(d, ["backup", "restore", url, b2.backup, "r3"]);
    assert.is(rr.code, 1, "restore refuses");
    assert.ok(rr.stderr.includes(hash), `restore names the chunk: ${rr.stderr}`);
    assert.match(rr.stderr, /volume r3 was deleted again/);
    assert.not.ok((await d.api.listVolumes()).some((x) => x.name === "r3"), "no half-restored volume is left");
    writeFileSync(chunkPath, good);

    // A missing chunk too.
    const hash11 = manifest2.chunks[11]!;
    const path11 = join(t.dir, "target", "chunks", hash11.slice(0, 2), hash11);
    const kept11 = readFileSync(path11);
    statSync(path11);
    await runOk("rm", [path11]);
    const v2 = await pxd(d, ["backup", "verify", url, "src/latest"]);
    assert.is(v2.code, 1);
    assert.match(v2.stdout, /chunk 11 .* is missing/);
    writeFileSync(path11, kept11);

    // Delete backup 1: only its old chunk 2 goes (the rest backup 2 uses too).
    const del = await pxdJson<{ deletedChunks: number; keptChunks: number }>(d, ["backup", "delete", url, b1.backup]);
    assert.equal(del, { backup: b1.backup, deletedChunks: 1, keptChunks: 3 } as unknown as typeof del);
    assert.is(chunkFiles(join(t.dir, "target")).length, 5);
    const after = await pxd(d, ["backup", "verify", url, b2.backup]);
    assert.is(after.code, 0, after.stderr);
    const del2 = await pxdJson<{ deletedChunks: number }>(d, ["backup", "delete", url, b2.backup]);
    assert.is(del2.deletedChunks, 5);
    assert.is(chunkFiles(join(t.dir, "target")).length, 0);
    const empty = await pxd(d, ["backup", "list", url]);
    assert.match(empty.stdout, /no backups/);
  } finally {
    await d.dispose();
    t.remove();
  }
});

test("bad input: a missing volume, a target that is not there, restore over an existing volume, a backup that is not there", async () => {
  const d = await startDaemon();
  const t = tempDir("backup-bad");
  const url = `file://${t.dir}`;
  try {
    await d.api.createVolume({ name: "v", sizeBytes: 8 * MiB });
    const missingVolume = await pxd(d, ["backup", "create", "nope", "--to", url]);
    assert.is(missingVolume.code, 1);
    assert.match(missingVolume.stderr, /nope/);
    const noDir = await pxd(d, ["backup", "create", "v", "--to", `file://${t.dir}/not-there`]);
    assert.is(noDir.code, 2);
    assert.match(noDir.stderr, /does not exist; create it/);
    const badUrl = await pxd(d, ["backup", "list", "ftp://x/y"]);
    assert.is(badUrl.code, 2);
    const b = await pxdJson<Created>(d, ["backup", "create", "v", "--to", url]);
    assert.is(b.zeroChunks, 2, "an empty volume is all zero chunks");
    assert.is(chunkFiles(t.dir).length, 0, "and stores no chunk");
    const over = await pxd(d, ["backup", "restore", url, b.backup, "v"]);
    assert.is(over.code, 1);
    assert.match(over.stderr, /exists/);
    const gone = await pxd(d, ["backup", "restore", url, "v/20200101T000000000Z-000000", "w"]);
    assert.is(gone.code, 1);
    assert.match(gone.stderr, /not in/);
    const snap = await pxd(d, ["backup", "create", "v", "--to", url, "--snapshot", "s1"]);
    assert.is(snap.code, 1);
    assert.match(snap.stderr, /no export named "v@s1"/);
    // A manifest that lies about its chunk count is refused by name.
    const key = join(t.dir, "backups", "v", `${b.backup.split("/")[1]}.json`);
    const m = JSON.parse(readFileSync(key, "utf8")) as { chunks: unknown[] };
    m.chunks.push(null);
    writeFileSync(key, JSON.stringify(m));
    const lie = await pxd(d, ["backup", "verify", url, b.backup]);
    assert.is(lie.code, 1);
    assert.match(lie.stderr, /not a valid pxd backup manifest: it lists 3 chunks; 2 cover/);
  } finally {
    await d.dispose();
    t.remove();
  }
});

test.run();
