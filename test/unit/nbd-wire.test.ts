// Codecs, parsers and the request validator of src/nbd, without sockets.
// Expected bytes are written out literally from the NBD spec, not derived
// from wire.ts, so a wrong constant there fails here.

import { test } from "uvu";
import * as assert from "uvu/assert";
import * as w from "../../src/nbd/wire.js";
import { parseInfoRequest, parseMetaRequest, transmissionFlagsFor, type Negotiated } from "../../src/nbd/handshake.js";
import { validateRequest } from "../../src/nbd/transmission.js";
import { defaultNbdLimits, resolveNbdLimits } from "../../src/nbd/ports.js";
import { BackendError } from "../../src/nbd/backend.js";
import { nbdErrnoOf, nbdFailureOf } from "../../src/nbd/errors.js";
import { errorKinds } from "../../src/base/error-kind.js";
import { installFailStop } from "../../src/base/fail-stop.js";
import { AssertionError } from "../../src/base/assert.js";
import { MemoryExport } from "../helpers/memory-export.js";
import { infoData, metaData } from "../helpers/nbd-raw-client.js";

const limits = resolveNbdLimits();
const cookie = { hi: 0x01020304, lo: 0x05060708 };

test("greeting is NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES", () => {
  assert.is(w.encodeServerGreeting().toString("hex"), Buffer.from("NBDMAGICIHAVEOPT").toString("hex") + "0003");
});

test("option reply header carries magic 0x3e889045565a9, option, type, length", () => {
  const b = w.encodeOptionReply(7, w.NBD_REP_ERR_UNKNOWN, Buffer.from("x"));
  assert.is(b.toString("hex"), "0003e889045565a9" + "00000007" + "80000006" + "00000001" + "78");
});

test("export-name reply: 8-byte size, flags, 124 zeroes unless NO_ZEROES", () => {
  const withZeroes = w.encodeExportNameReply(2 ** 40 + 5, 0x0ded, false);
  assert.is(withZeroes.length, 134);
  assert.is(withZeroes.subarray(0, 10).toString("hex"), "0000010000000005" + "0ded");
  assert.ok(withZeroes.subarray(10).every((x) => x === 0));
  assert.is(w.encodeExportNameReply(512, 1, true).length, 10);
});

test("info records: EXPORT is 12 bytes, BLOCK_SIZE is 14", () => {
  assert.is(w.encodeInfoExport(4096, 0x0ded).toString("hex"), "0000" + "0000000000001000" + "0ded");
  assert.is(w.encodeInfoBlockSize(1, 4096, 32 << 20).toString("hex"), "0003" + "00000001" + "00001000" + "02000000");
  assert.is(w.encodeInfoString(w.NBD_INFO_NAME, "ab").toString("hex"), "0001" + "6162");
});

test("simple reply and structured chunks match the spec's layouts", () => {
  assert.is(w.encodeSimpleReply(22, cookie).toString("hex"), "67446698" + "00000016" + "0102030405060708");
  const data = w.encodeOffsetDataHeader(cookie, 4096, 512, true);
  assert.is(data.toString("hex"), "668e33ef" + "0001" + "0001" + "0102030405060708" + "00000208" + "0000000000001000");
  const err = w.encodeStructuredError(cookie, 5, "no");
  assert.is(err.toString("hex"), "668e33ef" + "0001" + "8001" + "0102030405060708" + "00000008" + "00000005" + "0002" + "6e6f");
  const bs = w.encodeBlockStatus(cookie, 1, [4096, 512], [3, 0]);
  assert.is(bs.toString("hex"), "668e33ef" + "0001" + "0005" + "0102030405060708" + "00000014" + "00000001" + "00001000" + "00000003" + "00000200" + "00000000");
});

