// Process faults on a real three-node cluster with the linearizability checker
// (test/helpers/checker.ts) running through the NBD exports of nodes that stay
// up: SIGKILL of the leader, SIGKILL of a follower, SIGSTOP of the leader for
// longer than the election timeout (a client on it too: after SIGCONT it must
// not serve stale reads or acknowledge writes it cannot commit),.
// (SIGKILL of all three after a FLUSH is in faults-restart-all.test.ts.) Every read must return the last
// acknowledged write of its block or a concurrent one; every acknowledged
// write must be there at the end.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { waitUntil, type Cluster } from "../helpers/cluster.js";
import { checkedClusterHooks, finishChecked, startChecked } from "../helpers/checker.js";

const MiB = 1024 * 1024;
let c: Cluster;

checkedClusterHooks(test, 3, (x) => (c = x));

async function volume(name: string): Promise<number> {
  await c.nodes[0]!.api.createVolume({ name, sizeBytes: 64 * MiB, repl: 3 });
  return c.leaderOf(name);
}

test("SIGKILL of the leader: the survivors elect a leader and keep serving, nothing acknowledged is lost", async () => {
  const leader = await volume("kl");
  const ch = await startChecked("kl", c.others(leader).map((i) => c.nodes[i]!));
  await c.nodes[leader]!.kill();
  const t0 = Date.now();
  await ch.load.progress(200, 30000, "progress through the survivors after the leader's SIGKILL");
  console.log(`200 writes acknowledged ${Date.now() - t0} ms after the kill; new leader node ${(await c.leaderAmong("kl", c.others(leader))) + 1}`);
  await c.nodes[leader]!.start();
  await c.healthy();
  await ch.load.progress(100, 30000, "progress after the old leader came back");
  await finishChecked(ch, c.nodes[leader]!, c.nodes);
});

test("SIGKILL of a follower: the leader keeps committing with the other, nothing acknowledged is lost", async () => {
  const leader = await volume("kf");
  const follower = c.others(leader)[0]!;
  const ch = await startChecked("kf", c.others(follower).map((i) => c.nodes[i]!));
  await c.nodes[follower]!.kill();
  await ch.load.progress(200, 30000, "progress after a follower's SIGKILL");
  await c.nodes[follower]!.start();
  await c.healthy();
  await ch.load.progress(100, 30000, "progress after the follower came back");
  await finishChecked(ch, c.nodes[follower]!, c.nodes);
});

test("SIGSTOP of the leader past the election timeout, then SIGCONT: no stale reads, no uncommitted acknowledgements", async () => {
  const leader = await volume("st");
  // A client on the stopped leader as well: its queued requests and the ones it
  // sends right after SIGCONT hit a node that still believes it leads.
  const ch = await startChecked("st", [c.nodes[leader]!, ...c.others(leader).map((i) => c.nodes[i]!)]);
  c.nodes[leader]!.pause();
  try {
    const t0 = Date.now();
    const next = await c.leaderAmong("st", c.others(leader), leader);
    console.log(`node ${next + 1} leads ${Date.now() - t0} ms after SIGSTOP of node ${leader + 1}`);
    await ch.load.progress(200, 30000, "progress through the others while the leader is stopped");
    const stoppedMs = Date.now() - t0;
    assert.ok(stoppedMs > 2000, `stopped longer than the election timeout (${stoppedMs} ms)`);
  } finally {
    c.nodes[leader]!.resume();
  }
  // Right after SIGCONT the old leader's clients are busy again; the checker
  // sees each of their reads against what the others acknowledged meanwhile.
  const before = ch.history.counts.readsOk;
  await ch.load.progress(300, 30000, "progress after SIGCONT");
  await waitUntil("reads after SIGCONT", async () => ch.history.counts.readsOk > before + 300);
  await c.healthy();
  await finishChecked(ch, c.nodes[leader]!, c.nodes);
});

test.run();
