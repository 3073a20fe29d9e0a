// Mapping data into a block map while keeping its block checksums true to
// the blocks' content (docs/architecture.md, "Checksums and repair"), and
// checking content read back against them. The store's live data path,
// recovery and the Raft apply path all map data through mapRange.

import { assert } from "../base/assert.js";
import { crc32c } from "../base/crc32c.js";
import { checksumBlockBytes, sectorBytes } from "../constants.js";
import { blockSectors, type BlockMap, type FreedRun } from "./block-map.js";
import { blockFields, type BlockChecks } from "./block-checks.js";
import { appendBlockCrc, blockCrcsOf } from "./checksums.js";

/** What mapRange needs of a volume group. */
export interface MappedGroup {
  readonly id: number;
  map: BlockMap;
  /** Restored from a checkpoint older than block checksums: they are computed once recovery has replayed the log. */
  crcsPending: boolean;
}

/** Reads `length` bytes of the log at `address` into `into` at `at` (live: the segment log; in recovery: the files). */
export type ReadAt = (address: number, into: Uint8Array, at: number, length: number) => void;

/** What mapping data into a block map needs besides the map. */
export interface MapContext {
  readAt: ReadAt;
  /** Whether the segment holding `address` still exists (see blockContent). */
  readable(address: number): boolean;
  freed: FreedRun;
  /** A block the range covered only in part was already damaged: its checksum was made to fail. */
  poisoned(g: MappedGroup, block: number): void;
  /**
   * Recovery: the group's blocks whose checksum could not be computed after a
   * write covering them in part, because other sectors of theirs were in a
   * segment GC freed (see blockContent); it computes them once it has
   * replayed the rest of the log. Undefined at run time, when no map points
   * into a freed segment.
   */
  staleBlocks(g: MappedGroup): Set<number> | undefined;
}

/** The blocks [first, end) that sectors [sector, sector + count) cover whole (the volume's short last block included). */
export function wholeBlocks(map: BlockMap, sector: number, count: number): [number, number] {
  const first = Math.ceil(sector / blockSectors);
  const end = sector + count === map.sectorCount ? map.blockCount : Math.floor((sector + count) / blockSectors);
  return [first, Math.max(first, end)];
}

/** The checksums of the blocks that sectors [sector, sector + count) cover whole, from `data`: the bytes of those sectors. */
export function wholeBlockCrcs(map: BlockMap, sector: number, count: number, data: readonly Uint8Array[]): Uint32Array {
  const [first, end] = wholeBlocks(map, sector, count);
  if (end === first) return new Uint32Array(0);
  return blockCrcsOf(data, (first * blockSectors - sector) * sectorBytes, end - first, map.blockSectorCount(end - 1) * sectorBytes);
}

/**
 * Points sectors [sector, sector + count) at consecutive sectors from
 * `address` (0: makes them holes) and keeps the block checksums true to the
 * blocks' content. `whole` holds the checksums of the blocks the range
 * covers whole (wholeBlockCrcs). A block it covers only in part keeps its
 * other sectors: its content is read before (checked against its checksum)
 * and after, and its checksum recomputed. If the old content did not match,
 * the new checksum is inverted, so reads of the block fail instead of
 * returning bytes nothing vouches for. `data`, when the caller holds the new
 * bytes in memory, is what the recomputed checksum covers for the range's
 * own sectors: read back from the log they could already have rotten there,
 * and the checksum would vouch for the rot.
 */
export function mapRange(g: MappedGroup, sector: number, count: number, address: number, whole: Uint32Array | undefined, ctx: MapContext, data?: readonly Uint8Array[]): void {
  const map = g.map;
  if (count === 0) return;
  const [first, end] = wholeBlocks(map, sector, count);
  // The blocks at the ends that the range covers only in part (none for a write of whole blocks: no allocation then).
  let edges: { block: number; ok: boolean }[] | undefined;
  const stale = ctx.staleBlocks(g);
  const edge = (b: number): void => {
    if (b >= first && b < end) return;
    // Unreadable or stale old bytes (see blockContent) cannot be checked: they were good when written.
    const old = map.blockAllocated(b) && stale?.has(b) !== true ? blockContent(map, b, ctx) : undefined;
    (edges ??= []).push({ block: b, ok: old === undefined || crc32c(old) === map.blockCrc(b) });
  };
  if (!g.crcsPending) {
    const lo = Math.floor(sector / blockSectors);
    const hi = Math.ceil((sector + count) / blockSectors) - 1;
    edge(lo);
    if (hi !== lo) edge(hi);
  }
  if (address === 0) map.clear(sector, count, ctx.freed);
  else map.set(sector, count, address, ctx.freed);
  if (g.crcsPending) return;
  if (address !== 0) {
    assert(whole !== undefined && whole.length === end - first, "a write brings the checksums of the blocks it covers whole");
    for (let b = first; b < end; b++) {
      map.setBlockCrc(b, whole[b - first]!);
      stale?.delete(b);
    }
  }
  for (const { block, ok } of edges ?? []) {
    if (!map.blockAllocated(block)) continue;
    const content = blockContent(map, block, ctx);
    if (content === undefined) {
      stale?.add(block);
      continue;
    }
    stale?.delete(block);
    if (data !== undefined && address !== 0) overlay(content, block * blockSectors, sector, count, data);
    const crc = crc32c(content);
    map.setBlockCrc(block, ok ? crc : ~crc >>> 0);
    if (!ok) ctx.poisoned(g, block);
  }
}

