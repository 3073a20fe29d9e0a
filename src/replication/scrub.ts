// Scrub: read every block of data this node holds, at a limited rate, check
// it against its checksum, and repair what fails from another replica
// (docs/architecture.md, "Checksums and repair").
//
// Reads check what clients touch; the scrub finds damage in data nobody
// reads, while the other replicas still hold good copies. It walks each
// volume's block map (holes are skipped; dead data in the log is not worth
// reading: no map points at it, and GC frees it), one step at a time on the
// event loop, sleeping between steps so that it reads at most
// `bandwidthBytesPerSec` on average.

import { assert } from "../base/assert.js";
import { checksumBlockBytes, scrubStepBytes } from "../constants.js";
import type { Store } from "../store/store.js";
import type { Repairer } from "./repair.js";

export interface ScrubPorts {
  store: Store;
  repairer: Repairer;
  /** A volume's name for reports and log lines. */
  nameOf(group: number): string;
  /** Resolves after ms (0: on a later turn of the event loop). */
  sleep(ms: number): Promise<void>;
  /** Monotonic milliseconds, for the rate. */
  now(): number;
  /** Wall-clock milliseconds since the epoch, for reports. */
  clock(): number;
  log(line: string): void;
}

/** One volume's scrub on this node: the running one, or the last one finished. */
export interface ScrubReport {
  group: number;
  volume: string;
  startedAt: number;
  /** Undefined while it runs. */
  finishedAt: number | undefined;
  /** Cut short: the replica left this node, or the node is stopping. */
  interrupted: boolean;
  bytesScrubbed: number;
  blocksDamaged: number;
  blocksRepaired: number;
  blocksUnrepaired: number;
}

/** Reports kept (one per volume, the newest); past it the oldest go. */
const reportsMax = 4096;

export class Scrubber {
  readonly counters = { scrubPasses: 0, scrubBytes: 0, scrubBlocksDamaged: 0, scrubBlocksRepaired: 0, scrubBlocksUnrepaired: 0 };
  private readonly reports = new Map<number, ScrubReport>();
  /** One pass at a time: a request while one runs waits for it. */
  private tail: Promise<unknown> = Promise.resolve();
  private stopping = false;

  constructor(private readonly p: ScrubPorts) {}

  /**
   * Scrubs the given groups (in order), reading at most `bandwidthBytesPerSec`
   * on average; resolves with one report per group once every one is done.
   */
  scrub(groups: readonly number[], bandwidthBytesPerSec: number): Promise<ScrubReport[]> {
    assert(bandwidthBytesPerSec > 0, "a scrub reads at a positive rate");
    const run = async (): Promise<ScrubReport[]> => {
      const out: ScrubReport[] = [];
      for (const g of groups) {
        if (this.stopping) break;
        if (this.p.store.hasGroup(g)) out.push(await this.scrubGroup(g, bandwidthBytesPerSec));
      }
      this.counters.scrubPasses++;
      return out;
    };
    const pass = this.tail.then(run, run);
    this.tail = pass.catch(() => {});
    return pass;
  }

  /** The newest report of each volume scrubbed here, the running ones included. */
  status(): ScrubReport[] {
    return [...this.reports.values()].map((r) => ({ ...r }));
  }

  report(group: number): ScrubReport | undefined {
    const r = this.reports.get(group);
    return r === undefined ? undefined : { ...r };
  }

  /** Stops after the current step; a pass resolves with what it did. */
  stop(): void {
    this.stopping = true;
  }

  private async scrubGroup(group: number, bandwidth: number): Promise<ScrubReport> {
    const store = this.p.store;
    const r: ScrubReport = {
      group,
      volume: this.p.nameOf(group),
      startedAt: this.p.clock(),
      finishedAt: undefined,
      interrupted: false,
      bytesScrubbed: 0,
      blocksDamaged: 0,
      blocksRepaired: 0,
      blocksUnrepaired: 0,
    };
    this.keep(r);
    const started = this.p.now();
    const stepBlocks = scrubStepBytes / checksumBlockBytes;
    const blocks = Math.ceil(store.sizeOf(group) / checksumBlockBytes);
    for (let b = 0; b < blocks; b += stepBlocks) {
      if (this.stopping || !store.hasGroup(group)) {
        r.interrupted = true;
        break;
      }
      const count = Math.min(stepBlocks, blocks - b);
      if (!store.holdsData(group, b * checksumBlockBytes, count * checksumBlockBytes)) continue;
      const damage = store.verify(group, b, count);
      r.bytesScrubbed += Math.min(store.sizeOf(group), (b + count) * checksumBlockBytes) - b * checksumBlockBytes;
      this.counters.scrubBytes += count * checksumBlockBytes;
      if (damage !== undefined) {
        const outcome = await this.p.repairer.repair(damage);
        r.blocksDamaged += outcome.damaged;
        r.blocksRepaired += outcome.repaired;
        r.blocksUnrepaired += outcome.unrepaired;
        this.counters.scrubBlocksDamaged += outcome.damaged;
        this.counters.scrubBlocksRepaired += outcome.repaired;
        this.counters.scrubBlocksUnrepaired += outcome.unrepaired;
      }
      // Ahead of the rate: wait until it is kept; else still yield, so clients are served between steps.
      await this.p.sleep(Math.max(0, (r.bytesScrubbed / bandwidth) * 1000 - (this.p.now() - started)));
    }
    r.finishedAt = this.p.clock();
    if (r.blocksDamaged > 0 || r.interrupted) {
      this.p.log(`scrub: volume ${r.volume}: ${r.bytesScrubbed} bytes checked, ${r.blocksDamaged} damaged block(s), ${r.blocksRepaired} repaired, ${r.blocksUnrepaired} not repairable${r.interrupted ? " (interrupted)" : ""}`);
    }
    return { ...r };
  }

  private keep(r: ScrubReport): void {
    this.reports.delete(r.group);
    this.reports.set(r.group, r);
    while (this.reports.size > reportsMax) this.reports.delete(this.reports.keys().next().value!);
  }
}
