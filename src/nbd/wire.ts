// Every NBD wire constant and codec, in one place (STYLE.md, nbdkit section).
// All integers on the wire are big-endian (NBD spec, "Conventions": literal
// numbers "are always sent in big-endian network byte order"); every read and
// write below uses the BE accessors, so no other file needs to care.

// ---- Handshake magics (spec "Newstyle negotiation") ----
/** "NBDMAGIC" */
export const NBDMAGIC_HI = 0x4e42444d;
export const NBDMAGIC_LO = 0x41474943;
/** "IHAVEOPT": sent by the server after NBDMAGIC and by the client before every option. */
export const IHAVEOPT_HI = 0x49484156;
export const IHAVEOPT_LO = 0x454f5054;
/** Option reply magic 0x3e889045565a9 (spec "Fixed newstyle negotiation"). */
export const OPTION_REPLY_MAGIC_HI = 0x0003e889;
export const OPTION_REPLY_MAGIC_LO = 0x045565a9;

// ---- Handshake flags (spec "Handshake flags", 16 bits) ----
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;

// ---- Client flags (spec "Client flags", 32 bits) ----
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;
export const CLIENT_FLAGS_KNOWN = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;

// ---- Transmission flags (spec "Transmission flags", 16 bits) ----
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// ---- Options (spec "Option types") ----
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;

// ---- Option replies (spec "Option reply types"); errors have bit 31 set ----
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
export const NBD_REP_ERR_UNSUP = 0x80000001;
export const NBD_REP_ERR_POLICY = 0x80000002;
export const NBD_REP_ERR_INVALID = 0x80000003;
export const NBD_REP_ERR_PLATFORM = 0x80000004;
export const NBD_REP_ERR_TLS_REQD = 0x80000005;
export const NBD_REP_ERR_UNKNOWN = 0x80000006;
export const NBD_REP_ERR_SHUTDOWN = 0x80000007;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = 0x80000008;
export const NBD_REP_ERR_TOO_BIG = 0x80000009;

// ---- Info types (spec "NBD_REP_INFO") ----
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// ---- Transmission magics (spec "Request message", "Simple reply message", "Structured reply chunk message") ----
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// ---- Commands (spec "Request types") ----
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

// ---- Command flags (spec "Command flags", 16 bits) ----
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

// ---- Structured replies (spec "Structured reply flags" and "Structured reply types") ----
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = 0x8001;
export const NBD_REPLY_TYPE_ERROR_OFFSET = 0x8002;

// ---- base:allocation (spec "base:allocation metadata context") ----
export const BASE_ALLOCATION = "base:allocation";
/** The id pxd gives base:allocation in NBD_REP_META_CONTEXT; the only context it has. */
export const BASE_ALLOCATION_ID = 1;
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;

// ---- Errors (spec "Error values") ----
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

// ---- Sizes of fixed wire records ----
/** NBDMAGIC + IHAVEOPT + handshake flags. */
export const SERVER_GREETING_BYTES = 18;
export const CLIENT_FLAGS_BYTES = 4;
/** IHAVEOPT + option + length. */
export const OPTION_HEADER_BYTES = 16;
/** magic + option + reply type + length. */
export const OPTION_REPLY_HEADER_BYTES = 20;
/** size + transmission flags, then 124 zero bytes unless NO_ZEROES (spec "Newstyle negotiation"). */
export const EXPORT_NAME_REPLY_BYTES = 10;
export const EXPORT_NAME_ZEROES_BYTES = 124;
/** magic + flags + type + cookie + offset + length. */
export const REQUEST_HEADER_BYTES = 28;
export const SIMPLE_REPLY_BYTES = 16;
export const STRUCTURED_HEADER_BYTES = 20;
export const BLOCK_STATUS_DESCRIPTOR_BYTES = 8;
export const U32_MAX = 0xffffffff;
/** 2^32, to join a 64-bit value from two u32 halves. */
const TWO_32 = 0x1_0000_0000;

// ---- Encoders: each returns a fresh buffer the caller may hand to the socket ----

