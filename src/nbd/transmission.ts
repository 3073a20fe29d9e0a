// The transmission phase (NBD spec "Transmission", "Request types"): a request
// header state machine over socket chunks, one validation function, and
// handlers that assume a valid request. Write payloads are never copied: they
// reach the Export as subarray views of the socket's chunks (one view when the
// payload sits in one chunk, a list of views when it does not).

import { AssertionError, assert } from "../base/assert.js";
import { nbdReplyBytesReserved } from "../constants.js";
import type { AllocationExtent, Export } from "./backend.js";
import { nbdFailureOf, type NbdFailure } from "./errors.js";
import type { Negotiated } from "./handshake.js";
import type { NbdLimits } from "./ports.js";
import * as w from "./wire.js";

export interface TransmissionHost {
  readonly limits: NbdLimits;
  /** The client, for the fail-stop line of a backend that broke its contract. */
  readonly peer: string;
  /** Queue one buffer of a reply; a reply's buffers are queued back to back. `written` runs once the socket is done with it. */
  send(b: Buffer, written?: () => void): void;
  /**
   * May a request that holds `bytes` until it is answered start now (the
   * connection's and the node's byte bounds)? When not, the host calls pump()
   * once it may.
   */
  admit(bytes: number): boolean;
  /** The bytes held for requests in flight changed by delta. */
  hold(deltaBytes: number): void;
  /** Milliseconds on a monotonic clock. */
  now(): number;
  pauseInput(): void;
  resumeInput(): void;
  shuttingDown(): boolean;
  /** No more requests: close, after sending what is queued when graceful. */
  finish(graceful: boolean, reason: string): void;
}

const WRITE_COMMANDS = (1 << w.NBD_CMD_WRITE) | (1 << w.NBD_CMD_TRIM) | (1 << w.NBD_CMD_WRITE_ZEROES);
/** Commands whose offset and length address the export (FLUSH and DISC carry zeroes). */
const RANGE_COMMANDS =
  (1 << w.NBD_CMD_READ) | WRITE_COMMANDS | (1 << w.NBD_CMD_CACHE) | (1 << w.NBD_CMD_BLOCK_STATUS);

function isIn(set: number, command: number): boolean {
  return command < 31 && (set & (1 << command)) !== 0;
}

/** Command flags valid for `command` given what was negotiated (spec "Command flags"). */
function allowedFlags(command: number, n: Negotiated): number {
  // FUA is valid on every command once SEND_FUA is advertised (the server MUST accept it).
  let f = (n.transmissionFlags & w.NBD_FLAG_SEND_FUA) !== 0 ? w.NBD_CMD_FLAG_FUA : 0;
  if (command === w.NBD_CMD_READ && (n.transmissionFlags & w.NBD_FLAG_SEND_DF) !== 0) f |= w.NBD_CMD_FLAG_DF;
  if (command === w.NBD_CMD_WRITE_ZEROES) {
    f |= w.NBD_CMD_FLAG_NO_HOLE;
    if ((n.transmissionFlags & w.NBD_FLAG_SEND_FAST_ZERO) !== 0) f |= w.NBD_CMD_FLAG_FAST_ZERO;
  }
  if (command === w.NBD_CMD_BLOCK_STATUS) f |= w.NBD_CMD_FLAG_REQ_ONE;
  return f;
}

function failure(errno: number, message: string): NbdFailure {
  return { errno, message };
}

/**
 * What a request holds from admission until its reply is queued: its data
 * (a WRITE's payload, a READ's reply data; the read buffer is allocated after
 * this is reserved) and room for its reply.
 */
function reservedBytes(h: w.RequestHeader): number {
  const data = h.command === w.NBD_CMD_READ || h.command === w.NBD_CMD_WRITE ? h.lengthBytes : 0;
  return data + nbdReplyBytesReserved;
}

/**
 * Validate, then dispatch (STYLE.md): every rule a request must pass, in one
 * place; undefined means the handler may assume a valid request. The errors
 * are the spec's "Error values" section.
 */
