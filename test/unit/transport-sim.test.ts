// PeerTransport driven through its ports by a seeded fake network and clock:
// every interleaving of two nodes dialing each other at once, with messages
// queued before and during the race, must end with one connection per pair
// and every message delivered once, in order. A failure prints the seed;
// PXD_SIM_SEED=n replays one seed (PXD_SIM_LOG=1 adds the logs), PXD_SIM_SEEDS=n runs more.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { Prng } from "../../src/base/prng.js";
import { nodePeerCrypto } from "../../src/os/peer-listener.js";
import type { PeerNetwork, PeerSocket, PeerSocketEvents, PeerTimers } from "../../src/replication/ports.js";
import { PeerTransport } from "../../src/replication/transport.js";

type Task = () => void;

/** Runs tasks in a seeded order; tasks of one channel (one TCP direction) stay FIFO. */
class World {
  now = 0;
  dials = 0;
  private readonly channels = new Map<string, Task[]>();
  private timers: { at: number; seq: number; fn: Task; live: boolean }[] = [];
  private seq = 0;
  readonly listeners = new Map<string, PeerTransport>();
  constructor(readonly prng: Prng) {}

  post(channel: string, task: Task): void {
    let q = this.channels.get(channel);
    if (q === undefined) this.channels.set(channel, (q = []));
    q.push(task);
  }

  setTimeout(fn: Task, ms: number): () => void {
    const t = { at: this.now + ms, seq: this.seq++, fn, live: true };
    this.timers.push(t);
    return () => void (t.live = false);
  }

  /** One step: a random ready channel's head, else the next timer. False when nothing is left before `until`. */
  step(until: number): boolean {
    const ready = [...this.channels.entries()].filter(([, q]) => q.length > 0);
    if (ready.length > 0) {
      ready[this.prng.int(ready.length)]?.[1].shift()?.();
      return true;
    }
    this.timers = this.timers.filter((t) => t.live);
    this.timers.sort((a, b) => a.at - b.at || a.seq - b.seq);
    const t = this.timers[0];
    if (t === undefined || t.at > until) return false;
    this.timers.shift();
    this.now = Math.max(this.now, t.at);
    t.fn();
    return true;
  }

  run(ms: number): void {
    const until = this.now + ms;
    for (let i = 0; i < 1_000_000 && this.step(until); i++);
    this.now = until;
  }
}

/** One end of a fake TCP connection with half-close (allowHalfOpen false, like node:net). */
class FakeEnd implements PeerSocket {
  other!: FakeEnd;
  events!: PeerSocketEvents;
  private wroteEnd = false;
  private gotEnd = false;
  private closedOnce = false;
  private paused = false;
  private readonly inbox: Task[] = [];
  constructor(
    readonly world: World,
    readonly name: string,
    readonly remote: string,
  ) {}

  write(chunks: readonly Uint8Array[]): void {
    if (this.wroteEnd || this.closedOnce) return;
    const data = Buffer.concat(chunks.map((c) => Buffer.from(c)));
    this.world.post(this.name, () => this.other.receive(() => this.other.events.data(data)));
  }
  queuedBytes(): number {
    return 0;
  }
  pause(): void {
    this.paused = true;
  }
  resume(): void {
    this.paused = false;
    while (!this.paused && this.inbox.length > 0) this.inbox.shift()?.();
  }
  end(): void {
    if (this.wroteEnd || this.closedOnce) return;
    this.wroteEnd = true;
    this.world.post(this.name, () => this.other.receive(() => this.other.onEnd()));
    this.maybeClosed();
  }
  destroy(): void {
    if (this.closedOnce) return;
    this.close(undefined);
    this.world.post(this.name, () => this.other.close("ECONNRESET"));
  }
  private receive(t: Task): void {
    if (this.closedOnce) return;
    if (this.paused) this.inbox.push(t);
    else t();
  }
  private onEnd(): void {
    this.gotEnd = true;
    this.events.ended();
    this.end(); // allowHalfOpen: false
    this.maybeClosed();
  }
  private maybeClosed(): void {
    if (this.wroteEnd && this.gotEnd) this.world.post(`${this.name}:close`, () => this.close(undefined));
  }
  close(error: string | undefined): void {
    if (this.closedOnce) return;
    this.closedOnce = true;
    this.events.closed(error);
  }
}