test("request header decodes; a wrong magic is refused; offsets past 2^53 fail closed", () => {
  const b = Buffer.from("25609513" + "0001" + "0001" + "0102030405060708" + "0000000100000000" + "00001000", "hex");
  const h = w.decodeRequestHeader(b, 0);
  assert.equal(h, { flags: 1, command: 1, cookie, offsetBytes: 2 ** 32, lengthBytes: 4096 });
  b.writeUInt32BE(0x25609514, 0);
  assert.is(w.decodeRequestHeader(b, 0), undefined);
  assert.is(w.readU64(Buffer.from("ffffffffffffffff", "hex"), 0), Infinity);
  assert.is(w.readU64(Buffer.from("001fffffffffffff", "hex"), 0), Number.MAX_SAFE_INTEGER);
});

test("messages are cut to 4096 bytes without splitting a UTF-8 character", () => {
  const long = "é".repeat(3000); // 6000 bytes
  const cut = w.utf8Prefix(long, 4095);
  assert.is(cut.length, 4094);
  assert.is(cut.toString("utf8"), "é".repeat(2047));
  const err = w.encodeStructuredError(cookie, 5, "x".repeat(10_000));
  assert.is(err.readUInt16BE(24), 4096);
});

test("INFO/GO data: name and info count must exactly fill the option", () => {
  assert.equal(parseInfoRequest(infoData("disk", [1, 3]), 4096), { name: "disk", infos: [1, 3] });
  const short = parseInfoRequest(Buffer.alloc(5), 4096);
  assert.is("type" in short && short.type, w.NBD_REP_ERR_INVALID);
  const huge = infoData("d", []);
  huge.writeUInt16BE(0xffff, 5); // 65535 info requests in 0 bytes
  const r = parseInfoRequest(huge, 4096);
  assert.is("type" in r && r.type, w.NBD_REP_ERR_INVALID);
  const nameLen = infoData("d", []);
  nameLen.writeUInt32BE(0xffffffff, 0);
  const r2 = parseInfoRequest(nameLen, 4096);
  assert.is("type" in r2 && r2.type, w.NBD_REP_ERR_INVALID);
  const longName = parseInfoRequest(infoData("n".repeat(4097), []), 4096);
  assert.is("type" in longName && longName.type, w.NBD_REP_ERR_INVALID);
});

test("META_CONTEXT data: counts and lengths bounded by the option data", () => {
  assert.equal(parseMetaRequest(metaData("disk", ["base:allocation", "qemu:dirty"]), limits), {
    name: "disk",
    queries: ["base:allocation", "qemu:dirty"],
  });
  const count = metaData("disk", []);
  count.writeUInt32BE(0xffffffff, 8);
  const r = parseMetaRequest(count, limits);
  assert.is("type" in r && r.type, w.NBD_REP_ERR_INVALID);
  const many = parseMetaRequest(metaData("d", Array.from({ length: limits.metaQueriesMax + 1 }, () => "base:")), limits);
  assert.is("type" in many && many.type, w.NBD_REP_ERR_TOO_BIG);
  const qlen = metaData("d", ["base:allocation"]);
  qlen.writeUInt32BE(0xfffffff0, 9);
  const r3 = parseMetaRequest(qlen, limits);
  assert.is("type" in r3 && r3.type, w.NBD_REP_ERR_INVALID);
  const trailing = parseMetaRequest(Buffer.concat([metaData("d", []), Buffer.from([0])]), limits);
  assert.is("type" in trailing && trailing.type, w.NBD_REP_ERR_INVALID);
});

test("transmission flags: writable 0x0ded (+DF only with structured), read-only 0x0587", () => {
  const rw = new MemoryExport({ name: "a", sizeBytes: 4096 });
  const ro = new MemoryExport({ name: "b", sizeBytes: 4096, readOnly: true });
  assert.is(transmissionFlagsFor(rw, true), 0x0ded);
  assert.is(transmissionFlagsFor(rw, false), 0x0d6d);
  assert.is(transmissionFlagsFor(ro, true), 0x0587);
  assert.is(transmissionFlagsFor(ro, false), 0x0507);
});

