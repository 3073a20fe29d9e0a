import { test } from "uvu";
import * as assert from "uvu/assert";
import { Agent, createServer, request, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { startApiServer, type ApiServer } from "../../src/api/server.js";
import { ApiClient, DaemonUnreachableError, parseApiAddress } from "../../src/api/client.js";
import { ApiError } from "../../src/api/types.js";
import { apiBodyBytesMax, apiBodyDepthMax } from "../../src/constants.js";
import { jsonNestsDeeper, parseJoinRequest } from "../../src/api/validate.js";
import { apiResponseBytesMax } from "../../src/api/limits.js";
import { FakeController } from "./api-fake-controller.js";

interface Raw {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

interface Ctx {
  controller: FakeController;
  server: ApiServer;
  client: ApiClient;
  logs: string[];
}

const ctx = {} as Ctx;

test.before.each(async () => {
  ctx.controller = new FakeController();
  ctx.logs = [];
  ctx.server = await startApiServer({ host: "127.0.0.1", port: 0, controller: ctx.controller, log: (l) => ctx.logs.push(l) });
  ctx.client = new ApiClient(ctx.server.address, { timeoutMs: 5000 });
});

test.after.each(async () => {
  await ctx.server.close();
});

function raw(method: string, path: string, body?: string | Buffer, headers: Record<string, string | number> = {}): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port: ctx.server.port, method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

function errorOf(r: Raw): { code: string; message: string } {
  assert.match(String(r.headers["content-type"]), /^application\/json/);
  const parsed = JSON.parse(r.body) as { error: { code: string; message: string } };
  assert.type(parsed.error.code, "string");
  assert.type(parsed.error.message, "string");
  return parsed.error;
}

async function rejects<T>(p: Promise<unknown>, kind: new (...a: never[]) => T): Promise<T> {
  try {
    await p;
  } catch (err) {
    assert.instance(err, kind);
    return err as T;
  }
  throw new Error("expected a rejection");
}

test("the client drives every route: create, list, inspect, delete, status, metrics", async () => {
  const created = await ctx.client.createVolume({ name: "demo", sizeBytes: 1024 ** 3, repl: 1 });
  assert.is(created.name, "demo");
  assert.is(created.sizeBytes, 1024 ** 3);
  await ctx.client.createVolume({ name: "db.v2_x-1", sizeBytes: 4096 });
  assert.equal((await ctx.client.listVolumes()).map((v) => v.name), ["demo", "db.v2_x-1"]);
  assert.is((await ctx.client.inspectVolume("db.v2_x-1")).repl, 1);
  const status = await ctx.client.status();
  assert.is(status.nodeId, "n1");
  assert.is(status.volumeCount, 2);
  assert.match(await ctx.client.metrics(), /^pxd_volumes 2$/m);
  await ctx.client.deleteVolume("demo");
  assert.equal((await ctx.client.listVolumes()).map((v) => v.name), ["db.v2_x-1"]);
  assert.equal(ctx.controller.calls.slice(0, 2), ["createVolume demo 1073741824 1", "createVolume db.v2_x-1 4096 -"]);
});

test("raw routes answer with the documented status codes and content types", async () => {
  const created = await raw("POST", "/v1/volumes", JSON.stringify({ name: "a", sizeBytes: 512 }));
  assert.is(created.status, 201);
  assert.match(String(created.headers["content-type"]), /^application\/json/);
  assert.is((JSON.parse(created.body) as { name: string }).name, "a");
  const list = await raw("GET", "/v1/volumes?verbose=1");
  assert.is(list.status, 200);
  assert.is((JSON.parse(list.body) as { volumes: unknown[] }).volumes.length, 1);
  const patched = await raw("PATCH", "/v1/volumes/a", JSON.stringify({ repl: 3 }));
  assert.is(patched.status, 200);
  assert.is((JSON.parse(patched.body) as { repl: number }).repl, 3);
  const badPatch = await raw("PATCH", "/v1/volumes/a", JSON.stringify({ repl: 3, size: 1 }));
  assert.is(badPatch.status, 400);
  assert.match((JSON.parse(badPatch.body) as { error: { message: string } }).error.message, /unknown field "size"; the fields are repl, sizeBytes, maxIops, maxBandwidthBytesPerSec, burstSec/);
  assert.match((await raw("PATCH", "/v1/volumes/a", JSON.stringify({}))).body, /names nothing to change; give at least one of the fields repl, sizeBytes, maxIops, maxBandwidthBytesPerSec, burstSec/);
  assert.match((await raw("PATCH", "/v1/volumes/a", JSON.stringify({ sizeBytes: 1000 }))).body, /sizeBytes.* must be a multiple of 512 bytes \(the sector size\), not 1000/);
  assert.match((await raw("PATCH", "/v1/volumes/a", JSON.stringify({ repl: 9 }))).body, /replica count from 1 to 5 \(the most a volume has\), not 9/);
  const del = await raw("DELETE", "/v1/volumes/a");
  assert.is(del.status, 204);
  assert.is(del.body, "");
  const metrics = await raw("GET", "/metrics");
  assert.is(metrics.status, 200);
  assert.is(metrics.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
  assert.match(metrics.body, /# TYPE pxd_volumes gauge/);
});

test("delete takes ?force (true, 1 or empty; false or 0); anything else is a 400; connections and disconnect ask this node only", async () => {
  for (const name of ["a", "b", "c", "d", "e"]) await ctx.client.createVolume({ name, sizeBytes: 4096 });
  assert.is((await raw("DELETE", "/v1/volumes/a?force=true")).status, 204);
  assert.is((await raw("DELETE", "/v1/volumes/b?force")).status, 204);
  assert.is((await raw("DELETE", "/v1/volumes/c?force=0&verbose=1")).status, 204);
  await ctx.client.deleteVolume("d", { force: true });
  const bad = await raw("DELETE", "/v1/volumes/e?force=maybe");
  assert.equal([bad.status, errorOf(bad).message], [400, 'query parameter "force" must be true or false (once), not "maybe"']);
  assert.is((await raw("DELETE", "/v1/volumes/e?force=1&force=0")).status, 400);
  assert.equal(await ctx.client.volumeConnections("e"), { nodeId: 7, node: "n1", connections: 0 });
  assert.equal(await ctx.client.disconnectVolume("e"), { nodeId: 7, node: "n1", connections: 0 });
  assert.is((await raw("GET", "/v1/volumes/-x/connections")).status, 400);
  assert.is((await raw("GET", "/v1/volumes/e/disconnect")).status, 405);
  assert.equal(ctx.controller.calls.slice(5), ["deleteVolume a force", "deleteVolume b force", "deleteVolume c", "deleteVolume d force", "volumeConnections e", "disconnectVolume e"]);
});

test("the debug hook exists only when the daemon serves it; its body is one of command and hex", async () => {
  assert.is((await raw("POST", "/v1/debug/catalog-propose", JSON.stringify({ hex: "01c1" }))).status, 404);
  const seen: unknown[] = [];
  const debug = await startApiServer({
    host: "127.0.0.1",
    port: 0,
    controller: ctx.controller,
    debug: { catalogPropose: (r) => (seen.push(r), Promise.resolve({ index: 5, ok: false, code: "invalid", error: "no" })) },
    log: () => {},
  });
  try {
    const client = new ApiClient(debug.address);
    assert.equal(await client.debugCatalogPropose({ command: { kind: "drop" } }), { index: 5, ok: false, code: "invalid", error: "no" });
    assert.equal(await client.debugCatalogPropose({ hex: "01C1" }), { index: 5, ok: false, code: "invalid", error: "no" });
    for (const body of [{}, { command: 1, hex: "01" }, { hex: "" }, { hex: "0" }, { hex: "zz" }, { hex: 1 }, { command: 1, extra: 2 }]) {
      const e = await rejects(client.debugCatalogPropose(body as never), ApiError);
      assert.is(e.status, 400, JSON.stringify(body));
    }
    assert.equal(seen, [{ command: { kind: "drop" } }, { hex: "01C1" }]);
  } finally {
    await debug.close();
  }
});

test("settings and node routes: list and set settings, drain and remove a node, bodies and names checked first", async () => {
  assert.equal((await ctx.client.listSettings()).map((s) => [s.key, s.value]), [["overcommitPercent", 100], ["clusterName", "pxd"]]);
  const set = await ctx.client.setSetting("overcommitPercent", 150);
  assert.equal([set.value, set.set], [150, true]);
  assert.equal((await ctx.client.setSetting("overcommitPercent", null)).value, 100, "null is the default");
  const unknown = await rejects(ctx.client.setSetting("bogus", 1), ApiError);
  assert.equal([unknown.status, unknown.code], [400, "invalid"]);
  assert.match(unknown.message, /unknown setting "bogus"; the settings are overcommitPercent, clusterName/);
  for (const [body, message] of [
    ["{}", /field "value" must be a number, a string .* or null/],
    ['{"value":[1]}', /field "value" must be .*, not an array/],
    ['{"value":1,"x":2}', /unknown field "x"; the only field is value/],
  ] as const) {
    const r = await raw("PUT", "/v1/settings/clusterName", body, { "Content-Type": "application/json" });
    assert.is(r.status, 400, body);
    assert.match(errorOf(r).message, message);
  }
  const badKey = await raw("PUT", "/v1/settings/%20x", '{"value":1}');
  assert.is(badKey.status, 400);
  assert.match(errorOf(badKey).message, /setting " x" is not a setting name/);
  assert.is((await ctx.client.drainNode("n1")).draining, true);
  assert.is((await ctx.client.drainNode("7", { draining: false })).draining, false);
  const badDrain = await raw("POST", "/v1/nodes/n1/drain", '{"draining":"yes"}');
  assert.is(badDrain.status, 400);
  assert.match(errorOf(badDrain).message, /field "draining" must be true or false/);
  const up = await rejects(ctx.client.removeNode("n1", { force: true }), ApiError);
  assert.is(up.status, 409);
  assert.equal(ctx.controller.calls.slice(-3), ["drainNode n1 -", "drainNode 7 false", "removeNode n1 force"]);
  assert.is((await raw("GET", "/v1/nodes/n1")).status, 405, "a node is listed, not fetched, and removed with DELETE");
});

test("unknown paths are 404 and wrong methods 405, both with the error body", async () => {
  const missing = await raw("GET", "/v2/status");
  assert.is(missing.status, 404);
  assert.is(errorOf(missing).code, "not_found");
  assert.match(errorOf(missing).message, /\/v1\/volumes/);
  assert.is((await raw("GET", "/v1/volumes/a/b")).status, 404);
  const wrong = await raw("PUT", "/v1/volumes");
  assert.is(wrong.status, 405);
  assert.is(errorOf(wrong).code, "method_not_allowed");
  assert.match(errorOf(wrong).message, /GET, POST/);
  assert.is((await raw("POST", "/v1/status", "{}")).status, 405);
  assert.is((await raw("DELETE", "/metrics")).status, 405);
  assert.is(ctx.controller.calls.length, 0);
});

test("a Content-Length over the limit is refused with 413 before the body is sent", async () => {
  const answer = await new Promise<Raw>((resolve, reject) => {
    const req = request({
      host: "127.0.0.1",
      port: ctx.server.port,
      method: "POST",
      path: "/v1/volumes",
      headers: { "Content-Type": "application/json", "Content-Length": apiBodyBytesMax + 1 },
      agent: false,
    });
    req.on("response", (res) => {
      let body = "";
      res.on("data", (c: Buffer) => (body += c.toString()));
      res.on("end", () => {
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body });
        req.destroy();
      });
    });
    req.on("error", reject);
    req.flushHeaders(); // headers only: the server must answer without waiting for the body
  });
  assert.is(answer.status, 413);
  assert.is(answer.headers["connection"], "close");
  assert.is(errorOf(answer).code, "too_large");
  assert.match(errorOf(answer).message, new RegExp(`at most ${apiBodyBytesMax} bytes`));
  assert.is(ctx.controller.calls.length, 0);
});

test("a chunked body without Content-Length is cut off at the limit with 413", async () => {
  const answer = await new Promise<Raw>((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port: ctx.server.port, method: "POST", path: "/v1/volumes", agent: false });
    const chunk = Buffer.alloc(64 * 1024, 0x20);
    let sent = 0;
    let answered = false;
    req.on("response", (res) => {
      answered = true;
      let body = "";
      res.on("data", (c: Buffer) => (body += c.toString()));
      res.on("end", () => {
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body });
        req.destroy();
      });
    });
    req.on("error", (err) => (answered ? undefined : reject(err)));
    const pump = (): void => {
      // Keep sending until the server answers; it must not wait for the end of an unbounded body
      // (what loopback's socket buffers take before the answer arrives is far below 16 MiB).
      while (!answered && sent <= 16 * 1024 * 1024) {
        sent += chunk.length;
        if (!req.write(chunk)) return void req.once("drain", pump);
      }
      if (!answered) reject(new Error(`server read ${sent} bytes without answering`));
    };
    pump();
  });
  assert.is(answer.headers["transfer-encoding"], undefined); // the answer itself has a length
  assert.is(answer.status, 413);
  assert.is(errorOf(answer).code, "too_large");
  assert.is(ctx.controller.calls.length, 0);
});