export function encodeServerGreeting(): Buffer {
  const b = Buffer.allocUnsafe(SERVER_GREETING_BYTES);
  b.writeUInt32BE(NBDMAGIC_HI, 0);
  b.writeUInt32BE(NBDMAGIC_LO, 4);
  b.writeUInt32BE(IHAVEOPT_HI, 8);
  b.writeUInt32BE(IHAVEOPT_LO, 12);
  b.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
  return b;
}

export function encodeOptionReply(option: number, replyType: number, data?: Buffer): Buffer {
  const dataBytes = data?.length ?? 0;
  const b = Buffer.allocUnsafe(OPTION_REPLY_HEADER_BYTES + dataBytes);
  b.writeUInt32BE(OPTION_REPLY_MAGIC_HI, 0);
  b.writeUInt32BE(OPTION_REPLY_MAGIC_LO, 4);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(replyType >>> 0, 12);
  b.writeUInt32BE(dataBytes, 16);
  if (data) data.copy(b, OPTION_REPLY_HEADER_BYTES);
  return b;
}

/** NBD_REP_SERVER data: name length, name, then the human description. */
export function encodeRepServer(name: string, description: string): Buffer {
  const nameBytes = Buffer.from(name, "utf8");
  const descBytes = Buffer.from(description, "utf8");
  const b = Buffer.allocUnsafe(4 + nameBytes.length + descBytes.length);
  b.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(b, 4);
  descBytes.copy(b, 4 + nameBytes.length);
  return b;
}

export function encodeInfoExport(sizeBytes: number, transmissionFlags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(NBD_INFO_EXPORT, 0);
  writeU64(b, 2, sizeBytes);
  b.writeUInt16BE(transmissionFlags, 10);
  return b;
}

/** NBD_INFO_NAME and NBD_INFO_DESCRIPTION share a layout: type, then the string. */
export function encodeInfoString(infoType: number, text: string): Buffer {
  const t = Buffer.from(text, "utf8");
  const b = Buffer.allocUnsafe(2 + t.length);
  b.writeUInt16BE(infoType, 0);
  t.copy(b, 2);
  return b;
}

export function encodeInfoBlockSize(minBytes: number, preferredBytes: number, payloadBytesMax: number): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(minBytes, 2);
  b.writeUInt32BE(preferredBytes, 6);
  b.writeUInt32BE(payloadBytesMax, 10);
  return b;
}

export function encodeMetaContext(contextId: number, name: string): Buffer {
  const n = Buffer.from(name, "utf8");
  const b = Buffer.allocUnsafe(4 + n.length);
  b.writeUInt32BE(contextId, 0);
  n.copy(b, 4);
  return b;
}

/** Reply to NBD_OPT_EXPORT_NAME: size, flags and (unless NO_ZEROES) 124 zero bytes. */
export function encodeExportNameReply(sizeBytes: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(EXPORT_NAME_REPLY_BYTES + (noZeroes ? 0 : EXPORT_NAME_ZEROES_BYTES));
  writeU64(b, 0, sizeBytes);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

/** A request cookie kept as two u32 halves: opaque, echoed back, never a BigInt. */
export interface Cookie {
  hi: number;
  lo: number;
}

export function encodeSimpleReply(errno: number, cookie: Cookie): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_BYTES);
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(errno, 4);
  b.writeUInt32BE(cookie.hi, 8);
  b.writeUInt32BE(cookie.lo, 12);
  return b;
}

function writeStructuredHeader(b: Buffer, flags: number, type: number, cookie: Cookie, payloadBytes: number): void {
  b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeUInt32BE(cookie.hi, 8);
  b.writeUInt32BE(cookie.lo, 12);
  b.writeUInt32BE(payloadBytes, 16);
}

