// An NBD client (reference/nbd-proto.md), for the CLI's backup and restore:
// fixed newstyle handshake with NBD_OPT_GO, optional STARTTLS, structured
// replies and the base:allocation context when the server has them, then
// READ, WRITE, FLUSH, TRIM, WRITE_ZEROES and BLOCK_STATUS with several
// requests in flight (nbdClientRequestsInFlightMax), and DISC.
//
// Pure like the rest of src/nbd: the connection reaches it as a port
// (NbdClientSocket; src/os/nbd-client-socket.ts implements it with node:net
// and node:tls). The server is not trusted: every length it sends is checked
// against what was asked and against a named limit before a byte is
// allocated for it, and a reply that breaks the protocol ends the connection
// and fails every request in flight with NbdProtocolError.

import { assert, assertIntInRange } from "../base/assert.js";
import { printable } from "../base/printable.js";
import { nbdClientExtentsMax, nbdClientOptionRepliesMax, nbdClientOptionReplyBytesMax, nbdClientPayloadBytesMax, nbdClientRequestsInFlightMax } from "../constants.js";
import {
  BASE_ALLOCATION,
  BLOCK_STATUS_DESCRIPTOR_BYTES,
  IHAVEOPT_HI,
  IHAVEOPT_LO,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  NBD_STRUCTURED_REPLY_MAGIC,
  NBDMAGIC_HI,
  NBDMAGIC_LO,
  OPTION_REPLY_MAGIC_HI,
  OPTION_REPLY_MAGIC_LO,
  REQUEST_HEADER_BYTES,
  SERVER_GREETING_BYTES,
  SIMPLE_REPLY_BYTES,
  STRUCTURED_HEADER_BYTES,
  commandName,
  readU64,
  writeU64,
} from "./wire.js";

/** The connection, as the client needs it. */
export interface NbdClientSocket {
  /** Queues the buffers in order; the socket keeps references, never copies. */
  write(chunks: readonly Buffer[]): void;
  /** Sends what is queued, then closes. */
  end(): void;
  /** Closes now. */
  destroy(): void;
  /**
   * Upgrades the connection to TLS in place, after the server's ACK to
   * NBD_OPT_STARTTLS (spec "TLS support"); resolves once the TLS handshake is
   * done. Absent: this client has no TLS material.
   */
  startTls?(): Promise<void>;
}

/** The server broke the protocol (or the connection ended): nothing more can be read from this connection. */
export class NbdProtocolError extends Error {
  override name = "NbdProtocolError";
}

/** The server refused the handshake in a way the user can act on (no such export, TLS required). */
export class NbdRefusedError extends Error {
  override name = "NbdRefusedError";
  constructor(
    message: string,
    /** The server requires TLS and this client asked for none (NBD_REP_ERR_TLS_REQD). */
    readonly tlsRequired = false,
  ) {
    super(message);
  }
}

/** The server answered one request with an error (spec "Error values"); the connection goes on. */
export class NbdRequestError extends Error {
  override name = "NbdRequestError";
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
  }
}

export interface NbdClientOptions {
  exportName: string;
  /** "require": STARTTLS first, and fail if the server does not take it. "off": never; a server that requires TLS is refused with a clear error. */
  tls: "off" | "require";
  /** Ask for base:allocation, so holes need not be read (default true; needs structured replies). */
  blockStatus?: boolean;
  requestsInFlightMax?: number;
}

/** What NBD_OPT_GO told about the export. */
export interface NbdExportInfo {
  sizeBytes: number;
  transmissionFlags: number;
  readOnly: boolean;
  /** Largest READ or WRITE payload this client sends: the server's maximum, capped by nbdClientPayloadBytesMax. */
  payloadBytesMax: number;
  /** The server's minimum block size (1 when it did not say). */
  blockBytesMin: number;
  structuredReplies: boolean;
  /** base:allocation was selected: blockStatus() works. */
  blockStatus: boolean;
}

/** One extent of base:allocation: `zero` means it reads as zeros (a hole, or known zeros). */
export interface NbdExtent {
  offsetBytes: number;
  lengthBytes: number;
  hole: boolean;
  zero: boolean;
}