test("a body just under the limit is read (and then judged on its JSON)", async () => {
  const padded = JSON.stringify({ name: "big", sizeBytes: 4096 }).padEnd(apiBodyBytesMax, " ");
  const r = await raw("POST", "/v1/volumes", padded);
  assert.is(r.status, 201);
});

test("nesting deeper than apiBodyDepthMax is a 400 found before JSON.parse, brackets in strings aside", async () => {
  const nested = (depth: number): string => "[".repeat(depth) + "]".repeat(depth);
  for (const body of [nested(apiBodyDepthMax + 1), `{"name":${nested(apiBodyBytesMax / 2 - 8)}}`, `{"a":{"b":${nested(apiBodyDepthMax)}}}`]) {
    const r = await raw("POST", "/v1/volumes", body, { "Content-Type": "application/json" });
    assert.is(r.status, 400);
    assert.match(errorOf(r).message, `nests arrays and objects more than ${apiBodyDepthMax} deep`);
  }
  const inStrings = JSON.stringify({ name: `v${"[".repeat(40)}\\"{{{`, sizeBytes: 4096 });
  assert.not.ok(jsonNestsDeeper(Buffer.from(inStrings), 2), "brackets inside strings and escaped quotes do not count");
  assert.match(errorOf(await raw("POST", "/v1/volumes", inStrings)).message, /volume name/, "so the body reaches validation");
  assert.ok(jsonNestsDeeper(Buffer.from(nested(3)), 2));
  assert.not.ok(jsonNestsDeeper(Buffer.from(nested(2)), 2));
  assert.is(ctx.controller.calls.length, 0);
});

