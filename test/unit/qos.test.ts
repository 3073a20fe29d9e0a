// QoS without a daemon: the token bucket, a volume's throttle and the node's
// fair share between volumes (src/daemon/qos.ts), driven by a fake clock and a
// seeded PRNG, so every run is the same run. Rates are checked exactly here,
// where time is simulated; bench/qos.sh measures them against real clients.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { Prng } from "../../src/base/prng.js";
import { TokenBucket } from "../../src/base/token-bucket.js";
import type { VolumeQos } from "../../src/cluster/commands.js";
import { ioFairQuantumBytes, ioFairRequestCostBytes, snapshotChunkBytes } from "../../src/constants.js";
import { FairQueue, IoScheduler, NodeAdmission, resyncPacer, VolumeThrottle, type QosClock } from "../../src/daemon/qos.js";
import { NodeDisk, deferImmediate } from "../../src/os/node-disk.js";
import { MessageType, newMessage } from "../../src/raft/types.js";
import { SnapshotSender, type SnapChunkEnvelope } from "../../src/replication/snapshot.js";
import { Store } from "../../src/store/store.js";
import { writesTo } from "../helpers/store-writes.js";
import { tempDir } from "../helpers/tmp.js";

/** A clock that moves only when told; timers fire in time order, each followed by the promise callbacks it set off. */
class FakeClock implements QosClock {
  t = 0;
  private timers: { at: number; seq: number; fn: () => void }[] = [];
  private seq = 0;

  now(): number {
    return this.t;
  }

  after(ms: number, fn: () => void): () => void {
    const timer = { at: this.t + ms, seq: this.seq++, fn };
    this.timers.push(timer);
    return () => {
      this.timers = this.timers.filter((x) => x !== timer);
    };
  }

  async advanceTo(t: number): Promise<void> {
    await settle();
    for (;;) {
      this.timers.sort((a, b) => a.at - b.at || a.seq - b.seq);
      const next = this.timers[0];
      if (next === undefined || next.at > t) break;
      this.timers.shift();
      this.t = next.at;
      next.fn();
      await settle();
    }
    this.t = t;
  }
}

/** Lets every promise callback queued so far (and those they queue) run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((r) => setImmediate(r));
}

const limits = (q: Partial<VolumeQos>): VolumeQos => ({ maxIops: 0, maxBandwidthBytes: 0, burstSec: 1, ...q });

test("token bucket: a full bucket spends its capacity at once, then one token per 1/rate", () => {
  const b = new TokenBucket(100, 100, 0);
  for (let i = 0; i < 100; i++) {
    assert.is(b.waitMs(1, 0), 0);
    b.take(1, 0);
  }
  assert.is(b.waitMs(1, 0), 10);
  assert.is(b.waitMs(1, 10), 0);
  // An idle bucket saves up to its capacity and no more.
  assert.is(b.waitMs(100, 1_000_000), 0);
  b.take(100, 1_000_000);
  assert.is(b.waitMs(1, 1_000_000), 10);
});

test("token bucket: a cost above the capacity waits for a full bucket, then leaves a debt the next cost waits out", () => {
  const mib = 1024 * 1024;
  const b = new TokenBucket(mib, mib, 0); // 1 MiB/s, bursts of 1 s
  assert.is(b.waitMs(32 * mib, 0), 0);
  b.take(32 * mib, 0);
  assert.is(b.waitMs(4096, 0), ((31 * mib + 4096) * 1000) / mib);
  // A lower capacity takes effect at once; tokens above it are lost.
  const c = new TokenBucket(10, 10, 0);
  c.configure(10, 2, 0);
  c.take(2, 0);
  assert.is(c.waitMs(1, 0), 100);
});

/** Issues `count` requests of `bytes` at time 0 and returns when each went, in ms. */
async function runThrottled(clock: FakeClock, t: VolumeThrottle, count: number, bytes: number, untilMs: number): Promise<number[]> {
  const went: number[] = [];
  for (let i = 0; i < count; i++) {
    const p = t.admit(bytes);
    if (p === undefined) went.push(clock.now());
    else void p.then(() => went.push(clock.now()));
  }
  await clock.advanceTo(untilMs);
  return went;
}

