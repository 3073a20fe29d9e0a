// CI's slice of the control-plane simulation (test/sim/catalog-sim.ts): the
// catalog, its control loops and a replicated volume on four whole nodes
// under crashes, a long outage that moves a replica, partitions, a lossy
// network and clock jumps. A failure names its seed;
// `node dist/test/sim/catalog-main.js --seed N --verbose` replays it.
// The planted bug: a replica the catalog dropped is never removed from its
// volume's group (the reconcile's remove step skipped); seed 1 finds it.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { runCatalogSim } from "./catalog-sim.js";
import { expectCaught } from "./planted.js";

const seeds = 25;

test(`catalog simulation: ${seeds} seeds keep the catalog's invariants, move replicas off a node that stays down, and converge once healed`, async () => {
  const total = { acked: 0, crashes: 0, partitions: 0, moves: 0 };
  for (let seed = 1; seed <= seeds; seed++) {
    const r = await runCatalogSim({ seed });
    for (const k of Object.keys(total) as (keyof typeof total)[]) total[k] += r[k];
  }
  // The runs must exercise what they claim to check.
  assert.ok(total.acked > seeds * 50, `acknowledged writes ${total.acked}`);
  assert.ok(total.crashes > seeds * 3 && total.partitions > seeds, `crashes ${total.crashes}, partitions ${total.partitions}`);
  assert.ok(total.moves >= seeds / 3, `replica moves ${total.moves}`);
});

test("planted: a replica the catalog dropped is never removed from its volume's group", () => {
  expectCaught("reconcile-never-removes", [{ file: "src/cluster/control.js", find: "if (extra !== undefined)", replace: "if (false)" }], "catalog-main.js", ["--seed", "1", "--seeds", "5"]);
});

test.run();
