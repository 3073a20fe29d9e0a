// The control API over HTTPS with the cluster CA (docs/security.md, "The
// cluster CA"): the bootstrapping node makes the CA, a joining node receives
// it sealed under the cluster secret and signs its own certificate; clients
// that trust the CA reach every node and a follower forwards to the leader
// over HTTPS; a client without the CA, or speaking plain HTTP, gets nothing.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ApiClient, DaemonUnreachableError } from "../../src/api/client.js";
import { startCluster, type Cluster } from "../helpers/cluster.js";
import { pxdEntry } from "../helpers/daemon.js";
import { run } from "../helpers/run.js";
import { testAdminToken } from "../helpers/auth.js";

let c: Cluster;

test.before(async () => {
  c = await startCluster(2, ["--api-tls"]);
});

test.after(async () => {
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
});

test("without the CA, or in plain HTTP, a client gets nothing, and the message says what to give", async () => {
  const n = c.nodes[0]!;
  const untrusted = await new ApiClient(`https://${n.host}:9001`, { token: testAdminToken }).status().then(() => undefined, (e: Error) => e);
  assert.ok(untrusted instanceof DaemonUnreachableError, String(untrusted));
  assert.match(untrusted.message, /TLS connection .* failed .*give the cluster's CA certificate .* with PXD_CA_FILE or --ca/);
  const plain = await new ApiClient(`${n.host}:9001`, { token: testAdminToken, timeoutMs: 3000 }).status().then(() => undefined, (e: Error) => e);
  assert.ok(plain instanceof DaemonUnreachableError, "plain HTTP to an HTTPS port");
});

test.run();
