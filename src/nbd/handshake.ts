// The fixed newstyle handshake (NBD spec "Newstyle negotiation", "Fixed
// newstyle negotiation", "Option types") as a state machine over bytes. It
// never allocates from a length the client sent before that length is checked
// against a limit, and it opens an Export only once an option names one
// (INFO, GO, EXPORT_NAME): a client that never gets that far costs nothing.

import { assert } from "../base/assert.js";
import type { Export, ExportRefusal, ExportRegistry, NbdClient } from "./backend.js";
import type { NbdLimits, NbdTlsPolicy } from "./ports.js";
import * as w from "./wire.js";

/** What the handshake settled; the transmission phase serves exactly this. */
export interface Negotiated {
  readonly exp: Export;
  readonly structured: boolean;
  /** base:allocation was selected for this export (spec "NBD_OPT_SET_META_CONTEXT"). */
  readonly metaAllocation: boolean;
  readonly transmissionFlags: number;
}

export type HandshakeStep =
  | { kind: "more" }
  /** End the session; `graceful` sends queued replies first (after ABORT). */
  | { kind: "close"; reason: string; graceful: boolean }
  /** Enter transmission; bytes of `chunk` from `restAt` on are transmission-phase bytes. */
  | { kind: "go"; negotiated: Negotiated; restAt: number }
  /**
   * The registry is catching up: hold the bytes of `chunk` from `restAt` on,
   * read nothing more, and once `until` settles call resume() and go on
   * feeding the held bytes.
   */
  | { kind: "wait"; until: Promise<void>; restAt: number }
  /**
   * NBD_OPT_STARTTLS was acknowledged: once the ACK is written, upgrade the
   * connection and call secured(); bytes of `chunk` from `restAt` on came in
   * plaintext after the option and must not be read (spec "FORCEDTLS mode":
   * all further data is sent and received over TLS).
   */
  | { kind: "starttls"; restAt: number };

export interface HandshakeHost {
  readonly registry: ExportRegistry;
  readonly limits: NbdLimits;
  /** What this connection offers for STARTTLS; absent: off. */
  readonly tls?: NbdTlsPolicy;
  /** The connection came through the local Unix socket. */
  readonly local: boolean;
  send(b: Buffer): void;
}

/** Transmission flags for an export (spec "Transmission flags"). */
export function transmissionFlagsFor(exp: Export, structured: boolean): number {
  // CAN_MULTI_CONN: an Export acknowledges a write only when it is durable
  // (DESIGN.md section 2), so there is no per-connection cache and FLUSH/FUA
  // on any connection trivially covers writes acknowledged on every other.
  let f = w.NBD_FLAG_HAS_FLAGS | w.NBD_FLAG_SEND_FLUSH | w.NBD_FLAG_CAN_MULTI_CONN | w.NBD_FLAG_SEND_CACHE;
  // SEND_DF MUST stay clear unless structured replies were negotiated.
  if (structured) f |= w.NBD_FLAG_SEND_DF;
  if (exp.readOnly) f |= w.NBD_FLAG_READ_ONLY;
  else f |= w.NBD_FLAG_SEND_FUA | w.NBD_FLAG_SEND_TRIM | w.NBD_FLAG_SEND_WRITE_ZEROES | w.NBD_FLAG_SEND_FAST_ZERO;
  return f;
}

/** Checks what an Export promises against the spec's "Size constraints"; a violation is a backend bug. */
function assertExportSane(exp: Export, limits: NbdLimits): void {
  const isPow2 = (n: number): boolean => Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
  assert(Number.isSafeInteger(exp.sizeBytes) && exp.sizeBytes >= 0, `export ${exp.name}: size ${exp.sizeBytes} is not a byte count`);
  assert(isPow2(exp.blockBytesMin) && exp.blockBytesMin <= 65536, `export ${exp.name}: minimum block must be a power of 2 <= 2^16`);
  assert(
    isPow2(exp.blockBytesPreferred) && exp.blockBytesPreferred >= Math.max(exp.blockBytesMin, 512),
    `export ${exp.name}: preferred block must be a power of 2 >= max(minimum, 512)`,
  );
  assert(limits.payloadBytesMax >= exp.blockBytesPreferred, `export ${exp.name}: max payload below preferred block`);
}

