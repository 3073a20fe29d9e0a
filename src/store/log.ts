// The segment log: fixed-size segment files, appended by group commit.
//
// Records queue up while the previous commit's fdatasync runs; the next commit
// writes all of them with one pwritev and one fdatasync, then reports each
// record durable in log order (DESIGN §2, §3). A commit never spans two
// segments: when the next record does not fit, the commit ends with a Seal
// record and the log moves to the next segment only after the Seal is durable.
// So only the newest segment can hold a torn tail (src/store/recovery.ts).

import { assert } from "../base/assert.js";
import { failStop, isBug } from "../base/fail-stop.js";
import { commitBytesMax, commitRecordsMax, commitsInFlightMax, recordHeaderBytes, segmentBytes } from "../constants.js";
import type { Defer, Disk, DiskFile } from "./disk.js";
import { StoreError } from "./errors.js";
import { encodeHeader, payloadBytesOf, RecordKind } from "./record.js";
import { segmentName } from "./segment-names.js";

export interface AppendRequest {
  kind: RecordKind.Write | RecordKind.Trim | RecordKind.Relocate | RecordKind.RaftEntry | RecordKind.HardState | RecordKind.SnapshotInstall;
  groupId: number;
  termOrSource: number;
  index: number;
  offsetBytes: number;
  lengthBytes: number;
  /** RaftEntry: sectors of the volume range it changes (docs/formats/segment-log.md); 0 for every other kind. */
  rangeSectors: number;
  payload: readonly Uint8Array[];
  /** CRC32C of the payload when the caller has it already (folded from block checksums); else the log computes it. Always set (undefined or not), so every request has one shape. */
  payloadCrc: number | undefined;
  /** Called once the record is durable, in log order, with the log address of its payload; or with an error. */
  done(address: number, error?: Error): void;
}

interface Commit {
  seq: number;
  segmentId: number;
  /** Byte range [position, end) of the commit in its segment. */
  position: number;
  end: number;
  /** Encoded headers and payloads; dropped once written. */
  buffers: Uint8Array[];
  records: AppendRequest[];
  addresses: number[];
  seal: boolean;
  durable: boolean;
}

const sealRecord = { kind: RecordKind.Seal, groupId: 0, termOrSource: 0, index: 0, offsetBytes: 0, lengthBytes: 0, rangeSectors: 0 };

/** Where the log ends after the last durable commit. */
export interface LogPosition {
  segmentId: number;
  position: number;
  commitSeq: number;
}

const zeroChunkBytes = 4 * 1024 * 1024;

export class SegmentLog {
  readonly segments = new Map<number, DiskFile>();
  private readonly queue: AppendRequest[] = [];
  private queueHead = 0;
  private scheduled = false;
  /** Commits written or being written and not yet acknowledged, in log order. */
  private readonly inFlight: Commit[] = [];
  private writing = false;
  /** A commit ended with a Seal: nothing more is appended until the next segment is open. */
  private sealing = false;
  /** Where the next commit goes, and its sequence (ahead of `durable` while commits are in flight). */
  private headSegmentIdForAppend: number;
  private appendPosition: number;
  private appendSeq: number;
  /** Records appended and records finished (durable or failed), for whenIdle. */
  private appendedTotal = 0;
  private finishedTotal = 0;
  private idleWaiters: { target: number; resolve: () => void }[] = [];
  private failure: Error | undefined;
  private spare: Promise<void> | undefined;
  private freeNames: string[];
  private freeSerial = 0;
  private head: DiskFile;
  /** Durable end of the log; also what a checkpoint records. */
  durable: LogPosition;
  bytesAppended = 0;
  commits = 0;
  recordsCommitted = 0;
  /** Called after every commit, synchronously, once its records are reported durable. */
  onCommitted: (sealed: boolean) => void = () => {};

