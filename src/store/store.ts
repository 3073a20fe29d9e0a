// The node-local store: one segment log for every volume replica on the node,
// a block map per group, checkpoints, recovery and garbage collection
// (DESIGN §3, docs/formats/segment-log.md, docs/formats/checkpoint.md).
//
// A group is a volume's Raft group; in single-node mode every volume is one
// group whose records carry term 1 and consecutive indexes, so replication can
// later write real Raft entries into the same log.

import { assert } from "../base/assert.js";
import {
  freeSegmentsMax,
  gcLiveRatioMax,
  gcSpaceAmpMax,
  recordHeaderBytes,
  recordPayloadBytesMax,
  checkpointLogBytes,
  sectorBytes,
  segmentBytes,
  volumeBytesMax,
} from "../constants.js";
import { BlockMap } from "./block-map.js";
import { readCheckpoint, writeCheckpoint, type Checkpoint } from "./checkpoint.js";
import type { Defer, Disk, DiskFile } from "./disk.js";
import { StoreError } from "./errors.js";
import { SegmentLog, type LogPosition } from "./log.js";
import { RecordKind, type RecordHeader } from "./record.js";
import { scanLog, SegmentReader } from "./recovery.js";
import { RaftIndex, decodeRaftConf, encodeRaftConf, type RaftConf, type RaftHardState, type RaftIndexEntry } from "./raft-index.js";
import { checkpointName, isFreeName, parseSegmentName, segmentName } from "./segment-names.js";

export interface StoreOptions {
  disk: Disk;
  defer: Defer;
  log?: (line: string) => void;
}

export interface GroupSpec {
  groupId: number;
  sizeBytes: number;
}

export interface StoreExtent {
  lengthBytes: number;
  hole: boolean;
}

interface Group {
  readonly id: number;
  readonly sizeBytes: number;
  map: BlockMap;
  term: number;
  /** Index of the last applied entry. */
  appliedIndex: number;
  /** Unaligned writes read, merge and write one at a time per group. */
  rmwTail: Promise<void>;
  dropped: boolean;
  /** The group's Raft log (replicated groups; empty for local ones). */
  raft: RaftIndex;
}

/** A Raft entry to persist: its data becomes the record payload, so applied writes can point into it. */
export interface RaftEntryInput {
  index: number;
  term: number;
  type: number;
  data: readonly Uint8Array[];
}

export interface RaftEntryOutput {
  index: number;
  term: number;
  type: number;
  data: Buffer;
}

/** Bytes per Trim record: trims larger than this are split. */
const trimRecordBytesMax = 1024 * 1024 * 1024;
/** Extents per block-status answer; clients ask again for the rest. */
const statusExtentsMax = 2048;
const zeroes = Buffer.alloc(1024 * 1024);

export class Store {
  private readonly groups = new Map<number, Group>();
  private readonly liveBytes = new Map<number, number>();
  /** Uncompacted Raft entries per segment. */
  private readonly pinned = new Map<number, number>();
  /** Segments the last durable checkpoint's Raft indexes point into; GC waits for a newer checkpoint. */
  private checkpointPinned = new Set<number>();
  private compactedSinceCheckpoint = false;
  private checkpointEnd: LogPosition;
  private bytesAtCheckpoint = 0;
  private checkpointing: Promise<void> | undefined;
  private maintaining: Promise<void> | undefined;
  private closed = false;
  private readonly reader = new SegmentReader();
  readonly counters = { checkpoints: 0, gcSegments: 0, gcBytesMoved: 0, tornBytesZeroed: 0, recordsReplayed: 0, snapshotsInstalled: 0 };
  private readonly log: (line: string) => void;

  private constructor(
    private readonly disk: Disk,
    private readonly segmentLog: SegmentLog,
    checkpointEnd: LogPosition,
    log: (line: string) => void,
  ) {
    this.checkpointEnd = checkpointEnd;
    this.log = log;
    segmentLog.onCommitted = (sealed) => {
      if (sealed || this.segmentLog.bytesAppended - this.bytesAtCheckpoint >= checkpointLogBytes) this.maintain();
    };
  }

  /** Opens (recovering) the store in `disk`; `specs` are the groups the catalog says exist. */
  static async open(options: StoreOptions, specs: readonly GroupSpec[]): Promise<Store> {
    const { disk } = options;
    const log = options.log ?? (() => {});
    if (disk.exists(`${checkpointName}.tmp`)) disk.remove(`${checkpointName}.tmp`);
    const segments = new Map<number, DiskFile>();
    const freeNames: string[] = [];
    for (const name of disk.list()) {
      const id = parseSegmentName(name);
      if (id !== undefined) segments.set(id, disk.open(name, false));
      else if (isFreeName(name)) freeNames.push(name);
    }
    const checkpoint: Checkpoint = readCheckpoint(disk) ?? { end: { segmentId: 1, position: 0, commitSeq: 0 }, groups: [] };
    const groups = restoreGroups(specs, checkpoint);
    const scan = scanLog(segments, checkpoint.end, (h, address, payload) => applyRecord(groups, h, address, payload));
    if (scan.torn) {
      const { segmentId, position, endPosition } = scan.torn;
      if (endPosition > position) {
        // Zero what the torn commit left, so a later scan cannot mistake it for data.
        const file = segments.get(segmentId)!;
        await file.write([new Uint8Array(endPosition - position)], position);
        await file.datasync();
      }
      log(`store: torn tail in segment ${segmentId} at byte ${position} (an unacknowledged commit); truncated`);
    }
    // Segment files past the end of the log hold nothing acknowledged (a commit
    // never spans segments, so a torn tail is always in the last one).
    for (const [id, f] of segments) {
      if (id <= scan.end.segmentId) continue;
      f.close();
      segments.delete(id);
      disk.remove(segmentName(id));
    }
    const segmentLog = new SegmentLog(disk, options.defer, segments, scan.end, freeNames);
    await disk.syncDir();
    await segmentLog.rollover();
    segmentLog.prepareSpare();
    const store = new Store(disk, segmentLog, checkpoint.end, log);
    store.checkpointPinned = checkpointPins(checkpoint.groups);
    store.counters.recordsReplayed = scan.recordsReplayed;
    store.counters.tornBytesZeroed = scan.torn ? scan.torn.endPosition - scan.torn.position : 0;
    for (const g of groups.values()) {
      // A snapshot that was still arriving when the node stopped is dropped; its sender starts over.
      if (isStagingId(g.id)) log(`store: dropped the unfinished snapshot of group ${baseOfStaging(g.id)}`);
      else store.groups.set(g.id, g);
    }
    store.recountLive();
    await store.releaseEmptySegments();
    return store;
  }

