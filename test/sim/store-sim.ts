// Seeded simulation of one node's store (src/store) over the simulated disk
// (test/sim/disk.ts): writes, trims, zeroing, flushes, checkpoints and GC
// against crashes that lose what was not synced and tear the last writes,
// bit flips, disk errors (EIO on write or datasync, ENOSPC) and a slow disk.
// One seed drives the workload, the disk and the order of every completion.
//
// The checker knows, for every sector, the last write the store acknowledged
// (its promise resolved: durable) and the writes still in flight or failed
// (they may or may not be there). Every sector of a volume carries the write
// that put it there (version, group and sector in its first 12 bytes, a
// pattern after), so a read says exactly which write it returns:
//   - a read returns, for each sector, the last acknowledged write or one
//     issued after it (never an older one, never bytes no write put there);
//   - after a crash, every acknowledged write is still there (or a later one);
//   - a read fails with a ChecksumError only where a bit was flipped;
//   - the store refuses to open only after a bit flip hit a record header
//     (the documented refusal: docs/architecture.md, "Checksums and repair";
//     the run ends there). A flip in a volume's entry after the checkpoint
//     keeps the entry as lost: the volume's writes go through its replica as
//     its only voter's entries (test/helpers/store-writes.ts), which applies
//     it as lost, so its blocks fail their checksums and every later write
//     is kept.
// Bits flip only in commits followed by more than a commit window of durable
// commits: damage inside the last window cannot be told from a torn write,
// and recovery drops it with the tail (docs/formats/segment-log.md).
// Profiles: "small" (many small writes to two volumes, frequent crashes) and
// "gc" (mostly 1 MiB writes over a 24 MiB volume, so segments seal,
// checkpoints run and GC moves live data and frees segments between
// crashes). Besides crashes at random points, a crash often follows within a
// few ticks of a segment being freed or a checkpoint installed, where what
// the store depends on may not be durable yet.
//
// Profile "raft" drives the same volume as a replicated group's log would: a
// write is a Raft entry (appendRaftEntries), applied once durable
// (applyEntryWrite) and only then acknowledged; the log is compacted behind
// the applied index now and then, so segments stay pinned by uncompacted
// entries and by the entries the last checkpoint lists. After each open the
// simulator applies the entries past the recovered applied index, as the
// driver would. Besides the checks above: an acknowledged entry survives a
// crash, every entry in the recovered log holds the write it was given, every
// entry the checkpoint file lists lies in a segment file that exists (checked
// after every step, so a segment freed under the checkpoint is found before a
// crash has to land in the window before the next checkpoint), and
// recovery finds no damaged Raft entry (no bits flip in this profile: a
// damaged entry cuts the log, and a one-node group has no leader to resend it).

import { Prng } from "../../src/base/prng.js";
import { AssertionError } from "../../src/base/assert.js";
import { ChecksumError, CorruptionError, StoreError } from "../../src/store/errors.js";
import { Store } from "../../src/store/store.js";
import { commitsInFlightMax, segmentBytes } from "../../src/constants.js";
import { readCheckpoint } from "../../src/store/checkpoint.js";
import { segmentName } from "../../src/store/segment-names.js";
import { healthyDisk, SimClock, SimDisk } from "./disk.js";
import { replayed, writesTo } from "../helpers/store-writes.js";

const sectorBytes = 512;
const KiB = 1024;
const MiB = 1024 * KiB;

export type StoreSimProfile = "small" | "gc" | "raft";

export interface StoreSimOptions {
  seed: number;
  profile: StoreSimProfile;
  /** Operations issued (writes, reads, flushes, ...). */
  ops?: number;
  log?: (line: string) => void;
}

export interface StoreSimResult {
  seed: number;
  profile: StoreSimProfile;
  writes: number;
  acked: number;
  reads: number;
  sectorsChecked: number;
  crashes: number;
  flips: number;
  checksumErrors: number;
  diskErrors: number;
  checkpoints: number;
  gcSegments: number;
  gcBytesMoved: number;
  /** The store refused to open after a flip hit a record header (the seed then ends). */
  refusedAfterFlip: boolean;
}

