// Recycled buffers for large reads. A fresh 1 MiB Buffer costs page faults on
// first touch; reusing one does not, and 1 MiB sequential reads reach
// nbdkit's rate only without those faults (DESIGN §9). Sizes are rounded up
// to a power of two; the caller gets a view of exactly the length it asked
// for.

import { assert } from "./assert.js";

export class BufferPool {
  private readonly free = new Map<number, ArrayBufferLike[]>();
  private pooledBytes = 0;
  taken = 0;
  reused = 0;

  constructor(
    readonly bytesMin: number,
    readonly bytesMax: number,
    readonly pooledBytesMax: number,
    /** Buffers of at least this size are SharedArrayBuffers, which another thread can read (src/os/crc-verifier.ts). */
    readonly sharedBytesMin = Infinity,
  ) {
    assert(bytesMin > 0 && bytesMin <= bytesMax, "pool size classes are ordered");
  }

  /** A buffer of `length` bytes (uninitialized): pooled when the size is in range. */
  take(length: number): Buffer {
    if (length < this.bytesMin || length > this.bytesMax) return Buffer.allocUnsafe(length);
    const size = sizeClass(length);
    const list = this.free.get(size);
    const ab = list?.pop();
    this.taken++;
    if (ab !== undefined) {
      this.reused++;
      this.pooledBytes -= size;
      return Buffer.from(ab, 0, length);
    }
    return Buffer.from(size >= this.sharedBytesMin ? new SharedArrayBuffer(size) : new ArrayBuffer(size), 0, length);
  }

  /** Gives back a buffer from take(); the caller must not touch it afterwards. */
  give(buf: Buffer): void {
    const ab = buf.buffer;
    if (!(ab instanceof (ab.byteLength >= this.sharedBytesMin ? SharedArrayBuffer : ArrayBuffer)) || buf.byteOffset !== 0 || ab.byteLength !== sizeClass(ab.byteLength)) return;
    if (ab.byteLength < this.bytesMin || ab.byteLength > sizeClass(this.bytesMax)) return;
    if (this.pooledBytes + ab.byteLength > this.pooledBytesMax) return;
    let list = this.free.get(ab.byteLength);
    if (list === undefined) this.free.set(ab.byteLength, (list = []));
    list.push(ab);
    this.pooledBytes += ab.byteLength;
  }
}

/**
 * Small buffers carved from shared slabs, as Node's Buffer pool does for
 * allocUnsafe below 4 KiB: one ArrayBuffer per `slabBytes` instead of one per
 * buffer, which the garbage collector then tracks one by one. A slab lives
 * while any buffer cut from it does; buffers above slabBytes / 8 get their
 * own (so one long-lived small buffer pins at most a slab).
 */
export class SlabAllocator {
  private slab = new ArrayBuffer(0);
  private used = 0;

  constructor(readonly slabBytes: number) {
    assert(slabBytes % 8 === 0 && slabBytes > 0, "a slab is whole 8-byte words");
  }

  /** A buffer of `length` bytes (uninitialized), 8-byte aligned in its slab. */
  take(length: number): Buffer {
    if (length > this.slabBytes / 8) return Buffer.allocUnsafe(length);
    if (this.used + length > this.slab.byteLength) {
      this.slab = new ArrayBuffer(this.slabBytes);
      this.used = 0;
    }
    const b = Buffer.from(this.slab, this.used, length);
    this.used += (length + 7) & ~7;
    return b;
  }
}

/** The power of two at or above n (n ≥ 1, below 2^31). */
function sizeClass(n: number): number {
  return n <= 1 ? 1 : 2 ** (32 - Math.clz32(n - 1));
}
