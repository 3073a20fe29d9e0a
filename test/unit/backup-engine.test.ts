// The backup engine's parts in process: the manifest refuses every field that
// is wrong (read from a target, it is untrusted), backup names parse, the
// file target writes whole objects and keeps keys inside its directory, and
// a backup of an nbdkit memory disk restores into another one that is not
// fresh (zero chunks are then written as zeros), with a chunk read back
// bounded by its length. A backup and a delete never run at once on one
// target (locks).

import { test } from "uvu";
import * as assert from "uvu/assert";
import { randomBytes } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { StaticKeySource } from "../../src/os/cluster-key.js";
import { join } from "node:path";
import { brotliCompressSync, constants as zc } from "node:zlib";
import { chainFor, codecOf, createBackup, deleteBackup, eachBounded, fetchChunk, findBackup, listBackups, overConnections, restoreBackup, sha256Hex } from "../../src/backup/engine.js";
import { plainCodec } from "../../src/backup/chunk-codec.js";
import { chunkBytesFor, chunkKey, encodeManifest, manifestKey, newBackupId, parseManifest, parseRef, type Manifest } from "../../src/backup/manifest.js";
import { openTarget, TargetUrlError, type BackupTarget } from "../../src/backup/target.js";
import { connectNbd } from "../../src/os/nbd-client-socket.js";
import { startNbdkit, type NbdkitServer } from "../helpers/nbdkit.js";
import { backupManifestEntryBytes, volumeBytesMax } from "../../src/constants.js";
import { pattern } from "../helpers/nbd-raw-client.js";
import { tempDir } from "../helpers/tmp.js";

const MiB = 1024 * 1024;

function manifest(over: Partial<Manifest> = {}): Manifest {
  return { format: "pxd-backup", version: 1, id: "20261206T195317730Z-60948b", volume: "db", sizeBytes: 9 * MiB, createdAt: "2026-12-06T19:53:17.730Z", chunkBytes: 4 * MiB, compression: "brotli", hash: "sha256", chunks: ["a".repeat(64), null, "b".repeat(64)], pxdVersion: "0.1.0", source: { export: "db", snapshot: null }, ...over };
}

test("a manifest round-trips, and each wrong field is refused by name", () => {
  const m = manifest();
  const key = manifestKey(m.volume, m.id);
  assert.equal(parseManifest(encodeManifest(m), key), m);
  const bad: Array<[Record<string, unknown>, RegExp]> = [
    [{ format: "other" }, /format/],
    [{ version: 3 }, /version 3; this pxd reads versions 1 and 2/],
    [{ version: 2 }, /a version 2 manifest names its encryption/],
    [{ encryption: { cipher: "aes-256-gcm", chunkNames: "hmac-sha256", wrappedKey: "00" } }, /a version 1 manifest has no encryption/],
    [{ version: 2, encryption: { cipher: "none", chunkNames: "hmac-sha256", wrappedKey: "00" } }, /its encryption is not/],
    [{ id: "../x" }, /bad id/],
    [{ volume: "a/b" }, /bad volume name/],
    [{ sizeBytes: 9 * MiB + 1 }, /not a volume size/],
    [{ sizeBytes: 2 ** 60 }, /not a volume size/],
    [{ chunkBytes: 1024 }, /chunk size 1024/],
    [{ compression: "gzip" }, /compression/],
    [{ chunks: ["a".repeat(64), null] }, /lists 2 chunks; 3 cover/],
    [{ chunks: ["A".repeat(64), null, null] }, /chunk 0 is neither/],
    [{ chunks: [1, null, null] }, /chunk 0 is neither/],
    [{ source: { export: "db\n", snapshot: null } }, /bad source/],
    [{ createdAt: "yesterday" }, /createdAt/],
  ];
  for (const [over, why] of bad) {
    const text = Buffer.from(JSON.stringify({ ...m, ...over }));
    assert.throws(() => parseManifest(text, key), why, JSON.stringify(over));
  }
  assert.throws(() => parseManifest(Buffer.from("{"), key), /not JSON/);
  assert.throws(() => parseManifest(encodeManifest(m), manifestKey("other", m.id)), /names backup db\/.*not the one its key names/, "a manifest copied under another backup's key");
});

test("chunks grow for volumes whose manifest would not fit, and an entry takes at most backupManifestEntryBytes", () => {
  assert.is(chunkBytesFor(MiB), 4 * MiB);
  assert.is(chunkBytesFor(8 * 1024 ** 4), 4 * MiB, "8 TiB: 2 Mi chunks, a 140 MiB manifest");
  assert.is(chunkBytesFor(16 * 1024 ** 4), 8 * MiB);
  assert.is(chunkBytesFor(volumeBytesMax), 32 * MiB);
  const bytes = (n: number): number => encodeManifest(manifest({ sizeBytes: 4096 * 4 * MiB, chunks: Array.from({ length: n }, (_, i) => sha256Hex(Buffer.from([i & 0xff, i >> 8]))) })).length;
  assert.is((bytes(2000) - bytes(1000)) / 1000, backupManifestEntryBytes);
});

