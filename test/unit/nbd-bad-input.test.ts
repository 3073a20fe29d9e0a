// Hostile and broken clients, byte by byte over real TCP. After each one the
// server must have answered with the spec's error or closed that connection,
// and another client must still be served with correct data.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { startNbdTarget, MiB, type NbdTarget } from "../helpers/nbd-target.js";
import { CMD, CMDF, ERR, OPT, REP, RawClient, infoData, metaData, pattern } from "../helpers/nbd-raw-client.js";
import { installFailStop } from "../../src/base/fail-stop.js";

let t: NbdTarget;
let round = 0;
/** What reached the fail-stop handler: a bug that hostile input set off (the daemon would have stopped). */
const bugs: string[] = [];

test.before(async () => {
  installFailStop((err, where) => bugs.push(`${where}: ${String(err)}`));
  t = await startNbdTarget({
    exports: [
      { name: "disk", sizeBytes: 64 * MiB },
      { name: "slow", sizeBytes: MiB, delayMs: 100 },
    ],
    limits: { handshakeTimeoutMs: 300, handshakeOptionsMax: 8 },
  });
});
test.after(async () => {
  await t.stop();
  assert.equal(bugs, [], "no hostile input reached a bug");
});

/** A fresh, well-behaved client writes and reads back a unique pattern. */
async function assertOthersServed(): Promise<void> {
  round++;
  const c = await RawClient.connect(t.port);
  await c.go("disk", { structured: round % 2 === 0 });
  const data = pattern(4096 + round, round);
  const at = round * 65536 + 17;
  assert.is(await c.writeAt(at, data), 0);
  assert.equal(await c.readAt(at, data.length), data);
  c.sendRequest(CMD.DISC, 0, 0n, 0, 0);
  assert.ok(await c.waitClosed());
}

async function greeted(flags = 3): Promise<RawClient> {
  const c = await RawClient.connect(t.port);
  await c.greet(flags);
  return c;
}

async function inTransmission(structured = false): Promise<RawClient> {
  const c = await RawClient.connect(t.port);
  await c.go("disk", { structured });
  return c;
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
}

// ---- handshake ----

test("unknown client flags: closed (spec Client flags)", async () => {
  const c = await greeted(0x80000001);
  assert.ok(await c.waitClosed());
  await assertOthersServed();
});

test("truncated client flags, then hang-up", async () => {
  const c = await RawClient.connect(t.port);
  await c.read(18);
  c.write(Buffer.from([0, 0]));
  c.destroy();
  await assertOthersServed();
});

test("option without IHAVEOPT magic: closed", async () => {
  const c = await greeted();
  const h = Buffer.alloc(16);
  h.write("IHAVEOPX", 0, "ascii");
  h.writeUInt32BE(OPT.LIST, 8);
  c.write(h);
  assert.ok(await c.waitClosed());
  await assertOthersServed();
});

test("garbage instead of options: closed", async () => {
  const c = await greeted();
  c.write(pattern(4096, 99));
  assert.ok(await c.waitClosed());
  await assertOthersServed();
});

test("option length 0xffffffff: ERR_TOO_BIG without allocating, then closed", async () => {
  const c = await greeted();
  c.sendOption(OPT.GO, Buffer.from("abcd"), 0xffffffff);
  const r = await c.readOptionReply();
  assert.is(r.type, REP.ERR_TOO_BIG);
  assert.is(r.option, OPT.GO);
  assert.ok(await c.waitClosed());
  await assertOthersServed();
});

test("option of 100 KiB: ERR_TOO_BIG, data skipped, negotiation continues", async () => {
  const c = await greeted();
  c.sendOption(OPT.INFO, Buffer.alloc(100 * 1024, 0x41));
  assert.is((await c.readOptionReply()).type, REP.ERR_TOO_BIG);
  const { sizeBytes } = await c.negotiate("disk");
  assert.is(sizeBytes, 64 * MiB);
  assert.equal(await c.readAt(0, 8).then((b) => b.length), 8);
  c.destroy();
  await assertOthersServed();
});