  // ---- groups (volumes) ----

  addGroup(spec: GroupSpec): void {
    assert(!this.groups.has(spec.groupId), "group ids are not reused");
    this.groups.set(spec.groupId, newGroup(spec));
  }

  /** Forgets a group; its data becomes garbage for GC. The catalog must already have dropped it. */
  dropGroup(groupId: number): void {
    const g = this.groups.get(groupId);
    if (g === undefined) return;
    g.dropped = true;
    this.groups.delete(groupId);
    for (const e of g.raft.all()) this.unpin(e);
    g.map.runs(0, g.map.sectorCount, (_s, n, address) => {
      if (address !== 0) this.addLive(address, -n * sectorBytes);
    });
  }

  hasGroup(groupId: number): boolean {
    return this.groups.has(groupId);
  }

  /** Why the store stopped taking writes (a failed log write or fsync, no space for a segment), or undefined. */
  get failure(): Error | undefined {
    return this.segmentLog.failed;
  }

  allocatedBytes(groupId: number): number {
    return this.group(groupId).map.allocatedSectors * sectorBytes;
  }

  // ---- data path ----

  /** Reads into `out` (a fresh buffer when not given) and returns it. */
  read(groupId: number, offsetBytes: number, lengthBytes: number, out: Buffer = Buffer.allocUnsafe(lengthBytes)): Buffer {
    const g = this.group(groupId);
    checkRange(g, offsetBytes, lengthBytes);
    assert(out.length === lengthBytes, "read buffer matches the length");
    const end = offsetBytes + lengthBytes;
    const first = Math.floor(offsetBytes / sectorBytes);
    const last = Math.ceil(end / sectorBytes);
    g.map.runs(first, last - first, (sector, count, address) => {
      const from = Math.max(offsetBytes, sector * sectorBytes);
      const to = Math.min(end, (sector + count) * sectorBytes);
      if (address === 0) out.fill(0, from - offsetBytes, to - offsetBytes);
      else this.segmentLog.readSync(address + (from - sector * sectorBytes), out, from - offsetBytes, to - from);
    });
    return out;
  }

  /** Resolves when the data is durable and visible to reads. `data` must not change until then. */
  write(groupId: number, offsetBytes: number, data: readonly Uint8Array[], lengthBytes: number): Promise<void> {
    const g = this.group(groupId);
    checkRange(g, offsetBytes, lengthBytes);
    assert(totalBytes(data) === lengthBytes, "write payload matches its length");
    if (lengthBytes === 0) return Promise.resolve();
    if (offsetBytes % sectorBytes === 0 && lengthBytes % sectorBytes === 0) return this.appendData(g, offsetBytes, data, lengthBytes);
    return this.readModifyWrite(g, offsetBytes, data, lengthBytes);
  }

  /** Deallocates the whole sectors inside the range (NBD TRIM is advisory at the edges). */
  trim(groupId: number, offsetBytes: number, lengthBytes: number): Promise<void> {
    const g = this.group(groupId);
    checkRange(g, offsetBytes, lengthBytes);
    const from = Math.ceil(offsetBytes / sectorBytes) * sectorBytes;
    const to = Math.floor((offsetBytes + lengthBytes) / sectorBytes) * sectorBytes;
    return this.appendTrim(g, from, to);
  }

  /** Zeroes the range: holes for whole sectors (unless noHole), written zeroes at unaligned edges. */
  writeZeroes(groupId: number, offsetBytes: number, lengthBytes: number, noHole: boolean): Promise<void> {
    const g = this.group(groupId);
    checkRange(g, offsetBytes, lengthBytes);
    const end = offsetBytes + lengthBytes;
    const from = Math.ceil(offsetBytes / sectorBytes) * sectorBytes;
    const to = Math.floor(end / sectorBytes) * sectorBytes;
    if (noHole || to <= from) return this.write(groupId, offsetBytes, zeroList(lengthBytes), lengthBytes);
    const parts = [this.appendTrim(g, from, to)];
    if (offsetBytes < from) parts.push(this.write(groupId, offsetBytes, zeroList(from - offsetBytes), from - offsetBytes));
    if (to < end) parts.push(this.write(groupId, to, zeroList(end - to), end - to));
    return Promise.all(parts).then(() => {});
  }

  /** Resolves when every write submitted before it is durable (acknowledged writes already are). */
  flush(): Promise<void> {
    return this.segmentLog.whenIdle();
  }