test("backup names: VOLUME/ID, VOLUME/latest, ID; ids sort by time", () => {
  assert.equal(parseRef("db/20261206T195317730Z-60948b"), { volume: "db", id: "20261206T195317730Z-60948b" });
  assert.equal(parseRef("db/latest"), { volume: "db", id: "latest" });
  assert.equal(parseRef("20261206T195317730Z-60948b"), { volume: undefined, id: "20261206T195317730Z-60948b" });
  assert.type(parseRef("latest"), "string");
  assert.type(parseRef("../etc/passwd"), "string");
  assert.is(newBackupId(new Date("2026-01-02T03:04:05.678Z"), "abcdef"), "20260102T030405678Z-abcdef");
  assert.is(chunkKey("ab".repeat(32)), `chunks/ab/${"ab".repeat(32)}`);
});

test("file target: whole objects, bounded reads, listings without temporary files, keys stay inside", async () => {
  const t = tempDir("file-target");
  try {
    await openTarget(`file://${t.dir}/missing`).then(
      () => assert.unreachable(),
      (e: Error) => assert.instance(e, TargetUrlError),
    );
    const target = await openTarget(`file://${t.dir}`);
    await target.put("chunks/ab/x", Buffer.from("hello"));
    await target.put("chunks/ab/x", Buffer.from("hello again"));
    assert.is((await target.get("chunks/ab/x", 100))!.toString(), "hello again");
    assert.is(await target.get("chunks/ab/none", 100), undefined);
    await target.get("chunks/ab/x", 5).then(
      () => assert.unreachable(),
      (e: Error) => assert.match(e.message, /11 bytes, above the 5/),
    );
    writeFileSync(join(t.dir, "chunks", "ab", "y.tmp-1-abcd"), "half");
    assert.equal(await target.list("chunks/", 10), ["chunks/ab/x"], "a temporary file is not listed");
    await target.list("chunks/", 0).then(
      () => assert.unreachable(),
      (e: Error) => assert.match(e.message, /more than 0 objects/),
    );
    assert.is(await target.exists("chunks/ab/x"), true);
    await target.delete("chunks/ab/x");
    await target.delete("chunks/ab/x");
    assert.is(await target.exists("chunks/ab/x"), false);
    for (const key of ["../x", "a/../../x", "/etc/passwd", "a//b", "."]) {
      await target.put(key, Buffer.from("no")).then(
        () => assert.unreachable(key),
        (e: Error) => assert.match(e.message, /bad backup target key/),
      );
    }
    assert.equal(readdirSync(t.dir).sort(), ["chunks"]);
  } finally {
    t.remove();
  }
});

test("eachBounded keeps at most N in flight and stops at the first failure", async () => {
  let now = 0;
  let most = 0;
  await eachBounded(20, 3, async () => {
    most = Math.max(most, ++now);
    await new Promise((r) => setTimeout(r, 2));
    now--;
  });
  assert.is(most, 3);
  let started = 0;
  const e = await eachBounded(100, 2, async (i) => {
    started++;
    if (i === 3) throw new Error("boom");
    await new Promise((r) => setTimeout(r, 1));
  }).catch((x: Error) => x);
  assert.match(String(e), /boom/);
  assert.ok(started < 10, `no new work after the failure (${started} started)`);
});

function nbdkitMemory(size: string): Promise<NbdkitServer> {
  return startNbdkit(["memory", `size=${size}`]);
}

/** Two nbdkit memory disks of `size` and a file:// target in a temp dir, for `work`; all removed after. */
async function withTwoDisks(size: string, work: (target: BackupTarget, dir: string, a: NbdkitServer, b: NbdkitServer) => Promise<void>): Promise<void> {
  const t = tempDir("engine");
  const a = await nbdkitMemory(size);
  const b = await nbdkitMemory(size);
  try {
    mkdirSync(join(t.dir, "target"));
    await work(await openTarget(`file://${t.dir}/target`), t.dir, a, b);
  } finally {
    a.stop();
    b.stop();
    t.remove();
  }
}

