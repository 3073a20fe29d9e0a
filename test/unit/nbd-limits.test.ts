// The NBD server's bounds on memory and connections (docs/formats/nbd.md,
// "Memory" and "Connections"), driven through its declared boundary
// (src/nbd/ports.ts) with fake sockets and a fake clock, so that what the
// kernel has taken, what time it is and who is paused are exact. The same
// rules against a real daemon are in test/e2e/daemon-limits.test.ts.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { nbdQueuedBufferOverheadBytes } from "../../src/constants.js";
import type { NbdSocket, NbdSocketEvents, NbdTimers } from "../../src/nbd/ports.js";
import { NbdServer } from "../../src/nbd/server.js";
import { MemoryRegistry } from "../helpers/memory-export.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const CMD = { READ: 0, WRITE: 1, FLUSH: 3 };

class FakeTimers implements NbdTimers {
  nowMs = 0;
  deferred: (() => void)[] = [];
  setTimeout(): () => void {
    return () => {}; // the handshake timeout: never reached in these tests
  }
  defer(fn: () => void): void {
    this.deferred.push(fn);
  }
  now(): number {
    return this.nowMs;
  }
}

/** A socket whose kernel side takes replies only while the client reads. */
class FakeSocket implements NbdSocket {
  events: NbdSocketEvents | undefined;
  /** What the client received. */
  received: Buffer[] = [];
  pending: { chunks: readonly Buffer[]; written: () => void }[] = [];
  paused = false;
  destroyed = false;
  closeDelivered = false;

  constructor(
    readonly peer: string,
    readonly clientAddress: string | undefined,
    public reading: boolean,
  ) {}

  write(chunks: readonly Buffer[], written: () => void): void {
    if (this.destroyed) return written();
    this.pending.push({ chunks, written });
  }
  pause(): void {
    this.paused = true;
  }
  resume(): void {
    this.paused = false;
  }
  end(): void {
    this.destroy();
  }
  destroy(): void {
    this.destroyed = true;
  }
  /** Node's side of it, run by settle(): the kernel takes what the client reads; a destroyed socket drops the rest, then closes. */
  step(): boolean {
    if (this.destroyed && !this.closeDelivered) {
      this.closeDelivered = true;
      for (const p of this.pending.splice(0)) p.written();
      this.events?.closed();
      return true;
    }
    if (!this.reading || this.pending.length === 0) return false;
    for (const p of this.pending.splice(0)) {
      this.received.push(...p.chunks);
      p.written();
    }
    return true;
  }
  pendingBytes(): number {
    return this.pending.reduce((a, p) => a + p.chunks.reduce((b, c) => b + c.length, 0), 0);
  }
  receivedBytes(): Buffer {
    return Buffer.concat(this.received);
  }
}

interface Harness {
  server: NbdServer;
  timers: FakeTimers;
  registry: MemoryRegistry;
  logs: string[];
  sockets: FakeSocket[];
}

function harness(limits: ConstructorParameters<typeof NbdServer>[0]["limits"]): Harness {
  const timers = new FakeTimers();
  const registry = new MemoryRegistry([{ name: "disk", sizeBytes: 64 * MiB }]);
  const logs: string[] = [];
  const log = { info: (m: string) => logs.push(`info: ${m}`), warn: (m: string) => logs.push(`warn: ${m}`), error: (m: string) => logs.push(`error: ${m}`) };
  return { server: new NbdServer({ registry, log, timers, limits }), timers, registry, logs, sockets: [] };
}

/** Runs deferred work, socket progress and promise callbacks until nothing moves. */
async function settle(h: Harness): Promise<void> {
  for (let round = 0; round < 10_000; round++) {
    let moved = false;
    for (const fn of h.timers.deferred.splice(0)) {
      fn();
      moved = true;
    }
    for (const s of h.sockets) moved = s.step() || moved;
    await new Promise((r) => setImmediate(r));
    if (!moved && h.timers.deferred.length === 0) return;
  }
  throw new Error("the fake world did not settle");
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
}

/** Client flags, then NBD_OPT_GO for "disk" (fixed newstyle, no zeroes). */
function handshakeBytes(): Buffer {
  const name = Buffer.from("disk");
  const data = Buffer.concat([u32(name.length), name, Buffer.alloc(2)]);
  return Buffer.concat([u32(3), Buffer.from("IHAVEOPT"), u32(7), u32(data.length), data]);
}

