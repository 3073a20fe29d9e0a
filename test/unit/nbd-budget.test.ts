// The node-wide NBD memory budget as arithmetic (src/nbd/budget.ts): floors,
// the shared bound, who waits, who is let go first as bytes drain. The same
// rules over real connections are in nbd-limits.test.ts and, against a real
// daemon, in test/e2e/daemon-limits.test.ts.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { NodeBudget, type BudgetHolder } from "../../src/nbd/budget.js";
import { resolveNbdLimits, sharedBytesMax } from "../../src/nbd/ports.js";

const KiB = 1024;
const MiB = 1024 * KiB;
// 8 connections x 64 KiB floors = 512 KiB set aside; 7.5 MiB shared; 4 MiB per connection.
const limits = resolveNbdLimits({
  connectionsMax: 8,
  payloadBytesMax: MiB,
  connectionBytesInFlightFloor: 64 * KiB,
  connectionBytesInFlightMax: 4 * MiB,
  nodeBytesInFlightMax: 8 * MiB,
});

class Holder implements BudgetHolder {
  heldBytes = 0;
  wakes = 0;
  constructor(readonly budget: NodeBudget) {}
  wake(): void {
    this.wakes++;
  }
  /** What a connection does: ask, and on yes hold the bytes. */
  start(bytes: number): boolean {
    if (!this.budget.admit(this, bytes)) return false;
    this.hold(bytes);
    return true;
  }
  hold(bytes: number): void {
    this.heldBytes += bytes;
    this.budget.add(bytes);
    this.budget.notePeak();
  }
}

test("the shared bound is the budget minus every connection's floor", () => {
  assert.is(sharedBytesMax(limits), 8 * MiB - 8 * 64 * KiB);
});

test("within its floor a connection never waits, however full the node is", () => {
  const b = new NodeBudget(limits);
  const hog = new Holder(b);
  hog.hold(7.5 * MiB); // no shared room left
  const fresh = new Holder(b);
  for (let i = 0; i < 12; i++) assert.ok(fresh.start(5 * KiB), `request ${i}`);
  assert.not.ok(fresh.start(5 * KiB), "the 13th would reach the floor, and the node has no room");
  assert.is(b.waitingCount, 1);
});

test("above the floor a request waits when it does not fit; the total never passes the shared bound", () => {
  const b = new NodeBudget(limits);
  const hs = [new Holder(b), new Holder(b), new Holder(b)];
  const started = hs.map((h) => [0, 1, 2, 3].filter(() => h.start(MiB)).length);
  // Each connection stops below 4 MiB; the third finds the shared 7.5 MiB full after one.
  assert.equal(started, [3, 3, 1]);
  assert.ok(b.heldBytes < sharedBytesMax(limits));
  assert.is(b.heldBytesPeak, 7 * MiB);
  assert.is(b.waitingCount, 1, "the third waits on the node; the first two on their own bound");
});

test("as bytes drain, waiting requests that fit are let go, the connection holding least first", () => {
  const b = new NodeBudget(limits);
  new Holder(b).hold(0.75 * MiB);
  const big = new Holder(b);
  big.hold(2.5 * MiB);
  const mid = new Holder(b);
  mid.hold(2 * MiB);
  const small = new Holder(b);
  small.hold(1.25 * MiB);
  const light = new Holder(b);
  // 6.5 MiB held: a 1 MiB request reaches the 7.5 MiB shared bound, so everyone waits.
  for (const h of [big, mid, small, light]) assert.not.ok(h.start(MiB));
  assert.is(b.waitingCount, 4);
  big.hold(-MiB); // 5.5 MiB held: room for one 1 MiB request, not two
  assert.equal([big.wakes, mid.wakes, small.wakes, light.wakes], [0, 0, 0, 1], "the one holding nothing goes first");
  assert.is(b.waitingCount, 3);
  assert.ok(light.start(MiB), "a woken connection claims its grant");
  assert.is(b.heldBytes, 6.5 * MiB);
  mid.hold(-2 * MiB); // 4.5 MiB held: room for two; mid (0) and small (1.25 MiB) hold less than big (1.5 MiB)
  assert.equal([big.wakes, mid.wakes, small.wakes], [0, 1, 1]);
  assert.is(b.waitingCount, 1);
});

test("a closed connection's grant returns to the budget and goes to the next in line", () => {
  const b = new NodeBudget(limits);
  const hog = new Holder(b);
  hog.hold(7 * MiB);
  const a = new Holder(b);
  const c = new Holder(b);
  c.hold(100 * KiB);
  assert.not.ok(a.start(MiB));
  assert.not.ok(c.start(MiB));
  hog.hold(-1.5 * MiB); // 5.6 MiB: room for one
  assert.equal([a.wakes, c.wakes], [1, 0]);
  b.forget(a); // a closed before it claimed its grant
  assert.equal([a.wakes, c.wakes], [1, 1]);
  assert.ok(c.start(MiB));
  assert.is(b.waitingCount, 0);
});

test("a connection at its own bound does not wait on the node: it retries as its own replies drain", () => {
  const b = new NodeBudget(limits);
  const h = new Holder(b);
  h.hold(4 * MiB - 10 * KiB);
  assert.not.ok(b.admit(h, 20 * KiB));
  assert.is(b.waitingCount, 0);
});

test.run();
