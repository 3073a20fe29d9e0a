// Every limit in pxd, named with its unit. Sections are owned by layers;
// checkConstants() runs at start and asserts that the limits agree.

import { assert } from "./base/assert.js";

// ---- store (src/store) ----
export const sectorBytes = 512;
export const segmentBytes = 64 * 1024 * 1024;
export const recordHeaderBytes = 64;
/** Largest payload one record carries; larger writes are split. */
export const recordPayloadBytesMax = 4 * 1024 * 1024;
/** Records in one group commit (one writev + one fdatasync). */
export const commitRecordsMax = 4096;
/** Bytes in one group commit. */
export const commitBytesMax = 32 * 1024 * 1024;
/** A checkpoint is written after this many bytes of log. */
export const checkpointLogBytes = 256 * 1024 * 1024;
/** Segments whose live ratio is below this are compacted by GC. */
export const gcLiveRatioMax = 0.5;
/** Freed segment files kept for reuse instead of being unlinked. */
export const freeSegmentsMax = 4;
/** Volume size limit. */
export const volumeBytesMax = 64 * 1024 ** 4;

// ---- nbd (src/nbd) ----

// ---- raft (src/raft) ----

// ---- daemon / api ----
export const defaultNbdPort = 10809;
export const defaultApiPort = 9001;
export const defaultPeerPort = 9002;
/** Largest JSON body the control API accepts. */
export const apiBodyBytesMax = 1024 * 1024;

export function checkConstants(): void {
  assert(segmentBytes % sectorBytes === 0, "segments hold whole sectors");
  assert(recordPayloadBytesMax + 2 * recordHeaderBytes < segmentBytes, "a record fits a segment with its seal");
  assert(commitBytesMax >= recordPayloadBytesMax + recordHeaderBytes, "a commit holds the largest record");
  assert(commitRecordsMax < 65536, "batch position fits u16");
  assert(checkpointLogBytes >= segmentBytes, "checkpoints are at most one per segment");
  assert(gcLiveRatioMax > 0 && gcLiveRatioMax < 1, "gc threshold is a ratio");
}