  /** Allocation runs from offsetBytes: data or hole, at most statusExtentsMax of them. */
  blockStatus(groupId: number, offsetBytes: number, lengthBytes: number): StoreExtent[] {
    const g = this.group(groupId);
    checkRange(g, offsetBytes, lengthBytes);
    const out: StoreExtent[] = [];
    const end = offsetBytes + lengthBytes;
    const first = Math.floor(offsetBytes / sectorBytes);
    const last = Math.ceil(end / sectorBytes);
    g.map.runs(first, last - first, (sector, count, address) => {
      if (out.length > statusExtentsMax) return;
      const from = Math.max(offsetBytes, sector * sectorBytes);
      const to = Math.min(end, (sector + count) * sectorBytes);
      const hole = address === 0;
      const prev = out[out.length - 1];
      if (prev !== undefined && prev.hole === hole) prev.lengthBytes += to - from;
      else out.push({ lengthBytes: to - from, hole });
    });
    if (out.length > statusExtentsMax) out.length = statusExtentsMax;
    return out;
  }

  // ---- Raft log of replicated groups (docs/replication-plan.md) ----

  /**
   * Persists Raft entries and, after them, the hard state; resolves when all
   * are durable. Every group's appends of one turn share one group commit. An
   * entry at or below the last index replaces the log from there (a
   * follower's conflicting suffix).
   */
  appendRaftEntries(groupId: number, entries: readonly RaftEntryInput[], hardState?: RaftHardState): Promise<void> {
    const g = this.group(groupId);
    for (let i = 1; i < entries.length; i++) assert(entries[i]!.index === entries[i - 1]!.index + 1, "entries are consecutive");
    // One promise for the call (the replicated write path): the log reports
    // records durable in order, so the last report settles it.
    return new Promise((resolve, reject) => {
      const count = entries.length + (hardState === undefined ? 0 : 1);
      let reported = 0;
      const report = (error: Error | undefined): void => {
        if (error !== undefined) reject(error);
        else if (++reported === count) resolve();
      };
      if (count === 0) return resolve();
      for (const e of entries) {
        const length = totalBytes(e.data);
        assert(length <= recordPayloadBytesMax, "a Raft entry fits one record");
        this.segmentLog.append({
          kind: RecordKind.RaftEntry,
          groupId: g.id,
          termOrSource: e.term,
          index: e.index,
          offsetBytes: e.type,
          lengthBytes: length,
          payload: e.data,
          done: (address, error) => {
            if (error === undefined && !g.dropped) {
              g.raft.append(e.index, { term: e.term, type: e.type, address, lengthBytes: length }, this.unpin);
              this.pin(address, 1);
            }
            report(error);
          },
        });
      }
      if (hardState !== undefined) {
        const hs = { ...hardState };
        this.segmentLog.append({
          kind: RecordKind.HardState,
          groupId: g.id,
          termOrSource: hs.term,
          index: hs.commit,
          offsetBytes: hs.vote,
          lengthBytes: 0,
          payload: [],
          done: (_address, error) => {
            if (error === undefined && !g.dropped) g.raft.hardState = hs;
            report(error);
          },
        });
      }
    });
  }

  /** Entries [lo, hi) with their data read from the log, stopping before maxBytes (but at least one). */
  raftEntries(groupId: number, lo: number, hi: number, maxBytes: number): RaftEntryOutput[] {
    const r = this.group(groupId).raft;
    if (lo < r.firstIndex || hi > r.lastIndex + 1) throw new StoreError("EINVAL", `entries [${lo}, ${hi}) are outside the log [${r.firstIndex}, ${r.lastIndex}]`);
    // Which entries, then one read for runs of them that lie close together
    // in one segment (a catch-up reads up to a whole append batch: an
    // allocation and a pread per 4 KiB entry stalled a leader for seconds).
    let end = lo;
    let bytes = 0;
    for (; end < hi; end++) {
      const e = r.get(end)!;
      if (end > lo && bytes + e.lengthBytes > maxBytes) break;
      bytes += e.lengthBytes;
    }
    const out: RaftEntryOutput[] = [];
    for (let i = lo; i < end; ) {
      const first = r.get(i)!;
      const segment = Math.floor(first.address / segmentBytes);
      let j = i + 1;
      let spanEnd = first.address + first.lengthBytes;
      let payload = first.lengthBytes;
      for (; j < end; j++) {
        const e = r.get(j)!;
        const eEnd = e.address + e.lengthBytes;
        if (e.address < spanEnd || Math.floor(e.address / segmentBytes) !== segment || eEnd - first.address > 2 * (payload + e.lengthBytes) + recordHeaderBytes) break;
        spanEnd = eEnd;
        payload += e.lengthBytes;
      }
      const span = Buffer.allocUnsafe(spanEnd - first.address);
      if (span.length > 0) this.segmentLog.readSync(first.address, span, 0, span.length);
      for (let k = i; k < j; k++) {
        const e = r.get(k)!;
        const at = e.address - first.address;
        out.push({ index: k, term: e.term, type: e.type, data: span.subarray(at, at + e.lengthBytes) });
      }
      i = j;
    }
    return out;
  }

  /** The entries of one type in [lo, hi) with their data (a restart finds its configuration entries without reading the rest). */
  raftEntriesOfType(groupId: number, type: number, lo: number, hi: number): RaftEntryOutput[] {
    const r = this.group(groupId).raft;
    const out: RaftEntryOutput[] = [];
    for (let i = Math.max(lo, r.firstIndex); i < Math.min(hi, r.lastIndex + 1); i++) {
      const e = r.get(i)!;
      if (e.type === type) out.push(this.readRaftEntry(i, e));
    }
    return out;
  }

