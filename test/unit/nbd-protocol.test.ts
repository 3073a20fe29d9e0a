// Handshake and transmission over real TCP against the in-memory target,
// with a hand-written client: what a correct client sees.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { connect } from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BackendError } from "../../src/nbd/backend.js";
import { startNbdTarget, MiB, type NbdTarget } from "../helpers/nbd-target.js";
import { CMD, CMDF, ERR, OPT, REP, RawClient, infoData, metaData, pattern } from "../helpers/nbd-raw-client.js";

let t: NbdTarget;
test.before(async () => {
  t = await startNbdTarget();
});
test.after(async () => {
  await t.stop();
});

async function open(name = "disk", o: { structured?: boolean; meta?: boolean } = {}): Promise<RawClient> {
  const c = await RawClient.connect(t.port);
  await c.go(name, o);
  return c;
}

test("LIST names every export; the handshake opens none of them", async () => {
  const opensBefore = t.registry.opens;
  const c = await RawClient.connect(t.port);
  await c.greet();
  const replies = await c.option(OPT.LIST);
  const names = replies.filter((r) => r.type === REP.SERVER).map((r) => r.data.toString("utf8", 4, 4 + r.data.readUInt32BE(0)));
  assert.equal(names, ["disk", "ro", "small"]);
  assert.is(replies[replies.length - 1]?.type, REP.ACK);
  assert.is((await c.option(OPT.LIST, Buffer.from("x")))[0]?.type, REP.ERR_INVALID);
  assert.is(t.registry.opens, opensBefore);
  c.destroy();
});

test("INFO returns EXPORT, NAME, DESCRIPTION, BLOCK_SIZE and stays in negotiation", async () => {
  const c = await RawClient.connect(t.port);
  await c.greet();
  const replies = await c.option(OPT.INFO, infoData("disk", [1, 2, 3]));
  const info = new Map(replies.filter((r) => r.type === REP.INFO).map((r) => [r.data.readUInt16BE(0), r.data.subarray(2)]));
  assert.is(info.get(0)?.readBigUInt64BE(0), 64n * 1024n * 1024n);
  assert.is(info.get(0)?.readUInt16BE(8), 0x0d6d); // no structured replies negotiated: no DF
  assert.is(info.get(1)?.toString(), "disk");
  assert.is(info.get(2)?.toString(), "test disk");
  assert.is(info.get(3)?.toString("hex"), "00000001" + "00001000" + "02000000");
  assert.is(replies[replies.length - 1]?.type, REP.ACK);
  const closesBefore = t.registry.get("disk").closes;
  assert.is((await c.option(OPT.INFO, infoData("nope", [])))[0]?.type, REP.ERR_UNKNOWN);
  // Still negotiating: GO works on the same connection, and INFO's export was closed again.
  const go = await c.option(OPT.GO, infoData("", []));
  assert.is(go[go.length - 1]?.type, REP.ACK);
  assert.ok(t.registry.get("disk").closes >= closesBefore);
  assert.equal(await c.readAt(0, 16), Buffer.alloc(16));
  c.destroy();
});

test("EXPORT_NAME with and without NO_ZEROES", async () => {
  for (const flags of [1, 3]) {
    const c = await RawClient.connect(t.port);
    await c.greet(flags);
    c.sendOption(OPT.EXPORT_NAME, Buffer.from("small"));
    const r = await c.read(flags === 3 ? 10 : 134);
    assert.is(r.readBigUInt64BE(0), 1048576n);
    assert.is(r.readUInt16BE(8), 0x0d6d);
    if (flags === 1) assert.ok(r.subarray(10).every((x) => x === 0));
    assert.equal(await c.readAt(0, 8), Buffer.alloc(8));
    c.destroy();
  }
});

test("STARTTLS on a server without TLS gets ERR_POLICY (spec \"NOTLS mode\"), unknown options ERR_UNSUP; negotiation continues", async () => {
  const c = await RawClient.connect(t.port);
  await c.greet();
  assert.is((await c.option(OPT.STARTTLS))[0]?.type, REP.ERR_POLICY);
  const unknown = await c.option(77, Buffer.from("payload"));
  assert.is(unknown[0]?.type, REP.ERR_UNSUP);
  assert.is(unknown[0]?.option, 77);
  const { sizeBytes } = await c.negotiate("ro");
  assert.is(sizeBytes, MiB);
  c.destroy();
});

