// Binds the pure NBD server (src/nbd) to node:net: a TCP listener and,
// optionally, a Unix-socket listener in the data dir (DESIGN.md section 1),
// plus real timers. This is the only NBD file that touches the OS.

import { lstatSync, unlinkSync } from "node:fs";
import { createServer, type AddressInfo, type Server, type Socket } from "node:net";
import type { ExportRegistry } from "../nbd/backend.js";
import type { NbdLimits, NbdLog, NbdSocket, NbdSocketEvents, NbdTimers } from "../nbd/ports.js";
import { NbdServer } from "../nbd/server.js";
import { nodeTimers } from "./timers.js";
import type { NbdTls } from "./nbd-tls.js";

/** TCP keepalive probe delay: finds clients that vanished without a FIN. */
const keepAliveDelayMs = 30_000;

export const nodeNbdTimers: NbdTimers = { ...nodeTimers, now: () => performance.now() };

export interface ListenNbdOptions {
  host: string;
  port: number;
  /** Also listen on this Unix socket path; a stale socket file there is replaced. */
  unixPath?: string;
  registry: ExportRegistry;
  log: NbdLog;
  limits?: Partial<NbdLimits>;
  /** STARTTLS (src/os/nbd-tls.ts); absent: NOTLS. */
  tls?: NbdTls;
}

export interface NbdListener {
  /** The bound TCP address (port resolved when 0 was asked for). */
  readonly address: { host: string; port: number };
  readonly unixPath: string | undefined;
  readonly server: NbdServer;
  /** Stops accepting, lets connections finish (NbdServer.shutdown), and resolves when all are closed. */
  close(): Promise<void>;
}

export async function listenNbd(opts: ListenNbdOptions): Promise<NbdListener> {
  const server = new NbdServer({ registry: opts.registry, log: opts.log, timers: nodeNbdTimers, limits: opts.limits });
  const onSocket = (s: Socket): void => attach(server, s, opts.tls);
  const tcp = createServer({ noDelay: true }, onSocket);
  await listen(tcp, () => tcp.listen(opts.port, opts.host));
  const addr = tcp.address() as AddressInfo;
  let unix: Server | undefined;
  if (opts.unixPath !== undefined) {
    const path = opts.unixPath;
    removeStaleSocket(path);
    unix = createServer(onSocket);
    await listen(unix, () => unix?.listen(path)).catch(async (err: unknown) => {
      await closeServer(tcp);
      throw err;
    });
  }
  opts.log.info(`nbd: listening on ${addr.address}:${addr.port}${opts.unixPath ? ` and ${opts.unixPath}` : ""}${opts.tls ? `; ${opts.tls.describe}` : ""}`);
  return {
    address: { host: addr.address, port: addr.port },
    unixPath: opts.unixPath,
    server,
    async close() {
      const stopped = Promise.all([closeServer(tcp), unix ? closeServer(unix) : Promise.resolve()]);
      await server.shutdown();
      await stopped;
    },
  };
}

function listen(s: Server, start: () => void): Promise<void> {
  return new Promise((resolve, reject) => {
    s.once("error", reject);
    s.once("listening", () => {
      s.off("error", reject);
      resolve();
    });
    start();
  });
}

/** Stops accepting; resolves once existing connections are gone (server.shutdown closes them). */
function closeServer(s: Server): Promise<void> {
  return new Promise((resolve) => s.close(() => resolve()));
}

function removeStaleSocket(path: string): void {
  try {
    if (lstatSync(path).isSocket()) unlinkSync(path);
  } catch {
    // Nothing there: nothing to remove.
  }
}

function attach(server: NbdServer, raw: Socket, tls: NbdTls | undefined): void {
  const peer = raw.remoteAddress !== undefined ? `${raw.remoteAddress}:${raw.remotePort}` : `unix#${raw.localAddress ?? ""}`;
  raw.on("error", () => {
    // 'close' always follows; the server learns of it there.
  });
  // The stream the connection reads and writes: the raw socket, then its TLS wrapper after STARTTLS.
  let s: Socket = raw;
  let events: NbdSocketEvents | undefined;
  const sock: NbdSocket = {
    peer,
    // A Unix-socket client has no remote address; it is exempt from the per-address cap.
    clientAddress: s.remoteAddress,
    write(chunks, written) {
      if (!s.writable) {
        written();
        return;
      }
      // Corked writes leave as one writev: many replies, one syscall (DESIGN.md section 9).
      s.cork();
      const last = chunks.length - 1;
      // Node calls a write's callback once the kernel took it, or with an error when the socket is destroyed first.
      chunks.forEach((c, i) => (i === last ? s.write(c, () => written()) : s.write(c)));
      s.uncork();
    },
    pause: () => s.pause(),
    resume: () => s.resume(),
    end: () => s.end(),
    destroy: () => s.destroy(),
    ...(tls !== undefined
      ? {
          tls: tls.policy(raw.remoteAddress === undefined),
          startTls(secured) {
            const ev = events;
            if (ev === undefined) return;
            // Nothing more is read in plaintext: TLS takes the raw socket's bytes from here.
            raw.off("data", ev.data);
            raw.off("drain", ev.drain);
            const t = tls.upgrade(raw, secured);
            t.on("data", ev.data);
            t.on("drain", ev.drain);
            s = t;
          },
        }
      : {}),
  };
  events = server.accept(sock);
  if (events === undefined) return;
  raw.setNoDelay(true);
  raw.setKeepAlive(true, keepAliveDelayMs);
  raw.on("data", events.data);
  raw.on("drain", events.drain);
  raw.on("close", events.closed);
}
