// A registry that lags (a cluster node's catalog after a restart, or behind a
// volume created through another node): the handshake asks it to catch up
// once per connection before answering "no such export", holds the client's
// later bytes meanwhile, and still ends at the handshake timeout.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { startNbdTarget, MiB, type NbdTarget } from "../helpers/nbd-target.js";
import { OPT, REP, RawClient, infoData } from "../helpers/nbd-raw-client.js";
import { runOk } from "../helpers/run.js";

let t: NbdTarget;
test.before(async () => {
  t = await startNbdTarget({ limits: { handshakeTimeoutMs: 1500 } });
});
test.after(async () => {
  await t.stop();
});

function lag(name: string, ms: number): void {
  t.registry.catchUpMs = ms;
  t.registry.addLater({ name, sizeBytes: 2 * MiB, description: `late ${name}` });
}

test("INFO and GO pipelined behind a lookup that waits: both answered, in order, one catch-up", async () => {
  lag("late1", 200);
  const before = t.registry.catchUps;
  const c = await RawClient.connect(t.port);
  await c.greet();
  c.sendOption(OPT.INFO, infoData("late1", [1]));
  c.sendOption(OPT.GO, infoData("late1", []));
  const info = await c.readOptionReplies();
  assert.is(info[info.length - 1]?.type, REP.ACK, "INFO found the export the registry learned while the option waited");
  const named = info.find((r) => r.type === REP.INFO && r.data.readUInt16BE(0) === 1);
  assert.is(named?.data.subarray(2).toString(), "late1");
  const go = await c.readOptionReplies();
  assert.is(go[go.length - 1]?.type, REP.ACK);
  assert.is(t.registry.catchUps - before, 1);
  await c.writeAt(4096, Buffer.alloc(4096, 0x5a));
  assert.equal(await c.readAt(4096, 4096), Buffer.alloc(4096, 0x5a));
  c.destroy();
});

test("a name that stays unknown after the catch-up is ERR_UNKNOWN; the next lookup does not wait again", async () => {
  lag("late2", 100);
  const before = t.registry.catchUps;
  const c = await RawClient.connect(t.port);
  await c.greet();
  assert.is((await c.option(OPT.INFO, infoData("nope", [])))[0]?.type, REP.ERR_UNKNOWN);
  assert.is(t.registry.catchUps - before, 1);
  lag("late3", 100);
  assert.is((await c.option(OPT.INFO, infoData("late3", [])))[0]?.type, REP.ERR_UNKNOWN, "one catch-up per connection");
  assert.is(t.registry.catchUps - before, 1);
  // Malformed data is answered at once, without a catch-up.
  assert.is((await c.option(OPT.GO, Buffer.from([0, 0, 0, 9])))[0]?.type, REP.ERR_INVALID);
  c.destroy();
  const known = await RawClient.connect(t.port);
  await known.go("disk");
  assert.is(t.registry.catchUps - before, 1, "a known name never waits");
  known.destroy();
});

test("LIST after a catch-up names the export the registry just learned", async () => {
  lag("late4", 50);
  const c = await RawClient.connect(t.port);
  await c.greet();
  const replies = await c.option(OPT.LIST);
  const names = replies.filter((r) => r.type === REP.SERVER).map((r) => r.data.toString("utf8", 4, 4 + r.data.readUInt32BE(0)));
  assert.ok(names.includes("late4"), names.join(","));
  c.destroy();
});

test("real clients: nbdinfo and qemu-io open an export the registry learns during their handshake", async () => {
  lag("late5", 300);
  const info = JSON.parse(await runOk("nbdinfo", ["--json", t.uri("late5")])) as { exports: { "export-size": number }[] };
  assert.is(info.exports[0]?.["export-size"], 2 * MiB);
  lag("late6", 300);
  const out = await runOk("qemu-io", ["-f", "raw", t.uri("late6"), "-c", "write -P 0x33 0 64k", "-c", "read -P 0x33 0 64k"]);
  assert.not.match(out, /fail/i);
});

test("a catch-up that never settles ends at the handshake timeout; other clients are served meanwhile", async () => {
  t.registry.catchUpMs = Infinity;
  t.registry.addLater({ name: "never", sizeBytes: MiB });
  const stuck = await RawClient.connect(t.port);
  await stuck.greet();
  stuck.sendOption(OPT.GO, infoData("never", []));
  const other = await RawClient.connect(t.port);
  await other.go("disk");
  assert.equal(await other.readAt(0, 512), Buffer.alloc(512));
  other.destroy();
  assert.ok(await stuck.waitClosed(4000), "the waiting handshake was closed at its timeout");
  assert.ok(t.logs.some((l) => /no transmission after 1500 ms/.test(l)), t.logs.join("\n"));
  t.registry.later.length = 0;
});

test.run();
