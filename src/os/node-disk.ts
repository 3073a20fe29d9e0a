// The store's Disk over node:fs: one directory, synchronous reads on the event
// loop (DESIGN §9), small pwritevs on the event loop and large ones and every
// fdatasync on the threadpool.

import * as fs from "node:fs";
import { join } from "node:path";
import type { Defer, Disk, DiskFile } from "../store/disk.js";
import { StoreError } from "../store/errors.js";
import { nodeTimers } from "./timers.js";

/**
 * Commits up to this size are written with a synchronous pwritev on the event
 * loop: a copy into the page cache (about 100 µs at this size) costs less than
 * the threadpool round trip it saves, two context switches per commit on a
 * loaded 2-core machine (docs/architecture.md, "The write path of a
 * single-replica volume"). Larger commits (1 MiB writes) go to the threadpool,
 * where the copy overlaps the event loop's work.
 */
export const syncWriteBytesMax = 256 * 1024;

function shortWrite(written: number, want: number): Error | undefined {
  return written === want ? undefined : new Error(`short write: ${written} of ${want} bytes`);
}

class NodeFile implements DiskFile {
  private fd: number;

  constructor(
    readonly name: string,
    path: string,
    create: boolean,
  ) {
    this.fd = fs.openSync(path, create ? "w+" : "r+");
  }

  sizeBytes(): number {
    return fs.fstatSync(this.fd).size;
  }

  readSync(into: Uint8Array, intoOffset: number, length: number, position: number): number {
    let done = 0;
    while (done < length) {
      let n: number;
      try {
        n = fs.readSync(this.fd, into, intoOffset + done, length - done, position + done);
      } catch (e) {
        // The disk failed the read (EIO from a bad sector): an I/O error of the request, not a bug.
        const code = (e as NodeJS.ErrnoException).code;
        if (code === undefined || code.startsWith("ERR_")) throw e;
        throw new StoreError("EIO", `reading ${length - done} bytes of ${this.name} at ${position + done} failed: ${(e as Error).message}`);
      }
      if (n === 0) break;
      done += n;
    }
    return done;
  }

  write(buffers: readonly Uint8Array[], position: number): Promise<void> {
    let want = 0;
    for (const b of buffers) want += b.length;
    // libuv loops over IOV_MAX-sized pieces and short writes itself, in both forms.
    if (want <= syncWriteBytesMax) {
      let err: Error | undefined;
      try {
        err = shortWrite(fs.writevSync(this.fd, buffers as Uint8Array[], position), want);
      } catch (e) {
        err = e as Error;
      }
      return err === undefined ? Promise.resolve() : Promise.reject(err);
    }
    return new Promise((resolve, reject) => {
      fs.writev(this.fd, buffers as Uint8Array[], position, (e, written) => {
        const err = e ?? shortWrite(written, want);
        if (err) reject(err);
        else resolve();
      });
    });
  }

  datasync(): Promise<void> {
    return new Promise((resolve, reject) => fs.fdatasync(this.fd, (err) => (err ? reject(err) : resolve())));
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }
}

export class NodeDisk implements Disk {
  constructor(readonly dir: string) {
    fs.mkdirSync(dir, { recursive: true });
  }

  list(): string[] {
    return fs.readdirSync(this.dir);
  }

  exists(name: string): boolean {
    return fs.existsSync(join(this.dir, name));
  }

  open(name: string, create: boolean): DiskFile {
    return new NodeFile(name, join(this.dir, name), create);
  }

  rename(from: string, to: string): void {
    fs.renameSync(join(this.dir, from), join(this.dir, to));
  }

  remove(name: string): void {
    fs.rmSync(join(this.dir, name), { force: true });
  }

  syncDir(): Promise<void> {
    return new Promise((resolve, reject) => {
      fs.open(this.dir, "r", (err, fd) => {
        if (err) return reject(err);
        fs.fsync(fd, (syncErr) => {
          fs.close(fd, () => (syncErr ? reject(syncErr) : resolve()));
        });
      });
    });
  }
}

export const deferImmediate: Defer = nodeTimers.defer;
