// A simulated node's process, as the whole-node simulators run it
// (cluster-sim.ts, catalog-sim.ts): its callbacks and timers belong to one
// incarnation and do nothing once it crashed, and a store error that reaches
// the top of its event loop ends it, as it ends the daemon (fail-stop); the
// node restarts later from its disk. Anything else is a bug in the code
// under test and ends the run.

import { StoreError } from "../../src/store/errors.js";
import type { SimClock } from "./disk.js";
import type { SimProcess } from "./net.js";

export class SimProcesses<P extends SimProcess> {
  constructor(
    private readonly clock: SimClock,
    /** The process of `node` died of `e` (a StoreError): crash it. */
    private readonly died: (node: P, e: StoreError) => void,
  ) {}

  /** Runs a callback of incarnation `gen` of the node's process. */
  guard(node: P, gen: number, fn: () => void): void {
    if (node.gen !== gen) return;
    try {
      fn();
    } catch (e) {
      if (!(e instanceof StoreError) || node.gen !== gen) throw e;
      this.died(node, e);
    }
  }

  /** A timer of one incarnation: it does nothing once that process crashed. Returns a function that cancels it. */
  after(node: P, gen: number, ms: number, fn: () => void): () => void {
    let cancelled = false;
    this.clock.schedule(() => {
      if (!cancelled) this.guard(node, gen, fn);
    }, ms);
    return () => {
      cancelled = true;
    };
  }
}
