// SIGKILL of all three nodes right after an NBD FLUSH with the checker's load
// running, then all three started at once. Everything acknowledged (so
// everything before the FLUSH) must read back. Five rounds, because the start
// order varies: a restarted node must accept every node the catalog lists,
// not only the peers it knew when it joined, or it refuses a node's
// handshake forever in some orders (the peer set shrinks only when a node is
// removed, Daemon.refreshPeers).

import { test } from "uvu";
import type { Cluster } from "../helpers/cluster.js";
import { checkedClusterHooks, finishChecked, NbdTarget, startChecked } from "../helpers/checker.js";

const MiB = 1024 * 1024;
let c: Cluster;

checkedClusterHooks(test, 3, (x) => (c = x));

async function volume(name: string): Promise<number> {
  await c.nodes[0]!.api.createVolume({ name, sizeBytes: 64 * MiB, repl: 3 });
  return c.leaderOf(name);
}

for (let round = 0; round < 5; round++)
test(`round ${round}: SIGKILL of all three nodes right after a FLUSH: everything written before it is there after a restart`, async () => {
  await volume(`fl${round}`);
  const ch = await startChecked(`fl${round}`, c.nodes, { warmup: 300 });
  const f = new NbdTarget(c.nodes[1]!.host, c.nodes[1]!.nbdPort, `fl${round}`);
  const acked = ch.history.counts.writesOk;
  await f.flush();
  f.close();
  // The load is still running: writes in flight at the kill have unknown outcomes.
  for (const n of c.nodes) await n.kill();
  await ch.load.stop();
  console.log(`FLUSH answered after ${acked}+ acknowledged writes; all three SIGKILLed with the load running`);
  await Promise.all(c.nodes.map((n) => n.start()));
  try {
    await c.healthy(45000);
  } catch (e) {
    const st = await Promise.all(c.nodes.map((n) => n.api.status().then((s) => JSON.stringify(s.nodes.map((x) => [x.name, x.health, x.metaVoter, x.metaLeader])), (err: Error) => err.message)));
    throw new Error(`${(e as Error).message}\nstatus: ${st.join("\n")}\n${c.nodes.map((n) => `--- ${n.host}\n${n.output.slice(-4000)}`).join("\n")}`);
  }
  await c.leaderOf(`fl${round}`);
  await finishChecked(ch, c.nodes[2]!, c.nodes);
});

test.run();
