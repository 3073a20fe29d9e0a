// API tokens and roles against a real two-node cluster (docs/security.md):
// every route without a token is a 401 with a sentence, a token of another
// cluster, an expired and a revoked one too (revoked through one node,
// refused by the other); each role gets what its row of the roles table says
// and a 403 with a sentence for the rest; a user's volume is its own, also
// when its create is forwarded to the catalog's leader; the CLI makes and
// revokes tokens.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { request } from "node:https";
import { ApiClient } from "../../src/api/client.js";
import { ApiError, type AuditResponse } from "../../src/api/types.js";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { newTokenId, signToken, tokenKey } from "../../src/api/token.js";
import { startCluster, waitUntil, type Cluster } from "../helpers/cluster.js";
import { pxdEntry } from "../helpers/daemon.js";
import { run } from "../helpers/run.js";
import { tokenFor } from "../helpers/auth.js";

let c: Cluster;

test.before(async () => {
  c = await startCluster(2);
});

test.after(async () => {
  await c.dispose();
});

function raw(node: number, method: string, path: string, token?: string, body?: unknown): Promise<{ status: number; message: string }> {
  const d = c.nodes[node]!;
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { "Content-Type": "application/json" };
    if (token !== undefined) headers["Authorization"] = `Bearer ${token}`;
    const req = request({ host: d.host, port: d.apiPort, method, path, headers, agent: false, ca: readFileSync(d.caFile) }, (res) => {
      let text = "";
      res.on("data", (b: Buffer) => (text += b.toString()));
      res.on("end", () => {
        let message = "";
        try {
          message = (JSON.parse(text) as { error?: { message?: string } }).error?.message ?? "";
        } catch {
          // a text body (metrics, servers)
        }
        resolve({ status: res.statusCode ?? 0, message });
      });
    });
    req.on("error", reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

const client = (node: number, token: string): ApiClient => new ApiClient(`${c.nodes[node]!.host}:${c.nodes[node]!.apiPort}`, { token, ca: readFileSync(c.nodes[node]!.caFile, "utf8") });

async function refusedWith(p: Promise<unknown>, status: number): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (e instanceof ApiError && e.status === status) return e.message;
    throw e;
  }
  throw new Error(`expected a ${status}`);
}

/** Every route of the API (the join, the cluster id and a volume's servers are public). */
const routes: [string, string, unknown?][] = [
  ["GET", "/v1/status"],
  ["GET", "/v1/volumes"],
  ["POST", "/v1/volumes", { name: "x", sizeBytes: 4096 }],
  ["GET", "/v1/volumes/x"],
  ["DELETE", "/v1/volumes/x"],
  ["PATCH", "/v1/volumes/x", { repl: 1 }],
  ["GET", "/v1/volumes/x/connections"],
  ["POST", "/v1/volumes/x/disconnect"],
  ["POST", "/v1/volumes/x/attachments", { host: "h", via: "fuse", readOnly: false }],
  ["DELETE", "/v1/volumes/x/attachments/h"],
  ["GET", "/v1/attachments"],
  ["GET", "/v1/nodes"],
  ["DELETE", "/v1/nodes/node2"],
  ["POST", "/v1/nodes/node2/drain", {}],
  ["GET", "/v1/settings"],
  ["PUT", "/v1/settings/defaultRepl", { value: 1 }],
  ["GET", "/v1/scrub"],
  ["POST", "/v1/scrub", {}],
  ["POST", "/v1/auth/tokens", { role: "admin" }],
  ["POST", "/v1/auth/revocations", { id: "0123456789abcdef" }],
  ["GET", "/metrics"],
];

