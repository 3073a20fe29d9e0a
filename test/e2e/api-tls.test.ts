// The control API over HTTPS with the cluster CA, the default (docs/security.md,
// "The cluster CA"): the bootstrapping node makes the CA, a joining node
// receives it sealed under the cluster secret and signs its own certificate;
// clients that trust the CA reach every node and a follower forwards to the
// leader over HTTPS; a client without the CA, or speaking plain HTTP, gets
// nothing but a sentence saying what to give. A node started with
// --api-plain-http serves plain HTTP, and an HTTPS client is told so.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ApiClient, DaemonUnreachableError } from "../../src/api/client.js";
import { startCluster, type Cluster } from "../helpers/cluster.js";
import { pxdEntry, startDaemon, type DaemonProcess } from "../helpers/daemon.js";
import { ApiError } from "../../src/api/types.js";
import { run } from "../helpers/run.js";
import { testAdminToken } from "../helpers/auth.js";

let c: Cluster;
let plain: DaemonProcess;

test.before(async () => {
  c = await startCluster(2); // no TLS flag: HTTPS is the default
  plain = await startDaemon("127.0.0.1", ["--api-plain-http", "--peer-plain"]);
});

test.after(async () => {
  await plain.dispose();
  await c.dispose();
});

test("both nodes hold the same CA, each its own certificate; a client that trusts the CA creates through the follower", async () => {
  const ca = readFileSync(join(c.nodes[0]!.dataDir, "tls", "ca-cert.pem"), "utf8");
  assert.is(readFileSync(join(c.nodes[1]!.dataDir, "tls", "ca-cert.pem"), "utf8"), ca, "the joined node received the CA");
  assert.is.not(readFileSync(join(c.nodes[1]!.dataDir, "tls", "node-cert.pem"), "utf8"), readFileSync(join(c.nodes[0]!.dataDir, "tls", "node-cert.pem"), "utf8"));
  for (const n of c.nodes) {
    const client = new ApiClient(`${n.host}:${n.apiPort}`, { ca, token: testAdminToken });
    await client.createVolume({ name: `tls-${n.host.split(".").pop()}`, sizeBytes: 1 << 20 }); // one of them forwards to the leader over HTTPS
  }
  const listed = await new ApiClient(`https://${c.nodes[1]!.host}:9001`, { ca, token: testAdminToken }).listVolumes();
  assert.is(listed.length, 2);
  const cli = await run(process.execPath, [pxdEntry, "--host", `https://${c.nodes[0]!.host}:9001`, "volume", "list"], { env: { ...process.env, PXD_CA_FILE: join(c.nodes[0]!.dataDir, "tls", "ca-cert.pem") } });
  assert.is(cli.code, 0, cli.stderr);
  assert.match(cli.stdout, /tls-/);
  // Without a scheme the CLI speaks HTTPS once it has a CA.
  const bare = await run(process.execPath, [pxdEntry, "--host", `${c.nodes[1]!.host}:9001`, "volume", "list"], { env: { ...process.env, PXD_CA_FILE: join(c.nodes[1]!.dataDir, "tls", "ca-cert.pem") } });
  assert.is(bare.code, 0, bare.stderr);
});

test("without the CA, or in plain HTTP, a client gets nothing, and the message says what to give", async () => {
  const n = c.nodes[0]!;
  const untrusted = await new ApiClient(`https://${n.host}:9001`, { token: testAdminToken }).status().then(() => undefined, (e: Error) => e);
  assert.ok(untrusted instanceof DaemonUnreachableError, String(untrusted));
  assert.match(untrusted.message, /^the API at https:\/\/\S+ serves HTTPS with the cluster's CA; give its CA with --ca FILE or PXD_CA_FILE \(DIR\/tls\/ca-cert.pem on a node\) \(this client does not trust it: /);
  const otherCa = readFileSync(plain.caFile, "utf8"); // another cluster's CA
  const wrongCa = await new ApiClient(`https://${n.host}:9001`, { ca: otherCa, token: testAdminToken }).status().then(() => undefined, (e: Error) => e);
  assert.match(String(wrongCa), /serves HTTPS with the cluster's CA/);
  const overHttp = await new ApiClient(`http://${n.host}:9001`, { token: testAdminToken, timeoutMs: 3000 }).status().then(() => undefined, (e: Error) => e);
  assert.ok(overHttp instanceof ApiError, `plain HTTP to the HTTPS port is answered, in plain HTTP: ${String(overHttp)}`);
  assert.is(overHttp.status, 400);
  assert.is(overHttp.code, "https_required");
  assert.match(overHttp.message, new RegExp(`serves HTTPS with the cluster's CA; give its CA with --ca FILE or PXD_CA_FILE .*, and use https://${n.host.replace(/\./g, "\\.")}:9001$`));
  const cli = await run(process.execPath, [pxdEntry, "--host", `${n.host}:9001`, "status"], { env: { ...process.env, PXD_CA_FILE: "" }, cwd: c.dir });
  assert.is(cli.code, 1);
  assert.match(cli.stderr, /^error: the API at https:\/\/\S+ serves HTTPS with the cluster's CA; give its CA with --ca FILE/);
});

test("connections reset before or after their first byte leave the HTTPS API serving", async () => {
  const n = c.nodes[0]!;
  const { connect } = await import("node:net");
  for (const first of [undefined, Buffer.from("G"), Buffer.from([0x16, 3, 1])]) {
    await new Promise<void>((resolve) => {
      const s = connect({ host: n.host, port: n.apiPort }, () => {
        if (first !== undefined) s.write(first);
        setTimeout(() => s.resetAndDestroy(), 50);
      });
      s.on("error", () => undefined);
      s.on("close", () => resolve());
    });
  }
  assert.is((await n.api.status()).nodes.length, 2);
});

test("--api-plain-http serves plain HTTP; an HTTPS client is told to use http://", async () => {
  assert.match(plain.output, /peer: node \d+ listening on \S+\n/, "--peer-plain: no TLS on the peer port");
  const st = await new ApiClient(`http://127.0.0.1:${plain.apiPort}`, { token: testAdminToken }).status();
  assert.is(st.nodes.length, 1);
  const ca = readFileSync(plain.caFile, "utf8");
  const overTls = await new ApiClient(`127.0.0.1:${plain.apiPort}`, { ca, token: testAdminToken }).status().then(() => undefined, (e: Error) => e);
  assert.ok(overTls instanceof DaemonUnreachableError, String(overTls));
  assert.match(overTls.message, new RegExp(`answers in plain HTTP, not HTTPS \\(its node runs with --api-plain-http\\); use --host http://127\\.0\\.0\\.1:${plain.apiPort}`));
});

test.run();
