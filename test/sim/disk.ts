// A simulated disk for seeded simulation: the store's Disk port
// (src/store/disk.ts) in memory, with the failures a real disk and page
// cache have, driven by one PRNG and one event queue so that a seed replays
// exactly.
//
// What it models:
//   - the page cache: a write is visible to reads at once and durable only
//     after a later datasync() of its file resolves;
//   - the directory: create, rename and remove are visible at once and
//     durable only after a later syncDir();
//   - a crash (`crash()`): each file keeps what was durable plus a random
//     prefix of its writes since, the first write past that prefix torn at a
//     random sector boundary; the directory returns to its last synced state;
//     every operation in flight is forgotten, so the crashed process's
//     promises never settle;
//   - faults: a write or datasync failing with EIO, writes failing with
//     ENOSPC past a capacity, a slow disk (operations take a random number
//     of ticks), and a bit flipped in a file (`flip()`).
// A failed datasync forgets the file's writes since the last good one, as
// Linux may drop the dirty pages of a failed writeback (fsyncgate).

import { Prng } from "../../src/base/prng.js";
import type { Defer, Disk, DiskFile } from "../../src/store/disk.js";

const pageBytes = 4096;
const sectorBytes = 512;
/** Zeros, shared by every all-zero write (segments are zero-filled 4 MiB at a time): such a write costs no copy and no page. */
const zeros = new Uint8Array(4 * 1024 * 1024);
const zerosView = Buffer.from(zeros.buffer);

/** The write's bytes, or a view of `zeros` when they are all zero (compared natively). */
function captured(b: Uint8Array): Uint8Array {
  if (b.length <= zeros.length && zerosView.compare(b, 0, b.length, 0, b.length) === 0) return zeros.subarray(0, b.length);
  return b.slice();
}

/** Deterministic time: events run in (time, order scheduled). */
export class SimClock {
  now = 0;
  private seq = 0;
  private readonly events: { at: number; seq: number; fn: () => void }[] = [];

  schedule(fn: () => void, delay: number): void {
    const e = { at: this.now + delay, seq: this.seq++, fn };
    let i = this.events.length;
    while (i > 0 && (this.events[i - 1]!.at > e.at || (this.events[i - 1]!.at === e.at && this.events[i - 1]!.seq > e.seq))) i--;
    this.events.splice(i, 0, e);
  }

  get pending(): number {
    return this.events.length;
  }

  /** Runs the next event; false when there is none. Promise callbacks it starts run before this resolves. */
  async step(): Promise<boolean> {
    const e = this.events.shift();
    if (e === undefined) return false;
    this.now = Math.max(this.now, e.at);
    e.fn();
    await drainMicrotasks();
    return true;
  }

  /** Runs events until `done()` or the queue is empty; returns done(). */
  async runUntil(done: () => boolean, eventsMax = 1_000_000): Promise<boolean> {
    await drainMicrotasks();
    for (let n = 0; n < eventsMax && !done(); n++) if (!(await this.step())) break;
    return done();
  }

  /** Forgets every event (a crash of everything that scheduled them). */
  clear(): void {
    this.events.length = 0;
  }

  defer(): Defer {
    return (fn) => this.schedule(fn, 0);
  }
}