type State = "flags" | "header" | "data" | "discard" | "done";
type OptionReply = { type: number; message: string };

export class Handshake {
  private state: State = "flags";
  /** Scratch for the fixed-size client flags and option headers. */
  private readonly scratch = Buffer.alloc(w.OPTION_HEADER_BYTES);
  private scratchFilled = 0;
  private data: Buffer | undefined;
  private dataFilled = 0;
  private discardLeft = 0;
  private option = 0;
  private optionsSeen = 0;
  private noZeroes = false;
  private structured = false;
  /** The last NBD_OPT_SET_META_CONTEXT: which export it named and whether base:allocation was selected. */
  private meta = { exportName: "", allocation: false };
  /** The registry was asked to catch up (once per connection). */
  private caughtUp = false;
  /** The option data that waits for the registry to catch up. */
  private held: Buffer | undefined;
  /** TLS runs on this connection (after STARTTLS and a completed TLS handshake). */
  private secure = false;
  /** Who the client proved to be over TLS. */
  private identity: string | undefined;

  constructor(private readonly host: HandshakeHost) {}

  /** The first bytes the server sends (spec "Newstyle negotiation"). */
  greeting(): Buffer {
    return w.encodeServerGreeting();
  }

  /** Consumes bytes from chunk[at..]; stops at the first step that is not "more". */
  feed(chunk: Buffer, at: number): HandshakeStep {
    let pos = at;
    while (pos < chunk.length) {
      const before = pos;
      const step = this.consume(chunk, pos);
      pos = step.pos;
      if (step.result.kind !== "more") {
        return step.result.kind === "go" || step.result.kind === "wait" || step.result.kind === "starttls" ? { ...step.result, restAt: pos } : step.result;
      }
      assert(pos > before, "handshake makes progress");
    }
    return { kind: "more" };
  }

  /** The TLS handshake after a "starttls" step completed: options go on, over TLS. */
  secured(identity: string | undefined): void {
    assert(!this.secure && this.state === "header", "secured follows a starttls step");
    this.secure = true;
    this.identity = identity;
  }

  private get client(): NbdClient {
    return { identity: this.identity, local: this.host.local };
  }

  /** After a "wait" settled: answers the held option from what the registry knows now. */
  resume(): HandshakeStep {
    const data = this.held;
    assert(data !== undefined, "resume follows a wait");
    this.held = undefined;
    return this.dispatchOption(data);
  }

  private consume(chunk: Buffer, pos: number): { pos: number; result: HandshakeStep } {
    switch (this.state) {
      case "flags":
      case "header":
        return this.fillScratch(chunk, pos);
      case "data":
        return this.fillData(chunk, pos);
      case "discard": {
        const n = Math.min(this.discardLeft, chunk.length - pos);
        this.discardLeft -= n;
        if (this.discardLeft === 0) this.state = "header";
        return { pos: pos + n, result: more };
      }
      case "done":
        return { pos: chunk.length, result: more };
    }
  }

  private fillScratch(chunk: Buffer, pos: number): { pos: number; result: HandshakeStep } {
    const need = this.state === "flags" ? w.CLIENT_FLAGS_BYTES : w.OPTION_HEADER_BYTES;
    const n = Math.min(need - this.scratchFilled, chunk.length - pos);
    chunk.copy(this.scratch, this.scratchFilled, pos, pos + n);
    this.scratchFilled += n;
    if (this.scratchFilled < need) return { pos: pos + n, result: more };
    this.scratchFilled = 0;
    const result = this.state === "flags" ? this.onClientFlags() : this.onOptionHeader();
    if (result.kind === "more" && this.state === "data" && this.data?.length === 0) {
      return { pos: pos + n, result: this.onOptionData() };
    }
    return { pos: pos + n, result };
  }

