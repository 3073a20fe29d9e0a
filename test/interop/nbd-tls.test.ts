// NBD over TLS (NBD_OPT_STARTTLS, docs/security.md "TLS on NBD") against a
// real daemon, with clients no one here wrote: libnbd's nbdinfo and nbdcopy
// (gnutls) with X.509 certificates and with a pre-shared key, and
// nbd-client's list mode. Certificates come from the openssl CLI. A client
// without a certificate, with one of another CA, with a wrong key, or without
// TLS at all is refused; a client that sends plaintext after STARTTLS (the
// injection of CVE-2021-3716) is cut off.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { mkdirSync, copyFileSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { startDaemon, type DaemonProcess } from "../helpers/daemon.js";
import { run, runOk } from "../helpers/run.js";
import { tempDir } from "../helpers/tmp.js";
import { OPT, RawClient, REP } from "../helpers/nbd-raw-client.js";

let d: DaemonProcess;
const t = tempDir("nbd-tls");
const dir = (name: string): string => join(t.dir, name);

async function openssl(...args: string[]): Promise<void> {
  await runOk("openssl", args);
}

/** A CA, and a certificate it signs for `cn` (server: an IP SAN for 127.0.0.1). */
async function makeCa(name: string): Promise<void> {
  await openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", dir(`${name}-key.pem`), "-out", dir(`${name}-cert.pem`), "-days", "2", "-subj", `/CN=${name}`);
}

async function makeCert(ca: string, out: string, kind: "server" | "client", cn: string): Promise<void> {
  mkdirSync(dir(out), { recursive: true });
  const key = join(dir(out), `${kind}-key.pem`);
  const csr = dir(`${out}.csr`);
  const ext = dir(`${out}.ext`);
  writeFileSync(ext, kind === "server" ? "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" : "extendedKeyUsage=clientAuth\n");
  await openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", csr, "-subj", `/CN=${cn}`);
  await openssl("x509", "-req", "-in", csr, "-CA", dir(`${ca}-cert.pem`), "-CAkey", dir(`${ca}-key.pem`), "-CAcreateserial", "-out", join(dir(out), `${kind}-cert.pem`), "-days", "2", "-extfile", ext);
  // libnbd reads the CA that signed the server from the client's directory; the server reads the CA of its clients from its own.
  copyFileSync(dir("ca-cert.pem"), join(dir(out), "ca-cert.pem"));
}

test.before(async () => {
  await makeCa("ca");
  await makeCa("otherca");
  await makeCert("ca", "server", "server", "127.0.0.1");
  await makeCert("ca", "alice", "client", "alice");
  await makeCert("otherca", "mallory", "client", "mallory"); // signed by another CA
  mkdirSync(dir("nocert"));
  copyFileSync(dir("ca-cert.pem"), join(dir("nocert"), "ca-cert.pem"));
  writeFileSync(dir("psk.keys"), `alice:${randomBytes(32).toString("hex")}\n`);
  writeFileSync(dir("wrong.keys"), `alice:${randomBytes(32).toString("hex")}\n`);
  d = await startDaemon("127.0.0.1", ["--nbd-tls", "require", "--nbd-tls-dir", dir("server")]);
  await d.api.createVolume({ name: "v", sizeBytes: 4 << 20 });
});

test.after(async () => {
  await d.dispose();
  t.remove();
});

const uri = (query: string, user = ""): string => `nbds://${user}127.0.0.1:${d.nbdPort}/v?${query}`;

test("X.509: a client certificate of the cluster's CA reads and writes (nbdcopy, nbdinfo); none, another CA's, or no TLS at all is refused", async () => {
  const data = randomBytes(1 << 20);
  writeFileSync(dir("in.bin"), data);
  await runOk("nbdcopy", ["--", dir("in.bin"), uri(`tls-certificates=${dir("alice")}`)]);
  await runOk("nbdcopy", ["--", uri(`tls-certificates=${dir("alice")}`), dir("out.bin")]);
  const out = (await import("node:fs")).readFileSync(dir("out.bin"));
  assert.ok(out.subarray(0, data.length).equals(data), "what went in over TLS comes back");
  const info = await runOk("nbdinfo", [uri(`tls-certificates=${dir("alice")}`)]);
  assert.match(info, /protocol: newstyle-fixed with TLS/);
  assert.match(d.output, /TLS established with the certificate of "alice"/);

  const none = await run("nbdinfo", [uri(`tls-certificates=${dir("nocert")}`)]);
  assert.is.not(none.code, 0, "no client certificate");
  assert.match(d.output, /TLS handshake failed: .*peer did not return a certificate/);
  const other = await run("nbdinfo", [uri(`tls-certificates=${dir("mallory")}`)]);
  assert.is.not(other.code, 0, "a certificate of another CA");
  assert.match(d.output, /TLS handshake failed: .*certificate/);
  const plain = await run("nbdinfo", [`nbd://127.0.0.1:${d.nbdPort}/v`]);
  assert.is.not(plain.code, 0, "no TLS on a server that requires it");
});

test("nbd-client's TLS options list the exports", async () => {
  const which = await run("sh", ["-c", "command -v nbd-client"]);
  if (which.code !== 0) return; // not installed here
  const r = await run("nbd-client", ["-l", "127.0.0.1", String(d.nbdPort), "-cacertfile", dir("ca-cert.pem"), "-certfile", join(dir("alice"), "client-cert.pem"), "-keyfile", join(dir("alice"), "client-key.pem"), "-tlshostname", "127.0.0.1"]);
  assert.match(r.stdout, /^v: pxd volume v/m, r.stderr);
});