/** Bytes arriving from the socket, taken in exact amounts by the reply parser. */
class ByteQueue {
  private chunks: Buffer[] = [];
  private headBytes = 0; // bytes of chunks[0] already taken
  private haveBytes = 0;
  private waiter: { bytes: number; wake: () => void } | undefined;
  private ended: Error | undefined;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.haveBytes += chunk.length;
    if (this.waiter !== undefined && this.haveBytes >= this.waiter.bytes) this.waiter.wake();
  }

  end(error: Error): void {
    this.ended ??= error;
    this.waiter?.wake();
  }

  private async wait(bytes: number): Promise<void> {
    while (this.haveBytes < bytes) {
      if (this.ended !== undefined) throw this.ended;
      await new Promise<void>((wake) => (this.waiter = { bytes, wake }));
      this.waiter = undefined;
    }
  }

  /** Exactly `bytes` bytes: a view when they sit in one chunk, else a copy. */
  async take(bytes: number): Promise<Buffer> {
    await this.wait(bytes);
    const first = this.chunks[0]!;
    if (first.length - this.headBytes >= bytes) {
      const out = first.subarray(this.headBytes, this.headBytes + bytes);
      this.consume(bytes);
      return out;
    }
    const out = Buffer.allocUnsafe(bytes);
    this.copyOut(out, 0, bytes);
    return out;
  }

  /** Copies the next `bytes` bytes into `target` at `at` (a READ's data, straight into the caller's buffer). */
  async takeInto(target: Buffer, at: number, bytes: number): Promise<void> {
    await this.wait(bytes);
    this.copyOut(target, at, bytes);
  }

  private copyOut(target: Buffer, at: number, bytes: number): void {
    let done = 0;
    while (done < bytes) {
      const c = this.chunks[0]!;
      const n = Math.min(c.length - this.headBytes, bytes - done);
      c.copy(target, at + done, this.headBytes, this.headBytes + n);
      done += n;
      this.consume(n);
    }
  }

  private consume(bytes: number): void {
    this.headBytes += bytes;
    this.haveBytes -= bytes;
    if (this.headBytes === this.chunks[0]!.length) {
      this.chunks.shift();
      this.headBytes = 0;
    }
  }
}

interface OptionReply {
  type: number;
  data: Buffer;
}

interface Pending {
  command: number;
  offsetBytes: number;
  lengthBytes: number;
  /** READ: where the data goes (zero-filled, so holes need nothing). */
  data: Buffer | undefined;
  /** READ over structured replies: bytes covered by data and hole chunks so far. */
  coveredBytes: number;
  extents: NbdExtent[];
  error: NbdRequestError | undefined;
  resolve: (p: Pending) => void;
  reject: (e: Error) => void;
}

const errnoNames: Record<number, string> = { 1: "EPERM", 5: "EIO", 12: "ENOMEM", 22: "EINVAL", 28: "ENOSPC", 75: "EOVERFLOW", 95: "ENOTSUP", 108: "ESHUTDOWN" };

/** The longest error message from a server shown to a user. */
const serverMessageCharsMax = 512;

export class NbdClient {
  private readonly input = new ByteQueue();
  private readonly requestsInFlightMax: number;
  private readonly pending = new Map<number, Pending>();
  private readonly slotWaiters: Array<() => void> = [];
  private nextCookie = 1;
  /** Requests holding a slot: from slot() until their final reply (or the failure of the connection). */
  private slotsTaken = 0;
  private failure: Error | undefined;
  private info: NbdExportInfo | undefined;
  private contextId: number | undefined;
  private disconnecting = false;

  constructor(
    private readonly socket: NbdClientSocket,
    private readonly options: NbdClientOptions,
  ) {
    this.requestsInFlightMax = options.requestsInFlightMax ?? nbdClientRequestsInFlightMax;
    assertIntInRange(this.requestsInFlightMax, 1, 1 << 16, "NBD client requests in flight");
  }

  // ---- what the socket adapter calls ----

  received(chunk: Buffer): void {
    this.input.push(chunk);
  }

  /** The connection is gone (closed, reset, timed out): every request in flight fails with `reason`. */
  closed(reason: string): void {
    this.fail(new NbdProtocolError(reason));
  }