function neg(o: { readOnly?: boolean; structured?: boolean; meta?: boolean; min?: number } = {}): Negotiated {
  const exp = new MemoryExport({ name: "x", sizeBytes: 1 << 20, readOnly: o.readOnly ?? false, blockBytesMin: o.min ?? 1 });
  const structured = o.structured ?? true;
  return { exp, structured, metaAllocation: o.meta ?? false, transmissionFlags: transmissionFlagsFor(exp, structured) };
}

function req(command: number, offsetBytes: number, lengthBytes: number, flags = 0): w.RequestHeader {
  return { command, flags, offsetBytes, lengthBytes, cookie };
}

function errnoOf(h: w.RequestHeader, n = neg(), shuttingDown = false): number {
  return validateRequest(h, n, limits, shuttingDown)?.errno ?? 0;
}

test("validation: ranges, past the end, overflow (spec Error values)", () => {
  const size = 1 << 20;
  assert.is(errnoOf(req(w.NBD_CMD_READ, 0, 4096)), 0);
  assert.is(errnoOf(req(w.NBD_CMD_READ, size - 1, 1)), 0);
  assert.is(errnoOf(req(w.NBD_CMD_READ, size - 1, 2)), w.NBD_EINVAL);
  assert.is(errnoOf(req(w.NBD_CMD_WRITE, size, 1)), w.NBD_ENOSPC);
  assert.is(errnoOf(req(w.NBD_CMD_WRITE_ZEROES, size - 512, 1024)), w.NBD_ENOSPC);
  assert.is(errnoOf(req(w.NBD_CMD_TRIM, size, 1)), w.NBD_EINVAL);
  assert.is(errnoOf(req(w.NBD_CMD_CACHE, size, 1)), w.NBD_EINVAL);
  assert.is(errnoOf(req(w.NBD_CMD_READ, Infinity, 1)), w.NBD_EINVAL);
  assert.is(errnoOf(req(w.NBD_CMD_WRITE, Number.MAX_SAFE_INTEGER, 0xffffffff)), w.NBD_EINVAL); // too big first
  assert.is(errnoOf(req(w.NBD_CMD_TRIM, Number.MAX_SAFE_INTEGER, 0xffffffff)), w.NBD_EINVAL);
  assert.is(errnoOf(req(w.NBD_CMD_READ, 0, 0)), w.NBD_EINVAL);
});

test("validation: payload limits give EINVAL for WRITE, EOVERFLOW for structured READ", () => {
  const big = limits.payloadBytesMax + 1;
  const n = neg({ readOnly: false });
  assert.is(errnoOf(req(w.NBD_CMD_WRITE, 0, big), n), w.NBD_EINVAL);
  assert.is(errnoOf(req(w.NBD_CMD_READ, 0, big), n), w.NBD_EOVERFLOW);
  assert.is(errnoOf(req(w.NBD_CMD_READ, 0, big), neg({ structured: false })), w.NBD_EINVAL);
});

test("validation: flags per command and per negotiation", () => {
  assert.is(errnoOf(req(w.NBD_CMD_WRITE, 0, 512, w.NBD_CMD_FLAG_FUA)), 0);
  assert.is(errnoOf(req(w.NBD_CMD_READ, 0, 512, w.NBD_CMD_FLAG_FUA)), 0); // FUA valid on all commands
  assert.is(errnoOf(req(w.NBD_CMD_READ, 0, 512, w.NBD_CMD_FLAG_DF)), 0);
  assert.is(errnoOf(req(w.NBD_CMD_READ, 0, 512, w.NBD_CMD_FLAG_DF), neg({ structured: false })), w.NBD_EINVAL);
  assert.is(errnoOf(req(w.NBD_CMD_WRITE, 0, 512, w.NBD_CMD_FLAG_NO_HOLE)), w.NBD_EINVAL);
  assert.is(errnoOf(req(w.NBD_CMD_WRITE_ZEROES, 0, 512, w.NBD_CMD_FLAG_NO_HOLE | w.NBD_CMD_FLAG_FAST_ZERO)), 0);
  assert.is(errnoOf(req(w.NBD_CMD_READ, 0, 512, 1 << 9)), w.NBD_EINVAL);
  assert.is(errnoOf(req(w.NBD_CMD_BLOCK_STATUS, 0, 512, w.NBD_CMD_FLAG_REQ_ONE)), w.NBD_EINVAL); // no context selected
  assert.is(errnoOf(req(w.NBD_CMD_BLOCK_STATUS, 0, 512, w.NBD_CMD_FLAG_REQ_ONE), neg({ meta: true })), 0);
  assert.is(errnoOf(req(99, 0, 512)), w.NBD_EINVAL);
  assert.is(errnoOf(req(w.NBD_CMD_FLUSH, 0, 0)), 0);
  assert.is(errnoOf(req(w.NBD_CMD_FLUSH, 0, 1)), w.NBD_EINVAL);
});

