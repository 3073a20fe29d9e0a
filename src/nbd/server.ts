// Owns NBD connections: the caps (node, per client address, idle eviction),
// the handshake timeout, the switch from handshake to transmission, what each
// connection holds against the node budget, reply batching and orderly
// shutdown. Sockets, timers and the log come in through ports.ts, so this
// file stays pure.

import { nbdQueuedBufferOverheadBytes } from "../constants.js";
import type { ExportRegistry } from "./backend.js";
import { NodeBudget, type BudgetHolder } from "./budget.js";
import { assert } from "../base/assert.js";
import { failStop } from "../base/fail-stop.js";
import { Handshake, type HandshakeStep } from "./handshake.js";
import { resolveNbdLimits, type NbdLimits, type NbdLog, type NbdSocket, type NbdSocketEvents, type NbdTimers, type NbdTlsResult } from "./ports.js";
import { Transmission } from "./transmission.js";

export interface NbdServerOptions {
  registry: ExportRegistry;
  log: NbdLog;
  timers: NbdTimers;
  limits?: Partial<NbdLimits>;
}

/** What /metrics shows of the NBD server. */
export interface NbdStats {
  connections: number;
  /** Bytes every connection holds (NodeBudget), now and at most since start. */
  heldBytes: number;
  heldBytesPeak: number;
  /** Connections whose next request waits for room in the node budget. */
  waitingConnections: number;
  /** Idle connections closed to make room for a new client, since start. */
  idleEvictions: number;
  /** New connections refused at a connection cap, since start. */
  refusedConnections: number;
}

export class NbdServer {
  readonly limits: NbdLimits;
  readonly budget: NodeBudget;
  private readonly connections = new Set<Connection>();
  /** Open connections by client IP address; Unix-socket clients are not counted. */
  private readonly byAddress = new Map<string, Set<Connection>>();
  private idleEvictions = 0;
  private refusedConnections = 0;
  private stopping = false;
  private drained: (() => void) | undefined;

