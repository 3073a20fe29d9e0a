// A volume's block map: for each 512-byte sector, the log address of its data,
// or 0 for a hole (never written or trimmed; reads as zeroes); and for each
// 4 KiB block (checksumBlockBytes) that holds data, the CRC32C of its content
// as a read returns it (holes as zeroes). The store keeps the checksums right
// (src/store/store.ts, mapRange); this class only holds them.
//
// Sectors are grouped in chunks of `chunkSectors`, each a Float64Array that is
// allocated on first write: memory is 8 bytes per sector of a chunk that was
// ever written (1.6% of the data), nothing for untouched ranges. A Map of
// objects per block cost half the CPU of 1 MiB writes (DESIGN §9); typed
// arrays keep the hot loops allocation-free.
//
// A log address is segmentId * segmentBytes + byte position in the segment.
// It is never 0, because segment ids start at 1.

import { assert } from "../base/assert.js";
import { checksumBlockBytes, sectorBytes } from "../constants.js";

export const chunkSectors = 4096;
const chunkShift = 12;
assert(1 << chunkShift === chunkSectors, "chunkShift matches chunkSectors");
/** Sectors per checksum block. */
export const blockSectors = checksumBlockBytes / sectorBytes;
/** Checksum blocks per chunk: a block never straddles two chunks. */
export const chunkBlocks = chunkSectors / blockSectors;
assert(Number.isInteger(chunkBlocks) && Number.isInteger(blockSectors), "chunks hold whole checksum blocks");

/** Called for each run of sectors that stops pointing at [address, address + count * 512). */
export type FreedRun = (address: number, sectorCount: number) => void;

export class BlockMap {
  readonly chunks = new Map<number, Float64Array>();
  /** Per chunk of `chunks`, the checksum of each of its blocks (meaningful for blocks that hold data). */
  readonly crcs = new Map<number, Uint32Array>();
  /** Sectors that hold data (not holes). */
  allocatedSectors = 0;
  /**
   * Chunks this map may share with another (a volume snapshot's map and its
   * volume's, cloneShared): copied before this map changes them, so a change
   * to one map never shows in the other.
   */
  private readonly shared = new Set<number>();

  constructor(private sectors: number) {}

  /** Sectors in the volume; grows with the volume (grow), never shrinks. */
  get sectorCount(): number {
    return this.sectors;
  }

  /**
   * Extends the volume to `sectorCount` sectors of holes. The caller fixes the
   * checksum of a short last block that holds data (it now reads with zeroes
   * after the old end).
   */
  grow(sectorCount: number): void {
    assert(Number.isSafeInteger(sectorCount) && sectorCount >= this.sectors, "a block map only grows");
    this.sectors = sectorCount;
  }

  /**
   * A map with the same content that shares every chunk with this one until
   * either changes it (copy on write, per chunk): taking a volume snapshot
   * costs a pointer per written chunk, and memory grows only with the chunks
   * written after it.
   */
  cloneShared(): BlockMap {
    const m = new BlockMap(this.sectorCount);
    for (const [ci, chunk] of this.chunks) {
      m.chunks.set(ci, chunk);
      m.crcs.set(ci, this.crcs.get(ci)!);
      m.shared.add(ci);
      this.shared.add(ci);
    }
    m.allocatedSectors = this.allocatedSectors;
    return m;
  }

  /** Shares chunk `ci` with `other` when both hold the same content there (a restart restores every map apart); returns whether it did. */
  shareChunkWith(other: BlockMap, ci: number): boolean {
    const mine = this.chunks.get(ci);
    const theirs = other.chunks.get(ci);
    if (mine === undefined || theirs === undefined || mine === theirs) return mine !== undefined && mine === theirs;
    const myCrcs = this.crcs.get(ci)!;
    const theirCrcs = other.crcs.get(ci)!;
    for (let i = 0; i < chunkSectors; i++) if (mine[i] !== theirs[i]) return false;
    for (let i = 0; i < chunkBlocks; i++) if (myCrcs[i] !== theirCrcs[i]) return false;
    this.chunks.set(ci, theirs);
    this.crcs.set(ci, theirCrcs);
    this.shared.add(ci);
    other.shared.add(ci);
    return true;
  }

