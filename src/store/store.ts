// The node-local store: one segment log for every volume replica on the node,
// a block map per group, checkpoints, recovery and garbage collection
// (DESIGN §3, docs/formats/segment-log.md, docs/formats/checkpoint.md).
//
// A group is a volume's Raft group; in single-node mode every volume is one
// group whose records carry term 1 and consecutive indexes, so replication can
// later write real Raft entries into the same log.

import { assert } from "../base/assert.js";
import { failStop, isBug } from "../base/fail-stop.js";
import { crc32c } from "../base/crc32c.js";
import {
  checksumBlockBytes,
  freeSegmentsMax,
  gcLiveRatioMax,
  gcSpaceAmpMax,
  recordHeaderBytes,
  recordPayloadBytesMax,
  checkpointLogBytes,
  sectorBytes,
  segmentBytes,
  snapshotIdMax,
  verifyOffThreadBytesMin,
  volumeBytesMax,
} from "../constants.js";
import { checkedAddress, type BlockVerifier } from "./block-checks.js";
import { BlockMap, blockSectors, chunkBlocks, chunkSectors } from "./block-map.js";
import { readCheckpoint, writeCheckpoint, type Checkpoint } from "./checkpoint.js";
import { foldBlockCrcs } from "./checksums.js";
import type { Defer, Disk, DiskFile } from "./disk.js";
import { ChecksumError, DamagedEntryError, StoreError } from "./errors.js";
import { SegmentLog, type LogPosition } from "./log.js";
import { decodeHeader, payloadBytesOf, payloadMatches, raftEntryType, raftOffsetField, raftRangeOffset, recordHeaderBytesV1, RecordKind, type RecordHeader } from "./record.js";
import { blockChecks, blockContent, damagedBlocks, mapRange, readContent, sliceBuffers, wholeBlockCrcs, wholeBlocks, type MapContext, type MappedGroup, type ReadAt } from "./map-data.js";
import { scanLog } from "./recovery.js";
import { RaftIndex, decodeRaftConf, encodeRaftConf, type LostRange, type RaftConf, type RaftHardState, type RaftIndexEntry } from "./raft-index.js";
import { checkpointName, isFreeName, parseSegmentName, segmentName } from "./segment-names.js";
import { readStateSnapshot, stateSnapshotName, writeStateSnapshot, type StateSnapshot } from "./state-snapshot.js";

export interface StoreOptions {
  disk: Disk;
  defer: Defer;
  log?: (line: string) => void;
  /**
   * Background work (GC) found blocks of a group whose data fails its
   * checksum; the caller repairs them from a replica where there is one.
   * Reads throw a ChecksumError instead.
   */
  onDamage?: (e: ChecksumError) => void;
  /** Checks large reads off the event loop (readOffThread); without one every read is checked inline. */
  verifier?: BlockVerifier;
}

export interface GroupSpec {
  groupId: number;
  sizeBytes: number;
}

export interface StoreExtent {
  lengthBytes: number;
  hole: boolean;
}

interface Group extends MappedGroup {
  readonly id: number;
  /** Grows with a committed resize (growGroup), never shrinks. */
  sizeBytes: number;
  map: BlockMap;
  term: number;
  /** Index of the last applied entry. */
  appliedIndex: number;
  dropped: boolean;
  /** The group's Raft log (replicated groups; empty for local ones). */
  raft: RaftIndex;
}

/** Blocks of a volume as one replica holds them, for another's repair (Store.readForRepair). */
export interface RepairCopy {
  /** The blocks, damaged ones as zeroes. */
  data: Uint8Array;
  /** The blocks that failed their checksum there. */
  damaged: number[];
  /** The Raft index that replica had applied: the bytes are the state after it. */
  applied: number;
}

/** A Raft entry to persist: its data becomes the record payload, so applied writes can point into it. */
export interface RaftEntryInput {
  index: number;
  term: number;
  type: number;
  data: readonly Uint8Array[];
  /** The CRC32C of the data when the caller has it already (folded from the checksums a volume write carries). */
  payloadCrc?: number;
  /**
   * The volume range the entry changes, named in its record's header so a
   * damaged payload still says what was lost (lostRaftEntries). When the data
   * is at least the range's length, its first bytes are the range's new
   * content (a write); otherwise the entry unmaps the range (a trim).
   */
  range?: LostRange;
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
  /**
   * A volume snapshot was taken or dropped since the last checkpoint. GC
   * waits for the next one: a snapshot exists on disk only in a checkpoint
   * (before it, its volume's log makes it again), and a GC copy of its data
   * must be replayed into it, never lost because recovery did not know it.
   */
  private snapshotsChanged = false;
  private checkpointEnd: LogPosition;
  private bytesAtCheckpoint = 0;
  private checkpointing: Promise<void> | undefined;
  /** The snapshot a copy is being made of (beginSnapshotCopy), if any. */
  private copyingSnapshot: { groupId: number; snapshotId: number } | undefined;
  private maintaining: Promise<void> | undefined;
  private closed = false;
  /** The latest saved snapshot of each group without data (the meta group), by group id. */
  private readonly stateSnapshots = new Map<number, StateSnapshot>();
  /** Snapshot saves, one at a time. */
  private stateSaves: Promise<void> = Promise.resolve();
  readonly counters = {
    checkpoints: 0,
    gcSegments: 0,
    gcBytesMoved: 0,
    tornBytesZeroed: 0,
    recordsReplayed: 0,
    snapshotsInstalled: 0,
    /** Reads (and GC copies) that found blocks failing their checksum. */
    checksumErrors: 0,
    /** Blocks rewritten from a good copy (repairBlocks). */
    blocksRepaired: 0,
    blocksPoisoned: 0,
    /** Acknowledged records recovery found damaged (payload; the header intact) and worked around. */
    damagedRecords: 0,
  };
  private readonly log: (line: string) => void;
  private readonly onDamage: (e: ChecksumError) => void;
  private readonly mapCtx: MapContext;

  private constructor(
    private readonly disk: Disk,
    private readonly segmentLog: SegmentLog,
    checkpointEnd: LogPosition,
    log: (line: string) => void,
    onDamage: (e: ChecksumError) => void,
    /** Checks large reads on another thread (readOffThread). */
    private readonly verifier: BlockVerifier | undefined,
  ) {
    this.checkpointEnd = checkpointEnd;
    this.log = log;
    this.onDamage = onDamage;
    this.mapCtx = {
      readAt: (address, into, at, length) => this.segmentLog.readSync(address, into, at, length),
      readable: (address) => this.segmentLog.segments.has(Math.floor(address / segmentBytes)),
      freed: this.freed,
      poisoned: (g, block) => {
        this.counters.blocksPoisoned++;
        this.log(`store: group ${g.id}: block ${block} (volume byte ${block * checksumBlockBytes}) failed its checksum before a write covering part of it; it stays damaged until repaired or rewritten whole`);
      },
      // Only a map restored from a checkpoint points into freed segments, and recovery replayed
      // every record that moves such sectors before the driver applies an entry again.
      staleBlocks: () => undefined,
    };
    segmentLog.onCommitted = (sealed) => {
      if (sealed || this.segmentLog.bytesAppended - this.bytesAtCheckpoint >= checkpointLogBytes) this.maintain();
    };
  }

  /** Opens (recovering) the store in `disk`; `specs` are the groups the catalog says exist. */
  static async open(options: StoreOptions, specs: readonly GroupSpec[]): Promise<Store> {
    const { disk } = options;
    const log = options.log ?? (() => {});
    if (disk.exists(`${checkpointName}.tmp`)) disk.remove(`${checkpointName}.tmp`);
    const stateSnapshots = new Map<number, StateSnapshot>();
    for (const spec of specs) {
      const saved = spec.sizeBytes === 0 ? readStateSnapshot(disk, spec.groupId) : undefined;
      if (saved !== undefined) stateSnapshots.set(spec.groupId, saved);
    }
    const segments = new Map<number, DiskFile>();
    const freeNames: string[] = [];
    for (const name of disk.list()) {
      const id = parseSegmentName(name);
      if (id !== undefined) segments.set(id, disk.open(name, false));
      else if (isFreeName(name)) freeNames.push(name);
    }
    const checkpoint: Checkpoint = readCheckpoint(disk) ?? { end: { segmentId: 1, position: 0, commitSeq: 0 }, groups: [] };
    const groups = restoreGroups(specs, checkpoint);
    let poisoned = 0;
    const stale = new Map<number, Set<number>>();
    const ctx: MapContext = {
      readAt: fileReader(segments),
      readable: (address) => segments.has(Math.floor(address / segmentBytes)),
      freed: () => {},
      poisoned: (g, block) => {
        poisoned++;
        log(`store: recovery: group ${g.id}: block ${block} failed its checksum before a write covering part of it; it stays damaged`);
      },
      staleBlocks: (g) => {
        let blocks = stale.get(g.id);
        if (blocks === undefined) stale.set(g.id, (blocks = new Set()));
        return blocks;
      },
    };
    const damage = new RecoveryDamage();
    for (const g of groups.values()) checkRestoredEntries(g, ctx.readAt, damage);
    const scan = scanLog(
      segments,
      checkpoint.end,
      (h, address, payload) => applyRecord(groups, h, address, payload, ctx, damage),
      (h, address) => applyDamaged(groups, h, address, ctx, damage),
    );
    for (const [id, blocks] of stale) {
      const g = groups.get(id);
      if (g !== undefined) settleStaleCrcs(g, blocks, ctx);
    }
    for (const g of groups.values()) {
      if (g.crcsPending) computeAllCrcs(g, ctx, log);
      damage.settle(g, ctx);
    }
    for (const line of damage.lines) log(`store: recovery: ${line}`);
    const lost = lostState(groups, stateSnapshots);
    if (lost !== undefined) {
      for (const f of segments.values()) f.close();
      throw lost;
    }
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
    const store = new Store(disk, segmentLog, checkpoint.end, log, options.onDamage ?? (() => {}), options.verifier);
    store.counters.blocksPoisoned = poisoned + damage.blocksPoisoned;
    store.counters.damagedRecords = damage.records;
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
    for (const [id, saved] of stateSnapshots) await store.adoptStateSnapshot(id, saved);
    // A group whose Raft log recovery cut owes its vote until the log is back
    // (recoverUntil). The damaged record that told may not be found again at
    // the next start (a torn tail after it is cut off, the segment freed), so
    // the debt is made durable now, in a checkpoint, before the group runs.
    if ([...store.groups.keys()].some((id) => damage.isCut(id))) await store.checkpoint();
    return store;
  }