  constructor(readonly options: NbdServerOptions) {
    this.limits = resolveNbdLimits(options.limits);
    this.budget = new NodeBudget(this.limits);
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  stats(): NbdStats {
    return {
      connections: this.connections.size,
      heldBytes: this.budget.heldBytes,
      heldBytesPeak: this.budget.heldBytesPeak,
      waitingConnections: this.budget.waitingCount,
      idleEvictions: this.idleEvictions,
      refusedConnections: this.refusedConnections,
    };
  }

  get shuttingDown(): boolean {
    return this.stopping;
  }

  /** Takes a freshly accepted socket; undefined when it was refused (and destroyed). */
  accept(socket: NbdSocket): NbdSocketEvents | undefined {
    if (this.stopping) {
      socket.destroy();
      return undefined;
    }
    const full = this.makeRoom(socket);
    if (full !== undefined) {
      this.refusedConnections++;
      this.options.log.warn(`nbd ${socket.peer}: refused, ${full} and none idle for ${this.limits.idleTimeoutMs} ms`);
      socket.destroy();
      return undefined;
    }
    const c = new Connection(this, socket);
    this.connections.add(c);
    const address = socket.clientAddress;
    if (address !== undefined) {
      const mine = this.byAddress.get(address) ?? new Set<Connection>();
      this.byAddress.set(address, mine.add(c));
    }
    c.start();
    return c.events;
  }

  /**
   * At a cap (the client's address, then the node), closes the connection
   * idle longest past nbdIdleTimeoutMs among those the cap counts, so the new
   * client gets its slot; returns why it is refused when none is idle.
   */
  private makeRoom(socket: NbdSocket): string | undefined {
    const address = socket.clientAddress;
    const mine = address === undefined ? undefined : this.byAddress.get(address);
    const perAddress = this.limits.connectionsPerAddressMax;
    if (mine !== undefined && mine.size >= perAddress) {
      const why = `${mine.size} connections from ${address} (limit ${perAddress})`;
      if (!this.evictIdle(mine, why, socket.peer)) return why;
    }
    if (this.connections.size >= this.limits.connectionsMax) {
      const why = `${this.connections.size} connections open (limit ${this.limits.connectionsMax})`;
      if (!this.evictIdle(this.connections, why, socket.peer)) return why;
    }
    return undefined;
  }

  private evictIdle(among: ReadonlySet<Connection>, why: string, newcomer: string): boolean {
    const now = this.options.timers.now();
    const victim = longestIdle(among, now - this.limits.idleTimeoutMs);
    if (victim === undefined) return false;
    this.idleEvictions++;
    victim.connection.evict(`idle for ${Math.round(now - victim.sinceMs)} ms; closed to make room for ${newcomer}: ${why}`);
    this.forget(victim.connection);
    return true;
  }

  /**
   * Stops serving: handshakes are cut, new requests get ESHUTDOWN, in-flight
   * ones are answered, then each connection closes. Whatever is still open
   * after the grace period is destroyed. Stop accepting in the listener first.
   */
  shutdown(): Promise<void> {
    this.stopping = true;
    const done = new Promise<void>((resolve) => {
      this.drained = resolve;
    });
    const cancelGrace = this.options.timers.setTimeout(() => {
      for (const c of this.connections) c.destroy("shutdown grace period over");
    }, this.limits.shutdownGraceMs);
    for (const c of [...this.connections]) c.beginShutdown();
    this.checkDrained();
    return done.then(cancelGrace);
  }

  /**
   * Ends every connection that serves the export `name` (a forced volume
   * delete); returns how many. A connection still in its handshake serves no
   * export yet: the registry keeps it from opening one that is going away.
   */
  closeExport(name: string, reason: string): number {
    let closed = 0;
    for (const c of this.connections) {
      if (c.exportName !== name) continue;
      c.destroy(reason);
      closed++;
    }
    return closed;
  }

  /** Called by a Connection once its socket is closed, or at once when it is evicted (its slot is free). */
  forget(c: Connection): void {
    if (!this.connections.delete(c)) return;
    const address = c.clientAddress;
    const mine = address === undefined ? undefined : this.byAddress.get(address);
    if (mine !== undefined && mine.delete(c) && mine.size === 0) this.byAddress.delete(address!);
    this.checkDrained();
  }

  private checkDrained(): void {
    if (this.stopping && this.connections.size === 0 && this.drained !== undefined) {
      const resolve = this.drained;
      this.drained = undefined;
      resolve();
    }
  }
}

/** The connection idle since longest, if any has been since `idleBeforeMs` or earlier; ties go to the older connection. */
function longestIdle(among: ReadonlySet<Connection>, idleBeforeMs: number): { connection: Connection; sinceMs: number } | undefined {
  let best: { connection: Connection; sinceMs: number } | undefined;
  for (const connection of among) {
    const sinceMs = connection.idleSinceMs();
    if (sinceMs === undefined || sinceMs > idleBeforeMs) continue;
    if (best === undefined || sinceMs < best.sinceMs) best = { connection, sinceMs };
  }
  return best;
}

class Connection implements BudgetHolder {
  readonly events: NbdSocketEvents;
  /** The export it serves, once in transmission. */
  exportName: string | undefined;
  private handshake: Handshake | undefined;
  /** While the registry catches up: bytes that arrived after the held option, fed once it settles. */
  private heldInput: Buffer[] | undefined;
  private transmission: Transmission | undefined;
  private out: Buffer[] = [];
  /** Callbacks for buffers in `out` whose owner wants them back once written. */
  private outWritten: (() => void)[] = [];
  /** What this connection holds against the node budget: requests in flight, replies in `out`, replies the socket has not written yet. */
  private reservedBytes = 0;
  private outBytes = 0;
  private socketBytes = 0;
  private wakeScheduled = false;
  /** True while handling a socket event: replies queue up and go out in one write at its end. */
  private inTurn = false;
  private flushScheduled = false;
  private readonly flushLater = (): void => {
    this.flushScheduled = false;
    this.flush();
  };
  private cancelHandshakeTimer: (() => void) | undefined;
  /** Between a STARTTLS ACK and the end of the TLS handshake. */
  private upgrading = false;
  private ending = false;
  private closed = false;

  constructor(
    private readonly server: NbdServer,
    private readonly socket: NbdSocket,
  ) {
    this.events = {
      data: (chunk) => this.turn(this.onData, chunk),
      drain: () => this.turn(this.onDrain, undefined),
      closed: () => this.onClosed(),
    };
  }

  get heldBytes(): number {
    return this.reservedBytes + this.outBytes + this.socketBytes;
  }

  get clientAddress(): string | undefined {
    return this.socket.clientAddress;
  }

