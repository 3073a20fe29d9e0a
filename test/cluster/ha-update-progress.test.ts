// pxd volume ha-update --wait on a real cluster: without a terminal it prints
// one JSON line a second until the new replica is in sync; on a terminal it
// redraws one progress bar in place.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { fileURLToPath } from "node:url";
import { startCluster, type Cluster } from "../helpers/cluster.js";
import { runOk } from "../helpers/run.js";
import { waitForReplicas } from "../../src/cli/progress.js";

const pxd = fileURLToPath(new URL("../../bin/pxd.js", import.meta.url));
let c: Cluster;

test.before(async () => {
  c = await startCluster(3);
});

test.after(async () => {
  await c.dispose();
});

test("ha-update --wait prints JSON lines until every replica is in sync, or a bar on a terminal", async () => {
  const v = await c.nodes[0]!.api.createVolume({ name: "grow", sizeBytes: 128 * 1024 * 1024, repl: 1 });
  const first = Number(/^node(\d+)$/.exec(v.replicas[0]!.node)![1]) - 1;
  await runOk("qemu-io", ["-f", "raw", c.nodes[first]!.uri("grow"), "-c", "write -P 0x51 0 48M"]);

  const out = await runOk(process.execPath, [pxd, "--host", `${c.nodes[first]!.host}:9001`, "volume", "ha-update", "grow", "--repl", "2", "--wait"], { timeoutMs: 120000 });
  const lines = out.trimEnd().split("\n").map((l) => JSON.parse(l) as { volume: string; done: number; settled: boolean; replicas: { node: string; state: string }[] });
  assert.ok(lines.length >= 1);
  for (const l of lines) assert.ok(l.volume === "grow" && l.done >= 0 && l.done <= 1, JSON.stringify(l));
  const last = lines.at(-1)!;
  assert.ok(last.settled && last.done === 1, JSON.stringify(last));
  assert.is(last.replicas.length, 2);
  assert.ok(last.replicas.every((r) => r.state === "in-sync"));

  await c.nodes[first]!.api.updateVolume("grow", { repl: 3 });
  let drawn = "";
  const done = await waitForReplicas(c.nodes[first]!.api, "grow", { isTTY: true, write: (s: string) => (drawn += s) });
  assert.is(done.replicas.length, 3);
  assert.ok(drawn.startsWith("\r\x1b[2K["), "redrawn in place");
  assert.match(drawn, /\[#{30}\] 100%  in sync\n$/);
  assert.not.match(drawn.slice(0, -1), /\n/, "one line, redrawn");
});

test.run();