  /** True while requests wait for replies (the adapter's reply timeout applies only then). */
  get busy(): boolean {
    return this.pending.size > 0;
  }

  get export(): NbdExportInfo {
    assert(this.info !== undefined, "the NBD handshake is done");
    return this.info;
  }

  // ---- handshake (spec "Fixed newstyle negotiation") ----

  async handshake(): Promise<NbdExportInfo> {
    assert(this.info === undefined, "one handshake per connection");
    const greeting = await this.input.take(SERVER_GREETING_BYTES);
    if (greeting.readUInt32BE(0) !== NBDMAGIC_HI || greeting.readUInt32BE(4) !== NBDMAGIC_LO) throw this.fail(new NbdProtocolError("the server did not greet with NBDMAGIC: is this an NBD port?"));
    if (greeting.readUInt32BE(8) !== IHAVEOPT_HI || greeting.readUInt32BE(12) !== IHAVEOPT_LO) throw this.fail(new NbdProtocolError("the server speaks oldstyle NBD; only newstyle servers are supported"));
    const handshakeFlags = greeting.readUInt16BE(16);
    if ((handshakeFlags & NBD_FLAG_FIXED_NEWSTYLE) === 0) throw this.fail(new NbdProtocolError("the server does not speak fixed newstyle NBD"));
    const clientFlags = Buffer.allocUnsafe(4);
    clientFlags.writeUInt32BE(NBD_FLAG_C_FIXED_NEWSTYLE | (handshakeFlags & NBD_FLAG_NO_ZEROES ? NBD_FLAG_C_NO_ZEROES : 0), 0);
    this.socket.write([clientFlags]);
    if (this.options.tls === "require") await this.startTls();
    const structured = await this.negotiateStructuredReplies();
    this.contextId = structured && this.options.blockStatus !== false ? await this.selectBaseAllocation() : undefined;
    this.info = await this.go(structured);
    void this.replyLoop();
    return this.info;
  }

  private async startTls(): Promise<void> {
    assert(this.socket.startTls !== undefined, "TLS was asked for with a socket that cannot start it");
    const r = await this.option(NBD_OPT_STARTTLS, Buffer.alloc(0));
    if (r.type === NBD_REP_ACK) return this.socket.startTls();
    throw this.fail(new NbdRefusedError(`the server does not offer TLS on NBD (${optionErrorText(r)}); start its daemon with --nbd-tls on or require, or connect without TLS`));
  }