/** The header and offset of an OFFSET_DATA chunk; the data itself follows as its own buffer (no copy). */
export function encodeOffsetDataHeader(cookie: Cookie, offsetBytes: number, dataBytes: number, done: boolean): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_BYTES + 8);
  writeStructuredHeader(b, done ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_OFFSET_DATA, cookie, 8 + dataBytes);
  writeU64(b, STRUCTURED_HEADER_BYTES, offsetBytes);
  return b;
}

/** NBD_REPLY_TYPE_ERROR, always final; the message is cut to the spec's 4096-byte string limit. */
export function encodeStructuredError(cookie: Cookie, errno: number, message: string): Buffer {
  const m = utf8Prefix(message, 4096);
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_BYTES + 6 + m.length);
  writeStructuredHeader(b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie, 6 + m.length);
  b.writeUInt32BE(errno, STRUCTURED_HEADER_BYTES);
  b.writeUInt16BE(m.length, STRUCTURED_HEADER_BYTES + 4);
  m.copy(b, STRUCTURED_HEADER_BYTES + 6);
  return b;
}

/** One NBD_REPLY_TYPE_BLOCK_STATUS chunk, final: context id then (length, flags) descriptors. */
export function encodeBlockStatus(cookie: Cookie, contextId: number, lengths: readonly number[], flags: readonly number[]): Buffer {
  const payloadBytes = 4 + BLOCK_STATUS_DESCRIPTOR_BYTES * lengths.length;
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_BYTES + payloadBytes);
  writeStructuredHeader(b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, cookie, payloadBytes);
  b.writeUInt32BE(contextId, STRUCTURED_HEADER_BYTES);
  let at = STRUCTURED_HEADER_BYTES + 4;
  for (let i = 0; i < lengths.length; i++) {
    b.writeUInt32BE(lengths[i] ?? 0, at);
    b.writeUInt32BE(flags[i] ?? 0, at + 4);
    at += BLOCK_STATUS_DESCRIPTOR_BYTES;
  }
  return b;
}

// ---- Decoders ----

/** A transmission request header (spec "Request message"). */
export interface RequestHeader {
  flags: number;
  command: number;
  cookie: Cookie;
  /** The 64-bit offset as a number; an offset beyond 2^53 becomes Infinity (always out of range). */
  offsetBytes: number;
  lengthBytes: number;
}

/** Decodes the 28 header bytes at `at`; undefined when the magic is wrong (the stream cannot be resynced). */
export function decodeRequestHeader(b: Buffer, at: number): RequestHeader | undefined {
  if (b.readUInt32BE(at) !== NBD_REQUEST_MAGIC) return undefined;
  return {
    flags: b.readUInt16BE(at + 4),
    command: b.readUInt16BE(at + 6),
    cookie: { hi: b.readUInt32BE(at + 8), lo: b.readUInt32BE(at + 12) },
    offsetBytes: readU64(b, at + 16),
    lengthBytes: b.readUInt32BE(at + 24),
  };
}

/** Reads a u64 as a number; values past Number.MAX_SAFE_INTEGER become Infinity so range checks fail closed. */
export function readU64(b: Buffer, at: number): number {
  const hi = b.readUInt32BE(at);
  if (hi > 0x1fffff) return Infinity;
  return hi * TWO_32 + b.readUInt32BE(at + 4);
}

export function writeU64(b: Buffer, at: number, value: number): void {
  b.writeUInt32BE(Math.floor(value / TWO_32), at);
  b.writeUInt32BE(value % TWO_32, at + 4);
}

/** The longest prefix of `text` that fits in `bytesMax` UTF-8 bytes without splitting a character. */
export function utf8Prefix(text: string, bytesMax: number): Buffer {
  const b = Buffer.from(text, "utf8");
  if (b.length <= bytesMax) return b;
  let end = bytesMax;
  while (end > 0 && ((b[end] ?? 0) & 0xc0) === 0x80) end--;
  return b.subarray(0, end);
}

/** Names for log lines. */
export function commandName(command: number): string {
  return ["READ", "WRITE", "DISC", "FLUSH", "TRIM", "CACHE", "WRITE_ZEROES", "BLOCK_STATUS"][command] ?? `CMD_${command}`;
}
