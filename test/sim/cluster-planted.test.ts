// The cluster simulation catches planted bugs (the method: test/sim/planted.ts).
// A follower that acknowledges entries before they are durable loses an
// acknowledged write once both followers crash in that window: seed 121 of
// these 150 finds it (about 80 s).

import { test } from "uvu";
import { expectCaught } from "./planted.js";

// Without bit rot, so the failure each bug causes is the one reported.
const sim = (seeds: number): [string, string[]] => ["cluster-main.js", ["--seed", "1", "--seeds", String(seeds), "--no-flips"]];

test("planted: a follower acknowledges appended entries before they are durable", () => {
  expectCaught(
    "follower-acks-early",
    [
      { file: "src/replication/driver.js", find: "if (messages.length === 0 || g.node.status().role !== StateRole.leader) return messages;", replace: "if (messages.length === 0) return messages;" },
      { file: "src/replication/driver.js", find: "else if (mayPrecedePersist(m.type)) {", replace: "else if (true) {" },
    ],
    ...sim(150),
  );
});

test.run();