  constructor(
    private readonly disk: Disk,
    private readonly defer: Defer,
    segments: Map<number, DiskFile>,
    end: LogPosition,
    freeNames: string[],
  ) {
    for (const [id, f] of segments) this.segments.set(id, f);
    // Until rollover() runs, head may be a placeholder: start() opens the real one.
    this.head = this.segments.get(end.segmentId) ?? (undefined as unknown as DiskFile);
    this.durable = { ...end };
    this.headSegmentIdForAppend = end.segmentId;
    this.appendPosition = end.position;
    this.appendSeq = end.commitSeq;
    this.freeNames = freeNames;
    for (const n of freeNames) this.freeSerial = Math.max(this.freeSerial, Number(n.slice(5)) + 1);
  }

  get headSegmentId(): number {
    return this.durable.segmentId;
  }

  /** Why the log stopped taking writes, or undefined while it takes them. */
  get failed(): Error | undefined {
    return this.failure;
  }

  append(request: AppendRequest): void {
    if (this.failure) {
      request.done(0, this.failure);
      return;
    }
    this.appendedTotal++;
    this.queue.push(request);
    this.kick();
  }

  /**
   * Resolves once every record appended before this call is durable (or
   * failed). Under a steady load it does not wait for the queue to drain, only
   * for the records that were there when it was called.
   */
  whenIdle(): Promise<void> {
    const target = this.appendedTotal;
    if (this.finishedTotal >= target) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push({ target, resolve }));
  }

  private wakeIdleWaiters(): void {
    if (this.idleWaiters.length === 0) return;
    const still: { target: number; resolve: () => void }[] = [];
    for (const w of this.idleWaiters) {
      if (this.finishedTotal >= w.target) w.resolve();
      else still.push(w);
    }
    this.idleWaiters = still;
  }

  readSync(address: number, into: Uint8Array, intoOffset: number, length: number): void {
    const id = Math.floor(address / segmentBytes);
    const file = this.segments.get(id);
    assert(file !== undefined, () => `segment ${id} holds mapped data`);
    const n = file.readSync(into, intoOffset, length, address - id * segmentBytes);
    if (n !== length) throw new StoreError("EIO", `short read from segment ${id}: ${n} of ${length} bytes`);
  }

  /** Deletes a segment that holds no live data; its file is kept for reuse when the pool has room. */
  async releaseSegment(id: number, keepForReuse: boolean): Promise<void> {
    assert(id < this.durable.segmentId && id < this.headSegmentIdForAppend, "only sealed segments are released");
    const file = this.segments.get(id);
    assert(file !== undefined, "released segment exists");
    file.close();
    this.segments.delete(id);
    if (keepForReuse) {
      const name = `free-${this.freeSerial++}`;
      this.disk.rename(segmentName(id), name);
      this.freeNames.push(name);
    } else {
      this.disk.remove(segmentName(id));
    }
    await this.disk.syncDir();
  }

  /** Free segment files, counting one being zero-filled. */
  get freeSegmentCount(): number {
    return this.freeNames.length + (this.spare !== undefined ? 1 : 0);
  }

  close(): void {
    for (const f of this.segments.values()) f.close();
    this.segments.clear();
  }

  private kick(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    // Deferred past this turn's I/O callbacks so every request that arrived in
    // the same turn joins the commit.
    this.defer(() => {
      this.scheduled = false;
      this.startCommit();
    });
  }

  /**
   * Starts the next commit when the pipeline has room: one pwritev at a time,
   * up to commitsInFlightMax fdatasyncs overlapping. An fdatasync that starts
   * after a commit's pwritev completed covers that commit and every commit
   * written before it, so commits are acknowledged in log order as soon as any
   * later fdatasync returns. Recovery relies on the window: a commit is written
   * only once commit (seq - window) is durable (docs/formats/segment-log.md).
   */
  private startCommit(): void {
    if (this.writing || this.sealing || this.failure) return;
    if (this.queueHead >= this.queue.length || this.inFlight.length >= commitsInFlightMax) return;
    const commit = this.buildCommit();
    this.inFlight.push(commit);
    this.writing = true;
    const file = this.head;
    file
      .write(commit.buffers, commit.position)
      .then(() => {
        this.writing = false;
        commit.buffers = [];
        if (!commit.seal) this.startCommit();
        return file.datasync();
      })
      .then(
        () => this.commitDurable(commit.seq),
        (e: Error) => {
          if (isBug(e)) failStop(e, "store: a log commit");
          this.fail(writeFailure(e));
        },
      );
  }

  /** Takes queued records into a commit, assigns their addresses and encodes them. */
  private buildCommit(): Commit {
    const batch = this.takeBatch();
    const seq = ++this.appendSeq;
    const segmentId = this.headSegmentIdForAppend;
    const buffers: Uint8Array[] = [];
    const addresses: number[] = [];
    const start = this.appendPosition;
    let position = start;
    const count = batch.records.length + (batch.seal ? 1 : 0);
    const fields = { batchPos: 0, batchCount: count, segmentId, commitSeq: seq };
    for (let i = 0; i < batch.records.length; i++) {
      const r = batch.records[i]!;
      fields.batchPos = i;
      buffers.push(encodeHeader(r, fields, r.payload, r.payloadCrc));
      for (const p of r.payload) buffers.push(p);
      addresses.push(segmentId * segmentBytes + position + recordHeaderBytes);
      position += recordHeaderBytes + payloadBytesOf(r.kind, r.lengthBytes);
    }
    if (batch.seal) {
      fields.batchPos = count - 1;
      buffers.push(encodeHeader(sealRecord, fields, []));
      position += recordHeaderBytes;
      this.sealing = true;
    }
    this.appendPosition = position;
    return { seq, segmentId, position: start, end: position, buffers, records: batch.records, addresses, seal: batch.seal, durable: false };
  }

  private commitDurable(seq: number): void {
    for (const c of this.inFlight) if (c.seq <= seq) c.durable = true;
    while (this.inFlight[0]?.durable) {
      const c = this.inFlight.shift()!;
      this.bytesAppended += c.end - c.position;
      // After a Seal the log continues at the start of the next segment, even
      // before its file is ready: a checkpoint taken in between must not point
      // past the Seal into the sealed segment.
      this.durable = c.seal ? { segmentId: c.segmentId + 1, position: 0, commitSeq: c.seq } : { segmentId: c.segmentId, position: c.end, commitSeq: c.seq };
      this.commits++;
      this.recordsCommitted += c.records.length;
      this.finishedTotal += c.records.length;
      for (let i = 0; i < c.records.length; i++) c.records[i]!.done(c.addresses[i]!);
      this.wakeIdleWaiters();
      if (c.seal) void this.rollover().then(() => this.onCommitted(true));
      else this.onCommitted(false);
    }
    this.startCommit();
  }

  /** Takes the records of the next commit; seal is true when the segment is full. */
  private takeBatch(): { records: AppendRequest[]; seal: boolean } {
    const records: AppendRequest[] = [];
    let position = this.appendPosition;
    let bytes = 0;
    while (this.queueHead < this.queue.length && records.length < commitRecordsMax - 1) {
      const r = this.queue[this.queueHead]!;
      const size = recordHeaderBytes + payloadBytesOf(r.kind, r.lengthBytes);
      if (position + size > segmentBytes - recordHeaderBytes) return { records, seal: true };
      if (records.length > 0 && bytes + size > commitBytesMax) break;
      records.push(r);
      this.queue[this.queueHead++] = undefined as unknown as AppendRequest; // let payloads be collected
      position += size;
      bytes += size;
    }
    if (this.queueHead === this.queue.length) {
      this.queue.length = 0;
      this.queueHead = 0;
    }
    return { records, seal: false };
  }

  private fail(error: Error): void {
    if (this.failure) return;
    // After a failed fdatasync the page cache may have dropped the data: the
    // log cannot know what is on disk, so it stops taking writes (fsyncgate).
    this.failure = error;
    for (const c of this.inFlight.splice(0)) {
      this.finishedTotal += c.records.length;
      for (const r of c.records) r.done(0, error);
    }
    this.finishedTotal += this.queue.length - this.queueHead;
    for (let i = this.queueHead; i < this.queue.length; i++) this.queue[i]!.done(0, error);
    this.queue.length = 0;
    this.queueHead = 0;
    this.wakeIdleWaiters();
  }

  /** Opens the head segment's file, creating it when the log moved past a Seal; then appends resume. */
  async rollover(): Promise<void> {
    const id = this.durable.segmentId;
    const existing = this.segments.get(id);
    if (existing !== undefined) {
      this.head = existing;
    } else {
      try {
        this.head = await this.openNewSegment(id);
      } catch (e) {
        if (isBug(e)) failStop(e, `store: starting log segment ${id}`);
        this.fail(segmentFailure(id, e as Error));
        return;
      }
      this.segments.set(id, this.head);
      this.prepareSpare();
    }
    this.headSegmentIdForAppend = id;
    this.appendPosition = this.durable.position;
    this.sealing = false;
    this.startCommit();
  }

  /** Waits for background work on files (the spare segment) before the files are closed. */
  async quiesce(): Promise<void> {
    await this.spare?.catch(() => {});
  }

  /** A new segment from the free pool (renamed, old records carry old segment ids) or freshly zero-filled. */
  async openNewSegment(id: number): Promise<DiskFile> {
    if (this.freeNames.length === 0) {
      this.prepareSpare();
      await this.spare;
    }
    const free = this.freeNames.pop();
    assert(free !== undefined, "a spare segment file is ready");
    this.disk.rename(free, segmentName(id));
    // The rename must be durable before acknowledged records land in the file.
    await this.disk.syncDir();
    return this.disk.open(segmentName(id), false);
  }

  /** Zero-fills a spare segment file in the background, so rollover rarely waits (DESIGN §9: preallocated files). */
  prepareSpare(): void {
    if (this.spare !== undefined || this.freeNames.length > 0) return;
    const name = `free-${this.freeSerial++}`;
    this.spare = (async () => {
      const file = this.disk.open(name, true);
      try {
        const zeros = new Uint8Array(zeroChunkBytes);
        for (let at = 0; at < segmentBytes; at += zeroChunkBytes) await file.write([zeros], at);
        await file.datasync();
      } finally {
        file.close();
      }
      await this.disk.syncDir();
      this.freeNames.push(name);
    })().finally(() => {
      this.spare = undefined;
    });
    this.spare.catch(() => {}); // a failure surfaces in openNewSegment
  }
}

/** Out of room, as the NBD spec's "Error values" count it (EDQUOT and EFBIG are ENOSPC too). */
function noRoom(e: Error): boolean {
  const code = (e as { code?: unknown }).code;
  return code === "ENOSPC" || code === "EDQUOT" || code === "EFBIG";
}

/** The store's failure when a new log segment cannot be made: out of room, or else a failing disk. */
function segmentFailure(id: number, e: Error): StoreError {
  if (noRoom(e)) return new StoreError("ENOSPC", `cannot start log segment ${id}: ${e.message}; free disk space, then restart the daemon`);
  return new StoreError("EIO", `cannot start log segment ${id}: ${e.message}; check the disk, then restart the daemon`);
}

/**
 * The store's failure when a commit cannot be written or synced: out of room
 * (a filesystem that allocates on every write, copy-on-write or thin, fails
 * even a preallocated segment), or else a failing disk.
 */
function writeFailure(e: Error): StoreError {
  if (noRoom(e)) return new StoreError("ENOSPC", `log write failed, the store stopped taking writes: ${e.message}; free disk space, then restart the daemon`);
  return new StoreError("EIO", `log write failed, the store stopped taking writes: ${e.message}`);
}
