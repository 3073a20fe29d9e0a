// The peer frame codec (docs/formats/peer-protocol.md, "Frames"). A frame is
//   u32 BE body length | u8 type | body
// The decoder is a state machine over socket chunks: it checks every length
// against the bound in force BEFORE it allocates, hands out views when a body
// sits inside one chunk, and otherwise copies the slices once into a buffer of
// the announced size (never Buffer.concat of a growing list). Message bodies
// are msgpackr without records, so a plain object with Uint8Array fields
// round-trips as is, binary as msgpack bin (no base64, no JSON).

import { Packr } from "msgpackr";
import { assert } from "../base/assert.js";

export const frameHeaderBytes = 5;

export const FrameType = {
  /** Handshake: who I am, my cluster, my nonce (auth.ts). */
  hello: 0x01,
  /** Handshake: HMAC-SHA256 proof of the cluster secret (auth.ts). */
  proof: 0x02,
  /** Handshake refused: a short UTF-8 reason, then the sender closes. */
  refuse: 0x03,
  /** One msgpack-encoded message for the layer above (Raft, internal RPC). */
  message: 0x10,
  /** Empty keepalive: proves the connection is alive when there is nothing else to send. */
  ping: 0x11,
  /**
   * First frame of a sender's messages on a connection: its 8-byte epoch and the u64 BE count
   * of messages it wrote to this peer on earlier connections. Keeps order across a switch-over.
   */
  start: 0x12,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

const knownTypes: ReadonlySet<number> = new Set(Object.values(FrameType));

export function frameTypeName(type: number): string {
  for (const [name, v] of Object.entries(FrameType)) if (v === type) return name;
  return `0x${type.toString(16).padStart(2, "0")}`;
}

export function encodeFrameHeader(type: FrameType, bodyBytes: number): Buffer {
  assert(Number.isSafeInteger(bodyBytes) && bodyBytes >= 0 && bodyBytes <= 0xffffffff, () => `frame body of ${bodyBytes} bytes fits u32`);
  const h = Buffer.allocUnsafe(frameHeaderBytes);
  h.writeUInt32BE(bodyBytes, 0);
  h.writeUInt8(type, 4);
  return h;
}

/** A whole frame as one buffer: handshake frames and tests. */
export function encodeFrame(type: FrameType, body: Uint8Array = new Uint8Array(0)): Buffer {
  const b = Buffer.allocUnsafe(frameHeaderBytes + body.byteLength);
  b.writeUInt32BE(body.byteLength, 0);
  b.writeUInt8(type, 4);
  b.set(body, frameHeaderBytes);
  return b;
}

export const startEpochBytes = 8;
export const startBodyBytes = startEpochBytes + 8;

export interface Start {
  /** Random per transport instance, hex: a restarted sender counts from 0 again. */
  epoch: string;
  /** Messages the sender wrote to this peer on earlier connections in this epoch. */
  count: number;
}

export function encodeStart(epoch: Uint8Array, count: number): Buffer {
  assert(epoch.length === startEpochBytes, "epoch is 8 bytes");
  assert(Number.isSafeInteger(count) && count >= 0, `message count ${count} is a safe integer`);
  const b = Buffer.allocUnsafe(frameHeaderBytes + startBodyBytes);
  b.writeUInt32BE(startBodyBytes, 0);
  b.writeUInt8(FrameType.start, 4);
  b.set(epoch, 5);
  b.writeUInt32BE(Math.floor(count / 2 ** 32), 5 + startEpochBytes);
  b.writeUInt32BE(count >>> 0, 9 + startEpochBytes);
  return b;
}

/** A start frame's body, or undefined when malformed. */
export function decodeStart(body: Uint8Array): Start | undefined {
  if (body.length !== startBodyBytes) return undefined;
  const b = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  const count = b.readUInt32BE(startEpochBytes) * 2 ** 32 + b.readUInt32BE(startEpochBytes + 4);
  if (!Number.isSafeInteger(count)) return undefined;
  return { epoch: b.subarray(0, startEpochBytes).toString("hex"), count };
}

// ---- message bodies ----

// useRecords: false keeps plain objects plain (no shared structure table that
// both ends would have to agree on); binary decodes as a view of the frame.
const packr = new Packr({ useRecords: false, mapsAsObjects: true });

/** Bodies above this are copied out of msgpackr's shared pack buffer, which it grows to ~4x the largest value. */
const packCopyBytesMin = 64 * 1024;

export function encodeMessage(message: unknown): Buffer {
  const body = packr.pack(message);
  // A small view pins msgpackr's whole shared buffer; copying large bodies keeps the queue's byte count honest.
  if (body.length >= packCopyBytesMin && body.buffer.byteLength > 2 * body.length) return Buffer.from(body);
  return body;
}

/** Throws on malformed msgpack or trailing bytes; the caller closes the connection. */
export function decodeMessage(body: Uint8Array): unknown {
  return packr.unpack(body);
}

// ---- streaming decoder ----

export interface FrameSink {
  /** One whole frame; `body` is a view valid until the sink returns unless the sink keeps it (it may). */
  frame(type: number, body: Uint8Array): void;
  /** The stream is malformed; nothing more will be delivered. */
  error(reason: string): void;
}

export class FrameDecoder {
  private readonly header = Buffer.alloc(frameHeaderBytes);
  private headerHave = 0;
  private body: Buffer | undefined;
  private bodyHave = 0;
  private bodyType = 0;
  private failed = false;

  /** `bodyBytesMax` bounds every announced length; raise it with setBodyBytesMax after authentication. */
  constructor(
    private readonly sink: FrameSink,
    private bodyBytesMax: number,
  ) {}

  setBodyBytesMax(n: number): void {
    this.bodyBytesMax = n;
  }

  /** Bytes of a partial frame held right now (for tests and metrics). */
  get bufferedBytes(): number {
    return this.headerHave + this.bodyHave;
  }

  /** Feeds one chunk; frames are delivered to the sink synchronously, in order. */
  push(chunk: Uint8Array): void {
    let at = 0;
    while (at < chunk.length && !this.failed) {
      if (this.body === undefined) at = this.readHeader(chunk, at);
      else at = this.readBody(chunk, at);
    }
  }

  /** Stops delivering (the owner is closing the connection). */
  stop(): void {
    this.failed = true;
    this.body = undefined;
  }

  private readHeader(chunk: Uint8Array, at: number): number {
    // Fast path: a whole header and body in this chunk becomes a view, no copy.
    if (this.headerHave === 0 && chunk.length - at >= frameHeaderBytes) {
      const view = Buffer.from(chunk.buffer, chunk.byteOffset + at, chunk.length - at);
      const len = view.readUInt32BE(0);
      const type = view.readUInt8(4);
      if (!this.check(len, type)) return chunk.length;
      if (view.length - frameHeaderBytes >= len) {
        this.sink.frame(type, view.subarray(frameHeaderBytes, frameHeaderBytes + len));
        return at + frameHeaderBytes + len;
      }
      this.startBody(len, type);
      return at + frameHeaderBytes;
    }
    const n = Math.min(frameHeaderBytes - this.headerHave, chunk.length - at);
    this.header.set(chunk.subarray(at, at + n), this.headerHave);
    this.headerHave += n;
    if (this.headerHave < frameHeaderBytes) return at + n;
    this.headerHave = 0;
    const len = this.header.readUInt32BE(0);
    const type = this.header.readUInt8(4);
    if (!this.check(len, type)) return chunk.length;
    if (len === 0) this.sink.frame(type, new Uint8Array(0));
    else this.startBody(len, type);
    return at + n;
  }

  /** Validates a header before anything is allocated for its body. */
  private check(len: number, type: number): boolean {
    if (len > this.bodyBytesMax) {
      this.fail(`frame of ${len} bytes exceeds the limit of ${this.bodyBytesMax} (type ${frameTypeName(type)})`);
      return false;
    }
    if (!knownTypes.has(type)) {
      this.fail(`unknown frame type ${frameTypeName(type)}`);
      return false;
    }
    return true;
  }

  private startBody(len: number, type: number): void {
    this.body = Buffer.allocUnsafe(len);
    this.bodyHave = 0;
    this.bodyType = type;
  }

  private readBody(chunk: Uint8Array, at: number): number {
    const body = this.body;
    assert(body !== undefined, "readBody only with a body in progress");
    const n = Math.min(body.length - this.bodyHave, chunk.length - at);
    body.set(chunk.subarray(at, at + n), this.bodyHave);
    this.bodyHave += n;
    if (this.bodyHave === body.length) {
      this.body = undefined;
      this.bodyHave = 0;
      this.sink.frame(this.bodyType, body);
    }
    return at + n;
  }

  private fail(reason: string): void {
    this.failed = true;
    this.body = undefined;
    this.sink.error(reason);
  }
}
