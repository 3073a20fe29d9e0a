// CI's slice of the store simulation (test/sim/store-sim.ts): seeds of the
// "small" profile (many small writes, frequent crashes, bit flips, disk
// errors), of the "gc" profile (overwrites that seal segments, so
// checkpoints and GC run between crashes) and of the "raft" profile (the same
// as Raft entries, with the log compacted behind them, so GC meets segments
// the log and the last checkpoint pin). A failure names its seed;
// `node dist/test/sim/store-main.js --seed N --profile P --verbose` replays it
// with every disk operation and crash decision. The long sweep:
// `node dist/test/sim/store-main.js --seed 1 --seeds 1000`.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { runStoreSim, type StoreSimProfile } from "./store-sim.js";

const seeds: Record<StoreSimProfile, number> = { small: 24, gc: 8, raft: 4 };

for (const profile of ["small", "gc", "raft"] as const) {
  test(`store simulation: ${seeds[profile]} seeds of the ${profile} profile lose no acknowledged write and never return bytes no write put there`, async () => {
    const total = { acked: 0, crashes: 0, flips: 0, checksumErrors: 0, diskErrors: 0, checkpoints: 0, gcSegments: 0, sectorsChecked: 0 };
    for (let seed = 1; seed <= seeds[profile]; seed++) {
      const r = await runStoreSim({ seed, profile });
      for (const k of Object.keys(total) as (keyof typeof total)[]) total[k] += r[k];
    }
    // The runs must exercise what they claim to check.
    assert.ok(total.acked > seeds[profile] * 100, `acknowledged writes ${total.acked}`);
    assert.ok(total.crashes > seeds[profile] * 3, `crashes ${total.crashes}`);
    assert.ok(total.sectorsChecked > seeds[profile] * 10_000, `sectors checked ${total.sectorsChecked}`);
    assert.ok(total.checkpoints > 0, `checkpoints ${total.checkpoints}`);
    if (profile === "small") {
      assert.ok(total.flips > 0 && total.checksumErrors > 0, `bit flips ${total.flips}, reads that caught one ${total.checksumErrors}`);
      assert.ok(total.diskErrors > 0, `writes failed by disk errors ${total.diskErrors}`);
    } else {
      assert.ok(total.gcSegments > 0, `segments GC freed ${total.gcSegments}`);
    }
  });
}

test.run();
