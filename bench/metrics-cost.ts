// What per-volume metrics cost on the write path: two single-node daemons on
// this machine, one as it runs by default and one with --no-metrics, each
// with a repl-1 volume, measured with fio's nbd engine (4k random writes at
// queue depth 32) in alternating rounds (A B, B A, ...) so that the machine's
// noise falls on both; reported as the ratio of the medians, on/off.
//
//   node dist/bench/metrics-cost.js [--runtime 8] [--rounds 4]
//
// Progress goes to stderr, the result (markdown) to stdout. docs/bench.md,
// "The cost of metrics".

import { parseArgs } from "node:util";
import { runFio, type FioResult } from "./lib/fio.js";
import { log, median, onCleanup, positiveOption, runBench } from "./lib/proc.js";
import { startBenchDaemon, waitForStoreSettle } from "./lib/pxd.js";
import type { DaemonProcess } from "../test/helpers/daemon.js";

const volumeBytes = 256 * 1024 * 1024;

interface Side {
  name: "metrics on" | "metrics off";
  daemon: DaemonProcess;
  runs: FioResult[];
}


async function main(): Promise<void> {
  const { values } = parseArgs({ options: { runtime: { type: "string", default: "8" }, rounds: { type: "string", default: "4" } } });
  const runtimeSec = positiveOption("--runtime", values.runtime!);
  const rounds = positiveOption("--rounds", values.rounds!);
  const sides: Side[] = [];
  for (const [name, args] of [["metrics on", []], ["metrics off", ["--no-metrics"]]] as const) {
    const daemon = await startBenchDaemon("127.0.0.1", [...args]);
    onCleanup(`pxd daemon (${name})`, () => daemon.dispose());
    await daemon.api.createVolume({ name: "bench", sizeBytes: volumeBytes, repl: 1 });
    await runFio({ name: "prefill", rw: "write", bs: "1M", iodepth: 8, size: "256M" }, daemon.uri("bench"), 10 * 60 * 1000);
    await waitForStoreSettle(daemon, 1000, 20000);
    sides.push({ name, daemon, runs: [] });
  }
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? sides : [...sides].reverse();
    for (const s of order) {
      const r = await runFio({ name: "4k-randwrite-qd32", rw: "randwrite", bs: "4k", iodepth: 32, size: "256M", runtimeSec }, s.daemon.uri("bench"), (runtimeSec + 120) * 1000);
      s.runs.push(r);
      log(`round ${round + 1}/${rounds} ${s.name}: ${Math.round(r.iops)} IOPS, clat mean ${Math.round(r.clatMeanUs)} µs`);
      await waitForStoreSettle(s.daemon, 1000, 20000);
    }
  }
  const [on, off] = sides.map((s) => median(s.runs.map((r) => r.iops))) as [number, number];
  const line = (s: Side): string => `| ${s.name} | ${Math.round(median(s.runs.map((r) => r.iops)))} | ${s.runs.map((r) => Math.round(r.iops)).join(", ")} |`;
  process.stdout.write(
    [
      `repl-1 4k random writes, QD32, ${rounds} rounds of ${runtimeSec} s each, alternating`,
      "",
      "| daemon | median IOPS | rounds |",
      "|---|---|---|",
      line(sides[0]!),
      line(sides[1]!),
      "",
      `metrics on / off: ${(on / off).toFixed(3)}`,
      "",
    ].join("\n"),
  );
}

runBench(main);