test("ABORT is acknowledged and the server closes", async () => {
  const c = await RawClient.connect(t.port);
  await c.greet();
  assert.is((await c.option(OPT.ABORT))[0]?.type, REP.ACK);
  assert.ok(await c.waitClosed());
});

test("meta contexts: need structured replies; LIST and SET of base:allocation", async () => {
  const c = await RawClient.connect(t.port);
  await c.greet();
  assert.is((await c.option(OPT.SET_META, metaData("disk", ["base:allocation"])))[0]?.type, REP.ERR_INVALID);
  assert.is((await c.option(OPT.STRUCTURED_REPLY))[0]?.type, REP.ACK);
  const all = await c.option(OPT.LIST_META, metaData("disk", []));
  assert.equal(all.map((r) => r.type), [REP.META_CONTEXT, REP.ACK]);
  assert.is(all[0]?.data.toString("utf8", 4), "base:allocation");
  const wild = await c.option(OPT.LIST_META, metaData("disk", ["base:", "other:thing"]));
  assert.equal(wild.map((r) => r.type), [REP.META_CONTEXT, REP.ACK]);
  assert.equal((await c.option(OPT.SET_META, metaData("disk", ["base:"]))).map((r) => r.type), [REP.ACK]);
  assert.is((await c.option(OPT.SET_META, metaData("disk", ["nocolon"])))[0]?.type, REP.ERR_INVALID);
  const set = await c.option(OPT.SET_META, metaData("disk", ["base:allocation", "x-foo:bar"]));
  assert.equal(set.map((r) => r.type), [REP.META_CONTEXT, REP.ACK]);
  assert.is(set[0]?.data.readUInt32BE(0), 1);
  c.destroy();
});

test("write then read back, simple replies, unaligned and across pages", async () => {
  const c = await open("disk");
  const data = pattern(10_000, 7);
  assert.is(await c.writeAt(4000, data), 0);
  assert.equal(await c.readAt(4000, 10_000), data);
  assert.equal(t.registry.get("disk").snapshot(4000, 10_000), data);
  c.destroy();
});

test("structured READ is one OFFSET_DATA chunk with DONE; errors are structured", async () => {
  const c = await open("disk", { structured: true });
  const data = pattern(4096, 9);
  assert.is(await c.writeAt(8192, data), 0);
  c.sendRequest(CMD.READ, CMDF.DF, 5n, 8192, 4096);
  const r = await c.readReply();
  assert.is(r.type, 1);
  assert.is(r.flags, 1);
  assert.is(r.cookie, 5n);
  assert.is(r.payload.readBigUInt64BE(0), 8192n);
  assert.equal(r.payload.subarray(8), data);
  c.sendRequest(CMD.READ, 0, 6n, 64 * MiB, 512);
  const e = await c.readReply();
  assert.is(e.type, 0x8001);
  assert.is(e.errno, ERR.EINVAL);
  assert.is(e.flags, 1);
  assert.ok(e.payload.toString("utf8", 6).includes("past the end"));
  c.destroy();
});

test("trim makes holes visible to BLOCK_STATUS; REQ_ONE returns one extent", async () => {
  const c = await open("small", { meta: true });
  assert.is(await c.writeAt(0, pattern(64 * 1024, 3)), 0);
  c.sendRequest(CMD.TRIM, 0, 10n, 16 * 1024, 16 * 1024);
  assert.is((await c.readReply()).errno, 0);
  c.sendRequest(CMD.BLOCK_STATUS, 0, 11n, 0, MiB);
  const r = await c.readReply();
  assert.is(r.type, 5);
  assert.is(r.payload.readUInt32BE(0), 1);
  const extents: [number, number][] = [];
  for (let at = 4; at < r.payload.length; at += 8) extents.push([r.payload.readUInt32BE(at), r.payload.readUInt32BE(at + 4)]);
  assert.equal(extents, [
    [16384, 0],
    [16384, 3],
    [32768, 0],
    [MiB - 65536, 3],
  ]);
  c.sendRequest(CMD.BLOCK_STATUS, CMDF.REQ_ONE, 12n, 20 * 1024, 8192);
  const one = await c.readReply();
  assert.is(one.payload.length, 12);
  assert.equal([one.payload.readUInt32BE(4), one.payload.readUInt32BE(8)], [8192, 3]);
  assert.equal(await c.readAt(16 * 1024, 16), Buffer.alloc(16));
  c.destroy();
});