test("the largest legitimate body, a join request with every field at its longest, fits apiBodyBytesMax", () => {
  const worst = (n: number): string => "\u0001".repeat(n); // JSON.stringify writes a control character as 6 bytes
  const labels = Object.fromEntries(Array.from({ length: 16 }, (_, i) => [worst(61) + String(i).padStart(2, "0"), worst(63)]));
  const join = { id: 2 ** 31, name: worst(63), address: worst(253), nbdPort: 65535, apiPort: 65535, peerPort: 65535, capacityBytes: 2 ** 52, labels, proof: worst(128) };
  parseJoinRequest(join);
  const bytes = Buffer.byteLength(JSON.stringify(join));
  assert.ok(bytes < apiBodyBytesMax / 4, `${bytes} bytes`);
  assert.not.ok(jsonNestsDeeper(Buffer.from(JSON.stringify(join)), apiBodyDepthMax));
});

test("malformed and wrongly-typed bodies are 400 with a message naming the field", async () => {
  const cases: [string, RegExp][] = [
    ["{not json", /not valid JSON/],
    ["", /no body/],
    ["[1,2]", /must be a JSON object/],
    ['"demo"', /must be a JSON object/],
    ['{"sizeBytes":4096}', /field "name" must be a string, not missing/],
    ['{"name":7,"sizeBytes":4096}', /field "name" must be a string, not 7/],
    ['{"name":"a","sizeBytes":"1G"}', /field "sizeBytes" must be a positive integer.*the string "1G"/],
    ['{"name":"a","sizeBytes":-1}', /field "sizeBytes"/],
    ['{"name":"a","sizeBytes":1.5}', /field "sizeBytes"/],
    ['{"name":"a","sizeBytes":1e300}', /field "sizeBytes"/],
    ['{"name":"a","sizeBytes":0}', /field "sizeBytes" must be a positive integer number of bytes, not 0/],
    ['{"name":"a","sizeBytes":1}', /^field "sizeBytes" must be a multiple of 512 bytes \(the sector size\), not 1; 512 would do$/],
    ['{"name":"a","sizeBytes":511}', /must be a multiple of 512 bytes/],
    ['{"name":"a","sizeBytes":513}', /not 513; 512 or 1024 would do/],
    ['{"name":"a","sizeBytes":107374182}', /not 107374182; 107374080 or 107374592 would do/],
    ['{"name":"a","sizeBytes":70368744178176}', /larger than the volume limit 70368744177664/],
    ['{"name":"a","sizeBytes":4096,"repl":0}', /field "repl" must be a replica count from 1 to 5 \(the most a volume has\), not 0/],
    ['{"name":"a","sizeBytes":4096,"repl":100}', /field "repl" must be a replica count from 1 to 5 \(the most a volume has\), not 100/],
    ['{"name":"a","sizeBytes":4096,"repl":1.5}', /field "repl"/],
    ['{"name":"a","sizeBytes":4096,"nodes":"n1"}', /field "nodes" must be a list/],
    ['{"name":"a","sizeBytes":4096,"zones":"yes"}', /field "zones" must be true or false/],
    ['{"name":"a","sizeBytes":4096,"repl":"3"}', /field "repl"/],
    ['{"name":"a","size":4096}', /unknown field "size"/],
  ];
  for (const [body, message] of cases) {
    const r = await raw("POST", "/v1/volumes", body, { "Content-Type": "application/json" });
    assert.is(r.status, 400, body);
    assert.match(errorOf(r).message, message, body);
  }
  assert.is(ctx.controller.calls.length, 0);
});