  /** Whether chunk `ci` is the very same array in both maps (shared, not copied). */
  sharesChunk(other: BlockMap, ci: number): boolean {
    const c = this.chunks.get(ci);
    return c !== undefined && c === other.chunks.get(ci);
  }

  /** Chunk `ci` to change in place: a private copy first if it may be shared. */
  private own(ci: number): Float64Array | undefined {
    const chunk = this.chunks.get(ci);
    if (chunk === undefined || this.shared.size === 0 || !this.shared.has(ci)) return chunk;
    this.shared.delete(ci);
    const copy = chunk.slice();
    this.chunks.set(ci, copy);
    this.crcs.set(ci, this.crcs.get(ci)!.slice());
    return copy;
  }

  get blockCount(): number {
    return Math.ceil(this.sectorCount / blockSectors);
  }

  /** The checksum of a block that holds data. */
  blockCrc(block: number): number {
    const c = this.crcs.get(Math.floor(block / chunkBlocks));
    return c === undefined ? 0 : c[block % chunkBlocks]!;
  }

  setBlockCrc(block: number, crc: number): void {
    const ci = Math.floor(block / chunkBlocks);
    this.own(ci);
    const c = this.crcs.get(ci);
    assert(c !== undefined, "a checksum is kept only for a block that holds data");
    c[block % chunkBlocks] = crc;
  }

  /** Whether any sector of the block holds data. */
  blockAllocated(block: number): boolean {
    const chunk = this.chunks.get(Math.floor(block / chunkBlocks));
    if (chunk === undefined) return false;
    const first = (block % chunkBlocks) * blockSectors;
    for (let i = 0; i < blockSectors; i++) if (chunk[first + i] !== 0) return true;
    return false;
  }

  /** Sectors in the block (fewer than blockSectors only for the last block of a volume whose size is not a multiple of it). */
  blockSectorCount(block: number): number {
    return Math.min(blockSectors, this.sectorCount - block * blockSectors);
  }

  /** Installs a chunk restored from a checkpoint. */
  restoreChunk(index: number, chunk: Float64Array, crcs: Uint32Array): void {
    assert(crcs.length === chunkBlocks && chunk.length === chunkSectors, "a restored chunk is whole");
    this.chunks.set(index, chunk);
    this.crcs.set(index, crcs);
    this.shared.delete(index);
    for (let i = 0; i < chunk.length; i++) if (chunk[i] !== 0) this.allocatedSectors++;
  }

  get(sector: number): number {
    const chunk = this.chunks.get(sector >>> chunkShift);
    return chunk === undefined ? 0 : chunk[sector & (chunkSectors - 1)]!;
  }

  /** Points [sector, sector + count) at consecutive sectors from `address`. */
  set(sector: number, count: number, address: number, freed: FreedRun): void {
    assert(address > 0, "a mapped sector has a non-zero address");
    this.update(sector, count, address, freed);
  }

  /** Makes [sector, sector + count) a hole. */
  clear(sector: number, count: number, freed: FreedRun): void {
    this.update(sector, count, 0, freed);
  }

  /**
   * Relocates the sectors of [sector, sector + count) that still point at the
   * matching sector of `from` to the matching sector of `to`. Returns how many moved.
   */
  relocate(sector: number, count: number, from: number, to: number, freed: FreedRun): number {
    let moved = 0;
    let runStart = -1;
    const flush = (end: number): void => {
      if (runStart < 0) return;
      this.set(runStart, end - runStart, to + (runStart - sector) * sectorBytes, freed);
      moved += end - runStart;
      runStart = -1;
    };
    for (let i = 0; i < count; i++) {
      const still = this.get(sector + i) === from + i * sectorBytes;
      if (still && runStart < 0) runStart = sector + i;
      if (!still) flush(sector + i);
    }
    flush(sector + count);
    return moved;
  }