test("throttle: 200 IOPS with a 1 s burst lets 200 requests go at once, then one each 5 ms, in order", async () => {
  const clock = new FakeClock();
  const t = new VolumeThrottle(clock, () => limits({ maxIops: 200 }));
  const went = await runThrottled(clock, t, 1000, 4096, 10_000);
  assert.is(went.length, 1000);
  assert.is(went.filter((ms) => ms === 0).length, 200);
  for (let i = 200; i < 1000; i++) assert.ok(Math.abs(went[i]! - (i - 199) * 5) <= 1, `request ${i} went at ${went[i]} ms`);
  // 1000 requests at 200 a second with 200 saved: 4 s, the rate the limit names.
  assert.ok(went.at(-1)! >= 3995 && went.at(-1)! <= 4005);
  assert.is(t.throttledRequests, 800);
  assert.ok(t.throttleWaitSec > 0);
});

test("throttle: a bandwidth limit counts bytes; reads and writes draw from the same bucket", async () => {
  const clock = new FakeClock();
  const mib = 1024 * 1024;
  const t = new VolumeThrottle(clock, () => limits({ maxBandwidthBytes: 4 * mib, burstSec: 1 }));
  const went = await runThrottled(clock, t, 64, 256 * 1024, 60_000); // 16 MiB at 4 MiB/s with 4 MiB saved: 3 s
  assert.is(went.length, 64);
  assert.ok(Math.abs(went.at(-1)! - 3000) <= 2, `the last went at ${went.at(-1)} ms`);
});

test("throttle: removing the limit lets every waiting request go at the next turn of its timer; no limit, no wait", async () => {
  const clock = new FakeClock();
  let q = limits({ maxIops: 10 });
  const t = new VolumeThrottle(clock, () => q);
  const went: number[] = [];
  for (let i = 0; i < 100; i++) void (t.admit(0) ?? Promise.resolve()).then(() => went.push(clock.now()));
  await clock.advanceTo(50);
  assert.is(went.length, 10);
  q = limits({});
  await clock.advanceTo(150);
  assert.is(went.length, 100);
  assert.is(t.admit(0), undefined);
});

test("throttle: a request waiting long under a low limit goes within a second once the limit is removed", async () => {
  const clock = new FakeClock();
  const mib = 1024 * 1024;
  let q = limits({ maxBandwidthBytes: mib });
  const t = new VolumeThrottle(clock, () => q);
  const went = await runThrottled(clock, t, 2, 32 * mib, 10); // the second would wait 31 s
  assert.is(went.length, 1);
  q = limits({});
  await clock.advanceTo(1010);
  assert.is(went.length, 2);
});

test("throttle: a changed limit applies from the next request", async () => {
  const clock = new FakeClock();
  let q = limits({ maxIops: 100 });
  const t = new VolumeThrottle(clock, () => q);
  await runThrottled(clock, t, 100, 0, 0); // the burst, spent
  q = limits({ maxIops: 1000 });
  const went = await runThrottled(clock, t, 100, 0, 1000);
  assert.ok(went.at(-1)! <= 101, `at 1000 IOPS, 100 requests take 100 ms, not ${went.at(-1)}`);
});

/**
 * The node's fair share: volume A keeps `deepQd` requests outstanding, volume
 * B one at a time; `slots` run at once, each for 1-3 ms (seeded). Returns, for
 * each of B's requests, how many of A's requests started between B's arrival
 * and its start, and B's waits.
 */
