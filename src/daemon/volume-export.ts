// A volume as an NBD export: the NBD layer validated the request, the store
// does the work, and errors become the NBD errno the client sees.

import type { BufferPool } from "../base/buffer-pool.js";
import { BackendError, type AllocationExtent, type Export } from "../nbd/backend.js";
import { StoreError } from "../store/errors.js";
import type { Store } from "../store/store.js";
import type { VolumeRecord } from "./catalog.js";

/** Store errors as NBD errors (src/nbd/errors.ts maps BackendError to the wire). A deleted volume reads as shut down. */
function asBackendError(e: unknown): unknown {
  return e instanceof StoreError ? new BackendError(e.code === "ENOENT" ? "ESHUTDOWN" : e.code, e.message) : e;
}

function toBackendError(e: unknown): never {
  throw asBackendError(e);
}

export class VolumeExport implements Export {
  readonly description: string;
  readonly readOnly = false;
  /** The store merges partial sectors itself (read-modify-write), so any byte range is fine. */
  readonly blockBytesMin = 1;
  readonly blockBytesPreferred = 4096;
  private closed = false;

  constructor(
    private readonly volume: VolumeRecord,
    private readonly store: Store,
    private readonly readBuffers: BufferPool,
    private readonly onClose: () => void,
  ) {
    this.description = `pxd volume ${volume.name} (repl ${volume.repl})`;
  }

  get name(): string {
    return this.volume.name;
  }

  get sizeBytes(): number {
    return this.volume.sizeBytes;
  }

  read(offsetBytes: number, lengthBytes: number): Buffer {
    const out = this.readBuffers.take(lengthBytes);
    try {
      return this.store.read(this.volume.id, offsetBytes, lengthBytes, out);
    } catch (e) {
      this.readBuffers.give(out);
      return toBackendError(e);
    }
  }

  release(buffer: Buffer): void {
    this.readBuffers.give(buffer);
  }

  write(offsetBytes: number, data: readonly Buffer[], lengthBytes: number): Promise<void> {
    // Every write is durable before it is acknowledged, so FUA needs nothing more.
    return this.guard(() => this.store.write(this.volume.id, offsetBytes, data, lengthBytes));
  }

  flush(): Promise<void> {
    return this.guard(() => this.store.flush());
  }

  trim(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.guard(() => this.store.trim(this.volume.id, offsetBytes, lengthBytes));
  }

  writeZeroes(offsetBytes: number, lengthBytes: number, _fua: boolean, noHole: boolean, fastZero: boolean): Promise<void> {
    // Zeroing whole sectors is a hole in the map: fast. With NO_HOLE the zeroes are written like data, which is not.
    if (fastZero && noHole) return Promise.reject(new BackendError("ENOTSUP", "zeroing without holes writes data; not fast"));
    return this.guard(() => this.store.writeZeroes(this.volume.id, offsetBytes, lengthBytes, noHole));
  }

  blockStatus(offsetBytes: number, lengthBytes: number): AllocationExtent[] {
    try {
      return this.store.blockStatus(this.volume.id, offsetBytes, lengthBytes);
    } catch (e) {
      return toBackendError(e);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.onClose();
  }

  private guard(op: () => Promise<void>): Promise<void> {
    try {
      return op().catch(toBackendError);
    } catch (e) {
      return Promise.reject(asBackendError(e));
    }
  }
}