test("a backup of one nbdkit disk restores into another that is not fresh; a chunk is checked by length and hash", async () => {
  // 3 chunks of 4 MiB, the last 2 MiB
  await withTwoDisks("10M", async (target, _dir, a, b) => {
    const src = await connectNbd(a.server, { exportName: "" });
    const data = pattern(2 * MiB, 4);
    await src.client.write(8 * MiB, data);
    const s = await createBackup({ client: src.client, target, volume: "disk", exportName: "", snapshot: undefined, pxdVersion: "test" });
    assert.equal([s.chunks, s.zeroChunks, s.uploadedChunks], [3, 2, 1]);
    const dst = await connectNbd(b.server, { exportName: "" });
    await dst.client.write(0, Buffer.alloc(MiB, 0xee)); // old data the restore must zero
    const m = parseManifest((await target.get(manifestKey("disk", s.backup.split("/")[1]!), MiB))!, manifestKey("disk", s.backup.split("/")[1]!));
    assert.is(m.chunks[2], sha256Hex(data));
    const r = await restoreBackup({ client: dst.client, target, manifest: m, codec: plainCodec, fresh: false });
    assert.is(r.writtenBytes, 2 * MiB);
    assert.ok((await dst.client.read(0, 10 * MiB)).equals(await src.client.read(0, 10 * MiB)), "the same bytes, old data zeroed");
    // A stored chunk that decompresses to more than its length is refused without inflating it all.
    await target.put(chunkKey(m.chunks[2]!), brotliCompressSync(Buffer.alloc(64 * MiB), { params: { [zc.BROTLI_PARAM_QUALITY]: 1 } }));
    const e = await fetchChunk(target, m, 2, plainCodec).catch((x: Error) => x);
    assert.match(String(e), /does not decompress to 2097152 bytes/);
    await target.put(chunkKey(m.chunks[2]!), Buffer.alloc(3 * MiB));
    const big = await fetchChunk(target, m, 2, plainCodec).catch((x: Error) => x);
    assert.match(String(big), /is too large: .* is 3145728 bytes, above the 2100224 it may hold/, "an object larger than its chunk could compress to is not read");
    src.client.close();
    dst.client.close();
  });
});