  /** Since when this connection has been idle in transmission (no request in flight, waiting or received); undefined if it is not. */
  idleSinceMs(): number | undefined {
    return this.ending || this.closed ? undefined : this.transmission?.idleSinceMs();
  }

  /** The node budget granted room to the request this connection holds back: retry it once this event is done. */
  wake(): void {
    if (this.wakeScheduled) return;
    this.wakeScheduled = true;
    this.server.options.timers.defer(this.woken);
  }

  private readonly woken = (): void => {
    this.wakeScheduled = false;
    this.turn(this.onDrain, undefined);
  };

  start(): void {
    const limits = this.server.limits;
    const hs = new Handshake({ registry: this.server.options.registry, limits, send: this.send, local: this.socket.clientAddress === undefined, ...(this.socket.tls !== undefined ? { tls: this.socket.tls } : {}) });
    this.handshake = hs;
    this.cancelHandshakeTimer = this.server.options.timers.setTimeout(
      () => this.destroy(`no transmission after ${limits.handshakeTimeoutMs} ms, closing`),
      limits.handshakeTimeoutMs,
    );
    this.turn(this.send, hs.greeting());
  }

  beginShutdown(): void {
    // Spec "Termination of the session during option haggling": a server being shut down may end the session.
    if (this.transmission === undefined) return this.destroy("server shutting down during handshake");
    this.turn(this.onShutdown, undefined);
  }

  destroy(reason: string): void {
    if (this.closed) return;
    this.server.options.log.info(`nbd ${this.socket.peer}: ${reason}`);
    this.drop();
  }

  /** Closed to make room for another client: worth a warning, since the client may not expect it. */
  evict(reason: string): void {
    this.server.options.log.warn(`nbd ${this.socket.peer}: ${reason}`);
    this.drop();
  }

  private drop(): void {
    this.ending = true;
    this.out = [];
    this.server.budget.add(-this.outBytes);
    this.outBytes = 0;
    this.socket.destroy();
  }

  /** Runs a socket event; every reply it queued leaves in one write when it returns. */
  private turn<T>(fn: (arg: T) => void, arg: T): void {
    if (this.closed) return;
    this.inTurn = true;
    try {
      fn(arg);
    } catch (err) {
      // A client's bad input is answered without throwing (validate, then
      // dispatch): what reaches here is a bug, and the process stops.
      failStop(err, `nbd ${this.socket.peer}: handling a socket event`);
    } finally {
      this.inTurn = false;
      this.flush();
    }
  }

  // Arrow fields, made once per connection, so a socket event allocates no closure.
  private readonly onData = (chunk: Buffer): void => {
    if (this.ending) return;
    // The socket adapter hands over nothing between the STARTTLS ACK and the end of the TLS handshake; a client's bytes there are not NBD.
    if (this.upgrading) return this.destroy("sent data before the TLS handshake completed; closing");
    if (this.transmission !== undefined) return this.transmission.feed(chunk);
    if (this.heldInput !== undefined) {
      this.heldInput.push(chunk); // a paused socket may still hand over what it had read
      return;
    }
    const hs = this.handshake;
    if (hs !== undefined) this.afterHandshakeStep(hs.feed(chunk, 0), chunk);
  };

  private readonly onCaughtUp = (): void => {
    const hs = this.handshake;
    const held = this.heldInput;
    this.heldInput = undefined;
    if (this.ending || hs === undefined || held === undefined) return;
    this.socket.resume();
    const rest = held.length === 1 ? held[0]! : Buffer.concat(held);
    const step = hs.resume();
    if (step.kind === "more") {
      if (rest.length > 0) this.afterHandshakeStep(hs.feed(rest, 0), rest);
      return;
    }
    this.afterHandshakeStep(step.kind === "go" || step.kind === "wait" ? { ...step, restAt: 0 } : step, rest);
  };

  private readonly onDrain = (): void => this.transmission?.pump();

  private readonly onShutdown = (): void => this.transmission?.onShutdown();

