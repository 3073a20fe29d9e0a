// A volume replica: the state machine of a volume's Raft group
// (src/replication/state-machine.ts), and the one place that turns a
// client's request into volume ops (docs/formats/volume-op.md).
//
// Requests (on the group's leader): any byte range. Whole sectors become
// writes of at most `proposalBytesMax` each; a range with partial sectors is
// read, merged and written as whole sectors (read-modify-write), one at a
// time per volume so that neighbours do not undo each other; zeroing is a
// trim of the whole sectors (or zeroes written as data, NO_HOLE) and a
// read-modify-write of the edges. An encrypted volume's unit is its 4 KiB
// data unit instead of the sector: its data is encrypted here, once, before
// it is proposed, so the log, every replica's store and everything copied
// from them hold only ciphertext (src/replication/volume-cipher.ts).
//
// Committed ops are applied to the store's block map: a write maps the range
// to the entry's data where it lies in the log (no copy), a trim unmaps it, a
// resize grows the map. The volume's size is the store's: what this replica
// applied, so a write past the old end is refused until the resize before it
// in the log is applied here.
// While a member is behind, the leader's replica marks every range changed
// after a point in a change map, so the member's snapshot is a delta.

import { assert } from "../base/assert.js";
import { checksumBlockBytes, recordPayloadBytesMax, sectorBytes, volumeBytesMax } from "../constants.js";
import { ChecksumError, StoreError } from "../store/errors.js";
import { sliceBuffers } from "../store/map-data.js";
import type { Store } from "../store/store.js";
import { ChangeMap } from "./changes.js";
import { cipherUnitBytes, type VolumeCipher } from "./volume-cipher.js";
import type { CommandRange, CommandRecord, GroupStateMachine, StreamedSnapshots } from "./state-machine.js";
import { decodeOp, decodeSnapshotOp, encodeResize, encodeSnapshotOp, encodeTrim, encodeWrite, opPayloadCrc, resizeBytesOf, volumeOpOverheadBytes, VolumeOpKind, volumeSizeOk, type SnapshotOp } from "./volume-op.js";

/** Data per proposal: whole sectors, leaving room for the block checksums and the trailer in one store record. */
export const proposalBytesMax = recordPayloadBytesMax - 2 * checksumBlockBytes;
assert(proposalBytesMax + volumeOpOverheadBytes(proposalBytesMax) <= recordPayloadBytesMax && proposalBytesMax % cipherUnitBytes === 0, "a proposal fits one record and is whole data units");
const zeroes = new Uint8Array(proposalBytesMax);
/** Rollback proposals in flight at once: up to 32 MiB of entries. */
const rollbackProposalsMax = 8;

/** How a request reaches the group: on its leader, through the driver. */
export interface ReplicaPort {
  /** Proposes a volume op; resolves once it is committed and applied here. */
  propose(command: Uint8Array): Promise<void>;
  /** Resolves once a read here sees every write acknowledged before it. */
  readBarrier(): Promise<void> | undefined;
  read(offsetBytes: number, lengthBytes: number): Promise<Buffer> | Buffer;
  /** The volume's cipher; undefined for a plain volume. Throws (EIO, saying why) where this node has no key for an encrypted one. */
  cipher(): VolumeCipher | undefined;
}

export class VolumeReplica implements GroupStateMachine {
  private rmwTail: Promise<void> = Promise.resolve();
  private changeMap: ChangeMap | undefined = undefined;
  readonly snapshots: StreamedSnapshots;

  constructor(
    private readonly store: Store,
    readonly groupId: number,
  ) {
    const self = this;
    this.snapshots = {
      kind: "streamed",
      sizeBytes: () => this.sizeBytes,
      get changes() {
        return self.changeMap;
      },
      trackChanges: (base, baseTerm) => (this.changeMap = new ChangeMap(base, baseTerm)),
      dropChanges: () => {
        this.changeMap = undefined;
      },
      markCommand: (changes, command) => {
        const op = decodeOp(command);
        if (op !== undefined && op.kind !== VolumeOpKind.Resize) changes.mark(op.offsetBytes, op.lengthBytes);
      },
    };
  }