test("bad volume names are 400 and the message gives the rule", async () => {
  const long = "a".repeat(64);
  for (const name of ["-lead", ".hidden", "has space", "ümlaut", long, "a/b"]) {
    const r = await raw("POST", "/v1/volumes", JSON.stringify({ name, sizeBytes: 4096 }));
    assert.is(r.status, 400, name);
    assert.is(errorOf(r).code, "invalid_name");
    assert.match(errorOf(r).message, /\^\[A-Za-z0-9\]\[A-Za-z0-9\._-\]\{0,62\}\$/);
  }
  assert.match(errorOf(await raw("POST", "/v1/volumes", JSON.stringify({ name: long, sizeBytes: 512 }))).message, /longer than 63/);
  const viaPath = await raw("GET", "/v1/volumes/%2Dlead");
  assert.is(viaPath.status, 400);
  assert.is((await raw("DELETE", "/v1/volumes/" + encodeURIComponent("a b"))).status, 400);
  assert.is((await raw("GET", "/v1/volumes/%E0%A4%A")).status, 400);
  assert.is(ctx.controller.calls.length, 0);
  const ok = "a".repeat(63);
  assert.is((await raw("POST", "/v1/volumes", JSON.stringify({ name: ok, sizeBytes: 4096 }))).status, 201);
});