async function fairShare(seed: number, slots: number, deepQd: number, aBytes: number, untilMs: number) {
  const clock = new FakeClock();
  const prng = new Prng(seed);
  const s = new IoScheduler(clock, slots);
  const qa = new FairQueue();
  const qb = new FairQueue();
  let aStarted = 0;
  let aBytesDone = 0;
  let bBytesDone = 0;
  const bPassed: number[] = [];
  const bWaitMs: number[] = [];
  const serve = (onDone: () => void): void => {
    clock.after(1 + prng.int(3), () => {
      s.done();
      onDone();
    });
  };
  const issueA = (): void => {
    const go = (): void => {
      aStarted++;
      serve(() => {
        aBytesDone += aBytes;
        if (clock.now() < untilMs) issueA();
      });
    };
    const p = s.admit(qa, aBytes);
    if (p === undefined) go();
    else void p.then(go);
  };
  const issueB = (): void => {
    const arrived = clock.now();
    const aBefore = aStarted;
    const go = (): void => {
      bPassed.push(aStarted - aBefore);
      bWaitMs.push(clock.now() - arrived);
      serve(() => {
        bBytesDone += 4096;
        if (clock.now() < untilMs) issueB();
      });
    };
    const p = s.admit(qb, 4096);
    if (p === undefined) go();
    else void p.then(go);
  };
  for (let i = 0; i < deepQd; i++) issueA();
  issueB();
  await clock.advanceTo(untilMs + 100);
  return { bPassed, bWaitMs, aBytesDone, bBytesDone, qb };
}

test("fair share: a QD1 volume's request starts within one round of deficit round-robin while another volume keeps 512 queued (seeded)", async () => {
  for (const seed of [1, 2, 3]) {
    const r = await fairShare(seed, 4, 512, 4096, 2000);
    // B's request waits only for A's current turn: at most a quantum's worth of A's requests start first.
    const turn = Math.ceil(ioFairQuantumBytes / (4096 + ioFairRequestCostBytes));
    // One of B's per round, against 16 of A's on 4 slots of 2 ms: a round is about 8.5 ms.
    assert.ok(r.bPassed.length > 200, `seed ${seed}: B completed ${r.bPassed.length} requests in 2 s`);
    assert.ok(Math.max(...r.bPassed) <= turn, `seed ${seed}: ${Math.max(...r.bPassed)} of A's requests started ahead of one of B's (at most ${turn})`);
    // With 512 queued FIFO, B would wait for 512 requests on 4 slots of 1-3 ms: about 256 ms.
    assert.ok(Math.max(...r.bWaitMs) <= 20, `seed ${seed}: B waited up to ${Math.max(...r.bWaitMs)} ms`);
    assert.is(r.qb.queuedRequests, r.bPassed.filter((n, i) => n > 0 || r.bWaitMs[i]! > 0).length);
  }
});

test("fair share: two backlogged volumes get about equal bytes, whatever their request sizes", async () => {
  const clock = new FakeClock();
  const s = new IoScheduler(clock, 1);
  const big = new FairQueue();
  const small = new FairQueue();
  const bytes = { big: 0, small: 0 };
  // Both fully backlogged: 64 requests of 1 MiB against 4096 of 4 KiB; run 2000 slots' worth, one at a time.
  // (The first big request takes the free slot without waiting, and is not counted.)
  const started: ("big" | "small")[] = [];
  for (let i = 0; i < 64; i++) void s.admit(big, 1024 * 1024)?.then(() => started.push("big"));
  for (let i = 0; i < 4096; i++) void s.admit(small, 4096)?.then(() => started.push("small"));
  for (let i = 0; i < 2000; i++) {
    s.done();
    await settle();
  }
  for (const who of started) bytes[who] += who === "big" ? 1024 * 1024 : 4096;
  const costBig = bytes.big + ioFairRequestCostBytes * (bytes.big / (1024 * 1024));
  const costSmall = bytes.small + ioFairRequestCostBytes * (bytes.small / 4096);
  assert.ok(Math.abs(costBig - costSmall) / costSmall < 0.1, `big ${bytes.big} bytes, small ${bytes.small} bytes`);
});