  /** The volume's size as this replica applied it. */
  get sizeBytes(): number {
    return this.store.sizeOf(this.groupId);
  }

  // ---- the state machine ----

  apply(index: number, command: Uint8Array | null): void {
    const op = command === null ? undefined : decodeOp(command);
    if (op === undefined) {
      const s = command === null ? undefined : decodeSnapshotOp(command);
      if (s?.kind === VolumeOpKind.SnapshotCreate) this.store.takeSnapshot(this.groupId, s.snapshotId, index);
      else if (s?.kind === VolumeOpKind.SnapshotDelete) this.store.dropSnapshot(this.groupId, s.snapshotId, index);
      return;
    }
    if (op.kind === VolumeOpKind.Resize) {
      // No block changes: a snapshot (delta or full) carries the size itself.
      this.store.applyEntryResize(this.groupId, index, resizeBytesOf(op));
      return;
    }
    if (op.kind === VolumeOpKind.Write) this.store.applyEntryWrite(this.groupId, index, op.offsetBytes, op.lengthBytes, command!.subarray(0, op.lengthBytes), op.crcs);
    else this.store.applyEntryTrim(this.groupId, index, op.offsetBytes, op.lengthBytes);
    const changes = this.changeMap;
    if (changes !== undefined && index > changes.base) changes.mark(op.offsetBytes, op.lengthBytes);
  }

  lost(index: number, range: CommandRange): void {
    this.store.applyLostEntry(this.groupId, index);
    const changes = this.changeMap;
    if (changes !== undefined && index > changes.base) changes.mark(range.offsetBytes, range.lengthBytes);
  }

  commandRecord(command: Uint8Array): CommandRecord {
    const op = decodeOp(command);
    if (op === undefined || op.kind === VolumeOpKind.Resize) return noRecord;
    return { payloadCrc: opPayloadCrc(op, command), range: { offsetBytes: op.offsetBytes, lengthBytes: op.lengthBytes } };
  }


  // ---- requests, on the leader ----

  /**
   * Grows the volume to `sizeBytes` through the log, so every replica grows at
   * the same index; resolves once committed and applied here. A volume as
   * large or larger is left as it is (a retried resize, or one a snapshot
   * already brought): the caller checks for shrinking against the catalog.
   */
  async resize(p: ReplicaPort, sizeBytes: number): Promise<void> {
    if (!volumeSizeOk(sizeBytes)) throw new StoreError("EINVAL", `a volume size is a positive multiple of ${sectorBytes} bytes up to ${volumeBytesMax}, not ${sizeBytes}`);
    if (sizeBytes <= this.sizeBytes) await p.readBarrier();
    if (sizeBytes <= this.sizeBytes) return;
    await p.propose(encodeResize(sizeBytes));
  }

  /** Resolves once the data is committed and applied. `data` may be reused once it resolves. */
  write(p: ReplicaPort, offsetBytes: number, data: readonly Uint8Array[], lengthBytes: number): Promise<void> {
    if (this.pastEnd(offsetBytes, lengthBytes)) return this.afterBarrier(p, offsetBytes, lengthBytes, () => this.write(p, offsetBytes, data, lengthBytes));
    const bad = this.rangeError(offsetBytes, lengthBytes);
    if (bad !== undefined) return Promise.reject(bad);
    if (lengthBytes === 0) return Promise.resolve();
    const cipher = p.cipher();
    const unit = unitOf(cipher);
    if (offsetBytes % unit !== 0 || lengthBytes % unit !== 0) return this.readModifyWrite(p, offsetBytes, data, lengthBytes, unit);
    if (cipher !== undefined) data = [cipher.encrypt(offsetBytes, data, lengthBytes)];
    if (lengthBytes <= proposalBytesMax) return p.propose(encodeWrite(offsetBytes, data, lengthBytes));
    const parts: Promise<void>[] = [];
    for (let at = 0; at < lengthBytes; at += proposalBytesMax) {
      const n = Math.min(proposalBytesMax, lengthBytes - at);
      parts.push(p.propose(encodeWrite(offsetBytes + at, sliceBuffers(data, at, n), n)));
    }
    return Promise.all(parts).then(nothing);
  }