/** Lets every settled promise's callbacks run (setImmediate runs after the microtask queue is empty). */
export function drainMicrotasks(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export interface SimDiskFaults {
  /** Chance that a write fails with EIO (nothing written). */
  writeEio: number;
  /** Chance that a datasync fails with EIO (the file's unsynced writes are lost). */
  syncEio: number;
  /** Bytes the files may hold in all (the sum of their sizes); a write that grows a file past it fails with ENOSPC. */
  capacityBytes: number;
  /**
   * Every write needs its length in free bytes, as on a copy-on-write or
   * thin-provisioned filesystem, so overwriting a preallocated file can fail
   * with ENOSPC too (default false: only a write that grows a file needs room).
   */
  copyOnWrite?: boolean;
  /** Ticks an operation takes: [min, max]; a slow disk has a large max. */
  latency: [number, number];
}

export const healthyDisk: SimDiskFaults = { writeEio: 0, syncEio: 0, capacityBytes: Number.MAX_SAFE_INTEGER, latency: [1, 3] };

interface PendingWrite {
  position: number;
  data: Uint8Array;
}

/**
 * One file's contents: the durable pages and the writes since the last sync,
 * in order. What the process reads is the durable pages with those writes
 * laid over them (the page cache); a sync folds them in.
 */
class Inode {
  durable = new Map<number, Uint8Array>();
  durableSize = 0;
  pending: PendingWrite[] = [];
  /** Syncs that made something durable, and for each page the count when its content last became durable. */
  syncs = 0;
  readonly pageSyncedAt = new Map<number, number>();

  get visibleSize(): number {
    let n = this.durableSize;
    for (const w of this.pending) n = Math.max(n, w.position + w.data.length);
    return n;
  }

  static apply(pages: Map<number, Uint8Array>, position: number, data: Uint8Array): void {
    const allZero = data.buffer === zeros.buffer;
    let at = 0;
    while (at < data.length) {
      const p = Math.floor((position + at) / pageBytes);
      const off = (position + at) % pageBytes;
      const n = Math.min(pageBytes - off, data.length - at);
      let page = pages.get(p);
      if (page === undefined) {
        if (allZero || isZero(data, at, n)) {
          at += n;
          continue;
        }
        page = new Uint8Array(pageBytes);
        pages.set(p, page);
      }
      page.set(data.subarray(at, at + n), off);
      at += n;
    }
  }

  read(into: Uint8Array, intoOffset: number, length: number, position: number): number {
    const n = Math.max(0, Math.min(length, this.visibleSize - position));
    for (let at = 0; at < n; ) {
      const p = Math.floor((position + at) / pageBytes);
      const off = (position + at) % pageBytes;
      const k = Math.min(pageBytes - off, n - at);
      const page = this.durable.get(p);
      if (page === undefined) into.fill(0, intoOffset + at, intoOffset + at + k);
      else into.set(page.subarray(off, off + k), intoOffset + at);
      at += k;
    }
    for (const w of this.pending) {
      const from = Math.max(position, w.position);
      const to = Math.min(position + n, w.position + w.data.length);
      if (from < to) into.set(w.data.subarray(from - w.position, to - w.position), intoOffset + from - position);
    }
    return n;
  }

  write(position: number, data: Uint8Array): void {
    this.pending.push({ position, data });
  }

  sync(): void {
    if (this.pending.length > 0) this.syncs++;
    for (const w of this.pending) {
      Inode.apply(this.durable, w.position, w.data);
      this.durableSize = Math.max(this.durableSize, w.position + w.data.length);
      for (let p = Math.floor(w.position / pageBytes); p * pageBytes < w.position + w.data.length; p++) this.pageSyncedAt.set(p, this.syncs);
    }
    this.pending = [];
  }

  /** The writes since the last good sync are lost (a failed writeback). */
  dropPending(): void {
    this.pending = [];
  }

  /** A crash: durable plus a prefix of the pending writes, the next one torn at a sector boundary. */
  crash(prng: Prng, trace?: (line: string) => void): void {
    const keep = prng.int(this.pending.length + 1);
    const survivors = this.pending.slice(0, keep);
    const torn = this.pending[keep];
    if (torn !== undefined && torn.data.length > sectorBytes && prng.chance(0.5)) {
      const sectors = prng.int(Math.floor(torn.data.length / sectorBytes));
      if (sectors > 0) survivors.push({ position: torn.position, data: torn.data.subarray(0, sectors * sectorBytes) });
    }
    trace?.(`  keeps ${keep} of ${this.pending.length} unsynced writes${survivors.length > keep ? `, the next torn to ${survivors[keep]!.data.length} bytes at ${torn!.position}` : ""}`);
    this.pending = survivors;
    this.sync();
  }

  /** Bit rot: the bit changes on the platter (a write since the last sync still reads as written). */
  flip(position: number, bit: number): void {
    const p = Math.floor(position / pageBytes);
    let page = this.durable.get(p);
    if (page === undefined) this.durable.set(p, (page = new Uint8Array(pageBytes)));
    page[position % pageBytes]! ^= 1 << bit;
  }
}

function isZero(b: Uint8Array, from: number, n: number): boolean {
  for (let i = from; i < from + n; i++) if (b[i] !== 0) return false;
  return true;
}

function ioError(code: "EIO" | "ENOSPC", what: string): Error {
  const e = new Error(`${code}: simulated ${what}`) as Error & { code: string };
  e.code = code;
  return e;
}

export class SimDisk implements Disk {
  /** The directory as the process sees it, and as it was at the last syncDir. */
  private names = new Map<string, Inode>();
  private durableNames = new Map<string, Inode>();
  /** Bumped by a crash: completions scheduled before it never run. */
  private epoch = 0;
  faults: SimDiskFaults;
  readonly counters = { writes: 0, syncs: 0, eio: 0, enospc: 0, crashes: 0, flips: 0 };
  /** Called on every rename: a simulator crashes soon after the interesting ones (a segment freed, a checkpoint made). */
  onRename: ((from: string, to: string) => void) | undefined;
  /** Every operation and crash decision, for --verbose replays. */
  trace: ((line: string) => void) | undefined;

  constructor(
    private readonly prng: Prng,
    private readonly clock: SimClock,
    faults: SimDiskFaults = healthyDisk,
  ) {
    this.faults = faults;
  }

  list(): string[] {
    return [...this.names.keys()];
  }

  exists(name: string): boolean {
    return this.names.has(name);
  }

  open(name: string, create: boolean): DiskFile {
    let inode = this.names.get(name);
    if (inode === undefined) {
      if (!create) throw Object.assign(new Error(`ENOENT: no such file ${name}`), { code: "ENOENT" });
      inode = new Inode();
      this.names.set(name, inode);
    } else if (create) {
      // O_TRUNC of a file that exists: the store never asks for it (it removes a stale tmp file first).
      throw new Error(`simulated disk: create of ${name}, which exists`);
    }
    return new SimFile(this, name, inode);
  }

  rename(from: string, to: string): void {
    const inode = this.names.get(from);
    if (inode === undefined) throw Object.assign(new Error(`ENOENT: no such file ${from}`), { code: "ENOENT" });
    this.names.delete(from);
    this.names.set(to, inode);
    this.trace?.(`disk: rename ${from} -> ${to}`);
    this.onRename?.(from, to);
  }

  remove(name: string): void {
    if (!this.names.delete(name)) throw Object.assign(new Error(`ENOENT: no such file ${name}`), { code: "ENOENT" });
  }

  syncDir(): Promise<void> {
    return this.complete(() => {
      this.durableNames = new Map(this.names);
    });
  }

  /** A crash of the process and the machine: see the file's header comment. */
  crash(): void {
    this.epoch++;
    this.counters.crashes++;
    this.trace?.(`disk: crash`);
    const inodes = new Map<Inode, string>();
    for (const [name, inode] of [...this.durableNames, ...this.names]) if (!inodes.has(inode)) inodes.set(inode, name);
    for (const [inode, name] of inodes) {
      this.trace?.(` ${name}${this.durableNames.get(name) === inode ? "" : " (not in the synced directory)"}:`);
      inode.crash(this.prng, this.trace);
    }
    this.names = new Map(this.durableNames);
  }

  /**
   * Flips a random bit among the durable bytes a file holds (not its
   * zero-filled tail) whose content became durable at least `syncsAfter`
   * syncs ago: for a log segment, in a commit with at least that many
   * durable commits after it. False when there is no such byte.
   */
  flipSomewhere(name: string, syncsAfter = 0): boolean {
    const inode = this.names.get(name);
    if (inode === undefined) return false;
    // Only pages whose content has been followed by `syncsAfter` more syncs (a segment's zero-fill counts as one sync however far it reaches).
    const pages = [...inode.durable.keys()].filter((p) => (inode.pageSyncedAt.get(p) ?? 0) + syncsAfter <= inode.syncs);
    if (pages.length === 0) return false;
    const position = pages[this.prng.int(pages.length)]! * pageBytes + this.prng.int(pageBytes);
    return this.flip(name, position, this.prng.int(8));
  }

  /** Flips one bit of a file as it is on the platter (bit rot). */
  flip(name: string, position: number, bit: number): boolean {
    const inode = this.names.get(name);
    if (inode === undefined || position >= inode.visibleSize) return false;
    inode.flip(position, bit);
    this.counters.flips++;
    return true;
  }

  sizeOf(name: string): number {
    return this.names.get(name)?.visibleSize ?? 0;
  }

  /** Bytes the files hold (their sizes: a zero-filled segment takes its whole size, as on a real disk). */
  usedBytes(): number {
    let n = 0;
    for (const inode of new Set(this.names.values())) n += inode.visibleSize;
    return n;
  }

  /** Settles after the disk's latency, unless a crash came first. */
  complete(effect: () => Error | void): Promise<void> {
    const epoch = this.epoch;
    const [lo, hi] = this.faults.latency;
    return new Promise((resolve, reject) => {
      this.clock.schedule(() => {
        if (epoch !== this.epoch) return;
        const err = effect();
        if (err) reject(err);
        else resolve();
      }, lo + this.prng.int(hi - lo + 1));
    });
  }

  write(name: string, inode: Inode, buffers: readonly Uint8Array[], position: number): Promise<void> {
    this.counters.writes++;
    let length = 0;
    for (const b of buffers) length += b.length;
    if (this.prng.chance(this.faults.writeEio)) {
      this.counters.eio++;
      return this.complete(() => ioError("EIO", "write error"));
    }
    const growth = this.faults.copyOnWrite === true ? length : Math.max(0, position + length - inode.visibleSize);
    if (growth > 0 && this.usedBytes() + growth > this.faults.capacityBytes) {
      this.counters.enospc++;
      return this.complete(() => ioError("ENOSPC", "disk full"));
    }
    this.trace?.(`disk: write ${name} [${position}, +${length})`);
    // Visible at once, as pwritev into the page cache is.
    let at = position;
    for (const b of buffers) {
      inode.write(at, captured(b));
      at += b.length;
    }
    return this.complete(() => undefined);
  }

  datasync(name: string, inode: Inode): Promise<void> {
    this.counters.syncs++;
    const fail = this.prng.chance(this.faults.syncEio);
    return this.complete(() => {
      this.trace?.(`disk: datasync ${name} ${fail ? "fails (EIO)" : "done"}, writes at ${inode.pending.map((w) => `${w.position}+${w.data.length}`).join(" ")}`);
      if (fail) {
        this.counters.eio++;
        inode.dropPending();
        return ioError("EIO", "writeback error");
      }
      inode.sync();
    });
  }
}

class SimFile implements DiskFile {
  private closed = false;

  constructor(
    private readonly disk: SimDisk,
    readonly name: string,
    private readonly inode: Inode,
  ) {}

  sizeBytes(): number {
    return this.inode.visibleSize;
  }

  readSync(into: Uint8Array, intoOffset: number, length: number, position: number): number {
    if (this.closed) throw new Error(`read of closed file ${this.name}`);
    return this.inode.read(into, intoOffset, length, position);
  }

  write(buffers: readonly Uint8Array[], position: number): Promise<void> {
    if (this.closed) return Promise.reject(new Error(`write to closed file ${this.name}`));
    return this.disk.write(this.name, this.inode, buffers, position);
  }

  datasync(): Promise<void> {
    if (this.closed) return Promise.reject(new Error(`datasync of closed file ${this.name}`));
    return this.disk.datasync(this.name, this.inode);
  }

  close(): void {
    this.closed = true;
  }
}
