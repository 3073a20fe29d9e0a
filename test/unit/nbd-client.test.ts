// The NBD client (src/nbd/client.ts) against nbdkit's memory plugin, an
// independent server: handshake, reads and writes split at the server's
// maximum payload, WRITE_ZEROES, TRIM, FLUSH, base:allocation, many requests
// in flight with a small bound. Then against a hostile server written here
// byte by byte (wire values spelled out, not taken from src/nbd/wire.ts):
// an oversized reply length, a reply for no request, data outside the
// request, too many extents, an oversized option reply and a connection cut
// mid-reply each fail with NbdProtocolError, before anything is allocated
// for the length the server claimed.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { createServer, type Server, type Socket } from "node:net";
import { connectNbd, NbdProtocolError, NbdRequestError } from "../../src/os/nbd-client-socket.js";
import { startNbdkit } from "../helpers/nbdkit.js";
import { pattern } from "../helpers/nbd-raw-client.js";

const MiB = 1024 * 1024;

test("against nbdkit memory: handshake, read/write, zero, trim, flush, base:allocation", async () => {
  const k = await startNbdkit(["memory", "size=64M"]);
  try {
    const { client, info } = await connectNbd(k.server, { exportName: "" });
    assert.is(info.sizeBytes, 64 * MiB);
    assert.ok(info.structuredReplies && info.blockStatus, "structured replies and base:allocation negotiated");
    assert.not.ok(info.readOnly);
    const fresh = await client.blockStatus(0, 64 * MiB);
    assert.ok(fresh.every((e) => e.zero) && fresh.length >= 1, "an unwritten disk reads as zeros");
    const data = pattern(10 * MiB + 512, 3);
    await client.write(MiB, data);
    assert.ok((await client.read(MiB, data.length)).equals(data), "what was written reads back");
    const ext = await client.blockStatus(MiB, 4096);
    assert.is(ext[0]!.zero, false, "written data is not zero");
    assert.is(ext[0]!.offsetBytes, MiB);
    await client.zero(2 * MiB, 4096);
    await client.trim(3 * MiB, 4096);
    await client.flush();
    const after = await client.read(2 * MiB, 4096);
    assert.ok(after.equals(Buffer.alloc(4096)), "WRITE_ZEROES made zeros");
    const tail = await client.read(64 * MiB - 512, 512);
    assert.is(tail.length, 512);
    const past = await client.read(64 * MiB - 512, 1024).catch((x: Error) => x);
    assert.match(String(past), /outside/, "a range past the end is refused before it is sent");
    client.close();
  } finally {
    k.stop();
  }
});

test("a server's smaller maximum payload splits reads and writes; many requests in flight stay within their bound", async () => {
  const k = await startNbdkit(["--filter=blocksize-policy", "memory", "size=16M", "blocksize-minimum=512", "blocksize-preferred=4096", "blocksize-maximum=1M", "blocksize-error-policy=error"]);
  try {
    const { client, info } = await connectNbd(k.server, { exportName: "", requestsInFlightMax: 3 });
    assert.is(info.payloadBytesMax, MiB, "the server's maximum is taken");
    assert.is(info.blockBytesMin, 512);
    const data = pattern(5 * MiB, 9);
    await client.write(0, data); // five 1 MiB requests, three at a time; one of 5 MiB would fail with EINVAL
    assert.ok((await client.read(0, data.length)).equals(data));
    const reads = await Promise.all(Array.from({ length: 64 }, (_, i) => client.read(i * 4096, 4096)));
    reads.forEach((r, i) => assert.ok(r.equals(data.subarray(i * 4096, (i + 1) * 4096)), `read ${i}`));
    client.close();
  } finally {
    k.stop();
  }
});

test("without base:allocation (nbdkit noextents) the client says so, and reads still work", async () => {
  const k = await startNbdkit(["--filter=noextents", "memory", "size=1M"]);
  try {
    const { client, info } = await connectNbd(k.server, { exportName: "" });
    assert.is(info.blockStatus, true, "noextents still offers the context, reporting everything as data");
    const e = await client.blockStatus(0, MiB);
    assert.is(e[0]!.zero, false);
    client.close();
    const plain = await connectNbd(k.server, { exportName: "", blockStatus: false });
    assert.is(plain.info.blockStatus, false);
    assert.ok((await plain.client.read(0, 4096)).equals(Buffer.alloc(4096)));
    plain.client.close();
  } finally {
    k.stop();
  }
});