test("BLOCK_STATUS without SET_META_CONTEXT is EINVAL", async () => {
  const c = await open("small", { structured: true });
  c.sendRequest(CMD.BLOCK_STATUS, 0, 1n, 0, 4096);
  assert.is((await c.readReply()).errno, ERR.EINVAL);
  c.destroy();
});

test("WRITE_ZEROES with and without NO_HOLE, FLUSH, CACHE, FUA", async () => {
  const c = await open("small");
  const exp = t.registry.get("small");
  assert.is(await c.writeAt(0, pattern(8192, 4)), 0);
  c.sendRequest(CMD.WRITE_ZEROES, CMDF.NO_HOLE | CMDF.FUA, 1n, 0, 4096);
  assert.is((await c.readReply()).errno, 0);
  assert.ok(exp.pages.has(0), "NO_HOLE keeps the page allocated");
  c.sendRequest(CMD.WRITE_ZEROES, CMDF.FAST_ZERO, 2n, 4096, 4096);
  assert.is((await c.readReply()).errno, 0);
  assert.not.ok(exp.pages.has(1), "zeroing without NO_HOLE punches a hole");
  assert.equal(await c.readAt(0, 8192), Buffer.alloc(8192));
  c.sendRequest(CMD.FLUSH, 0, 3n, 0, 0);
  assert.is((await c.readReply()).errno, 0);
  c.sendRequest(CMD.CACHE, 0, 4n, 0, 4096);
  assert.is((await c.readReply()).errno, 0);
  c.destroy();
});

test("read-only export: writes are EPERM, reads served", async () => {
  const c = await open("ro");
  c.sendRequest(CMD.WRITE, 0, 1n, 0, 512, Buffer.alloc(512, 1));
  assert.is((await c.readReply()).errno, ERR.EPERM);
  c.sendRequest(CMD.TRIM, 0, 2n, 0, 512);
  assert.is((await c.readReply()).errno, ERR.EPERM);
  assert.equal(await c.readAt(0, 512), Buffer.alloc(512));
  c.destroy();
});

test("many pipelined requests in one segment are all answered, cookies intact", async () => {
  const c = await open("disk");
  const n = 200;
  const reqs: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const h = Buffer.alloc(28 + 512);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(CMD.WRITE, 6);
    h.writeBigUInt64BE(BigInt(1000 + i), 8);
    h.writeBigUInt64BE(BigInt(i * 512), 16);
    h.writeUInt32BE(512, 24);
    h.fill(i & 0xff, 28);
    reqs.push(h);
  }
  c.write(Buffer.concat(reqs));
  const cookies = new Set<bigint>();
  for (let i = 0; i < n; i++) {
    const r = await c.readReply();
    assert.is(r.errno, 0);
    cookies.add(r.cookie);
  }
  assert.is(cookies.size, n);
  const back = await c.readAt(0, n * 512);
  for (let i = 0; i < n; i++) assert.is(back[i * 512], i & 0xff);
  c.destroy();
});

test("a request dribbled one byte per segment still parses (header and payload split)", async () => {
  const c = await open("disk");
  const data = pattern(300, 11);
  const h = Buffer.alloc(28);
  h.writeUInt32BE(0x25609513, 0);
  h.writeUInt16BE(CMD.WRITE, 6);
  h.writeBigUInt64BE(77n, 8);
  h.writeBigUInt64BE(123n, 16);
  h.writeUInt32BE(300, 24);
  const all = Buffer.concat([h, data]);
  for (let i = 0; i < all.length; i += 7) {
    c.write(all.subarray(i, i + 7));
    await new Promise((r) => setImmediate(r));
  }
  const r = await c.readReply();
  assert.is(r.cookie, 77n);
  assert.is(r.errno, 0);
  assert.equal(await c.readAt(123, 300), data);
  c.destroy();
});