test("validation: read-only EPERM, alignment EINVAL, shutdown ESHUTDOWN", () => {
  const ro = neg({ readOnly: true });
  assert.is(errnoOf(req(w.NBD_CMD_WRITE, 0, 512), ro), w.NBD_EPERM);
  assert.is(errnoOf(req(w.NBD_CMD_TRIM, 0, 512), ro), w.NBD_EPERM);
  assert.is(errnoOf(req(w.NBD_CMD_WRITE_ZEROES, 0, 512), ro), w.NBD_EPERM);
  assert.is(errnoOf(req(w.NBD_CMD_READ, 0, 512), ro), 0);
  assert.is(errnoOf(req(w.NBD_CMD_WRITE, 0, 512, w.NBD_CMD_FLAG_FUA), ro), w.NBD_EINVAL); // FUA not advertised
  const aligned = neg({ min: 512 });
  assert.is(errnoOf(req(w.NBD_CMD_READ, 512, 1024), aligned), 0);
  assert.is(errnoOf(req(w.NBD_CMD_READ, 100, 512), aligned), w.NBD_EINVAL);
  assert.is(errnoOf(req(w.NBD_CMD_WRITE, 0, 100), aligned), w.NBD_EINVAL);
  assert.is(errnoOf(req(w.NBD_CMD_READ, 0, 512), neg(), true), w.NBD_ESHUTDOWN);
});

test("errors: every error kind has the spec's errno; a BackendError keeps its message; anything else stops the process", () => {
  // NBD spec "Error values", written out here rather than taken from wire.ts.
  const spec = { ENOSPC: 28, EROFS: 1, EIO: 5, EINVAL: 22, ENOENT: 108, ESHUTDOWN: 108, ENOTSUP: 95, EOVERFLOW: 75 } as const;
  for (const kind of errorKinds) assert.is(nbdErrnoOf(kind), spec[kind], kind);
  assert.equal(nbdFailureOf(new BackendError("ENOSPC", "full"), "test"), { errno: 28, message: "full" });
  const stopped: string[] = [];
  const previous = installFailStop((err, where) => stopped.push(`${where}: ${(err as Error).message}`));
  try {
    assert.throws(() => nbdFailureOf(new TypeError("bug"), "nbd client: READ"), /bug/);
    assert.throws(() => nbdFailureOf(new AssertionError("broken"), "nbd client: WRITE"), /broken/);
  } finally {
    installFailStop(previous);
  }
  assert.equal(stopped, ["nbd client: READ: bug", "nbd client: WRITE: broken"]);
});

test("limits: defaults agree; inconsistent overrides are refused", () => {
  assert.equal(resolveNbdLimits(), { ...defaultNbdLimits });
  assert.throws(() => resolveNbdLimits({ payloadBytesMax: 1000 }), /max payload/);
  assert.throws(() => resolveNbdLimits({ stringBytesMax: 5000 }), /4096/);
  assert.throws(() => resolveNbdLimits({ handshakeTimeoutMs: 0 }), /positive/);
});

test.run();
