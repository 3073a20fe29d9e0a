// Binds the pure peer transport (src/replication) to the OS: a TCP listener on
// the peer port, outgoing connections from the node's own address (so an
// nftables rule on an address pair cuts exactly that link, DESIGN.md
// section 1), node:crypto for the handshake, and real timers.

import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { createConnection, createServer, type AddressInfo, type Server, type Socket, isIP } from "node:net";
import { connect as tlsConnect, createServer as createTlsServer } from "node:tls";
import type { NodeId } from "../raft/types.js";
import type { PeerAddress, PeerCrypto, PeerLimits, PeerLog, PeerNetwork, PeerSocket, PeerSocketEvents, PeerTimers } from "../replication/ports.js";
import { PeerTransport } from "../replication/transport.js";
import { nodeTimers } from "./timers.js";

/** TCP keepalive probe delay: a backstop under the transport's own idle check. */
const keepAliveDelayMs = 30_000;

export const nodePeerCrypto: PeerCrypto = {
  randomBytes: (n) => randomBytes(n),
  hmacSha256: (key, data) => createHmac("sha256", key).update(data).digest(),
  timingSafeEqual: (a, b) => a.length === b.length && timingSafeEqual(a, b),
};

export const nodePeerTimers: PeerTimers = {
  ...nodeTimers,
  now: () => performance.now(),
  random: () => Math.random(),
};

/** This node's certificate and key and the cluster CA (PEM), for peer links over TLS with both sides checked. */
export interface PeerTls {
  certPem: string;
  keyPem: string;
  caPem: string;
}

/** Dials from `localAddress` when given (a node bound to 127.0.0.12 also dials from it); over TLS when `tls` is given. */
export function nodePeerNetwork(localAddress?: string, tls?: PeerTls): PeerNetwork {
  return {
    dial(host, port, events) {
      // Only an IP literal can be a source address (a --listen host name cannot).
      const from = localAddress !== undefined && isIP(localAddress) !== 0 ? localAddress : undefined;
      const common = { host, port, localAddress: from, noDelay: true, keepAlive: true, keepAliveInitialDelay: keepAliveDelayMs };
      if (tls === undefined) {
        const s = createConnection(common);
        s.once("connect", () => events.connected());
        return wrapSocket(s, `${host}:${port}`, events);
      }
      // The peer's certificate must chain to the cluster CA and name the address dialled; ours goes the other way.
      const s = tlsConnect({ ...common, ca: tls.caPem, cert: tls.certPem, key: tls.keyPem, minVersion: "TLSv1.3", ...(isIP(host) === 0 ? { servername: host } : {}) });
      // tls.connect hands noDelay and keepAlive to no socket: without these the dialed link runs Nagle's algorithm.
      s.setNoDelay(true);
      s.setKeepAlive(true, keepAliveDelayMs);
      s.once("secureConnect", () => events.connected());
      return wrapSocket(s, `${host}:${port}`, events);
    },
  };
}

/** The PeerSocket over a net.Socket, with every event forwarded. */
export function wrapSocket(s: Socket, remote: string, events: PeerSocketEvents): PeerSocket {
  let closeError: string | undefined;
  s.on("error", (e: NodeJS.ErrnoException) => {
    closeError = e.code ?? e.message; // 'close' always follows
  });
  s.on("data", (chunk: Buffer) => events.data(chunk));
  s.on("end", () => events.ended());
  s.on("drain", () => events.drain());
  s.on("close", () => events.closed(closeError));
  return {
    remote,
    write(chunks) {
      if (!s.writable) return;
      // Corked writes leave as one writev: many frames, one syscall (DESIGN.md section 9).
      s.cork();
      for (const c of chunks) s.write(c);
      s.uncork();
    },
    queuedBytes: () => s.writableLength,
    pause: () => s.pause(),
    resume: () => s.resume(),
    end: () => s.end(),
    destroy: () => s.destroy(),
  };
}

