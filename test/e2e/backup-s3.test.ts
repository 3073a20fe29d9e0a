// pxd backup over s3:// against a real S3-protocol server (s3rver, from npm,
// in this process, storing in a temp dir): two backups, the second uploading
// only what changed, a restore on another cluster with the source's bytes
// (a volume moved between clusters), verify, a corrupt
// object named, delete; and the S3 errors a user meets (no bucket, wrong
// credentials, an endpoint that is down) as one sentence each.
//
// s3rver is run with allowMismatchedSignatures: it computes the canonical
// path of a bucket-level request (ListObjectsV2) without the trailing slash
// the AWS SDK v3 signs, so every list would fail its signature check. An
// unknown access key is still refused (InvalidAccessKeyId), which the
// wrong-credentials case uses.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { startDaemon, freePort, pxdEntry, type DaemonProcess } from "../helpers/daemon.js";
import { run, runOk, type RunResult } from "../helpers/run.js";
import { tempDir } from "../helpers/tmp.js";

const MiB = 1024 * 1024;
const bucket = "pxd-backups";

interface S3rverInstance {
  run(): Promise<{ address: string; port: number }>;
  close(): Promise<void>;
}

async function startS3(dir: string): Promise<{ endpoint: string; close(): Promise<void> }> {
  const { default: S3rver } = (await import("@20minutes/s3rver" as string)) as { default: new (o: object) => S3rverInstance };
  const s = new S3rver({ address: "127.0.0.1", port: 0, silent: true, directory: dir, allowMismatchedSignatures: true, configureBuckets: [{ name: bucket }] });
  const { port } = await s.run();
  return { endpoint: `http://127.0.0.1:${port}`, close: () => s.close() };
}

const s3Env = { AWS_ACCESS_KEY_ID: "S3RVER", AWS_SECRET_ACCESS_KEY: "S3RVER", AWS_REGION: "us-east-1", AWS_SHARED_CREDENTIALS_FILE: "/nonexistent", AWS_CONFIG_FILE: "/nonexistent" };

function pxd(d: DaemonProcess, args: string[], env: NodeJS.ProcessEnv = {}): Promise<RunResult> {
  return run(process.execPath, [pxdEntry, ...args], { env: { ...process.env, ...s3Env, PXD_HOST: `127.0.0.1:${d.apiPort}`, ...env }, timeoutMs: 90_000 });
}

/** Objects s3rver holds under the bucket's chunks/ (its files end in ._S3rver_object). */
function storedChunks(dir: string): string[] {
  const out: string[] = [];
  const walk = (p: string): void => {
    for (const n of readdirSync(p)) {
      const q = join(p, n);
      if (statSync(q).isDirectory()) walk(q);
      else if (n.endsWith("._S3rver_object")) out.push(q);
    }
  };
  try {
    walk(join(dir, bucket, "site-a", "chunks"));
  } catch {
    return [];
  }
  return out;
}