test("an error reply fails only its request; the connection goes on", async () => {
  const k = await startNbdkit(["--filter=error", "memory", "size=1M", "error=EIO", "error-pwrite-rate=100%"]);
  try {
    const { client } = await connectNbd(k.server, { exportName: "" });
    const e = await client.write(0, Buffer.alloc(4096, 1)).catch((x: Error) => x);
    assert.instance(e, NbdRequestError);
    assert.is((e as NbdRequestError).errno, 5);
    assert.match((e as Error).message, /WRITE of 4096 bytes at 0 failed with EIO/);
    assert.ok((await client.read(0, 4096)).equals(Buffer.alloc(4096)), "a read after it works");
    client.close();
  } finally {
    k.stop();
  }
});

// ---- a hostile server ----

/** What the fake server does with the first transmission request: write raw bytes back (cookie is the request's 8 cookie bytes). */
type Scenario = (request: { command: number; cookie: Buffer; offset: bigint; length: number }, s: Socket) => void;

function optionReply(option: number, type: number, data: Buffer = Buffer.alloc(0), declared = data.length): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt32BE(0x0003e889, 0);
  h.writeUInt32BE(0x045565a9, 4);
  h.writeUInt32BE(option, 8);
  h.writeUInt32BE(type, 12);
  h.writeUInt32BE(declared, 16);
  return Buffer.concat([h, data]);
}

function structuredHeader(flags: number, type: number, cookie: Buffer, length: number): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt32BE(0x668e33ef, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  cookie.copy(h, 8);
  h.writeUInt32BE(length, 16);
  return h;
}

/** A newstyle server that negotiates structured replies, base:allocation (id 7) and a 1 MiB export, then runs `scenario`; `goReply` may replace the answer to GO. */
async function hostile(scenario: Scenario, goReply?: (s: Socket) => void): Promise<{ server: string; close(): void }> {
  const srv: Server = createServer((s) => {
    s.on("error", () => {});
    const greeting = Buffer.alloc(18);
    greeting.write("NBDMAGICIHAVEOPT", 0, "ascii");
    greeting.writeUInt16BE(3, 16);
    s.write(greeting);
    let buf = Buffer.alloc(0);
    let phase: "flags" | "options" | "transmission" = "flags";
    s.on("data", (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (phase === "flags") {
          if (buf.length < 4) return;
          buf = buf.subarray(4);
          phase = "options";
        } else if (phase === "options") {
          if (buf.length < 16) return;
          const option = buf.readUInt32BE(8);
          const len = buf.readUInt32BE(12);
          if (buf.length < 16 + len) return;
          buf = buf.subarray(16 + len);
          if (option === 8) s.write(optionReply(8, 1));
          else if (option === 10) s.write(Buffer.concat([optionReply(10, 4, Buffer.concat([Buffer.from([0, 0, 0, 7]), Buffer.from("base:allocation")])), optionReply(10, 1)]));
          else if (option === 7) {
            if (goReply !== undefined) return goReply(s);
            const info = Buffer.alloc(12);
            info.writeUInt16BE(0, 0);
            info.writeBigUInt64BE(BigInt(MiB), 2);
            info.writeUInt16BE(1 | 4, 10);
            s.write(Buffer.concat([optionReply(7, 3, info), optionReply(7, 1)]));
            phase = "transmission";
          } else s.write(optionReply(option, 0x80000001));
        } else {
          if (buf.length < 28) return;
          const r = { command: buf.readUInt16BE(6), cookie: Buffer.from(buf.subarray(8, 16)), offset: buf.readBigUInt64BE(16), length: buf.readUInt32BE(24) };
          buf = buf.subarray(28 + (r.command === 1 ? r.length : 0));
          scenario(r, s);
        }
      }
    });
  });
  await new Promise<void>((resolve) => srv.listen(0, "127.0.0.1", resolve));
  return { server: `127.0.0.1:${(srv.address() as { port: number }).port}`, close: () => srv.close() };
}