export function validateRequest(h: w.RequestHeader, n: Negotiated, limits: NbdLimits, shuttingDown: boolean): NbdFailure | undefined {
  const cmd = h.command;
  const name = w.commandName(cmd);
  // Spec "Terminating the transmission phase": requests during shutdown SHOULD get ESHUTDOWN.
  if (shuttingDown) return failure(w.NBD_ESHUTDOWN, "server is shutting down");
  if (cmd > w.NBD_CMD_BLOCK_STATUS || cmd === w.NBD_CMD_DISC) return failure(w.NBD_EINVAL, `unknown command ${cmd}`);
  const bad = h.flags & ~allowedFlags(cmd, n);
  if (bad !== 0) return failure(w.NBD_EINVAL, `flags 0x${bad.toString(16)} are not valid for ${name}`);
  if (cmd === w.NBD_CMD_BLOCK_STATUS && !n.metaAllocation) return failure(w.NBD_EINVAL, "BLOCK_STATUS without a selected metadata context");
  // Spec "Error values": EPERM for a write or trim on a read-only export.
  if (n.exp.readOnly && isIn(WRITE_COMMANDS, cmd)) return failure(w.NBD_EPERM, `${name} on a read-only export`);
  if (cmd === w.NBD_CMD_FLUSH) {
    return h.offsetBytes === 0 && h.lengthBytes === 0 ? undefined : failure(w.NBD_EINVAL, "FLUSH offset and length must be zero");
  }
  return validatePayload(h, n, limits) ?? validateRange(h, n.exp);
}

/** Spec "Size constraints": the client MUST NOT exceed the maximum payload for WRITE, nor READ with simple replies. */
function validatePayload(h: w.RequestHeader, n: Negotiated, limits: NbdLimits): NbdFailure | undefined {
  if (h.lengthBytes <= limits.payloadBytesMax) return undefined;
  if (h.command === w.NBD_CMD_WRITE) return failure(w.NBD_EINVAL, `WRITE of ${h.lengthBytes} bytes exceeds the maximum payload ${limits.payloadBytesMax}`);
  if (h.command === w.NBD_CMD_READ) {
    // With structured replies a large read may be refused with EOVERFLOW ("Request types", NBD_CMD_READ).
    const errno = n.structured ? w.NBD_EOVERFLOW : w.NBD_EINVAL;
    return failure(errno, `READ of ${h.lengthBytes} bytes exceeds the maximum payload ${limits.payloadBytesMax}`);
  }
  return undefined;
}

/** Spec "Error values": past the end is ENOSPC for writes and write-zeroes, EINVAL otherwise; misalignment is EINVAL. */
function validateRange(h: w.RequestHeader, exp: Export): NbdFailure | undefined {
  const name = w.commandName(h.command);
  // A zero length has unspecified behaviour; refusing it keeps every handler's range non-empty.
  if (h.lengthBytes === 0) return failure(w.NBD_EINVAL, `${name} of zero bytes`);
  // offsetBytes is Infinity past 2^53 (wire.readU64), so the sum cannot wrap and fails closed.
  if (h.offsetBytes + h.lengthBytes > exp.sizeBytes) {
    const writeish = h.command === w.NBD_CMD_WRITE || h.command === w.NBD_CMD_WRITE_ZEROES;
    return failure(writeish ? w.NBD_ENOSPC : w.NBD_EINVAL, `${name} at ${h.offsetBytes} + ${h.lengthBytes} is past the end (${exp.sizeBytes})`);
  }
  const min = exp.blockBytesMin;
  if (min > 1 && (h.offsetBytes % min !== 0 || h.lengthBytes % min !== 0)) {
    return failure(w.NBD_EINVAL, `${name} is not aligned to the minimum block size ${min}`);
  }
  return undefined;
}

type Phase = "header" | "payload" | "discard" | "stopped";

export class Transmission {
  private phase: Phase = "header";
  private readonly headerScratch = Buffer.alloc(w.REQUEST_HEADER_BYTES);
  private headerFilled = 0;
  /** Chunks received and not yet parsed (more than one only while input is paused). */
  private readonly queue: Buffer[] = [];
  private queueAt = 0;
  private pumping = false;
  private inputPaused = false;
  /** A request that waits for room (TransmissionHost.admit); nothing after it is parsed meanwhile. */
  private parked: w.RequestHeader | undefined;
  /** When the last request arrived or the last one in flight was answered (the idle clock). */
  private lastRequestMs: number;
  /** The WRITE whose payload is being received. */
  private writeHeader: w.RequestHeader | undefined;
  private writeSlices: Buffer[] = [];
  private payloadLeft = 0;
  private discardLeft = 0;
  private requestsInFlight = 0;
  private bytesInFlight = 0;
  private discReceived = false;
  private connectionClosed = false;
  private exportClosed = false;
  private finished = false;

  constructor(
    private readonly n: Negotiated,
    private readonly host: TransmissionHost,
  ) {
    this.lastRequestMs = host.now();
  }

  get inFlight(): number {
    return this.requestsInFlight;
  }

  /** A request waits for room. */
  get waiting(): boolean {
    return this.parked !== undefined;
  }

