// The peer frame codec and streaming decoder (docs/formats/peer-protocol.md,
// "Frames"), without sockets. Expected header bytes are written out literally.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { Prng } from "../../src/base/prng.js";
import { checkReplicationConstants, peerFrameBytesMax, peerHandshakeFrameBytesMax } from "../../src/constants.js";
import { decodeMessage, encodeFrame, encodeFrameHeader, encodeMessage, FrameDecoder, FrameType, type FrameSink } from "../../src/replication/frame.js";
import { resolvePeerLimits } from "../../src/replication/ports.js";
import { MessageType, newMessage, type Message } from "../../src/raft/types.js";

interface Got {
  frames: { type: number; body: Buffer }[];
  errors: string[];
}

function sink(): FrameSink & Got {
  const frames: Got["frames"] = [];
  const errors: string[] = [];
  return {
    frames,
    errors,
    // Copy: a view may point into a chunk the test reuses.
    frame: (type, body) => void frames.push({ type, body: Buffer.from(body) }),
    error: (reason) => void errors.push(reason),
  };
}

function messageFrame(m: unknown): Buffer {
  const body = encodeMessage(m);
  return Buffer.concat([encodeFrameHeader(FrameType.message, body.length), body]);
}

function bigAppend(seed: number, bytes: number): Message {
  const m = newMessage(MessageType.app, 1, 2, 7);
  const data = new Uint8Array(bytes);
  new Prng(seed).fill(data);
  m.entries = [
    { term: 7, index: 2 ** 40 + 1, type: 0, data },
    { term: 7, index: 2 ** 40 + 2, type: 1, data: new Uint8Array([1, 2, 3]) },
  ];
  m.commit = 2 ** 40;
  m.context = new Uint8Array([0x74]);
  return m;
}

test("limits agree (checkReplicationConstants, resolvePeerLimits)", () => {
  checkReplicationConstants();
  resolvePeerLimits();
  assert.throws(() => resolvePeerLimits({ queueBytesMax: 1024, frameBytesMax: 4096 }), /one largest frame/);
  assert.throws(() => resolvePeerLimits({ frameBytesMax: 2 ** 32 }), /u32/);
});

test("frame header is u32 BE body length, then the type byte", () => {
  assert.is(encodeFrame(FrameType.message, Buffer.from([1, 2, 3])).toString("hex"), "00000003" + "10" + "010203");
  assert.is(encodeFrame(FrameType.ping).toString("hex"), "00000000" + "11");
  assert.is(encodeFrameHeader(FrameType.hello, 0x01020304).toString("hex"), "01020304" + "01");
});

test("a Raft message with a 4 MiB entry round-trips byte-exact, as msgpack bin (no base64, no JSON)", () => {
  const m = bigAppend(1, 4 << 20);
  const body = encodeMessage(m);
  assert.ok(body.length < (4 << 20) + 512, `body is ${body.length} bytes: binary is carried raw`);
  // msgpack bin32 marker (0xc6) followed by the length 4 MiB, big-endian.
  assert.ok(body.includes(Buffer.from([0xc6, 0x00, 0x40, 0x00, 0x00])), "data is a bin32 of 4 MiB");
  const back = decodeMessage(body) as Message;
  assert.ok(back.entries[0]?.data instanceof Uint8Array);
  assert.ok(Buffer.from(back.entries[0]?.data ?? []).equals(Buffer.from(m.entries[0]?.data ?? [])), "payload byte-exact");
  assert.equal({ ...back, entries: [], context: Array.from(back.context ?? []) }, { ...m, entries: [], context: [0x74] });
  assert.is(back.entries[0]?.index, 2 ** 40 + 1);
  assert.is(back.entries[1]?.type, 1);
});

test("plain values round-trip: numbers beyond 32 bits, negatives, floats, null, nested arrays", () => {
  const v = { a: 2 ** 53 - 1, b: -5, c: 1.5, d: null, e: [[1], [2, { f: "x" }]], g: true, h: new Uint8Array(0) };
  const back = decodeMessage(encodeMessage(v)) as typeof v;
  assert.equal({ ...back, h: Array.from(back.h) }, { ...v, h: [] });
});