test("ApiError from the controller keeps its status, code and message; the client rethrows it", async () => {
  await ctx.client.createVolume({ name: "db", sizeBytes: 4096 });
  const exists = await rejects(ctx.client.createVolume({ name: "db", sizeBytes: 4096 }), ApiError);
  assert.is(exists.status, 409);
  assert.is(exists.code, "exists");
  assert.is(exists.message, 'volume "db" already exists; pick another name or delete it with "pxd volume delete db"');
  const missing = await rejects(ctx.client.inspectVolume("nope"), ApiError);
  assert.is(missing.status, 404);
  assert.is(missing.code, "not_found");
  ctx.controller.failNext = new ApiError(503, "no_quorum", "the meta group has no leader; wait or add nodes");
  const raw503 = await raw("GET", "/v1/volumes");
  assert.is(raw503.status, 503);
  assert.equal(errorOf(raw503), { code: "no_quorum", message: "the meta group has no leader; wait or add nodes" });
  assert.is(ctx.logs.length, 0); // expected errors are the caller's business, not the log's
});

test("any other failure is a 500 carrying its message, and is logged", async () => {
  ctx.controller.failNext = new Error("disk on fire");
  const r = await raw("GET", "/v1/status");
  assert.is(r.status, 500);
  assert.equal(errorOf(r), { code: "internal", message: "disk on fire" });
  assert.is(ctx.logs.length, 1);
  assert.match(ctx.logs[0] ?? "", /GET \/v1\/status failed: .*disk on fire/);
  ctx.controller.failNext = new Error("metrics broke");
  const viaClient = await rejects(ctx.client.metrics(), ApiError);
  assert.is(viaClient.status, 500);
  assert.is(viaClient.message, "metrics broke");
  // the server keeps serving
  assert.is((await ctx.client.status()).nodeId, "n1");
});