async function expectProtocolError(scenario: Scenario, op: "read" | "blockStatus", match: RegExp): Promise<void> {
  const h = await hostile(scenario);
  try {
    const { client } = await connectNbd(h.server, { exportName: "x" });
    const started = Date.now();
    const e = await (op === "read" ? client.read(0, 4096) : client.blockStatus(0, 4096)).then(
      () => undefined,
      (x: Error) => x,
    );
    assert.instance(e, NbdProtocolError, `${match}: got ${String(e)}`);
    assert.match(e!.message, match);
    assert.ok(Date.now() - started < 2000, "failed at once, without waiting for bytes the server claimed");
    const next = await client.read(0, 512).then(
      () => "read",
      (x: Error) => x,
    );
    assert.instance(next, NbdProtocolError, "the connection is dead after a protocol error");
  } finally {
    h.close();
  }
}

test("hostile server: an OFFSET_DATA chunk claiming 4 GiB is refused before it is read", async () => {
  await expectProtocolError((r, s) => s.write(structuredHeader(1, 1, r.cookie, 0xfffffff0)), "read", /above 4104/);
});

test("hostile server: a simple reply to a cookie no request has", async () => {
  await expectProtocolError((_r, s) => {
    const b = Buffer.alloc(16);
    b.writeUInt32BE(0x67446698, 0);
    b.writeUInt32BE(0, 12); // cookie 0: the client never uses it
    s.write(b);
  }, "read", /no request in flight has/);
});

test("hostile server: data outside the requested range", async () => {
  await expectProtocolError((r, s) => {
    const off = Buffer.alloc(8);
    off.writeBigUInt64BE(r.offset + 1n, 0);
    s.write(Buffer.concat([structuredHeader(1, 1, r.cookie, 8 + r.length), off, Buffer.alloc(r.length)]));
  }, "read", /outside the request/);
});

test("hostile server: a READ that claims DONE with bytes missing", async () => {
  await expectProtocolError((r, s) => {
    const off = Buffer.alloc(8);
    off.writeBigUInt64BE(r.offset, 0);
    s.write(Buffer.concat([structuredHeader(1, 1, r.cookie, 8 + 100), off, Buffer.alloc(100)]));
  }, "read", /answered with 100/);
});

test("hostile server: a BLOCK_STATUS chunk with more extents than the client takes, or for another context", async () => {
  await expectProtocolError((r, s) => s.write(structuredHeader(1, 5, r.cookie, 4 + 8 * (64 * 1024 + 1))), "blockStatus", /above/);
  await expectProtocolError((r, s) => {
    const p = Buffer.alloc(12);
    p.writeUInt32BE(9, 0);
    p.writeUInt32BE(4096, 4);
    s.write(Buffer.concat([structuredHeader(1, 5, r.cookie, 12), p]));
  }, "blockStatus", /context 9/);
});

test("hostile server: the connection cut in the middle of a reply", async () => {
  await expectProtocolError((r, s) => {
    const off = Buffer.alloc(8);
    s.write(Buffer.concat([structuredHeader(1, 1, r.cookie, 8 + r.length), off, Buffer.alloc(100)]));
    s.destroy();
  }, "read", /closed the connection/);
});

test("hostile server: an option reply of 16 MiB in the handshake, and GO refused", async () => {
  const big = await hostile(() => {}, (s) => s.write(optionReply(7, 3, Buffer.alloc(0), 16 * MiB)));
  try {
    const e = await connectNbd(big.server, { exportName: "x" }).then(() => undefined, (x: Error) => x);
    assert.instance(e, NbdProtocolError);
    assert.match(e!.message, /option reply of 16777216 bytes, above the client's limit/);
  } finally {
    big.close();
  }
  const tls = await hostile(() => {}, (s) => s.write(optionReply(7, 0x80000005)));
  try {
    const e = await connectNbd(tls.server, { exportName: "x" }).then(() => undefined, (x: Error) => x);
    assert.match(String(e), /requires TLS on NBD .* --nbd-tls-dir/);
  } finally {
    tls.close();
  }
  const unknown = await hostile(() => {}, (s) => s.write(optionReply(7, 0x80000006, Buffer.from("no\x1b[31m such"))));
  try {
    const e = await connectNbd(unknown.server, { exportName: "x" }).then(() => undefined, (x: Error) => x);
    assert.match(String(e), /no export named "x" \(the server says: no\\x1b\[31m such\)/, "the server's words are shown escaped");
  } finally {
    unknown.close();
  }
});

test.run();