  private fillData(chunk: Buffer, pos: number): { pos: number; result: HandshakeStep } {
    const data = this.data;
    assert(data !== undefined, "option data buffer exists in data state");
    const n = Math.min(data.length - this.dataFilled, chunk.length - pos);
    chunk.copy(data, this.dataFilled, pos, pos + n);
    this.dataFilled += n;
    if (this.dataFilled < data.length) return { pos: pos + n, result: more };
    return { pos: pos + n, result: this.onOptionData() };
  }

  /** Spec "Client flags": the server MUST drop the connection on an unknown flag. */
  private onClientFlags(): HandshakeStep {
    const flags = this.scratch.readUInt32BE(0);
    if ((flags & ~w.CLIENT_FLAGS_KNOWN) !== 0) return close(`unknown client flags 0x${flags.toString(16)}`);
    // A client without NBD_FLAG_C_FIXED_NEWSTYLE is still served fixed newstyle (spec: servers MAY).
    this.noZeroes = (flags & w.NBD_FLAG_C_NO_ZEROES) !== 0;
    this.state = "header";
    return more;
  }

  private onOptionHeader(): HandshakeStep {
    const s = this.scratch;
    if (s.readUInt32BE(0) !== w.IHAVEOPT_HI || s.readUInt32BE(4) !== w.IHAVEOPT_LO) return close("option without IHAVEOPT magic");
    this.optionsSeen++;
    if (this.optionsSeen > this.host.limits.handshakeOptionsMax) return close("too many options in one handshake");
    this.option = s.readUInt32BE(8);
    const length = s.readUInt32BE(12);
    if (length <= this.host.limits.optionBytesMax) {
      // Bounded above: this is the only allocation sized by the client.
      this.data = Buffer.allocUnsafe(length);
      this.dataFilled = 0;
      this.state = "data";
      return more;
    }
    return this.onOversizedOption(length);
  }

  /**
   * An option longer than anything pxd accepts: NBD_REP_ERR_TOO_BIG ("the
   * request is too large to process") and skip its data without storing it; a
   * length past the discard limit is treated as denial of service and ends the
   * session (spec "Termination of the session during option haggling").
   */
  private onOversizedOption(length: number): HandshakeStep {
    if (this.option === w.NBD_OPT_EXPORT_NAME) return close(`NBD_OPT_EXPORT_NAME of ${length} bytes`);
    this.reply(w.NBD_REP_ERR_TOO_BIG, `option data of ${length} bytes exceeds ${this.host.limits.optionBytesMax}`);
    if (length > this.host.limits.optionDiscardBytesMax) return { kind: "close", reason: `option of ${length} bytes`, graceful: true };
    this.discardLeft = length;
    this.state = "discard";
    return more;
  }

  private onOptionData(): HandshakeStep {
    const data = this.data;
    assert(data !== undefined, "option data complete");
    this.data = undefined;
    this.state = "header";
    return this.dispatchOption(data);
  }

  private dispatchOption(data: Buffer): HandshakeStep {
    const tlsFirst = this.tlsRequiredFirst();
    if (tlsFirst !== undefined) return tlsFirst;
    const wait = this.catchUpFor(data);
    if (wait !== undefined) return wait;
    switch (this.option) {
      case w.NBD_OPT_EXPORT_NAME:
        return this.optExportName(data);
      case w.NBD_OPT_ABORT:
        // Spec "NBD_OPT_ABORT": reply ACK (ignoring any data), then the client drops the connection.
        this.reply(w.NBD_REP_ACK);
        this.state = "done";
        return { kind: "close", reason: "client aborted the handshake", graceful: true };
      case w.NBD_OPT_LIST:
        return this.answer(this.optList(data));
      case w.NBD_OPT_INFO:
      case w.NBD_OPT_GO:
        return this.optInfoGo(data);
      case w.NBD_OPT_STRUCTURED_REPLY:
        return this.answer(this.optStructuredReply(data));
      case w.NBD_OPT_LIST_META_CONTEXT:
      case w.NBD_OPT_SET_META_CONTEXT:
        return this.answer(this.optMetaContext(data));
      case w.NBD_OPT_STARTTLS:
        return this.optStartTls(data);
      default:
        return this.answer({ type: w.NBD_REP_ERR_UNSUP, message: `option ${this.option} is not supported` });
    }
  }