test("close() stops accepting and does not wait for an idle keep-alive socket", async () => {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  try {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const req = request({ host: "127.0.0.1", port: ctx.server.port, path: "/v1/status", agent }, (res) => {
        res.resume();
        res.on("end", () => resolve(req.socket as Socket));
      });
      req.on("error", reject);
      req.end();
    });
    await new Promise((r) => setImmediate(r));
    assert.is(socket.destroyed, false, "the agent kept the connection open");
    // The agent unrefs its idle socket, so a ref'd timer keeps the test alive while the server closes it.
    let guard: NodeJS.Timeout | undefined;
    const socketClosed = new Promise<void>((resolve, reject) => {
      guard = setTimeout(() => reject(new Error("the server left the keep-alive socket open")), 3000);
      socket.once("close", () => resolve());
    }).finally(() => clearTimeout(guard));
    const started = Date.now();
    await ctx.server.close();
    await socketClosed;
    assert.ok(Date.now() - started < 1000, `close took ${Date.now() - started} ms`);
    const refused = await rejects(ctx.client.status(), DaemonUnreachableError);
    assert.is(refused.code, "ECONNREFUSED");
    await ctx.server.close(); // a second close is harmless
  } finally {
    agent.destroy();
  }
});

test("close() lets a request in flight finish, answered with Connection: close", async () => {
  let release: () => void = () => {};
  const gate = new Promise<void>((r) => (release = r));
  let entered: () => void = () => {};
  const handlerEntered = new Promise<void>((r) => (entered = r));
  const slow = ctx.controller.listVolumes.bind(ctx.controller);
  ctx.controller.listVolumes = async () => {
    entered();
    await gate;
    return slow();
  };
  const inFlight = raw("GET", "/v1/volumes", undefined, { Connection: "keep-alive" });
  await handlerEntered;
  let closed = false;
  const closing = ctx.server.close().then(() => (closed = true));
  await new Promise((r) => setTimeout(r, 50));
  assert.not.ok(closed, "close() waits for the request in flight");
  release();
  const answer = await inFlight;
  assert.is(answer.status, 200);
  assert.is(answer.headers["connection"], "close");
  await closing;
});

test("a refused connection says how to start the daemon", async () => {
  const port = await freePort();
  const err = await rejects(new ApiClient(`127.0.0.1:${port}`).status(), DaemonUnreachableError);
  assert.is(
    err.message,
    `cannot reach the pxd daemon at 127.0.0.1:${port} (ECONNREFUSED); start it with "pxd daemon" or "npm start", or point --host / PXD_HOST at a running one`,
  );
});