  /** Entry `index`'s type and the last `bytes` of its data (a volume op's trailer); undefined when it is compacted, past the end or shorter. */
  raftEntryTail(groupId: number, index: number, bytes: number): { type: number; tail: Buffer } | undefined {
    const e = this.group(groupId).raft.get(index);
    if (e === undefined || e.lengthBytes < bytes) return undefined;
    const tail = Buffer.allocUnsafe(bytes);
    if (bytes > 0) this.segmentLog.readSync(e.address + e.lengthBytes - bytes, tail, 0, bytes);
    return { type: e.type, tail };
  }

  private readRaftEntry(index: number, e: RaftIndexEntry): RaftEntryOutput {
    const data = Buffer.allocUnsafe(e.lengthBytes);
    if (e.lengthBytes > 0) this.segmentLog.readSync(e.address, data, 0, e.lengthBytes);
    return { index, term: e.term, type: e.type, data };
  }

  /** The group's Raft log bounds and hard state, as recovered or as last persisted. */
  raftState(groupId: number): { firstIndex: number; lastIndex: number; snapshotIndex: number; snapshotTerm: number; hardState: RaftHardState; appliedIndex: number } {
    const g = this.group(groupId);
    const r = g.raft;
    return { firstIndex: r.firstIndex, lastIndex: r.lastIndex, snapshotIndex: r.snapshotIndex, snapshotTerm: r.snapshotTerm, hardState: { ...r.hardState }, appliedIndex: g.appliedIndex };
  }

  /** The configuration in force at the group's compaction point, if one was recorded (else: the group's initial one). */
  raftSnapshotConf(groupId: number): RaftConf | undefined {
    const c = this.group(groupId).raft.snapshotConf;
    return c === undefined ? undefined : { voters: [...c.voters], learners: [...c.learners] };
  }

  /** The group's Raft log bounds without a copy of its state (the Raft core asks them often). */
  raftFirstIndex(groupId: number): number {
    return this.group(groupId).raft.firstIndex;
  }

  raftLastIndex(groupId: number): number {
    return this.group(groupId).raft.lastIndex;
  }

  /** The term of entry `index`, or undefined when it is compacted or past the end. */
  raftTerm(groupId: number, index: number): number | undefined {
    return this.group(groupId).raft.term(index);
  }

  /**
   * Applies a committed write: the volume range now reads from the entry's
   * data, `dataOffsetBytes` into it. The data is not copied (DESIGN §3).
   */
  applyEntryWrite(groupId: number, index: number, offsetBytes: number, lengthBytes: number, dataOffsetBytes: number): void {
    const g = this.group(groupId);
    checkRange(g, offsetBytes, lengthBytes);
    const e = g.raft.get(index);
    assert(e !== undefined && dataOffsetBytes + lengthBytes <= e.lengthBytes, () => `entry ${index} holds the applied range`);
    assert(offsetBytes % sectorBytes === 0 && lengthBytes % sectorBytes === 0, "applied writes are whole sectors");
    const address = e.address + dataOffsetBytes;
    g.map.set(offsetBytes / sectorBytes, lengthBytes / sectorBytes, address, this.freed);
    this.addLive(address, lengthBytes);
    g.appliedIndex = Math.max(g.appliedIndex, index);
  }

  /** Applies a committed trim or zeroing of whole sectors. */
  applyEntryTrim(groupId: number, index: number, offsetBytes: number, lengthBytes: number): void {
    const g = this.group(groupId);
    checkRange(g, offsetBytes, lengthBytes);
    const from = Math.ceil(offsetBytes / sectorBytes);
    const to = Math.floor((offsetBytes + lengthBytes) / sectorBytes);
    if (to > from) g.map.clear(from, to - from, this.freed);
    g.appliedIndex = Math.max(g.appliedIndex, index);
  }

  /** Records that entries up to `index` are applied (entries with no effect on the volume). */
  markApplied(groupId: number, index: number): void {
    const g = this.group(groupId);
    g.appliedIndex = Math.max(g.appliedIndex, index);
  }

  /**
   * Forgets Raft entries up to `index` (at most the applied index). Their
   * segments stop being pinned; data the block maps still point at stays live.
   */
  compactRaftLog(groupId: number, index: number, conf?: RaftConf): void {
    const g = this.group(groupId);
    assert(index <= g.appliedIndex, "only applied entries are compacted");
    g.raft.compact(index, this.unpin, conf);
    this.compactedSinceCheckpoint = true;
    this.maintain(); // segments it unpinned may now be collected, after a checkpoint
  }

  // ---- Raft snapshots (full copies for a replica behind the compaction point) ----

  /**
   * Starts receiving a snapshot of `groupId` into an empty staging group of
   * the same size (any earlier unfinished one is dropped); returns its id.
   * Writes to it are ordinary local writes. The group itself stays as it was,
   * a consistent if lagging replica, until installSnapshot swaps them.
   */
  beginStaging(groupId: number): number {
    const g = this.group(groupId);
    const id = stagingIdOf(groupId);
    this.dropGroup(id);
    const staging = newGroup({ groupId: id, sizeBytes: g.sizeBytes });
    this.groups.set(id, staging);
    // The log says the staging group starts empty: an earlier attempt's
    // records (before a restart, or in a checkpoint) would otherwise replay
    // into this one, and recovery would install its blocks where this copy
    // has holes. A failed log fails the chunk writes queued behind it too.
    this.appendTrim(staging, 0, g.sizeBytes).catch(() => {});
    return id;
  }