test("async reads (Promise path) return the right data", async () => {
  const s = await startNbdTarget({ exports: [{ name: "a", sizeBytes: MiB, asyncReads: true }] });
  try {
    const c = await RawClient.connect(s.port);
    await c.go("a", { structured: true });
    const data = pattern(65536, 5);
    assert.is(await c.writeAt(65536, data), 0);
    for (let i = 0; i < 8; i++) c.sendRequest(CMD.READ, 0, BigInt(i), 65536 + i * 8192, 8192);
    for (let i = 0; i < 8; i++) {
      const r = await c.readReply();
      const k = Number(r.cookie);
      assert.equal(r.payload.subarray(8), data.subarray(k * 8192, (k + 1) * 8192));
    }
    c.destroy();
  } finally {
    await s.stop();
  }
});

test("backend errors: a BackendError's kind picks the errno, and the connection keeps serving", async () => {
  const s = await startNbdTarget({ exports: [{ name: "f", sizeBytes: MiB }] });
  try {
    const exp = s.registry.get("f");
    const c = await RawClient.connect(s.port);
    await c.go("f");
    exp.setFault((op, off) => (op === "write" && off === 0 ? new BackendError("ENOSPC", "pool full") : op === "read" && off === 4096 ? new BackendError("EIO", "bad disk") : undefined));
    assert.is(await c.writeAt(0, Buffer.alloc(512)), ERR.ENOSPC);
    for (let i = 0; i < 3; i++) {
      c.sendRequest(CMD.READ, 0, 9n, 4096, 512);
      assert.is((await c.readReply()).errno, ERR.EIO);
    }
    assert.is(await c.writeAt(512, Buffer.alloc(512, 2)), 0);
    assert.equal(await c.readAt(512, 512), Buffer.alloc(512, 2));
    assert.is(s.logs.filter((l) => l.startsWith("error:")).length, 0, "expected failures are the client's business, not the log's");
    c.destroy();
  } finally {
    await s.stop();
  }
});

test("DISC: outstanding requests are answered, then the server closes; later bytes are ignored", async () => {
  const s = await startNbdTarget({ exports: [{ name: "slow", sizeBytes: MiB, delayMs: 50 }] });
  try {
    const c = await RawClient.connect(s.port);
    await c.go("slow");
    c.sendRequest(CMD.WRITE, 0, 1n, 0, 512, Buffer.alloc(512, 9));
    c.sendRequest(CMD.DISC, 0, 2n, 0, 0);
    c.sendRequest(CMD.READ, 0, 3n, 0, 512); // after DISC: must be ignored
    const r = await c.readReply();
    assert.is(r.cookie, 1n);
    assert.is(r.errno, 0);
    assert.ok(await c.waitClosed());
    assert.is(s.registry.get("slow").snapshot(0, 1)[0], 9);
    await new Promise((r) => setTimeout(r, 20));
    assert.is(s.registry.get("slow").closes, 1);
  } finally {
    await s.stop();
  }
});

test("in-flight cap: a client pipelining past it is throttled, not refused", async () => {
  let running = 0;
  let peak = 0;
  const s = await startNbdTarget({ exports: [{ name: "q", sizeBytes: MiB }], limits: { requestsInFlightMax: 4 } });
  try {
    const exp = s.registry.get("q");
    const write = exp.write.bind(exp);
    exp.write = async (...a) => {
      running++;
      peak = Math.max(peak, running);
      await new Promise((r) => setTimeout(r, 5));
      await write(...a);
      running--;
    };
    const c = await RawClient.connect(s.port);
    await c.go("q");
    const batch: Buffer[] = [];
    for (let i = 0; i < 40; i++) {
      const h = Buffer.alloc(28);
      h.writeUInt32BE(0x25609513, 0);
      h.writeUInt16BE(CMD.WRITE, 6);
      h.writeBigUInt64BE(BigInt(i), 8);
      h.writeBigUInt64BE(BigInt(i * 4096), 16);
      h.writeUInt32BE(4096, 24);
      batch.push(h, Buffer.alloc(4096, i));
    }
    c.write(Buffer.concat(batch));
    for (let i = 0; i < 40; i++) assert.is((await c.readReply()).errno, 0);
    assert.is(peak, 4);
    assert.is(exp.snapshot(39 * 4096, 1)[0], 39);
    c.destroy();
  } finally {
    await s.stop();
  }
});