test("EXPORT_NAME with length 0xffffffff, too long, or unknown: closed (no error reply exists)", async () => {
  for (const [data, declared] of [
    [Buffer.from("disk"), 0xffffffff],
    [Buffer.alloc(5000, 0x61), 5000],
    [Buffer.from("nope"), 4],
  ] as const) {
    const c = await greeted();
    c.sendOption(OPT.EXPORT_NAME, data, declared);
    assert.ok(await c.waitClosed());
  }
  await assertOthersServed();
});

test("GO with name length past the option: ERR_INVALID; name 0xffffffff too", async () => {
  const c = await greeted();
  const d = infoData("disk", []);
  d.writeUInt32BE(0xffffffff, 0);
  assert.is((await c.option(OPT.GO, d))[0]?.type, REP.ERR_INVALID);
  const d2 = infoData("disk", []);
  d2.writeUInt32BE(5, 0);
  assert.is((await c.option(OPT.GO, d2))[0]?.type, REP.ERR_INVALID);
  assert.is((await c.option(OPT.GO, Buffer.alloc(3)))[0]?.type, REP.ERR_INVALID);
  await c.negotiate("disk");
  c.destroy();
  await assertOthersServed();
});

test("GO with 65535 info requests in a short option: ERR_INVALID", async () => {
  const c = await greeted();
  const d = infoData("disk", [3]);
  d.writeUInt16BE(0xffff, 8);
  assert.is((await c.option(OPT.GO, d))[0]?.type, REP.ERR_INVALID);
  c.destroy();
  await assertOthersServed();
});

test("meta context with huge query count, huge query length, too many queries", async () => {
  const c = await greeted();
  assert.is((await c.option(OPT.STRUCTURED_REPLY))[0]?.type, REP.ACK);
  const count = metaData("disk", ["base:allocation"]);
  count.writeUInt32BE(0xffffffff, 8);
  assert.is((await c.option(OPT.SET_META, count))[0]?.type, REP.ERR_INVALID);
  const qlen = metaData("disk", ["base:allocation"]);
  qlen.writeUInt32BE(0xffffffff, 12);
  assert.is((await c.option(OPT.LIST_META, qlen))[0]?.type, REP.ERR_INVALID);
  const many = metaData("disk", Array.from({ length: 17 }, () => "base:allocation"));
  assert.is((await c.option(OPT.SET_META, many))[0]?.type, REP.ERR_TOO_BIG);
  const nameLen = Buffer.concat([u32(0xfffffff0), Buffer.from("disk"), u32(0)]);
  assert.is((await c.option(OPT.LIST_META, nameLen))[0]?.type, REP.ERR_INVALID);
  c.destroy();
  await assertOthersServed();
});

test("STRUCTURED_REPLY and LIST with data: ERR_INVALID", async () => {
  const c = await greeted();
  assert.is((await c.option(OPT.STRUCTURED_REPLY, Buffer.from("x")))[0]?.type, REP.ERR_INVALID);
  assert.is((await c.option(OPT.LIST, Buffer.from("x")))[0]?.type, REP.ERR_INVALID);
  c.destroy();
  await assertOthersServed();
});

test("a client that never finishes the handshake is timed out", async () => {
  const c = await RawClient.connect(t.port);
  await c.read(18);
  const started = Date.now();
  assert.ok(await c.waitClosed(3000));
  assert.ok(Date.now() - started < 2000);
  assert.ok(t.logs.some((l) => l.includes("no transmission after 300 ms")));
  await assertOthersServed();
});

test("a client that keeps sending options past the limit is closed", async () => {
  const c = await greeted();
  for (let i = 0; i < 8; i++) assert.is((await c.option(OPT.STARTTLS))[0]?.type, REP.ERR_POLICY);
  c.sendOption(OPT.STARTTLS);
  assert.ok(await c.waitClosed());
  await assertOthersServed();
});