  dropStaging(groupId: number): void {
    this.dropGroup(stagingIdOf(groupId));
  }

  /**
   * Makes the staging group the group's state, and restarts its Raft log after
   * (index, term), in one record: recovery sees either the old group or the
   * new one, never a mix. Resolves once durable.
   */
  installSnapshot(groupId: number, index: number, term: number, conf: RaftConf): Promise<void> {
    const g = this.group(groupId);
    const staging = this.group(stagingIdOf(groupId));
    const payload = encodeRaftConf(conf);
    return new Promise((resolve, reject) => {
      this.segmentLog.append({
        kind: RecordKind.SnapshotInstall,
        groupId,
        termOrSource: term,
        index,
        offsetBytes: 0,
        lengthBytes: payload.length,
        payload: [payload],
        done: (_address, error) => {
          if (error) return reject(error);
          // The staging group is gone while its group is not: the copy the core took is not what would be installed.
          if (!g.dropped && staging.dropped) return reject(new StoreError("EIO", `snapshot of group ${groupId} at index ${index}: its staged data was dropped before the install`));
          if (!g.dropped) {
            this.groups.delete(staging.id);
            installStaged(g, staging, index, term, conf, this.freed, this.unpin);
            this.compactedSinceCheckpoint = true;
            this.counters.snapshotsInstalled++;
          }
          resolve();
        },
      });
    });
  }

  /** Bytes of the Raft entries from `fromIndex` (clamped to the log) to the last one. */
  raftLogBytesFrom(groupId: number, fromIndex: number): number {
    const r = this.group(groupId).raft;
    let bytes = 0;
    for (let i = Math.max(fromIndex, r.firstIndex); i <= r.lastIndex; i++) bytes += r.get(i)!.lengthBytes;
    return bytes;
  }

  // ---- maintenance ----

  /** Writes a checkpoint of every block map as of the durable end of the log. */
  checkpoint(): Promise<void> {
    if (this.checkpointing) return this.checkpointing;
    const end = { ...this.segmentLog.durable };
    const bytesAt = this.segmentLog.bytesAppended;
    const groups = [...this.groups.values()].map((g) => ({
      groupId: g.id,
      sizeBytes: g.sizeBytes,
      lastTerm: g.term,
      lastIndex: g.appliedIndex,
      chunks: new Map([...g.map.chunks].map(([i, c]) => [i, c.slice()] as const)),
      raft: { snapshotIndex: g.raft.snapshotIndex, snapshotTerm: g.raft.snapshotTerm, hardState: { ...g.raft.hardState }, entries: [...g.raft.all()], conf: g.raft.snapshotConf },
    }));
    const pinned = checkpointPins(groups);
    this.compactedSinceCheckpoint = false;
    this.checkpointing = writeCheckpoint(this.disk, { end, groups })
      .then(() => {
        this.checkpointPinned = pinned;
        this.checkpointEnd = end;
        this.bytesAtCheckpoint = bytesAt;
        this.counters.checkpoints++;
      })
      .finally(() => {
        this.checkpointing = undefined;
      });
    return this.checkpointing;
  }

  /** Starts background checkpoint + GC work unless it is already running. */
  maintain(): void {
    if (this.maintaining || this.closed) return;
    this.maintaining = this.maintainLoop()
      .catch((e: Error) => this.log(`store: maintenance stopped: ${e.message}`))
      .finally(() => {
        this.maintaining = undefined;
      });
  }

  /** Waits for background maintenance to finish (tests and shutdown). */
  async settle(): Promise<void> {
    while (this.maintaining) await this.maintaining;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.settle();
    await this.segmentLog.whenIdle();
    await this.checkpointing;
    await this.checkpoint();
    await this.segmentLog.quiesce();
    this.segmentLog.close();
  }

  /**
   * Closes the files without a final checkpoint, leaving the directory as a
   * crash right after the last commit would: recovery must replay the log.
   */
  async closeWithoutCheckpoint(): Promise<void> {
    this.closed = true;
    await this.settle();
    await this.segmentLog.whenIdle();
    await this.checkpointing;
    await this.segmentLog.quiesce();
    this.segmentLog.close();
  }

  stats(): Record<string, number> {
    const live = [...this.liveBytes.values()].reduce((a, b) => a + b, 0);
    const segmentsCount = this.segmentLog.segments.size;
    return {
      logBytesAppended: this.segmentLog.bytesAppended,
      commits: this.segmentLog.commits,
      recordsCommitted: this.segmentLog.recordsCommitted,
      segments: segmentsCount,
      freeSegments: this.segmentLog.freeSegmentCount,
      diskBytes: (segmentsCount + this.segmentLog.freeSegmentCount) * segmentBytes,
      liveBytes: live,
      ...this.counters,
    };
  }

  // ---- internals ----

  private group(groupId: number): Group {
    const g = this.groups.get(groupId);
    if (g === undefined) throw new StoreError("ENOENT", `volume group ${groupId} is not in this store`);
    return g;
  }

  private appendData(g: Group, offsetBytes: number, data: readonly Uint8Array[], lengthBytes: number): Promise<void> {
    if (lengthBytes <= recordPayloadBytesMax) return this.appendRecord(g, RecordKind.Write, offsetBytes, lengthBytes, data, 0);
    const parts: Promise<void>[] = [];
    for (let at = 0; at < lengthBytes; at += recordPayloadBytesMax) {
      const n = Math.min(recordPayloadBytesMax, lengthBytes - at);
      parts.push(this.appendRecord(g, RecordKind.Write, offsetBytes + at, n, sliceBuffers(data, at, n), 0));
    }
    return Promise.all(parts).then(() => {});
  }