  /**
   * Spec "FORCEDTLS mode": before TLS, every option but STARTTLS and ABORT is
   * refused with NBD_REP_ERR_TLS_REQD, and EXPORT_NAME, which cannot fail,
   * ends the session. Checked before anything else, so a client that has not
   * upgraded learns nothing and makes the registry do nothing.
   */
  private tlsRequiredFirst(): HandshakeStep | undefined {
    if (this.host.tls !== "required" || this.secure) return undefined;
    if (this.option === w.NBD_OPT_STARTTLS || this.option === w.NBD_OPT_ABORT) return undefined;
    if (this.option === w.NBD_OPT_EXPORT_NAME) return close("NBD_OPT_EXPORT_NAME before STARTTLS on a server that requires TLS");
    return this.answer({ type: w.NBD_REP_ERR_TLS_REQD, message: "this server requires TLS: send NBD_OPT_STARTTLS first (nbds:// with libnbd, -x with nbd-client)" });
  }

  /** Spec "NBD_OPT_STARTTLS": no data; ACK, then the TLS handshake; never twice, never on a server without TLS. */
  private optStartTls(data: Buffer): HandshakeStep {
    if (this.host.tls === undefined || this.host.tls === "off") {
      return this.answer({ type: w.NBD_REP_ERR_POLICY, message: "TLS is off on this server (pxd daemon --nbd-tls on|require turns it on)" });
    }
    if (this.secure) return this.answer({ type: w.NBD_REP_ERR_INVALID, message: "TLS is already running on this connection" });
    if (data.length !== 0) return this.answer({ type: w.NBD_REP_ERR_INVALID, message: "NBD_OPT_STARTTLS carries no data" });
    this.reply(w.NBD_REP_ACK);
    return { kind: "starttls", restAt: 0 };
  }

  /**
   * Before an option that lists exports or names one the registry does not
   * know, lets the registry catch up once (ExportRegistry.catchUp). Malformed
   * data is answered at once by the option's own parser.
   */
  private catchUpFor(data: Buffer): HandshakeStep | undefined {
    const registry = this.host.registry;
    if (this.caughtUp || registry.catchUp === undefined) return undefined;
    let name: string | undefined;
    switch (this.option) {
      case w.NBD_OPT_LIST:
        name = undefined;
        break;
      case w.NBD_OPT_EXPORT_NAME:
        if (data.length > this.host.limits.stringBytesMax) return undefined;
        name = data.toString("utf8");
        break;
      case w.NBD_OPT_INFO:
      case w.NBD_OPT_GO: {
        const req = parseInfoRequest(data, this.host.limits.stringBytesMax);
        if ("type" in req) return undefined;
        name = req.name;
        break;
      }
      default:
        return undefined;
    }
    const until = registry.catchUp(name);
    if (until === undefined) return undefined;
    this.caughtUp = true;
    this.held = data;
    return { kind: "wait", until, restAt: 0 };
  }

  /** Spec "NBD_OPT_EXPORT_NAME": no error reply exists, so any failure terminates the session. */
  private optExportName(data: Buffer): HandshakeStep {
    if (data.length > this.host.limits.stringBytesMax) return close("export name longer than 4096 bytes");
    const name = data.toString("utf8");
    const exp = this.openExport(name);
    if (exp === undefined) return close(`NBD_OPT_EXPORT_NAME for unknown export "${name}"`);
    if ("refused" in exp) return close(`NBD_OPT_EXPORT_NAME for export "${name}", refused: ${exp.refused}`);
    const n = this.negotiate(exp, name);
    this.host.send(w.encodeExportNameReply(exp.sizeBytes, n.transmissionFlags, this.noZeroes));
    this.state = "done";
    return { kind: "go", negotiated: n, restAt: 0 };
  }

  /** Spec "NBD_OPT_LIST": no data allowed; one NBD_REP_SERVER per export, then ACK. */
  private optList(data: Buffer): OptionReply | undefined {
    if (data.length !== 0) return { type: w.NBD_REP_ERR_INVALID, message: "NBD_OPT_LIST carries no data" };
    for (const e of this.host.registry.list(this.client)) {
      this.host.send(w.encodeOptionReply(w.NBD_OPT_LIST, w.NBD_REP_SERVER, w.encodeRepServer(e.name, e.description)));
    }
    return undefined;
  }