// ---- transmission ----

test("request with a bad magic: closed", async () => {
  const c = await inTransmission();
  const h = Buffer.alloc(28);
  h.writeUInt32BE(0x25609514, 0);
  c.write(h);
  assert.ok(await c.waitClosed());
  await assertOthersServed();
});

test("garbage after GO: closed", async () => {
  const c = await inTransmission();
  c.write(pattern(1000, 5));
  assert.ok(await c.waitClosed());
  await assertOthersServed();
});

test("past the end: READ/TRIM EINVAL, WRITE/WRITE_ZEROES ENOSPC; the write payload is skipped", async () => {
  const c = await inTransmission();
  const end = 64 * MiB;
  c.sendRequest(CMD.READ, 0, 1n, end - 100, 512);
  assert.is((await c.readReply()).errno, ERR.EINVAL);
  c.sendRequest(CMD.TRIM, 0, 2n, end, 512);
  assert.is((await c.readReply()).errno, ERR.EINVAL);
  c.sendRequest(CMD.WRITE, 0, 3n, end - 100, 512, Buffer.alloc(512, 0x25)); // payload looks like a request magic
  assert.is((await c.readReply()).errno, ERR.ENOSPC);
  c.sendRequest(CMD.WRITE_ZEROES, 0, 4n, end, 512);
  assert.is((await c.readReply()).errno, ERR.ENOSPC);
  assert.equal(await c.readAt(end - 512, 512), Buffer.alloc(512));
  c.destroy();
  await assertOthersServed();
});

test("offset + length overflowing 64 bits: refused, not wrapped", async () => {
  const c = await inTransmission();
  c.sendRequest(CMD.READ, 0, 1n, 0xffffffffffffff00n, 0x200);
  assert.is((await c.readReply()).errno, ERR.EINVAL);
  c.sendRequest(CMD.WRITE, 0, 2n, 0xfffffffffffffe00n, 0x200, Buffer.alloc(0x200, 7));
  assert.is((await c.readReply()).errno, ERR.ENOSPC);
  c.sendRequest(CMD.READ, 0, 3n, 2n ** 53n, 1);
  assert.is((await c.readReply()).errno, ERR.EINVAL);
  assert.equal(await c.readAt(0, 0x200), t.registry.get("disk").snapshot(0, 0x200));
  c.destroy();
  await assertOthersServed();
});

test("unknown command, unknown flag, DF without structured replies, zero length: EINVAL", async () => {
  const c = await inTransmission();
  c.sendRequest(42, 0, 1n, 0, 512);
  assert.is((await c.readReply()).errno, ERR.EINVAL);
  c.sendRequest(CMD.READ, 0x100, 2n, 0, 512);
  assert.is((await c.readReply()).errno, ERR.EINVAL);
  c.sendRequest(CMD.READ, CMDF.DF, 3n, 0, 512);
  assert.is((await c.readReply()).errno, ERR.EINVAL);
  c.sendRequest(CMD.WRITE, CMDF.REQ_ONE, 4n, 0, 16, Buffer.alloc(16, 0xee));
  assert.is((await c.readReply()).errno, ERR.EINVAL);
  c.sendRequest(CMD.WRITE, 0, 5n, 0, 0);
  assert.is((await c.readReply()).errno, ERR.EINVAL);
  c.sendRequest(CMD.FLUSH, 0, 6n, 4096, 0);
  assert.is((await c.readReply()).errno, ERR.EINVAL);
  assert.not.equal(t.registry.get("disk").snapshot(0, 16), Buffer.alloc(16, 0xee));
  c.destroy();
  await assertOthersServed();
});

