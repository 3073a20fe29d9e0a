// pxd backup against a daemon that requires NBD TLS (--nbd-tls require,
// X.509 made with the openssl CLI): refused without --nbd-tls-dir, with a
// sentence; with it, a backup and a restore over TLS, the data written and
// read back by nbdcopy (libnbd, gnutls) over TLS too. The same with
// pre-shared keys (--nbd-tls-psk on both sides, psktool's file format),
// and a clone of a snapshot read over PSK; a wrong key is refused.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { startDaemon, pxdEntry, type DaemonProcess } from "../helpers/daemon.js";
import { run, runOk, type RunResult } from "../helpers/run.js";
import { tempDir } from "../helpers/tmp.js";
import { pattern } from "../helpers/nbd-raw-client.js";

const MiB = 1024 * 1024;

function pxd(d: DaemonProcess, args: string[]): Promise<RunResult> {
  return run(process.execPath, [pxdEntry, ...args], { env: { ...process.env, PXD_HOST: `127.0.0.1:${d.apiPort}` }, timeoutMs: 60_000 });
}

async function openssl(args: string[]): Promise<void> {
  await runOk("openssl", args);
}

/** A CA in dir, a server certificate for 127.0.0.1 in dir/server, a client one in dir/client (each beside ca-cert.pem). */
async function makeCerts(dir: string): Promise<void> {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  await openssl(["req", "-x509", ...ec, "-keyout", join(dir, "ca-key.pem"), "-out", join(dir, "ca-cert.pem"), "-days", "2", "-subj", "/CN=ca"]);
  for (const kind of ["server", "client"] as const) {
    await runOk("mkdir", ["-p", join(dir, kind)]);
    writeFileSync(join(dir, `${kind}.ext`), kind === "server" ? "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" : "extendedKeyUsage=clientAuth\n");
    await openssl(["req", ...ec, "-keyout", join(dir, kind, `${kind}-key.pem`), "-out", join(dir, `${kind}.csr`), "-subj", `/CN=${kind === "server" ? "127.0.0.1" : "backup"}`]);
    await openssl(["x509", "-req", "-in", join(dir, `${kind}.csr`), "-CA", join(dir, "ca-cert.pem"), "-CAkey", join(dir, "ca-key.pem"), "-CAcreateserial", "-out", join(dir, kind, `${kind}-cert.pem`), "-days", "2", "-extfile", join(dir, `${kind}.ext`)]);
    writeFileSync(join(dir, kind, "ca-cert.pem"), readFileSync(join(dir, "ca-cert.pem")));
  }
}

test("a daemon that requires NBD TLS: refused without --nbd-tls-dir, with a sentence; backup and restore over TLS with it", async () => {
  const t = tempDir("backup-tls");
  await makeCerts(t.dir);
  const d = await startDaemon("127.0.0.1", ["--nbd-tls", "require", "--nbd-tls-dir", join(t.dir, "server")]);
  const url = `file://${t.dir}`;
  try {
    await d.api.createVolume({ name: "v", sizeBytes: 8 * MiB });
    const plain = await pxd(d, ["backup", "create", "v", "--to", url]);
    assert.is(plain.code, 1);
    assert.match(plain.stderr, /requires TLS on NBD .* give --nbd-tls-dir DIR/);
    const nbds = (volume: string): string => `nbds://127.0.0.1:${d.nbdPort}/${volume}?tls-certificates=${join(t.dir, "client")}`;
    const data = pattern(MiB, 5);
    writeFileSync(join(t.dir, "in.bin"), data);
    await runOk("nbdcopy", ["--", join(t.dir, "in.bin"), nbds("v")]);
    const tls = ["--nbd-tls-dir", join(t.dir, "client")];
    const made = await pxd(d, ["backup", "create", "v", "--to", url, "--json", ...tls]);
    assert.is(made.code, 0, made.stderr);
    const b = JSON.parse(made.stdout) as { backup: string; zeroChunks: number; uploadedChunks: number };
    assert.is(b.zeroChunks, 1);
    assert.is(b.uploadedChunks, 1);
    const r = await pxd(d, ["backup", "restore", url, b.backup, "w", ...tls]);
    assert.is(r.code, 0, r.stderr);
    await runOk("nbdcopy", ["--", nbds("w"), join(t.dir, "out.bin")]);
    const out = readFileSync(join(t.dir, "out.bin"));
    assert.ok(out.subarray(0, MiB).equals(data) && out.subarray(MiB).equals(Buffer.alloc(7 * MiB)), "the restored volume holds what was written, over TLS both ways");
    assert.match(d.output, /TLS established with the certificate of "backup"/);
  } finally {
    await d.dispose();
    t.remove();
  }
});

