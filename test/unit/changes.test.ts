// The change map a leader keeps for a member behind its compaction point
// (src/replication/changes.ts): marked ranges round out to 4 KiB blocks, and
// runAt splits any range into maximal changed and unchanged runs, also
// across the 128 MiB chunks of the sparse bitmap. Checked against a plain
// array of booleans over random marks.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { Prng } from "../../src/base/prng.js";
import { ChangeMap, changeBlockBytes } from "../../src/replication/changes.js";

const KiB = 1024;
const MiB = 1024 * KiB;

/** Every run runAt reports over [offset, offset + length), as [offset, length, changed]. */
function runs(m: ChangeMap, offset: number, length: number): [number, number, boolean][] {
  const out: [number, number, boolean][] = [];
  for (let at = offset; at < offset + length; ) {
    const r = m.runAt(at, offset + length - at);
    assert.ok(r.lengthBytes > 0, "a run makes progress");
    out.push([at, r.lengthBytes, r.changed]);
    at += r.lengthBytes;
  }
  return out;
}

test("marks round out to whole 4 KiB blocks; runs split at their edges", () => {
  const m = new ChangeMap(7, 2);
  assert.is(m.base, 7);
  m.mark(512, 512); // inside block 0
  m.mark(3 * changeBlockBytes - 512, 1024); // the end of block 2 and the start of block 3
  assert.is(m.changedBlocks, 3);
  assert.equal(runs(m, 0, 16 * KiB), [
    [0, 4 * KiB, true],
    [4 * KiB, 4 * KiB, false],
    [8 * KiB, 8 * KiB, true],
  ]);
  // A range that starts inside a block answers for that block, and stops at the range's end.
  assert.equal(runs(m, 1024, 5 * KiB), [
    [1024, 3 * KiB, true],
    [4 * KiB, 2 * KiB, false],
  ]);
  m.mark(0, 0);
  assert.is(m.changedBlocks, 3, "an empty range marks nothing");
});

test("untouched 128 MiB stretches are one unchanged run, and chunks join without a seam", () => {
  const m = new ChangeMap(1, 1);
  const size = 1024 * MiB;
  assert.equal(runs(m, 0, size), [[0, size, false]]);
  m.mark(128 * MiB - 4 * KiB, 8 * KiB); // the last block of chunk 0 and the first of chunk 1
  m.mark(700 * MiB, 1 * MiB);
  assert.equal(runs(m, 0, size), [
    [0, 128 * MiB - 4 * KiB, false],
    [128 * MiB - 4 * KiB, 8 * KiB, true],
    [128 * MiB + 4 * KiB, 700 * MiB - 128 * MiB - 4 * KiB, false],
    [700 * MiB, 1 * MiB, true],
    [701 * MiB, size - 701 * MiB, false],
  ]);
});

test("random marks: runAt agrees with a plain array of blocks", () => {
  const prng = new Prng(11);
  const blocks = 3 * 32768 + 100; // three chunks and a bit
  for (let round = 0; round < 20; round++) {
    const m = new ChangeMap(round + 1, 1);
    const want = new Array<boolean>(blocks).fill(false);
    for (let i = 0; i < 30; i++) {
      const offset = prng.int(blocks * 8) * 512;
      const length = Math.min(blocks * changeBlockBytes - offset, (1 + prng.int(i % 3 === 0 ? 100000 : 64)) * 512);
      if (length <= 0) continue;
      m.mark(offset, length);
      for (let b = Math.floor(offset / changeBlockBytes); b * changeBlockBytes < offset + length; b++) want[b] = true;
    }
    assert.is(m.changedBlocks, want.filter((x) => x).length, "changed blocks counted once each");
    const from = prng.int(blocks) * changeBlockBytes + 512 * prng.int(8);
    for (const [offset, length, changed] of runs(m, from, blocks * changeBlockBytes - from)) {
      for (let b = Math.floor(offset / changeBlockBytes); b * changeBlockBytes < offset + length; b++) {
        assert.is(want[b], changed, `block ${b} in run [${offset}, +${length})`);
      }
      // Maximal: the block right after a run has the other answer.
      const next = Math.ceil((offset + length) / changeBlockBytes);
      if (offset + length < blocks * changeBlockBytes) assert.is.not(want[next], changed, `the run at ${offset} ends where the answer flips`);
    }
  }
});

test.run();