  private optStructuredReply(data: Buffer): OptionReply | undefined {
    if (data.length !== 0) return { type: w.NBD_REP_ERR_INVALID, message: "NBD_OPT_STRUCTURED_REPLY carries no data" };
    this.structured = true;
    return undefined;
  }

  /** Spec "NBD_OPT_INFO and NBD_OPT_GO". */
  private optInfoGo(data: Buffer): HandshakeStep {
    const req = parseInfoRequest(data, this.host.limits.stringBytesMax);
    if ("type" in req) return this.answer(req);
    const exp = this.openExport(req.name);
    if (exp === undefined) return this.answer({ type: w.NBD_REP_ERR_UNKNOWN, message: `no export named "${req.name}"` });
    // Spec "NBD_REP_ERR_POLICY": the server is unwilling to export it; the message says why.
    if ("refused" in exp) return this.answer({ type: w.NBD_REP_ERR_POLICY, message: exp.refused });
    const n = this.negotiate(exp, req.name);
    this.sendInfos(exp, n.transmissionFlags, req.infos);
    this.reply(w.NBD_REP_ACK);
    if (this.option === w.NBD_OPT_INFO) {
      exp.close?.();
      return more;
    }
    this.state = "done";
    return { kind: "go", negotiated: n, restAt: 0 };
  }

  private sendInfos(exp: Export, flags: number, requested: readonly number[]): void {
    const option = this.option;
    const info = (b: Buffer): void => this.host.send(w.encodeOptionReply(option, w.NBD_REP_INFO, b));
    info(w.encodeInfoExport(exp.sizeBytes, flags));
    if (requested.includes(w.NBD_INFO_NAME)) info(w.encodeInfoString(w.NBD_INFO_NAME, exp.name));
    if (requested.includes(w.NBD_INFO_DESCRIPTION) && exp.description !== "") {
      info(w.encodeInfoString(w.NBD_INFO_DESCRIPTION, w.utf8Prefix(exp.description, this.host.limits.stringBytesMax).toString("utf8")));
    }
    // Always sent: clients that did not ask may ignore it, and it tells the
    // ones that did what pxd will enforce (spec "Size constraints").
    info(w.encodeInfoBlockSize(exp.blockBytesMin, exp.blockBytesPreferred, this.host.limits.payloadBytesMax));
  }

  /** Spec "NBD_OPT_LIST_META_CONTEXT" / "NBD_OPT_SET_META_CONTEXT", base:allocation only. */
  private optMetaContext(data: Buffer): OptionReply | undefined {
    const isSet = this.option === w.NBD_OPT_SET_META_CONTEXT;
    // SET replaces the previous selection even when it fails.
    if (isSet) this.meta = { exportName: "", allocation: false };
    if (!this.structured) return { type: w.NBD_REP_ERR_INVALID, message: "negotiate NBD_OPT_STRUCTURED_REPLY first" };
    const req = parseMetaRequest(data, this.host.limits);
    if ("type" in req) return req;
    const selected = matchAllocation(req.queries, isSet);
    if ("type" in selected) return selected;
    if (selected.match) {
      this.host.send(w.encodeOptionReply(this.option, w.NBD_REP_META_CONTEXT, w.encodeMetaContext(isSet ? w.BASE_ALLOCATION_ID : 0, w.BASE_ALLOCATION)));
    }
    if (isSet) this.meta = { exportName: req.name, allocation: selected.match };
    return undefined;
  }

  private openExport(requestedName: string): Export | ExportRefusal | undefined {
    const name = requestedName === "" ? this.host.registry.defaultName() : requestedName;
    if (name === undefined) return undefined;
    const exp = this.host.registry.open(name, this.client);
    if (exp !== undefined && !("refused" in exp)) assertExportSane(exp, this.host.limits);
    return exp;
  }

