// Helpers for the peer-transport tests over real TCP on 127.0.0.1x addresses
// (DESIGN.md section 1: several nodes on one machine, same port, distinct
// loopback addresses).

import { connect, createServer, type Server, type Socket } from "node:net";
import { Handshake, Role } from "../../src/replication/auth.js";
import { decodeMessage, encodeFrameHeader, encodeMessage, encodeStart, FrameDecoder, FrameType } from "../../src/replication/frame.js";
import type { PeerAddress, PeerLimits } from "../../src/replication/ports.js";
import { nodePeerCrypto, startPeerTransport, type PeerListener } from "../../src/os/peer-listener.js";

export const clusterId = "transport-test";
export const secret = Buffer.from("s3cret-s3cret-s3cret-s3cret-0123");
/** One port for every node, as in production; random so parallel runs on this machine rarely collide. */
export const port = 20_000 + Math.floor(Math.random() * 30_000);

export const hostOf = (id: number): string => `127.0.0.${10 + id}`;
export const addressOf = (id: number): PeerAddress => ({ id, host: hostOf(id), port });

export interface TestNode {
  id: number;
  listener: PeerListener;
  logs: string[];
  /** Messages received, per sender, in arrival order. */
  got: Map<number, unknown[]>;
  close(): Promise<void>;
}

export async function startNode(id: number, opts: { peers?: number[]; secret?: Buffer; limits?: Partial<PeerLimits>; quiet?: boolean } = {}): Promise<TestNode> {
  const logs: string[] = [];
  const line = (level: string) => (m: string) => {
    logs.push(`${level} ${m}`);
    if (process.env.PXD_TEST_VERBOSE) console.log(`[node ${id}] ${level} ${m}`);
  };
  const listener = await startPeerTransport({
    nodeId: id,
    clusterId,
    secret: opts.secret ?? secret,
    host: hostOf(id),
    port,
    log: { info: line("info"), warn: line("warn"), error: line("error") },
    limits: { handshakeTimeoutMs: 1_000, ...opts.limits },
  });
  const got = new Map<number, unknown[]>();
  listener.transport.onMessage((from, m) => {
    let list = got.get(from);
    if (list === undefined) got.set(from, (list = []));
    list.push(m);
  });
  if (opts.peers !== undefined) listener.transport.setPeers(opts.peers.map(addressOf));
  return { id, listener, logs, got, close: () => listener.close() };
}

export async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A hand-driven peer on a raw socket: frames in and out, and the handshake done by the test. */
export class RawPeer {
  readonly frames: { type: number; body: Buffer }[] = [];
  readonly errors: string[] = [];
  readonly received: Buffer[] = [];
  closed = false;
  private startSent = false;
  private readonly decoder: FrameDecoder;

  constructor(readonly socket: Socket) {
    this.decoder = new FrameDecoder(
      {
        frame: (type, body) => void this.frames.push({ type, body: Buffer.from(body) }),
        error: (r) => void this.errors.push(r),
      },
      1 << 30,
    );
    socket.on("data", (c: Buffer) => {
      this.received.push(c);
      this.decoder.push(c);
    });
    socket.on("error", () => {});
    socket.on("close", () => (this.closed = true));
  }

  static connect(host: string, p: number, localAddress?: string): Promise<RawPeer> {
    return new Promise((resolve, reject) => {
      const s = connect({ host, port: p, localAddress });
      s.once("error", reject);
      s.once("connect", () => {
        s.off("error", reject);
        resolve(new RawPeer(s));
      });
    });
  }

  write(b: Uint8Array): void {
    this.socket.write(b);
  }

  async nextFrame(ms = 2_000): Promise<{ type: number; body: Buffer }> {
    await waitFor(() => this.frames.length > 0 || this.closed, ms, "a frame");
    const f = this.frames.shift();
    if (f === undefined) throw new Error("connection closed before a frame arrived");
    return f;
  }

  waitClosed(ms = 3_000): Promise<void> {
    return waitFor(() => this.closed, ms, "the connection to close");
  }

  /** Runs our half of the handshake as `role` for node `nodeId`; resolves when authenticated. */
  async handshake(role: Role, nodeId: number, peerId: number, key: Buffer = secret): Promise<void> {
    const h = new Handshake({ role, nodeId, clusterId, secret: key, crypto: nodePeerCrypto, acceptsPeer: (x) => x === peerId });
    for (const f of h.start().send) this.write(f);
    for (;;) {
      const f = await this.nextFrame();
      const step = h.step(f.type, f.body);
      for (const out of step.send) this.write(out);
      if (step.failure !== undefined) throw new Error(step.failure);
      if (step.peerId !== undefined) return;
    }
  }

  /** A message frame, after the start frame the protocol wants before the first one. */
  sendMessage(m: unknown): void {
    this.sendStart();
    const body = encodeMessage(m);
    this.write(Buffer.concat([encodeFrameHeader(FrameType.message, body.length), body]));
  }

  sendStart(): void {
    if (this.startSent) return;
    this.startSent = true;
    this.write(encodeStart(Buffer.alloc(8, 0x5a), 0));
  }

  messages(): unknown[] {
    return this.frames.filter((f) => f.type === FrameType.message).map((f) => decodeMessage(f.body));
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** A TCP server on `host:p` handing each connection to `onPeer` as a RawPeer. */
export async function rawServer(host: string, p: number, onPeer: (r: RawPeer) => void): Promise<Server> {
  const server = createServer((s) => onPeer(new RawPeer(s)));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(p, host, () => resolve());
  });
  return server;
}

/** A pass-through TCP proxy that records what the client sent (a wire tap for the replay test). */
export async function tapProxy(host: string, p: number, target: { host: string; port: number }): Promise<{ server: Server; clientBytes: Buffer[] }> {
  const clientBytes: Buffer[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect({ host: target.host, port: target.port });
    sockets.add(client).add(upstream);
    client.on("data", (c: Buffer) => {
      clientBytes.push(Buffer.from(c));
      upstream.write(c);
    });
    upstream.on("data", (c: Buffer) => client.write(c));
    const done = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on("close", done).on("error", done);
    upstream.on("close", done).on("error", done);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(p, host, () => resolve());
  });
  const close = server.close.bind(server);
  server.close = ((cb?: (err?: Error) => void) => {
    for (const s of sockets) s.destroy();
    return close(cb);
  }) as typeof server.close;
  return { server, clientBytes };
}

export function closeServer(s: Server): Promise<void> {
  return new Promise((r) => s.close(() => r()));
}
