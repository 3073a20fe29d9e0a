// The simulated network of the whole-node simulators (cluster-sim.ts,
// catalog-sim.ts): every message goes through msgpackr (only plain data
// crosses), may be lost, duplicated, reordered and delayed, and partitions
// cut one or both directions between two nodes. A message to a node that is
// down, or from a process that crashed, goes nowhere.

import { Packr } from "msgpackr";
import type { Prng } from "../../src/base/prng.js";
import type { SimClock } from "./disk.js";

const packr = new Packr({ useRecords: false, mapsAsObjects: true });

/** A node's process as the network sees it: a crash bumps `gen`, and what the old process sent or scheduled is void. */
export interface SimProcess {
  id: number;
  gen: number;
  up: boolean;
}

export class SimNet<P extends SimProcess> {
  /** Cut links, as "from>to". */
  readonly blocked = new Set<string>();
  loss = 0;
  dup = 0;
  delayMax = 5;
  messages = 0;
  dropped = 0;

  constructor(
    private readonly prng: Prng,
    private readonly clock: SimClock,
    private readonly nodes: ReadonlyMap<number, P>,
    /** Hands a message that arrived to its node's process; false when the process cannot take it (it is still starting): dropped. */
    private readonly deliver: (dest: P, from: number, m: unknown) => boolean,
  ) {}

  /** Sends from process `gen` of `from`; false when the transport would say it cannot (the destination is down or cut off). */
  send(from: P, gen: number, to: number, m: unknown): boolean {
    if (from.gen !== gen || !from.up) return false;
    const dest = this.nodes.get(to);
    if (dest === undefined || !dest.up || this.blocked.has(`${from.id}>${to}`)) return false;
    this.messages++;
    const bytes = packr.pack(m);
    if (this.prng.chance(this.loss)) {
      this.dropped++;
      return true;
    }
    const copies = this.prng.chance(this.dup) ? 2 : 1;
    for (let c = 0; c < copies; c++) {
      this.clock.schedule(() => {
        if (!dest.up || this.blocked.has(`${from.id}>${to}`) || !this.deliver(dest, from.id, packr.unpack(bytes))) this.dropped++;
      }, 1 + this.prng.int(this.delayMax));
    }
    return true;
  }

  /** Cuts a -> b, and b -> a too when `bothWays`. */
  cut(a: number, b: number, bothWays: boolean): void {
    this.blocked.add(`${a}>${b}`);
    if (bothWays) this.blocked.add(`${b}>${a}`);
  }

  /** Cuts a random link between two of `ids`, one way or both: the cut, for the log, or undefined when both picks were the same node. */
  cutAtRandom(ids: readonly number[]): string | undefined {
    const a = ids[this.prng.int(ids.length)]!;
    const b = ids[this.prng.int(ids.length)]!;
    if (a === b) return undefined;
    const both = this.prng.chance(0.5);
    this.cut(a, b, both);
    return `partition ${a} -> ${b}${both ? " both ways" : ""}`;
  }

  /** Whether a and b can talk both ways (what a peer connection needs). */
  linked(a: number, b: number): boolean {
    return this.nodes.get(b)?.up === true && !this.blocked.has(`${a}>${b}`) && !this.blocked.has(`${b}>${a}`);
  }

  /** A random network: loss, duplication and delay. */
  roughen(): void {
    this.loss = [0, 0.01, 0.05][this.prng.int(3)]!;
    this.dup = [0, 0.01, 0.05][this.prng.int(3)]!;
    this.delayMax = [5, 20, 100][this.prng.int(3)]!;
  }

  heal(): void {
    this.blocked.clear();
    this.loss = 0;
    this.dup = 0;
    this.delayMax = 5;
  }
}