  private appendTrim(g: Group, from: number, to: number): Promise<void> {
    const parts: Promise<void>[] = [];
    for (let at = from; at < to; at += trimRecordBytesMax) {
      parts.push(this.appendRecord(g, RecordKind.Trim, at, Math.min(trimRecordBytesMax, to - at), [], 0));
    }
    return Promise.all(parts).then(() => {});
  }

  private appendRecord(
    g: Group,
    kind: RecordKind.Write | RecordKind.Trim | RecordKind.Relocate,
    offsetBytes: number,
    lengthBytes: number,
    payload: readonly Uint8Array[],
    source: number,
  ): Promise<void> {
    // Local records (a volume with its only replica here) are not Raft entries: index 0.
    const index = 0;
    return new Promise((resolve, reject) => {
      this.segmentLog.append({
        kind,
        groupId: g.id,
        termOrSource: kind === RecordKind.Relocate ? source : g.term,
        index,
        offsetBytes,
        lengthBytes,
        payload,
        done: (address, error) => {
          if (error) return reject(error);
          if (!g.dropped) this.apply(g, kind, offsetBytes, lengthBytes, source, index, address);
          resolve();
        },
      });
    });
  }

  /** Segments holding uncompacted Raft entries are never collected. */
  private pin(address: number, delta: number): void {
    const id = Math.floor(address / segmentBytes);
    const n = (this.pinned.get(id) ?? 0) + delta;
    if (n === 0) this.pinned.delete(id);
    else this.pinned.set(id, n);
  }

  /** Unpins a dropped Raft index entry's segment (a field: passed on every append, made once). */
  private readonly unpin = (e: RaftIndexEntry): void => this.pin(e.address, -1);

  /** Counts sectors a block map stopped pointing at as dead (a field, as unpin). */
  private readonly freed = (address: number, sectors: number): void => this.addLive(address, -sectors * sectorBytes);

  private apply(g: Group, kind: RecordKind, offsetBytes: number, lengthBytes: number, source: number, index: number, address: number): void {
    const moved = applyToGroup(g, kind, offsetBytes, lengthBytes, source, index, address, this.freed);
    if (moved > 0) this.addLive(address, moved * sectorBytes);
  }

  private readModifyWrite(g: Group, offsetBytes: number, data: readonly Uint8Array[], lengthBytes: number): Promise<void> {
    const op = g.rmwTail.then(() => {
      const from = Math.floor(offsetBytes / sectorBytes) * sectorBytes;
      const to = Math.min(g.sizeBytes, Math.ceil((offsetBytes + lengthBytes) / sectorBytes) * sectorBytes);
      const merged = this.read(g.id, from, to - from);
      let at = offsetBytes - from;
      for (const d of data) {
        merged.set(d, at);
        at += d.length;
      }
      return this.appendData(g, from, [merged], merged.length);
    });
    g.rmwTail = op.catch(() => {});
    return op;
  }

  private addLive(address: number, bytes: number): void {
    const id = Math.floor(address / segmentBytes);
    this.liveBytes.set(id, (this.liveBytes.get(id) ?? 0) + bytes);
  }

  private recountLive(): void {
    this.liveBytes.clear();
    this.pinned.clear();
    for (const g of this.groups.values()) {
      for (const e of g.raft.all()) this.pin(e.address, 1);
      g.map.runs(0, g.map.sectorCount, (_s, n, address) => {
        if (address !== 0) this.addLive(address, n * sectorBytes);
      });
    }
  }

  private async maintainLoop(): Promise<void> {
    while (!this.closed) {
      const appendedSince = this.segmentLog.bytesAppended - this.bytesAtCheckpoint;
      // Candidates a newer checkpoint would make collectable: written after it, or pinned only by its Raft index.
      const candidates = this.gcCandidates(Infinity, false);
      const eligible = this.gcCandidates(this.checkpointEnd.segmentId, true);
      const stale = appendedSince > 0 || this.compactedSinceCheckpoint;
      if (appendedSince >= checkpointLogBytes || (eligible.length === 0 && candidates.length > 0 && stale)) {
        await this.checkpoint();
      }
      const victim = this.gcCandidates(this.checkpointEnd.segmentId, true)[0];
      if (victim === undefined) return;
      // A segment GC could not empty would be chosen again at once: stop until the next round.
      if (!(await this.collectSegment(victim))) return;
    }
  }

  /**
   * Sealed segments below `belowId` worth collecting, emptiest first: those
   * with no live data, and while the segments hold more than gcSpaceAmpMax
   * times the live data, those whose live ratio is under gcLiveRatioMax.
   */
  private gcCandidates(belowId: number, honourCheckpointPins: boolean): number[] {
    const head = this.segmentLog.headSegmentId;
    // Amplification that copying could reduce: among sealed segments that
    // hold live data and are not pinned (Raft entries not yet compacted stay
    // whatever GC does; a wholly dead segment is freed without copying).
    let holding = 0;
    let live = 0;
    for (const id of this.segmentLog.segments.keys()) {
      const bytes = this.liveBytes.get(id) ?? 0;
      if (id >= head || this.pinned.has(id) || bytes === 0) continue;
      holding++;
      live += bytes;
    }
    const amplified = holding * segmentBytes > gcSpaceAmpMax * live + segmentBytes;
    const liveMax = amplified ? gcLiveRatioMax * segmentBytes : 1;
    const ids: number[] = [];
    for (const id of this.segmentLog.segments.keys()) {
      if (id >= head || id >= belowId || this.pinned.has(id)) continue;
      // The last checkpoint's Raft index still points here: recovery from it would read this segment.
      if (honourCheckpointPins && this.checkpointPinned.has(id)) continue;
      if ((this.liveBytes.get(id) ?? 0) < liveMax) ids.push(id);
    }
    return ids.sort((a, b) => (this.liveBytes.get(a) ?? 0) - (this.liveBytes.get(b) ?? 0));
  }

