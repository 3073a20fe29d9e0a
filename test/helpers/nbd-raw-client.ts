// A hand-written NBD client over a real TCP socket, byte by byte, so tests can
// send exactly what a broken or hostile client would. Wire values are written
// here independently of src/nbd/wire.ts on purpose: a shared constant cannot
// catch its own typo.

import { connect, type Socket } from "node:net";

export const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8, LIST_META: 9, SET_META: 10 };
export const REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_TOO_BIG: 0x80000009,
};
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 };
export const CMDF = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16 };
export const ERR = { EPERM: 1, EIO: 5, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 };
const IHAVEOPT = Buffer.from("IHAVEOPT", "ascii");

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface Reply {
  structured: boolean;
  errno: number;
  cookie: bigint;
  /** Structured only: chunk flags, type and payload. */
  flags: number;
  type: number;
  payload: Buffer;
}

export class RawClient {
  private chunks: Buffer[] = [];
  private have = 0;
  private wake: (() => void) | undefined;
  closed = false;

  private constructor(readonly socket: Socket) {
    socket.on("data", (d: Buffer) => {
      this.chunks.push(d);
      this.have += d.length;
      this.wake?.();
    });
    socket.on("close", () => {
      this.closed = true;
      this.wake?.();
    });
    socket.on("error", () => {});
  }