export interface StartPeerTransportOptions {
  nodeId: NodeId;
  clusterId: string;
  secret: Uint8Array;
  /** Listen address; also the source address of outgoing connections unless it is a wildcard. */
  host: string;
  /** 0 picks a free port (tests). */
  port: number;
  peers?: PeerAddress[];
  log: PeerLog;
  limits?: Partial<PeerLimits>;
  /** Peer links over TLS, both sides checked against the cluster CA; absent: plain TCP (frames authenticated with the secret at connection start). */
  tls?: PeerTls;
}

export interface PeerListener {
  readonly transport: PeerTransport;
  /** The bound address (port resolved when 0 was asked for). */
  readonly address: { host: string; port: number };
  /** Stops listening and closes the transport; resolves when every socket and the listener are closed. */
  close(): Promise<void>;
}

export async function startPeerTransport(opts: StartPeerTransportOptions): Promise<PeerListener> {
  const wildcard = opts.host === "0.0.0.0" || opts.host === "::";
  const transport = new PeerTransport({
    nodeId: opts.nodeId,
    clusterId: opts.clusterId,
    secret: opts.secret,
    network: nodePeerNetwork(wildcard ? undefined : opts.host, opts.tls),
    timers: nodePeerTimers,
    crypto: nodePeerCrypto,
    log: opts.log,
    limits: opts.limits,
  });
  const tls = opts.tls;
  const server: Server =
    tls === undefined
      ? createServer({ noDelay: true }, (s) => accept(transport, s))
      : createTlsServer({ noDelay: true, cert: tls.certPem, key: tls.keyPem, ca: tls.caPem, requestCert: true, rejectUnauthorized: true, minVersion: "TLSv1.3" }, (s) => accept(transport, s));
  // A peer whose certificate the cluster CA did not sign (or that has none) never reaches the transport.
  // The TLS socket of a failed handshake may have lost its address by then: remember it from the raw connection.
  const remotes = new WeakMap<object, string>();
  server.on("connection", (raw: Socket) => remotes.set(raw, `${raw.remoteAddress ?? "?"}:${raw.remotePort ?? 0}`));
  server.on("tlsClientError", (e: Error, s: Socket) => {
    const parent = (s as unknown as { _parent?: object })._parent;
    const from = s.remoteAddress !== undefined ? `${s.remoteAddress}:${s.remotePort ?? 0}` : (parent !== undefined ? remotes.get(parent) : undefined) ?? "a peer";
    opts.log.warn(`peer: TLS handshake from ${from} refused: ${e.message.trim().split("\n")[0]} (a certificate the cluster CA did not sign, on either side)`);
  });
  try {
    await listen(server, opts.host, opts.port);
  } catch (e) {
    await transport.close();
    throw e;
  }
  const addr = server.address() as AddressInfo;
  opts.log.info(`peer: node ${opts.nodeId} listening on ${addr.address}:${addr.port}${tls !== undefined ? " over TLS (peers' certificates checked against the cluster CA)" : ""}`);
  if (opts.peers !== undefined) transport.setPeers(opts.peers);
  return {
    transport,
    address: { host: addr.address, port: addr.port },
    async close() {
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      await transport.close();
      await stopped;
    },
  };
}

function listen(s: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    s.once("error", reject);
    s.listen(port, host, () => {
      s.off("error", reject);
      resolve();
    });
  });
}

function accept(transport: PeerTransport, s: Socket): void {
  const remote = `${s.remoteAddress ?? "?"}:${s.remotePort ?? 0}`;
  let events: PeerSocketEvents | undefined;
  // The transport answers accept() synchronously; events bound after it cannot be missed (none fire before the next tick).
  const forward: PeerSocketEvents = {
    connected: () => {},
    data: (c) => events?.data(c),
    ended: () => events?.ended(),
    drain: () => events?.drain(),
    closed: (e) => events?.closed(e),
  };
  const sock = wrapSocket(s, remote, forward);
  events = transport.accept(sock);
  if (events === undefined) return;
  s.setNoDelay(true);
  s.setKeepAlive(true, keepAliveDelayMs);
}
