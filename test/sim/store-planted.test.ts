// The store simulation catches planted bugs. Each test copies the compiled
// store and simulator (dist/src, dist/test/sim) to dist/planted/NAME, plants
// one bug there by editing the compiled JavaScript, runs the simulator's
// seeds against the copy in a child process, and expects a failure naming a
// seed. A bug the simulator lets through fails the test. A planted edit that
// no longer finds its code fails the test too: update it with the code.

import { test } from "uvu";
import { expectCaught } from "./planted.js";

/** The store simulator over `seeds` seeds of one profile. */
function sim(profile: "small" | "gc" | "raft", seeds: number): [string, string[]] {
  return ["store-main.js", ["--seed", "1", "--seeds", String(seeds), "--profile", profile]];
}

test("planted: the log acknowledges a commit once written, without its fdatasync", () => {
  expectCaught("ack-before-sync", [{ file: "src/store/log.js", find: "return file.datasync();", replace: "return undefined;" }], ...sim("small", 20));
});

test("planted: reads return blocks without checking their checksums", () => {
  expectCaught("unchecked-reads", [{ file: "src/store/store.js", find: "const bad = damagedBlocks(g.map, firstBlock, Math.ceil(lengthBytes / checksumBlockBytes), out, at);", replace: "const bad = [];" }], ...sim("small", 30));
});

test("planted: recovery replays the records of a commit torn after them", () => {
  expectCaught(
    "replay-torn-commit",
    [{ file: "src/store/recovery.js", find: "batch.add(h, id * segmentBytes + position + h.headerBytes, record.payload, batchComplete); if (batchComplete) replayed += batch.flush(replay, damaged);", replace: "batch.add(h, id * segmentBytes + position + h.headerBytes, record.payload, true); replayed += batch.flush(replay, damaged);" }],
    ...sim("small", 20),
  );
});

test("planted: GC frees a segment while block maps still point into its upper half", () => {
  expectCaught(
    "gc-misses-live-data",
    [
      { file: "src/store/store.js", find: "g.map.runsInto(lo, lo + segmentBytes, (sector, count, address) => {", replace: "g.map.runsInto(lo, lo + segmentBytes / 2, (sector, count, address) => {" },
      { file: "src/store/store.js", find: "if ((this.liveBytes.get(id) ?? 0) !== 0) {", replace: "if (false) {" },
    ],
    ...sim("gc", 10),
  );
});

// GC honours only the pins of Raft entries not yet compacted, not those the
// checkpoint file lists: a segment whose entries were compacted after that
// checkpoint is freed before a newer one exists, and a restart from it would
// not find them. The raft profile's check after every step reports it ("the
// checkpoint lists Raft entry I of group 1 in segment N, which is gone"); a
// crash in that window ends the same way ("segment N holds mapped data").
// Caught by 10 of seeds 1..30 (first seed 3; `node
// dist/test/sim/store-main.js --seed 1 --seeds 30 --profile raft` on the
// planted copy); the test runs seeds 1..6, which pass without the plant.
// About 10 s.
test("planted: GC frees a segment the last checkpoint's Raft entries still point into", () => {
  expectCaught("gc-ignores-checkpoint-pins", [{ file: "src/store/store.js", find: "if (honourCheckpointPins && this.checkpointPinned.has(id))", replace: "if (false)" }], ...sim("raft", 6));
});

test.run();
