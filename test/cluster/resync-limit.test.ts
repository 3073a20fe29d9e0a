// The rebuild limit on a real cluster: with `pxd daemon --resync-bandwidth 8M`
// the full copy ha-update sends a new replica of a 32 MiB volume takes at
// least the time that rate allows, and the rate `pxd volume inspect` shows
// for it stays within the limit. (What a rebuild at the default rate leaves
// client writes is measured in bench/qos.sh, not here.)

import { test } from "uvu";
import * as assert from "uvu/assert";
import { startCluster, type Cluster } from "../helpers/cluster.js";
import { runOk } from "../helpers/run.js";

const MiB = 1024 * 1024;
const limit = 8 * MiB;
let c: Cluster;

test.before(async () => {
  c = await startCluster(2, ["--resync-bandwidth", "8M"]);
});

test.after(async () => {
  await c.dispose();
});

/** A 32 MiB volume with one replica, written whole; the node that holds it. */
async function volumeWritten(name: string): Promise<Cluster["nodes"][number]> {
  const v = await c.nodes[0]!.api.createVolume({ name, sizeBytes: 32 * MiB, repl: 1 });
  const node = c.nodes[Number(/^node(\d+)$/.exec(v.replicas[0]!.node)![1]) - 1]!;
  await runOk("qemu-io", ["-f", "raw", node.uri(name), "-c", "write -P 0x51 0 32M"]);
  return node;
}

/** ha-update 1 -> 2 through `node`; how long until both replicas are in sync, and the copy rates inspect showed meanwhile. */
async function addReplica(node: Cluster["nodes"][number], volume: string): Promise<{ sec: number; rates: number[] }> {
  const started = performance.now();
  await node.api.updateVolume(volume, { repl: 2 });
  const rates: number[] = [];
  for (;;) {
    const info = await node.api.inspectVolume(volume);
    for (const r of info.replicas) if (r.copy !== undefined && r.copy.bytesPerSec > 0) rates.push(r.copy.bytesPerSec);
    if (info.replicas.length === 2 && info.replicas.every((r) => r.state === "in-sync")) break;
    assert.ok(performance.now() - started < 60_000, "the new replica is in sync within a minute");
    await new Promise((r) => setTimeout(r, 200));
  }
  return { sec: (performance.now() - started) / 1000, rates };
}

const shown = (rates: number[]): string => `rates shown: ${rates.map((r) => (r / MiB).toFixed(1)).join(", ")} MiB/s`;

test("a new replica's full copy keeps to --resync-bandwidth, and inspect shows a rate within it", async () => {
  const leader = await volumeWritten("slow");
  const { sec, rates } = await addReplica(leader, "slow");
  // 32 MiB at 8 MiB/s, one chunk (1 MiB) at once: at least 3.9 s.
  assert.ok(sec >= 3.5, `the copy took ${sec.toFixed(2)} s`);
  assert.ok(rates.length >= 3, `inspect showed a rate ${rates.length} times`);
  // The rate is an average since inspect first saw the copy: within the limit, with room for the chunk in flight when it looked.
  assert.ok(Math.max(...rates) <= limit * 1.25, shown(rates));
  assert.ok(Math.max(...rates) >= limit * 0.5, shown(rates));
  console.log(`# 32 MiB copied in ${sec.toFixed(2)} s at --resync-bandwidth 8M; inspect showed ${rates.map((r) => (r / MiB).toFixed(1)).join(", ")} MiB/s`);
});

test("the catalog's setting resyncBandwidthBytesPerSec overrides every node's flag, without a restart", async () => {
  await c.nodes[0]!.api.setSetting("resyncBandwidthBytesPerSec", 16 * MiB);
  const leader = await volumeWritten("fast");
  const { sec, rates } = await addReplica(leader, "fast");
  // 32 MiB at 16 MiB/s, 1.6 MiB at once: at least 1.9 s; faster than the flag's 8 MiB/s allows.
  assert.ok(sec >= 1.7, `the copy took ${sec.toFixed(2)} s`);
  assert.ok(Math.max(...rates) <= 16 * MiB * 1.25, shown(rates));
  assert.ok(rates.length === 0 || Math.max(...rates) > limit * 1.1, shown(rates));
  console.log(`# 32 MiB copied in ${sec.toFixed(2)} s at the setting 16 MiB/s; ${shown(rates)}`);
  await c.nodes[0]!.api.setSetting("resyncBandwidthBytesPerSec", null);
});

test.run();
