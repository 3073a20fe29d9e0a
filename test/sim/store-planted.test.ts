// The store simulation catches planted bugs. Each test copies the compiled
// store and simulator (dist/src, dist/test/sim) to dist/planted/NAME, plants
// one bug there by editing the compiled JavaScript, runs the simulator's
// seeds against the copy in a child process, and expects a failure naming a
// seed. A bug the simulator lets through fails the test. A planted edit that
// no longer finds its code fails the test too: update it with the code.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawnSync } from "node:child_process";
import { cpSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const dist = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

interface Edit {
  /** A file under dist/. */
  file: string;
  /** The code to replace; any run of whitespace in it matches any run in the file. */
  find: string;
  replace: string;
}

function planted(name: string, edits: Edit[]): string {
  const root = join(dist, "planted", name);
  rmSync(root, { recursive: true, force: true });
  cpSync(join(dist, "src"), join(root, "src"), { recursive: true });
  cpSync(join(dist, "test", "sim"), join(root, "test", "sim"), { recursive: true });
  for (const e of edits) {
    const path = join(root, e.file);
    const text = readFileSync(path, "utf8");
    const pattern = new RegExp(e.find.trim().split(/\s+/).map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("\\s+"), "g");
    const hits = text.match(pattern)?.length ?? 0;
    assert.is(hits, 1, `planting ${name}: ${e.file} must hold the code once (found ${hits}): ${e.find}`);
    writeFileSync(path, text.replace(pattern, e.replace));
  }
  return root;
}

function simFinds(root: string, profile: "small" | "gc", seeds: number): string {
  const r = spawnSync(process.execPath, [join(root, "test/sim/store-main.js"), "--seed", "1", "--seeds", String(seeds), "--profile", profile, "--first-failure"], { encoding: "utf8", timeout: 300_000 });
  rmSync(root, { recursive: true, force: true });
  return `${r.stdout}${r.stderr}`;
}

function expectCaught(name: string, edits: Edit[], profile: "small" | "gc", seeds: number): void {
  const out = simFinds(planted(name, edits), profile, seeds);
  const fail = out.split("\n").find((l) => l.startsWith("FAIL "));
  assert.ok(fail !== undefined, `the simulator let "${name}" through in ${seeds} seeds:\n${out.slice(-2000)}`);
  console.log(`  ${name}: ${fail.slice(0, 300)}`);
}

test("planted: the log acknowledges a commit once written, without its fdatasync", () => {
  expectCaught("ack-before-sync", [{ file: "src/store/log.js", find: "return file.datasync();", replace: "return undefined;" }], "small", 20);
});

test("planted: reads return blocks without checking their checksums", () => {
  expectCaught("unchecked-reads", [{ file: "src/store/store.js", find: "const bad = damagedBlocks(g.map, firstBlock, Math.ceil(lengthBytes / checksumBlockBytes), out, at);", replace: "const bad = [];" }], "small", 30);
});

test("planted: recovery replays the records of a commit torn after them", () => {
  expectCaught(
    "replay-torn-commit",
    [{ file: "src/store/recovery.js", find: "batch.add(h, id * segmentBytes + position + h.headerBytes, record.payload, batchComplete); if (batchComplete) replayed += batch.flush(replay, damaged);", replace: "batch.add(h, id * segmentBytes + position + h.headerBytes, record.payload, true); replayed += batch.flush(replay, damaged);" }],
    "small",
    20,
  );
});

test("planted: GC frees a segment while block maps still point into its upper half", () => {
  expectCaught(
    "gc-misses-live-data",
    [
      { file: "src/store/store.js", find: "g.map.runsInto(lo, lo + segmentBytes, (sector, count, address) => {", replace: "g.map.runsInto(lo, lo + segmentBytes / 2, (sector, count, address) => {" },
      { file: "src/store/store.js", find: "if ((this.liveBytes.get(id) ?? 0) !== 0) {", replace: "if (false) {" },
    ],
    "gc",
    10,
  );
});

test.run();
