// What the peer transport needs from the outside world, as small interfaces
// (the pattern of src/nbd/ports.ts). src/os/peer-listener.ts implements them
// with node:net, node:crypto and real timers; a simulator can implement them
// with a fake network and a seeded PRNG. Nothing in src/replication imports
// node:* (DESIGN.md section 7).

import {
  peerFrameBytesMax,
  peerHandshakeFrameBytesMax,
  peerHandshakeTimeoutMs,
  peerHandshakesMax,
  peerIdleTimeoutMs,
  peerKeepaliveMs,
  peerQueueBytesMax,
  peerQueueFramesMax,
  peerReconnectDelayMsMax,
  peerReconnectDelayMsMin,
  peerSocketBytesHighWater,
} from "../constants.js";
import { assert } from "../base/assert.js";
import type { NodeId } from "../raft/types.js";

/** One stream connection to or from another node. */
export interface PeerSocket {
  /** The remote address for log lines, e.g. "127.0.0.12:9002". */
  readonly remote: string;
  /** Queue the buffers in order as one writev; the socket keeps references, never copies. */
  write(chunks: readonly Uint8Array[]): void;
  /** Bytes written but not yet taken by the kernel. */
  queuedBytes(): number;
  /** Stop and restart delivering data. */
  pause(): void;
  resume(): void;
  /** Send what is queued, then half-close; data keeps arriving until the remote closes too. */
  end(): void;
  /** Close now, dropping what is queued in both directions. */
  destroy(): void;
}

/** What the socket adapter calls back into. */
export interface PeerSocketEvents {
  /** An outgoing connection is established (never called for accepted sockets). */
  connected(): void;
  data(chunk: Uint8Array): void;
  /** The remote half-closed: nothing more will arrive, and our side ends too (we never run half-open). */
  ended(): void;
  /** The kernel took everything queued, after a write that filled the buffer. */
  drain(): void;
  /** The socket is closed, for whatever reason; called exactly once. `error` names a socket error, if any. */
  closed(error: string | undefined): void;
}

export interface PeerNetwork {
  /** Starts a connection; events arrive later, never from inside this call. */
  dial(host: string, port: number, events: PeerSocketEvents): PeerSocket;
}

export interface PeerTimers {
  /** Runs fn once after ms; returns a function that cancels it. */
  setTimeout(fn: () => void, ms: number): () => void;
  /** Runs fn later in this event-loop turn, after pending I/O callbacks: batches frames into one writev. */
  defer(fn: () => void): void;
  /** Milliseconds on a monotonic clock. */
  now(): number;
  /** Uniform in [0, 1): reconnect jitter. */
  random(): number;
}

/** HMAC and randomness for the handshake; node:crypto in src/os. */
export interface PeerCrypto {
  randomBytes(n: number): Uint8Array;
  hmacSha256(key: Uint8Array, data: Uint8Array): Uint8Array;
  /** Constant-time equality of two equal-length byte strings (false when lengths differ). */
  timingSafeEqual(a: Uint8Array, b: Uint8Array): boolean;
}

export interface PeerLog {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

export interface PeerAddress {
  id: NodeId;
  host: string;
  port: number;
}

/** Every peer-transport limit; defaults from src/constants.ts, overridable per transport (tests use small ones). */
export interface PeerLimits {
  frameBytesMax: number;
  handshakeFrameBytesMax: number;
  handshakeTimeoutMs: number;
  handshakesMax: number;
  queueBytesMax: number;
  queueFramesMax: number;
  socketBytesHighWater: number;
  reconnectDelayMsMin: number;
  reconnectDelayMsMax: number;
  keepaliveMs: number;
  idleTimeoutMs: number;
}

export const defaultPeerLimits: Readonly<PeerLimits> = {
  frameBytesMax: peerFrameBytesMax,
  handshakeFrameBytesMax: peerHandshakeFrameBytesMax,
  handshakeTimeoutMs: peerHandshakeTimeoutMs,
  handshakesMax: peerHandshakesMax,
  queueBytesMax: peerQueueBytesMax,
  queueFramesMax: peerQueueFramesMax,
  socketBytesHighWater: peerSocketBytesHighWater,
  reconnectDelayMsMin: peerReconnectDelayMsMin,
  reconnectDelayMsMax: peerReconnectDelayMsMax,
  keepaliveMs: peerKeepaliveMs,
  idleTimeoutMs: peerIdleTimeoutMs,
};

/** Merges overrides over the defaults and checks that the limits agree with each other. */
export function resolvePeerLimits(overrides: Partial<PeerLimits> = {}): PeerLimits {
  const l: PeerLimits = { ...defaultPeerLimits, ...overrides };
  for (const [k, v] of Object.entries(l)) assert(Number.isSafeInteger(v) && v > 0, `peer limit ${k} = ${v} must be a positive integer`);
  assert(l.frameBytesMax <= 0xffffffff, "a frame length fits the u32 length field");
  assert(l.handshakeFrameBytesMax <= l.frameBytesMax, "the handshake bound is the smaller one");
  assert(l.queueBytesMax >= l.frameBytesMax, "one largest frame fits a peer queue");
  assert(l.reconnectDelayMsMin <= l.reconnectDelayMsMax, "backoff range is ordered");
  assert(l.idleTimeoutMs >= 2 * l.keepaliveMs, "an idle peer misses pings before it is called dead");
  return l;
}