test("decoder: frames fed byte by byte and in random chunkings come out whole and in order", () => {
  const prng = new Prng(42);
  const frames: Buffer[] = [];
  for (let i = 0; i < 200; i++) {
    const len = prng.chance(0.1) ? prng.int(300_000) : prng.int(200);
    const data = new Uint8Array(len);
    prng.fill(data);
    frames.push(i % 7 === 0 ? encodeFrame(FrameType.ping) : messageFrame({ i, data }));
  }
  const stream = Buffer.concat(frames);
  const check = (s: Got): void => {
    assert.equal(s.errors, []);
    assert.is(s.frames.length, frames.length);
    s.frames.forEach((f, i) => {
      const want = frames[i] as Buffer;
      assert.is(f.type, want[4]);
      assert.ok(f.body.equals(want.subarray(5)), `frame ${i} body`);
    });
  };
  const one = sink();
  const d1 = new FrameDecoder(one, peerFrameBytesMax);
  for (let i = 0; i < 20_000; i++) d1.push(stream.subarray(i, i + 1));
  d1.push(stream.subarray(20_000));
  check(one);
  for (let round = 0; round < 20; round++) {
    const s = sink();
    const d = new FrameDecoder(s, peerFrameBytesMax);
    for (let at = 0; at < stream.length; ) {
      const n = 1 + prng.int(prng.chance(0.5) ? 16 : 100_000);
      d.push(stream.subarray(at, at + n));
      at += n;
    }
    check(s);
    assert.is(d.bufferedBytes, 0);
  }
});

test("decoder: a body inside one chunk is a view of it, not a copy", () => {
  const f = messageFrame({ x: 1 });
  let body: Uint8Array | undefined;
  new FrameDecoder({ frame: (_t, b) => void (body = b), error: () => assert.unreachable() }, 1024).push(f);
  assert.is(body?.buffer, f.buffer);
});

test("decoder: a length over the bound is refused from the header alone, before any body byte", () => {
  const s = sink();
  const d = new FrameDecoder(s, peerFrameBytesMax);
  d.push(Buffer.from([0xff, 0xff, 0xff, 0xff]));
  assert.equal(s.errors, []);
  d.push(Buffer.from([FrameType.message]));
  assert.is(s.errors.length, 1);
  assert.match(s.errors[0] ?? "", /frame of 4294967295 bytes exceeds the limit of 67108864/);
  assert.is(d.bufferedBytes, 0, "nothing buffered for the refused body");
  d.push(encodeFrame(FrameType.ping));
  assert.is(s.frames.length, 0, "nothing is delivered after an error");
});

test("decoder: exactly the bound is accepted; one more is not", () => {
  const ok = sink();
  const d = new FrameDecoder(ok, 1000);
  d.push(encodeFrameHeader(FrameType.message, 1000));
  d.push(Buffer.alloc(1000));
  assert.is(ok.frames.length, 1);
  const bad = sink();
  new FrameDecoder(bad, 1000).push(encodeFrameHeader(FrameType.message, 1001));
  assert.match(bad.errors[0] ?? "", /exceeds/);
});

test("decoder: the handshake bound refuses a large frame from a stranger; raising it lets the same frame through", () => {
  const big = encodeFrame(FrameType.message, Buffer.alloc(peerHandshakeFrameBytesMax + 1));
  const s = sink();
  new FrameDecoder(s, peerHandshakeFrameBytesMax).push(big);
  assert.match(s.errors[0] ?? "", /exceeds the limit of 256/);
  const t = sink();
  const d = new FrameDecoder(t, peerHandshakeFrameBytesMax);
  d.setBodyBytesMax(peerFrameBytesMax);
  d.push(big);
  assert.is(t.frames.length, 1);
});

test("decoder: garbage (unknown types, HTTP, random bytes) is refused", () => {
  const http = sink();
  new FrameDecoder(http, peerHandshakeFrameBytesMax).push(Buffer.from("GET / HTTP/1.1\r\n\r\n"));
  assert.match(http.errors[0] ?? "", /exceeds/);
  const unknown = sink();
  new FrameDecoder(unknown, 1024).push(Buffer.from([0, 0, 0, 1, 0x7f, 0]));
  assert.match(unknown.errors[0] ?? "", /unknown frame type 0x7f/);
  const prng = new Prng(7);
  for (let i = 0; i < 200; i++) {
    const junk = Buffer.alloc(64);
    prng.fill(junk);
    const s = sink();
    const d = new FrameDecoder(s, peerHandshakeFrameBytesMax);
    d.push(junk);
    assert.ok(s.errors.length <= 1);
    assert.ok(s.errors.length === 1 || s.frames.length > 0 || d.bufferedBytes > 0, "junk is refused or waits for more");
  }
});

test("malformed or truncated msgpack bodies throw (the connection closes on it)", () => {
  assert.throws(() => decodeMessage(Buffer.from([0xd9, 0x05, 0x61])), /end of MessagePack data/);
  assert.throws(() => decodeMessage(Buffer.from([0xdd, 0xff, 0xff, 0xff, 0xff])));
  const good = encodeMessage({ a: 1 });
  assert.throws(() => decodeMessage(Buffer.concat([good, Buffer.from([1])])), /end of buffer/);
  assert.throws(() => decodeMessage(good.subarray(0, good.length - 1)));
});

test("encodeMessage keeps large bodies in buffers of their own size (queue accounting stays honest)", () => {
  const body = encodeMessage(bigAppend(3, 1 << 20));
  assert.ok(body.buffer.byteLength <= 2 * body.length, `${body.buffer.byteLength} backing bytes for ${body.length}`);
});

test.run();
