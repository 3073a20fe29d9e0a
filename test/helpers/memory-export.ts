// An in-memory, sparse Export for NBD tests: 4 KiB pages in a Map, absent pages
// are holes that read as zeroes. Shared by every connection that opens it, so
// multi-connection tests see one disk. Optional knobs make it async or faulty.

import { BackendError, type AllocationExtent, type Export, type ExportRegistry } from "../../src/nbd/backend.js";

export const memoryPageBytes = 4096;

export interface MemoryExportOptions {
  name: string;
  sizeBytes: number;
  description?: string;
  readOnly?: boolean;
  blockBytesMin?: number;
  /** Return reads as Promises instead of Buffers. */
  asyncReads?: boolean;
  /** Delay every write/flush/trim/zero by this many ms (to hold requests in flight). */
  delayMs?: number;
  /** Throw this (BackendError or anything) from the operation, if it returns one. */
  fault?: (op: string, offsetBytes: number, lengthBytes: number) => unknown;
}

export class MemoryExport implements Export {
  readonly name: string;
  readonly description: string;
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  readonly blockBytesMin: number;
  readonly blockBytesPreferred = 4096;
  readonly pages = new Map<number, Buffer>();
  opens = 0;
  closes = 0;
  writes = 0;
  reads = 0;

  constructor(private readonly o: MemoryExportOptions) {
    this.name = o.name;
    this.description = o.description ?? "";
    this.sizeBytes = o.sizeBytes;
    this.readOnly = o.readOnly ?? false;
    this.blockBytesMin = o.blockBytesMin ?? 1;
  }

  read(offsetBytes: number, lengthBytes: number): Buffer | Promise<Buffer> {
    this.check("read", offsetBytes, lengthBytes);
    this.reads++;
    const out = Buffer.alloc(lengthBytes);
    this.forPages(offsetBytes, lengthBytes, (page, pageAt, outAt, n) => {
      const p = this.pages.get(page);
      if (p) p.copy(out, outAt, pageAt, pageAt + n);
    });
    if (this.o.asyncReads) return new Promise((resolve) => setImmediate(() => resolve(out)));
    return out;
  }

  async write(offsetBytes: number, data: readonly Buffer[], lengthBytes: number, _fua: boolean): Promise<void> {
    this.check("write", offsetBytes, lengthBytes);
    this.writes++;
    // Copy now: the views belong to the socket's chunks and must not be kept.
    let src = Buffer.concat(data as Buffer[], lengthBytes);
    if (src.length !== lengthBytes) throw new Error(`write got ${src.length} bytes for ${lengthBytes}`);
    src = Buffer.from(src);
    await this.delay();
    this.forPages(offsetBytes, lengthBytes, (page, pageAt, srcAt, n) => {
      src.copy(this.page(page), pageAt, srcAt, srcAt + n);
    });
  }

  async flush(): Promise<void> {
    this.check("flush", 0, 0);
    await this.delay();
  }

  async trim(offsetBytes: number, lengthBytes: number, _fua: boolean): Promise<void> {
    this.check("trim", offsetBytes, lengthBytes);
    await this.delay();
    this.punch(offsetBytes, lengthBytes);
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, _fua: boolean, noHole: boolean, _fastZero: boolean): Promise<void> {
    this.check("zero", offsetBytes, lengthBytes);
    await this.delay();
    if (!noHole) return this.punch(offsetBytes, lengthBytes);
    this.forPages(offsetBytes, lengthBytes, (page, pageAt, _at, n) => this.page(page).fill(0, pageAt, pageAt + n));
  }

  blockStatus(offsetBytes: number, lengthBytes: number): AllocationExtent[] {
    this.check("status", offsetBytes, lengthBytes);
    const out: AllocationExtent[] = [];
    this.forPages(offsetBytes, lengthBytes, (page, _pageAt, _at, n) => {
      const hole = !this.pages.has(page);
      const last = out[out.length - 1];
      if (last && last.hole === hole) last.lengthBytes += n;
      else out.push({ lengthBytes: n, hole });
    });
    return out;
  }

