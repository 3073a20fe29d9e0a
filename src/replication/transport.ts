// The peer transport (DESIGN.md section 1): one authenticated TCP connection
// per node pair, carrying msgpack frames for every Raft group and internal RPC.
// Sends are queued per peer within byte and frame bounds, written as one
// writev per event-loop turn, and held back while the socket is full; a lost
// connection is redialed with capped, jittered exponential backoff. When both
// nodes dial at once, the connection dialed by the lower node id wins on both
// sides; the other is half-closed, so frames already written on it still
// arrive, and the per-peer queue moves to the winner; a start frame on each
// connection keeps per-peer order across the switch. Pure: sockets, timers
// and crypto come in through ports.ts; src/os/peer-listener.ts wires node:net.
// docs/formats/peer-protocol.md is the wire format.

import { assert } from "../base/assert.js";
import { failStop } from "../base/fail-stop.js";
import type { NodeId } from "../raft/types.js";
import { checkCredentials, Role, type HandshakeConfig } from "./auth.js";
import { encodeFrameHeader, encodeMessage, encodeStart, frameHeaderBytes, FrameType, startEpochBytes } from "./frame.js";
import { PeerConnection, type ConnectionOwner } from "./peer-connection.js";
import { resolvePeerLimits, type PeerAddress, type PeerCrypto, type PeerLimits, type PeerLog, type PeerNetwork, type PeerSocket, type PeerSocketEvents, type PeerTimers } from "./ports.js";

export interface PeerTransportOptions {
  nodeId: NodeId;
  clusterId: string;
  /** The shared cluster secret (at least peerSecretBytesMin bytes); it never leaves this node. */
  secret: Uint8Array;
  network: PeerNetwork;
  timers: PeerTimers;
  crypto: PeerCrypto;
  log: PeerLog;
  limits?: Partial<PeerLimits>;
}

/**
 * Takes each message a peer sent. A message that is not what pxd sends (a
 * field of the wrong type, out of bounds) throws PeerMessageError: the
 * transport closes the connection it came on, with one log line. Anything
 * else a handler throws is a bug, and the process stops.
 */
export type PeerMessageHandler = (from: NodeId, message: unknown) => void;

/** A peer's message is malformed: a bad frame, whose connection is closed. */
export class PeerMessageError extends Error {
  override name = "PeerMessageError";
}

/** Counters of one peer, for /metrics. */
export interface PeerStats {
  id: NodeId;
  connected: boolean;
  /** Authenticated connections not yet closed (1 when settled; 2 briefly while a duplicate drains). */
  connections: number;
  queuedBytes: number;
  queuedFrames: number;
  bytesSent: number;
  framesSent: number;
  bytesReceived: number;
  framesReceived: number;
  /** send() calls that returned false (queue full or peer unreachable) and queued messages dropped when a peer became unreachable. */
  messagesDropped: number;
  /** Connections authenticated with this peer, and how many of them followed an earlier one. */
  connects: number;
  reconnects: number;
}

export interface PeerTransportStats {
  peers: PeerStats[];
  /** Handshakes that failed: wrong secret, cluster or node id, malformed, timed out. */
  authFailures: number;
  /** Inbound connections closed at accept because peerHandshakesMax were already in progress. */
  handshakesRefused: number;
}

interface QueuedFrame {
  header: Buffer;
  body: Buffer;
}

/** Everything known about one peer; the transport replaces the object when the peer is removed and re-added. */
class Peer {
  readonly queue: QueuedFrame[] = [];
  queueHead = 0;
  queueBytes = 0;
  /** Authenticated connections not yet closed (open or ending), in authentication order. */
  readonly conns: PeerConnection[] = [];
  active: PeerConnection | undefined;
  dialing: PeerConnection | undefined;
  cancelRedial: (() => void) | undefined;
  backoffMs: number;
  /** The last dial failed and nothing has authenticated since: send() refuses at once. */
  unreachable = false;
  /** Messages written to any connection to this peer: the count our next start frame carries. */
  sentMessages = 0;
  /** Messages from this peer delivered to the handler (aligned with the sender's count by start frames). */
  receivedMessages = 0;
  /** The sender epoch receivedMessages counts in. */
  receivedEpoch: string | undefined;
  readonly stats: PeerStats;

  constructor(
    public address: PeerAddress,
    backoffMs: number,
  ) {
    this.backoffMs = backoffMs;
    this.stats = { id: address.id, connected: false, connections: 0, queuedBytes: 0, queuedFrames: 0, bytesSent: 0, framesSent: 0, bytesReceived: 0, framesReceived: 0, messagesDropped: 0, connects: 0, reconnects: 0 };
  }