test("backups over s3:// are incremental, restore the source's bytes, and a corrupt object is named", async () => {
  const t = tempDir("backup-s3");
  const s3 = await startS3(t.dir);
  const d = await startDaemon();
  const url = `s3://${bucket}/site-a`;
  try {
    await d.api.createVolume({ name: "db", sizeBytes: 32 * MiB });
    await runOk("qemu-io", ["-f", "raw", d.uri("db"), "-c", "write -P 0x61 0 5M", "-c", `write -P 0x62 ${20 * MiB} 1M`]);
    const one = await pxd(d, ["backup", "create", "db", "--to", url, "--s3-endpoint", s3.endpoint, "--json"]);
    assert.is(one.code, 0, one.stderr);
    const b1 = JSON.parse(one.stdout) as { backup: string; uploadedChunks: number; zeroChunks: number };
    assert.is(b1.uploadedChunks, 3, "chunks 0, 1 and 5");
    assert.is(b1.zeroChunks, 5);
    assert.is(storedChunks(t.dir).length, 3);

    await runOk("qemu-io", ["-f", "raw", d.uri("db"), "-c", `write -P 0x63 ${21 * MiB} 4k`]);
    // The endpoint from the environment this time.
    const two = await pxd(d, ["backup", "create", "db", "--to", url, "--json"], { PXD_S3_ENDPOINT: s3.endpoint });
    assert.is(two.code, 0, two.stderr);
    const b2 = JSON.parse(two.stdout) as { backup: string; uploadedChunks: number; reusedChunks: number };
    assert.is(b2.uploadedChunks, 1, "only chunk 5 changed");
    assert.is(b2.reusedChunks, 2);
    assert.is(storedChunks(t.dir).length, 4);

    const list = await pxd(d, ["backup", "list", url, "--s3-endpoint", s3.endpoint, "--volume", "db"]);
    assert.is(list.code, 0, list.stderr);
    assert.ok(list.stdout.includes(b1.backup) && list.stdout.includes(b2.backup), list.stdout);

    // Restored on another cluster (a second daemon that bootstrapped its own): a volume moved between clusters.
    const other = await startDaemon();
    try {
      assert.is.not(await other.api.clusterId(), await d.api.clusterId());
      const r = await pxd(other, ["backup", "restore", url, "db/latest", "db-copy", "--s3-endpoint", s3.endpoint]);
      assert.is(r.code, 0, r.stderr);
      const cmp = await run("qemu-img", ["compare", "-f", "raw", "-F", "raw", d.uri("db"), other.uri("db-copy")]);
      assert.is(cmp.code, 0, `the restored volume has the source's bytes: ${cmp.stdout}${cmp.stderr}`);
    } finally {
      await other.dispose();
    }

    const v = await pxd(d, ["backup", "verify", url, b2.backup, "--s3-endpoint", s3.endpoint]);
    assert.is(v.code, 0, v.stderr);
    // Damage chunk 0's object in place, same length (s3rver keeps each object as a plain file beside its metadata).
    const manifest = JSON.parse(readFileSync(join(t.dir, bucket, "site-a", "backups", "db", `${b2.backup.split("/")[1]}.json._S3rver_object`), "utf8")) as { chunks: string[] };
    const hash = manifest.chunks[0]!;
    const victim = storedChunks(t.dir).find((p) => p.endsWith(`${hash}._S3rver_object`))!;
    const stored = readFileSync(victim);
    stored.writeUInt8(stored[stored.length >> 1]! ^ 0xff, stored.length >> 1);
    writeFileSync(victim, stored);
    const bad = await pxd(d, ["backup", "verify", url, b2.backup, "--s3-endpoint", s3.endpoint]);
    assert.is(bad.code, 1);
    assert.ok(bad.stderr.includes(hash), `verify names ${hash}: ${bad.stderr}`);

    const del = await pxd(d, ["backup", "delete", url, b1.backup, "--s3-endpoint", s3.endpoint, "--json"]);
    assert.is(del.code, 0, del.stderr);
    assert.is((JSON.parse(del.stdout) as { deletedChunks: number }).deletedChunks, 1, "only the old chunk 5");
    assert.is(storedChunks(t.dir).length, 3);
    assert.ok(readFileSync(victim).length > 0);
  } finally {
    await d.dispose();
    await s3.close();
    t.remove();
  }
});

test("S3 errors are one sentence each: no bucket, wrong credentials, endpoint down", async () => {
  const t = tempDir("backup-s3-bad");
  const s3 = await startS3(t.dir);
  const d = await startDaemon();
  try {
    await d.api.createVolume({ name: "v", sizeBytes: 4 * MiB });
    await runOk("qemu-io", ["-f", "raw", d.uri("v"), "-c", "write -P 1 0 4k"]);
    const noBucket = await pxd(d, ["backup", "create", "v", "--to", "s3://no-such-bucket/x", "--s3-endpoint", s3.endpoint]);
    assert.is(noBucket.code, 1);
    assert.match(noBucket.stderr, /bucket s3:\/\/no-such-bucket.* does not exist; create it first/);
    const wrong = await pxd(d, ["backup", "list", `s3://${bucket}/x`, "--s3-endpoint", s3.endpoint], { AWS_ACCESS_KEY_ID: "WRONG" });
    assert.is(wrong.code, 1);
    assert.match(wrong.stderr, /refused the credentials \(InvalidAccessKeyId\)/);
    const down = await pxd(d, ["backup", "list", `s3://${bucket}/x`, "--s3-endpoint", `http://127.0.0.1:${await freePort()}`]);
    assert.is(down.code, 1);
    assert.match(down.stderr, /cannot reach s3:\/\/pxd-backups at http:\/\/127\.0\.0\.1:\d+ after 5 attempts .*ECONNREFUSED/);
    assert.not.match(down.stderr, /\n\s+at /, "no stack trace");
  } finally {
    await d.dispose();
    await s3.close();
    t.remove();
  }
});

test.run();
