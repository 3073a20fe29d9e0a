// What src/nbd needs from the outside world, as small interfaces. src/os
// implements them with node:net and real timers; tests may fake them. Keeping
// these out of the protocol code is what keeps src/nbd pure (DESIGN.md section 7).

import {
  nbdBlockStatusExtentsMax,
  nbdConnectionBytesInFlightFloor,
  nbdConnectionBytesInFlightMax,
  nbdConnectionsMax,
  nbdConnectionsPerAddressMax,
  nbdHandshakeOptionsMax,
  nbdHandshakeTimeoutMs,
  nbdIdleTimeoutMs,
  nbdMetaQueriesMax,
  nbdNodeBytesInFlightMax,
  nbdOptionBytesMax,
  nbdOptionDiscardBytesMax,
  nbdPayloadBytesMax,
  nbdQueuedBufferOverheadBytes,
  nbdReplyBytesReserved,
  nbdRequestsInFlightMax,
  nbdShutdownGraceMs,
  nbdStringBytesMax,
  nbdWriteDiscardBytesMax,
} from "../constants.js";
import { assert } from "../base/assert.js";

/** One accepted stream connection (TCP or Unix). */
export interface NbdSocket {
  /** A name for log lines, e.g. "127.0.0.1:53210". */
  readonly peer: string;
  /** The client's IP address, which nbdConnectionsPerAddressMax counts; undefined for a Unix-socket client (exempt). */
  readonly clientAddress: string | undefined;
  /**
   * Queue the buffers in order, ideally as one writev; the socket keeps
   * references, never copies. `written` runs once the socket is done with them
   * (taken by the kernel, or dropped because the connection closed).
   */
  write(chunks: readonly Buffer[], written: () => void): void;
  /** Stop and restart delivering data (backpressure). */
  pause(): void;
  resume(): void;
  /** Send what is queued, then close. */
  end(): void;
  /** Close now, dropping what is queued. */
  destroy(): void;
  /**
   * What this connection offers for NBD_OPT_STARTTLS (spec "TLS support"):
   * off (NOTLS), optional (SELECTIVETLS with no TLS-only export) or required
   * (FORCEDTLS). Absent: off.
   */
  readonly tls?: NbdTlsPolicy;
  /**
   * Upgrades the connection to TLS in place, after the NBD_REP_ACK was
   * written: from now on data, drain and writes go through TLS. `secured`
   * runs once, with who the peer proved to be (a certificate's subject or a
   * PSK identity), or with the reason the TLS handshake failed.
   */
  startTls?(secured: (result: NbdTlsResult) => void): void;
}

export type NbdTlsPolicy = "off" | "optional" | "required";

/** How a TLS upgrade ended: who the client proved to be (a checked certificate's subject CN, or a PSK identity; undefined when it proved nothing) and a phrase for the log; or why it failed. */
export type NbdTlsResult = { ok: true; identity: string | undefined; peer: string } | { ok: false; error: string };

/** What the socket adapter calls back into; returned by NbdServer.accept(). */
export interface NbdSocketEvents {
  data(chunk: Buffer): void;
  /** The kernel took everything queued (after a write that filled the buffer). */
  drain(): void;
  /** The socket is closed, for whatever reason; called once. */
  closed(): void;
}

export interface NbdTimers {
  /** Runs fn once after ms; returns a function that cancels it. */
  setTimeout(fn: () => void, ms: number): () => void;
  /** Runs fn later in this event-loop turn, after pending I/O callbacks (setImmediate): used to batch replies. */
  defer(fn: () => void): void;
  /** Milliseconds on a monotonic clock (idle times). */
  now(): number;
}

