// CI's slice of the seeded simulation: a few hundred runs (3 and 5 voters), half
// of them in the churn profile. With the Figure 8 commit rule broken, 6 of these
// runs fail (first: seed 7 with 5 voters, seed 17 with 3); docs/raft.md lists the
// other planted bugs and what catches them.
// A failure names the seed; `npm run sim -- --seed N --nodes K --verbose` replays it.
// The long sweep runs on demand: `npm run sim -- --seed 1 --seeds 1000`.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { runSim } from "./sim.js";

const seedsCi = 150;

for (const nodes of [3, 5]) {
  test(`simulation: ${seedsCi} seeds with ${nodes} voters keep every invariant and recover liveness`, () => {
    let commits = 0;
    let elections = 0;
    let reads = 0;
    let snapshots = 0;
    let confChanges = 0;
    let chunkedOk = 0;
    let chunkedFailed = 0;
    let torn = 0;
    let unsyncedLost = 0;
    let pauses = 0;
    let registerOps = 0;
    for (let seed = 1; seed <= seedsCi; seed++) {
      const r = runSim({ seed, nodes, faultTicks: 600, livenessTicks: 400 });
      commits += r.commits;
      elections += r.elections;
      reads += r.reads;
      snapshots += r.snapshots;
      confChanges += r.confChanges;
      chunkedOk += r.snapshotTransfersOk;
      chunkedFailed += r.snapshotTransfersFailed;
      torn += r.tornPersists;
      unsyncedLost += r.unsyncedLost;
      pauses += r.pauses;
      registerOps += r.registerOps;
    }
    // The runs must actually exercise the machinery they claim to check.
    assert.ok(commits > seedsCi * 100, `commits ${commits}`);
    assert.ok(elections > seedsCi * 2, `elections ${elections}`);
    assert.ok(reads > seedsCi * 10, `reads ${reads}`);
    assert.ok(snapshots > seedsCi / 2, `snapshots ${snapshots}`);
    assert.ok(confChanges > seedsCi, `conf changes ${confChanges}`);
    // Chunked snapshot transfers both finish and fail (a lost chunk), and the core recovers from either.
    assert.ok(chunkedOk > seedsCi / 2 && chunkedFailed > seedsCi / 4, `chunked transfers ${chunkedOk} done, ${chunkedFailed} failed`);
    // The disk and process faults happen, and the clients' history is long enough to mean something.
    assert.ok(torn > seedsCi / 10, `crashes mid-persist ${torn}`);
    assert.ok(unsyncedLost > seedsCi, `unsynced hard states lost ${unsyncedLost}`);
    assert.ok(pauses > seedsCi, `pauses ${pauses}`);
    assert.ok(registerOps > seedsCi * 100, `register operations ${registerOps}`);
  });
}

test("simulation: a seed replays exactly", () => {
  const a = runSim({ seed: 4242, nodes: 5, faultTicks: 400, livenessTicks: 400 });
  const b = runSim({ seed: 4242, nodes: 5, faultTicks: 400, livenessTicks: 400 });
  assert.equal(a, b);
});

test.run();
