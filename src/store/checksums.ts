// Block checksums (docs/formats/segment-log.md, "Block checksums"): a CRC32C
// per 4 KiB block of a volume (checksumBlockBytes), kept in the block map and
// checked on every read. Computing one needs a pass over the block's bytes;
// the checksum of a run of blocks, and of a record payload made of whole
// blocks, is folded from theirs without touching the bytes again.

import { Crc32cShift, crc32c, crc32cCombine } from "../base/crc32c.js";
import { checksumBlockBytes } from "../constants.js";

const blockShift = new Crc32cShift(checksumBlockBytes);

/**
 * The checksum of each of `count` consecutive blocks of `data` (a list of
 * buffers read back to back), the first starting `skipBytes` into it. Every
 * block is checksumBlockBytes long but the last, which is `lastBlockBytes`.
 */
export function blockCrcsOf(data: readonly Uint8Array[], skipBytes: number, count: number, lastBlockBytes: number): Uint32Array {
  const out = new Uint32Array(count);
  let part = 0;
  let at = skipBytes;
  while (part < data.length && at >= data[part]!.length) at -= data[part++]!.length;
  for (let b = 0; b < count; b++) {
    let want = b === count - 1 ? lastBlockBytes : checksumBlockBytes;
    let crc = 0;
    while (want > 0) {
      const d = data[part]!;
      const take = Math.min(want, d.length - at);
      crc = crc32c(at === 0 && take === d.length ? d : d.subarray(at, at + take), crc);
      want -= take;
      at += take;
      if (at === d.length) {
        part++;
        at = 0;
      }
    }
    out[b] = crc;
  }
  return out;
}

/**
 * The checksum of `count` consecutive blocks from their checksums (crcs[from]
 * first), every block checksumBlockBytes long but the last, `lastBlockBytes`.
 */
export function foldBlockCrcs(crcs: ArrayLike<number>, from: number, count: number, lastBlockBytes: number): number {
  if (count === 0) return 0;
  let acc = crcs[from]!;
  for (let i = 1; i < count; i++) acc = appendBlockCrc(acc, crcs[from + i]!, i === count - 1 ? lastBlockBytes : checksumBlockBytes);
  return acc;
}

/** crc(A followed by B) for a block B of `blockBytes` (the table when it is a whole block). */
export function appendBlockCrc(acc: number, crc: number, blockBytes: number): number {
  return blockBytes === checksumBlockBytes ? blockShift.combine(acc, crc) : crc32cCombine(acc, crc, blockBytes);
}
