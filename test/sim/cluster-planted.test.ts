// The cluster simulation catches planted bugs (the method: test/sim/planted.ts).
// A follower that acknowledges entries before they are durable loses entries
// it acknowledged when it crashes in that window: within seeds 1..200
// (`node dist/test/sim/cluster-main.js --seed 1 --seeds 200 --no-flips` on the
// planted copy) the first seed to catch it is 40, by a stale read. The test
// runs seeds 21..45, which pass without the plant.

import { test } from "uvu";
import { expectCaught } from "./planted.js";

// Without bit rot, so the failure each bug causes is the one reported.
const simFrom = (first: number, seeds: number, ...more: string[]): [string, string[]] => ["cluster-main.js", ["--seed", String(first), "--seeds", String(seeds), "--no-flips", ...more]];

test("planted: a follower acknowledges appended entries before they are durable", () => {
  expectCaught(
    "follower-acks-early",
    [
      { file: "src/replication/driver.js", find: "if (messages.length === 0 || g.node.status().role !== StateRole.leader) return messages;", replace: "if (messages.length === 0) return messages;" },
      { file: "src/replication/driver.js", find: "else if (mayPrecedePersist(m.type)) {", replace: "else if (true) {" },
    ],
    ...simFrom(21, 25),
  );
});

// A follower installing a delta snapshot copies the extents the leader says
// did not change from its own volume; dropping the first of each chunk's
// leaves those blocks as they were before the follower went away, so the
// replicas differ once healed ("the replicas diverged after healing"). With
// every seed at a 16 KiB log retention (members that were down catch up by
// snapshot), caught by 9 of seeds 1..100 (first seed 54; `node
// dist/test/sim/cluster-main.js --seed 1 --seeds 100 --no-flips --log-retain
// 16384` on the planted copy); the test runs seeds 50..79, which pass without
// the plant. About 15 s.
test("planted: a follower installing a delta snapshot drops the first kept extent of each chunk", () => {
  expectCaught(
    "delta-drops-kept-extent",
    [{ file: "src/replication/snapshot.js", find: "for (let i = 0; i < c.keep.length; i += 2) {", replace: "for (let i = 2; i < c.keep.length; i += 2) {" }],
    ...simFrom(50, 30, "--log-retain", "16384"),
  );
});

test.run();
