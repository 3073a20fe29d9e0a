// A token bucket: a rate of tokens a second (requests, or bytes) that an idle
// user saves up to `capacity`. Pure arithmetic over times it is given; the
// caller owns the clock and the waiting.
//
// A cost larger than the capacity (a 32 MiB write under a 1 MiB/s limit)
// starts once the bucket is full and leaves it in debt: the next cost waits
// until the debt is paid, so the long-run rate holds for any request size and
// no request waits forever.

import { assert } from "./assert.js";

export class TokenBucket {
  private tokens: number;
  private atMs: number;

  constructor(
    private ratePerSec: number,
    private capacity: number,
    nowMs: number,
  ) {
    assert(ratePerSec > 0 && capacity > 0, "a token bucket has a positive rate and capacity");
    this.tokens = capacity;
    this.atMs = nowMs;
  }

  get rate(): number {
    return this.ratePerSec;
  }

  /** Tokens held at the last refill (negative: in debt). */
  get level(): number {
    return this.tokens;
  }

  /** New rate and capacity from now on; tokens saved stay, up to the new capacity. */
  configure(ratePerSec: number, capacity: number, nowMs: number): void {
    assert(ratePerSec > 0 && capacity > 0, "a token bucket has a positive rate and capacity");
    this.refill(nowMs);
    this.ratePerSec = ratePerSec;
    this.capacity = capacity;
    this.tokens = Math.min(this.tokens, capacity);
  }

  /** Milliseconds until `cost` may start (0: now). */
  waitMs(cost: number, nowMs: number): number {
    this.refill(nowMs);
    const need = Math.min(cost, this.capacity);
    return this.tokens >= need ? 0 : ((need - this.tokens) * 1000) / this.ratePerSec;
  }

  /** Spends `cost` (the caller checked waitMs); the bucket may go into debt. */
  take(cost: number, nowMs: number): void {
    this.refill(nowMs);
    this.tokens -= cost;
  }

  private refill(nowMs: number): void {
    // A clock that steps back (it should not: callers pass a monotonic one) adds nothing.
    const elapsedMs = Math.max(0, nowMs - this.atMs);
    this.atMs = Math.max(this.atMs, nowMs);
    this.tokens = Math.min(this.capacity, this.tokens + (elapsedMs * this.ratePerSec) / 1000);
  }
}