  /**
   * Copies a segment's live data to the head of the log, then frees the
   * segment. Live data is found from the block maps (whatever kind of record
   * holds it); the segment's records are read once first so that damaged data
   * is never laundered under a fresh checksum. Returns whether the segment
   * was freed.
   */
  private async collectSegment(id: number): Promise<boolean> {
    // With nothing live no block map points here: nothing to check, find or copy
    // (finding walks every block map: 14% of a 1 MiB sequential write's CPU).
    const live = (this.liveBytes.get(id) ?? 0) > 0;
    if (live) this.verifySegment(id);
    const lo = id * segmentBytes;
    const moves: Promise<void>[] = [];
    for (const g of live ? this.groups.values() : []) {
      g.map.runsInto(lo, lo + segmentBytes, (sector, count, address) => {
        for (let done = 0; done < count; ) {
          const n = Math.min(count - done, recordPayloadBytesMax / sectorBytes);
          const copy = Buffer.allocUnsafe(n * sectorBytes);
          const from = address + done * sectorBytes;
          this.segmentLog.readSync(from, copy, 0, copy.length);
          this.counters.gcBytesMoved += copy.length;
          moves.push(this.appendRecord(g, RecordKind.Relocate, (sector + done) * sectorBytes, copy.length, [copy], from));
          done += n;
        }
      });
    }
    await Promise.all(moves);
    if ((this.liveBytes.get(id) ?? 0) !== 0) {
      this.log(`store: segment ${id} still holds ${this.liveBytes.get(id)} live bytes after GC; kept`);
      return false;
    }
    this.liveBytes.delete(id);
    await this.segmentLog.releaseSegment(id, this.segmentLog.freeSegmentCount < freeSegmentsMax);
    this.counters.gcSegments++;
    return true;
  }

  /** Reads every record of a sealed segment, checking its CRC; throws at the first damaged one. */
  private verifySegment(id: number): void {
    const file = this.segmentLog.segments.get(id);
    assert(file !== undefined, "GC victim is open");
    for (let position = 0; ; ) {
      const record = this.reader.recordAt(file, id, position);
      if (record === undefined) throw new StoreError("EIO", `GC found a damaged record in segment ${id} at byte ${position}; the segment is kept`);
      if (record.header.kind === RecordKind.Seal) return;
      position += recordHeaderBytes + record.payload.length;
    }
  }

  private async releaseEmptySegments(): Promise<void> {
    for (const id of [...this.segmentLog.segments.keys()]) {
      if (id < this.checkpointEnd.segmentId && id < this.segmentLog.headSegmentId && (this.liveBytes.get(id) ?? 0) === 0 && !this.pinned.has(id) && !this.checkpointPinned.has(id)) {
        await this.segmentLog.releaseSegment(id, this.segmentLog.freeSegmentCount < freeSegmentsMax);
      }
    }
  }
}

/** Segments that Raft entries saved in a checkpoint point into. */
function checkpointPins(groups: readonly { raft: { entries: readonly RaftIndexEntry[] } }[]): Set<number> {
  const ids = new Set<number>();
  for (const g of groups) for (const e of g.raft.entries) ids.add(Math.floor(e.address / segmentBytes));
  return ids;
}

function newGroup(spec: GroupSpec): Group {
  // Size 0: a group that holds only a Raft log (the meta group).
  if (!Number.isSafeInteger(spec.sizeBytes) || spec.sizeBytes < 0 || spec.sizeBytes % sectorBytes !== 0 || spec.sizeBytes > volumeBytesMax) {
    throw new StoreError("EINVAL", `volume size ${spec.sizeBytes} must be a multiple of ${sectorBytes} bytes up to ${volumeBytesMax}`);
  }
  return {
    id: spec.groupId,
    sizeBytes: spec.sizeBytes,
    map: new BlockMap(spec.sizeBytes / sectorBytes),
    term: 1,
    appliedIndex: 0,
    rmwTail: Promise.resolve(),
    dropped: false,
    raft: new RaftIndex(),
  };
}

function restoreGroups(specs: readonly GroupSpec[], checkpoint: Checkpoint): Map<number, Group> {
  const groups = new Map<number, Group>();
  for (const spec of specs) groups.set(spec.groupId, newGroup(spec));
  for (const saved of checkpoint.groups) {
    const g = groups.get(saved.groupId) ?? stagingFor(groups, saved.groupId);
    if (g === undefined) continue; // deleted from the catalog since
    g.term = saved.lastTerm;
    g.appliedIndex = saved.lastIndex;
    g.raft = RaftIndex.restore(saved.raft.snapshotIndex, saved.raft.snapshotTerm, saved.raft.hardState, [...saved.raft.entries], saved.raft.conf);
    for (const [index, chunk] of saved.chunks) {
      if (index * 4096 >= g.map.sectorCount) continue; // volume shrank (not offered yet)
      g.map.chunks.set(index, chunk);
      for (let i = 0; i < chunk.length; i++) if (chunk[i] !== 0) g.map.allocatedSectors++;
    }
  }
  return groups;
}

