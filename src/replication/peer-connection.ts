// One connection to another node: the handshake, then frames. It owns its
// socket's decoder and handshake timer; what a frame means for the node (which
// connection wins, where a message goes) is the transport's business, reached
// through ConnectionOwner. Pure: the socket and timers come through ports.ts.

import { assert } from "../base/assert.js";
import type { NodeId } from "../raft/types.js";
import { Handshake, Role, type HandshakeConfig, type HandshakeStep } from "./auth.js";
import { decodeMessage, decodeStart, encodeFrame, FrameDecoder, FrameType, frameTypeName, type FrameSink } from "./frame.js";
import type { PeerLimits, PeerLog, PeerSocket, PeerSocketEvents, PeerTimers } from "./ports.js";

export interface ConnectionOwner {
  readonly limits: PeerLimits;
  readonly timers: PeerTimers;
  readonly log: PeerLog;
  authenticated(c: PeerConnection, peerId: NodeId): void;
  /** The peer's start frame arrived (startCount is set). */
  started(c: PeerConnection): void;
  received(c: PeerConnection, message: unknown): void;
  /** A handshake failed (already logged); counted as an authentication failure. */
  handshakeFailed(c: PeerConnection): void;
  drained(c: PeerConnection): void;
  /** An open connection can no longer be written (the remote half-closed it). */
  retired(c: PeerConnection): void;
  closed(c: PeerConnection, error: string | undefined): void;
}

/**
 * connecting: dialed, TCP not up yet. handshake: hello sent. failed: refused,
 * waiting for the socket to close. open: authenticated. ending: half-closed by
 * us (a losing duplicate), still read until the peer closes. closed: gone.
 */
export type ConnectionState = "connecting" | "handshake" | "failed" | "open" | "ending" | "closed";

const pingFrame = encodeFrame(FrameType.ping);

export class PeerConnection implements PeerSocketEvents, FrameSink {
  state: ConnectionState;
  socket: PeerSocket | undefined;
  /** Known from the start when we dialed; set by the handshake when we accepted. */
  peerId: NodeId | undefined;
  /** Order of authentication on this node: the tie-break between duplicates with the same dialer. */
  authSeq = 0;
  /** The peer's start frame: messages it wrote to us on earlier connections of its epoch. */
  startCount: number | undefined;
  startEpoch: string | undefined;
  /** Our start frame went out: later flushes send messages only. */
  startSent = false;
  /** Set once every message the peer sent before this connection was delivered (or can no longer come). */
  caughtUp = false;
  /** Messages decoded before this connection caught up. */
  readonly held: unknown[] = [];
  lastReceivedMs: number;
  lastSentMs: number;
  bytesReceived = 0;
  framesReceived = 0;
  /** The handshake failed and was logged: the owner need not report this close again. */
  failed = false;
  private paused = false;
  private readonly decoder: FrameDecoder;
  private readonly handshake: Handshake;
  private cancelTimer: (() => void) | undefined;

  constructor(
    private readonly owner: ConnectionOwner,
    readonly role: Role,
    handshake: HandshakeConfig,
    peerId?: NodeId,
  ) {
    assert(handshake.role === role, "the handshake plays this connection's role");
    this.state = role === Role.dialer ? "connecting" : "handshake";
    this.peerId = peerId;
    this.handshake = new Handshake(handshake);
    this.decoder = new FrameDecoder(this, owner.limits.handshakeFrameBytesMax);
    this.lastReceivedMs = this.lastSentMs = owner.timers.now();
  }

  /** Binds the socket and arms the handshake deadline (from dial or accept, so it covers connect too). */
  attach(socket: PeerSocket): void {
    assert(this.socket === undefined, "a connection has one socket");
    this.socket = socket;
    const ms = this.owner.limits.handshakeTimeoutMs;
    this.cancelTimer = this.owner.timers.setTimeout(() => this.handshakeTimedOut(ms), ms);
    if (this.role === Role.acceptor) this.write(this.handshake.start().send);
  }

  get remote(): string {
    return this.socket?.remote ?? "?";
  }

  /** "node 2 (127.0.0.12:9002)" once the id is known, else the address. */
  get who(): string {
    return this.peerId !== undefined ? `node ${this.peerId} (${this.remote})` : this.remote;
  }

  get authenticated(): boolean {
    return this.state === "open" || this.state === "ending";
  }

  /** The id of the node that dialed this connection: the tie-break between duplicates uses it. */
  dialerId(self: NodeId): NodeId {
    assert(this.peerId !== undefined, "only authenticated connections are compared");
    return this.role === Role.dialer ? self : this.peerId;
  }

  write(frames: readonly Uint8Array[]): void {
    if (frames.length === 0 || this.socket === undefined) return;
    this.socket.write(frames);
    this.lastSentMs = this.owner.timers.now();
  }