  /** `localAddress` picks the client's address (any of 127.0.0.0/8 on Linux), for per-address limits. */
  static connect(port: number, host = "127.0.0.1", localAddress?: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = connect({ port, host, noDelay: true, ...(localAddress !== undefined ? { localAddress } : {}) });
      s.once("connect", () => resolve(new RawClient(s)));
      s.once("error", reject);
    });
  }

  write(b: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(b);
  }

  /** Reads exactly n bytes; rejects if the server closes first or nothing comes in time. */
  async read(n: number, timeoutMs = 3000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.have < n) {
      if (this.closed) throw new Error(`connection closed after ${this.have} of ${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out with ${this.have} of ${n} bytes`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wake = undefined;
    }
    const all = Buffer.concat(this.chunks);
    this.chunks = [all.subarray(n)];
    this.have -= n;
    return all.subarray(0, n);
  }

  /** True when the server closes the connection within the time (unread bytes are dropped). */
  async waitClosed(timeoutMs = 3000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    return this.closed;
  }

  destroy(): void {
    this.socket.destroy();
  }

  // ---- handshake ----

  /** Reads the greeting, checks its magics, sends client flags (fixed newstyle + no zeroes by default). */
  async greet(clientFlags = 3): Promise<number> {
    const g = await this.read(18);
    if (g.toString("ascii", 0, 8) !== "NBDMAGIC" || g.toString("ascii", 8, 16) !== "IHAVEOPT") throw new Error("bad greeting");
    const u = Buffer.alloc(4);
    u.writeUInt32BE(clientFlags);
    this.write(u);
    return g.readUInt16BE(16);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0), declaredBytes = data.length): void {
    const h = Buffer.alloc(16);
    IHAVEOPT.copy(h, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(declaredBytes, 12);
    this.write(Buffer.concat([h, data]));
  }

  async readOptionReply(): Promise<OptionReply> {
    const h = await this.read(20);
    if (h.readUInt32BE(0) !== 0x0003e889 || h.readUInt32BE(4) !== 0x045565a9) throw new Error("bad option reply magic");
    const len = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: len ? await this.read(len) : Buffer.alloc(0) };
  }

  /** Reads replies until a final one (anything but SERVER, INFO, META_CONTEXT); returns them all. */
  async readOptionReplies(): Promise<OptionReply[]> {
    const out: OptionReply[] = [];
    for (;;) {
      const r = await this.readOptionReply();
      out.push(r);
      if (r.type !== REP.SERVER && r.type !== REP.INFO && r.type !== REP.META_CONTEXT) return out;
    }
  }

  async option(option: number, data?: Buffer): Promise<OptionReply[]> {
    this.sendOption(option, data);
    return this.readOptionReplies();
  }

  /** Full handshake to transmission with NBD_OPT_GO; returns the size and transmission flags. */
  async go(name: string, o: { structured?: boolean; meta?: boolean } = {}): Promise<{ sizeBytes: number; flags: number }> {
    await this.greet();
    return this.negotiate(name, o);
  }

  /** The option part of go(), for a client that already greeted. */
  async negotiate(name: string, o: { structured?: boolean; meta?: boolean } = {}): Promise<{ sizeBytes: number; flags: number }> {
    if (o.structured || o.meta) {
      const r = await this.option(OPT.STRUCTURED_REPLY);
      if (r[0]?.type !== REP.ACK) throw new Error("structured replies refused");
    }
    if (o.meta) {
      const r = await this.option(OPT.SET_META, metaData(name, ["base:allocation"]));
      if (r.length !== 2 || r[0]?.type !== REP.META_CONTEXT) throw new Error("base:allocation not selected");
    }
    const replies = await this.option(OPT.GO, infoData(name, [3]));
    const last = replies[replies.length - 1];
    if (last?.type !== REP.ACK) throw new Error(`GO failed with 0x${last?.type.toString(16)}`);
    const exp = replies.find((r) => r.type === REP.INFO && r.data.readUInt16BE(0) === 0);
    if (!exp) throw new Error("no NBD_INFO_EXPORT");
    return { sizeBytes: Number(exp.data.readBigUInt64BE(2)), flags: exp.data.readUInt16BE(10) };
  }

  // ---- transmission ----

  sendRequest(command: number, flags: number, cookie: bigint, offset: bigint | number, length: number, payload?: Buffer): void {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(command, 6);
    h.writeBigUInt64BE(cookie, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length >>> 0, 24);
    this.write(payload ? Buffer.concat([h, payload]) : h);
  }

  /** Reads one reply message (simple, or one structured chunk); `readBytes` is the data length of a simple READ reply. */
  async readReply(readBytes = 0, timeoutMs = 3000): Promise<Reply> {
    const m = (await this.read(4, timeoutMs)).readUInt32BE(0);
    if (m === 0x67446698) {
      const r = await this.read(12);
      const errno = r.readUInt32BE(0);
      const payload = errno === 0 && readBytes > 0 ? await this.read(readBytes) : Buffer.alloc(0);
      return { structured: false, errno, cookie: r.readBigUInt64BE(4), flags: 0, type: 0, payload };
    }
    if (m !== 0x668e33ef) throw new Error(`bad reply magic 0x${m.toString(16)}`);
    const r = await this.read(16);
    const len = r.readUInt32BE(12);
    const payload = len ? await this.read(len, 10_000) : Buffer.alloc(0);
    const type = r.readUInt16BE(2);
    const errno = type & 0x8000 ? payload.readUInt32BE(0) : 0;
    return { structured: true, errno, cookie: r.readBigUInt64BE(4), flags: r.readUInt16BE(0), type, payload };
  }

  /** READ of len bytes at offset (simple or structured, whichever was negotiated); throws on error. */
  async readAt(offset: number, len: number, cookie = 1n): Promise<Buffer> {
    this.sendRequest(CMD.READ, 0, cookie, offset, len);
    const out = Buffer.alloc(len);
    for (;;) {
      const r = await this.readReply(len);
      if (r.cookie !== cookie) throw new Error(`reply for cookie ${r.cookie}, expected ${cookie}`);
      if (r.errno !== 0) throw new Error(`READ failed with errno ${r.errno}`);
      if (!r.structured) return r.payload;
      if (r.type === 1) r.payload.copy(out, Number(r.payload.readBigUInt64BE(0)) - offset, 8);
      if (r.flags & 1) return out;
    }
  }

  async writeAt(offset: number, data: Buffer, cookie = 2n): Promise<number> {
    this.sendRequest(CMD.WRITE, 0, cookie, offset, data.length, data);
    const r = await this.readReply();
    if (r.cookie !== cookie) throw new Error(`reply for cookie ${r.cookie}, expected ${cookie}`);
    return r.errno;
  }
}

export function infoData(name: string, infos: number[]): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
  return b;
}

export function metaData(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const u32 = (v: number): Buffer => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v);
    return b;
  };
  const n = Buffer.from(name);
  parts.push(u32(n.length), n, u32(queries.length));
  for (const q of queries) {
    const qb = Buffer.from(q);
    parts.push(u32(qb.length), qb);
  }
  return Buffer.concat(parts);
}

/** Deterministic bytes for a test pattern. */
export function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}