/** Replays one record into its group (recovery path; the live counts are recomputed after). */
function applyRecord(groups: Map<number, Group>, h: RecordHeader, address: number, payload: Buffer): void {
  const g = groups.get(h.groupId) ?? stagingFor(groups, h.groupId);
  if (g === undefined) return;
  if (h.kind === RecordKind.SnapshotInstall) {
    const staging = groups.get(stagingIdOf(g.id));
    // Installing needs every record of the staging group, which precedes this one in the log.
    const conf = decodeRaftConf(payload, 0);
    if (staging === undefined || conf === undefined) throw new StoreError("EIO", `snapshot install of group ${g.id} without its staged data or configuration; the log is damaged`);
    groups.delete(staging.id);
    installStaged(g, staging, h.index, h.termOrSource, conf.conf, () => {}, () => {});
    return;
  }
  if (h.kind === RecordKind.RaftEntry) {
    if (h.index > g.raft.snapshotIndex) g.raft.append(h.index, { term: h.termOrSource, type: h.offsetBytes, address, lengthBytes: h.lengthBytes }, () => {});
    return;
  }
  if (h.kind === RecordKind.HardState) {
    g.raft.hardState = { term: h.termOrSource, vote: h.offsetBytes, commit: h.index };
    return;
  }
  if (h.offsetBytes + h.lengthBytes > g.sizeBytes) return;
  applyToGroup(g, h.kind, h.offsetBytes, h.lengthBytes, h.termOrSource, h.index, address, () => {});
  if (h.kind !== RecordKind.Relocate) {
    g.term = Math.max(g.term, h.termOrSource);
  }
}

/** Applies a record to a group's map; returns how many sectors a Relocate moved. */
function applyToGroup(
  g: Group,
  kind: RecordKind,
  offsetBytes: number,
  lengthBytes: number,
  source: number,
  index: number,
  address: number,
  freed: (address: number, sectors: number) => void,
): number {
  const sector = offsetBytes / sectorBytes;
  const count = lengthBytes / sectorBytes;
  switch (kind) {
    case RecordKind.Write:
      g.map.set(sector, count, address, freed);
      return count;
    case RecordKind.Trim:
      g.map.clear(sector, count, freed);
      return 0;
    case RecordKind.Relocate:
      return g.map.relocate(sector, count, source, address, freed);
    default:
      return 0;
  }
}

/**
 * A staging group's id: the group's id plus 2^40, far above any volume id
 * (volume ids are below 2^32), so it never collides and never reaches Raft.
 */
const stagingBase = 2 ** 40;

function stagingIdOf(groupId: number): number {
  assert(groupId < stagingBase, "a staging group has no staging group");
  return groupId + stagingBase;
}

function isStagingId(id: number): boolean {
  return id >= stagingBase;
}

function baseOfStaging(id: number): number {
  return id - stagingBase;
}

/** Recovery: the staging group of an existing group, made on its first record. */
function stagingFor(groups: Map<number, Group>, id: number): Group | undefined {
  if (!isStagingId(id)) return undefined;
  const base = groups.get(baseOfStaging(id));
  if (base === undefined) return undefined;
  const g = newGroup({ groupId: id, sizeBytes: base.sizeBytes });
  groups.set(id, g);
  return g;
}

/** The install step itself, live or in recovery: the staged map replaces the group's, the Raft log restarts after the snapshot. */
function installStaged(
  g: Group,
  staging: Group,
  index: number,
  term: number,
  conf: RaftConf,
  freed: (address: number, sectors: number) => void,
  unpin: (e: RaftIndexEntry) => void,
): void {
  g.map.runs(0, g.map.sectorCount, (_s, n, address) => {
    if (address !== 0) freed(address, n);
  });
  g.map = staging.map;
  for (const e of g.raft.all()) unpin(e);
  const hs = g.raft.hardState;
  g.raft = RaftIndex.restore(index, term, { term: Math.max(hs.term, term), vote: hs.vote, commit: Math.max(hs.commit, index) }, [], conf);
  g.appliedIndex = index;
}

function checkRange(g: Group, offsetBytes: number, lengthBytes: number): void {
  if (!Number.isSafeInteger(offsetBytes) || !Number.isSafeInteger(lengthBytes) || offsetBytes < 0 || lengthBytes < 0 || offsetBytes + lengthBytes > g.sizeBytes) {
    throw new StoreError("EINVAL", `range [${offsetBytes}, +${lengthBytes}) is outside the volume (${g.sizeBytes} bytes)`);
  }
}

function totalBytes(data: readonly Uint8Array[]): number {
  let n = 0;
  for (const d of data) n += d.length;
  return n;
}

/** Views of bytes [at, at + length) of a list of buffers, without copying. */
export function sliceBuffers(data: readonly Uint8Array[], at: number, length: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let skip = at;
  let want = length;
  for (const d of data) {
    if (want === 0) break;
    if (skip >= d.length) {
      skip -= d.length;
      continue;
    }
    const take = Math.min(d.length - skip, want);
    out.push(d.subarray(skip, skip + take));
    want -= take;
    skip = 0;
  }
  assert(want === 0, "slice lies inside the buffers");
  return out;
}

function zeroList(lengthBytes: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let at = 0; at < lengthBytes; at += zeroes.length) out.push(zeroes.subarray(0, Math.min(zeroes.length, lengthBytes - at)));
  return out;
}