  /** Since when no request has been in flight, waiting, or received; undefined while one is. */
  idleSinceMs(): number | undefined {
    return this.requestsInFlight === 0 && this.parked === undefined ? this.lastRequestMs : undefined;
  }

  feed(chunk: Buffer): void {
    if (this.phase === "stopped") return;
    this.queue.push(chunk);
    this.pump();
  }

  /** Parses queued input until it runs out or the in-flight limits say stop. */
  pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    try {
      this.parseQueued();
    } finally {
      this.pumping = false;
    }
  }

  /** Server shutdown began: refuse new requests, close once in-flight ones are answered. */
  onShutdown(): void {
    this.pump(); // a request waiting for room is answered ESHUTDOWN
    this.maybeFinish();
  }

  /** The socket closed: drop unparsed input; the Export closes once in-flight requests settle. */
  onConnectionClosed(): void {
    this.connectionClosed = true;
    this.phase = "stopped";
    this.parked = undefined;
    this.queue.length = 0;
    this.maybeCloseExport();
  }

  private parseQueued(): void {
    const parked = this.parked;
    if (parked !== undefined) {
      this.parked = undefined;
      this.onHeader(parked);
      if (this.parked !== undefined) return;
    }
    while (this.queue.length > 0) {
      const chunk = this.queue[0];
      assert(chunk !== undefined, "queue is non-empty");
      while (this.queueAt < chunk.length && this.phase !== "stopped") {
        this.queueAt = this.step(chunk, this.queueAt);
        if (this.parked !== undefined) return this.pauseInput();
      }
      this.queue.shift();
      this.queueAt = 0;
    }
    if (this.inputPaused) {
      this.inputPaused = false;
      this.host.resumeInput();
    }
  }

  /** Backpressure: the socket is not read while a request waits for room. */
  private pauseInput(): void {
    if (this.inputPaused) return;
    this.inputPaused = true;
    this.host.pauseInput();
  }

  /** A request starts only while the connection has a request slot and the host has room for its bytes. */
  private mayStart(bytes: number): boolean {
    return this.requestsInFlight < this.host.limits.requestsInFlightMax && this.host.admit(bytes);
  }

  private step(chunk: Buffer, at: number): number {
    switch (this.phase) {
      case "header":
        return this.stepHeader(chunk, at);
      case "payload":
        return this.stepPayload(chunk, at);
      case "discard": {
        const n = Math.min(this.discardLeft, chunk.length - at);
        this.discardLeft -= n;
        if (this.discardLeft === 0) {
          this.phase = "header";
          this.maybeFinish();
        }
        return at + n;
      }
      case "stopped":
        return chunk.length;
    }
  }

  private stepHeader(chunk: Buffer, at: number): number {
    if (this.headerFilled === 0 && chunk.length - at >= w.REQUEST_HEADER_BYTES) {
      this.onHeader(w.decodeRequestHeader(chunk, at));
      return at + w.REQUEST_HEADER_BYTES;
    }
    // The header straddles chunks: gather its 28 bytes (only the header is ever copied).
    const n = Math.min(w.REQUEST_HEADER_BYTES - this.headerFilled, chunk.length - at);
    chunk.copy(this.headerScratch, this.headerFilled, at, at + n);
    this.headerFilled += n;
    if (this.headerFilled === w.REQUEST_HEADER_BYTES) {
      this.headerFilled = 0;
      this.onHeader(w.decodeRequestHeader(this.headerScratch, 0));
    }
    return at + n;
  }

  private stepPayload(chunk: Buffer, at: number): number {
    const n = Math.min(this.payloadLeft, chunk.length - at);
    this.writeSlices.push(chunk.subarray(at, at + n));
    this.payloadLeft -= n;
    if (this.payloadLeft === 0) {
      const h = this.writeHeader;
      assert(h !== undefined, "payload belongs to a WRITE");
      const slices = this.writeSlices;
      this.writeHeader = undefined;
      this.writeSlices = [];
      this.phase = "header";
      this.doWrite(h, slices);
    }
    return at + n;
  }

  private onHeader(h: w.RequestHeader | undefined): void {
    if (h === undefined) return this.stop(false, "request with a bad magic");
    this.lastRequestMs = this.host.now();
    if (h.command === w.NBD_CMD_DISC) {
      // Spec "NBD_CMD_DISC": no reply; answer what is outstanding, then close. Later bytes are ignored.
      this.discReceived = true;
      this.phase = "stopped";
      this.maybeFinish();
      return;
    }
    const bad = validateRequest(h, this.n, this.host.limits, this.host.shuttingDown());
    // A refused request holds nothing but its reply, which the host counts once queued.
    if (!this.mayStart(bad === undefined ? reservedBytes(h) : nbdReplyBytesReserved)) {
      this.parked = h;
      return;
    }
    if (bad !== undefined) {
      this.refuse(h, bad);
      return this.maybeFinish();
    }
    this.requestsInFlight++;
    this.bytesInFlight += reservedBytes(h);
    this.host.hold(reservedBytes(h));
    if (h.command === w.NBD_CMD_WRITE) {
      this.writeHeader = h;
      this.payloadLeft = h.lengthBytes;
      this.phase = "payload";
      return;
    }
    this.dispatch(h);
  }

  /** Answers an invalid request; a refused WRITE's payload is skipped to stay in sync with the stream. */
  private refuse(h: w.RequestHeader, f: NbdFailure): void {
    this.replyError(h, f);
    if (h.command !== w.NBD_CMD_WRITE) return;
    if (h.lengthBytes > this.host.limits.writeDiscardBytesMax) {
      // Spec "Size constraints": a payload this large may be deemed a denial of service; hard disconnect.
      return this.stop(true, `WRITE payload of ${h.lengthBytes} bytes is too large to skip`);
    }
    this.discardLeft = h.lengthBytes;
    if (this.discardLeft > 0) this.phase = "discard";
  }

  private stop(graceful: boolean, reason: string): void {
    this.phase = "stopped";
    if (this.finished) return;
    this.finished = true;
    this.host.finish(graceful, reason);
  }

  private dispatch(h: w.RequestHeader): void {
    const exp = this.n.exp;
    const fua = (h.flags & w.NBD_CMD_FLAG_FUA) !== 0;
    switch (h.command) {
      case w.NBD_CMD_READ:
        return this.doRead(h);
      case w.NBD_CMD_FLUSH:
        return this.run(h, () => exp.flush());
      case w.NBD_CMD_TRIM:
        return this.run(h, () => exp.trim(h.offsetBytes, h.lengthBytes, fua));
      case w.NBD_CMD_WRITE_ZEROES: {
        const noHole = (h.flags & w.NBD_CMD_FLAG_NO_HOLE) !== 0;
        const fast = (h.flags & w.NBD_CMD_FLAG_FAST_ZERO) !== 0;
        return this.run(h, () => exp.writeZeroes(h.offsetBytes, h.lengthBytes, fua, noHole, fast));
      }
      case w.NBD_CMD_CACHE:
        // Spec "NBD_CMD_CACHE": success without caching is allowed.
        return this.run(h, () => exp.cache?.(h.offsetBytes, h.lengthBytes));
      case w.NBD_CMD_BLOCK_STATUS:
        return this.doBlockStatus(h);
      default:
        assert(false, `validated command ${h.command} has a handler`);
    }
  }

  /** Export.read may return the bytes synchronously: then no Promise is made at all. */
  private doRead(h: w.RequestHeader): void {
    let r: Buffer | Promise<Buffer>;
    try {
      r = this.n.exp.read(h.offsetBytes, h.lengthBytes);
    } catch (err) {
      return this.failed(h, err, "READ");
    }
    if (r instanceof Uint8Array) return this.readDone(h, r);
    r.then(
      (b) => this.readDone(h, b),
      (err: unknown) => this.failed(h, err, "READ"),
    );
  }

  private readDone(h: w.RequestHeader, data: Buffer): void {
    if (data.length !== h.lengthBytes) {
      return this.failed(h, new AssertionError(`Export.read returned ${data.length} bytes for ${h.lengthBytes}`), "READ");
    }
    // The Export gave us this buffer: it goes to the socket as is, after a small header.
    if (this.n.structured) {
      // One OFFSET_DATA chunk marked DONE: the data is complete, no error can follow (spec "NBD_CMD_READ").
      this.host.send(w.encodeOffsetDataHeader(h.cookie, h.offsetBytes, data.length, true));
    } else {
      this.host.send(w.encodeSimpleReply(0, h.cookie));
    }
    const exp = this.n.exp;
    this.host.send(data, exp.release ? () => exp.release!(data) : undefined);
    this.settle(h);
  }

  private doWrite(h: w.RequestHeader, slices: Buffer[]): void {
    const fua = (h.flags & w.NBD_CMD_FLAG_FUA) !== 0;
    this.run(h, () => this.n.exp.write(h.offsetBytes, slices, h.lengthBytes, fua));
  }

  /** Runs an operation without a reply payload; a synchronous throw is answered like a rejection. */
  private run(h: w.RequestHeader, op: () => Promise<void> | undefined): void {
    let p: Promise<void> | undefined;
    try {
      p = op();
    } catch (err) {
      return this.failed(h, err, w.commandName(h.command));
    }
    if (p === undefined) return this.succeeded(h);
    p.then(
      () => this.succeeded(h),
      (err: unknown) => this.failed(h, err, w.commandName(h.command)),
    );
  }

  /** Spec "Structured reply chunk message": non-READ success MAY use a simple reply; it is 4 bytes shorter. */
  private succeeded(h: w.RequestHeader): void {
    this.host.send(w.encodeSimpleReply(0, h.cookie));
    this.settle(h);
  }

  /** A BackendError is answered with its errno; anything else an Export throws is a bug and ends the process. */
  private failed(h: w.RequestHeader, err: unknown, what: string): void {
    this.replyError(h, nbdFailureOf(err, `nbd ${this.host.peer}: ${what} of ${h.lengthBytes} bytes at ${h.offsetBytes}`));
    this.settle(h);
  }

  /** Structured replies carry errors with a message (the spec's preference); else a simple reply. */
  private replyError(h: w.RequestHeader, f: NbdFailure): void {
    if (this.n.structured) this.host.send(w.encodeStructuredError(h.cookie, f.errno, f.message));
    else this.host.send(w.encodeSimpleReply(f.errno, h.cookie));
  }

  /**
   * Spec "NBD_REPLY_TYPE_BLOCK_STATUS": one chunk for base:allocation whose
   * extents start at the offset, lie within the request (so each length fits
   * u32), merge equal neighbours, and number one with REQ_ONE.
   */
  private doBlockStatus(h: w.RequestHeader): void {
    let r: AllocationExtent[] | Promise<AllocationExtent[]>;
    try {
      r = this.n.exp.blockStatus(h.offsetBytes, h.lengthBytes);
    } catch (err) {
      return this.failed(h, err, "BLOCK_STATUS");
    }
    if (Array.isArray(r)) return this.blockStatusDone(h, r);
    r.then(
      (extents) => this.blockStatusDone(h, extents),
      (err: unknown) => this.failed(h, err, "BLOCK_STATUS"),
    );
  }

  private blockStatusDone(h: w.RequestHeader, extents: readonly AllocationExtent[]): void {
    const max = (h.flags & w.NBD_CMD_FLAG_REQ_ONE) !== 0 ? 1 : this.host.limits.blockStatusExtentsMax;
    const lengths: number[] = [];
    const flags: number[] = [];
    let covered = 0;
    for (const e of extents) {
      if (covered >= h.lengthBytes) break;
      if (!Number.isSafeInteger(e.lengthBytes) || e.lengthBytes <= 0) {
        return this.failed(h, new AssertionError(`Export.blockStatus returned an extent of ${e.lengthBytes} bytes`), "BLOCK_STATUS");
      }
      const len = Math.min(e.lengthBytes, h.lengthBytes - covered);
      const f = e.hole ? w.NBD_STATE_HOLE | w.NBD_STATE_ZERO : 0;
      const last = lengths.length - 1;
      if (last >= 0 && flags[last] === f) lengths[last] = (lengths[last] ?? 0) + len;
      else if (lengths.length < max) {
        lengths.push(len);
        flags.push(f);
      } else break;
      covered += len;
    }
    if (lengths.length === 0) return this.failed(h, new AssertionError("Export.blockStatus returned no extents"), "BLOCK_STATUS");
    this.host.send(w.encodeBlockStatus(h.cookie, w.BASE_ALLOCATION_ID, lengths, flags));
    this.settle(h);
  }

  /** The reply is queued: the request's reservation ends (the host counts the queued reply itself). */
  private settle(h: w.RequestHeader): void {
    const bytes = reservedBytes(h);
    this.requestsInFlight--;
    this.bytesInFlight -= bytes;
    assert(this.requestsInFlight >= 0 && this.bytesInFlight >= 0, "in-flight accounting balances");
    this.host.hold(-bytes);
    if (this.requestsInFlight === 0) this.lastRequestMs = this.host.now();
    if (this.inputPaused) this.pump();
    this.maybeFinish();
    this.maybeCloseExport();
  }

  /** After DISC or during shutdown, close once every in-flight request is answered. */
  private maybeFinish(): void {
    if (this.requestsInFlight !== 0 || this.connectionClosed) return;
    if (this.discReceived) this.stop(true, "client sent NBD_CMD_DISC");
    else if (this.host.shuttingDown() && this.phase === "header" && this.headerFilled === 0 && this.parked === undefined) this.stop(true, "server shutting down");
  }

  private maybeCloseExport(): void {
    if (!this.connectionClosed || this.requestsInFlight !== 0 || this.exportClosed) return;
    this.exportClosed = true;
    this.n.exp.close?.();
  }
}