test("node admission: a volume's limit, then the fair share; counters per volume", async () => {
  const clock = new FakeClock();
  const q = new Map<string, VolumeQos>([["slow", limits({ maxIops: 10 })]]);
  const a = new NodeAdmission(clock, 2, (name) => q.get(name));
  const slow = a.gate("slow");
  const fast = a.gate("fast");
  for (let i = 0; i < 10; i++) {
    assert.is(slow.admit(0), undefined);
    slow.done();
  }
  const p = slow.admit(0);
  assert.ok(p !== undefined);
  assert.is(fast.admit(0), undefined);
  fast.done();
  await clock.advanceTo(100);
  assert.is(a.load.inFlight, 1);
  slow.done();
  assert.equal(a.counters("slow"), { throttledRequests: 1, throttleWaitSec: 0.1, queuedRequests: 0, queueWaitSec: 0 });
  a.prune(() => false);
  assert.is(a.counters("slow"), undefined);
});

test("resync pacer: copies together keep to the rate; one chunk may go at once; the rate is read before each chunk", () => {
  const clock = new FakeClock();
  let rate = 8 * snapshotChunkBytes;
  const p = resyncPacer(clock, () => rate);
  assert.is(p.waitMs(), 0);
  p.sent(snapshotChunkBytes);
  assert.is(p.waitMs(), 125);
  clock.t = 125;
  assert.is(p.waitMs(), 0);
  // A faster limit holds a tenth of a second of it: 12.8 chunks at 128 MiB/s, which a late timer may spend at once.
  const fast = resyncPacer(clock, () => 128 * snapshotChunkBytes);
  for (let i = 0; i < 12; i++) {
    assert.is(fast.waitMs(), 0);
    fast.sent(snapshotChunkBytes);
  }
  assert.ok(fast.waitMs() > 0);
  // No limit (0): nothing waits; a new rate applies from the next chunk.
  p.sent(snapshotChunkBytes);
  rate = 0;
  assert.is(p.waitMs(), 0);
  rate = 4 * snapshotChunkBytes;
  p.sent(snapshotChunkBytes);
  assert.is(p.waitMs(), 250);
});

test("a volume copy draws each chunk from the node's rebuild pacer: 8 MiB at 2 MiB/s, one 1 MiB chunk each 500 ms after the first", async () => {
  const mib = 1024 * 1024;
  const group = 5;
  const t = tempDir("qos-sender");
  const store = await Store.open({ disk: new NodeDisk(t.dir), defer: deferImmediate }, [{ groupId: group, sizeBytes: 8 * mib }]);
  try {
    await writesTo(store).write(group, 0, [Buffer.alloc(8 * mib, 0x5a)], 8 * mib);
    const clock = new FakeClock();
    const sent: { seq: number; at: number; bytes: number }[] = [];
    const sender: SnapshotSender = new SnapshotSender({
      store,
      send: (to, env) => {
        const c = env as SnapChunkEnvelope;
        if (c.kind !== "snap-chunk") return true;
        sent.push({ seq: c.seq, at: clock.now(), bytes: c.data.length });
        // The follower acknowledges at once: only the pacer holds the copy back.
        queueMicrotask(() => sender.onAck(to, { kind: "snap-ack", group, index: c.index, seq: c.seq, ok: true }));
        return true;
      },
      reportSnapshot: () => {},
      stillSending: () => true,
      pace: resyncPacer(clock, () => 2 * mib),
      log: () => {},
    });
    const m = newMessage(MessageType.snap, 1, 2, 2);
    m.snapshot = { meta: { index: 10, term: 2, conf: { voters: [1, 2], learners: [] } }, data: new Uint8Array(0) };
    sender.start(group, 8 * mib, m);
    await clock.advanceTo(5000);
    assert.equal(sent.map((x) => x.bytes), new Array<number>(8).fill(mib));
    assert.equal(sent.map((x) => x.at), [0, 500, 1000, 1500, 2000, 2500, 3000, 3500]);
    assert.equal(sender.copies(group)[0]?.cursorBytes, 8 * mib);
  } finally {
    await store.close();
    t.remove();
  }
});

test.run();