function fakeNetwork(world: World, self: string): PeerNetwork {
  let n = 0;
  return {
    dial(host, port, events) {
      world.dials++;
      const id = `${self}->${host}#${n++}`;
      const local = new FakeEnd(world, `${id}:fwd`, `${host}:${port}`);
      const remote = new FakeEnd(world, `${id}:back`, `${self}:${40000 + n}`);
      local.other = remote;
      remote.other = local;
      local.events = events;
      world.post(`${id}:syn`, () => {
        const t = world.listeners.get(`${host}:${port}`);
        // The SYN-ACK is queued before accept() runs, so it precedes the acceptor's hello.
        let ev: PeerSocketEvents | undefined;
        world.post(`${id}:back`, () => (ev !== undefined ? events.connected() : local.close("ECONNREFUSED")));
        ev = t?.accept(remote);
        if (ev === undefined) return;
        remote.events = ev;
      });
      return local;
    },
  };
}

function node(world: World, id: number, got: Map<number, number[]>): PeerTransport {
  const host = `10.0.0.${id}`;
  const timers: PeerTimers = {
    setTimeout: (fn, ms) => world.setTimeout(fn, ms),
    defer: (fn) => world.post(`defer-${id}`, fn),
    now: () => world.now,
    random: () => world.prng.nextU32() / 2 ** 32,
  };
  const t = new PeerTransport({
    nodeId: id,
    clusterId: "sim",
    secret: Buffer.alloc(32, 1),
    network: fakeNetwork(world, host),
    timers,
    crypto: nodePeerCrypto,
    log: process.env.PXD_SIM_LOG ? { info: (m) => console.log(`[${world.now}] ${id} ${m}`), warn: (m) => console.log(`[${world.now}] ${id} W ${m}`), error: (m) => console.log(`[${world.now}] ${id} E ${m}`) } : { info: () => {}, warn: () => {}, error: () => {} },
  });
  t.onMessage((from, m) => {
    let l = got.get(from);
    if (l === undefined) got.set(from, (l = []));
    l.push((m as { seq: number }).seq);
  });
  world.listeners.set(`${host}:9002`, t);
  return t;
}

const addr = (id: number) => ({ id, host: `10.0.0.${id}`, port: 9002 });

test("simultaneous dial in 300 seeded interleavings: one connection, every message once and in order", () => {
  const seeds = process.env.PXD_SIM_SEED ? [Number(process.env.PXD_SIM_SEED)] : Array.from({ length: Number(process.env.PXD_SIM_SEEDS ?? 300) }, (_, i) => i + 1);
  for (const seed of seeds) {
    const world = new World(new Prng(seed));
    const got1 = new Map<number, number[]>();
    const got2 = new Map<number, number[]>();
    const a = node(world, 1, got1);
    const b = node(world, 2, got2);
    a.setPeers([addr(2)]);
    b.setPeers([addr(1)]);
    let sent = 0;
    const sendSome = (n: number): void => {
      for (let i = 0; i < n; i++, sent++) {
        assert.ok(a.send(2, { seq: sent }), `seed ${seed}: send 1->2`);
        assert.ok(b.send(1, { seq: sent }), `seed ${seed}: send 2->1`);
      }
    };
    sendSome(20);
    // Keep sending while the race plays out: some messages go on the losing connection.
    for (let s = 0; s < 60; s++) {
      world.step(world.now);
      if (world.prng.chance(0.3)) sendSome(1);
    }
    world.run(3_000);
    const want = Array.from({ length: sent }, (_, i) => i);
    const ctx = `seed ${seed}`;
    if (process.env.PXD_SIM_SEED) console.log(JSON.stringify(got2.get(1)), JSON.stringify(got1.get(2)));
    assert.equal(got2.get(1) ?? [], want, `${ctx}: 1->2 delivered once, in order`);
    assert.equal(got1.get(2) ?? [], want, `${ctx}: 2->1 delivered once, in order`);
    assert.is(a.stats().peers[0]?.connections, 1, `${ctx}: node 1 has one connection`);
    assert.is(b.stats().peers[0]?.connections, 1, `${ctx}: node 2 has one connection`);
    void a.close();
    void b.close();
    world.run(100);
  }
});

test("an unreachable peer is redialed with growing, capped backoff and refused sends; once up, messages flow", () => {
  const world = new World(new Prng(9));
  const got = new Map<number, number[]>();
  const a = node(world, 1, new Map());
  a.setPeers([addr(2)]); // nobody listens on node 2 yet
  world.run(10);
  assert.not.ok(a.send(2, { seq: 0 }), "unreachable: refused at once");
  world.run(10_000);
  // 50, 100, ... ms, then every 1-2 s (jittered cap): about a dozen dials in 10 s, not thousands.
  assert.ok(world.dials >= 8 && world.dials <= 20, `${world.dials} dials in 10 s`);
  const b = node(world, 2, got);
  b.setPeers([addr(1)]);
  world.run(2_500); // at most one capped backoff (2 s) later
  assert.ok(a.isConnected(2));
  assert.ok(a.send(2, { seq: 1 }));
  world.run(100);
  assert.equal(got.get(1), [1]);
  void a.close();
  void b.close();
  world.run(100);
});

test.run();
