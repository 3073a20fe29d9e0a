// The Raft core's simulation (test/sim/sim.ts) catches planted bugs (the
// method: test/sim/planted.ts; docs/raft.md lists the bugs planted by hand).
//
// A leader that counts its own log toward a commit when it appends an entry,
// instead of once the Ready holding it is persisted (Raft.onPersisted), can
// commit an entry only one other voter holds on disk; the commit-safety
// invariant reports it at once ("committed I/T, which is durable on no
// quorum"). Caught by 53 of the 400 runs of seeds 1..200 (`node
// dist/test/sim/main.js --seed 1 --seeds 200` on the planted copy; 3 and 5
// voters each); the test runs seeds 1..20 (40 runs: 4 caught, first seed 4
// with 5 voters), which pass without the plant. About 5 s.

import { test } from "uvu";
import { expectCaught } from "./planted.js";

test("planted: a leader counts its own appended entry toward commit before persisting it", () => {
  expectCaught(
    "leader-self-acks-before-persist",
    [{ file: "src/raft/raft.js", find: "this.log.append([e]);", replace: "this.log.append([e]); this.tracker.progress.get(this.id)?.maybeUpdate(index);" }],
    "main.js",
    ["--seed", "1", "--seeds", "20"],
  );
});

test.run();