  private afterHandshakeStep(step: HandshakeStep, chunk: Buffer): void {
    if (step.kind === "more") return;
    if (step.kind === "starttls") return this.startTls(step.restAt < chunk.length);
    if (step.kind === "wait") {
      this.socket.pause();
      this.heldInput = [chunk.subarray(step.restAt)];
      const settled = (): void => this.turn(this.onCaughtUp, undefined);
      step.until.then(settled, settled);
      return;
    }
    this.cancelHandshakeTimer?.();
    this.handshake = undefined;
    if (step.kind === "close") {
      if (step.graceful) return this.finish(true, step.reason);
      return this.destroy(step.reason);
    }
    this.exportName = step.negotiated.exp.name;
    this.transmission = new Transmission(step.negotiated, {
      limits: this.server.limits,
      peer: this.socket.peer,
      send: this.send,
      admit: (bytes) => this.server.budget.admit(this, bytes),
      hold: (deltaBytes) => {
        this.reservedBytes += deltaBytes;
        this.server.budget.add(deltaBytes);
        if (deltaBytes > 0) this.server.budget.notePeak();
      },
      now: () => this.server.options.timers.now(),
      pauseInput: () => this.socket.pause(),
      resumeInput: () => this.socket.resume(),
      shuttingDown: () => this.server.shuttingDown,
      finish: (graceful, reason) => this.finish(graceful, reason),
    });
    if (step.restAt < chunk.length) this.transmission.feed(chunk.subarray(step.restAt));
  }

  /**
   * After the STARTTLS ACK: bytes the client sent behind the option in
   * plaintext are an injection or downgrade attempt (CVE-2021-3716 in other
   * servers), so the connection closes; otherwise the ACK leaves in clear and
   * the socket upgrades.
   */
  private startTls(plaintextAfter: boolean): void {
    if (plaintextAfter) return this.destroy("sent data after NBD_OPT_STARTTLS before the TLS handshake (a downgrade or injection attempt); closing");
    assert(this.socket.startTls !== undefined, "STARTTLS is acknowledged only on a socket that can upgrade");
    this.flush();
    this.upgrading = true;
    this.socket.startTls((r) => this.turn(this.onSecured, r));
  }

  private readonly onSecured = (r: NbdTlsResult): void => {
    this.upgrading = false;
    if (!r.ok) return this.destroy(`TLS handshake failed: ${r.error}`);
    this.server.options.log.info(`nbd ${this.socket.peer}: TLS established with ${r.peer}`);
    this.handshake?.secured(r.identity);
  };

  /** Queues reply bytes; outside a socket event they are flushed once per event-loop turn (DESIGN.md section 9). */
  private readonly send = (b: Buffer, written?: () => void): void => {
    if (this.ending || this.closed) {
      written?.();
      return;
    }
    if (written) this.outWritten.push(written);
    this.out.push(b);
    const cost = b.length + nbdQueuedBufferOverheadBytes;
    this.outBytes += cost;
    this.server.budget.add(cost);
    if (!this.inTurn && !this.flushScheduled) {
      this.flushScheduled = true;
      this.server.options.timers.defer(this.flushLater);
    }
  };

  private flush(): void {
    if (this.out.length === 0 || this.closed) return;
    const out = this.out;
    const written = this.outWritten;
    const bytes = this.outBytes;
    this.out = [];
    this.outWritten = [];
    this.outBytes = 0;
    this.socketBytes += bytes;
    this.server.budget.notePeak();
    this.socket.write(out, () => this.written(bytes, written));
  }

  /** The socket is done with a batch of replies: its bytes no longer count, and a request that waited for them may start. */
  private written(bytes: number, callbacks: readonly (() => void)[]): void {
    for (const w of callbacks) w();
    if (this.closed) return; // onClosed gave back everything the socket held
    this.socketBytes -= bytes;
    this.server.budget.add(-bytes);
    if (this.transmission?.waiting === true) this.turn(this.onDrain, undefined);
  }

  private finish(graceful: boolean, reason: string): void {
    if (!graceful) return this.destroy(reason);
    if (this.ending) return;
    this.server.options.log.info(`nbd ${this.socket.peer}: ${reason}`);
    this.ending = true;
    this.flush();
    this.socket.end();
  }

  private onClosed(): void {
    if (this.closed) return;
    this.closed = true;
    this.cancelHandshakeTimer?.();
    for (const w of this.outWritten) w();
    this.outWritten = [];
    this.out = [];
    this.server.budget.forget(this);
    this.server.budget.add(-(this.outBytes + this.socketBytes));
    this.outBytes = 0;
    this.socketBytes = 0;
    this.transmission?.onConnectionClosed();
    this.server.forget(this);
  }
}