  /** Deallocates the whole sectors (an encrypted volume's whole units) inside the range (NBD TRIM is advisory at the edges). */
  trim(p: ReplicaPort, offsetBytes: number, lengthBytes: number): Promise<void> {
    if (this.pastEnd(offsetBytes, lengthBytes)) return this.afterBarrier(p, offsetBytes, lengthBytes, () => this.trim(p, offsetBytes, lengthBytes));
    const bad = this.rangeError(offsetBytes, lengthBytes);
    if (bad !== undefined) return Promise.reject(bad);
    const unit = unitOf(p.cipher());
    const from = Math.ceil(offsetBytes / unit) * unit;
    const to = Math.floor((offsetBytes + lengthBytes) / unit) * unit;
    return to > from ? p.propose(encodeTrim(from, to - from)) : Promise.resolve();
  }

  /** Zeroes the range: holes for whole sectors or units (zeroes written as data with noHole, encrypted on an encrypted volume), zeroes merged into partial ones. */
  writeZeroes(p: ReplicaPort, offsetBytes: number, lengthBytes: number, noHole: boolean): Promise<void> {
    if (this.pastEnd(offsetBytes, lengthBytes)) return this.afterBarrier(p, offsetBytes, lengthBytes, () => this.writeZeroes(p, offsetBytes, lengthBytes, noHole));
    const bad = this.rangeError(offsetBytes, lengthBytes);
    if (bad !== undefined) return Promise.reject(bad);
    const end = offsetBytes + lengthBytes;
    const unit = unitOf(p.cipher());
    const from = Math.ceil(offsetBytes / unit) * unit;
    const to = Math.floor(end / unit) * unit;
    if (to <= from) return this.readModifyWrite(p, offsetBytes, [new Uint8Array(lengthBytes)], lengthBytes, unit);
    const parts: Promise<unknown>[] = [];
    if (noHole) {
      for (let at = from; at < to; at += proposalBytesMax) {
        const n = Math.min(proposalBytesMax, to - at);
        parts.push(this.write(p, at, [zeroes.subarray(0, n)], n));
      }
    } else parts.push(p.propose(encodeTrim(from, to - from)));
    if (offsetBytes < from) parts.push(this.readModifyWrite(p, offsetBytes, [new Uint8Array(from - offsetBytes)], from - offsetBytes, unit));
    if (to < end) parts.push(this.readModifyWrite(p, to, [new Uint8Array(end - to)], end - to, unit));
    return Promise.all(parts).then(nothing);
  }

  /** Takes or drops a snapshot: one entry, applied by every replica at the same index. Resolves once applied here. */
  snapshot(p: ReplicaPort, op: SnapshotOp): Promise<void> {
    return p.propose(encodeSnapshotOp(op));
  }

