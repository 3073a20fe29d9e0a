// Fail-stop with real parts: a bug planted in an NBD request handler, a peer
// message handler or an API handler ends the process at once, with exit code
// 70 and one log line naming where it was caught and the error's stack; an
// unhandled promise rejection does too. A peer's malformed message is an
// expected failure: its connection closes and the process lives.
// Each case runs test/helpers/fail-stop-harness.ts as a child process.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { failStopExitCode } from "../../src/daemon/fail-stop.js";
import { CMD, RawClient } from "../helpers/nbd-raw-client.js";

const harness = fileURLToPath(new URL("../helpers/fail-stop-harness.js", import.meta.url));

interface Child {
  process: ChildProcess;
  stdout: string;
  stderr: string;
  /** Resolves with the first "ready PORT" line's port. */
  ready: Promise<number>;
  exited: Promise<number | null>;
}

function start(scenario: string): Child {
  const p = spawn(process.execPath, ["--enable-source-maps", harness, scenario], { stdio: ["ignore", "pipe", "pipe"] });
  const c = { process: p, stdout: "", stderr: "" } as Child;
  c.ready = new Promise((resolve, reject) => {
    p.stdout!.on("data", (d: Buffer) => {
      c.stdout += d.toString();
      const m = /^ready (\d+)$/m.exec(c.stdout);
      if (m) resolve(Number(m[1]));
    });
    p.on("exit", () => reject(new Error(`the harness exited before it was ready:\n${c.stdout}\n${c.stderr}`)));
  });
  c.ready.catch(() => {});
  p.stderr!.on("data", (d: Buffer) => (c.stderr += d.toString()));
  c.exited = new Promise((resolve) => p.on("exit", (code) => resolve(code)));
  return c;
}

/** The exit code, or a failure after timeoutMs (the child is killed). */
async function exitOf(c: Child, timeoutMs = 20_000): Promise<number | null> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<"late">((resolve) => (timer = setTimeout(() => resolve("late"), timeoutMs)));
  const r = await Promise.race([c.exited, late]);
  clearTimeout(timer);
  if (r === "late") {
    c.process.kill("SIGKILL");
    assert.unreachable(`the harness still runs after ${timeoutMs} ms:\n${c.stdout}\n${c.stderr}`);
  }
  return r as number | null;
}

/** The fail-stop line: where it was caught, the error, and its stack (frames in the harness or src). */
function assertFailStopLine(c: Child, where: RegExp, error: RegExp): void {
  const line = c.stderr.split("\n").find((l) => l.includes("FAIL-STOP"));
  assert.ok(line !== undefined, `a FAIL-STOP line on stderr:\n${c.stderr}`);
  assert.match(line, where);
  assert.match(line, error);
  assert.match(line, /\bat .*(fail-stop-harness|memory-export|src\/)/, "the line carries the stack");
  assert.match(line, new RegExp(`exits now with code ${failStopExitCode}`));
}

test("an AssertionError thrown by an NBD export's read ends the process with the fail-stop line", async () => {
  const c = start("nbd-read");
  const client = await RawClient.connect(await c.ready);
  try {
    await client.go("disk");
    client.sendRequest(CMD.READ, 0, 1n, 4096, 512);
    assert.is(await exitOf(c), failStopExitCode);
    assert.ok(await client.waitClosed(), "the client's connection is gone with the process");
    assertFailStopLine(c, /FAIL-STOP in nbd 127\.0\.0\.1:\d+: READ of 512 bytes at 4096/, /AssertionError: planted: the read path's invariant/);
  } finally {
    client.destroy();
  }
});

test("a TypeError rejected by an NBD export's write ends the process", async () => {
  const c = start("nbd-write");
  const client = await RawClient.connect(await c.ready);
  try {
    await client.go("disk");
    client.sendRequest(CMD.WRITE, 0, 1n, 0, 512, Buffer.alloc(512, 1));
    assert.is(await exitOf(c), failStopExitCode);
    assertFailStopLine(c, /FAIL-STOP in nbd 127\.0\.0\.1:\d+: WRITE of 512 bytes at 0/, /TypeError: planted: a property of undefined/);
  } finally {
    client.destroy();
  }
});

test("an AssertionError thrown by a peer message handler ends the process", async () => {
  const c = start("peer");
  assert.is(await exitOf(c), failStopExitCode);
  assertFailStopLine(c, /FAIL-STOP in peer node 1: handling its message/, /AssertionError: planted: the message handler's invariant/);
});

test("a peer's malformed message closes its connection, with a log line; the process lives and later messages arrive", async () => {
  const c = start("peer-bad");
  assert.is(await exitOf(c), 0, c.stderr);
  assert.match(c.stdout, /node 2: warn peer .*: closing: malformed message from node 1: planted: a field of the wrong type/);
  assert.match(c.stdout, /^survived$/m);
  assert.not.match(c.stderr, /FAIL-STOP/);
});

test("an AssertionError in an API handler ends the process", async () => {
  const c = start("api");
  const port = await c.ready;
  await fetch(`http://127.0.0.1:${port}/v1/status`).catch(() => undefined);
  assert.is(await exitOf(c), failStopExitCode);
  assertFailStopLine(c, /FAIL-STOP in api: GET \/v1\/status/, /AssertionError: planted: the API handler's invariant/);
});

test("a promise rejection nothing handles ends the process", async () => {
  const c = start("rejection");
  assert.is(await exitOf(c), failStopExitCode);
  assertFailStopLine(c, /FAIL-STOP in a promise rejection nothing handled/, /AssertionError: planted: a rejection nobody awaits/);
});

test.run();