export class StoreSimFailure extends Error {
  constructor(
    readonly seed: number,
    readonly profile: StoreSimProfile,
    message: string,
  ) {
    super(`store sim seed ${seed} (${profile}): ${message}`);
    this.name = "StoreSimFailure";
  }
}

interface Volume {
  id: number;
  sizeBytes: number;
  /** Per sector: the version of the last acknowledged write covering it (0: never written, zeros). */
  acked: Uint32Array;
  /** Per sector: versions issued after `acked` and not acknowledged (in flight, failed, or lost in a crash). */
  maybe: Map<number, Set<number>>;
  /** Sectors a flipped bit may have damaged: a ChecksumError there is expected, so is a repaired read. */
  flipped: boolean;
}

/** A write's content: version v, group g, sector s. Version-0 sectors and trims read as zeros. */
function fillSector(out: Uint8Array, at: number, v: number, g: number, s: number): void {
  const dv = new DataView(out.buffer, out.byteOffset + at, sectorBytes);
  dv.setUint32(0, v, true);
  dv.setUint32(4, s, true);
  dv.setUint32(8, g, true);
  const b = ((v * 31 + s * 7) & 0xff) | 1;
  out.fill(b, at + 12, at + sectorBytes);
}

/** The version a sector read back holds: 0 for zeros; undefined when the bytes are no write's. */
function versionOf(buf: Uint8Array, at: number, g: number, s: number, zeroVersions: Set<number>): number | undefined {
  let zero = true;
  for (let i = at; i < at + sectorBytes; i++) {
    if (buf[i] !== 0) {
      zero = false;
      break;
    }
  }
  if (zero) return 0;
  const dv = new DataView(buf.buffer, buf.byteOffset + at, sectorBytes);
  const v = dv.getUint32(0, true);
  if (dv.getUint32(4, true) !== s || dv.getUint32(8, true) !== g || zeroVersions.has(v)) return undefined;
  const b = ((v * 31 + s * 7) & 0xff) | 1;
  for (let i = at + 12; i < at + sectorBytes; i++) if (buf[i] !== b) return undefined;
  return v;
}

