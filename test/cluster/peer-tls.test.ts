// The peer transport over TLS, the default (docs/security.md): both sides
// present a certificate of the cluster CA and check the other's; Raft runs
// over it (a 2-replica volume gets a leader and an in-sync follower); a node
// whose certificate comes from another CA is refused by its peer, and let in
// again once it has the cluster's. The cluster is started with the flags
// older scripts pass (--peer-tls, --api-tls), which name the default.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { copyFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { startCluster, waitUntil, type Cluster } from "../helpers/cluster.js";
import { startDaemon, type DaemonProcess } from "../helpers/daemon.js";

let c: Cluster;
let other: DaemonProcess;

test.before(async () => {
  c = await startCluster(2, ["--peer-tls", "--api-tls"]);
  other = await startDaemon("127.0.0.1"); // another cluster, with a CA of its own
});

test.after(async () => {
  await other.dispose();
  await c.dispose();
});

test("Raft runs over TLS between nodes of the cluster CA", async () => {
  for (const n of c.nodes) assert.match(n.output, /listening on .* over TLS \(peers' certificates checked against the cluster CA\)/);
  await c.nodes[0]!.api.createVolume({ name: "r2", sizeBytes: 4 << 20, repl: 2 });
  await waitUntil("both replicas in sync", async () => {
    const v = await c.nodes[0]!.api.inspectVolume("r2");
    return v.replicas.length === 2 && v.replicas.every((r) => r.state === "in-sync") && v.replicas.some((r) => r.leader);
  });
});

test("a node with another CA's certificate is refused by its peer; with the cluster's it is back", async () => {
  const n = c.nodes[1]!;
  const tls = (d: string, f: string): string => join(d, "tls", f);
  const keep = join(c.dir, "saved");
  await n.stop();
  const { mkdirSync } = await import("node:fs");
  mkdirSync(keep, { recursive: true });
  for (const f of ["ca-cert.pem", "ca-key.pem"]) {
    copyFileSync(tls(n.dataDir, f), join(keep, f));
    copyFileSync(tls(other.dataDir, f), tls(n.dataDir, f));
  }
  for (const f of ["node-cert.pem", "node-key.pem", "node-san.txt"]) rmSync(tls(n.dataDir, f), { force: true }); // made again from the other CA
  await n.start();
  const peerLines = (d: DaemonProcess): string => d.output.split("\n").filter((l) => /peer|TLS/.test(l)).slice(-10).join("\n");
  await waitUntil("node1 refuses node2's TLS handshake", async () => /peer: TLS handshake from \S+ refused: .* \(a certificate the cluster CA did not sign, on either side\)/.test(c.nodes[0]!.output)).catch((e: Error) => {
    throw new Error(`${e.message}\n${peerLines(c.nodes[0]!)}\n---\n${peerLines(n)}`);
  });
  const seen = await c.nodes[0]!.api.listNodes();
  assert.is(seen.find((x) => x.name === "node2")?.health, "down", "no peer link without the cluster's certificate");

  await n.stop();
  for (const f of ["ca-cert.pem", "ca-key.pem"]) copyFileSync(join(keep, f), tls(n.dataDir, f));
  for (const f of ["node-cert.pem", "node-key.pem", "node-san.txt"]) rmSync(tls(n.dataDir, f), { force: true });
  await n.start();
  await c.healthy();
});

test.run();