function request(command: number, cookie: number, offsetBytes: number, lengthBytes: number): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(0x25609513, 0);
  b.writeUInt16BE(command, 6);
  b.writeBigUInt64BE(BigInt(cookie), 8);
  b.writeBigUInt64BE(BigInt(offsetBytes), 16);
  b.writeUInt32BE(lengthBytes, 24);
  return b;
}

/** A client from `address` (undefined: a Unix socket); `go` takes it to transmission. Undefined when refused. */
async function connect(h: Harness, address: string | undefined, o: { reading?: boolean; go?: boolean } = {}): Promise<FakeSocket> {
  const s = new FakeSocket(`${address ?? "unix"}#${h.sockets.length}`, address, o.reading ?? true);
  h.sockets.push(s);
  s.events = h.server.accept(s);
  if (s.events !== undefined && o.go !== false) s.events.data(handshakeBytes());
  await settle(h);
  return s;
}

function send(s: FakeSocket, ...chunks: Buffer[]): void {
  assert.ok(s.events, `${s.peer} was accepted`);
  s.events.data(Buffer.concat(chunks));
}

test("clients that never read hold at most their own bound and the node budget; a fresh client's small read is served at once", async () => {
  // 8 connections x 64 KiB floors: 7.5 MiB shared by what connections hold above their floors.
  const h = harness({ connectionsMax: 8, payloadBytesMax: MiB, connectionBytesInFlightFloor: 64 * KiB, connectionBytesInFlightMax: 4 * MiB, nodeBytesInFlightMax: 8 * MiB });
  const exp = h.registry.get("disk");
  const hogs = [await connect(h, "10.0.0.1", { reading: false }), await connect(h, "10.0.0.2", { reading: false }), await connect(h, "10.0.0.3", { reading: false })];
  for (const s of hogs) send(s, ...Array.from({ length: 20 }, (_, i) => request(CMD.READ, i, i * MiB, MiB)));
  await settle(h);
  // Each connection stops below 4 MiB (3 reads); the third finds the shared bytes full after one and waits.
  assert.is(exp.reads, 7);
  assert.equal(hogs.map((s) => s.paused), [true, true, true]);
  assert.is(h.server.stats().waitingConnections, 1);
  assert.ok(h.server.budget.heldBytesPeak <= 8 * MiB, `peak ${h.server.budget.heldBytesPeak}`);

  const fresh = await connect(h, "10.0.0.4");
  const before = fresh.receivedBytes().length;
  send(fresh, request(CMD.READ, 77, 4096, 4096));
  await settle(h);
  const reply = fresh.receivedBytes().subarray(before);
  assert.is(reply.length, 16 + 4096);
  assert.equal([reply.readUInt32BE(0), reply.readUInt32BE(4), reply.readBigUInt64BE(8)], [0x67446698, 0, 77n]);

  hogs[0]!.reading = true; // the first hog reads at last: its bytes drain and the one that waited goes on
  await settle(h);
  assert.is(exp.reads, 20 + 3 + 3 + 1);
  assert.is(h.server.stats().waitingConnections, 0);
  for (const s of [...hogs, fresh]) s.destroy();
  await settle(h);
  assert.equal(h.server.stats().heldBytes, 0, "every byte held is given back once the connections are gone");
});

test("a client that never reads the replies to small requests is bounded by what each queued buffer costs Node", async () => {
  const h = harness({ payloadBytesMax: MiB, connectionBytesInFlightMax: 4 * MiB });
  const s = await connect(h, "10.0.0.1", { reading: false });
  const handshake = s.pendingBytes();
  const n = 20_000;
  send(s, ...Array.from({ length: n }, (_, i) => request(CMD.FLUSH, i, 0, 0)));
  await settle(h);
  const replies = (s.pendingBytes() - handshake) / 16;
  assert.ok(s.paused);
  assert.ok(replies < 4 * MiB / (16 + nbdQueuedBufferOverheadBytes), `${replies} replies queued`);
  assert.ok(replies > 4 * MiB / (16 + nbdQueuedBufferOverheadBytes) - 200, `${replies} replies queued`);
  s.reading = true;
  await settle(h);
  assert.is((s.receivedBytes().length - handshake) / 16, n, "every request is answered once the client reads");
});

