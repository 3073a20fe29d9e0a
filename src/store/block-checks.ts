// A read's block checks, taken when its bytes are read and run later,
// possibly on another thread (src/os/crc-worker.ts): what a 1 MiB read's
// checksum costs then leaves the event loop (docs/architecture.md,
// "Checksums and repair"). The checks carry the checksums the bytes must
// match as they were at the read, so a write that lands before they run
// changes nothing they compare.

import { crc32c } from "../base/crc32c.js";

/** Numbers per run in BlockChecks.runs: buffer offset, length, expected checksum, index of its first block in `blocks`, block count. */
export const runFields = 5;
/** Numbers per block in BlockChecks.blocks: buffer offset, length, checksum, block number, log address. */
export const blockFields = 5;

/**
 * The checks of a read: per run of blocks that hold data, one checksum over
 * the run (folded from its blocks' own), and each block's, for a run that
 * fails. Holes are not listed: they are zeroes, not read.
 */
export interface BlockChecks {
  runs: Float64Array;
  blocks: Float64Array;
}

/** Runs checks later, off the event loop; resolves to the block numbers that fail. */
export interface BlockVerifier {
  check(buf: Uint8Array, checks: BlockChecks): Promise<number[]>;
}

/** The block numbers of `checks` whose bytes in `buf` fail their checksum: one pass per run, block by block only in a run that fails. */
export function failedBlocks(buf: Uint8Array, checks: BlockChecks): number[] {
  const { runs, blocks } = checks;
  const bad: number[] = [];
  for (let r = 0; r < runs.length; r += runFields) {
    const at = runs[r]!;
    if (crc32c(buf.subarray(at, at + runs[r + 1]!)) === runs[r + 2]!) continue;
    const first = runs[r + 3]!;
    for (let k = first; k < first + runs[r + 4]!; k++) {
      const i = k * blockFields;
      const p = blocks[i]!;
      if (crc32c(buf.subarray(p, p + blocks[i + 1]!)) !== blocks[i + 2]!) bad.push(blocks[i + 3]!);
    }
  }
  return bad;
}

/** The log address the checks took for `block` (a block they list). */
export function checkedAddress(checks: BlockChecks, block: number): number {
  const { blocks } = checks;
  for (let i = 0; i < blocks.length; i += blockFields) if (blocks[i + 3] === block) return blocks[i + 4]!;
  return 0;
}