test("a daemon that requires NBD TLS with PSK: backup and restore with --nbd-tls-psk (a clone needs none); a wrong key or no TLS refused", async () => {
  const t = tempDir("backup-psk");
  const keys = join(t.dir, "keys.psk");
  const alice = "a1".repeat(32);
  writeFileSync(keys, `alice:${alice}\nbob:${"b2".repeat(32)}\n`);
  writeFileSync(join(t.dir, "alice.psk"), `alice:${alice}\n`);
  writeFileSync(join(t.dir, "wrong.psk"), `alice:${"c3".repeat(32)}\n`);
  const d = await startDaemon("127.0.0.1", ["--nbd-tls", "require", "--nbd-tls-psk", keys]);
  const url = `file://${join(t.dir, "target")}`;
  mkdirSync(join(t.dir, "target"));
  try {
    await d.api.createVolume({ name: "p", sizeBytes: 4 * MiB });
    const data = pattern(MiB, 9);
    writeFileSync(join(t.dir, "in.bin"), data);
    await runOk("nbdcopy", ["--", join(t.dir, "in.bin"), `nbds://alice@127.0.0.1:${d.nbdPort}/p?tls-psk-file=${keys}`]);
    const plain = await pxd(d, ["backup", "create", "p", "--to", url, "--live"]);
    assert.is(plain.code, 1, plain.stderr);
    assert.match(plain.stderr, /requires TLS on NBD .* or --nbd-tls-psk FILE/);
    const wrong = await pxd(d, ["backup", "create", "p", "--to", url, "--live", "--nbd-tls-psk", join(t.dir, "wrong.psk")]);
    assert.is(wrong.code, 1, "a key the daemon does not hold for alice");
    assert.match(wrong.stderr, /TLS with the NBD server at 127\.0\.0\.1:\d+ failed/);
    const many = await pxd(d, ["backup", "create", "p", "--to", url, "--live", "--nbd-tls-psk", keys]);
    assert.is(many.code, 2);
    assert.match(many.stderr, /holds 2 identities; name the one to use with --nbd-tls-username/);
    const psk = ["--nbd-tls-psk", keys, "--nbd-tls-username", "alice"];
    const made = await pxd(d, ["backup", "create", "p", "--to", url, "--live", "--json", ...psk]);
    assert.is(made.code, 0, made.stderr);
    const b = JSON.parse(made.stdout) as { backup: string };
    const r = await pxd(d, ["backup", "restore", url, b.backup, "q", "--nbd-tls-psk", join(t.dir, "alice.psk")]);
    assert.is(r.code, 0, r.stderr);
    await d.api.createSnapshot("p", { name: "s1" });
    // A clone is made inside the cluster: no NBD connection, so no key.
    const c = await pxd(d, ["volume", "clone", "p@s1", "pc"]);
    assert.is(c.code, 0, c.stderr);
    for (const v of ["q", "pc"]) {
      await runOk("nbdcopy", ["--", `nbds://alice@127.0.0.1:${d.nbdPort}/${v}?tls-psk-file=${keys}`, join(t.dir, `${v}.bin`)]);
      const out = readFileSync(join(t.dir, `${v}.bin`));
      assert.ok(out.subarray(0, MiB).equals(data) && out.subarray(MiB).equals(Buffer.alloc(3 * MiB)), `${v} holds what was written to p`);
    }
    assert.match(d.output, /TLS established with PSK identity "alice"/);
  } finally {
    await d.dispose();
    t.remove();
  }
});

test.run();
