// The cluster simulation catches planted bugs (the method: test/sim/planted.ts).

import { test } from "uvu";
import { expectCaught } from "./planted.js";

// Without bit rot, so the failure each bug causes is the one reported.
const sim = (seeds: number): [string, string[]] => ["cluster-main.js", ["--seed", "1", "--seeds", String(seeds), "--no-flips"]];

test("planted: forwarded request ids start at 1 in every process and a reply is taken from any node", () => {
  expectCaught(
    "request-ids-reused",
    [
      { file: "src/replication/volume-io.js", find: "this.nextId = o.random.int(2 ** 31) * requestIdSpan + 1;", replace: "this.nextId = 1;" },
      { file: "src/replication/volume-io.js", find: "if (w === undefined || w.from !== from) return;", replace: "if (w === undefined) return;" },
    ],
    ...sim(100),
  );
});

test("planted: a follower acknowledges appended entries before they are durable", () => {
  expectCaught(
    "follower-acks-early",
    [
      { file: "src/replication/driver.js", find: "if (messages.length === 0 || g.node.status().role !== StateRole.leader) return messages;", replace: "if (messages.length === 0) return messages;" },
      { file: "src/replication/driver.js", find: "else if (mayPrecedePersist(m.type)) {", replace: "else if (true) {" },
    ],
    ...sim(60),
  );
});

test.run();