  /**
   * Calls `visit` for maximal runs in [sector, sector + count) whose addresses are
   * consecutive (address 0: a run of holes).
   */
  runs(sector: number, count: number, visit: (sector: number, count: number, address: number) => void): void {
    assert(sector >= 0 && count >= 0 && sector + count <= this.sectorCount, "run range inside the volume");
    let runSector = sector;
    let runAddress = -1;
    let runCount = 0;
    const end = sector + count;
    let s = sector;
    while (s < end) {
      const chunk = this.chunks.get(s >>> chunkShift);
      const chunkEnd = Math.min(end, ((s >>> chunkShift) + 1) * chunkSectors);
      if (chunk === undefined) {
        if (runCount > 0 && runAddress === 0) runCount += chunkEnd - s;
        else {
          if (runCount > 0) visit(runSector, runCount, runAddress);
          runSector = s;
          runAddress = 0;
          runCount = chunkEnd - s;
        }
        s = chunkEnd;
        continue;
      }
      for (; s < chunkEnd; s++) {
        const a = chunk[s & (chunkSectors - 1)]!;
        const expected = runAddress === 0 ? 0 : runAddress + runCount * sectorBytes;
        if (runCount > 0 && a === expected) {
          runCount++;
        } else {
          if (runCount > 0) visit(runSector, runCount, runAddress);
          runSector = s;
          runAddress = a;
          runCount = 1;
        }
      }
    }
    if (runCount > 0) visit(runSector, runCount, runAddress);
  }

  /**
   * Calls `visit` for maximal runs of sectors whose addresses lie in
   * [addressLo, addressHi) and are consecutive: what GC must move out of a
   * segment. Walks only allocated chunks.
   */
  runsInto(addressLo: number, addressHi: number, visit: (sector: number, count: number, address: number) => void): void {
    for (const [ci, chunk] of [...this.chunks].sort((a, b) => a[0] - b[0])) {
      let runSector = -1;
      let runAddress = 0;
      let runCount = 0;
      for (let i = 0; i < chunkSectors; i++) {
        const a = chunk[i]!;
        const inside = a >= addressLo && a < addressHi;
        if (inside && runCount > 0 && a === runAddress + runCount * sectorBytes) {
          runCount++;
          continue;
        }
        if (runCount > 0) visit(runSector, runCount, runAddress);
        runCount = 0;
        if (inside) {
          runSector = ci * chunkSectors + i;
          runAddress = a;
          runCount = 1;
        }
      }
      if (runCount > 0) visit(runSector, runCount, runAddress);
    }
  }

  private update(sector: number, count: number, address: number, freed: FreedRun): void {
    assert(Number.isSafeInteger(sector) && count >= 0 && sector + count <= this.sectorCount, "update inside the volume");
    let freedStart = 0;
    let freedCount = 0;
    const end = sector + count;
    let s = sector;
    let a = address;
    while (s < end) {
      const ci = s >>> chunkShift;
      const chunkEnd = Math.min(end, (ci + 1) * chunkSectors);
      let chunk = this.own(ci);
      if (chunk === undefined) {
        if (address === 0) {
          s = chunkEnd; // clearing a range that holds nothing
          continue;
        }
        chunk = new Float64Array(chunkSectors);
        this.chunks.set(ci, chunk);
        this.crcs.set(ci, new Uint32Array(chunkBlocks));
      }
      for (; s < chunkEnd; s++) {
        const i = s & (chunkSectors - 1);
        const old = chunk[i]!;
        if (old !== 0) {
          if (freedCount > 0 && old === freedStart + freedCount * sectorBytes) freedCount++;
          else {
            if (freedCount > 0) freed(freedStart, freedCount);
            freedStart = old;
            freedCount = 1;
          }
          this.allocatedSectors--;
        }
        chunk[i] = a;
        if (a !== 0) {
          this.allocatedSectors++;
          a += sectorBytes;
        }
      }
      if (address === 0 && isEmpty(chunk)) {
        this.chunks.delete(ci);
        this.crcs.delete(ci);
        this.shared.delete(ci);
      }
    }
    if (freedCount > 0) freed(freedStart, freedCount);
  }
}

function isEmpty(chunk: Float64Array): boolean {
  for (let i = 0; i < chunk.length; i++) if (chunk[i] !== 0) return false;
  return true;
}
