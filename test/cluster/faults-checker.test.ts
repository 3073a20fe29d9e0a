// The fault tests' checker (test/helpers/checker.ts) against in-memory devices:
// a correct one (with failures whose outcome is unknown) passes; deliberately
// wrong ones -- stale reads from a lagging replica, a write acknowledged and
// lost, a write that resurfaces after a newer one -- are caught.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { blockData, decodeBlock, History, Load, OpError, verifyAll, type Target } from "../helpers/checker.js";

const blocks = 64;
const zero = Buffer.alloc(4096);
const tick = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** An in-memory device; `lagMs` makes reads come from a replica that applies writes that much later. */
class Fake implements Target {
  readonly primary = new Map<number, Buffer>();
  readonly replica = new Map<number, Buffer>();
  private n = 0;
  constructor(
    readonly name: string,
    readonly o: { lagMs?: number; failEvery?: number; loseEvery?: number; resurrect?: boolean } = {},
  ) {}
  async write(block: number, data: Buffer): Promise<void> {
    const n = ++this.n;
    await tick(n % 3);
    const fail = this.o.failEvery !== undefined && n % this.o.failEvery === 0;
    const lose = this.o.loseEvery !== undefined && n % this.o.loseEvery === 0;
    // A failed write lands half the time (the outcome is unknown to the client).
    if (!lose && (!fail || n % 2 === 0)) {
      const prev = this.primary.get(block);
      this.primary.set(block, data);
      setTimeout(() => this.replica.set(block, data), this.o.lagMs ?? 0);
      // resurrect: a failed write's older value comes back after the next write is acknowledged.
      if (this.o.resurrect && fail && prev) setTimeout(() => this.primary.set(block, prev), 30);
    }
    await tick(n % 2);
    if (fail) throw new OpError("errno", "EIO", 5);
  }
  async read(block: number): Promise<Buffer> {
    await tick(this.n % 2);
    const m = (this.o.lagMs ?? 0) > 0 ? this.replica : this.primary;
    return m.get(block) ?? zero;
  }
  close(): void {}
}

async function runAgainst(device: Target, ms: number, readShare = 0.5): Promise<{ h: History; load: Load }> {
  const h = new History(blocks);
  const load = new Load(h, [device, device], { depth: 4, readShare, seed: 7, backoffMs: 1 });
  await tick(ms);
  await load.stop();
  await verifyAll(h, device);
  return { h, load };
}

test("block content names its block and sequence; anything else is garbage", () => {
  assert.is(decodeBlock(3, blockData(3, 17)), 17);
  assert.is(decodeBlock(3, zero), 0);
  assert.is(decodeBlock(4, blockData(3, 17)), undefined, "another block's data");
  const torn = Buffer.concat([blockData(3, 17).subarray(0, 2048), blockData(3, 18).subarray(2048)]);
  assert.is(decodeBlock(3, torn), undefined, "half of one write and half of another");
});

test("the register model: floor, in-flight writes, unknown outcomes, reads that raise the floor", () => {
  const h = new History(3);
  const w1 = h.invokeWrite(0);
  const r0 = h.invokeRead(0);
  assert.ok(h.completeRead(r0, "ok", blockData(0, w1)), "a read may return a write in flight");
  const r1 = h.invokeRead(0); // invoked after r0 returned w1: zeroes are now stale
  assert.not.ok(h.completeRead(r1, "ok", zero), "stale after another read saw w1");
  h.completeWrite(0, w1, "ok");
  const w2 = h.invokeWrite(0);
  h.completeWrite(0, w2, "errno");
  const r2 = h.invokeRead(0);
  assert.ok(h.completeRead(r2, "ok", blockData(0, w1)), "a failed write may not have landed");
  const r3 = h.invokeRead(0);
  assert.ok(h.completeRead(r3, "ok", blockData(0, w2)), "... or it may have");
  const r4 = h.invokeRead(0);
  assert.not.ok(h.completeRead(r4, "ok", blockData(0, w1)), "once seen, it stays");
  const r5 = h.invokeRead(1);
  const w3 = h.invokeWrite(1);
  assert.ok(h.completeRead(r5, "ok", blockData(1, w3)), "a write invoked before the read completed is concurrent");
  assert.not.ok(h.completeRead(h.invokeRead(1), "ok", blockData(0, w1)), "another block's data");
  h.completeWrite(1, w3, "lost");
  assert.not.ok(h.writable(1), "a block whose write was lost with its connection is frozen");
  const w4 = h.invokeWrite(2);
  h.completeWrite(2, w4, "lost");
  assert.ok(h.checkFinal(2, zero), "a lost write may never land");
  assert.ok(h.checkFinal(1, blockData(1, w3)));
  assert.is(h.violations.length, 3);
});

test("a correct device with failures of unknown outcome passes", async () => {
  const { h, load } = await runAgainst(new Fake("correct", { failEvery: 7 }), 400);
  assert.equal(h.violations, [], load.summary());
  assert.ok(h.counts.writesOk > 100 && h.counts.readsOk > 100 && h.counts.writesErrno > 10, load.summary());
});

test("stale reads from a lagging replica are caught", async () => {
  const { h, load } = await runAgainst(new Fake("stale", { lagMs: 15 }), 400);
  assert.ok(h.violations.some((v) => v.includes("STALE")), load.summary());
});

test("an acknowledged write that is lost is caught", async () => {
  const { h, load } = await runAgainst(new Fake("lossy", { loseEvery: 50 }), 300, 0.2);
  assert.ok(h.violations.length > 0, load.summary());
});

test("the final pass catches an acknowledged write that is not there", async () => {
  const h = new History(2);
  const w = h.invokeWrite(1);
  h.completeWrite(1, w, "ok");
  const found = await verifyAll(h, new Fake("empty"));
  assert.is(found, 1);
  assert.match(h.violations[0]!, /block 1: final read.*STALE/);
});

test("a failed write that comes back after a newer acknowledged write is caught", async () => {
  const { h, load } = await runAgainst(new Fake("resurrect", { failEvery: 5, resurrect: true }), 400);
  assert.ok(h.violations.some((v) => v.includes("STALE")), load.summary());
});

test.run();