  get queuedFrames(): number {
    return this.queue.length - this.queueHead;
  }

  shift(): QueuedFrame | undefined {
    const f = this.queue[this.queueHead];
    if (f === undefined) return undefined;
    this.queue[this.queueHead++] = undefined as unknown as QueuedFrame; // let the body be collected
    if (this.queueHead > 1024 && this.queueHead * 2 > this.queue.length) {
      this.queue.splice(0, this.queueHead);
      this.queueHead = 0;
    }
    return f;
  }

  dropQueue(): number {
    const n = this.queuedFrames;
    this.queue.length = 0;
    this.queueHead = 0;
    this.queueBytes = 0;
    return n;
  }
}

export class PeerTransport implements ConnectionOwner {
  readonly limits: PeerLimits;
  readonly timers: PeerTimers;
  readonly log: PeerLog;
  readonly nodeId: NodeId;
  private readonly peers = new Map<NodeId, Peer>();
  /** Inbound connections still in their handshake. */
  private readonly pending = new Set<PeerConnection>();
  /** Every connection whose socket is not closed yet: close() waits for them. */
  private readonly live = new Set<PeerConnection>();
  private readonly dirty = new Set<Peer>();
  private flushScheduled = false;
  private handler: PeerMessageHandler = () => {};
  private authSeq = 0;
  private authFailures = 0;
  private handshakesRefused = 0;
  private cancelTick: (() => void) | undefined;
  private closing = false;
  /** Tells our peers that our message counts start over (a restart), see the start frame. */
  private readonly epoch: Uint8Array;
  private allClosed: (() => void) | undefined;

  constructor(private readonly opts: PeerTransportOptions) {
    checkCredentials(opts.secret, opts.clusterId);
    assert(Number.isSafeInteger(opts.nodeId) && opts.nodeId > 0, `node id ${opts.nodeId} is a positive safe integer`);
    this.limits = resolvePeerLimits(opts.limits);
    this.timers = opts.timers;
    this.log = opts.log;
    this.nodeId = opts.nodeId;
    this.epoch = opts.crypto.randomBytes(startEpochBytes);
    this.armTick();
  }

  /** Sets the handler of every message received from any peer (one handler; a later call replaces it). */
  onMessage(handler: PeerMessageHandler): void {
    this.handler = handler;
  }

  /**
   * Queues a message for a peer. False, and nothing queued, when the peer is
   * unknown, unreachable (its last dial failed) or its queue is full: Raft
   * treats that as a dropped message and the caller reports the peer unreachable.
   */
  send(to: NodeId, message: unknown): boolean {
    const peer = this.peers.get(to);
    if (peer === undefined || this.closing) return false;
    if (peer.unreachable || peer.queuedFrames >= this.limits.queueFramesMax) return this.drop(peer);
    const body = encodeMessage(message);
    if (body.length > this.limits.frameBytesMax) {
      this.log.error(`peer node ${to}: a message of ${body.length} bytes exceeds the frame limit of ${this.limits.frameBytesMax}; dropped`);
      return this.drop(peer);
    }
    const bytes = frameHeaderBytes + body.length;
    if (peer.queueBytes + bytes > this.limits.queueBytesMax) return this.drop(peer);
    peer.queue.push({ header: encodeFrameHeader(FrameType.message, body.length), body });
    peer.queueBytes += bytes;
    if (peer.active !== undefined) this.scheduleFlush(peer);
    return true;
  }

  /** Replaces the peer set. Our own id may be listed and is skipped. New peers are dialed at once. */
  setPeers(addresses: readonly PeerAddress[]): void {
    assert(!this.closing, "setPeers after close");
    const want = new Map<NodeId, PeerAddress>();
    for (const a of addresses) {
      assert(Number.isSafeInteger(a.id) && a.id > 0, `peer id ${a.id} is a positive safe integer`);
      assert(Number.isInteger(a.port) && a.port > 0 && a.port < 65536, `peer ${a.id} port ${a.port} is a TCP port`);
      assert(!want.has(a.id), `peer id ${a.id} is listed once`);
      if (a.id !== this.nodeId) want.set(a.id, { ...a });
    }
    for (const [id, peer] of this.peers) if (!want.has(id)) this.removePeer(peer);
    for (const a of want.values()) this.upsertPeer(a);
  }

  /** Peers currently known. */
  peerIds(): NodeId[] {
    return [...this.peers.keys()];
  }