test("every route but the public ones answers 401 without a token, with a token of another cluster and with an expired one, each with what to do", async () => {
  const foreign = signToken(tokenKey(Buffer.from("another-cluster-secret-0123456789")), { id: newTokenId(), name: "admin", role: "admin", iat: Date.now(), exp: Date.now() + 60_000 });
  const expired = tokenFor("admin", "old", 1);
  await new Promise((r) => setTimeout(r, 5)); // it expired 1 ms after it was made
  for (const [method, path, body] of routes) {
    const none = await raw(0, method, path, undefined, body);
    assert.is(none.status, 401, `${method} ${path}`);
    assert.match(none.message, /needs an API token: pass --token, or set PXD_TOKEN or PXD_TOKEN_FILE/);
    const other = await raw(1, method, path, foreign, body);
    assert.is(other.status, 401, `${method} ${path} with another cluster's token`);
    assert.match(other.message, /signature does not match this cluster's key.*get a new token from an admin/);
    const old = await raw(0, method, path, expired, body);
    assert.is(old.status, 401, `${method} ${path} expired`);
    assert.match(old.message, /expired at/);
  }
  const garbage = await raw(0, "GET", "/v1/status", "x".repeat(5000));
  assert.equal([garbage.status, /longer than 1024 characters/.test(garbage.message)], [401, true]);
  assert.is((await raw(0, "GET", "/v1/cluster/id")).status, 200, "the cluster id is public");
  assert.is((await raw(0, "POST", "/v1/cluster/join", undefined, { id: 9, name: "n", address: "127.0.0.1", nbdPort: 1, apiPort: 1, peerPort: 1, capacityBytes: 1, labels: {}, proof: "00" })).status, 403, "the join keeps its own proof");
});

test("read-only reads everything and changes nothing; a user has its own volumes only, also through a follower; admin does everything", async () => {
  const admin = client(0, tokenFor("admin", "root"));
  await admin.createVolume({ name: "adminvol", sizeBytes: 1 << 20 });
  const reader = client(1, tokenFor("read-only", "auditor"));
  await reader.status();
  assert.ok((await reader.listVolumes()).some((v) => v.name === "adminvol"));
  await reader.inspectVolume("adminvol");
  await reader.metrics();
  const why = await refusedWith(reader.createVolume({ name: "nope", sizeBytes: 1 << 20 }), 403);
  assert.match(why, /the token of "auditor" has the role read-only, which may not POST \/v1\/volumes; that needs a token with the role admin or user/);
  await refusedWith(reader.deleteVolume("adminvol"), 403);

  // alice creates through each node: one of them forwards to the catalog's leader, which must see alice, not the node.
  const alice = [client(0, tokenFor("user", "alice")), client(1, tokenFor("user", "alice"))];
  await alice[0]!.createVolume({ name: "a0", sizeBytes: 1 << 20 });
  await alice[1]!.createVolume({ name: "a1", sizeBytes: 1 << 20 });
  assert.equal((await admin.inspectVolume("a0")).owner, "alice");
  assert.equal((await admin.inspectVolume("a1")).owner, "alice");
  await waitUntil("node 2 lists both", async () => (await alice[1]!.listVolumes()).length === 2);
  assert.equal((await alice[1]!.listVolumes()).map((v) => v.name).sort(), ["a0", "a1"], "a user lists only its own volumes");

  const bob = client(1, tokenFor("user", "bob"));
  assert.match(await refusedWith(bob.inspectVolume("a0"), 403), /volume "a0" belongs to "alice", not to "bob"/);
  await refusedWith(bob.deleteVolume("a1"), 403);
  await refusedWith(bob.updateVolume("a1", { repl: 1 }), 403);
  await refusedWith(bob.attachVolume("a1", { host: "h", via: "fuse", readOnly: true }), 403);
  assert.match(await refusedWith(bob.inspectVolume("adminvol"), 403), /belongs to "root"/);
  assert.match(await refusedWith(bob.createVolume({ name: "b", sizeBytes: 1 << 20, owner: "alice" }), 403), /may create volumes only for itself/);
  await refusedWith(bob.setSetting("defaultRepl", 1), 403);
  await refusedWith(bob.createToken({ role: "admin" }), 403);
  assert.equal(await bob.listVolumes(), []);

  await alice[0]!.deleteVolume("a1");
  await admin.createVolume({ name: "forcarol", sizeBytes: 1 << 20, owner: "carol" });
  assert.is((await admin.inspectVolume("forcarol")).owner, "carol", "an admin creates for another");
  await admin.setSetting("defaultRepl", null);
});

test("pxd auth token create makes a token that works; pxd auth token revoke through one node makes the other refuse it", async () => {
  const host = (i: number): string[] => ["--host", `${c.nodes[i]!.host}:${c.nodes[i]!.apiPort}`];
  const made = await run(process.execPath, [pxdEntry, ...host(0), "auth", "token", "create", "--role", "user", "--name", "dave", "--ttl", "1h"]);
  assert.is(made.code, 0, made.stderr);
  const token = made.stdout.trim();
  assert.match(made.stderr, /^token ([0-9a-f]{16}) for "dave" \(user\), valid until .*; revoke it with: pxd auth token revoke \1\n$/);
  const dave = client(1, token);
  await dave.createVolume({ name: "d", sizeBytes: 1 << 20 });
  const revoked = await run(process.execPath, [pxdEntry, ...host(0), "auth", "token", "revoke", token]);
  assert.is(revoked.code, 0, revoked.stderr);
  assert.match(revoked.stdout, /is revoked on every node/);
  const why = await waitUntil("node 2 refuses the revoked token", async () => {
    const r = await raw(1, "GET", "/v1/volumes", token);
    return r.status === 401 ? r.message : undefined;
  });
  assert.match(why, /the token [0-9a-f]{16} of "dave" was revoked/);
  const usage = await run(process.execPath, [pxdEntry, ...host(0), "auth", "token", "revoke", "nonsense"]);
  assert.is(usage.code, 2);
  assert.match(usage.stderr, /neither a token id .* nor a pxd token/);
  // From a directory without pxd up's token file, so the CLI has none at all.
  const noToken = await run(process.execPath, [pxdEntry, ...host(0), "volume", "list"], { env: { ...process.env, PXD_TOKEN: "" }, cwd: c.dir });
  assert.is(noToken.code, 1);
  assert.match(noToken.stderr, /needs an API token/);
});

test("every change and every refused token is in the audit log, with who, from where, what and the result; pxd audit shows every node's, and a changed record fails the check", async () => {
  const admin = client(1, tokenFor("admin", "root"));
  await admin.createVolume({ name: "audited", sizeBytes: 1 << 20 });
  await raw(0, "DELETE", "/v1/volumes/audited"); // no token: 401
  await raw(0, "DELETE", "/v1/volumes/audited", tokenFor("read-only", "peeker")); // 403
  await admin.deleteVolume("audited");
  const host = ["--host", `${c.nodes[0]!.host}:${c.nodes[0]!.apiPort}`];
  const out = await run(process.execPath, [pxdEntry, ...host, "audit", "--since", "1h", "--json"]);
  assert.is(out.code, 0, out.stderr);
  const r = JSON.parse(out.stdout) as AuditResponse;
  assert.equal(r.nodes.map((n) => n.node).sort(), ["node1", "node2"]);
  const all = r.nodes.flatMap((n) => n.records);
  const create = all.filter((x) => x.method === "POST" && x.path === "/v1/volumes" && x.who === "root");
  assert.ok(create.some((x) => x.node === "node2" && x.status === 201 && x.role === "admin" && /^127\.0\.0\.\d+:\d+$/.test(x.from)), JSON.stringify(create));
  const anonymous = all.find((x) => x.node === "node1" && x.method === "DELETE" && x.path === "/v1/volumes/audited" && x.status === 401);
  assert.ok(anonymous !== undefined && anonymous.who === "" && /needs an API token/.test(anonymous.error ?? ""), JSON.stringify(anonymous));
  const refused = all.find((x) => x.node === "node1" && x.status === 403 && x.who === "peeker");
  assert.ok(refused !== undefined && /role read-only/.test(refused.error ?? ""));
  assert.ok(all.some((x) => x.method === "DELETE" && x.path === "/v1/volumes/audited" && x.status === 204 && x.who === "root"));
  assert.not.ok(all.some((x) => x.method === "GET" && x.status === 200), "reads that succeed are not audited");
  assert.ok(r.nodes.every((n) => n.chainBroken === undefined));
  const table = await run(process.execPath, [pxdEntry, ...host, "audit", "--local"]);
  assert.match(table.stdout, /^AT +NODE +WHO +ROLE +FROM +REQUEST +STATUS +ERROR$/m);
  assert.match(table.stdout, /node1 +- +- +127\.0\.0\.\d+:\d+ +DELETE \/v1\/volumes\/audited +401 +.*needs an API token/);

  // Someone with the file but not the key rewrites who did it: the check says where.
  const file = join(c.nodes[0]!.dataDir, "audit.log");
  writeFileSync(file, readFileSync(file, "utf8").replace('"who":"peeker"', '"who":"nobody"'));
  const forged = await run(process.execPath, [pxdEntry, ...host, "audit", "--local"]);
  assert.is(forged.code, 1);
  assert.match(forged.stderr, /node1's audit log does not verify: record \d+: its MAC does not follow from the record before it \(the log was altered\)/);
  assert.is((await run(process.execPath, [pxdEntry, "--host", `${c.nodes[1]!.host}:9001`, "audit", "--local"])).code, 0, "node2's log is untouched");
  const user = await raw(0, "GET", "/v1/audit", tokenFor("user", "alice"));
  assert.is(user.status, 403, "only admins read the audit log");
});

test.run();