  private async negotiateStructuredReplies(): Promise<boolean> {
    const r = await this.option(NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0));
    if (r.type === NBD_REP_ACK) return true;
    this.refuseIfTlsRequired(r);
    return false;
  }

  /** The id the server gives base:allocation, or undefined when it has none (blocks are then read, never skipped). */
  private async selectBaseAllocation(): Promise<number | undefined> {
    const name = Buffer.from(this.options.exportName, "utf8");
    const query = Buffer.from(BASE_ALLOCATION, "ascii");
    const data = Buffer.alloc(4 + name.length + 4 + 4 + query.length);
    data.writeUInt32BE(name.length, 0);
    name.copy(data, 4);
    data.writeUInt32BE(1, 4 + name.length);
    data.writeUInt32BE(query.length, 8 + name.length);
    query.copy(data, 12 + name.length);
    let id: number | undefined;
    const final = await this.option(NBD_OPT_SET_META_CONTEXT, data, (r) => {
      if (r.type !== NBD_REP_META_CONTEXT) throw this.fail(new NbdProtocolError(`the server answered NBD_OPT_SET_META_CONTEXT with reply type ${r.type}`));
      if (r.data.length < 5) throw this.fail(new NbdProtocolError("NBD_REP_META_CONTEXT shorter than its context id"));
      if (r.data.toString("utf8", 4) === BASE_ALLOCATION) id = r.data.readUInt32BE(0);
    });
    return final.type === NBD_REP_ACK ? id : undefined;
  }

  private async go(structured: boolean): Promise<NbdExportInfo> {
    const name = Buffer.from(this.options.exportName, "utf8");
    const data = Buffer.alloc(4 + name.length + 2 + 2);
    data.writeUInt32BE(name.length, 0);
    name.copy(data, 4);
    data.writeUInt16BE(1, 4 + name.length);
    data.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 6 + name.length);
    let size: { bytes: number; flags: number } | undefined;
    let blockBytesMin = 1;
    let payloadBytesMax = nbdClientPayloadBytesMax;
    const final = await this.option(NBD_OPT_GO, data, (r) => {
      if (r.type !== NBD_REP_INFO || r.data.length < 2) throw this.fail(new NbdProtocolError(`the server answered NBD_OPT_GO with reply type ${r.type} (${r.data.length} bytes)`));
      const infoType = r.data.readUInt16BE(0);
      if (infoType === NBD_INFO_EXPORT) {
        if (r.data.length !== 12) throw this.fail(new NbdProtocolError(`NBD_INFO_EXPORT of ${r.data.length} bytes, not 12`));
        size = { bytes: readU64(r.data, 2), flags: r.data.readUInt16BE(10) };
      } else if (infoType === NBD_INFO_BLOCK_SIZE) {
        if (r.data.length !== 14) throw this.fail(new NbdProtocolError(`NBD_INFO_BLOCK_SIZE of ${r.data.length} bytes, not 14`));
        blockBytesMin = r.data.readUInt32BE(2);
        payloadBytesMax = Math.min(payloadBytesMax, r.data.readUInt32BE(10));
      }
    });
    if (final.type !== NBD_REP_ACK) {
      this.refuseIfTlsRequired(final);
      if (final.type === NBD_REP_ERR_UNKNOWN) throw this.fail(new NbdRefusedError(`the server has no export named ${JSON.stringify(this.options.exportName)}${serverSaid(final)}`));
      throw this.fail(new NbdRefusedError(`the server refused export ${JSON.stringify(this.options.exportName)}: ${optionErrorText(final)}`));
    }
    if (size === undefined) throw this.fail(new NbdProtocolError("the server finished NBD_OPT_GO without NBD_INFO_EXPORT"));
    // Spec "Block size constraints": a power of two, at most 64 KiB; the maximum payload at least the minimum.
    if (!(blockBytesMin >= 1 && blockBytesMin <= 65536 && (blockBytesMin & (blockBytesMin - 1)) === 0)) throw this.fail(new NbdProtocolError(`the server's minimum block size ${blockBytesMin} is not a power of two up to 64 KiB`));
    if (payloadBytesMax < blockBytesMin) throw this.fail(new NbdProtocolError(`the server's maximum payload ${payloadBytesMax} is below its minimum block size ${blockBytesMin}`));
    if (!Number.isSafeInteger(size.bytes)) throw this.fail(new NbdProtocolError("the export is larger than 2^53 bytes"));
    payloadBytesMax -= payloadBytesMax % blockBytesMin;
    return {
      sizeBytes: size.bytes,
      transmissionFlags: size.flags,
      readOnly: (size.flags & NBD_FLAG_READ_ONLY) !== 0,
      payloadBytesMax,
      blockBytesMin,
      structuredReplies: structured,
      blockStatus: this.contextId !== undefined,
    };
  }

  private refuseIfTlsRequired(r: OptionReply): void {
    if (r.type !== NBD_REP_ERR_TLS_REQD) return;
    if (this.options.tls === "off") throw this.fail(new NbdRefusedError("the server requires TLS on NBD (pxd daemon --nbd-tls require): give --nbd-tls-dir DIR with ca-cert.pem, client-cert.pem and client-key.pem, or --nbd-tls-psk FILE with a key the daemon knows", true));
    throw this.fail(new NbdRefusedError(`the server still requires TLS after STARTTLS${serverSaid(r)}`));
  }

  /** Sends one option and reads its replies: `each` sees every non-final one; the final one (ACK or an error) is returned. */
  private async option(option: number, data: Buffer, each?: (r: OptionReply) => void): Promise<OptionReply> {
    const header = Buffer.allocUnsafe(16);
    header.writeUInt32BE(IHAVEOPT_HI, 0);
    header.writeUInt32BE(IHAVEOPT_LO, 4);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(data.length, 12);
    this.socket.write(data.length > 0 ? [header, data] : [header]);
    for (let replies = 0; replies < nbdClientOptionRepliesMax; replies++) {
      const h = await this.input.take(20);
      if (h.readUInt32BE(0) !== OPTION_REPLY_MAGIC_HI || h.readUInt32BE(4) !== OPTION_REPLY_MAGIC_LO) throw this.fail(new NbdProtocolError("bad option reply magic"));
      if (h.readUInt32BE(8) !== option) throw this.fail(new NbdProtocolError(`the server answered option ${h.readUInt32BE(8)} to option ${option}`));
      const type = h.readUInt32BE(12);
      const bytes = h.readUInt32BE(16);
      if (bytes > nbdClientOptionReplyBytesMax) throw this.fail(new NbdProtocolError(`an option reply of ${bytes} bytes, above the client's limit of ${nbdClientOptionReplyBytesMax}`));
      const r = { type, data: bytes > 0 ? Buffer.from(await this.input.take(bytes)) : Buffer.alloc(0) };
      if (type === NBD_REP_ACK || (type & 0x80000000) !== 0) return r;
      if (type === NBD_REP_SERVER && each === undefined) continue;
      if (each === undefined) throw this.fail(new NbdProtocolError(`unexpected option reply type ${type} to option ${option}`));
      each(r);
    }
    throw this.fail(new NbdProtocolError(`more than ${nbdClientOptionRepliesMax} replies to option ${option}`));
  }

  // ---- transmission (spec "Transmission phase") ----

  /** Reads `lengthBytes` at `offsetBytes`, split into requests of at most the payload limit, in flight together. */
  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    this.checkRange(offsetBytes, lengthBytes);
    const out = Buffer.alloc(lengthBytes);
    await this.pieces(offsetBytes, lengthBytes, async (at, n) => {
      const p = await this.request(NBD_CMD_READ, 0, offsetBytes + at, n, undefined, out.subarray(at, at + n));
      if (p.data === undefined) throw new NbdProtocolError("READ finished without data");
    });
    return out;
  }

  async write(offsetBytes: number, data: Buffer): Promise<void> {
    this.checkRange(offsetBytes, data.length);
    if (this.export.readOnly) throw new NbdRequestError(1, `export ${this.options.exportName} is read-only`);
    await this.pieces(offsetBytes, data.length, async (at, n) => void (await this.request(NBD_CMD_WRITE, 0, offsetBytes + at, n, data.subarray(at, at + n))));
  }

  /** Makes the range read as zeros: WRITE_ZEROES when the server has it, else writes of zeros. */
  async zero(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.checkRange(offsetBytes, lengthBytes);
    if ((this.export.transmissionFlags & NBD_FLAG_SEND_WRITE_ZEROES) === 0) {
      const zeros = Buffer.alloc(Math.min(lengthBytes, this.export.payloadBytesMax));
      await this.pieces(offsetBytes, lengthBytes, async (at, n) => void (await this.request(NBD_CMD_WRITE, 0, offsetBytes + at, n, zeros.subarray(0, n))));
      return;
    }
    await this.pieces(offsetBytes, lengthBytes, async (at, n) => void (await this.request(NBD_CMD_WRITE_ZEROES, 0, offsetBytes + at, n)), 0xffffffff);
  }

  async trim(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.checkRange(offsetBytes, lengthBytes);
    if ((this.export.transmissionFlags & NBD_FLAG_SEND_TRIM) === 0) return; // a hint only (spec "NBD_CMD_TRIM")
    await this.pieces(offsetBytes, lengthBytes, async (at, n) => void (await this.request(NBD_CMD_TRIM, 0, offsetBytes + at, n)), 0xffffffff);
  }

  async flush(): Promise<void> {
    if ((this.export.transmissionFlags & NBD_FLAG_SEND_FLUSH) === 0) return; // writes are durable when acknowledged
    await this.request(NBD_CMD_FLUSH, 0, 0, 0);
  }

  /**
   * base:allocation from `offsetBytes`: at least one extent, together
   * covering at most `lengthBytes` (clipped to it); the server may say less
   * than the whole range, so a caller loops from the end of the last extent.
   */
  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<NbdExtent[]> {
    assert(this.export.blockStatus, "base:allocation was negotiated");
    this.checkRange(offsetBytes, lengthBytes);
    assert(lengthBytes > 0 && lengthBytes <= 0xffffffff, "a block status length fits u32");
    const p = await this.request(NBD_CMD_BLOCK_STATUS, 0, offsetBytes, lengthBytes);
    if (p.extents.length === 0) throw this.fail(new NbdProtocolError("BLOCK_STATUS finished without a status chunk"));
    return p.extents;
  }

  /** NBD_CMD_DISC, then the end of the connection (spec "Terminating the transmission phase"). */
  close(): void {
    if (this.failure !== undefined || this.disconnecting) return void this.socket.destroy();
    this.disconnecting = true;
    if (this.info !== undefined) this.socket.write([this.header(NBD_CMD_DISC, 0, 0, 0, 0)]);
    this.socket.end();
  }

  private checkRange(offsetBytes: number, lengthBytes: number): void {
    assertIntInRange(offsetBytes, 0, this.export.sizeBytes, "NBD request offset");
    assertIntInRange(lengthBytes, 0, this.export.sizeBytes - offsetBytes, "NBD request length");
  }

  /** Runs `one` over the range cut into pieces of at most `pieceBytesMax`, together (request slots bound them). */
  private async pieces(offsetBytes: number, lengthBytes: number, one: (at: number, n: number) => Promise<void>, pieceBytesMax = this.export.payloadBytesMax): Promise<void> {
    const step = pieceBytesMax - (pieceBytesMax % this.export.blockBytesMin);
    const all: Promise<void>[] = [];
    for (let at = 0; at < lengthBytes; at += step) all.push(one(at, Math.min(step, lengthBytes - at)));
    const results = await Promise.allSettled(all);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed !== undefined) throw failed.reason;
  }

  private header(command: number, flags: number, cookie: number, offsetBytes: number, lengthBytes: number): Buffer {
    const h = Buffer.allocUnsafe(REQUEST_HEADER_BYTES);
    h.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(command, 6);
    h.writeUInt32BE(0, 8);
    h.writeUInt32BE(cookie, 12);
    writeU64(h, 16, offsetBytes);
    h.writeUInt32BE(lengthBytes, 24);
    return h;
  }

  private async request(command: number, flags: number, offsetBytes: number, lengthBytes: number, payload?: Buffer, readInto?: Buffer): Promise<Pending> {
    await this.slot();
    if (this.failure !== undefined) {
      this.release();
      throw this.failure;
    }
    const cookie = this.nextCookie;
    this.nextCookie = this.nextCookie === 0xffffffff ? 1 : this.nextCookie + 1;
    assert(!this.pending.has(cookie), "a cookie is not reused while in flight");
    return new Promise<Pending>((resolve, reject) => {
      this.pending.set(cookie, { command, offsetBytes, lengthBytes, data: readInto, coveredBytes: 0, extents: [], error: undefined, resolve, reject });
      const h = this.header(command, flags, cookie, offsetBytes, lengthBytes);
      this.socket.write(payload !== undefined ? [h, payload] : [h]);
    });
  }

  private async slot(): Promise<void> {
    while (this.slotsTaken >= this.requestsInFlightMax) await new Promise<void>((wake) => this.slotWaiters.push(wake));
    this.slotsTaken++;
  }


  private release(): void {
    this.slotsTaken--;
    this.slotWaiters.shift()?.();
  }

  private finish(cookie: number, p: Pending): void {
    this.pending.delete(cookie);
    this.slotsTaken--;
    this.slotWaiters.shift()?.();
    if (p.error !== undefined) p.reject(p.error);
    else p.resolve(p);
  }

  private fail(e: Error): Error {
    if (this.failure !== undefined) return this.failure;
    this.failure = e;
    this.input.end(e);
    this.socket.destroy();
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
    this.slotsTaken = 0;
    for (const wake of this.slotWaiters.splice(0)) wake();
    return e;
  }

  private async replyLoop(): Promise<void> {
    try {
      for (;;) {
        const h = await this.input.take(SIMPLE_REPLY_BYTES);
        const magic = h.readUInt32BE(0);
        if (magic === NBD_SIMPLE_REPLY_MAGIC) await this.simpleReply(h.readUInt32BE(4), h.readUInt32BE(8), h.readUInt32BE(12));
        else if (magic === NBD_STRUCTURED_REPLY_MAGIC && this.export.structuredReplies) await this.structuredChunk(Buffer.concat([h, await this.input.take(STRUCTURED_HEADER_BYTES - SIMPLE_REPLY_BYTES)]));
        else throw new NbdProtocolError(`bad reply magic 0x${magic.toString(16)}`);
      }
    } catch (e) {
      if (this.disconnecting && this.pending.size === 0) return;
      this.fail(e instanceof NbdProtocolError ? e : new NbdProtocolError((e as Error).message));
    }
  }

  private pendingFor(cookieHi: number, cookie: number): Pending {
    const p = cookieHi === 0 ? this.pending.get(cookie) : undefined;
    if (p === undefined) throw new NbdProtocolError(`a reply for cookie ${cookieHi}:${cookie}, which no request in flight has`);
    return p;
  }

  /** Spec "Simple reply message": a READ's data follows only on success. */
  private async simpleReply(errno: number, cookieHi: number, cookie: number): Promise<void> {
    const p = this.pendingFor(cookieHi, cookie);
    if (errno !== 0) p.error = requestError(p, errno, "");
    else if (p.command === NBD_CMD_READ) {
      if (p.coveredBytes > 0) throw new NbdProtocolError("a simple reply to a READ that structured chunks already answered");
      await this.input.takeInto(p.data!, 0, p.lengthBytes);
    }
    this.finish(cookie, p);
  }

  /** Spec "Structured reply chunk message": each chunk's length is checked against its type and its request before it is read. */
  private async structuredChunk(h: Buffer): Promise<void> {
    const flags = h.readUInt16BE(4);
    const type = h.readUInt16BE(6);
    const cookie = h.readUInt32BE(12);
    const p = this.pendingFor(h.readUInt32BE(8), cookie);
    const bytes = h.readUInt32BE(16);
    const tooLong = (max: number): void => {
      if (bytes > max) throw new NbdProtocolError(`a ${commandName(p.command)} reply chunk (type ${type}) of ${bytes} bytes, above ${max}`);
    };
    if (type === NBD_REPLY_TYPE_NONE) {
      if (bytes !== 0 || (flags & NBD_REPLY_FLAG_DONE) === 0) throw new NbdProtocolError("NBD_REPLY_TYPE_NONE with a payload or without DONE");
    } else if (type === NBD_REPLY_TYPE_OFFSET_DATA && p.command === NBD_CMD_READ) {
      tooLong(8 + p.lengthBytes);
      if (bytes <= 8) throw new NbdProtocolError(`OFFSET_DATA of ${bytes} bytes carries no data`);
      const at = this.chunkOffset(p, readU64(await this.input.take(8), 0), bytes - 8);
      await this.input.takeInto(p.data!, at, bytes - 8);
      p.coveredBytes += bytes - 8;
    } else if (type === NBD_REPLY_TYPE_OFFSET_HOLE && p.command === NBD_CMD_READ) {
      if (bytes !== 12) throw new NbdProtocolError(`OFFSET_HOLE of ${bytes} bytes, not 12`);
      const b = await this.input.take(12);
      const holeBytes = b.readUInt32BE(8);
      if (holeBytes === 0) throw new NbdProtocolError("an empty OFFSET_HOLE");
      this.chunkOffset(p, readU64(b, 0), holeBytes); // the buffer is zero-filled already
      p.coveredBytes += holeBytes;
    } else if (type === NBD_REPLY_TYPE_BLOCK_STATUS && p.command === NBD_CMD_BLOCK_STATUS) {
      tooLong(4 + BLOCK_STATUS_DESCRIPTOR_BYTES * nbdClientExtentsMax);
      if (bytes < 4 + BLOCK_STATUS_DESCRIPTOR_BYTES || (bytes - 4) % BLOCK_STATUS_DESCRIPTOR_BYTES !== 0) throw new NbdProtocolError(`a BLOCK_STATUS chunk of ${bytes} bytes`);
      this.extents(p, await this.input.take(bytes));
    } else if ((type & 0x8000) !== 0) {
      tooLong(4 + 2 + 4096 + 8);
      if (bytes < 6) throw new NbdProtocolError(`an error chunk of ${bytes} bytes`);
      const b = await this.input.take(bytes);
      const messageBytes = b.readUInt16BE(4);
      if (6 + messageBytes > bytes) throw new NbdProtocolError("an error chunk's message runs past the chunk");
      const errno = b.readUInt32BE(0);
      if (errno === 0) throw new NbdProtocolError("an error chunk with errno 0");
      p.error ??= requestError(p, errno, b.toString("utf8", 6, 6 + messageBytes));
    } else {
      throw new NbdProtocolError(`a reply chunk of type ${type} to ${commandName(p.command)}`);
    }
    if ((flags & NBD_REPLY_FLAG_DONE) === 0) return;
    if (p.command === NBD_CMD_READ && p.error === undefined && p.coveredBytes !== p.lengthBytes) throw new NbdProtocolError(`a READ of ${p.lengthBytes} bytes answered with ${p.coveredBytes}`);
    this.finish(cookie, p);
  }

  /** Where a data or hole chunk lands in its READ's buffer; it must lie inside the request (spec "NBD_REPLY_TYPE_OFFSET_DATA"). */
  private chunkOffset(p: Pending, offsetBytes: number, lengthBytes: number): number {
    const at = offsetBytes - p.offsetBytes;
    if (!(at >= 0 && at + lengthBytes <= p.lengthBytes)) throw new NbdProtocolError(`a READ chunk at ${offsetBytes}+${lengthBytes} outside the request ${p.offsetBytes}+${p.lengthBytes}`);
    if (p.coveredBytes + lengthBytes > p.lengthBytes) throw new NbdProtocolError("READ chunks cover more than the request");
    return at;
  }

  private extents(p: Pending, b: Buffer): void {
    if (b.readUInt32BE(0) !== this.contextId) throw new NbdProtocolError(`a BLOCK_STATUS chunk for context ${b.readUInt32BE(0)}, not the negotiated ${this.contextId}`);
    if (p.extents.length > 0) throw new NbdProtocolError("two BLOCK_STATUS chunks for one context");
    let at = p.offsetBytes;
    const end = p.offsetBytes + p.lengthBytes;
    for (let i = 4; i < b.length && at < end; i += BLOCK_STATUS_DESCRIPTOR_BYTES) {
      const lengthBytes = b.readUInt32BE(i);
      const state = b.readUInt32BE(i + 4);
      if (lengthBytes === 0) throw new NbdProtocolError("a BLOCK_STATUS extent of length 0");
      const n = Math.min(lengthBytes, end - at);
      p.extents.push({ offsetBytes: at, lengthBytes: n, hole: (state & NBD_STATE_HOLE) !== 0, zero: (state & NBD_STATE_ZERO) !== 0 });
      at += n;
    }
  }
}

function requestError(p: Pending, errno: number, message: string): NbdRequestError {
  const said = message === "" ? "" : `: ${printable(message, serverMessageCharsMax)}`;
  return new NbdRequestError(errno, `${commandName(p.command)} of ${p.lengthBytes} bytes at ${p.offsetBytes} failed with ${errnoNames[errno] ?? `errno ${errno}`}${said}`);
}

function serverSaid(r: OptionReply): string {
  return r.data.length === 0 ? "" : ` (the server says: ${printable(r.data.toString("utf8"), serverMessageCharsMax)})`;
}

function optionErrorText(r: OptionReply): string {
  const names: Record<number, string> = { [NBD_REP_ERR_UNSUP]: "unsupported", [NBD_REP_ERR_POLICY]: "refused by policy", [NBD_REP_ERR_TLS_REQD]: "TLS required", [NBD_REP_ERR_UNKNOWN]: "unknown export" };
  return `${names[r.type] ?? `reply 0x${r.type.toString(16)}`}${serverSaid(r)}`;
}
