// Network partitions (nftables rules dropping packets between node addresses,
// test/helpers/nft.ts) on a real three-node cluster with the linearizability
// checker running: the leader cut off from both peers (with a client still on
// it: it must not serve stale reads nor acknowledge writes it cannot commit),
// then healed; and a node that can reach only one of its peers (the leader
// and one follower cut apart, both still reaching the third), then healed.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { startCluster, waitUntil, type Cluster } from "../helpers/cluster.js";
import { abortRunning, finishChecked, startChecked } from "../helpers/checker.js";
import { nftAvailable, Partition } from "../helpers/nft.js";

const MiB = 1024 * 1024;
let c: Cluster;
let net: Partition;

test.before(async () => {
  assert.ok(await nftAvailable(), "nft is installed (the nftables package)");
  c = await startCluster(3);
  net = new Partition(c.nodes[0]!.host);
  await net.reset();
});

test.after.each(abortRunning);

test.after(async () => {
  await net?.heal();
  await c?.dispose();
});

async function volume(name: string): Promise<number> {
  await c.nodes[0]!.api.createVolume({ name, sizeBytes: 64 * MiB, repl: 3 });
  return c.leaderOf(name);
}

test("the leader isolated from both peers: the majority elects a leader and serves; the old one serves nothing stale; heal", async () => {
  const leader = await volume("iso");
  const [a, b] = c.others(leader) as [number, number];
  const ch = await startChecked("iso", [c.nodes[leader]!, c.nodes[a]!, c.nodes[b]!]);
  try {
    await net.isolate(c.nodes[leader]!.host, [c.nodes[a]!.host, c.nodes[b]!.host]);
    const t0 = Date.now();
    const next = await c.leaderAmong("iso", [a, b], leader);
    console.log(`partition ${net.describe()}: node ${next + 1} leads after ${Date.now() - t0} ms`);
    await ch.load.progress(200, 30000, "progress through the majority while the leader is isolated");
    // The isolated node's client keeps asking during the partition (EIO or a
    // long wait is fine); the checker sees each answer it does get.
  } finally {
    await net.heal();
  }
  await c.healthy();
  await ch.load.progress(200, 40000, "progress after the partition healed");
  await finishChecked(ch, c.nodes[leader]!, c.nodes);
});

test("a node that reaches only one peer (leader and a follower cut apart): the cluster keeps serving; heal", async () => {
  const leader = await volume("part");
  const [cut, bridge] = c.others(leader) as [number, number];
  const ch = await startChecked("part", c.nodes);
  try {
    await net.cut(c.nodes[leader]!.host, c.nodes[cut]!.host);
    console.log(`partition ${net.describe()}: node ${bridge + 1} reaches both`);
    await ch.load.progress(200, 40000, "progress with the leader and a follower cut apart");
    const l = await c.leaderAmong("part", [0, 1, 2]);
    console.log(`leader during the partial partition: node ${l + 1}`);
    await ch.load.progress(100, 40000, "more progress with the partial partition");
  } finally {
    await net.heal();
  }
  await c.healthy();
  await ch.load.progress(200, 40000, "progress after the partition healed");
  await finishChecked(ch, c.nodes[cut]!, c.nodes);
});

test("the leader's outgoing links cut (it hears its peers, they do not hear it): a new leader serves, nothing stale; heal", async () => {
  const leader = await volume("oneway");
  const [a, b] = c.others(leader) as [number, number];
  const ch = await startChecked("oneway", c.nodes);
  try {
    await net.cutOneWay(c.nodes[leader]!.host, c.nodes[a]!.host);
    await net.cutOneWay(c.nodes[leader]!.host, c.nodes[b]!.host);
    const next = await c.leaderAmong("oneway", [a, b], leader);
    console.log(`partition ${net.describe()}: node ${next + 1} leads`);
    await ch.load.progress(200, 40000, "progress with the old leader's outgoing links cut");
  } finally {
    await net.heal();
  }
  await c.healthy();
  await ch.load.progress(200, 40000, "progress after the partition healed");
  await finishChecked(ch, c.nodes[leader]!, c.nodes);
});

test("the leader isolated for longer than the forwarding deadline: its clients get errors, not stale data; heal", async () => {
  const leader = await volume("long");
  const [a, b] = c.others(leader) as [number, number];
  const ch = await startChecked("long", c.nodes);
  try {
    await net.isolate(c.nodes[leader]!.host, [c.nodes[a]!.host, c.nodes[b]!.host]);
    const t0 = Date.now();
    await c.leaderAmong("long", [a, b], leader);
    // The isolated node's clients wait for its 15 s forwarding deadline; the
    // errors they then get leave those writes' outcomes unknown.
    await waitUntil("errors from the isolated node", async () => ch.history.counts.writesErrno + ch.history.counts.readsErrno > 0, 30000);
    console.log(`first error from the isolated node ${Date.now() - t0} ms into the partition; ${ch.load.summary()}`);
    await ch.load.progress(100, 30000, "progress through the majority");
  } finally {
    await net.heal();
  }
  await c.healthy();
  await ch.load.progress(200, 40000, "progress after the partition healed");
  await finishChecked(ch, c.nodes[leader]!, c.nodes);
});

test.run();