/** Copies the bytes of sectors [sector, sector + count), held in `data`, over a block's content (its first sector `blockFirst`) where they overlap it. */
function overlay(content: Buffer, blockFirst: number, sector: number, count: number, data: readonly Uint8Array[]): void {
  const from = Math.max(blockFirst, sector);
  const to = Math.min(blockFirst + content.length / sectorBytes, sector + count);
  let at = (from - blockFirst) * sectorBytes;
  for (const piece of sliceBuffers(data, (from - sector) * sectorBytes, (to - from) * sectorBytes)) {
    content.set(piece, at);
    at += piece.length;
  }
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


/**
 * A block's content as a read returns it (holes as zeroes), from wherever its
 * sectors are; undefined when one of them points into a segment GC freed.
 * That happens only in the map of a checkpoint older than the freeing (GC
 * does not wait for a new checkpoint): the sectors were overwritten after the
 * checkpoint, by a record replay maps again or a Raft entry the driver applies
 * again, and nothing reads them before. A partial write over such a block
 * cannot check the old bytes (they are gone, and were dead), and takes the
 * block as it was then: good.
 */
export function blockContent(map: BlockMap, block: number, ctx: Pick<MapContext, "readAt" | "readable">): Buffer | undefined {
  const n = map.blockSectorCount(block);
  let readable = true;
  map.runs(block * blockSectors, n, (_s, count, address) => {
    readable &&= address === 0 || (ctx.readable(address) && ctx.readable(address + (count - 1) * sectorBytes));
  });
  if (!readable) return undefined;
  const out = Buffer.allocUnsafe(n * sectorBytes);
  readContent(map, block * blockSectors, n, out, 0, ctx.readAt);
  return out;
}

/** Sectors [sector, sector + count) as they read (holes as zeroes) into out at `at`, unchecked. */
export function readContent(map: BlockMap, sector: number, count: number, out: Uint8Array, at: number, readAt: ReadAt): void {
  map.runs(sector, count, (s, n, address) => {
    const into = at + (s - sector) * sectorBytes;
    if (address === 0) out.fill(0, into, into + n * sectorBytes);
    else readAt(address, out, into, n * sectorBytes);
  });
}

/**
 * Calls visit(b, e, expected, bytes) for each run [b, e) of blocks that hold
 * data among [firstBlock, firstBlock + blockCount): its expected checksum,
 * folded from the blocks' own, and its length in bytes.
 */
function forEachDataRun(map: BlockMap, firstBlock: number, blockCount: number, visit: (b: number, e: number, expected: number, bytes: number) => void): void {
  const endBlock = firstBlock + blockCount;
  for (let b = firstBlock; b < endBlock; ) {
    if (!map.blockAllocated(b)) {
      b++;
      continue;
    }
    let expected = map.blockCrc(b);
    let bytes = map.blockSectorCount(b) * sectorBytes;
    let e = b + 1;
    for (; e < endBlock && map.blockAllocated(e); e++) {
      const n = map.blockSectorCount(e) * sectorBytes;
      expected = appendBlockCrc(expected, map.blockCrc(e), n);
      bytes += n;
    }
    visit(b, e, expected, bytes);
    b = e;
  }
}

/**
 * The blocks among [firstBlock, firstBlock + blockCount) that hold data and
 * whose bytes in `buf` (from `at`) do not match their checksum. A run of
 * blocks holding data costs one pass over its bytes: its expected checksum is
 * folded from the blocks' own; only a run that fails is checked block by block.
 */
export function damagedBlocks(map: BlockMap, firstBlock: number, blockCount: number, buf: Uint8Array, at: number): number[] {
  const bad: number[] = [];
  forEachDataRun(map, firstBlock, blockCount, (b, e, expected, bytes) => {
    const from = at + (b - firstBlock) * checksumBlockBytes;
    // A read of whole blocks that all hold data is checked over its buffer as it is: no view to make.
    const run = from === 0 && bytes === buf.length ? buf : buf.subarray(from, from + bytes);
    if (crc32c(run) === expected) return;
    for (let k = b; k < e; k++) {
      const p = at + (k - firstBlock) * checksumBlockBytes;
      if (crc32c(buf.subarray(p, p + map.blockSectorCount(k) * sectorBytes)) !== map.blockCrc(k)) bad.push(k);
    }
  });
  return bad;
}

/** damagedBlocks' checks for blocks read into a buffer at `at`, taken now to run later (failedBlocks, src/store/block-checks.ts). */
export function blockChecks(map: BlockMap, firstBlock: number, blockCount: number, at: number): BlockChecks {
  const runs: number[] = [];
  const blocks: number[] = [];
  forEachDataRun(map, firstBlock, blockCount, (b, e, expected, bytes) => {
    runs.push(at + (b - firstBlock) * checksumBlockBytes, bytes, expected, blocks.length / blockFields, e - b);
    for (let k = b; k < e; k++) blocks.push(at + (k - firstBlock) * checksumBlockBytes, map.blockSectorCount(k) * sectorBytes, map.blockCrc(k), k, map.get(k * blockSectors));
  });
  return { runs: Float64Array.from(runs), blocks: Float64Array.from(blocks) };
}
