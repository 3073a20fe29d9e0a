// CI's slice of the cluster simulation (test/sim/cluster-sim.ts): whole
// replica nodes under crashes, partitions, a lossy network, failing and slow
// disks, clock jumps and bit rot on one replica. A failure names its seed;
// `node dist/test/sim/cluster-main.js --seed N --verbose` replays it. The
// long sweep: `node dist/test/sim/cluster-main.js --seed 1 --seeds 10000`.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { runClusterSim } from "./cluster-sim.js";
import { raftLogRetainBytes } from "../../src/constants.js";

const seeds = 60;

test(`cluster simulation: ${seeds} seeds lose no acknowledged write, serve no stale read, and converge once healed`, async () => {
  const total = { acked: 0, readsChecked: 0, crashes: 0, partitions: 0, dropped: 0, snapshots: 0, writesFailedEnospc: 0 };
  for (let seed = 1; seed <= seeds; seed++) {
    const r = await runClusterSim({ seed });
    for (const k of Object.keys(total) as (keyof typeof total)[]) total[k] += r[k];
  }
  // The runs must exercise what they claim to check.
  assert.ok(total.acked > seeds * 20, `acknowledged writes ${total.acked}`);
  assert.ok(total.readsChecked > seeds * 20, `reads checked ${total.readsChecked}`);
  assert.ok(total.crashes > seeds * 5 && total.partitions > seeds, `crashes ${total.crashes}, partitions ${total.partitions}`);
  assert.ok(total.dropped > 0, `messages dropped ${total.dropped}`);
  assert.ok(total.snapshots > 0, `snapshots sent ${total.snapshots}`);
  // A full copy-on-write disk fails log writes: the client is told ENOSPC (NBD_ENOSPC), not EIO.
  assert.ok(total.writesFailedEnospc > 0, `writes answered ENOSPC ${total.writesFailedEnospc}`);
});

// Seeds that found a bug, each replayed as it ran then (the fix is named).
const regressions: { seed: number; flips: boolean; bug: string; asNow?: boolean }[] = [
  { seed: 658, flips: false, bug: "a leader's proposals cut from its log by the next leader were never answered (driver: dropOlderProposals)" },
  { seed: 28, flips: true, bug: "a block a partial write poisoned over bit rot could never be repaired (Store.repairBlocks: a copy at the same applied index)" },
  { seed: 5003, flips: true, bug: "the same poisoned block, on the leader: it retried a snapshot to a lagging follower forever" },
  { seed: 424, flips: true, asNow: true, bug: "a follower that had applied the leader's compaction point from its own log refused every copy at that index, and the leader sent it again forever (snapshot: a refusal names the follower's applied index, and counts as installed)" },
  { seed: 3484, flips: true, asNow: true, bug: "a node whose recovery cut its Raft log at rot forgot at its next start that it owed its vote, and helped elect a leader without committed entries (store: a checkpoint right after a cut makes recoverUntil durable)" },
  { seed: 3158, flips: true, asNow: true, bug: "a leader whose own copy had an unrepairable block could not send the snapshot its followers seemed to need, though one held the log up to its compaction point (core: an append at the compaction point before a snapshot)" },
  { seed: 5629, flips: true, asNow: true, bug: "a change map read its entries' ranges from the log unchecked; a rotten range left a block out of a delta and the replicas diverged (driver: the scan reads whole entries, checked, and a damaged one means full copies)" },
  { seed: 645, flips: true, asNow: true, bug: "the simulated disk flipped bits in the last commits of a segment whose zero-fill counted as a far-reaching sync (SimDisk: a page's sync count)" },
  { seed: 5441, flips: true, bug: "a partial write's new sectors rotted in the log before it was applied, and the block's recomputed checksum vouched for the rot: a read returned it (mapRange: the checksum covers the bytes in memory)" },
  { seed: 2580, flips: true, asNow: true, bug: "a committed entry found rotten when it was read back to be applied, after a log write, escaped the persist's callback (driver: resume hands it to the node's fail-stop; the restart cuts the log there)" },
  { seed: 9651, flips: true, asNow: true, bug: "the same escape on another path of the same callback" },
  { seed: 2954, flips: true, asNow: true, bug: "the simulator took a leader whose new entry a majority held but had not counted as committed for a quiet cluster, and read copies that had not applied it yet (quiet: the leader's commit reaches its last index)" },
];

test("cluster simulation: the seeds that found bugs pass", async () => {
  for (const r of regressions) {
    // Without the faults added since (catch-up by snapshot, full disks), so each replays as it ran; `asNow`: found with them.
    const result = await runClusterSim(r.asNow === true ? { seed: r.seed } : { seed: r.seed, flips: r.flips, logRetainBytes: raftLogRetainBytes, diskFull: false });
    assert.ok(result.acked > 0, `seed ${r.seed} acknowledged no write (${r.bug})`);
  }
});

test.run();
