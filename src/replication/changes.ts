// Which parts of a volume were written or trimmed after a Raft index: what a
// group's leader keeps while a member is behind its compaction point, so the
// snapshot that member needs on its return carries only what changed
// (docs/architecture.md "Log compaction and snapshots").
//
// A sparse bitmap of 4 KiB blocks: a Uint32Array per 128 MiB of the volume,
// allocated on the first change in it, so a 1 GiB volume costs at most 32 KiB
// and untouched ranges nothing. Ranges are rounded out to whole blocks: a
// block counts as changed when any byte of it was.

import { assert } from "../base/assert.js";

export const changeBlockBytes = 4096;
const blocksPerChunk = 32768;
const wordsPerChunk = blocksPerChunk / 32;

export class ChangeMap {
  private readonly chunks = new Map<number, Uint32Array>();
  /** Blocks marked, for logs and tests. */
  changedBlocks = 0;

  /**
   * Every entry after `base` applied before the map began is marked too (the
   * driver reads them from the log in slices); until then it is not used.
   */
  complete = false;

  /** Changes by entries after `base` (whose term is `baseTerm`) are marked; the map says nothing about those up to it. */
  constructor(
    readonly base: number,
    readonly baseTerm: number,
  ) {}

  /** Marks every block that [offsetBytes, offsetBytes + lengthBytes) touches. */
  mark(offsetBytes: number, lengthBytes: number): void {
    if (lengthBytes <= 0) return;
    const last = Math.floor((offsetBytes + lengthBytes - 1) / changeBlockBytes);
    for (let b = Math.floor(offsetBytes / changeBlockBytes); b <= last; b++) {
      const c = Math.floor(b / blocksPerChunk);
      let words = this.chunks.get(c);
      if (words === undefined) {
        words = new Uint32Array(wordsPerChunk);
        this.chunks.set(c, words);
      }
      const i = b % blocksPerChunk;
      const bit = 1 << (i & 31);
      if ((words[i >>> 5]! & bit) === 0) {
        words[i >>> 5] = words[i >>> 5]! | bit;
        this.changedBlocks++;
      }
    }
  }

  private isChanged(block: number): boolean {
    const words = this.chunks.get(Math.floor(block / blocksPerChunk));
    if (words === undefined) return false;
    const i = block % blocksPerChunk;
    return (words[i >>> 5]! & (1 << (i & 31))) !== 0;
  }

  /**
   * The run that starts at offsetBytes: whether its blocks changed, and how
   * far (at most lengthBytes) they all share that answer.
   */
  runAt(offsetBytes: number, lengthBytes: number): { changed: boolean; lengthBytes: number } {
    assert(lengthBytes > 0, "a run is not empty");
    const end = offsetBytes + lengthBytes;
    let block = Math.floor(offsetBytes / changeBlockBytes);
    const changed = this.isChanged(block);
    let at = (block + 1) * changeBlockBytes;
    while (at < end) {
      block++;
      // A whole untouched 128 MiB stretch is skipped in one step.
      if (!changed && block % blocksPerChunk === 0 && !this.chunks.has(block / blocksPerChunk)) {
        at += blocksPerChunk * changeBlockBytes;
        block += blocksPerChunk - 1;
        continue;
      }
      if (this.isChanged(block) !== changed) break;
      at += changeBlockBytes;
    }
    return { changed, lengthBytes: Math.min(at, end) - offsetBytes };
  }
}
