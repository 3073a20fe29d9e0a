// CI's slice of the cluster simulation (test/sim/cluster-sim.ts): whole
// replica nodes under crashes, partitions, a lossy network, failing and slow
// disks and clock jumps (bit rot: see below). A failure names its seed;
// `node dist/test/sim/cluster-main.js --seed N --verbose` replays it. The
// long sweep: `node dist/test/sim/cluster-main.js --seed 1 --seeds 10000`.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { runClusterSim } from "./cluster-sim.js";

const seeds = 60;

test(`cluster simulation: ${seeds} seeds lose no acknowledged write, serve no stale read, and converge once healed`, async () => {
  const total = { acked: 0, readsChecked: 0, crashes: 0, partitions: 0, dropped: 0 };
  for (let seed = 1; seed <= seeds; seed++) {
    // Without bit rot: two known faults with it are open (docs/testing-faults.md, "Whole replica nodes").
    const r = await runClusterSim({ seed, flips: false });
    for (const k of Object.keys(total) as (keyof typeof total)[]) total[k] += r[k];
  }
  // The runs must exercise what they claim to check.
  assert.ok(total.acked > seeds * 20, `acknowledged writes ${total.acked}`);
  assert.ok(total.readsChecked > seeds * 20, `reads checked ${total.readsChecked}`);
  assert.ok(total.crashes > seeds * 5 && total.partitions > seeds, `crashes ${total.crashes}, partitions ${total.partitions}`);
  assert.ok(total.dropped > 0, `messages dropped ${total.dropped}`);
});

test.run();