test("at a cap, the connection idle longest past the idle timeout makes room; busy, handshaking and recent ones never do", async () => {
  const h = harness({ connectionsMax: 5, connectionsPerAddressMax: 2, idleTimeoutMs: 1000 });
  const a1 = await connect(h, "10.0.0.1");
  const a2 = await connect(h, "10.0.0.1");
  const a3 = await connect(h, "10.0.0.1");
  assert.ok(a3.destroyed && a3.events === undefined, "the address is at its cap and nothing is idle long enough");
  assert.ok(h.logs.some((l) => l.startsWith("warn: ") && l.includes("refused, 2 connections from 10.0.0.1 (limit 2)")));
  h.timers.nowMs = 600;
  send(a1, request(CMD.WRITE, 1, 0, 4096), Buffer.alloc(100)); // a write whose payload is still arriving: busy
  h.timers.nowMs = 1500;
  const a4 = await connect(h, "10.0.0.1");
  assert.ok(a2.destroyed && !a1.destroyed && !a4.destroyed, "the idle one of the address made room, not the busy one");
  assert.ok(h.logs.some((l) => l.startsWith("warn: ") && l.includes("idle for 1500 ms; closed to make room")));

  const u1 = await connect(h, undefined, { go: false }); // still in the handshake
  h.timers.nowMs = 1700;
  const u2 = await connect(h, undefined);
  h.timers.nowMs = 1800;
  const u3 = await connect(h, undefined);
  assert.ok(!u2.destroyed && !u3.destroyed, "Unix-socket clients are not held to the per-address cap");
  assert.is(h.server.connectionCount, 5);
  const b1 = await connect(h, "10.0.0.2");
  assert.ok(b1.destroyed, "the node is full and nothing has been idle for 1000 ms");

  h.timers.nowMs = 2600;
  const b2 = await connect(h, "10.0.0.2");
  assert.ok(a4.destroyed && !b2.destroyed, "a4 (idle since 1500) was the only one idle long enough");
  h.timers.nowMs = 3000;
  const c1 = await connect(h, "10.0.0.3");
  assert.ok(u2.destroyed && !u3.destroyed && !c1.destroyed, "u2 (since 1700) had been idle longer than u3 (since 1800)");
  assert.ok(!u1.destroyed && !a1.destroyed, "a handshake and a busy connection are never evicted");
  assert.equal([h.server.stats().idleEvictions, h.server.stats().refusedConnections], [3, 2]);
});

test("a request waiting for room is not idle, and is answered once room comes", async () => {
  const h = harness({ connectionsMax: 8, connectionsPerAddressMax: 8, idleTimeoutMs: 1000, payloadBytesMax: MiB, connectionBytesInFlightFloor: 64 * KiB, connectionBytesInFlightMax: 4 * MiB, nodeBytesInFlightMax: 8 * MiB });
  const hogs: FakeSocket[] = [];
  for (let i = 0; i < 3; i++) {
    const s = await connect(h, "10.0.0.1", { reading: false });
    send(s, ...Array.from({ length: 4 }, (_, k) => request(CMD.READ, k, k * MiB, MiB)));
    hogs.push(s);
  }
  const waiter = await connect(h, "10.0.0.1");
  send(waiter, request(CMD.READ, 9, 0, 2 * KiB), request(CMD.READ, 10, 0, MiB));
  await settle(h);
  assert.is(h.server.stats().waitingConnections, 2, "the third hog and the client after it wait for room");
  h.timers.nowMs = 5000;
  for (let i = 0; i < 4; i++) assert.not.ok((await connect(h, "10.0.0.1")).destroyed);
  const late = await connect(h, "10.0.0.1");
  assert.ok(late.destroyed, "no connection with a request held back counts as idle");
  const before = waiter.receivedBytes().length;
  hogs[1]!.destroy();
  await settle(h);
  assert.is(waiter.receivedBytes().length - before, 16 + MiB, "the waiting READ was served once the hog's bytes were gone");
});

test.run();