export interface NbdLog {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

/** Every NBD limit; defaults from src/constants.ts, overridable per server (tests use short timeouts). */
export interface NbdLimits {
  connectionsMax: number;
  connectionsPerAddressMax: number;
  idleTimeoutMs: number;
  handshakeTimeoutMs: number;
  handshakeOptionsMax: number;
  optionBytesMax: number;
  optionDiscardBytesMax: number;
  stringBytesMax: number;
  metaQueriesMax: number;
  payloadBytesMax: number;
  writeDiscardBytesMax: number;
  requestsInFlightMax: number;
  connectionBytesInFlightMax: number;
  connectionBytesInFlightFloor: number;
  nodeBytesInFlightMax: number;
  blockStatusExtentsMax: number;
  shutdownGraceMs: number;
}

export const defaultNbdLimits: Readonly<NbdLimits> = {
  connectionsMax: nbdConnectionsMax,
  connectionsPerAddressMax: nbdConnectionsPerAddressMax,
  idleTimeoutMs: nbdIdleTimeoutMs,
  handshakeTimeoutMs: nbdHandshakeTimeoutMs,
  handshakeOptionsMax: nbdHandshakeOptionsMax,
  optionBytesMax: nbdOptionBytesMax,
  optionDiscardBytesMax: nbdOptionDiscardBytesMax,
  stringBytesMax: nbdStringBytesMax,
  metaQueriesMax: nbdMetaQueriesMax,
  payloadBytesMax: nbdPayloadBytesMax,
  writeDiscardBytesMax: nbdWriteDiscardBytesMax,
  requestsInFlightMax: nbdRequestsInFlightMax,
  connectionBytesInFlightMax: nbdConnectionBytesInFlightMax,
  connectionBytesInFlightFloor: nbdConnectionBytesInFlightFloor,
  nodeBytesInFlightMax: nbdNodeBytesInFlightMax,
  blockStatusExtentsMax: nbdBlockStatusExtentsMax,
  shutdownGraceMs: nbdShutdownGraceMs,
};

/** Merges overrides over the defaults and checks that the limits agree with each other and the spec. */
export function resolveNbdLimits(overrides: Partial<NbdLimits> = {}): NbdLimits {
  const l: NbdLimits = { ...defaultNbdLimits, ...overrides };
  for (const [k, v] of Object.entries(l)) assert(Number.isSafeInteger(v) && v > 0, `NBD limit ${k} = ${v} must be a positive integer`);
  // Spec "Size constraints": max payload fits u32 and is at least 2^20 (we advertise it for every export).
  assert(l.payloadBytesMax >= 1 << 20 && l.payloadBytesMax <= 0xffffffff, "NBD max payload is in [2^20, 2^32)");
  assert(l.writeDiscardBytesMax >= l.payloadBytesMax, "an oversized write up to the discard limit can be skipped");
  // Spec "Conventions": strings are at most 4096 bytes.
  assert(l.stringBytesMax <= 4096, "NBD strings are at most 4096 bytes");
  assert(l.optionBytesMax >= 2 * l.stringBytesMax + 16, "an option holds an export name and a query");
  assert(l.optionDiscardBytesMax >= l.optionBytesMax, "an oversized option can be discarded");
  assert(l.connectionBytesInFlightMax > l.payloadBytesMax + nbdReplyBytesReserved, "one largest request fits a connection");
  assert(l.connectionBytesInFlightFloor <= l.connectionBytesInFlightMax, "the floor is within a connection's bound");
  assert(l.connectionBytesInFlightFloor > nbdReplyBytesReserved + nbdQueuedBufferOverheadBytes + 4096, "a 4 KiB read fits the floor");
  assert(l.connectionsMax * l.connectionBytesInFlightFloor <= l.nodeBytesInFlightMax / 4, "every connection's floor together takes at most a quarter of the node budget");
  assert(sharedBytesMax(l) > l.connectionBytesInFlightMax, "one connection can reach its own bound while every other holds its floor");
  assert(l.blockStatusExtentsMax <= 1 << 20, "spec: at most 2^20 extents in one block status chunk");
  return l;
}

/**
 * What connections may hold above their floors together: the node budget
 * minus every connection's floor, so that floors are always there to take.
 */
export function sharedBytesMax(l: NbdLimits): number {
  return l.nodeBytesInFlightMax - l.connectionsMax * l.connectionBytesInFlightFloor;
}