  close(): void {
    this.closes++;
  }

  /** Test access: the bytes as a client would read them. */
  snapshot(offsetBytes: number, lengthBytes: number): Buffer {
    const saved = this.o.asyncReads;
    this.o.asyncReads = false;
    const fault = this.o.fault;
    this.o.fault = undefined;
    try {
      return this.read(offsetBytes, lengthBytes) as Buffer;
    } finally {
      this.o.asyncReads = saved;
      this.o.fault = fault;
    }
  }

  setFault(fault: MemoryExportOptions["fault"]): void {
    this.o.fault = fault;
  }

  private check(op: string, offsetBytes: number, lengthBytes: number): void {
    const err = this.o.fault?.(op, offsetBytes, lengthBytes);
    if (err !== undefined) throw err;
    if (offsetBytes + lengthBytes > this.sizeBytes) throw new BackendError("EINVAL", `${op} past the end reached the backend`);
  }

  private delay(): Promise<void> {
    const ms = this.o.delayMs ?? 0;
    return ms > 0 ? new Promise((r) => setTimeout(r, ms)) : Promise.resolve();
  }

  private page(page: number): Buffer {
    let p = this.pages.get(page);
    if (!p) {
      p = Buffer.alloc(memoryPageBytes);
      this.pages.set(page, p);
    }
    return p;
  }

  /** Drops whole pages, zeroes the partial ones at the ends. */
  private punch(offsetBytes: number, lengthBytes: number): void {
    this.forPages(offsetBytes, lengthBytes, (page, pageAt, _at, n) => {
      if (n === memoryPageBytes) this.pages.delete(page);
      else this.pages.get(page)?.fill(0, pageAt, pageAt + n);
    });
  }

  private forPages(offsetBytes: number, lengthBytes: number, fn: (page: number, pageAt: number, at: number, n: number) => void): void {
    let at = 0;
    while (at < lengthBytes) {
      const abs = offsetBytes + at;
      const page = Math.floor(abs / memoryPageBytes);
      const pageAt = abs % memoryPageBytes;
      const n = Math.min(memoryPageBytes - pageAt, lengthBytes - at);
      fn(page, pageAt, at, n);
      at += n;
    }
  }
}

export class MemoryRegistry implements ExportRegistry {
  readonly exports = new Map<string, MemoryExport>();
  opens = 0;

  constructor(
    exports: MemoryExportOptions[],
    private readonly defaultExport: string | undefined = exports[0]?.name,
  ) {
    for (const o of exports) this.exports.set(o.name, new MemoryExport(o));
  }

  list(): readonly { name: string; description: string }[] {
    return [...this.exports.values()].map((e) => ({ name: e.name, description: e.description }));
  }

  open(name: string): MemoryExport | undefined {
    const e = this.exports.get(name);
    if (e) {
      e.opens++;
      this.opens++;
    }
    return e;
  }

  defaultName(): string | undefined {
    return this.defaultExport;
  }

  /**
   * A registry that lags, like a cluster node's catalog: exports added with
   * addLater() appear only when a handshake asks it to catch up, after
   * `catchUpMs` (or never, with Infinity).
   */
  readonly later: MemoryExportOptions[] = [];
  catchUpMs = 0;
  catchUps = 0;

  addLater(o: MemoryExportOptions): void {
    this.later.push(o);
  }

  catchUp(name: string | undefined): Promise<void> | undefined {
    if (this.later.length === 0 || (name !== undefined && this.exports.has(name))) return undefined;
    this.catchUps++;
    if (this.catchUpMs === Infinity) return new Promise(() => {});
    return new Promise((resolve) =>
      setTimeout(() => {
        for (const o of this.later.splice(0)) this.exports.set(o.name, new MemoryExport(o));
        resolve();
      }, this.catchUpMs),
    );
  }

  get(name: string): MemoryExport {
    const e = this.exports.get(name);
    if (!e) throw new Error(`no memory export ${name}`);
    return e;
  }
}