test("an encrypted backup holds no plaintext and no plain hash, dedupes within its chain, restores with the cluster key and is refused without it", async () => {
  await withTwoDisks("12M", async (target, dir, a, b) => {
    const keys = new StaticKeySource(randomBytes(32), "the test key");
    const src = await connectNbd(a.server, { exportName: "" });
    const text = Buffer.alloc(4 * MiB);
    for (let at = 0; at < text.length; ) at += text.write("BACKUP-PLAINTEXT-MARKER;", at, "latin1");
    await src.client.write(0, text);
    await src.client.write(8 * MiB, text); // the same chunk twice: stored once
    const first = await createBackup({ client: src.client, target, volume: "sec", exportName: "", snapshot: undefined, pxdVersion: "test", chain: await chainFor(target, "sec", keys) });
    assert.equal([first.chunks, first.zeroChunks, first.uploadedChunks, first.reusedChunks], [3, 1, 1, 1]);
    const id = first.backup.split("/")[1]!;
    const m = parseManifest((await target.get(manifestKey("sec", id), MiB))!, manifestKey("sec", id));
    assert.is(m.version, 2);
    assert.is.not(m.chunks[0], sha256Hex(text), "a chunk is not named by the plain hash of its bytes");
    const objects = readdirSync(join(dir, "target", "chunks"), { recursive: true, withFileTypes: true }).filter((d) => d.isFile());
    for (const f of objects) assert.not.ok(readFileSync(join(f.parentPath, f.name)).includes(Buffer.from("BACKUP-PLAINTEXT-MARKER")), "no plaintext in the target");
    const again = await createBackup({ client: src.client, target, volume: "sec", exportName: "", snapshot: undefined, pxdVersion: "test", chain: await chainFor(target, "sec", keys) });
    assert.equal([again.uploadedChunks, again.reusedChunks], [0, 2], "the next backup joins the chain: nothing new uploaded");

    assert.throws(() => codecOf(m, undefined), /backup sec\/\S+ is encrypted: set PXD_CLUSTER_KEY or give --cluster-key-file FILE/);
    assert.throws(() => codecOf(m, new StaticKeySource(randomBytes(32), "another key")), /is encrypted and its key does not open: the wrapped key does not open with another key/);
    const dst = await connectNbd(b.server, { exportName: "" });
    await restoreBackup({ client: dst.client, target, manifest: m, codec: codecOf(m, new StaticKeySource(keys["key"] as Buffer, "the same key from elsewhere")), fresh: true });
    assert.ok((await dst.client.read(0, 12 * MiB)).equals(await src.client.read(0, 12 * MiB)), "the same bytes");
    // A sealed chunk changed by one byte does not open.
    const stored = (await target.get(chunkKey(m.chunks[0]!), 8 * MiB))!;
    stored[40] = stored[40]! ^ 1;
    await target.put(chunkKey(m.chunks[0]!), stored);
    assert.match(String(await fetchChunk(target, m, 0, codecOf(m, keys)).catch((x: Error) => x)), /does not open with this backup chain's key/);
    src.client.close();
    dst.client.close();
  });
});

test("a backup and a delete never run at once on a target: each refuses while the other's lock is fresh, and takes a stale one as a dead client's", async () => {
  const t = tempDir("engine");
  const a = await nbdkitMemory("8M");
  try {
    mkdirSync(join(t.dir, "target"));
    const target = await openTarget(`file://${t.dir}/target`);
    const src = await connectNbd(a.server, { exportName: "" });
    await src.client.write(0, pattern(MiB, 7));
    const backup = (): ReturnType<typeof createBackup> => createBackup({ client: src.client, target, volume: "disk", exportName: "", snapshot: undefined, pxdVersion: "test" });
    const first = await backup();
    const m = await findBackup(target, first.backup);
    assert.equal(await target.list("locks/", 10), [], "a finished backup leaves no lock");
    // Another client's delete is running: a backup would count on chunks it may remove.
    const lock = (kind: string, at: Date): Promise<void> => target.put(`locks/${kind}-x1`, Buffer.from(JSON.stringify({ kind, id: "x1", host: "other", pid: 42, at: at.toISOString() })));
    await lock("delete", new Date());
    assert.match(String(await backup().catch((e: Error) => e)), /a backup delete is running on .* \(delete x1 by other pid 42/);
    await target.delete("locks/delete-x1");
    // Another client's backup is running: the delete is refused and removes nothing.
    await lock("backup", new Date());
    assert.match(String(await deleteBackup(target, m).catch((e: Error) => e)), /a backup is running on .* \(backup x1 by other pid 42/);
    assert.ok(await target.exists(chunkKey(m.chunks[0]!)), "no chunk removed");
    assert.equal((await listBackups(target)).manifests.length, 1, "no manifest removed");
    // A lock not rewritten for ten minutes was left by a client that died.
    await lock("backup", new Date(Date.now() - 11 * 60 * 1000));
    const d = await deleteBackup(target, m);
    assert.is(d.deletedChunks, 1);
    assert.equal(await target.list("locks/", 10), ["locks/backup-x1"], "the delete leaves no lock of its own");
    src.client.close();
  } finally {
    a.stop();
    t.remove();
  }
});

test("a connection that dies mid-backup: the backup starts over on the next one and is whole", async () => {
  const t = tempDir("engine-retry");
  // Two servers of the same bytes (nbdkit's pattern plugin), the first slow so that it dies mid-way.
  const a = await startNbdkit(["--filter=delay", "pattern", "size=32M", "rdelay=100ms"]);
  const b = await startNbdkit(["pattern", "size=32M"]);
  const c = await nbdkitMemory("32M");
  try {
    const target = await openTarget(`file://${t.dir}`);
    const tries: string[] = [];
    const s = await overConnections(
      3,
      async (attempt) => (await connectNbd(attempt === 1 ? a.server : b.server, { exportName: "" })).client,
      (client) => createBackup({ client, target, volume: "p", exportName: "", snapshot: undefined, pxdVersion: "test", progress: () => a.stop() }),
      (e) => (tries.push(e.message), true),
    );
    assert.is(tries.length, 1, "one more connection");
    assert.match(tries[0]!, /closed the connection|failed/);
    assert.is(s.chunks, 8);
    assert.ok(s.reusedChunks >= 1, "what the first pass uploaded is found, not sent again");
    const id = s.backup.split("/")[1]!;
    const m = parseManifest((await target.get(manifestKey("p", id), MiB))!, manifestKey("p", id));
    const dst = await connectNbd(c.server, { exportName: "" });
    await restoreBackup({ client: dst.client, target, manifest: m, codec: plainCodec, fresh: true });
    const src = await connectNbd(b.server, { exportName: "" });
    assert.ok((await dst.client.read(0, 32 * MiB)).equals(await src.client.read(0, 32 * MiB)), "the backup holds the whole pattern");
    const refused = await overConnections(
      3,
      async () => (await connectNbd(c.server, { exportName: "" })).client,
      async (client) => {
        client.closed("cut");
        return client.read(0, 512);
      },
      () => false,
    ).catch((e: Error) => e);
    assert.match(String(refused), /cut/, "no retry when `again` says no");
    dst.client.close();
    src.client.close();
  } finally {
    a.stop();
    b.stop();
    c.stop();
    t.remove();
  }
});

test.run();
