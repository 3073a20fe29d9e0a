// pxd backup against a daemon that requires NBD TLS (--nbd-tls require,
// X.509 made with the openssl CLI): refused without --nbd-tls-dir, with a
// sentence; with it, a backup and a restore over TLS, the data written and
// read back by nbdcopy (libnbd, gnutls) over TLS too.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { readFileSync, writeFileSync } from "node:fs";
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

test.run();
