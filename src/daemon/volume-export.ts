// A volume as an NBD export: the NBD layer validated the request; VolumeIo
// serves it on the volume's Raft leader (here or forwarded); errors keep their
// kind, which becomes the NBD errno the client sees.

import type { BufferPool } from "../base/buffer-pool.js";
import type { CatalogSnapshot, CatalogVolume } from "../cluster/catalog.js";
import { BackendError, type AllocationExtent, type Export } from "../nbd/backend.js";
import { errorKindOf } from "../replication/errors.js";
import type { VolumeIo } from "../replication/volume-io.js";
import type { VolumeGate } from "./qos.js";
import { opRead, opWrite, type IoOp, type VolumeStats } from "./volume-stats.js";

/**
 * Expected failures, here or on the node that served the request, keep their
 * kind (src/nbd/errors.ts maps it to the errno); anything else is passed on
 * as it is, and the NBD layer stops the process on it.
 */
function asBackendError(e: unknown): unknown {
  const kind = errorKindOf(e);
  return kind === undefined ? e : new BackendError(kind, (e as Error).message);
}

/**
 * Admits a request through its volume's gate (the volume's limits, then the
 * node's fair share: src/daemon/qos.ts; it may wait there), serves it, and
 * frees the gate when it ends, calling `ended(failed)` then too. `costBytes`:
 * what it costs the bandwidth limit. Served at once, a synchronous result
 * stays synchronous; failures keep their kind (asBackendError).
 */
function gated<T>(gate: VolumeGate, costBytes: number, serve: () => T | Promise<T>, ended?: (failed: boolean) => void): T | Promise<T> {
  const served = (): T | Promise<T> => {
    let r: T | Promise<T>;
    try {
      r = serve();
    } catch (e) {
      gate.done();
      ended?.(true);
      throw asBackendError(e);
    }
    if (!(r instanceof Promise)) {
      gate.done();
      ended?.(false);
      return r;
    }
    return r.then(
      (v) => {
        gate.done();
        ended?.(false);
        return v;
      },
      (e: unknown) => {
        gate.done();
        ended?.(true);
        throw asBackendError(e);
      },
    );
  };
  const wait = gate.admit(costBytes);
  return wait === undefined ? served() : wait.then(served);
}

export class ReplicatedVolumeExport implements Export {
  readonly description: string;
  readonly readOnly = false;
  /** Partial sectors are merged on the leader (read-modify-write), so any byte range is fine. */
  readonly blockBytesMin = 1;
  readonly blockBytesPreferred = 4096;
  private closed = false;

  constructor(
    private readonly volume: CatalogVolume,
    /** The volume's size in the catalog now: it grows while a client is connected (a resize). */
    private readonly sizeNow: () => number,
    private readonly io: VolumeIo,
    private readonly readBuffers: BufferPool,
    private readonly onClose: () => void,
    /** The volume's limits and the node's fair share (src/daemon/qos.ts). */
    private readonly gate: VolumeGate,
    /** This node's counters of the volume's I/O; undefined with --no-metrics. */
    private readonly stats?: VolumeStats,
  ) {
    this.description = `pxd volume ${volume.name} (repl ${volume.repl})`;
  }

  get name(): string {
    return this.volume.name;
  }

  /**
   * The handshake tells the client the size of the moment; requests are
   * checked against the size now, so a client told of a resize (a kernel
   * device reconfigured in place) may use the new end on the same connection.
   */
  get sizeBytes(): number {
    return this.sizeNow();
  }

  read(offsetBytes: number, lengthBytes: number): Buffer | Promise<Buffer> {
    return this.run(opRead, lengthBytes, lengthBytes, () => this.readBuffer(offsetBytes, lengthBytes));
  }

  private readBuffer(offsetBytes: number, lengthBytes: number): Buffer | Promise<Buffer> {
    return pooledRead(this.readBuffers, lengthBytes, (into) => this.io.read(this.volume.id, offsetBytes, lengthBytes, into));
  }

  write(offsetBytes: number, data: readonly Buffer[], lengthBytes: number): Promise<void> {
    // A write is acknowledged once committed (fsynced on a quorum): FUA needs nothing more.
    return this.runAsync(opWrite, lengthBytes, lengthBytes, () => this.io.write(this.volume.id, offsetBytes, data, lengthBytes));
  }

  /** Every acknowledged write is already durable on a quorum (DESIGN §2). */
  flush(): Promise<void> {
    return Promise.resolve();
  }

  /** Trims and zeroing move no data: one request against the IOPS limit, nothing against bandwidth. */
  trim(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.runAsync(opWrite, 0, 0, () => this.io.trim(this.volume.id, offsetBytes, lengthBytes));
  }