test("READ larger than the max payload: EINVAL simple, EOVERFLOW structured", async () => {
  const c = await inTransmission(false);
  c.sendRequest(CMD.READ, 0, 1n, 0, 33 * MiB);
  assert.is((await c.readReply()).errno, ERR.EINVAL);
  c.destroy();
  const s = await inTransmission(true);
  s.sendRequest(CMD.READ, 0, 1n, 0, 33 * MiB);
  const r = await s.readReply();
  assert.is(r.type, 0x8001);
  assert.is(r.errno, ERR.EOVERFLOW);
  s.destroy();
  await assertOthersServed();
});

test("WRITE over the max payload but skippable: EINVAL, payload discarded, connection in sync", async () => {
  const c = await inTransmission();
  const len = 33 * MiB;
  c.sendRequest(CMD.WRITE, 0, 1n, 0, len);
  const r = await c.readReply();
  assert.is(r.errno, ERR.EINVAL);
  assert.is(r.cookie, 1n);
  // The payload, which happens to contain valid-looking requests, must be skipped, not parsed.
  const fake = Buffer.alloc(len);
  for (let at = 0; at + 28 <= len; at += 1024 * 1024) {
    fake.writeUInt32BE(0x25609513, at);
    fake.writeUInt16BE(CMD.TRIM, at + 6);
    fake.writeUInt32BE(4096, at + 24);
  }
  c.write(fake);
  const data = pattern(512, 3);
  assert.is(await c.writeAt(1024, data, 2n), 0);
  assert.equal(await c.readAt(1024, 512, 3n), data);
  c.destroy();
  await assertOthersServed();
});

test("WRITE of 0xffffffff bytes: EINVAL, then closed (too large to skip)", async () => {
  const c = await inTransmission(true);
  c.sendRequest(CMD.WRITE, 0, 9n, 0, 0xffffffff, Buffer.alloc(4096));
  const r = await c.readReply();
  assert.is(r.errno, ERR.EINVAL);
  assert.is(r.cookie, 9n);
  assert.ok(await c.waitClosed());
  await assertOthersServed();
});

test("disconnect mid-header and mid-payload: nothing written, nothing broken", async () => {
  const a = await inTransmission();
  const h = Buffer.alloc(28);
  h.writeUInt32BE(0x25609513, 0);
  a.write(h.subarray(0, 10));
  await new Promise((r) => setTimeout(r, 20));
  a.destroy();
  const b = await inTransmission();
  const at = 48 * MiB;
  b.sendRequest(CMD.WRITE, 0, 1n, at, MiB, Buffer.alloc(1000, 0x5a));
  await new Promise((r) => setTimeout(r, 20));
  b.destroy();
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(t.registry.get("disk").snapshot(at, 1000), Buffer.alloc(1000));
  await assertOthersServed();
});

test("disconnect with a request in flight: it completes, the export is closed after it", async () => {
  const slow = t.registry.get("slow");
  const closes = slow.closes;
  const c = await RawClient.connect(t.port);
  await c.go("slow");
  c.sendRequest(CMD.WRITE, CMDF.FUA, 1n, 0, 512, Buffer.alloc(512, 3));
  await new Promise((r) => setTimeout(r, 20));
  c.destroy();
  await new Promise((r) => setTimeout(r, 30));
  assert.is(slow.closes, closes, "not closed while the write is in flight");
  await new Promise((r) => setTimeout(r, 150));
  assert.is(slow.closes, closes + 1);
  assert.is(slow.snapshot(0, 1)[0], 3);
  await assertOthersServed();
});

test("requests after DISC are not served", async () => {
  const c = await inTransmission();
  const at = 40 * MiB;
  c.sendRequest(CMD.DISC, 0, 1n, 0, 0);
  c.sendRequest(CMD.WRITE, 0, 2n, at, 512, Buffer.alloc(512, 1));
  assert.ok(await c.waitClosed());
  assert.equal(t.registry.get("disk").snapshot(at, 512), Buffer.alloc(512));
  await assertOthersServed();
});

test.run();