  /**
   * At open: the latest saved snapshot of a group without data. A node that
   * stopped after saving a snapshot received from its leader and before
   * recording its install in the log (the log does not hold the snapshot's
   * entry with its term) records the install now, as it would have.
   */
  private async adoptStateSnapshot(groupId: number, saved: StateSnapshot): Promise<void> {
    const r = this.group(groupId).raft;
    this.stateSnapshots.set(groupId, saved);
    if (r.term(saved.index) === saved.term) return;
    await this.installSnapshot(groupId, saved.index, saved.term, saved.conf);
    this.log(`store: group ${groupId}: recorded the install of its snapshot at entry ${saved.index} (the node stopped after saving it)`);
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
    if (!isSnapshotId(groupId) && !isStagingId(groupId)) for (const s of this.snapshotIds(groupId)) this.dropGroup(snapshotGroupId(groupId, s));
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

  // ---- volume snapshots (docs/architecture.md, "Snapshots") ----

  /**
   * Takes snapshot `snapshotId` of a volume group as it is after applying
   * entry `index` (the entry that asks for it): a read-only group whose block
   * map shares every chunk with the volume's until either changes it. Nothing
   * is written: the entry is in the group's Raft log, and a restart before the
   * next checkpoint applies it again. A snapshot of that id that is there
   * already (an earlier attempt the catalog never recorded) is replaced.
   */
  takeSnapshot(groupId: number, snapshotId: number, index: number): void {
    const g = this.group(groupId);
    const id = snapshotGroupId(groupId, snapshotId);
    this.dropGroup(id);
    const s = newGroup({ groupId: id, sizeBytes: g.sizeBytes });
    this.shareMap(s, g);
    s.term = g.term;
    s.appliedIndex = index;
    this.groups.set(id, s);
    this.snapshotsChanged = true;
    g.appliedIndex = Math.max(g.appliedIndex, index);
  }

  /**
   * Drops a volume's snapshot (none there is no error); entry `index` asked
   * for it, or none (undefined) when the node finds a snapshot the catalog
   * no longer lists. Its data becomes garbage for GC.
   */
  dropSnapshot(groupId: number, snapshotId: number, index?: number): void {
    const g = this.group(groupId);
    const id = snapshotGroupId(groupId, snapshotId);
    if (this.groups.has(id)) {
      this.dropGroup(id);
      this.snapshotsChanged = true;
    }
    if (index !== undefined) g.appliedIndex = Math.max(g.appliedIndex, index);
  }

  /**
   * Starts a copy of a volume's snapshot that this node never took: it was
   * filled by a copy of the volume past the entry that took it. The copy is
   * a staging group (dropped by a restart, like any unfinished copy) that
   * begins as a copy-on-write clone of the volume's map as it is now, or
   * empty when the snapshot's size differs; the copier writes the blocks
   * where the snapshot differs (writeStaged) and then finishSnapshotCopy
   * makes it the snapshot. One at a time: a new one drops the last. Returns
   * the staging group's id.
   */
  beginSnapshotCopy(groupId: number, snapshotId: number, sizeBytes: number): number {
    const g = this.group(groupId);
    checkSize(sizeBytes);
    const id = stagingIdOf(snapshotCopyBase);
    this.dropGroup(id);
    const staging = newGroup({ groupId: id, sizeBytes });
    if (sizeBytes === g.sizeBytes) this.shareMap(staging, g);
    this.groups.set(id, staging);
    this.copyingSnapshot = { groupId, snapshotId };
    return id;
  }

  /**
   * Makes the finished copy (beginSnapshotCopy; every staged write resolved)
   * snapshot `snapshotId` of the volume, as its group took it at `index`,
   * and resolves once a checkpoint holds it: no log record names it, so
   * until then a restart would not have it (and the copy starts over).
   */
  async finishSnapshotCopy(groupId: number, snapshotId: number, index: number): Promise<void> {
    const stagingId = stagingIdOf(snapshotCopyBase);
    const staging = this.groups.get(stagingId);
    const copying = this.copyingSnapshot;
    if (staging === undefined || copying?.groupId !== groupId || copying.snapshotId !== snapshotId) {
      throw new StoreError("EIO", `the copy of snapshot ${snapshotId} of group ${groupId} was dropped before it finished`);
    }
    this.group(groupId); // the volume is still here
    const id = snapshotGroupId(groupId, snapshotId);
    this.dropGroup(id);
    this.groups.delete(stagingId);
    this.copyingSnapshot = undefined;
    // The staging group's data and live bytes pass to the snapshot as they are.
    const s = newGroup({ groupId: id, sizeBytes: staging.sizeBytes });
    s.map = staging.map;
    s.appliedIndex = index;
    this.groups.set(id, s);
    this.snapshotsChanged = true;
    await this.checkpointFromNow();
  }

  /**
   * Starts volume group `groupId` as a clone of snapshot `snapshotId` of group
   * `sourceId` (pxd volume clone, on a node that holds the snapshot): its map
   * shares every chunk with the snapshot's, copy-on-write, so nothing is
   * copied. The group's Raft log begins compacted at entry 1 of term 1 with
   * configuration `conf`: the clone's state is that entry's, the same on every
   * node that starts it this way, and a member that joins without it is behind
   * the compaction point, so its leader sends it a copy. Resolves once a
   * checkpoint holds the group; a restart before then does not have it.
   */
  async cloneFromSnapshot(groupId: number, sourceId: number, snapshotId: number, conf: RaftConf): Promise<void> {
    assert(!this.groups.has(groupId), "group ids are not reused");
    const s = this.group(snapshotGroupId(sourceId, snapshotId));
    const g = newGroup({ groupId, sizeBytes: s.sizeBytes });
    this.shareMap(g, s);
    g.term = cloneStartTerm;
    g.appliedIndex = cloneStartIndex;
    g.raft = RaftIndex.restore(cloneStartIndex, cloneStartTerm, { term: cloneStartTerm, vote: 0, commit: cloneStartIndex }, [], { voters: [...conf.voters], learners: [...conf.learners] });
    this.groups.set(groupId, g);
    await this.checkpointFromNow();
  }

  /** `g`'s map becomes a copy-on-write clone of `from`'s, every chunk shared (nothing written); the data it points at counts as live once more. */
  private shareMap(g: Group, from: Group): void {
    g.map = from.map.cloneShared();
    g.map.runs(0, g.map.sectorCount, (_s, n, address) => {
      if (address !== 0) this.addLive(address, n * sectorBytes);
    });
  }

  /** Resolves once a checkpoint begun after this call is written (one already running began before what the caller just changed). */
  private async checkpointFromNow(): Promise<void> {
    await this.checkpointing?.catch(() => {});
    await this.checkpoint();
  }

  /** Drops an unfinished snapshot copy (beginSnapshotCopy), if any. */
  dropSnapshotCopy(): void {
    this.dropGroup(stagingIdOf(snapshotCopyBase));
    this.copyingSnapshot = undefined;
  }

  /** The index of the entry that took a snapshot this node holds (for a copied one, the index it was taken at where it was copied from). */
  snapshotIndex(groupId: number, snapshotId: number): number {
    return this.group(snapshotGroupId(groupId, snapshotId)).appliedIndex;
  }

  /** The snapshot ids this node holds of a volume group, ascending. */
  snapshotIds(groupId: number): number[] {
    return (this.heldSnapshots().get(groupId) ?? []).sort((a, b) => a - b);
  }

  /** Every snapshot this node holds, as volume group id -> snapshot ids, in one pass over the groups. */
  heldSnapshots(): Map<number, number[]> {
    const held = new Map<number, number[]>();
    for (const id of this.groups.keys()) {
      if (!isSnapshotId(id)) continue;
      const [volume, snapshot] = snapshotParts(id);
      const ids = held.get(volume);
      if (ids === undefined) held.set(volume, [snapshot]);
      else ids.push(snapshot);
    }
    return held;
  }

  /** Reads a snapshot of a volume group (checked like any read: a damaged block throws ChecksumError). */
  readSnapshot(groupId: number, snapshotId: number, offsetBytes: number, lengthBytes: number, out?: Buffer): Buffer {
    return this.read(snapshotGroupId(groupId, snapshotId), offsetBytes, lengthBytes, out);
  }

  /**
   * Calls `visit` for the maximal runs of sectors where a volume and its
   * snapshot differ (they map different data; `hole`: the snapshot has none
   * there, or the volume grew past the snapshot's size). Chunks the two still
   * share are skipped without a look.
   */
  snapshotDiff(groupId: number, snapshotId: number, visit: (sector: number, count: number, hole: boolean) => void): void {
    const v = this.group(groupId).map;
    const s = this.group(snapshotGroupId(groupId, snapshotId)).map;
    const indexes = [...new Set([...v.chunks.keys(), ...s.chunks.keys()])].sort((a, b) => a - b);
    let runSector = -1;
    let runCount = 0;
    let runHole = false;
    const flush = (): void => {
      if (runCount > 0) visit(runSector, runCount, runHole);
      runCount = 0;
    };
    for (const ci of indexes) {
      if (v.sharesChunk(s, ci)) continue;
      const vc = v.chunks.get(ci);
      const sc = s.chunks.get(ci);
      const first = ci * chunkSectors;
      const end = Math.min(v.sectorCount, first + chunkSectors);
      for (let sector = first; sector < end; sector++) {
        const i = sector - first;
        const theirs = sc === undefined || sector >= s.sectorCount ? 0 : sc[i]!;
        const mine = vc === undefined ? 0 : vc[i]!;
        if (mine === theirs) {
          flush();
          continue;
        }
        const hole = theirs === 0;
        if (runCount > 0 && (runSector + runCount !== sector || runHole !== hole)) flush();
        if (runCount === 0) {
          runSector = sector;
          runHole = hole;
        }
        runCount++;
      }
    }
    flush();
  }

  /**
   * A snapshot's space: the bytes it maps, and the bytes only it maps (neither
   * its volume nor another of the volume's snapshots points at the same data
   * for the same sector): what deleting it would free.
   */
  snapshotUsage(groupId: number, snapshotId: number): { allocatedBytes: number; exclusiveBytes: number } {
    const s = this.group(snapshotGroupId(groupId, snapshotId));
    const others = [groupId, ...this.snapshotIds(groupId).filter((x) => x !== snapshotId).map((x) => snapshotGroupId(groupId, x))].map((id) => this.group(id).map);
    let exclusive = 0;
    for (const [ci, chunk] of s.map.chunks) {
      if (others.some((m) => s.map.sharesChunk(m, ci))) continue;
      const theirs = others.map((m) => m.chunks.get(ci));
      for (let i = 0; i < chunk.length; i++) {
        const a = chunk[i]!;
        if (a !== 0 && !theirs.some((c) => c !== undefined && c[i] === a)) exclusive++;
      }
    }
    return { allocatedBytes: s.map.allocatedSectors * sectorBytes, exclusiveBytes: exclusive * sectorBytes };
  }

  sizeOf(groupId: number): number {
    return this.group(groupId).sizeBytes;
  }

  /** Why the store stopped taking writes (a failed log write or fsync, no space for a segment), or undefined. */
  get failure(): Error | undefined {
    return this.segmentLog.failed;
  }

  allocatedBytes(groupId: number): number {
    return this.group(groupId).map.allocatedSectors * sectorBytes;
  }

  // ---- data path ----

  /**
   * Reads into `out` (a fresh buffer when not given) and returns it. Every
   * block the range touches is read whole and checked against its checksum;
   * a block that fails throws ChecksumError (nothing unchecked reaches a
   * client). A range of whole blocks is read straight into `out`.
   */
  read(groupId: number, offsetBytes: number, lengthBytes: number, out: Buffer = Buffer.allocUnsafe(lengthBytes)): Buffer {
    const g = this.group(groupId);
    checkRange(g, offsetBytes, lengthBytes);
    assert(out.length === lengthBytes, "read buffer matches the length");
    if (lengthBytes === 0) return out;
    const end = offsetBytes + lengthBytes;
    const from = Math.floor(offsetBytes / checksumBlockBytes) * checksumBlockBytes;
    const to = Math.min(g.sizeBytes, Math.ceil(end / checksumBlockBytes) * checksumBlockBytes);
    if (from === offsetBytes && to === end) {
      this.readBlocks(g, from, out, 0, lengthBytes);
      return out;
    }
    const whole = Buffer.allocUnsafe(to - from);
    this.readBlocks(g, from, whole, 0, whole.length);
    whole.copy(out, 0, offsetBytes - from, end - from);
    return out;
  }

  /**
   * As read(), but a read of at least verifyOffThreadBytesMin of whole blocks
   * into a SharedArrayBuffer has its blocks checked by the store's verifier,
   * on another thread: the bytes and the checksums they must match are taken
   * now, so a write that lands before the check answers changes neither. The
   * promise rejects with ChecksumError for damaged blocks; `out` must be left
   * alone until it settles. Every other read is read() as it is.
   */
  readOffThread(groupId: number, offsetBytes: number, lengthBytes: number, out?: Buffer): Buffer | Promise<Buffer> {
    const verifier = this.verifier;
    // The cheap tests first: every small read goes on to read() from here.
    if (verifier === undefined || out === undefined || lengthBytes < verifyOffThreadBytesMin || !(out.buffer instanceof SharedArrayBuffer)) return this.read(groupId, offsetBytes, lengthBytes, out);
    const g = this.group(groupId);
    const end = offsetBytes + lengthBytes;
    if (offsetBytes % checksumBlockBytes !== 0 || (end % checksumBlockBytes !== 0 && end !== g.sizeBytes)) return this.read(groupId, offsetBytes, lengthBytes, out);
    checkRange(g, offsetBytes, lengthBytes);
    assert(out.length === lengthBytes, "read buffer matches the length");
    readContent(g.map, offsetBytes / sectorBytes, lengthBytes / sectorBytes, out, 0, this.mapCtx.readAt);
    const checks = blockChecks(g.map, offsetBytes / checksumBlockBytes, Math.ceil(lengthBytes / checksumBlockBytes), 0);
    if (checks.runs.length === 0) return out;
    return verifier.check(out, checks).then((bad) => {
      if (bad.length === 0) return out;
      throw this.readDamage(groupId, bad, (b) => checkedAddress(checks, b));
    });
  }

  /** Reads whole blocks [fromBytes, fromBytes + lengthBytes) into out at `at`, checked; throws ChecksumError for damaged ones. */
  private readBlocks(g: Group, fromBytes: number, out: Uint8Array, at: number, lengthBytes: number): void {
    readContent(g.map, fromBytes / sectorBytes, lengthBytes / sectorBytes, out, at, this.mapCtx.readAt);
    const firstBlock = fromBytes / checksumBlockBytes;
    const bad = damagedBlocks(g.map, firstBlock, Math.ceil(lengthBytes / checksumBlockBytes), out, at);
    if (bad.length === 0) return;
    throw this.readDamage(g.id, bad, (b) => g.map.get(b * blockSectors));
  }

  /** A read's damaged blocks as the error it throws, counted; `address`: where each block's data is in the log. */
  private readDamage(groupId: number, bad: number[], address: (block: number) => number): ChecksumError {
    this.counters.checksumErrors++;
    return new ChecksumError(groupId, bad, bad.map(address), checksumBlockBytes, segmentBytes);
  }

  // ---- damaged blocks (src/replication/repair.ts) ----

  /**
   * Blocks [firstBlock, firstBlock + count) for another replica's repair: the
   * blocks that pass their checksum as they are here, the damaged ones as
   * zeroes (listed in `damaged`), so no unchecked byte leaves the node; and
   * the Raft index the group has applied here, which these bytes are the
   * state of.
   */
  readForRepair(groupId: number, firstBlock: number, count: number): { data: Buffer; damaged: number[]; applied: number } {
    const g = this.group(groupId);
    const [from, length] = blockRange(g, firstBlock, count);
    const data = Buffer.allocUnsafe(length);
    readContent(g.map, from / sectorBytes, length / sectorBytes, data, 0, this.mapCtx.readAt);
    const damaged = damagedBlocks(g.map, firstBlock, count, data, 0);
    for (const b of damaged) data.fill(0, (b - firstBlock) * checksumBlockBytes, (b - firstBlock) * checksumBlockBytes + g.map.blockSectorCount(b) * sectorBytes);
    return { data, damaged, applied: g.appliedIndex };
  }

  /** Whether any sector of [fromBytes, fromBytes + lengthBytes) holds data (a scrub skips holes). */
  holdsData(groupId: number, fromBytes: number, lengthBytes: number): boolean {
    const g = this.group(groupId);
    checkRange(g, fromBytes, lengthBytes);
    let found = false;
    const first = Math.floor(fromBytes / sectorBytes);
    g.map.runs(first, Math.ceil((fromBytes + lengthBytes) / sectorBytes) - first, (_s, _n, address) => {
      found ||= address !== 0;
    });
    return found;
  }

  /** Checks blocks [firstBlock, firstBlock + count) against their checksums: the damage found, or undefined. */
  verify(groupId: number, firstBlock: number, count: number): ChecksumError | undefined {
    const g = this.group(groupId);
    const bad = this.checkBlocks(groupId, firstBlock, count);
    if (bad.length === 0) return undefined;
    this.counters.checksumErrors++;
    return new ChecksumError(g.id, bad, bad.map((b) => g.map.get(b * blockSectors)), checksumBlockBytes, segmentBytes);
  }

  /** The blocks among [firstBlock, firstBlock + count) that fail their checksum here now. */
  checkBlocks(groupId: number, firstBlock: number, count: number): number[] {
    const g = this.group(groupId);
    const [from, length] = blockRange(g, firstBlock, count);
    const data = Buffer.allocUnsafe(length);
    readContent(g.map, from / sectorBytes, length / sectorBytes, data, 0, this.mapCtx.readAt);
    return damagedBlocks(g.map, firstBlock, count, data, 0);
  }

  /**
   * Rewrites damaged blocks from another replica's copy of blocks
   * [firstBlock, firstBlock + count) (readForRepair there). A damaged block is
   * taken from the copy when its bytes there match its checksum here, or when
   * the copy is of the same applied Raft index as this replica is at now and
   * that replica vouched for the block: the same log prefix gives the same
   * content. The second way mends a block whose checksum was inverted because
   * a partial write landed on it while damaged (mapRange), which no copy can
   * match. A taken block is written anew, as Relocate records from where its
   * sectors are now: they apply only where the map still points there, so a
   * write that lands meanwhile is never undone (at run time or in replay).
   * Once they are durable, a block taken the second way gets the checksum of
   * its content if that content is exactly the copy (anything else moved it
   * meanwhile: it stays damaged, and a later repair tries again). Resolves
   * with the blocks that read good now.
   */
  async repairBlocks(groupId: number, firstBlock: number, count: number, copy: RepairCopy): Promise<number[]> {
    const g = this.group(groupId);
    const [, length] = blockRange(g, firstBlock, count);
    assert(copy.data.length === length, "repair data holds the blocks whole");
    const sameState = copy.applied === g.appliedIndex && copy.applied > 0;
    const writes: Promise<void>[] = [];
    const repaired: number[] = [];
    const vouched: { block: number; good: Uint8Array }[] = [];
    for (const b of this.checkBlocks(groupId, firstBlock, count)) {
      const at = (b - firstBlock) * checksumBlockBytes;
      const good = copy.data.subarray(at, at + g.map.blockSectorCount(b) * sectorBytes);
      if (crc32c(good) !== g.map.blockCrc(b)) {
        if (!sameState || copy.damaged.includes(b)) continue;
        vouched.push({ block: b, good });
      }
      repaired.push(b);
      g.map.runs(b * blockSectors, g.map.blockSectorCount(b), (sector, n, address) => {
        if (address === 0) return; // a hole reads as zeroes, which is what the checksum covered
        const piece = good.subarray((sector - b * blockSectors) * sectorBytes, (sector - b * blockSectors + n) * sectorBytes);
        writes.push(this.appendRecord(g, RecordKind.Relocate, sector * sectorBytes, piece.length, [Buffer.from(piece)], address));
      });
    }
    await Promise.all(writes);
    if (g.dropped) return [];
    for (const { block, good } of vouched) {
      const content = blockContent(g.map, block, this.mapCtx);
      if (content !== undefined && content.equals(good)) g.map.setBlockCrc(block, crc32c(content));
    }
    // A write (or GC's copy) may have moved a block meanwhile, so its Relocate did not apply: only what reads good now counts.
    const good = repaired.filter((b) => g.map.blockAllocated(b) && this.checkBlocks(groupId, b, 1).length === 0);
    this.counters.blocksRepaired += good.length;
    return good;
  }

  /**
   * Writes whole sectors of a snapshot's staging group (beginStaging) as
   * local records; resolves when the data is durable and visible to reads.
   * `data` must not change until then. A volume's own writes are Raft
   * entries (appendRaftEntries, applyEntryWrite).
   */
  writeStaged(stagingId: number, offsetBytes: number, data: readonly Uint8Array[], lengthBytes: number): Promise<void> {
    assert(isStagingId(stagingId), () => `group ${stagingId} is not a staging group`);
    const g = this.group(stagingId);
    checkRange(g, offsetBytes, lengthBytes);
    assert(totalBytes(data) === lengthBytes, "write payload matches its length");
    if (offsetBytes % sectorBytes !== 0 || lengthBytes % sectorBytes !== 0) throw new StoreError("EINVAL", `a staged write is whole sectors, not [${offsetBytes}, +${lengthBytes})`);
    if (lengthBytes === 0) return Promise.resolve();
    return this.appendData(g, offsetBytes, data, lengthBytes);
  }

  /** Deallocates whole sectors of a staging group (a hole in the copy being made); resolves when durable. */
  trimStaged(stagingId: number, offsetBytes: number, lengthBytes: number): Promise<void> {
    assert(isStagingId(stagingId), () => `group ${stagingId} is not a staging group`);
    const g = this.group(stagingId);
    checkRange(g, offsetBytes, lengthBytes);
    if (offsetBytes % sectorBytes !== 0 || lengthBytes % sectorBytes !== 0) throw new StoreError("EINVAL", `a staged trim is whole sectors, not [${offsetBytes}, +${lengthBytes})`);
    return this.appendTrim(g, offsetBytes, offsetBytes + lengthBytes);
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

  // ---- Raft log of replicated groups (docs/architecture.md, "The write path of a replicated volume") ----

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
          offsetBytes: raftOffsetField(e.type, e.range?.offsetBytes ?? 0),
          lengthBytes: length,
          rangeSectors: e.range === undefined ? 0 : e.range.lengthBytes / sectorBytes,
          payload: e.data,
          payloadCrc: e.payloadCrc,
          done: (address, error) => {
            if (error === undefined && !g.dropped) {
              g.raft.append(e.index, { term: e.term, type: e.type, address, lengthBytes: length }, this.unpin);
              g.raft.settleRecovery();
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
          rangeSectors: 0,
          payload: [],
          payloadCrc: undefined,
          done: (_address, error) => {
            if (error === undefined && !g.dropped) g.raft.hardState = hs;
            report(error);
          },
        });
      }
    });
  }

  /**
   * Entries [lo, hi) with their data read from the log, stopping before
   * maxBytes (but at least one). Each record is checked against its
   * checksums; a damaged one throws DamagedEntryError.
   */
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
      // From the first entry's header on: every entry's header is in the span to check it against.
      const spanStart = Math.max(segment * segmentBytes, first.address - recordHeaderBytes);
      const span = Buffer.allocUnsafe(spanEnd - spanStart);
      this.segmentLog.readSync(spanStart, span, 0, span.length);
      for (let k = i; k < j; k++) {
        const e = r.get(k)!;
        const at = e.address - spanStart;
        const data = span.subarray(at, at + e.lengthBytes);
        if (!this.entryIntact(span, at, e.address, data)) throw new DamagedEntryError(groupId, k);
        out.push({ index: k, term: e.term, type: e.type, data });
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
      if (e.type === type) out.push(this.readRaftEntry(groupId, i, e));
    }
    return out;
  }

  private readRaftEntry(groupId: number, index: number, e: RaftIndexEntry): RaftEntryOutput {
    const data = Buffer.allocUnsafe(e.lengthBytes);
    if (e.lengthBytes > 0) this.segmentLog.readSync(e.address, data, 0, e.lengthBytes);
    if (!recordIntact(this.mapCtx.readAt, e.address, data)) throw new DamagedEntryError(groupId, index);
    return { index, term: e.term, type: e.type, data };
  }

  /** Whether an entry's record matches its checksums; its version 2 header is usually in `span` right before its data. */
  private entryIntact(span: Buffer, at: number, address: number, data: Uint8Array): boolean {
    if (at >= recordHeaderBytes) {
      const segment = Math.floor(address / segmentBytes);
      const head = span.subarray(at - recordHeaderBytes, at);
      const h = decodeHeader(head, segment, address - recordHeaderBytes - segment * segmentBytes);
      if (h !== undefined && h.headerBytes === recordHeaderBytes && payloadBytesOf(h.kind, h.lengthBytes) === data.length) return payloadMatches(h, head, data);
    }
    return recordIntact(this.mapCtx.readAt, address, data);
  }

  /** The group's Raft log bounds and hard state, as recovered or as last persisted. */
  raftState(groupId: number): {
    firstIndex: number;
    lastIndex: number;
    snapshotIndex: number;
    snapshotTerm: number;
    hardState: RaftHardState;
    appliedIndex: number;
    /** Recovery cut the log: no vote until it reaches this index again (0: nothing owed). */
    recoverUntil: number;
    /** Applied entries whose records are damaged (the driver compacts past them before the group starts). */
    damagedApplied: number[];
  } {
    const g = this.group(groupId);
    const r = g.raft;
    return {
      firstIndex: r.firstIndex,
      lastIndex: r.lastIndex,
      snapshotIndex: r.snapshotIndex,
      snapshotTerm: r.snapshotTerm,
      hardState: { ...r.hardState },
      appliedIndex: g.appliedIndex,
      recoverUntil: r.recoverUntil,
      damagedApplied: [...r.damagedApplied],
    };
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
  applyEntryWrite(groupId: number, index: number, offsetBytes: number, lengthBytes: number, data: Uint8Array, crcs?: Uint32Array): void {
    const g = this.group(groupId);
    checkRange(g, offsetBytes, lengthBytes);
    const e = g.raft.get(index);
    assert(e !== undefined && lengthBytes <= e.lengthBytes && data.length === lengthBytes, () => `entry ${index} holds the applied range`);
    assert(offsetBytes % sectorBytes === 0 && lengthBytes % sectorBytes === 0, "applied writes are whole sectors");
    const sector = offsetBytes / sectorBytes;
    const count = lengthBytes / sectorBytes;
    mapRange(g, sector, count, e.address, entryBlockCrcs(g.map, sector, count, data, crcs), this.mapCtx, [data]);
    this.addLive(e.address, lengthBytes);
    g.appliedIndex = Math.max(g.appliedIndex, index);
  }

  /** Applies a committed trim or zeroing of whole sectors. */
  applyEntryTrim(groupId: number, index: number, offsetBytes: number, lengthBytes: number): void {
    const g = this.group(groupId);
    checkRange(g, offsetBytes, lengthBytes);
    const from = Math.ceil(offsetBytes / sectorBytes);
    const to = Math.floor((offsetBytes + lengthBytes) / sectorBytes);
    if (to > from) mapRange(g, from, to - from, 0, undefined, this.mapCtx);
    g.appliedIndex = Math.max(g.appliedIndex, index);
  }

  /**
   * Applies a committed resize: the volume grows to `sizeBytes` (whole
   * sectors, at most volumeBytesMax); a group as large or larger stays as it
   * is, so a resize applied again (after a snapshot that already had it)
   * changes nothing. The size is saved by the next checkpoint; until then the
   * Raft log holds the entry, and the driver applies it again after a restart.
   */
  applyEntryResize(groupId: number, index: number, sizeBytes: number): void {
    const g = this.group(groupId);
    checkSize(sizeBytes);
    growGroup(g, sizeBytes);
    g.appliedIndex = Math.max(g.appliedIndex, index);
  }

  /** Records that entries up to `index` are applied (entries with no effect on the volume). */
  markApplied(groupId: number, index: number): void {
    const g = this.group(groupId);
    g.appliedIndex = Math.max(g.appliedIndex, index);
  }

  /** Entries recovery kept as lost (RaftIndexEntry.lost) that the group has not applied: the driver settles each before the group starts. */
  lostRaftEntries(groupId: number): { index: number; range: LostRange }[] {
    const g = this.group(groupId);
    const out: { index: number; range: LostRange }[] = [];
    for (let i = Math.max(g.appliedIndex + 1, g.raft.firstIndex); i <= g.raft.lastIndex; i++) {
      const lost = g.raft.get(i)!.lost;
      if (lost !== undefined) out.push({ index: i, range: lost });
    }
    return out;
  }

  /**
   * Applies a lost entry (lostRaftEntries) as well as its header allows: a
   * trim (its data shorter than its range) is applied as it was; a write's
   * range is mapped to its damaged data and its blocks keep checksums that
   * cannot match, so reads of them fail with EIO until they are rewritten,
   * instead of returning unchecked bytes. Returns the blocks lost.
   */
  applyLostEntry(groupId: number, index: number): number {
    const g = this.group(groupId);
    const e = g.raft.get(index);
    const lost = e?.lost;
    assert(e !== undefined && lost !== undefined, () => `entry ${index} of group ${groupId} is kept as lost`);
    checkRange(g, lost.offsetBytes, lost.lengthBytes);
    if (e.lengthBytes < lost.lengthBytes) {
      this.applyEntryTrim(groupId, index, lost.offsetBytes, lost.lengthBytes);
      return 0;
    }
    const sector = lost.offsetBytes / sectorBytes;
    const count = lost.lengthBytes / sectorBytes;
    g.map.set(sector, count, e.address, this.freed);
    this.addLive(e.address, lost.lengthBytes);
    let blocks = 0;
    for (let b = Math.floor(sector / blockSectors); b < Math.ceil((sector + count) / blockSectors); b++) {
      const content = blockContent(g.map, b, this.mapCtx);
      if (content !== undefined) g.map.setBlockCrc(b, ~crc32c(content) >>> 0);
      blocks++;
    }
    this.counters.blocksPoisoned += blocks;
    g.appliedIndex = Math.max(g.appliedIndex, index);
    return blocks;
  }

  /**
   * Cuts a group's Raft log before `index` (a lost entry of a group with
   * peers, whose leader resends it): as recovery's cut, this node may have
   * acknowledged entries up to the last one it held, so it withholds its vote
   * until its log reaches that index again. The debt is in memory at once
   * and saved by the next checkpoint, started now; until that checkpoint is
   * durable the damaged record stays in the log replayed at open (no segment
   * after the checkpoint's position is collected), so a restart decides
   * again the same way.
   */
  cutRaftLog(groupId: number, index: number): void {
    const g = this.group(groupId);
    assert(index > g.appliedIndex, "only entries not applied are cut");
    const seen = g.raft.lastIndex;
    g.raft.truncateFrom(index, this.unpin);
    g.raft.recoverUntil = Math.max(g.raft.recoverUntil, seen);
    // One that is running now was taken before the cut: the next one saves it.
    const running = this.checkpointing ?? Promise.resolve();
    running.then(() => this.checkpoint()).catch(() => {}); // a failed checkpoint leaves the damage to be found again at open
  }

  /**
   * Forgets Raft entries up to `index` (at most the applied index). Their
   * segments stop being pinned; data the block maps still point at stays live.
   */
  compactRaftLog(groupId: number, index: number, conf?: RaftConf): void {
    const g = this.group(groupId);
    assert(index <= g.appliedIndex, "only applied entries are compacted");
    // A group without data is rebuilt from its saved snapshot and the log after it.
    assert(g.sizeBytes > 0 || index <= (this.stateSnapshots.get(groupId)?.index ?? 0), () => `group ${groupId}'s log is compacted only behind its saved snapshot (compacting to ${index})`);
    g.raft.compact(index, this.unpin, conf);
    g.raft.damagedApplied = g.raft.damagedApplied.filter((i) => i > index);
    this.compactedSinceCheckpoint = true;
    this.maintain(); // segments it unpinned may now be collected, after a checkpoint
  }

  // ---- Raft snapshots (full copies for a replica behind the compaction point) ----

  /**
   * Starts receiving a snapshot of `groupId` into an empty staging group of
   * `sizeBytes` (the leader's size, at least the group's own: a volume only
   * grows), dropping any earlier unfinished one; returns its id. Writes to it
   * are ordinary local writes. The group itself stays as it was, a consistent
   * if lagging replica, until installSnapshot swaps them and takes the size.
   */
  beginStaging(groupId: number, sizeBytes = this.sizeOf(groupId)): number {
    const g = this.group(groupId);
    checkSize(sizeBytes);
    const size = Math.max(g.sizeBytes, sizeBytes);
    const id = stagingIdOf(groupId);
    this.dropGroup(id);
    const staging = newGroup({ groupId: id, sizeBytes: size });
    this.groups.set(id, staging);
    // The log says the staging group starts empty: an earlier attempt's
    // records (before a restart, or in a checkpoint) would otherwise replay
    // into this one, and recovery would install its blocks where this copy
    // has holes. The trim's end is the staging group's size for recovery
    // (replayStagingSize). A failed log fails the chunk writes queued behind it too.
    this.appendTrim(staging, 0, size).catch(() => {});
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
    // A group without data has nothing to stage: its state is the snapshot it saved first (saveStateSnapshot).
    if (g.sizeBytes === 0) assert(this.stateSnapshots.get(groupId)?.index === index, () => `group ${groupId} installs the snapshot at ${index} only after saving it`);
    const staging = g.sizeBytes === 0 ? newGroup({ groupId: stagingIdOf(groupId), sizeBytes: 0 }) : this.group(stagingIdOf(groupId));
    const payload = encodeRaftConf(conf);
    return new Promise((resolve, reject) => {
      this.segmentLog.append({
        kind: RecordKind.SnapshotInstall,
        groupId,
        termOrSource: term,
        index,
        offsetBytes: 0,
        lengthBytes: payload.length,
        rangeSectors: 0,
        payload: [payload],
        payloadCrc: undefined,
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

  /**
   * Saves the state of a group without data (the meta group) as of Raft
   * entry `s.index`: durable once it resolves, and from then on what the
   * group's log may be compacted behind (compactRaftLog) and what a follower
   * installs (installSnapshot after saving the leader's). Saves run one at a
   * time; one not newer than the snapshot saved by then is skipped, so the
   * file only moves forward.
   */
  saveStateSnapshot(groupId: number, s: StateSnapshot): Promise<void> {
    assert(this.group(groupId).sizeBytes === 0, () => `group ${groupId} holds volume data; its snapshots are its block map`);
    const run = this.stateSaves.then(async () => {
      if ((this.stateSnapshots.get(groupId)?.index ?? 0) >= s.index) return;
      try {
        await writeStateSnapshot(this.disk, groupId, s);
      } catch (e) {
        // The disk's own error (a full filesystem, an I/O error) is an expected failure: the caller keeps the log and goes on, or stops the group.
        if (e instanceof StoreError) throw e;
        const errno = (e as { code?: unknown }).code;
        const code = errno === "ENOSPC" || errno === "EDQUOT" || errno === "EFBIG" ? "ENOSPC" : "EIO";
        throw new StoreError(code, `saving the snapshot of group ${groupId} at entry ${s.index} failed: ${(e as Error).message}`);
      }
      this.stateSnapshots.set(groupId, { index: s.index, term: s.term, conf: { voters: [...s.conf.voters], learners: [...s.conf.learners] }, data: s.data });
    });
    this.stateSaves = run.catch(() => {});
    return run;
  }

  /** The latest saved snapshot of a group without data, or undefined (none yet, or a volume's group). */
  stateSnapshot(groupId: number): StateSnapshot | undefined {
    return this.stateSnapshots.get(groupId);
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
      crcs: new Map([...g.map.crcs].map(([i, c]) => [i, c.slice()] as const)),
      raft: {
        snapshotIndex: g.raft.snapshotIndex,
        snapshotTerm: g.raft.snapshotTerm,
        hardState: { ...g.raft.hardState },
        entries: [...g.raft.all()],
        conf: g.raft.snapshotConf,
        recoverUntil: g.raft.recoverUntil,
      },
    }));
    const pinned = checkpointPins(groups);
    this.compactedSinceCheckpoint = false;
    this.snapshotsChanged = false;
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
      .catch((e: Error) => {
        // A disk that fails a checkpoint or a GC copy stops maintenance (the node's health says so); a bug stops the process.
        if (isBug(e)) failStop(e, "store: maintenance (checkpoint, GC)");
        this.log(`store: maintenance stopped: ${e.message}`);
      })
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
    await this.stateSaves;
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
    if (lengthBytes <= recordPayloadBytesMax) return this.appendWrite(g, offsetBytes, data, lengthBytes);
    const parts: Promise<void>[] = [];
    for (let at = 0; at < lengthBytes; at += recordPayloadBytesMax) {
      const n = Math.min(recordPayloadBytesMax, lengthBytes - at);
      parts.push(this.appendWrite(g, offsetBytes + at, sliceBuffers(data, at, n), n));
    }
    return Promise.all(parts).then(() => {});
  }

  /**
   * One Write record. The checksums of the blocks it covers whole are taken
   * here, from the buffers being written; when it is whole blocks they also
   * give the record's payload checksum, so the data is read once.
   */
  private appendWrite(g: Group, offsetBytes: number, data: readonly Uint8Array[], lengthBytes: number): Promise<void> {
    const sector = offsetBytes / sectorBytes;
    const count = lengthBytes / sectorBytes;
    const crcs = wholeBlockCrcs(g.map, sector, count, data);
    const [first, end] = wholeBlocks(g.map, sector, count);
    const exact = end > first && first * blockSectors === sector && Math.min(end * blockSectors, g.map.sectorCount) === sector + count;
    const payloadCrc = exact ? foldBlockCrcs(crcs, 0, crcs.length, g.map.blockSectorCount(end - 1) * sectorBytes) : undefined;
    return this.appendRecord(g, RecordKind.Write, offsetBytes, lengthBytes, data, 0, crcs, payloadCrc);
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
    crcs?: Uint32Array,
    payloadCrc?: number,
  ): Promise<void> {
    // Staged copies, their trims and GC's relocations are not Raft entries: index 0.
    const index = 0;
    return new Promise((resolve, reject) => {
      this.segmentLog.append({
        kind,
        groupId: g.id,
        termOrSource: kind === RecordKind.Relocate ? source : g.term,
        index,
        offsetBytes,
        lengthBytes,
        rangeSectors: 0,
        payload,
        payloadCrc,
        done: (address, error) => {
          if (error) return reject(error);
          if (!g.dropped) this.apply(g, kind, offsetBytes, lengthBytes, source, address, crcs, payload);
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

  private apply(g: Group, kind: RecordKind, offsetBytes: number, lengthBytes: number, source: number, address: number, crcs: Uint32Array | undefined, payload: readonly Uint8Array[]): void {
    const moved = applyToGroup(g, kind, offsetBytes, lengthBytes, source, address, crcs, this.mapCtx, payload);
    if (moved > 0) this.addLive(address, moved * sectorBytes);
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
      if (appendedSince >= checkpointLogBytes || (eligible.length === 0 && candidates.length > 0 && stale) || (this.snapshotsChanged && candidates.length > 0)) {
        await this.checkpoint();
      }
      if (this.snapshotsChanged && candidates.length > 0) continue; // taken or dropped while the checkpoint was written
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
   * holds it). Each piece is read with the blocks around it and checked
   * against their checksums; a damaged block is reported (onDamage: a replica
   * may repair it) and copied as it is: the map keeps its checksum, so the
   * copy fails on read exactly as the original did, and GC never stalls on
   * damage nobody can repair. Returns whether the segment was freed.
   */
  private async collectSegment(id: number): Promise<boolean> {
    // With nothing live no block map points here: nothing to check, find or copy
    // (finding walks every block map: 14% of a 1 MiB sequential write's CPU).
    const live = (this.liveBytes.get(id) ?? 0) > 0;
    const lo = id * segmentBytes;
    const moves: Promise<void>[] = [];
    for (const g of live ? this.groups.values() : []) {
      const bad: number[] = [];
      g.map.runsInto(lo, lo + segmentBytes, (sector, count, address) => {
        for (let done = 0; done < count; ) {
          const n = Math.min(count - done, recordPayloadBytesMax / sectorBytes);
          const copy = this.checkedSectors(g, sector + done, n, bad);
          this.counters.gcBytesMoved += copy.length;
          moves.push(this.appendRecord(g, RecordKind.Relocate, (sector + done) * sectorBytes, copy.length, [copy], address + done * sectorBytes));
          done += n;
        }
      });
      if (bad.length === 0) continue;
      const blocks = [...new Set(bad)].sort((x, y) => x - y);
      const damage = new ChecksumError(g.id, blocks, blocks.map((b) => g.map.get(b * blockSectors)), checksumBlockBytes, segmentBytes);
      this.counters.checksumErrors++;
      this.log(`store: GC found damage while moving segment ${id}: ${damage.message}; moved as it is (it still fails its checksum)`);
      this.onDamage(damage);
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

  /** Sectors [sector, sector + count) as they are, their blocks checked: damaged blocks are added to `bad`. */
  private checkedSectors(g: Group, sector: number, count: number, bad: number[]): Buffer {
    const first = Math.floor(sector / blockSectors);
    const end = Math.ceil((sector + count) / blockSectors);
    const from = first * blockSectors;
    const blocks = Buffer.allocUnsafe((Math.min(end * blockSectors, g.map.sectorCount) - from) * sectorBytes);
    readContent(g.map, from, blocks.length / sectorBytes, blocks, 0, this.mapCtx.readAt);
    bad.push(...damagedBlocks(g.map, first, end - first, blocks, 0));
    return blocks.subarray((sector - from) * sectorBytes, (sector - from + count) * sectorBytes);
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

function newGroup(spec: GroupSpec, crcsPending = false): Group {
  // Size 0: a group that holds only a Raft log (the meta group).
  if (spec.sizeBytes !== 0) checkSize(spec.sizeBytes);
  return {
    id: spec.groupId,
    sizeBytes: spec.sizeBytes,
    map: new BlockMap(spec.sizeBytes / sectorBytes),
    term: 1,
    appliedIndex: 0,
    dropped: false,
    raft: new RaftIndex(),
    crcsPending,
  };
}

function restoreGroups(specs: readonly GroupSpec[], checkpoint: Checkpoint): Map<number, Group> {
  const groups = new Map<number, Group>();
  for (const spec of specs) groups.set(spec.groupId, newGroup(spec));
  for (const saved of checkpoint.groups) {
    const g = groups.get(saved.groupId) ?? stagingFor(groups, saved.groupId) ?? snapshotFor(groups, saved.groupId, saved.sizeBytes);
    if (g === undefined) continue; // deleted from the catalog since
    // The node state keeps the size a replica started with; the checkpoint the size its applied resizes left.
    growGroup(g, saved.sizeBytes);
    g.term = saved.lastTerm;
    g.appliedIndex = saved.lastIndex;
    g.raft = RaftIndex.restore(saved.raft.snapshotIndex, saved.raft.snapshotTerm, saved.raft.hardState, [...saved.raft.entries], saved.raft.conf);
    g.raft.recoverUntil = saved.raft.recoverUntil ?? 0;
    g.crcsPending = saved.crcs === undefined;
    for (const [index, chunk] of saved.chunks) {
      if (index * chunkSectors >= g.map.sectorCount) continue; // volume shrank (not offered yet)
      g.map.restoreChunk(index, chunk, saved.crcs?.get(index) ?? new Uint32Array(chunkBlocks));
    }
  }
  shareSnapshotChunks(groups);
  return groups;
}

/**
 * What recovery learned of damaged records (a payload that fails its checksum
 * under an intact header, in the log after the checkpoint or among the Raft
 * entries the checkpoint lists), and how each group works around it:
 *
 * - a Raft entry, or a snapshot install (or the copy it installs): the
 *   group's Raft log is cut before it, and this node may have acknowledged
 *   entries up to the highest index recovery saw, so it withholds its vote
 *   until its log reaches that index again (RaftIndex.recoverUntil); the
 *   leader resends what was cut;
 * - a local write (a volume with its only replica here): the write is mapped,
 *   but the blocks it touches keep checksums that cannot match, so reads of
 *   them fail with EIO instead of returning unchecked bytes;
 * - a GC or repair copy (Relocate): it is mapped as usual; the blocks keep
 *   their checksums, so a read finds any damaged one and repairs it.
 */
class RecoveryDamage {
  private readonly seenIndex = new Map<number, number>();
  private readonly cut = new Set<number>();
  readonly stagingDamaged = new Set<number>();
  /** Blocks poisoned per group, re-poisoned if the group's checksums are computed afresh (a checkpoint from before them). */
  private readonly poisonedBlocks = new Map<number, number[]>();
  readonly lines: string[] = [];
  records = 0;
  blocksPoisoned = 0;

  /** The highest Raft index recovery saw for a group: what it may have acknowledged. */
  see(group: number, index: number): void {
    this.seenIndex.set(group, Math.max(this.seenIndex.get(group) ?? 0, index));
  }

  isCut(group: number): boolean {
    return this.cut.has(group);
  }

  /** Cuts the group's Raft log before `index` (entries from there on are gone). */
  cutAt(g: Group, index: number, why: string): void {
    this.see(g.id, g.raft.lastIndex);
    if (index <= g.raft.lastIndex) g.raft.truncateFrom(index, () => {});
    this.cut.add(g.id);
    this.records++;
    this.lines.push(`group ${g.id}: ${why}; its Raft log now ends at index ${g.raft.lastIndex}`);
  }

  /** A damaged entry whose header names its range stays in the log, marked lost (RaftIndexEntry.lost). */
  keep(g: Group, index: number, lost: LostRange, where: string): void {
    this.records++;
    this.lines.push(`group ${g.id}: Raft entry ${index} is damaged (${where}); it changed ${lost.lengthBytes} bytes at volume offset ${lost.offsetBytes}: kept as lost, the replica's driver decides (an only voter loses those blocks, a replica with peers cuts its log there)`);
  }

  poison(g: Group, blocks: number[]): void {
    this.poisonedBlocks.set(g.id, [...(this.poisonedBlocks.get(g.id) ?? []), ...blocks]);
    this.blocksPoisoned += blocks.length;
  }

  /** After the scan: a cut group owes its vote until its log is back where it was. */
  settle(g: Group, ctx: MapContext): void {
    for (const b of this.poisonedBlocks.get(g.id) ?? []) {
      const content = blockContent(g.map, b, ctx);
      if (content !== undefined) g.map.setBlockCrc(b, ~crc32c(content) >>> 0);
    }
    if (!this.cut.has(g.id)) return;
    const until = this.seenIndex.get(g.id) ?? 0;
    if (until > g.raft.lastIndex) g.raft.recoverUntil = Math.max(g.raft.recoverUntil, until);
    this.lines.push(`group ${g.id}: this node withholds its vote until its Raft log holds index ${g.raft.recoverUntil} again (its leader resends what was cut)`);
  }
}

/** A record the scan found damaged: see RecoveryDamage for what each kind means. */
function applyDamaged(groups: Map<number, Group>, h: RecordHeader, address: number, ctx: MapContext, damage: RecoveryDamage): void {
  const where = `log segment ${Math.floor(address / segmentBytes)} byte ${(address % segmentBytes) - h.headerBytes}`;
  const g = groups.get(h.groupId) ?? stagingFor(groups, h.groupId);
  if (g === undefined) {
    damage.lines.push(`a damaged record of group ${h.groupId}, which is not on this node any more, at ${where}: nothing lost`);
    return;
  }
  switch (h.kind) {
    case RecordKind.RaftEntry: {
      damage.see(g.id, h.index);
      if (h.index <= g.raft.snapshotIndex) return;
      const lost = lostRangeOf(h);
      if (lost !== undefined && h.index <= g.raft.lastIndex + 1 && !damage.isCut(g.id)) {
        g.raft.append(h.index, { term: h.termOrSource, type: raftEntryType(h.offsetBytes), address, lengthBytes: h.lengthBytes, lost }, () => {});
        damage.keep(g, h.index, lost, where);
        return;
      }
      damage.cutAt(g, Math.min(h.index, g.raft.lastIndex + 1), `Raft entry ${h.index} is damaged (${where})`);
      return;
    }
    case RecordKind.SnapshotInstall:
      damage.see(g.id, h.index);
      groups.delete(stagingIdOf(g.id));
      damage.cutAt(g, g.raft.lastIndex + 1, `the install of a copy at Raft index ${h.index} is damaged (${where}); not installed`);
      return;
    case RecordKind.Write: {
      damage.records++;
      if (isStagingId(g.id)) {
        damage.stagingDamaged.add(g.id);
        return;
      }
      if (h.offsetBytes + h.lengthBytes > g.sizeBytes) return;
      const sector = h.offsetBytes / sectorBytes;
      const count = h.lengthBytes / sectorBytes;
      g.map.set(sector, count, address, ctx.freed);
      const blocks: number[] = [];
      for (let b = Math.floor(sector / blockSectors); b < Math.ceil((sector + count) / blockSectors); b++) blocks.push(b);
      damage.poison(g, blocks);
      damage.lines.push(`group ${g.id}: a write of ${h.lengthBytes} bytes at volume offset ${h.offsetBytes} is damaged (${where}); reads of its ${blocks.length} block(s) fail with EIO until they are rewritten`);
      return;
    }
    case RecordKind.Relocate:
      damage.records++;
      if (h.offsetBytes + h.lengthBytes <= g.sizeBytes) applyToGroup(g, h.kind, h.offsetBytes, h.lengthBytes, h.termOrSource, address, undefined, ctx);
      damage.lines.push(`group ${g.id}: a copy made by GC or a repair is damaged (${where}); the blocks keep their checksums, so a read repairs them from another replica or fails with EIO`);
      return;
    default:
      return;
  }
}

/**
 * The Raft entries a checkpoint lists are not in the log the scan reads:
 * each one's record is checked here. A damaged one cuts the log before it if
 * it was not applied yet (as a damaged entry in the scan would); one this
 * node applied already is remembered (RaftIndex.damagedApplied), and the
 * driver compacts the log past it before the group starts.
 */
function checkRestoredEntries(g: Group, readAt: ReadAt, damage: RecoveryDamage): void {
  for (let i = g.raft.firstIndex; i <= g.raft.lastIndex; i++) {
    const e = g.raft.get(i)!;
    const payload = Buffer.allocUnsafe(e.lengthBytes);
    if (e.lengthBytes > 0) readAt(e.address, payload, 0, e.lengthBytes);
    const header = intactHeaderAt(readAt, e.address, e.lengthBytes);
    if (header !== undefined && payloadMatches(header.h, header.bytes, payload)) continue;
    const where = `log segment ${Math.floor(e.address / segmentBytes)}`;
    if (i > g.appliedIndex) {
      const lost = header === undefined ? undefined : lostRangeOf(header.h);
      if (lost !== undefined) {
        e.lost = lost;
        damage.keep(g, i, lost, where);
        continue;
      }
      damage.cutAt(g, i, `Raft entry ${i} is damaged (${where})`);
      return;
    }
    g.raft.damagedApplied.push(i);
    damage.records++;
    damage.lines.push(`group ${g.id}: Raft entry ${i}, applied already, is damaged (${where}); the log will be compacted past it`);
  }
}

/** Whether the record whose payload is at `address` (its bytes: `payload`) matches its checksums. */
function recordIntact(readAt: ReadAt, address: number, payload: Uint8Array): boolean {
  const header = intactHeaderAt(readAt, address, payload.length);
  return header !== undefined && payloadMatches(header.h, header.bytes, payload);
}

/** The header of the record whose payload (`payloadBytes` long) is at `address`, if it decodes (a version 2 header matches its own checksum). */
function intactHeaderAt(readAt: ReadAt, address: number, payloadBytes: number): { h: RecordHeader; bytes: Buffer } | undefined {
  const segment = Math.floor(address / segmentBytes);
  const base = segment * segmentBytes;
  for (const size of [recordHeaderBytes, recordHeaderBytesV1]) {
    if (address - size < base) continue;
    const bytes = Buffer.allocUnsafe(size);
    readAt(address - size, bytes, 0, size);
    const h = decodeHeader(bytes, segment, address - size - base);
    if (h !== undefined && h.headerBytes === size && payloadBytesOf(h.kind, h.lengthBytes) === payloadBytes) return { h, bytes };
  }
  return undefined;
}

/** The volume range a RaftEntry record's header names (undefined: none). */
function lostRangeOf(h: RecordHeader): LostRange | undefined {
  if (h.kind !== RecordKind.RaftEntry || h.rangeSectors === 0) return undefined;
  return { offsetBytes: raftRangeOffset(h.offsetBytes), lengthBytes: h.rangeSectors * sectorBytes };
}

/**
 * After replay: blocks a partial write left with sectors in a freed segment
 * (their checksum could not be computed then) have had those sectors moved by
 * the Relocate records after it; their checksum is computed from their
 * content now. Still unreadable: overwritten by a Raft entry the driver
 * applies again, which sets it.
 */
function settleStaleCrcs(g: Group, blocks: ReadonlySet<number>, ctx: MapContext): void {
  for (const b of blocks) {
    if (!g.map.blockAllocated(b)) continue;
    const content = blockContent(g.map, b, ctx);
    if (content !== undefined) g.map.setBlockCrc(b, crc32c(content));
  }
}

/** A checkpoint from before block checksums: every block that holds data is read once and checksummed. */
function computeAllCrcs(g: Group, ctx: MapContext, log: (line: string) => void): void {
  let blocks = 0;
  for (const ci of g.map.chunks.keys()) {
    for (let b = ci * chunkBlocks; b < Math.min((ci + 1) * chunkBlocks, g.map.blockCount); b++) {
      if (!g.map.blockAllocated(b)) continue;
      const content = blockContent(g.map, b, ctx);
      if (content === undefined) continue; // overwritten by a Raft entry the driver applies again: it sets the checksum
      g.map.setBlockCrc(b, crc32c(content));
      blocks++;
    }
  }
  g.crcsPending = false;
  log(`store: group ${g.id}: block checksums computed for ${blocks} blocks (a checkpoint written before they existed)`);
}

/** A ReadAt over segment files being recovered (the segment log is not open yet). */
function fileReader(segments: ReadonlyMap<number, DiskFile>): ReadAt {
  return (address, into, at, length) => {
    const id = Math.floor(address / segmentBytes);
    const file = segments.get(id);
    assert(file !== undefined, () => `segment ${id} holds mapped data`);
    const n = file.readSync(into, at, length, address - id * segmentBytes);
    if (n !== length) throw new StoreError("EIO", `short read from segment ${id}: ${n} of ${length} bytes`);
  };
}

/**
 * A group without data whose recovered log is compacted past its saved
 * snapshot (or that has none) cannot rebuild its state: the error that says
 * so, or undefined. Compaction never goes past the snapshot, so this is a
 * damaged or tampered data dir.
 */
function lostState(groups: Map<number, Group>, saved: Map<number, StateSnapshot>): StoreError | undefined {
  for (const g of groups.values()) {
    if (g.sizeBytes !== 0 || g.raft.snapshotIndex === 0) continue;
    const s = saved.get(g.id);
    const what = s === undefined ? `the snapshot of its state that compaction needs (the file ${stateSnapshotName(g.id)}) is missing` : `past its saved snapshot at entry ${s.index}`;
    if (s === undefined || s.index < g.raft.snapshotIndex) {
      return new StoreError("EIO", `group ${g.id}: its Raft log is compacted to entry ${g.raft.snapshotIndex}, ${s === undefined ? `but ${what}` : what}; this node cannot rebuild that state: give it a fresh data dir and let it rejoin`);
    }
  }
  return undefined;
}

/** Replays one record into its group (recovery path; the live counts are recomputed after). */
function applyRecord(groups: Map<number, Group>, h: RecordHeader, address: number, payload: Buffer, ctx: MapContext, damage: RecoveryDamage): void {
  const g = groups.get(h.groupId) ?? stagingFor(groups, h.groupId);
  if (g === undefined) return;
  if (h.kind === RecordKind.SnapshotInstall) {
    damage.see(g.id, h.index);
    const staging = groups.get(stagingIdOf(g.id));
    if (staging !== undefined && damage.stagingDamaged.has(staging.id)) {
      // Part of the copy was damaged on disk: the group stays as it was, and its leader sends a copy again.
      groups.delete(staging.id);
      damage.cutAt(g, g.raft.lastIndex + 1, `the copy installed at Raft index ${h.index} had damaged data; not installed`);
      return;
    }
    // Installing needs every record of the staging group, which precedes this one in the log.
    // A group without data (the meta group) stages nothing: its state is in its snapshot file.
    const staged = staging ?? (g.sizeBytes === 0 ? newGroup({ groupId: stagingIdOf(g.id), sizeBytes: 0 }) : undefined);
    const conf = decodeRaftConf(payload, 0);
    if (staged === undefined || conf === undefined) throw new StoreError("EIO", `snapshot install of group ${g.id} without its staged data or configuration; the log is damaged`);
    groups.delete(staged.id);
    installStaged(g, staged, h.index, h.termOrSource, conf.conf, () => {}, () => {});
    return;
  }
  if (h.kind === RecordKind.RaftEntry) {
    damage.see(g.id, h.index);
    if (h.index <= g.raft.snapshotIndex) return;
    // Past a cut (a damaged entry before it): dropped with the rest of the lost suffix; the leader resends them.
    if (h.index > g.raft.lastIndex + 1 && damage.isCut(g.id)) return;
    g.raft.append(h.index, { term: h.termOrSource, type: raftEntryType(h.offsetBytes), address, lengthBytes: h.lengthBytes }, () => {});
    return;
  }
  if (h.kind === RecordKind.HardState) {
    g.raft.hardState = { term: h.termOrSource, vote: h.offsetBytes, commit: h.index };
    return;
  }
  replayStagingSize(g, h);
  if (h.offsetBytes + h.lengthBytes > g.sizeBytes) return;
  const crcs = h.kind === RecordKind.Write && !g.crcsPending ? wholeBlockCrcs(g.map, h.offsetBytes / sectorBytes, h.lengthBytes / sectorBytes, [payload]) : undefined;
  applyToGroup(g, h.kind, h.offsetBytes, h.lengthBytes, h.termOrSource, address, crcs, ctx, [payload]);
  if (h.kind !== RecordKind.Relocate) {
    g.term = Math.max(g.term, h.termOrSource);
  }
}

/** Applies a record to a group's map; returns how many sectors a Relocate moved. A Relocate keeps the blocks' checksums: it copies their bytes. */
function applyToGroup(
  g: Group,
  kind: RecordKind,
  offsetBytes: number,
  lengthBytes: number,
  source: number,
  address: number,
  crcs: Uint32Array | undefined,
  ctx: MapContext,
  payload?: readonly Uint8Array[],
): number {
  const sector = offsetBytes / sectorBytes;
  const count = lengthBytes / sectorBytes;
  switch (kind) {
    case RecordKind.Write:
      mapRange(g, sector, count, address, crcs, ctx, payload);
      return count;
    case RecordKind.Trim:
      mapRange(g, sector, count, 0, undefined, ctx);
      return 0;
    case RecordKind.Relocate:
      return g.map.relocate(sector, count, source, address, ctx.freed);
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

/**
 * The base of the one staging group a snapshot copy uses
 * (beginSnapshotCopy): no volume has this id, so recovery, which keeps a
 * staging group only while its base group exists, drops the copy's records.
 */
const snapshotCopyBase = stagingBase - 1;

/**
 * Where a clone's Raft log begins (Store.cloneFromSnapshot): compacted at
 * entry 1 of term 1, the snapshot's state. Elections then start at term 2.
 */
const cloneStartIndex = 1;
const cloneStartTerm = 1;

function isStagingId(id: number): boolean {
  return id >= stagingBase && id < snapshotBase;
}

/**
 * A volume snapshot's group id: snapshotBase + snapshot id * 2^32 + the
 * volume's group id. It holds a block map and no Raft log; only the volume's
 * own group's entries create and drop it (Store.takeSnapshot).
 */
const snapshotBase = 2 ** 42;
const volumeGroupIdSpan = 2 ** 32;

export function snapshotGroupId(groupId: number, snapshotId: number): number {
  assert(Number.isSafeInteger(groupId) && groupId > 0 && groupId < volumeGroupIdSpan, "a volume's group id is below 2^32");
  assert(Number.isSafeInteger(snapshotId) && snapshotId > 0 && snapshotId <= snapshotIdMax, "a snapshot id is in [1, snapshotIdMax]");
  return snapshotBase + snapshotId * volumeGroupIdSpan + groupId;
}

/** The volume group a group id belongs to: itself, or a snapshot's volume. */
export function volumeGroupOf(id: number): number {
  return isSnapshotId(id) ? snapshotParts(id)[0] : id;
}

function isSnapshotId(id: number): boolean {
  return id >= snapshotBase;
}

/** [volume group id, snapshot id] of a snapshot's group id. */
function snapshotParts(id: number): [number, number] {
  const rest = id - snapshotBase;
  return [rest % volumeGroupIdSpan, Math.floor(rest / volumeGroupIdSpan)];
}

/** Restore: a snapshot group saved in the checkpoint, kept while its volume exists. */
function snapshotFor(groups: Map<number, Group>, id: number, sizeBytes: number): Group | undefined {
  if (!isSnapshotId(id) || !groups.has(snapshotParts(id)[0])) return undefined;
  const g = newGroup({ groupId: id, sizeBytes });
  groups.set(id, g);
  return g;
}

/**
 * Restore: each map comes back apart; chunks a snapshot holds as its volume
 * (or the snapshot before it) does are shared again, so a restart does not
 * multiply the maps' memory by the number of snapshots.
 */
function shareSnapshotChunks(groups: Map<number, Group>): void {
  const byVolume = new Map<number, Group[]>();
  for (const g of groups.values()) {
    if (!isSnapshotId(g.id)) continue;
    const [volume] = snapshotParts(g.id);
    let list = byVolume.get(volume);
    if (list === undefined) byVolume.set(volume, (list = []));
    list.push(g);
  }
  for (const [volume, snapshots] of byVolume) {
    const v = groups.get(volume)!;
    snapshots.sort((a, b) => a.id - b.id);
    for (let i = 0; i < snapshots.length; i++) {
      const s = snapshots[i]!;
      for (const ci of [...s.map.chunks.keys()]) {
        if (!s.map.shareChunkWith(v.map, ci) && i > 0) s.map.shareChunkWith(snapshots[i - 1]!.map, ci);
      }
    }
  }
}

function baseOfStaging(id: number): number {
  return id - stagingBase;
}

/**
 * Recovery: a staging group is as large as the trim that began it
 * (beginStaging), which may be larger than its group (the leader's volume had
 * grown); its records after that trim lie inside it.
 */
function replayStagingSize(g: Group, h: RecordHeader): void {
  if (!isStagingId(g.id) || h.kind !== RecordKind.Trim) return;
  const end = h.offsetBytes + h.lengthBytes;
  if (end > g.sizeBytes && end <= volumeBytesMax && end % sectorBytes === 0) growGroup(g, end);
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
  // The copy is of the leader's volume, which may have grown since this group last applied a resize.
  growGroup(staging, g.sizeBytes);
  g.map = staging.map;
  g.sizeBytes = staging.sizeBytes;
  for (const e of g.raft.all()) unpin(e);
  const hs = g.raft.hardState;
  const owed = g.raft.recoverUntil;
  g.raft = RaftIndex.restore(index, term, { term: Math.max(hs.term, term), vote: hs.vote, commit: Math.max(hs.commit, index) }, [], conf);
  g.raft.recoverUntil = owed;
  g.raft.settleRecovery();
  g.appliedIndex = index;
}

/** A volume's size: whole sectors, above 0, at most volumeBytesMax. */
function checkSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % sectorBytes !== 0 || sizeBytes > volumeBytesMax) {
    throw new StoreError("EINVAL", `volume size ${sizeBytes} must be a positive multiple of ${sectorBytes} bytes up to ${volumeBytesMax}`);
  }
}

/**
 * Grows a group's volume to `sizeBytes` (no change when it is that large
 * already). The blocks past the old end are holes. A short last block that
 * holds data now covers zeroes after the old end, which its checksum
 * (of the block's content as a read returns it) must include.
 */
function growGroup(g: Group, sizeBytes: number): void {
  if (sizeBytes <= g.sizeBytes) return;
  const oldSectors = g.map.sectorCount;
  const last = Math.floor(oldSectors / blockSectors);
  const shortLast = oldSectors % blockSectors !== 0 && g.map.blockAllocated(last);
  const oldCrc = shortLast ? g.map.blockCrc(last) : 0;
  g.map.grow(sizeBytes / sectorBytes);
  g.sizeBytes = sizeBytes;
  if (!shortLast) return;
  const added = (g.map.blockSectorCount(last) - (oldSectors - last * blockSectors)) * sectorBytes;
  // A damaged block stays damaged: its inverted checksum extended over zeroes still fails.
  g.map.setBlockCrc(last, crc32c(new Uint8Array(added), oldCrc));
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



/**
 * The checksums of the blocks an applied write covers whole: those the entry
 * carries (blocks [ceil(offset / 4 KiB), floor(end / 4 KiB)), from its leader),
 * and any other the map counts as whole (the short last block of a volume) or
 * all of them for an entry without any, hashed from the data.
 */
function entryBlockCrcs(map: BlockMap, sector: number, count: number, data: Uint8Array, carried: Uint32Array | undefined): Uint32Array {
  const [first, end] = wholeBlocks(map, sector, count);
  if (carried === undefined) return wholeBlockCrcs(map, sector, count, [data]);
  if (carried.length === end - first) return carried;
  // The entry covers the volume's short last block, which it carries no checksum for: hash that one.
  assert(carried.length === end - first - 1 && sector + count === map.sectorCount, "an entry carries the checksums of the whole blocks it covers");
  const out = new Uint32Array(end - first);
  out.set(carried);
  const last = end - 1;
  out[end - first - 1] = crc32c(data.subarray((last * blockSectors - sector) * sectorBytes));
  return out;
}

/** The byte range [from, from + length) of blocks [firstBlock, firstBlock + count) of a group (the last may be short). */
function blockRange(g: Group, firstBlock: number, count: number): [number, number] {
  assert(Number.isSafeInteger(firstBlock) && Number.isSafeInteger(count) && firstBlock >= 0 && count >= 1 && firstBlock + count <= g.map.blockCount, "block range inside the volume");
  const from = firstBlock * checksumBlockBytes;
  return [from, Math.min(g.sizeBytes, (firstBlock + count) * checksumBlockBytes) - from];
}