  ping(): void {
    if (this.state === "open") this.write([pingFrame]);
  }

  /** Half-close: what we wrote still arrives, and we read until the peer closes too. */
  end(): void {
    if (this.state === "closed") return;
    if (this.state === "open") this.state = "ending";
    this.socket?.end();
  }

  destroy(reason?: string): void {
    if (this.state === "closed") return;
    if (reason !== undefined) this.owner.log.warn(`peer ${this.who}: closing: ${reason}`);
    this.decoder.stop();
    this.socket?.destroy();
  }

  /** Holds back delivery (and reading) until the peer's earlier connection has delivered what it carried. */
  hold(message: unknown): void {
    this.held.push(message);
    if (!this.paused) {
      this.paused = true;
      this.socket?.pause();
    }
  }

  takeHeld(): unknown[] {
    return this.held.splice(0);
  }

  /** After the held messages were delivered: a socket may deliver data from inside resume(). */
  resumeReading(): void {
    if (!this.paused) return;
    this.paused = false;
    this.socket?.resume();
  }

  // ---- PeerSocketEvents ----

  connected(): void {
    if (this.state !== "connecting") return;
    this.state = "handshake";
    this.write(this.handshake.start().send);
  }

  data(chunk: Uint8Array): void {
    this.lastReceivedMs = this.owner.timers.now();
    if (this.authenticated) this.bytesReceived += chunk.length;
    this.decoder.push(chunk);
  }

  ended(): void {
    // The socket ends our side as well: stop writing on it, so nothing more is taken off the peer queue for it.
    if (this.state !== "open") return;
    this.state = "ending";
    this.owner.retired(this);
  }

  drain(): void {
    if (this.state === "open") this.owner.drained(this);
  }

  closed(error: string | undefined): void {
    if (this.state === "closed") return;
    this.state = "closed";
    this.cancelTimer?.();
    this.cancelTimer = undefined;
    this.decoder.stop();
    this.owner.closed(this, error);
  }

  // ---- FrameSink ----

  frame(type: number, body: Uint8Array): void {
    if (this.state === "handshake") return this.handshakeFrame(type, body);
    if (!this.authenticated) return; // failed: ignore whatever else arrives before the close
    this.framesReceived++;
    if (type === FrameType.message) return this.messageFrame(body);
    if (type === FrameType.ping) return;
    if (type === FrameType.start) return this.startFrame(body);
    this.destroy(`unexpected ${frameTypeName(type)} frame after authentication`);
  }

  error(reason: string): void {
    if (this.state === "handshake") return this.fail({ send: [], failure: reason });
    this.destroy(reason);
  }

  private startFrame(body: Uint8Array): void {
    const start = decodeStart(body);
    if (start === undefined || this.startCount !== undefined) return this.destroy(start === undefined ? "malformed start frame" : "a second start frame");
    this.startCount = start.count;
    this.startEpoch = start.epoch;
    this.owner.started(this);
  }

  private messageFrame(body: Uint8Array): void {
    if (this.startCount === undefined) return this.destroy("a message before the start frame");
    let message: unknown;
    try {
      message = decodeMessage(body);
    } catch (e) {
      return this.destroy(`malformed message body: ${(e as Error).message}`);
    }
    this.owner.received(this, message);
  }

  private handshakeFrame(type: number, body: Uint8Array): void {
    const step = this.handshake.step(type, body);
    if (step.failure !== undefined) return this.fail(step);
    this.write(step.send);
    if (step.peerId === undefined) return;
    this.cancelTimer?.();
    this.cancelTimer = undefined;
    this.peerId = step.peerId;
    this.state = "open";
    this.decoder.setBodyBytesMax(this.owner.limits.frameBytesMax);
    this.owner.authenticated(this, step.peerId);
  }

  /** One log line naming the remote and the reason, a refusal to the peer, then close. */
  private fail(step: HandshakeStep): void {
    this.owner.log.warn(`peer ${this.who}: handshake failed: ${step.failure ?? "?"}`);
    this.state = "failed";
    this.failed = true;
    this.decoder.stop();
    this.write(step.send);
    // end() lets the refusal reach the peer; the handshake timer still destroys a peer that never closes.
    this.socket?.end();
    this.owner.handshakeFailed(this);
  }

  private handshakeTimedOut(ms: number): void {
    this.cancelTimer = undefined;
    if (this.state === "failed") return this.socket?.destroy();
    if (this.authenticated || this.state === "closed") return;
    // A connect that never completes is an unreachable peer (the dial failure is reported on close), not an auth failure.
    if (this.state === "connecting") return this.socket?.destroy();
    this.fail({ send: [], failure: `timed out after ${ms} ms` });
    this.socket?.destroy();
  }
}