test("require: every option before STARTTLS but ABORT is NBD_REP_ERR_TLS_REQD, EXPORT_NAME ends the session, and plaintext after STARTTLS is cut off", async () => {
  const c = await RawClient.connect(d.nbdPort);
  await c.greet();
  for (const option of [OPT.LIST, OPT.INFO, OPT.GO, OPT.STRUCTURED_REPLY]) {
    const [r] = await c.option(option);
    assert.is(r?.type, REP.ERR_TLS_REQD, `option ${option}`);
    assert.match(r?.data.toString() ?? "", /this server requires TLS: send NBD_OPT_STARTTLS first/);
  }
  c.sendOption(OPT.EXPORT_NAME, Buffer.from("v"));
  assert.ok(await c.waitClosed(), "EXPORT_NAME cannot fail, so the session ends");

  // The downgrade: STARTTLS and, in the same write, an option in plaintext the client hopes the server takes after the upgrade.
  const e = await RawClient.connect(d.nbdPort);
  await e.greet();
  const h = (option: number, data = Buffer.alloc(0)): Buffer => {
    const b = Buffer.alloc(16);
    b.write("IHAVEOPT", 0, "ascii");
    b.writeUInt32BE(option, 8);
    b.writeUInt32BE(data.length, 12);
    return Buffer.concat([b, data]);
  };
  e.write(Buffer.concat([h(OPT.STARTTLS), h(OPT.LIST)]));
  assert.ok(await e.waitClosed(), "closed");
  assert.match(d.output, /sent data after NBD_OPT_STARTTLS before the TLS handshake \(a downgrade or injection attempt\); closing/);

  const twice = await RawClient.connect(d.nbdPort);
  await twice.greet();
  const [ack] = await twice.option(OPT.STARTTLS, Buffer.from("x"));
  assert.is(ack?.type, REP.ERR_INVALID, "STARTTLS carries no data");
  twice.destroy();
});

test("the Unix socket, private to the daemon's user, is exempt from require", async () => {
  const r = await runOk("nbdinfo", [`nbd+unix:///v?socket=${join(d.dataDir, "nbd.sock")}`]);
  assert.match(r, /without TLS/);
});

test("PSK: the right key for the identity reads, a wrong one is refused; --nbd-tls on serves clients without TLS too", async () => {
  d.extraArgs = ["--nbd-tls", "on", "--nbd-tls-psk", dir("psk.keys")];
  await d.restart();
  const good = await runOk("nbdinfo", [uri(`tls-psk-file=${dir("psk.keys")}`, "alice@")]);
  assert.match(good, /with TLS/);
  assert.match(d.output, /TLS established with PSK identity "alice"/);
  const bad = await run("nbdinfo", [uri(`tls-psk-file=${dir("wrong.keys")}`, "alice@")]);
  assert.is.not(bad.code, 0);
  const plain = await runOk("nbdinfo", [`nbd://127.0.0.1:${d.nbdPort}/v`]);
  assert.match(plain, /without TLS/, "on: TLS is offered, not required");
});

test("a mode without material, or a PSK file that is not one, stops the start with what to fix", async () => {
  const refused = async (args: string[], message: RegExp): Promise<void> => {
    d.extraArgs = args;
    await d.stop();
    const err = await d.start().then(() => undefined, (e: Error) => e.message);
    assert.match(err ?? "started", message);
  };
  writeFileSync(dir("bad.keys"), "alice=00\n");
  await refused(["--nbd-tls", "require"], /--nbd-tls require needs --nbd-tls-dir DIR .* or --nbd-tls-psk FILE/);
  await refused(["--nbd-tls", "on", "--nbd-tls-psk", dir("bad.keys")], /line 1 is not "identity:hexkey"/);
  await refused(["--nbd-tls", "on", "--nbd-tls-dir", dir("nocert")], /has no server-cert\.pem/);
  d.extraArgs = [];
  await d.start();
});

test("--nbd-tls-owners: a client reaches only the volumes its certificate's name owns, and lists only those; the Unix socket reaches all", async () => {
  d.extraArgs = ["--nbd-tls", "require", "--nbd-tls-dir", dir("server"), "--nbd-tls-owners"];
  await d.restart();
  await d.api.createVolume({ name: "alices", sizeBytes: 1 << 20, owner: "alice" });
  const mine = await runOk("nbdinfo", [`nbds://127.0.0.1:${d.nbdPort}/alices?tls-certificates=${dir("alice")}`]);
  assert.match(mine, /export-size: 1048576/);
  const theirs = await run("nbdinfo", [uri(`tls-certificates=${dir("alice")}`)]);
  assert.is.not(theirs.code, 0, "v belongs to the test's admin, not to alice");
  const listed = await runOk("nbdinfo", ["--list", "--json", `nbds://127.0.0.1:${d.nbdPort}/?tls-certificates=${dir("alice")}`]);
  assert.equal((JSON.parse(listed) as { exports: { "export-name": string }[] }).exports.map((e) => e["export-name"]), ["alices"]);
  const local = await runOk("nbdinfo", ["--list", "--json", `nbd+unix:///?socket=${join(d.dataDir, "nbd.sock")}`]);
  assert.equal((JSON.parse(local) as { exports: { "export-name": string }[] }).exports.map((e) => e["export-name"]).sort(), ["alices", "v"]);
  d.extraArgs = ["--nbd-tls", "on", "--nbd-tls-dir", dir("server"), "--nbd-tls-owners"];
  await d.stop();
  assert.match(await d.start().then(() => "started", (e: Error) => e.message), /--nbd-tls-owners needs --nbd-tls require/);
  d.extraArgs = [];
  await d.start();
});

test.run();