  private negotiate(exp: Export, requestedName: string): Negotiated {
    return {
      exp,
      structured: this.structured,
      metaAllocation: this.structured && this.meta.allocation && this.meta.exportName === requestedName,
      transmissionFlags: transmissionFlagsFor(exp, this.structured),
    };
  }

  /** Sends the final reply of an option: ACK, or the error it chose. */
  private answer(r: OptionReply | undefined): HandshakeStep {
    if (r === undefined) this.reply(w.NBD_REP_ACK);
    else this.reply(r.type, r.message);
    return more;
  }

  private reply(type: number, message?: string): void {
    const data = message === undefined ? undefined : w.utf8Prefix(message, this.host.limits.stringBytesMax);
    this.host.send(w.encodeOptionReply(this.option, type, data));
  }
}

const more: HandshakeStep = { kind: "more" };

function close(reason: string): HandshakeStep {
  return { kind: "close", reason, graceful: false };
}

/** INFO/GO data: u32 name length, name, u16 count, count x u16 info types; all within the option length. */
export function parseInfoRequest(data: Buffer, stringBytesMax: number): { name: string; infos: number[] } | OptionReply {
  const invalid = (message: string): OptionReply => ({ type: w.NBD_REP_ERR_INVALID, message });
  if (data.length < 6) return invalid("NBD_OPT_INFO/GO data shorter than 6 bytes");
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > data.length - 6) return invalid("export name length runs past the option data");
  if (nameBytes > stringBytesMax) return invalid("export name longer than 4096 bytes");
  const count = data.readUInt16BE(4 + nameBytes);
  // Exact: count x 2 bytes must be what is left, so a huge count is refused before any loop runs.
  if (6 + nameBytes + 2 * count !== data.length) return invalid(`${count} information requests do not match the option length`);
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(6 + nameBytes + 2 * i));
  return { name: data.toString("utf8", 4, 4 + nameBytes), infos };
}

/** META_CONTEXT data: u32 name length, name, u32 query count, then (u32 length, query) each. */
export function parseMetaRequest(data: Buffer, limits: NbdLimits): { name: string; queries: string[] } | OptionReply {
  const invalid = (message: string): OptionReply => ({ type: w.NBD_REP_ERR_INVALID, message });
  if (data.length < 8) return invalid("meta context data shorter than 8 bytes");
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > data.length - 8) return invalid("export name length runs past the option data");
  if (nameBytes > limits.stringBytesMax) return invalid("export name longer than 4096 bytes");
  const count = data.readUInt32BE(4 + nameBytes);
  let at = 8 + nameBytes;
  // Each query takes at least its 4-byte length, so a count the data cannot hold is refused up front.
  if (count > (data.length - at) / 4) return invalid(`${count} queries do not fit in the option data`);
  if (count > limits.metaQueriesMax) return { type: w.NBD_REP_ERR_TOO_BIG, message: `more than ${limits.metaQueriesMax} queries` };
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (data.length - at < 4) return invalid("query length runs past the option data");
    const qBytes = data.readUInt32BE(at);
    at += 4;
    if (qBytes > data.length - at) return invalid("query runs past the option data");
    if (qBytes > limits.stringBytesMax) return invalid("query longer than 4096 bytes");
    queries.push(data.toString("utf8", at, at + qBytes));
    at += qBytes;
  }
  if (at !== data.length) return invalid("trailing bytes after the queries");
  return { name: data.toString("utf8", 4, 4 + nameBytes), queries };
}

/**
 * Spec "The base: metadata namespace": LIST with no queries lists everything;
 * "base:" is a wildcard for LIST and ignored by SET; unknown namespaces and
 * leaf names are ignored; a query without a namespace colon is invalid.
 */
function matchAllocation(queries: readonly string[], isSet: boolean): { match: boolean } | OptionReply {
  if (queries.length === 0) return { match: !isSet };
  let match = false;
  for (const q of queries) {
    if (!q.includes(":")) return { type: w.NBD_REP_ERR_INVALID, message: `query "${q}" has no namespace` };
    if (q === w.BASE_ALLOCATION || (!isSet && q === "base:")) match = true;
  }
  return { match };
}
