// Real network partitions between cluster nodes on loopback addresses
// (DESIGN §1): an nftables table of our own (`inet pxdtest_<first node
// address>`, so clusters on other address ranges keep theirs) with an output
// hook chain dropping packets between pairs of node addresses. Peers dial from
// their own address, so `ip saddr A ip daddr B` cuts exactly the A->B link;
// the test's own NBD and API connections (source 127.0.0.1) are untouched.
// Always `heal()` in a finally; `reset()` first removes a table a crashed run
// left behind.

import { run, runOk } from "./run.js";


export async function nftAvailable(): Promise<boolean> {
  try {
    return (await run("nft", ["--version"])).code === 0;
  } catch {
    return false;
  }
}

export class Partition {
  private cuts: string[] = [];
  private created = false;
  readonly table: string;

  /** `tag`: the cluster's first node address (one table per test cluster). */
  constructor(tag: string) {
    this.table = `pxdtest_${tag.replace(/[^0-9A-Za-z]/g, "_")}`;
  }

  /** Removes a stale table and creates an empty one with an accepting output chain. */
  async reset(): Promise<void> {
    await run("nft", ["delete", "table", "inet", this.table]);
    await runOk("nft", ["add", "table", "inet", this.table]);
    await runOk("nft", ["add", "chain", "inet", this.table, "output", "{ type filter hook output priority 0 ; policy accept ; }"]);
    this.cuts = [];
    this.created = true;
  }

  /** Drops packets from `a` to `b` (one direction). */
  async cutOneWay(a: string, b: string): Promise<void> {
    if (!this.created) await this.reset();
    await runOk("nft", ["add", "rule", "inet", this.table, "output", "ip", "saddr", a, "ip", "daddr", b, "drop"]);
    this.cuts.push(`${a}->${b}`);
  }

  /** A full cut of the link between `a` and `b`. */
  async cut(a: string, b: string): Promise<void> {
    await this.cutOneWay(a, b);
    await this.cutOneWay(b, a);
  }

  /** Cuts `a` from every address in `others`. */
  async isolate(a: string, others: string[]): Promise<void> {
    for (const b of others) await this.cut(a, b);
  }

  /** The rules now in force, as nft lists them. */
  async list(): Promise<string> {
    return runOk("nft", ["list", "table", "inet", this.table]);
  }

  describe(): string {
    return this.cuts.join(", ") || "none";
  }

  /** Deletes the table: every link works again. */
  async heal(): Promise<void> {
    await run("nft", ["delete", "table", "inet", this.table]);
    this.cuts = [];
    this.created = false;
  }
}