export async function runStoreSim(o: StoreSimOptions): Promise<StoreSimResult> {
  // Seeds of the first two profiles replay as they did before "raft" existed.
  const prng = new Prng(o.profile === "raft" ? o.seed * 2 + 1_000_001 : o.seed * 2 + (o.profile === "gc" ? 1 : 0));
  const clock = new SimClock();
  const disk = new SimDisk(prng, clock, { ...healthyDisk });
  const log = o.log ?? (() => {});
  if (o.log !== undefined) disk.trace = (l) => log(`[${clock.now}] ${l}`);
  const fail = (m: string): never => {
    throw new StoreSimFailure(o.seed, o.profile, m);
  };
  const raft = o.profile === "raft";
  /** Large writes over a large volume: segments seal, checkpoints and GC run. */
  const gc = o.profile === "gc" || raft;
  const ops = o.ops ?? (gc ? 500 : 600);
  const volumes: Volume[] = (gc ? [24 * MiB] : [1 * MiB, 2 * MiB]).map((sizeBytes, i) => ({
    id: i + 1,
    sizeBytes,
    acked: new Uint32Array(sizeBytes / sectorBytes),
    maybe: new Map(),
    flipped: false,
  }));
  const zeroVersions = new Set<number>();
  const r: StoreSimResult = { seed: o.seed, profile: o.profile, writes: 0, acked: 0, reads: 0, sectorsChecked: 0, crashes: 0, flips: 0, checksumErrors: 0, diskErrors: 0, checkpoints: 0, gcSegments: 0, gcBytesMoved: 0, refusedAfterFlip: false };
  let version = 0;
  let inFlight = 0;
  const inFlightMax = gc ? 16 : 64;
  let epoch = 0;
  // Profile raft: the group's log as this process sees it.
  let nextIndex = 1;
  let appliedIndex = 0;
  /** The highest entry acknowledged (durable and applied). */
  let ackedIndex = 0;

  const open = async (): Promise<Store | undefined> => {
    let opened: Store | undefined;
    let error: unknown;
    Store.open({ disk, defer: clock.defer(), log: (l) => log(`store: ${l}`) }, volumes.map((v) => ({ groupId: v.id, sizeBytes: v.sizeBytes }))).then(
      (s) => (opened = s),
      (e) => (error = e ?? new Error("rejected")),
    );
    await clock.runUntil(() => opened !== undefined || error !== undefined);
    if (error instanceof CorruptionError && r.flips > 0) {
      log(`store refused to open after a bit flip: ${(error as Error).message}`);
      r.refusedAfterFlip = true;
      return undefined;
    }
    if (error !== undefined) {
      if (error instanceof AssertionError) throw error;
      fail(`Store.open failed: ${(error as Error).stack ?? String(error)}`);
    }
    if (opened === undefined) fail("Store.open never finished (the event queue ran dry)");
    // A bit flip that cut a volume's Raft log (an entry naming no range: not
    // one this simulator writes) leaves a group that owes its vote until
    // another replica resends what was cut. The run ends there, as after a
    // refused open.
    const cut = volumes.find((v) => opened!.raftState(v.id).recoverUntil > 0);
    if (cut !== undefined && r.flips > 0) {
      log(`a bit flip cut volume ${cut.id}'s Raft log: it owes its vote until index ${opened!.raftState(cut.id).recoverUntil}`);
      r.refusedAfterFlip = true;
      return undefined;
    }
    // Profile raft applies its own entries (resumeLog); the others write volume ops through the volume replica.
    return raft ? opened : replayed(opened!, volumes.map((v) => v.id));
  };

  const noteCounters = (s: Store): void => {
    r.checkpoints += s.counters.checkpoints;
    r.gcSegments += s.counters.gcSegments;
    r.gcBytesMoved += s.counters.gcBytesMoved;
  };

  /** Checks every sector a read returned against the model. */
  const check = (v: Volume, offset: number, buf: Uint8Array, what: string): void => {
    for (let i = 0; i < buf.length / sectorBytes; i++) {
      const s = offset / sectorBytes + i;
      const got = versionOf(buf, i * sectorBytes, v.id, s, zeroVersions);
      const acked = v.acked[s]!;
      const later = v.maybe.get(s);
      const ok = (x: number): boolean => x === acked || (later?.has(x) ?? false) || (x === 0 && (zeroVersions.has(acked) || [...(later ?? [])].some((m) => zeroVersions.has(m))));
      if (got === undefined) return fail(`${what}: volume ${v.id} sector ${s} holds bytes no write put there (acknowledged ${acked}, maybe ${[...(later ?? [])]})`);
      if (!ok(got)) fail(`${what}: volume ${v.id} sector ${s} holds write ${got}; the last acknowledged is ${acked}${later ? `, maybe ${[...later].join(" ")}` : ""}`);
      r.sectorsChecked++;
    }
  };

  const readAndCheck = (s: Store, v: Volume, offset: number, length: number, what: string): void => {
    r.reads++;
    let buf: Buffer;
    try {
      buf = s.read(v.id, offset, length);
    } catch (e) {
      if (e instanceof ChecksumError && v.flipped) {
        r.checksumErrors++;
        return;
      }
      if (e instanceof StoreError && e.code === "ESHUTDOWN") return;
      if (e instanceof AssertionError) throw e;
      return fail(`${what}: read of volume ${v.id} [${offset}, +${length}) failed: ${(e as Error).stack ?? String(e)}`);
    }
    check(v, offset, buf, what);
  };

  /** After recovery the store's content is fixed: what each sector holds becomes what it acknowledged. */
  const collapse = (s: Store, what: string): void => {
    for (const v of volumes) {
      for (let off = 0; off < v.sizeBytes; off += 64 * KiB) {
        let buf: Buffer;
        try {
          buf = s.read(v.id, off, 64 * KiB);
        } catch (e) {
          if (!(e instanceof ChecksumError && v.flipped)) throw e instanceof AssertionError ? e : new StoreSimFailure(o.seed, o.profile, `${what}: read failed: ${(e as Error).message}`);
          r.checksumErrors++;
          continue; // those sectors stay uncertain
        }
        check(v, off, buf, what);
        for (let i = 0; i < 64 * KiB / sectorBytes; i++) {
          const sector = off / sectorBytes + i;
          const got = versionOf(buf, i * sectorBytes, v.id, sector, zeroVersions)!;
          v.acked[sector] = got === 0 ? (zeroVersions.has(v.acked[sector]!) ? v.acked[sector]! : 0) : got;
          v.maybe.delete(sector);
        }
      }
    }
  };

  /**
   * Profile raft, after an open: checks the recovered log and applies the
   * entries past the recovered applied index, as the driver does (this
   * simulated group commits an entry once it is durable here).
   */
  const resumeLog = (s: Store, what: string): void => {
    const v = volumes[0]!;
    const rs = s.raftState(v.id);
    if (!v.flipped && (rs.damagedApplied.length > 0 || rs.recoverUntil !== 0 || s.counters.damagedRecords > 0)) {
      fail(`${what}: recovery found damaged Raft entries with no bit flipped (applied and damaged: [${rs.damagedApplied.join(", ")}], log cut with entries owed up to ${rs.recoverUntil}, ${s.counters.damagedRecords} damaged records)`);
    }
    if (rs.lastIndex < ackedIndex && !v.flipped) fail(`${what}: the log ends at ${rs.lastIndex}, but entry ${ackedIndex} was acknowledged`);
    for (let i = rs.appliedIndex + 1; i <= rs.lastIndex; i++) {
      const e = s.raftEntries(v.id, i, i + 1, 1 << 30)[0]!;
      const first = new DataView(e.data.buffer, e.data.byteOffset).getUint32(4, true);
      for (let k = 0; k < e.data.length / sectorBytes; k++) {
        if (versionOf(e.data, k * sectorBytes, v.id, first + k, zeroVersions) === undefined) fail(`${what}: Raft entry ${i} holds bytes no write put there (sector ${k} of it)`);
      }
      s.applyEntryWrite(v.id, i, first * sectorBytes, e.data.length, e.data);
    }
    appliedIndex = rs.lastIndex;
    nextIndex = rs.lastIndex + 1;
    ackedIndex = Math.min(ackedIndex, rs.lastIndex);
  };

  /**
   * Profile raft, after every step: each Raft entry the checkpoint file lists
   * lies in a segment file that exists. Recovery from that checkpoint reads
   * every one of them, so a segment freed under one makes the next restart
   * fail, whenever it comes.
   */
  const checkCheckpointEntries = (what: string): void => {
    const c = readCheckpoint(disk);
    if (c === undefined) return;
    const files = new Set(disk.list());
    for (const g of c.groups) {
      g.raft.entries.forEach((e, i) => {
        const id = Math.floor(e.address / segmentBytes);
        if (!files.has(segmentName(id))) fail(`${what}: the checkpoint lists Raft entry ${g.raft.snapshotIndex + 1 + i} of group ${g.groupId} in segment ${id}, which is gone: a restart from it would fail`);
      });
    }
  };

  /** Profile raft: a write as a Raft entry, acknowledged once durable and applied. */
  const appendEntry = (s: Store, v: Volume, offset: number, data: Buffer): Promise<void> => {
    const index = nextIndex++;
    const at = epoch;
    return s.appendRaftEntries(v.id, [{ index, term: 1, type: 0, data: [data] }], { term: 1, vote: 1, commit: index - 1 }).then(() => {
      // Entries become durable in order; one after a failed one is not applied (the store stopped).
      if (at !== epoch || index !== appliedIndex + 1) throw new StoreError("EIO", `entry ${index} durable but not applied`);
      s.applyEntryWrite(v.id, index, offset, data.length, data);
      appliedIndex = index;
      ackedIndex = index;
    });
  };

  const crash = async (why: string): Promise<Store | undefined> => {
    log(`crash (${why}) at tick ${clock.now}`);
    disk.crash();
    clock.clear();
    epoch++;
    inFlight = 0;
    r.crashes++;
    disk.faults = { ...healthyDisk };
    const s = await open();
    crashAt = Infinity;
    if (s !== undefined && raft) resumeLog(s, `after crash ${r.crashes}`);
    if (s !== undefined) collapse(s, `after crash ${r.crashes}`);
    return s;
  };

  // Crashes land where they hurt most: a few ticks after the store frees a
  // segment or installs a checkpoint, while what it depends on may not be durable.
  let crashAt = Infinity;
  disk.onRename = (from, to) => {
    if ((from.startsWith("seg-") || to === "checkpoint") && prng.chance(gc ? 0.3 : 0.05)) crashAt = Math.min(crashAt, clock.now + prng.int(8));
  };

  let store = await open();
  crashAt = Infinity;
  if (store === undefined) return r;
  if (raft) resumeLog(store, "at the first open");

  for (let op = 0; op < ops && store !== undefined; op++) {
    const s: Store = store;
    const v = volumes[prng.int(volumes.length)]!;
    const dice = prng.int(1000);
    if (dice < 600) {
      if (inFlight >= inFlightMax) {
        await clock.runUntil(() => inFlight < inFlightMax, 10_000);
        continue;
      }
      // A write, a trim or a zeroing: aligned to sectors, inside the volume.
      const kind = raft || dice < 520 ? "write" : dice < 560 ? "trim" : "zero";
      const lengthMax = gc ? MiB : 64 * KiB;
      const sectors = 1 + prng.int(Math.min(lengthMax, v.sizeBytes) / sectorBytes);
      const length = (gc && kind === "write" && prng.chance(0.9) ? Math.min(MiB, v.sizeBytes) / sectorBytes : sectors) * sectorBytes;
      const offset = prng.int((v.sizeBytes - length) / sectorBytes + 1) * sectorBytes;
      const ver = ++version;
      let p: Promise<void>;
      if (kind === "write") {
        const data = Buffer.allocUnsafe(length);
        for (let i = 0; i < length / sectorBytes; i++) fillSector(data, i * sectorBytes, ver, v.id, offset / sectorBytes + i);
        p = raft ? appendEntry(s, v, offset, data) : writesTo(s).write(v.id, offset, [data], length);
      } else {
        zeroVersions.add(ver);
        p = kind === "trim" ? writesTo(s).trim(v.id, offset, length) : writesTo(s).writeZeroes(v.id, offset, length, prng.chance(0.5));
      }
      r.writes++;
      inFlight++;
      for (let i = 0; i < length / sectorBytes; i++) {
        const sec = offset / sectorBytes + i;
        let m = v.maybe.get(sec);
        if (m === undefined) v.maybe.set(sec, (m = new Set()));
        m.add(ver);
      }
      const at = epoch;
      p.then(
        () => {
          if (at !== epoch) return;
          inFlight--;
          r.acked++;
          // Acknowledged: durable. Every older write to these sectors is gone for good.
          for (let i = 0; i < length / sectorBytes; i++) {
            const sec = offset / sectorBytes + i;
            if (ver < v.acked[sec]!) continue;
            v.acked[sec] = ver;
            const m = v.maybe.get(sec);
            if (m === undefined) continue;
            for (const x of m) if (x <= ver) m.delete(x);
            if (m.size === 0) v.maybe.delete(sec);
          }
        },
        (e: Error) => {
          if (at !== epoch) return;
          inFlight--;
          if (e instanceof AssertionError) throw e;
          if (!(e instanceof StoreError)) fail(`a write failed with ${e.stack ?? e}`);
          r.diskErrors++; // stays "maybe": it may be on disk or not
        },
      );
    } else if (dice < 800) {
      const length = (1 + prng.int(Math.min(gc ? MiB : 128 * KiB, v.sizeBytes) / sectorBytes)) * sectorBytes;
      const offset = prng.int((v.sizeBytes - length) / sectorBytes + 1) * sectorBytes;
      readAndCheck(s, v, offset, length, `read at op ${op}`);
    } else if (dice < 830) {
      s.flush().catch(() => {});
    } else if (dice < 850) {
      s.checkpoint().catch(() => {});
    } else if (dice < (gc ? 852 : 858)) {
      noteCounters(s);
      store = await crash(`op ${op}`);
      continue;
    } else if (dice < 861) {
      // Bit rot in a segment file.
      const segs = disk.list().filter((n) => n.startsWith("seg-"));
      const name = segs[prng.int(segs.length)];
      // Only in commits with more than a commit window of durable commits after them: a damaged record
      // inside the last window cannot be told from a torn write, and recovery drops it (a documented limit).
      // Not in profile raft: a damaged entry cuts the log, and this one-node group has no leader to resend it.
      if (!raft && name !== undefined && disk.flipSomewhere(name, commitsInFlightMax + 1)) {
        r.flips++;
        for (const x of volumes) x.flipped = true;
        log(`flipped a bit in ${name}`);
      }
    } else if (dice < 866) {
      // A window of disk faults: EIO on writes or syncs, a full disk, or a slow disk.
      const f = prng.int(4);
      disk.faults =
        f === 0 ? { ...healthyDisk, writeEio: 0.05 }
        : f === 1 ? { ...healthyDisk, syncEio: 0.05 }
        : f === 2 ? { ...healthyDisk, capacityBytes: disk.usedBytes() + prng.int(2 * MiB) }
        : { ...healthyDisk, latency: [1, 200] };
      log(`disk faults: ${JSON.stringify(disk.faults)}`);
    } else if (dice < 880) {
      disk.faults = { ...healthyDisk };
    } else if (raft && dice < 940) {
      // Compaction behind the applied index (the driver's, once every member holds the entries);
      // often it keeps a lagging member's worth, so checkpoints list entries in sealed segments.
      const to = appliedIndex - (prng.chance(0.5) ? prng.int(4) : prng.int(160));
      if (s.failure === undefined && to >= s.raftFirstIndex(v.id)) s.compactRaftLog(v.id, to);
    }
    // Let the disk and the store make progress.
    for (let k = prng.int(gc ? 8 : 4); k > 0 && clock.now < crashAt; k--) if (!(await clock.step())) break;
    if (raft) checkCheckpointEntries(`after op ${op}`);
    if (clock.now >= crashAt) {
      crashAt = Infinity;
      noteCounters(store!);
      store = await crash(`soon after a segment was freed or a checkpoint made`);
      continue;
    }
    // A store that stopped after a disk error takes no more writes: restart it, as the daemon's supervisor would.
    if (store?.failure !== undefined && prng.chance(0.2)) {
      noteCounters(store);
      store = await crash(`store stopped: ${store.failure.message}`);
    }
  }
  if (store === undefined) return r;

  // Quiesce, check everything, then a last crash: every acknowledged write must survive it.
  disk.faults = { ...healthyDisk };
  await clock.runUntil(() => inFlight === 0, 1_000_000);
  for (const v of volumes) for (let off = 0; off < v.sizeBytes; off += 64 * KiB) readAndCheck(store, v, off, 64 * KiB, "final read");
  noteCounters(store);
  const last = await crash("final");
  if (last !== undefined) noteCounters(last);
  r.flips = disk.counters.flips;
  return r;
}