  /** True when an authenticated connection to the peer is up. */
  isConnected(id: NodeId): boolean {
    return this.peers.get(id)?.active !== undefined;
  }

  stats(): PeerTransportStats {
    const peers = [...this.peers.values()].map((p) => {
      const liveBytes = p.conns.reduce((n, c) => n + c.bytesReceived, 0);
      return { ...p.stats, bytesReceived: p.stats.bytesReceived + liveBytes, connected: p.active !== undefined, connections: p.conns.length, queuedBytes: p.queueBytes, queuedFrames: p.queuedFrames };
    });
    return { peers, authFailures: this.authFailures, handshakesRefused: this.handshakesRefused };
  }

  /** Takes an accepted socket; undefined when it was refused (and destroyed). */
  accept(socket: PeerSocket): PeerSocketEvents | undefined {
    if (this.closing) {
      socket.destroy();
      return undefined;
    }
    if (this.pending.size >= this.limits.handshakesMax) {
      this.handshakesRefused++;
      this.log.warn(`peer ${socket.remote}: refused, ${this.pending.size} handshakes in progress (limit ${this.limits.handshakesMax})`);
      socket.destroy();
      return undefined;
    }
    const c = new PeerConnection(this, Role.acceptor, this.handshakeConfig(Role.acceptor, (id) => this.peers.has(id)));
    this.pending.add(c);
    this.live.add(c);
    c.attach(socket);
    return c;
  }

