import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawn, type ChildProcess } from "node:child_process";
import { createServer } from "node:http";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { AddressInfo } from "node:net";
import { startApiServer, type ApiServer } from "../../src/api/server.js";
import { FakeController } from "./api-fake-controller.js";
import { makeClusterCa, nodeCertificate } from "../../src/os/cluster-ca.js";

// dist/test/unit/cli.test.js -> the repository's bin/pxd, the shim a user runs.
const pxdBin = fileURLToPath(new URL("../../../bin/pxd", import.meta.url));

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

interface Ctx {
  controller: FakeController;
  server: ApiServer;
  tmp: string;
  children: ChildProcess[];
}

const ctx = {} as Ctx;

test.before.each(async () => {
  ctx.controller = new FakeController();
  ctx.server = await startApiServer({ host: "127.0.0.1", port: 0, controller: ctx.controller, log: () => {} });
  ctx.tmp = mkdtempSync(join(tmpdir(), "pxd-cli-test-"));
  ctx.children = [];
});

test.after.each(async () => {
  for (const c of ctx.children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  await ctx.server.close();
  rmSync(ctx.tmp, { recursive: true, force: true });
});

/** Runs the real bin/pxd; async, because the API server answering it lives in this process. */
function pxd(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env };
  if (!("PXD_HOST" in env)) delete childEnv["PXD_HOST"];
  if (!("PXD_CA_FILE" in env)) delete childEnv["PXD_CA_FILE"];
  return new Promise((resolve, reject) => {
    const child = spawn(pxdBin, args, { env: childEnv, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

function host(): string[] {
  return ["--host", ctx.server.address];
}

function assertOneLineError(r: Run, code: number, message: string | RegExp): void {
  assert.is(r.code, code, `exit code; stderr: ${r.stderr}`);
  const lines = r.stderr.trimEnd().split("\n");
  assert.is(lines.length, 1, `one line on stderr, got: ${r.stderr}`);
  if (typeof message === "string") assert.is(lines[0], `error: ${message}`);
  else assert.match(lines[0] ?? "", message);
  assert.not.match(r.stderr, /^\s+at /m); // no stack trace
}

test("volume create, list, inspect and delete print what happened", async () => {
  const created = await pxd([...host(), "volume", "create", "demo", "--size", "1G"]);
  assert.is(created.code, 0, created.stderr);
  assert.is(created.stdout, 'volume "demo" created: 1.00 GiB, 1 replica, exported at nbd://127.0.0.1:10809/demo\n');
  assert.is(ctx.controller.volumes.get("demo")?.sizeBytes, 1024 ** 3);
  assert.is((await pxd([...host(), "volume", "create", "db", "--size", "512M", "--repl", "1"])).code, 0);
  assert.equal(ctx.controller.calls, ["createVolume demo 1073741824 -", "createVolume db 536870912 1"]);

  const list = await pxd([...host(), "volume", "list"]);
  assert.is(list.code, 0, list.stderr);
  const lines = list.stdout.trimEnd().split("\n");
  assert.match(lines[0] ?? "", /^NAME\s+SIZE\s+REPL\s+STATE\s+ALLOCATED\s+CONNECTIONS\s+NBD-URI$/);
  assert.match(lines[1] ?? "", /^demo\s+1\.00 GiB\s+1\s+online\s+0 B\s+0\s+nbd:\/\/127\.0\.0\.1:10809\/demo$/);
  assert.match(lines[2] ?? "", /^db\s+512 MiB\s+1\s+online/);
  assert.is(lines.length, 3);
  assert.is(lines[1]?.indexOf("1.00 GiB"), lines[0]?.indexOf("SIZE")); // columns line up

  const inspect = await pxd([...host(), "volume", "inspect", "db"]);
  assert.is(inspect.code, 0, inspect.stderr);
  assert.match(inspect.stdout, /^size\s+512 MiB \(536870912 bytes\)$/m);
  assert.match(inspect.stdout, /^replicas\s+1 \(n1 in-sync \(leader\)\)$/m);

  const del = await pxd([...host(), "volume", "delete", "demo"]);
  assert.is(del.code, 0, del.stderr);
  assert.is(del.stdout, 'volume "demo" deleted\n');
  assert.equal([...ctx.controller.volumes.keys()], ["db"]);
  const forced = await pxd([...host(), "volume", "rm", "db", "--force"]);
  assert.is(forced.stdout, 'volume "db" deleted (its NBD clients were disconnected)\n');
  assert.is(ctx.controller.calls.at(-1), "deleteVolume db force");
  const empty = await pxd([...host(), "volume", "ls"]);
  assert.is(empty.stdout, 'no volumes; create one with "pxd volume create NAME --size 1G"\n');
});

test("--json prints the API's own JSON shapes", async () => {
  await ctx.controller.createVolume({ name: "a", sizeBytes: 4096 });
  const list = await pxd([...host(), "volume", "list", "--json"]);
  assert.is(list.code, 0, list.stderr);
  assert.equal(JSON.parse(list.stdout), { volumes: [ctx.controller.volumes.get("a")] });
  const inspect = await pxd([...host(), "volume", "inspect", "a", "--json"]);
  assert.equal(JSON.parse(inspect.stdout), ctx.controller.volumes.get("a"));
  const status = await pxd([...host(), "status", "--json"]);
  assert.equal(JSON.parse(status.stdout), await ctx.controller.status());
  const text = await pxd([...host(), "status"]);
  assert.is(text.code, 0, text.stderr);
  assert.match(text.stdout, /^node\s+n1 \(pxd 0\.1\.0-test\)$/m);
  assert.match(text.stdout, /^uptime\s+1h 2m 5s$/m);
  assert.match(text.stdout, /^capacity\s+1\.00 GiB used of 10\.0 GiB, 9\.00 GiB free$/m);
  assert.match(text.stdout, /^health\s+online$/m);
  assert.not.match(text.stdout, /^refused/m);
});

test("pxd status prints why a node is degraded and the catalog's refused entries", async () => {
  ctx.controller.reasons = ["the store stopped taking writes (ENOSPC); free space", "node node3 is down: start it again"];
  ctx.controller.refusals = [
    { index: 7, kind: "createVolume", code: "invalid", error: 'createVolume: field "sizeBytes" must be a multiple of 512 bytes (the sector size), not 1; 512 would do' },
    { index: 9, kind: "unknown", code: "invalid", error: "catalog command is not valid msgpack" },
    { index: 11, kind: "unknown", code: "invalid", error: 'unknown catalog command kind "\u001b[2J\u202e"' },
  ];
  const text = await pxd([...host(), "status"]);
  assert.is(text.code, 0, text.stderr);
  const lines = text.stdout.split("\n");
  const at = lines.findIndex((l) => l.startsWith("health"));
  const indent = " ".repeat(lines[at]!.indexOf("degraded"));
  assert.equal(lines.slice(at, at + 3), [
    `health${indent.slice(6)}degraded`,
    `${indent}- the store stopped taking writes (ENOSPC); free space`,
    `${indent}- node node3 is down: start it again`,
  ]);
  assert.match(text.stdout, /^refused\s+entry 7 createVolume \(invalid\): createVolume: field "sizeBytes" must be a multiple of 512/m);
  assert.match(text.stdout, /^\s+entry 9 unknown \(invalid\): catalog command is not valid msgpack$/m);
  assert.match(text.stdout, /^\s+entry 11 unknown \(invalid\): unknown catalog command kind "\\x1b\[2J\\u\{202e\}"$/m, "what a log entry carries reaches the terminal escaped");
});

test("pxd settings list, set and reset; pxd node drain and remove", async () => {
  const list = await pxd([...host(), "settings", "list"]);
  assert.is(list.code, 0, list.stderr);
  assert.match(list.stdout, /^KEY\s+VALUE\s+DEFAULT\s+WHAT$/m);
  assert.match(list.stdout, /^overcommitPercent\s+100\s+\(default\)\s+bytes a node may/m);
  const set = await pxd([...host(), "settings", "set", "overcommitPercent", "150"]);
  assert.equal([set.code, set.stdout], [0, "overcommitPercent = 150\n"]);
  const text = await pxd([...host(), "settings", "set", "clusterName", "prod"]);
  assert.is(text.stdout, 'clusterName = "prod"\n', "a value that is not a number or a boolean is text");
  const reset = await pxd([...host(), "settings", "reset", "overcommitPercent"]);
  assert.is(reset.stdout, "overcommitPercent = 100 (the default)\n");
  assertOneLineError(await pxd([...host(), "settings", "set", "bogus", "1"]), 1, /unknown setting "bogus"/);
  assert.equal(ctx.controller.calls.filter((c) => c.startsWith("setSetting")), ["setSetting overcommitPercent 150", 'setSetting clusterName "prod"', "setSetting overcommitPercent null", "setSetting bogus 1"]);
  const drain = await pxd([...host(), "node", "drain", "n1"]);
  assert.equal([drain.code, drain.stdout], [0, 'node n1 is draining; "pxd volume list" shows its replicas moving to other nodes\n']);
  const undo = await pxd([...host(), "node", "drain", "7", "--undo"]);
  assert.is(undo.stdout, "node n1 is no longer draining\n");
  assertOneLineError(await pxd([...host(), "node", "remove", "n1"]), 1, /node n1 is up; stop its daemon first/);
  assert.equal(ctx.controller.calls.slice(-3), ["drainNode n1 true", "drainNode 7 false", "removeNode n1"]);
});

test("pxd volume update --size grows a volume; without an option it is a usage error", async () => {
  await ctx.controller.createVolume({ name: "grow", sizeBytes: 1024 ** 3 });
  const r = await pxd([...host(), "volume", "update", "grow", "--size", "20G"]);
  assert.is(r.code, 0, r.stderr);
  assert.match(r.stdout, /^volume "grow" updated: size 20\.0 GiB \(new NBD connections see it/);
  assert.ok(ctx.controller.calls.includes(`updateVolume grow undefined size ${20 * 1024 ** 3}`));
  assertOneLineError(await pxd([...host(), "volume", "update", "grow"]), 2, /nothing to change; give --size/);
  assertOneLineError(await pxd([...host(), "volume", "update", "grow", "--size", "1000"]), 2, /not 1000; 512 or 1024 would do/);
});

test("errors from the daemon are one line on stderr with exit code 1", async () => {
  await ctx.controller.createVolume({ name: "db", sizeBytes: 4096 });
  const exists = await pxd([...host(), "volume", "create", "db", "--size", "1G"]);
  assertOneLineError(exists, 1, 'volume "db" already exists; pick another name or delete it with "pxd volume delete db"');
  assert.is(exists.stdout, "");
  assertOneLineError(await pxd([...host(), "volume", "inspect", "nope"]), 1, /no volume named "nope"/);
  assertOneLineError(await pxd([...host(), "volume", "delete", "nope"]), 1, /no volume named "nope"/);
  assertOneLineError(await pxd([...host(), "volume", "create", "x", "--size", "1G", "--repl", "3"]), 1, /needs 3 replicas but only 1 node is up/);
  ctx.controller.failNext = new Error("disk on fire");
  assertOneLineError(await pxd([...host(), "status"]), 1, "disk on fire");
});

test("bad sizes, names, replica counts and commands are usage errors (exit 2) that never reach the daemon", async () => {
  for (const size of ["10X", "ten", "-1G", "0", ""]) {
    const r = await pxd([...host(), "volume", "create", "v", "--size", size]);
    assertOneLineError(r, 2, size === "0" ? /size above zero/ : /is not a size; use a number with an optional K, M, G or T suffix/);
  }
  assertOneLineError(await pxd([...host(), "volume", "create", "v"]), 2, /required option '-s, --size <size>' not specified/);
  assertOneLineError(await pxd([...host(), "volume", "create", "a b", "--size", "1G"]), 2, /"a b" is not a valid volume name.*\^\[A-Za-z0-9\]/);
  assertOneLineError(await pxd([...host(), "volume", "inspect", "x".repeat(64)]), 2, /longer than 63 characters/);
  assertOneLineError(await pxd([...host(), "volume", "create", "v", "--size", "1G", "--repl", "0"]), 2, /--repl/);
  assertOneLineError(await pxd([...host(), "volume", "create", "v", "--size", "1G", "--repl", "100"]), 2, /"100" is not a whole number from 1 to 5: a volume has at most 5 replicas/);
  assertOneLineError(await pxd([...host(), "volume", "ha-update", "v", "--repl", "6"]), 2, /from 1 to 5: a volume has at most 5 replicas/);
  assertOneLineError(
    await pxd([...host(), "volume", "create", "typo", "--size", "0.1G"]),
    2,
    /"0\.1G" is 107374182 bytes; a volume size must be a multiple of 512 bytes \(the sector size\), not 107374182; 107374080 or 107374592 would do, or a whole number of K, M or G/,
  );
  assertOneLineError(await pxd([...host(), "volume", "create", "v", "--size", "1000"]), 2, /not 1000; 512 or 1024 would do/);
  assertOneLineError(await pxd([...host(), "volume", "create", "v", "--size", "65T"]), 2, /larger than the volume limit of 64.0 TiB/);
  assertOneLineError(await pxd([...host(), "volume", "frobnicate"]), 2, /unknown command 'frobnicate'/);
  assertOneLineError(await pxd(["--host", "127.0.0.1:99999", "status"]), 2, /no valid port.*\(from --host\)/);
  assert.equal(ctx.controller.calls, []);
});

test("an unreachable daemon gets the message that says how to start one", async () => {
  const port = await freePort();
  const r = await pxd(["status"], { PXD_HOST: `127.0.0.1:${port}` });
  assertOneLineError(
    r,
    1,
    `cannot reach the pxd daemon at 127.0.0.1:${port} (ECONNREFUSED); start it with "pxd daemon" or "npm start", or point --host / PXD_HOST at a running one`,
  );
});

test("PXD_HOST picks the daemon, and --host wins over it", async () => {
  const viaEnv = await pxd(["status", "--json"], { PXD_HOST: ctx.server.address });
  assert.is(viaEnv.code, 0, viaEnv.stderr);
  assert.is((JSON.parse(viaEnv.stdout) as { nodeId: string }).nodeId, "n1");
  const port = await freePort();
  const flagWins = await pxd(["--host", ctx.server.address, "volume", "list"], { PXD_HOST: `127.0.0.1:${port}` });
  assert.is(flagWins.code, 0, flagWins.stderr);
  const envWrong = await pxd(["volume", "list"], { PXD_HOST: `127.0.0.1:${port}` });
  assert.is(envWrong.code, 1);
  assertOneLineError(await pxd(["status"], { PXD_HOST: "host:port" }), 2, /\(from PXD_HOST\)/);
  assert.equal(ctx.controller.calls, ["status", "listVolumes"]);
});

test("pxd up against a running node creates the volume once and prints how to use it", async () => {
  const dataDir = join(ctx.tmp, "d");
  // A node of pxd up's cluster serves HTTPS with a certificate from the CA its data dir holds.
  const nodeDir = join(dataDir, "node1");
  await makeClusterCa(nodeDir, "test");
  await ctx.server.close();
  ctx.server = await startApiServer({ host: "127.0.0.1", port: 0, controller: ctx.controller, log: () => {}, tls: await nodeCertificate(nodeDir, "127.0.0.1", "node1") });
  const [address, port] = ctx.server.address.split(":");
  const up = (...more: string[]) => pxd(["up", "--nodes", "1", "--address", address!, "--api-port", port!, "--data-dir", dataDir, ...more]);
  const first = await up("--size", "2G");
  assert.is(first.code, 0, first.stderr);
  const lines = first.stdout.trimEnd().split("\n");
  assert.is(lines[0], `pxd is running: 1 node (127.0.0.1), data and logs in ${dataDir}/node*`);
  assert.is(lines[1], 'volume "demo" (2.00 GiB, 1 replica) is exported at nbd://127.0.0.1:10809/demo (and on every node)');
  assert.is(lines[2], "  nbdinfo nbd://127.0.0.1:10809/demo");
  assert.match(lines[3] ?? "", new RegExp(`^ {2}sudo pxd --host ${ctx.server.address.replace(/\./g, "\\.")} volume mount demo /mnt/demo +# ext4 on it`));
  assert.match(lines[4] ?? "", /^ {2}nbd-client 127\.0\.0\.1 10809 \/dev\/nbd0 -N demo +# with the kernel nbd module$/);
  assert.is(lines[3]?.indexOf("#"), lines[4]?.indexOf("#"));
  assert.is(lines[5], `see it with: pxd --host ${ctx.server.address} status, pxd --host ${ctx.server.address} volume inspect demo, or the web console at https://${ctx.server.address}/ (the cluster's own CA signed its certificate: trust ${dataDir}/ca-cert.pem in the browser or accept the warning; it asks for a token: pxd --host ${ctx.server.address} auth token create --role read-only)`);
  assert.is(lines[6], `the admin token and the CA are in ${dataDir}: export PXD_TOKEN_FILE=${dataDir}/admin.token PXD_CA_FILE=${dataDir}/ca-cert.pem`);
  assert.is(readFileSync(join(dataDir, "ca-cert.pem"), "utf8"), readFileSync(join(nodeDir, "tls", "ca-cert.pem"), "utf8"), "pxd up keeps a copy of the CA beside its token");
  // The CLI trusts that copy when told where it is, and reaches the node over HTTPS without a scheme.
  const listed = await pxd(["--host", ctx.server.address, "volume", "list"], { PXD_CA_FILE: join(dataDir, "ca-cert.pem") });
  assert.is(listed.code, 0, listed.stderr);
  const untrusted = await pxd(["--host", ctx.server.address, "volume", "list"]);
  assertOneLineError(untrusted, 1, `the API at https://${ctx.server.address} serves HTTPS with the cluster's CA; give its CA with --ca FILE or PXD_CA_FILE (DIR/tls/ca-cert.pem on a node), and use https://${ctx.server.address}`);
  assert.is(lines[7], `stop it with: pxd down --data-dir ${dataDir}`);
  assert.is(statSync(join(dataDir, "admin.token")).mode & 0o777, 0o600, "pxd up's token is the user's alone");
  assert.is(ctx.controller.volumes.get("demo")?.sizeBytes, 2 * 1024 ** 3);
  assert.not.ok(existsSync(join(dataDir, "node1", "daemon.pid")), "no daemon was started: one answered");

  const again = await up("--volume", "demo");
  assert.is(again.code, 0, again.stderr);
  assert.match(again.stdout, /^volume "demo" already exists with 2\.00 GiB; leaving it as it is$/m);
  assert.is(ctx.controller.calls.filter((c) => c.startsWith("createVolume")).length, 1);
  assertOneLineError(await up("--volume", "no good"), 2, /not a valid volume name/);
});

function fakeDaemon(ignoreTerm: boolean): ChildProcess {
  const script = ignoreTerm ? "process.on('SIGTERM',()=>{});setInterval(()=>{},1000)" : "process.on('SIGTERM',()=>process.exit(0));setInterval(()=>{},1000)";
  // The trailing "daemon" argument is what pxd down looks for in /proc/PID/cmdline.
  const child = spawn(process.execPath, ["-e", script, "daemon"], { stdio: "ignore" });
  ctx.children.push(child);
  return child;
}

function writePid(dataDir: string, pid: number): string {
  mkdirSync(join(dataDir, "node1"), { recursive: true });
  const path = join(dataDir, "node1", "daemon.pid");
  writeFileSync(path, `${pid}\n`);
  return path;
}

async function exited(child: ChildProcess): Promise<NodeJS.Signals | number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return child.signalCode ?? child.exitCode;
  return new Promise((r) => child.once("exit", (code, signal) => r(signal ?? code)));
}

test("pxd down stops the daemon from the pid file with SIGTERM, then SIGKILL when it hangs", async () => {
  const polite = fakeDaemon(false);
  await new Promise((r) => setTimeout(r, 300)); // let it install its SIGTERM handler
  const pidFile = writePid(ctx.tmp, polite.pid ?? 0);
  const stopped = await pxd(["down", "--data-dir", ctx.tmp]);
  assert.is(stopped.code, 0, stopped.stderr);
  assert.is(stopped.stdout, `pxd stopped (pid ${polite.pid})\n`);
  assert.is(await exited(polite), 0);
  assert.not.ok(existsSync(pidFile));

  const stubborn = fakeDaemon(true);
  await new Promise((r) => setTimeout(r, 300));
  writePid(ctx.tmp, stubborn.pid ?? 0);
  const killed = await pxd(["down", "--data-dir", ctx.tmp, "--timeout", "1"]);
  assert.is(killed.code, 0, killed.stderr);
  assert.match(killed.stdout, new RegExp(`did not exit within 1s of SIGTERM; sent SIGKILL\\npxd stopped \\(pid ${stubborn.pid}\\)`));
  assert.is(await exited(stubborn), "SIGKILL");
  assert.not.ok(existsSync(pidFile));

  writePid(ctx.tmp, stubborn.pid ?? 0); // now a dead pid
  const stale = await pxd(["down", "--data-dir", ctx.tmp]);
  assert.is(stale.code, 0, stale.stderr);
  assert.match(stale.stdout, /is gone\); removed the stale pid file/);
  assert.not.ok(existsSync(pidFile));
  const none = await pxd(["down", "--data-dir", ctx.tmp]);
  assert.match(none.stdout, /nothing to stop/);
  writeFileSync(pidFile, "garbage");
  assertOneLineError(await pxd(["down", "--data-dir", ctx.tmp]), 1, /does not hold a process id/);
  assert.is(readFileSync(pidFile, "utf8"), "garbage");
});

test("bin/pxd works through a symlink, as npm install -g links it, and --help exits 0", async () => {
  const link = join(ctx.tmp, "pxd");
  symlinkSync(pxdBin, link);
  const r = await new Promise<Run>((resolve, reject) => {
    const child = spawn(link, ["--host", ctx.server.address, "volume", "list", "--json"], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
  assert.is(r.code, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout), { volumes: [] });
  const help = await pxd(["volume", "--help"]);
  assert.is(help.code, 0);
  assert.match(help.stdout, /create \[options\] <name>/);
});

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

test("pxd events lists the node's events, one a line, or one JSON object a line", async () => {
  const text = await pxd([...host(), "events"]);
  assert.is(text.code, 0, text.stderr);
  assert.is(text.stdout, "1970-01-01T00:00:00.000Z  volume-created  volume db was created, replicas on n1\n");
  const json = await pxd([...host(), "events", "--json"]);
  assert.equal(JSON.parse(json.stdout), { seq: 1, at: "1970-01-01T00:00:00.000Z", kind: "volume-created", volume: "db", message: "volume db was created, replicas on n1" });
});

test.run();