  /**
   * Makes the volume what snapshot `snapshotId` holds, on the leader that
   * holds it: every range where the two differ is written from the snapshot
   * (or trimmed where it has a hole) as ordinary entries, at most
   * `rollbackProposalsMax` in flight. So every replica ends the same, whether
   * or not it holds the snapshot itself, and the cost is what changed since
   * the snapshot (a range whose bytes are the snapshot's already, at another
   * place in the log, is read and compared, not written). It is not atomic:
   * an interrupted rollback leaves part of the volume rolled back, and
   * running it again finishes it. Resolves with the bytes written and trimmed.
   */
  async rollback(p: ReplicaPort, snapshotId: number): Promise<{ writtenBytes: number; trimmedBytes: number }> {
    const runs: { sector: number; count: number; hole: boolean }[] = [];
    this.store.snapshotDiff(this.groupId, snapshotId, (sector, count, hole) => {
      for (let done = 0; done < count; ) {
        const n = Math.min(count - done, proposalBytesMax / sectorBytes);
        runs.push({ sector: sector + done, count: n, hole });
        done += n;
      }
    });
    let writtenBytes = 0;
    let trimmedBytes = 0;
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < runs.length) {
        const r = runs[next++]!;
        const offset = r.sector * sectorBytes;
        const length = r.count * sectorBytes;
        if (r.hole) {
          await p.propose(encodeTrim(offset, length));
          trimmedBytes += length;
        } else {
          const data = this.store.readSnapshot(this.groupId, snapshotId, offset, length);
          if (this.holds(offset, data)) continue; // the same bytes elsewhere in the log (an earlier rollback wrote them)
          await p.propose(encodeWrite(offset, [data], length));
          writtenBytes += length;
        }
      }
    };
    await Promise.all(Array.from({ length: rollbackProposalsMax }, worker));
    return { writtenBytes, trimmedBytes };
  }

  /** Whether the volume holds `data` at `offset` here now (a damaged block does not). */
  private holds(offsetBytes: number, data: Buffer): boolean {
    try {
      return this.store.read(this.groupId, offsetBytes, data.length).equals(data);
    } catch (e) {
      if (e instanceof ChecksumError) return false;
      throw e;
    }
  }

  /** Partial units: read (and decrypt), merge, write whole units; one at a time per volume so neighbours do not undo each other. */
  private readModifyWrite(p: ReplicaPort, offsetBytes: number, data: readonly Uint8Array[], lengthBytes: number, unit: number): Promise<void> {
    const op = this.rmwTail.then(async () => {
      const from = Math.floor(offsetBytes / unit) * unit;
      const to = Math.ceil((offsetBytes + lengthBytes) / unit) * unit;
      await p.readBarrier();
      const merged = await p.read(from, to - from);
      p.cipher()?.decryptInPlace(from, merged);
      let at = offsetBytes - from;
      for (const d of data) {
        merged.set(d, at);
        at += d.length;
      }
      await this.write(p, from, [merged], merged.length);
    });
    this.rmwTail = op.catch(nothing);
    return op;
  }

  /** A well-formed range that ends past the size this replica applied. */
  private pastEnd(offsetBytes: number, lengthBytes: number): boolean {
    return Number.isSafeInteger(offsetBytes) && Number.isSafeInteger(lengthBytes) && offsetBytes >= 0 && lengthBytes >= 0 && offsetBytes + lengthBytes > this.sizeBytes;
  }

  /**
   * A change past the end of the volume as applied here. A newly elected
   * leader may not have applied a committed resize yet, which the catalog
   * (and so the client's NBD handshake) shows only once it is committed: once
   * this node applied everything committed before the request (a ReadIndex
   * round), the range is checked again, and refused if still past the end.
   */
  private async afterBarrier(p: ReplicaPort, offsetBytes: number, lengthBytes: number, then: () => Promise<void>): Promise<void> {
    await p.readBarrier();
    const bad = this.rangeError(offsetBytes, lengthBytes);
    if (bad !== undefined) throw bad;
    return then();
  }

  private rangeError(offsetBytes: number, lengthBytes: number): StoreError | undefined {
    if (!Number.isSafeInteger(offsetBytes) || !Number.isSafeInteger(lengthBytes) || offsetBytes < 0 || lengthBytes < 0 || offsetBytes + lengthBytes > this.sizeBytes) {
      return new StoreError("EINVAL", `range [${offsetBytes}, +${lengthBytes}) is outside the volume (${this.sizeBytes} bytes)`);
    }
    return undefined;
  }
}

function nothing(): void {}

/** A volume's write granularity: the sector, or an encrypted volume's data unit. */
function unitOf(cipher: VolumeCipher | undefined): number {
  return cipher === undefined ? sectorBytes : cipherUnitBytes;
}

const noRecord: CommandRecord = Object.freeze({ payloadCrc: undefined, range: undefined });
