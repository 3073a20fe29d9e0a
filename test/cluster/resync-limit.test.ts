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

test("a new replica's full copy keeps to --resync-bandwidth, and inspect shows a rate within it", async () => {
  const v = await c.nodes[0]!.api.createVolume({ name: "slow", sizeBytes: 32 * MiB, repl: 1 });
  const first = Number(/^node(\d+)$/.exec(v.replicas[0]!.node)![1]) - 1;
  const leader = c.nodes[first]!;
  await runOk("qemu-io", ["-f", "raw", leader.uri("slow"), "-c", "write -P 0x51 0 32M"]);

  const started = performance.now();
  await leader.api.updateVolume("slow", { repl: 2 });
  const rates: number[] = [];
  for (;;) {
    const info = await leader.api.inspectVolume("slow");
    for (const r of info.replicas) if (r.copy !== undefined && r.copy.bytesPerSec > 0) rates.push(r.copy.bytesPerSec);
    if (info.replicas.length === 2 && info.replicas.every((r) => r.state === "in-sync")) break;
    assert.ok(performance.now() - started < 60_000, "the new replica is in sync within a minute");
    await new Promise((r) => setTimeout(r, 200));
  }
  const sec = (performance.now() - started) / 1000;
  // 32 MiB at 8 MiB/s, one chunk (1 MiB) at once: at least 3.9 s.
  assert.ok(sec >= 3.5, `the copy took ${sec.toFixed(2)} s`);
  assert.ok(rates.length >= 3, `inspect showed a rate ${rates.length} times`);
  // The rate is an average since inspect first saw the copy: within the limit, with room for the chunk in flight when it looked.
  assert.ok(Math.max(...rates) <= limit * 1.25, `rates shown: ${rates.map((r) => (r / MiB).toFixed(1)).join(", ")} MiB/s`);
  assert.ok(Math.max(...rates) >= limit * 0.5, `rates shown: ${rates.map((r) => (r / MiB).toFixed(1)).join(", ")} MiB/s`);
  console.log(`# 32 MiB copied in ${sec.toFixed(2)} s at --resync-bandwidth 8M; inspect showed ${rates.map((r) => (r / MiB).toFixed(1)).join(", ")} MiB/s`);
});

test.run();