test("the client times out on a daemon that never answers, and refuses oversized or foreign answers", async () => {
  const sockets = new Set<Socket>();
  let mode: "silent" | "html" | "huge" = "silent";
  const other: Server = createServer((req, res) => {
    if (mode === "silent") return;
    if (mode === "html") {
      res.writeHead(404, { "Content-Type": "text/html" });
      return void res.end("<h1>nope</h1>");
    }
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end(Buffer.alloc(apiResponseBytesMax + 1, 0x20));
  });
  other.on("connection", (s) => sockets.add(s));
  await new Promise<void>((r) => other.listen(0, "127.0.0.1", r));
  try {
    const port = (other.address() as AddressInfo).port;
    const client = new ApiClient(`127.0.0.1:${port}`, { timeoutMs: 200 });
    const timedOut = await rejects(client.status(), DaemonUnreachableError);
    assert.is(timedOut.code, "ETIMEDOUT");
    assert.match(timedOut.message, /did not answer GET \/v1\/status within 0.2s/);
    mode = "html";
    const foreign = await rejects(client.listVolumes(), ApiError);
    assert.is(foreign.status, 404);
    assert.match(foreign.message, /answered 404 Not Found; is that a pxd daemon\?/);
    mode = "huge";
    const big = await rejects(new ApiClient(`127.0.0.1:${port}`).listVolumes(), Error);
    assert.match(big.message, /larger than 16777216 bytes/);
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise((r) => other.close(r));
  }
});

test("daemon addresses parse as HOST[:PORT] with IPv6 in brackets", () => {
  assert.equal(parseApiAddress("127.0.0.1"), { host: "127.0.0.1", port: 9001, display: "127.0.0.1:9001", https: false, plain: false });
  assert.equal(parseApiAddress("node1:9101"), { host: "node1", port: 9101, display: "node1:9101", https: false, plain: false });
  assert.equal(parseApiAddress("[::1]:9101"), { host: "::1", port: 9101, display: "[::1]:9101", https: false, plain: false });
  assert.equal(parseApiAddress("::1"), { host: "::1", port: 9001, display: "[::1]:9001", https: false, plain: false });
  assert.equal(parseApiAddress("http://10.0.0.1:80/"), { host: "10.0.0.1", port: 80, display: "http://10.0.0.1:80", https: false, plain: true });
  assert.equal(parseApiAddress("https://10.0.0.1"), { host: "10.0.0.1", port: 9001, display: "https://10.0.0.1:9001", https: true, plain: false });
  assert.throws(() => parseApiAddress("host:0"), /valid port/);
  assert.throws(() => parseApiAddress("host:http"), /valid port/);
  assert.throws(() => parseApiAddress(":9001"), /not a daemon address/);
  assert.throws(() => parseApiAddress("a b:1"), /not a daemon address/);
});

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

test("GET / is the web console: one HTML page whose script parses and fetches only this API", async () => {
  const r = await raw("GET", "/");
  assert.is(r.status, 200);
  assert.is(r.headers["content-type"], "text/html; charset=utf-8");
  const script = /<script>([\s\S]*)<\/script>/.exec(r.body)?.[1] ?? "";
  assert.ok(script.length > 1000);
  new Function(script); // a syntax error throws here
  assert.not.match(r.body, /https?:\/\//, "nothing from elsewhere");
  for (const path of ["/v1/status", "/v1/nodes", "/v1/volumes", "/v1/events?since="]) assert.ok(script.includes(`"${path}`), `it polls ${path}`);
});

test("GET /v1/events and /v1/volumes/NAME/stats: since is checked, an unknown volume is a 404 that says what to do", async () => {
  assert.equal((await ctx.client.events(0)).events.map((e) => e.kind), ["volume-created"]);
  assert.equal((await ctx.client.events(1)).events, []);
  const bad = await raw("GET", "/v1/events?since=-1");
  assert.is(bad.status, 400);
  assert.match(errorOf(bad).message, /"since" must be one event number/);
  assert.is((await raw("GET", "/v1/events?since=1&since=2")).status, 400);
  const missing = await raw("GET", "/v1/volumes/nope/stats");
  assert.is(missing.status, 404);
  assert.match(errorOf(missing).message, /pxd volume list/);
  assert.is((await raw("GET", "/v1/volumes/x/stats?local=maybe")).status, 400);
});

test.run();
