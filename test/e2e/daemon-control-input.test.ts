// Hostile and mistaken control-API input against a real daemon process
// (issue 13, item 5): every invalid argument is a 400 with a sentence, the
// catalog's log never sees it, and what a client sent reaches the daemon's
// log only escaped: a forged line or a terminal escape stays one visible line.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { request } from "node:https";
import { startDaemon, type DaemonProcess } from "../helpers/daemon.js";
import { waitUntil } from "../helpers/cluster.js";
import { joinProof } from "../../src/daemon/cluster-join.js";
import type { JoinRequest } from "../../src/api/types.js";
import { testAdminToken } from "../helpers/auth.js";

let d: DaemonProcess;

test.before(async () => {
  d = await startDaemon();
});

test.after(async () => {
  await d.dispose();
});

function post(path: string, body: unknown, method = "POST"): Promise<{ status: number; error: { code: string; message: string } | undefined }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: d.host, port: d.apiPort, method, path, ca: readFileSync(d.caFile), headers: { "Content-Type": "application/json", Authorization: `Bearer ${testAdminToken}` } }, (res) => {
      let text = "";
      res.on("data", (c: Buffer) => (text += c.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, error: text ? (JSON.parse(text) as { error?: { code: string; message: string } }).error : undefined }));
    });
    req.on("error", reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

test("invalid volume requests are 400s with a sentence, and none reaches the catalog's log", async () => {
  const before = (await d.api.status()).catalog.commitIndex;
  const cases: [string, unknown, RegExp][] = [
    ["/v1/volumes", { name: "s1b", sizeBytes: 1 }, /field "sizeBytes" must be a multiple of 512 bytes \(the sector size\), not 1; 512 would do/],
    ["/v1/volumes", { name: "typo", sizeBytes: 107374182 }, /not 107374182; 107374080 or 107374592 would do/],
    ["/v1/volumes", { name: "r", sizeBytes: 4096, repl: 100 }, /field "repl" must be a replica count from 1 to 5 \(the most a volume has\), not 100/],
    ["/v1/volumes", { name: "r", sizeBytes: 4096, repl: 0 }, /field "repl" must be a replica count from 1 to 5/],
    ["/v1/volumes", { name: "r", sizeBytes: 4096, nodes: ["x".repeat(64)] }, /field "nodes" must be a list/],
    ["/v1/volumes", { name: "bad name", sizeBytes: 4096 }, /is not a valid volume name/],
  ];
  for (const [path, body, message] of cases) {
    const r = await post(path, body);
    assert.is(r.status, 400, JSON.stringify(body));
    assert.match(r.error?.message ?? "", message);
  }
  const patch = await post("/v1/volumes/none", { repl: 100 }, "PATCH");
  assert.equal([patch.status, patch.error?.message], [400, 'field "repl" must be a replica count from 1 to 5 (the most a volume has), not 100']);
  assert.is((await d.api.status()).catalog.commitIndex, before, "nothing was proposed");
  assert.equal((await d.api.status()).catalog.refusals, []);
});

test("a join whose fields carry a terminal escape and a newline is logged as one line with the escapes shown", async () => {
  const fields: Omit<JoinRequest, "proof"> = { id: 77, name: "\u001b[31m\nforged", address: "127.0.0.99", nbdPort: 1, apiPort: 1, peerPort: 1, capacityBytes: 1, labels: {} };
  const wrong = await post("/v1/cluster/join", { ...fields, proof: "00" });
  assert.is(wrong.status, 403);
  const secret = Buffer.from(readFileSync(join(d.dataDir, "cluster.secret"), "utf8").trim());
  const proven = await post("/v1/cluster/join", { ...fields, proof: joinProof(secret, fields).toString("hex") });
  assert.is(proven.status, 400, "a join the catalog would refuse is a 400, not a 500");
  assert.match(proven.error?.message ?? "", /^the join request is not one the catalog accepts: addNode: field "name" must be .*; fix the joining node's --name, --zone or --listen$/);
  // The log line reaches this process through the daemon's pipe, which may come after the HTTP answer.
  const refused = (): string[] => d.output.split("\n").filter((l) => l.includes("join refused"));
  await waitUntil("both refusals in the daemon's log", async () => refused().length >= 2, 5000).catch(() => undefined);
  const lines = refused();
  assert.is(lines.length, 2, d.output);
  assert.match(lines[0]!, / warn join refused for node 77 \("\\x1b\[31m\\x0aforged" at 127\.0\.0\.99\): wrong cluster secret$/);
  assert.match(lines[1]!, / warn join refused for node 77 \("\\x1b\[31m\\x0aforged" at 127\.0\.0\.99\): addNode: field "name"/);
  assert.not.match(d.output, /\u001b/, "no raw escape character anywhere in the log");
  assert.not.match(d.output, /^forged/m, "no forged line");
});

test.run();
