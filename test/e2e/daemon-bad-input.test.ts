// Hostile clients against a real daemon process (the full protocol suite runs
// against the NBD layer in test/unit/nbd-bad-input.test.ts): each gets the
// spec's error or a closed connection, the daemon keeps serving others, and
// data written before the attack reads back the same after it and after a
// restart.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { startDaemon, type DaemonProcess } from "../helpers/daemon.js";
import { CMD, ERR, OPT, REP, RawClient, infoData, pattern } from "../helpers/nbd-raw-client.js";

const MiB = 1024 * 1024;
const size = 16 * MiB;
let daemon: DaemonProcess;
const before = pattern(256 * 1024, 99);

test.before(async () => {
  daemon = await startDaemon();
  await daemon.api.createVolume({ name: "disk", sizeBytes: size });
  const c = await RawClient.connect(daemon.nbdPort);
  await c.go("disk");
  assert.is(await c.writeAt(MiB, before), 0);
  c.destroy();
});

test.after(async () => {
  await daemon.dispose();
});

let round = 0;
async function assertOthersServed(): Promise<void> {
  round++;
  const c = await RawClient.connect(daemon.nbdPort);
  await c.go("disk", { structured: round % 2 === 0 });
  const data = pattern(4096 + round, round);
  const at = 4 * MiB + round * 65536 + 17;
  assert.is(await c.writeAt(at, data), 0);
  assert.equal(await c.readAt(at, data.length), data);
  c.destroy();
}

async function greeted(): Promise<RawClient> {
  const c = await RawClient.connect(daemon.nbdPort);
  await c.greet();
  return c;
}

test("option and export-name lengths of 0xffffffff are refused without allocating", async () => {
  const a = await greeted();
  a.sendOption(OPT.GO, Buffer.from("abcd"), 0xffffffff);
  assert.is((await a.readOptionReply()).type, REP.ERR_TOO_BIG);
  assert.ok(await a.waitClosed());
  const b = await greeted();
  b.sendOption(OPT.EXPORT_NAME, Buffer.from("disk"), 0xffffffff);
  assert.ok(await b.waitClosed());
  const c = await greeted();
  const d = infoData("disk", []);
  d.writeUInt32BE(0xffffffff, 0);
  assert.is((await c.option(OPT.GO, d))[0]?.type, REP.ERR_INVALID);
  assert.is((await c.option(OPT.GO, infoData("no-such-volume", [])))[0]?.type, REP.ERR_UNKNOWN);
  c.destroy();
  await assertOthersServed();
});

test("requests past the end, overflowing, unknown or huge get the spec's errors", async () => {
  const c = await RawClient.connect(daemon.nbdPort);
  await c.go("disk");
  c.sendRequest(CMD.READ, 0, 1n, size - 100, 512);
  assert.is((await c.readReply()).errno, ERR.EINVAL);
  c.sendRequest(CMD.WRITE, 0, 2n, size - 100, 512, Buffer.alloc(512, 0x25));
  assert.is((await c.readReply()).errno, ERR.ENOSPC);
  c.sendRequest(CMD.WRITE, 0, 3n, 0xfffffffffffffe00n, 0x200, Buffer.alloc(0x200, 7));
  assert.is((await c.readReply()).errno, ERR.ENOSPC);
  c.sendRequest(42, 0, 4n, 0, 512);
  assert.is((await c.readReply()).errno, ERR.EINVAL);
  c.sendRequest(CMD.READ, 0x8000, 5n, 0, 512);
  assert.is((await c.readReply()).errno, ERR.EINVAL);
  c.sendRequest(CMD.WRITE, 0, 6n, 0, 0xffffffff, Buffer.alloc(4096));
  assert.is((await c.readReply()).errno, ERR.EINVAL);
  assert.ok(await c.waitClosed(), "a write too large to skip closes the connection");
  await assertOthersServed();
});

test("garbage and disconnects mid-header and mid-payload break nothing", async () => {
  const a = await RawClient.connect(daemon.nbdPort);
  await a.go("disk");
  a.write(pattern(1000, 5));
  assert.ok(await a.waitClosed());
  const b = await RawClient.connect(daemon.nbdPort);
  await b.go("disk");
  b.sendRequest(CMD.WRITE, 0, 1n, 8 * MiB, MiB, Buffer.alloc(1000, 0x5a)); // only 1000 of 1 MiB sent
  await new Promise((r) => setTimeout(r, 50));
  b.destroy();
  const half = await greeted();
  half.write(Buffer.from([0, 0, 0]));
  half.destroy();
  await assertOthersServed();
  const c = await RawClient.connect(daemon.nbdPort);
  await c.go("disk");
  assert.equal(await c.readAt(8 * MiB, 1000), Buffer.alloc(1000), "a partial write payload is never applied");
  c.destroy();
});

test("nothing written before the attack was lost, before or after a restart; no internal errors", async () => {
  const check = async (): Promise<void> => {
    const c = await RawClient.connect(daemon.nbdPort);
    await c.go("disk");
    assert.equal(await c.readAt(MiB, before.length), before);
    c.destroy();
  };
  await check();
  assert.not.match(daemon.output, /internal error|uncaught|TypeError|RangeError/i);
  await daemon.restart();
  await check();
});

test.run();