  writeZeroes(offsetBytes: number, lengthBytes: number, _fua: boolean, noHole: boolean, fastZero: boolean): Promise<void> {
    // Zeroing whole sectors is a hole in the map: fast. With NO_HOLE the zeroes are written like data, which is not.
    if (fastZero && noHole) return Promise.reject(new BackendError("ENOTSUP", "zeroing without holes writes data; not fast"));
    return this.runAsync(opWrite, 0, noHole ? lengthBytes : 0, () => this.io.writeZeroes(this.volume.id, offsetBytes, lengthBytes, noHole));
  }

  blockStatus(offsetBytes: number, lengthBytes: number): AllocationExtent[] | Promise<AllocationExtent[]> {
    try {
      const r = this.io.blockStatus(this.volume.id, offsetBytes, lengthBytes);
      return Array.isArray(r) ? r : r.catch(rethrow);
    } catch (e) {
      return rethrow(e);
    }
  }

  /** A write-side request: never throws, rejects instead. */
  private runAsync(op: IoOp, bytes: number, costBytes: number, serve: () => Promise<void>): Promise<void> {
    try {
      // serve() returns a promise, so run() does too.
      return this.run(op, bytes, costBytes, serve) as Promise<void>;
    } catch (e) {
      return Promise.reject(asBackendError(e));
    }
  }

  /**
   * A request through the volume's gate (gated), counted in this node's
   * stats of the volume when it keeps them (`bytes`: what the client moved;
   * the latency includes the wait).
   */
  private run<T>(op: IoOp, bytes: number, costBytes: number, serve: () => T | Promise<T>): T | Promise<T> {
    const stats = this.stats;
    if (stats === undefined) return gated(this.gate, costBytes, serve);
    const start = stats.begin(performance.now());
    return gated(this.gate, costBytes, serve, (failed) => stats.done(op, bytes, start, performance.now(), failed));
  }

  release(buffer: Buffer): void {
    this.readBuffers.give(buffer);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.onClose();
  }
}

/**
 * A read into a pooled buffer: served here it returns that buffer, at once
 * or once another thread has checked it (Store.readOffThread), and the NBD
 * server gives it back once sent; served elsewhere (or repaired first), the
 * buffer goes back once the read settles and the answer's own is returned.
 */
function pooledRead(pool: BufferPool, lengthBytes: number, read: (into: Buffer) => Buffer | Promise<Buffer>): Buffer | Promise<Buffer> {
  const into = pool.take(lengthBytes);
  let r: Buffer | Promise<Buffer>;
  try {
    r = read(into);
  } catch (e) {
    pool.give(into);
    return rethrow(e);
  }
  if (r === into) return r;
  if (!(r instanceof Promise)) {
    pool.give(into);
    return r;
  }
  return r.then(
    (b) => {
      // Not `into`'s memory (a reply from another node, or a repaired read's fresh buffer): `into` goes back now.
      if (b.buffer !== into.buffer) pool.give(into);
      return b;
    },
    (e: unknown) => {
      pool.give(into);
      return rethrow(e);
    },
  );
}

function rethrow(e: unknown): never {
  throw asBackendError(e);
}

/**
 * A volume snapshot as a read-only NBD export (VOLUME@SNAPSHOT): read here
 * when this node holds the snapshot, else from a replica that does. A
 * snapshot never changes, so a read needs no leader and no barrier.
 */
export class SnapshotExport implements Export {
  readonly name: string;
  readonly description: string;
  readonly readOnly = true;
  readonly blockBytesMin = 1;
  readonly blockBytesPreferred = 4096;
  private closed = false;

  constructor(
    private readonly volume: CatalogVolume,
    private readonly snapshot: CatalogSnapshot,
    readonly sizeBytes: number,
    private readonly io: VolumeIo,
    private readonly readBuffers: BufferPool,
    private readonly onClose: () => void,
    /** The volume's gate: a snapshot's reads count against its volume's limits and the node's fair share. */
    private readonly gate: VolumeGate,
  ) {
    this.name = `${volume.name}@${snapshot.name}`;
    this.description = `pxd snapshot ${snapshot.name} of volume ${volume.name} (read-only)`;
  }

  read(offsetBytes: number, lengthBytes: number): Buffer | Promise<Buffer> {
    return gated(this.gate, lengthBytes, () => pooledRead(this.readBuffers, lengthBytes, (into) => this.io.readSnapshot(this.volume.id, this.snapshot.id, offsetBytes, lengthBytes, into)));
  }

  release(buffer: Buffer): void {
    this.readBuffers.give(buffer);
  }

  write(): Promise<void> {
    return Promise.reject(new BackendError("EROFS", `${this.name} is a snapshot: read-only`));
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  trim(): Promise<void> {
    return this.write();
  }

  writeZeroes(): Promise<void> {
    return this.write();
  }

  blockStatus(offsetBytes: number, lengthBytes: number): AllocationExtent[] | Promise<AllocationExtent[]> {
    try {
      const r = this.io.snapshotStatus(this.volume.id, this.snapshot.id, offsetBytes, lengthBytes);
      return Array.isArray(r) ? r : r.catch(rethrow);
    } catch (e) {
      return rethrow(e);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.onClose();
  }
}