  /** Closes every socket and timer; resolves once every socket reported closed. Queued messages are dropped. */
  close(): Promise<void> {
    if (!this.closing) {
      this.closing = true;
      this.cancelTick?.();
      this.cancelTick = undefined;
      for (const peer of [...this.peers.values()]) this.removePeer(peer);
      for (const c of [...this.pending]) c.destroy();
      this.pending.clear();
    }
    if (this.live.size === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const prev = this.allClosed;
      this.allClosed = () => {
        prev?.();
        resolve();
      };
    });
  }

  // ---- ConnectionOwner ----

  authenticated(c: PeerConnection, peerId: NodeId): void {
    this.pending.delete(c);
    const peer = this.peers.get(peerId);
    const stale = peer === undefined || (c.role === Role.dialer && peer.dialing !== c);
    if (this.closing || stale) return c.destroy();
    if (c.role === Role.dialer) peer.dialing = undefined;
    c.authSeq = ++this.authSeq;
    peer.conns.push(c);
    peer.backoffMs = this.limits.reconnectDelayMsMin;
    peer.unreachable = false;
    if (peer.stats.connects++ > 0) peer.stats.reconnects++;
    this.log.info(`peer ${c.who}: connected (${c.role === Role.dialer ? "dialed" : "accepted"})`);
    this.select(peer);
  }

  started(c: PeerConnection): void {
    const peer = this.peerOf(c);
    if (peer === undefined) return;
    // A restarted peer counts from 0 again; its old connections are dead and order nothing.
    if (c.startEpoch !== peer.receivedEpoch) {
      peer.receivedEpoch = c.startEpoch;
      peer.receivedMessages = 0;
    }
    // Alone, the connection carries everything still to come: align our count with the sender's (losses are past).
    if (peer.conns.length === 1 && peer.dialing === undefined) peer.receivedMessages = c.startCount ?? 0;
    this.catchUp(peer, c);
  }

  received(c: PeerConnection, message: unknown): void {
    const peer = this.peerOf(c);
    if (peer === undefined) return;
    peer.stats.framesReceived++;
    if (!c.caughtUp) return c.hold(message);
    if (!this.deliver(peer, c, message)) return;
    this.releaseHeld(peer);
  }

  handshakeFailed(c: PeerConnection): void {
    this.authFailures++;
    this.pending.delete(c);
  }

  drained(c: PeerConnection): void {
    const peer = this.peerOf(c);
    if (peer !== undefined && peer.active === c) this.flush(peer);
  }

  retired(c: PeerConnection): void {
    const peer = this.peerOf(c);
    if (peer === undefined || peer.active !== c) return;
    peer.active = undefined;
    this.select(peer);
    this.redialIfNeeded(peer);
  }

  closed(c: PeerConnection, error: string | undefined): void {
    this.pending.delete(c);
    this.live.delete(c);
    if (this.live.size === 0 && this.allClosed !== undefined) {
      const done = this.allClosed;
      this.allClosed = undefined;
      done();
    }
    if (this.closing) return;
    const peer = c.peerId !== undefined ? this.peers.get(c.peerId) : undefined;
    if (peer === undefined) return;
    if (peer.dialing === c) return this.dialFailed(peer, c, error);
    const i = peer.conns.indexOf(c);
    if (i < 0) return;
    peer.stats.bytesReceived += c.bytesReceived;
    peer.conns.splice(i, 1);
    if (peer.active === c) {
      peer.active = undefined;
      this.log.info(`peer ${c.who}: connection lost${error !== undefined ? `: ${error}` : ""}`);
      this.select(peer);
    }
    this.releaseHeld(peer);
    this.redialIfNeeded(peer);
  }

  // ---- connection choice ----

  /** Picks the connection to send on and retires every other open one (same rule on both nodes). */
  private select(peer: Peer): void {
    const open = peer.conns.filter((x) => x.state === "open");
    const preferred = Math.min(this.nodeId, peer.address.id);
    const score = (x: PeerConnection): number => (x.dialerId(this.nodeId) === preferred ? 2 ** 40 : 0) + x.authSeq;
    let best: PeerConnection | undefined;
    for (const x of open) if (best === undefined || score(x) > score(best)) best = x;
    for (const x of open) {
      if (x === best) continue;
      assert(best !== undefined, "a best exists when there are two");
      // The same dialer only redials once it gave the old connection up: nothing more comes on it.
      if (x.dialerId(this.nodeId) === best.dialerId(this.nodeId)) x.destroy();
      else x.end();
    }
    peer.active = best;
    if (best !== undefined && peer.queuedFrames > 0) this.scheduleFlush(peer);
  }

  /**
   * Across a switch-over, messages the peer wrote on its earlier connection come
   * first: a connection catches up once we delivered as many messages as its start
   * frame counts, or once no other connection from the peer is left to carry them.
   */
  private catchUp(peer: Peer, c: PeerConnection): boolean {
    if (c.caughtUp) return true;
    if (c.startCount === undefined) return false;
    // Our own dial, still in its handshake here, may already carry the peer's earlier messages:
    // the peer authenticates a connection we dialed before we do.
    const sameEpoch = (x: PeerConnection): boolean => x !== c && (x.startEpoch === undefined || x.startEpoch === c.startEpoch);
    const others = peer.dialing !== undefined || peer.conns.some(sameEpoch);
    const current = c.startEpoch === peer.receivedEpoch;
    if (current && c.startCount > peer.receivedMessages && others) return false;
    c.caughtUp = true;
    for (const m of c.takeHeld()) if (!this.deliver(peer, c, m)) return true;
    c.resumeReading();
    return true;
  }

  private releaseHeld(peer: Peer): void {
    if (peer.conns.length === 1 && peer.conns[0]?.caughtUp === true) return; // the common case: nothing held
    let progress = true;
    while (progress) {
      progress = false;
      for (const c of peer.conns) if (!c.caughtUp && c.startCount !== undefined && this.catchUp(peer, c)) progress = true;
    }
  }

  /** Hands a message to the handler; false when it was malformed and its connection is closed. */
  private deliver(peer: Peer, c: PeerConnection, message: unknown): boolean {
    peer.receivedMessages++;
    try {
      this.handler(peer.address.id, message);
      return true;
    } catch (e) {
      if (!(e instanceof PeerMessageError)) failStop(e, `peer node ${peer.address.id}: handling its message`);
      c.destroy(`malformed message from node ${peer.address.id}: ${e.message}`);
      return false;
    }
  }

  private peerOf(c: PeerConnection): Peer | undefined {
    if (c.peerId === undefined) return undefined;
    const peer = this.peers.get(c.peerId);
    return peer !== undefined && peer.conns.includes(c) ? peer : undefined;
  }

  // ---- sending ----

  private drop(peer: Peer): false {
    peer.stats.messagesDropped++;
    return false;
  }

  private scheduleFlush(peer: Peer): void {
    this.dirty.add(peer);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    this.timers.defer(() => {
      this.flushScheduled = false;
      const peers = [...this.dirty];
      this.dirty.clear();
      for (const p of peers) this.flush(p);
    });
  }

  /** Hands queued frames to the active socket as one writev, up to the socket high-water mark. */
  private flush(peer: Peer): void {
    const c = peer.active;
    const socket = c?.socket;
    if (c === undefined || socket === undefined || c.state !== "open" || this.peers.get(peer.address.id) !== peer) return;
    const room = this.limits.socketBytesHighWater - socket.queuedBytes();
    const chunks: Buffer[] = [];
    let bytes = 0;
    while (bytes < room) {
      const f = peer.shift();
      if (f === undefined) break;
      chunks.push(f.header, f.body);
      bytes += f.header.length + f.body.length;
    }
    if (chunks.length === 0) return;
    const frames = chunks.length / 2;
    peer.queueBytes -= bytes;
    peer.stats.bytesSent += bytes;
    peer.stats.framesSent += frames;
    if (!c.startSent) {
      // Before our first message on this connection: how many went out on earlier ones.
      c.startSent = true;
      chunks.unshift(encodeStart(this.epoch, peer.sentMessages));
    }
    peer.sentMessages += frames;
    // When the loop stopped at the high-water mark the socket is over its own mark too, so 'drain' follows.
    c.write(chunks);
  }

  // ---- dialing ----

  private upsertPeer(a: PeerAddress): void {
    const peer = this.peers.get(a.id);
    if (peer === undefined) {
      const p = new Peer(a, this.limits.reconnectDelayMsMin);
      this.peers.set(a.id, p);
      return this.dial(p);
    }
    if (peer.address.host === a.host && peer.address.port === a.port) return;
    peer.address = a;
    // A dial in flight goes to the old address: give it up and dial the new one.
    const old = peer.dialing;
    if (old === undefined) return;
    peer.dialing = undefined;
    old.destroy();
    this.dial(peer);
  }

  private removePeer(peer: Peer): void {
    this.peers.delete(peer.address.id);
    this.dirty.delete(peer);
    peer.cancelRedial?.();
    peer.cancelRedial = undefined;
    peer.dropQueue();
    peer.active = undefined;
    const conns = [...peer.conns];
    peer.conns.length = 0;
    for (const c of conns) c.destroy();
    peer.dialing?.destroy();
    peer.dialing = undefined;
    for (const c of [...this.pending]) if (c.peerId === peer.address.id) c.destroy();
  }

  private dial(peer: Peer): void {
    assert(peer.dialing === undefined && !this.closing, "one dial at a time, none after close");
    const id = peer.address.id;
    const c = new PeerConnection(this, Role.dialer, this.handshakeConfig(Role.dialer, (x) => x === id), id);
    peer.dialing = c;
    this.live.add(c);
    c.attach(this.opts.network.dial(peer.address.host, peer.address.port, c));
  }

  private dialFailed(peer: Peer, c: PeerConnection, error: string | undefined): void {
    peer.dialing = undefined;
    this.releaseHeld(peer);
    if (peer.conns.length === 0 && !peer.unreachable) {
      if (!c.failed) this.log.info(`peer ${c.who}: unreachable: ${error ?? "closed during handshake"}; retrying every ${this.limits.reconnectDelayMsMax} ms at most`);
      peer.unreachable = true;
      peer.stats.messagesDropped += peer.dropQueue();
    }
    this.redialIfNeeded(peer);
    peer.backoffMs = Math.min(this.limits.reconnectDelayMsMax, peer.backoffMs * 2);
  }

  /** With no usable connection and no dial under way, dials again after the jittered backoff. */
  private redialIfNeeded(peer: Peer): void {
    if (this.closing || peer.dialing !== undefined || peer.cancelRedial !== undefined) return;
    if (peer.conns.some((x) => x.state === "open")) return;
    // Half to full backoff: nodes that lost each other at once do not redial in lockstep.
    const ms = Math.round(peer.backoffMs * (0.5 + 0.5 * this.timers.random()));
    peer.cancelRedial = this.timers.setTimeout(() => {
      peer.cancelRedial = undefined;
      if (this.peers.get(peer.address.id) === peer && peer.dialing === undefined && !this.closing) this.dial(peer);
    }, ms);
  }

  private handshakeConfig(role: Role, acceptsPeer: (id: NodeId) => boolean): HandshakeConfig {
    const o = this.opts;
    return { role, nodeId: o.nodeId, clusterId: o.clusterId, secret: o.secret, crypto: o.crypto, acceptsPeer };
  }

  // ---- keepalive ----

  private armTick(): void {
    this.cancelTick = this.timers.setTimeout(() => {
      this.tick();
      if (!this.closing) this.armTick();
    }, this.limits.keepaliveMs);
  }

  /** Pings connections that sent nothing for a while; closes those that received nothing for too long. */
  private tick(): void {
    const now = this.timers.now();
    for (const peer of this.peers.values()) {
      for (const c of [...peer.conns]) {
        if (now - c.lastReceivedMs > this.limits.idleTimeoutMs) c.destroy(`nothing received for ${now - c.lastReceivedMs} ms`);
        else if (now - c.lastSentMs >= this.limits.keepaliveMs) c.ping();
      }
    }
  }
}
