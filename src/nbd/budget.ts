// The node-wide NBD memory budget (docs/formats/nbd.md, "Memory"): the bytes
// every connection holds (write payloads received or announced and not yet
// answered, READ lengths from admission until answered, reply bytes not yet
// taken by the kernel), summed over the node, and who may start a request.
//
// - A connection may always hold up to its floor: a client holding little
//   never waits here, so a fresh client's small requests are served whatever
//   others hold.
// - Above its floor, a request starts only while the node total plus the
//   request stays under the shared bound (the budget minus every
//   connection's floor), so the total never passes the budget.
// - A request that does not fit waits (its connection is not read meanwhile).
//   As bytes drain, each waiting request that fits is granted its room, the
//   connection holding least first: those holding the most wait longest.
//
// Invariant after every call: no waiting request fits. Then a request that
// fits may start at once without passing one that was waiting and fits.

import { assert } from "../base/assert.js";
import { sharedBytesMax, type NbdLimits } from "./ports.js";

export interface BudgetHolder {
  /** Bytes this connection holds now. */
  readonly heldBytes: number;
  /** Room was granted to its waiting request: retry it soon, not from inside this call. */
  wake(): void;
}

export class NodeBudget {
  private held = 0;
  /** Room promised to woken connections, counted until they claim it. */
  private granted = 0;
  private peak = 0;
  private readonly waiting = new Map<BudgetHolder, number>();
  private readonly grants = new Map<BudgetHolder, number>();
  /** The smallest waiting request: while even it does not fit, a drained reply costs one comparison. */
  private smallestWaiting = Infinity;
  private readonly sharedMax: number;

  constructor(private readonly limits: NbdLimits) {
    this.sharedMax = sharedBytesMax(limits);
  }

  /** Bytes held by every connection, plus room granted and not yet claimed. */
  get heldBytes(): number {
    return this.held + this.granted;
  }

  /** The most heldBytes has been since start, as of the last notePeak(). */
  get heldBytesPeak(): number {
    return this.peak;
  }

  /**
   * Records the peak. Called where the accounting is whole: after a request
   * is admitted and once a turn's replies are handed to the socket (between
   * queuing a reply and releasing its request's reservation both count).
   */
  notePeak(): void {
    this.peak = Math.max(this.peak, this.heldBytes);
  }

  get waitingCount(): number {
    return this.waiting.size;
  }

  /**
   * May `who` start a request that holds `bytes` until it is answered? False
   * when its own bound says no (it retries once its own bytes drain) or when
   * the node has no room (it waits here and is woken with room granted).
   */
  admit(who: BudgetHolder, bytes: number): boolean {
    const grant = this.grants.get(who);
    if (grant !== undefined) {
      assert(bytes <= grant, "a granted request does not grow while it waits");
      this.grants.delete(who);
      this.granted -= grant;
      return true;
    }
    const held = who.heldBytes;
    if (held + bytes >= this.limits.connectionBytesInFlightMax) return false;
    if (held + bytes < this.limits.connectionBytesInFlightFloor || this.heldBytes + bytes < this.sharedMax) {
      if (this.waiting.delete(who)) this.smallestWaiting = smallest(this.waiting);
      return true;
    }
    this.waiting.set(who, bytes);
    this.smallestWaiting = smallest(this.waiting);
    return false;
  }

  /** What some connection holds changed by delta bytes. */
  add(deltaBytes: number): void {
    this.held += deltaBytes;
    assert(this.held >= 0, "node budget accounting balances");
    if (deltaBytes < 0) this.letGo();
  }

  /** The connection is gone: it waits no more, and room granted to it returns. */
  forget(who: BudgetHolder): void {
    const grant = this.grants.get(who);
    if (grant !== undefined) {
      this.grants.delete(who);
      this.granted -= grant;
    }
    if (this.waiting.delete(who)) this.smallestWaiting = smallest(this.waiting);
    this.letGo();
  }

  /** Grants room to every waiting request that fits, to the connection holding least first. */
  private letGo(): void {
    if (this.heldBytes + this.smallestWaiting >= this.sharedMax) return;
    const order = [...this.waiting].sort(([a], [b]) => a.heldBytes - b.heldBytes);
    for (const [who, bytes] of order) {
      if (this.heldBytes + bytes >= this.sharedMax) continue;
      this.waiting.delete(who);
      this.grants.set(who, bytes);
      this.granted += bytes;
      who.wake();
    }
    this.smallestWaiting = smallest(this.waiting);
  }
}

function smallest(waiting: ReadonlyMap<BudgetHolder, number>): number {
  let min = Infinity;
  for (const bytes of waiting.values()) min = Math.min(min, bytes);
  return min;
}
