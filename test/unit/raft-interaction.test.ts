// Interaction tests: small scripts drive a cluster step by step and compare
// the delivered messages with an expected transcript (etcd's testdata/*.txt style).
// A transcript line is "from->to type term=T ...", in delivery order.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { Cluster } from "./raft-helpers.js";

function run(c: Cluster, script: string): string[] {
  const out: string[] = [];
  c.record = true;
  for (const raw of script.trim().split("\n")) {
    const [cmd, a, b] = raw.trim().split(/\s+/);
    c.transcript.length = 0;
    switch (cmd) {
      case "campaign": c.campaign(Number(a)); break;
      case "propose": c.propose(Number(a), b ?? ""); break;
      case "isolate": c.isolate(Number(a)); break;
      case "heal": c.heal(); break;
      case "crash": c.crash(Number(a)); break;
      case "restart": c.restart(Number(a)); break;
      case "tick": c.tick(Number(a), Number(b ?? 1)); c.stabilize(); break;
      default: throw new Error(`unknown command ${cmd}`);
    }
    out.push(`> ${raw.trim()}`, ...c.transcript);
  }
  return out;
}

test("interaction: election, a write, and its commit in a 3-node group", () => {
  const got = run(new Cluster([1, 2, 3]), `
    campaign 1
    propose 1 a
  `);
  if (process.env.PRINT_TRANSCRIPT) console.log(got.join("\n"));
  assert.equal(got, EXPECT_ELECTION.trim().split("\n").map((l) => l.trim()));
});

test("interaction: an isolated follower misses writes, crashes, restarts and is repaired by the leader", () => {
  const got = run(new Cluster([1, 2, 3]), `
    campaign 1
    isolate 3
    propose 1 b
    crash 3
    restart 3
    heal
    tick 1
  `);
  if (process.env.PRINT_TRANSCRIPT) console.log(got.join("\n"));
  assert.equal(got, EXPECT_REPAIR.trim().split("\n").map((l) => l.trim()));
});

const EXPECT_ELECTION = `
> campaign 1
1->2 vote term=1 last=0/0
1->3 vote term=1 last=0/0
2->1 voteResp term=1 grant
3->1 voteResp term=1 grant
1->2 app term=1 prev=0/0 commit=0 ents=[1/1]
1->3 app term=1 prev=0/0 commit=0 ents=[1/1]
2->1 appResp term=1 index=1
3->1 appResp term=1 index=1
1->2 app term=1 prev=1/1 commit=1 ents=[]
1->3 app term=1 prev=1/1 commit=1 ents=[]
2->1 appResp term=1 index=1
3->1 appResp term=1 index=1
> propose 1 a
1->2 app term=1 prev=1/1 commit=1 ents=[2/1]
1->3 app term=1 prev=1/1 commit=1 ents=[2/1]
2->1 appResp term=1 index=2
3->1 appResp term=1 index=2
1->2 app term=1 prev=2/1 commit=2 ents=[]
1->3 app term=1 prev=2/1 commit=2 ents=[]
2->1 appResp term=1 index=2
3->1 appResp term=1 index=2
`;
const EXPECT_REPAIR = `
> campaign 1
1->2 vote term=1 last=0/0
1->3 vote term=1 last=0/0
2->1 voteResp term=1 grant
3->1 voteResp term=1 grant
1->2 app term=1 prev=0/0 commit=0 ents=[1/1]
1->3 app term=1 prev=0/0 commit=0 ents=[1/1]
2->1 appResp term=1 index=1
3->1 appResp term=1 index=1
1->2 app term=1 prev=1/1 commit=1 ents=[]
1->3 app term=1 prev=1/1 commit=1 ents=[]
2->1 appResp term=1 index=1
3->1 appResp term=1 index=1
> isolate 3
> propose 1 b
1->2 app term=1 prev=1/1 commit=1 ents=[2/1]
2->1 appResp term=1 index=2
1->2 app term=1 prev=2/1 commit=2 ents=[]
2->1 appResp term=1 index=2
> crash 3
> restart 3
> heal
> tick 1
1->2 heartbeat term=1 commit=2
1->3 heartbeat term=1 commit=1
2->1 heartbeatResp term=1
3->1 heartbeatResp term=1
1->3 app term=1 prev=2/1 commit=2 ents=[]
3->1 appResp term=1 reject index=2 hint=1/1
1->3 app term=1 prev=1/1 commit=2 ents=[2/1]
3->1 appResp term=1 index=2
1->3 app term=1 prev=2/1 commit=2 ents=[]
3->1 appResp term=1 index=2
`;

test.run();