test("queued reply bytes: a client that stops reading stops being read from", async () => {
  const s = await startNbdTarget({ exports: [{ name: "big", sizeBytes: 64 * MiB }], limits: { connectionBytesInFlightMax: 32 * MiB, payloadBytesMax: 16 * MiB } });
  try {
    const exp = s.registry.get("big");
    const c = await RawClient.connect(s.port);
    await c.go("big");
    c.socket.pause(); // stop reading replies
    const n = 200;
    for (let i = 0; i < n; i++) c.sendRequest(CMD.READ, 0, BigInt(i), (i % 64) * MiB, MiB);
    await new Promise((r) => setTimeout(r, 400));
    // Up to 32 MiB of replies held (a batch the kernel took only part of counts whole), then the server stops reading.
    assert.ok(exp.reads >= 16 && exp.reads < 100, `reads while the client was not reading: ${exp.reads}`);
    c.socket.resume();
    for (let i = 0; i < n; i++) assert.is((await c.readReply(MiB)).errno, 0);
    assert.is(exp.reads, n);
    c.destroy();
  } finally {
    await s.stop();
  }
});

test("connection cap: one over the cap is closed at once, others keep working", async () => {
  const s = await startNbdTarget({ limits: { connectionsMax: 2 } });
  try {
    const a = await RawClient.connect(s.port);
    const b = await RawClient.connect(s.port);
    await a.greet();
    await b.greet();
    const c = await RawClient.connect(s.port);
    assert.ok(await c.waitClosed());
    assert.ok(s.logs.some((l) => l.includes("refused")));
    await a.negotiate("small");
    a.destroy();
    await new Promise((r) => setTimeout(r, 50));
    const d = await RawClient.connect(s.port);
    await d.go("small");
    assert.equal(await d.readAt(0, 4), Buffer.alloc(4));
    b.destroy();
    d.destroy();
  } finally {
    await s.stop();
  }
});

test("shutdown: in-flight requests finish, new ones get ESHUTDOWN, then close", async () => {
  const s = await startNbdTarget({ exports: [{ name: "slow", sizeBytes: MiB, delayMs: 150 }] });
  const c = await RawClient.connect(s.port);
  await c.go("slow", { structured: true });
  c.sendRequest(CMD.WRITE, 0, 1n, 0, 512, Buffer.alloc(512, 4));
  await new Promise((r) => setTimeout(r, 30));
  const stopped = s.stop();
  c.sendRequest(CMD.FLUSH, 0, 2n, 0, 0);
  const replies = [await c.readReply(), await c.readReply()];
  const byCookie = new Map(replies.map((r) => [r.cookie, r.errno]));
  assert.is(byCookie.get(1n), 0);
  assert.is(byCookie.get(2n), ERR.ESHUTDOWN);
  assert.ok(await c.waitClosed());
  await stopped;
  assert.is(s.registry.get("slow").snapshot(0, 1)[0], 4);
  assert.is(s.listener.server.connectionCount, 0);
});

test("Unix socket listener serves the same exports", async () => {
  const dir = mkdtempSync(join(tmpdir(), "pxd-nbd-"));
  const path = join(dir, "nbd.sock");
  const s = await startNbdTarget({ unixPath: path });
  try {
    const sock = connect(path);
    const got = await new Promise<Buffer>((resolve, reject) => {
      sock.once("data", resolve);
      sock.once("error", reject);
    });
    assert.is(got.toString("ascii", 0, 16), "NBDMAGICIHAVEOPT");
    sock.destroy();
  } finally {
    await s.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
