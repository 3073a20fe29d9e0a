// What snapshots cost a volume's writes: one single-node daemon with two
// repl-1 volumes of 256 MiB (written once first); fio's 4k random writes at
// queue depth 32 (nbd engine) run on them in alternating rounds (A B, B A,
// ...). Volume "plain" has no snapshot; volume "snapped" has a snapshot taken
// right before each of its rounds, so each round pays for the copy on write
// of every block-map chunk it first touches (all 128 of them: a 4k random
// write lands in each 2 MiB chunk within the first few hundred writes), and
// for the snapshots' share of GC. Reported as the ratio of the medians,
// snapped/plain.
//
//   node dist/bench/snapshot-cost.js [--runtime 8] [--rounds 4]
//
// Progress goes to stderr, the result (markdown) to stdout. docs/bench.md,
// "The cost of snapshots".

import { parseArgs } from "node:util";
import { runFio, type FioResult } from "./lib/fio.js";
import { log, median, onCleanup, positiveOption, runBench } from "./lib/proc.js";
import { startBenchDaemon, waitForStoreSettle } from "./lib/pxd.js";

const volumeBytes = 256 * 1024 * 1024;


async function main(): Promise<void> {
  const { values } = parseArgs({ options: { runtime: { type: "string", default: "8" }, rounds: { type: "string", default: "4" } } });
  const runtimeSec = positiveOption("--runtime", values.runtime!);
  const rounds = positiveOption("--rounds", values.rounds!);
  const daemon = await startBenchDaemon("127.0.0.1", []);
  onCleanup("pxd daemon", () => daemon.dispose());
  const sides = [
    { name: "plain", runs: [] as FioResult[] },
    { name: "snapped", runs: [] as FioResult[] },
  ];
  for (const s of sides) {
    await daemon.api.createVolume({ name: s.name, sizeBytes: volumeBytes, repl: 1 });
    await runFio({ name: "prefill", rw: "write", bs: "1M", iodepth: 8, size: "256M" }, daemon.uri(s.name), 10 * 60 * 1000);
  }
  await waitForStoreSettle(daemon, 1000, 20000);
  let taken = 0;
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? sides : [...sides].reverse();
    for (const s of order) {
      if (s.name === "snapped") await daemon.api.createSnapshot(s.name, { name: `r${++taken}` });
      const r = await runFio({ name: "4k-randwrite-qd32", rw: "randwrite", bs: "4k", iodepth: 32, size: "256M", runtimeSec }, daemon.uri(s.name), (runtimeSec + 120) * 1000);
      s.runs.push(r);
      log(`round ${round + 1}/${rounds} ${s.name}: ${Math.round(r.iops)} IOPS, clat mean ${Math.round(r.clatMeanUs)} µs`);
      await waitForStoreSettle(daemon, 1000, 20000);
    }
  }
  const [plain, snapped] = sides.map((s) => median(s.runs.map((r) => r.iops))) as [number, number];
  const line = (s: (typeof sides)[number]): string => `| ${s.name} | ${Math.round(median(s.runs.map((r) => r.iops)))} | ${s.runs.map((r) => Math.round(r.iops)).join(", ")} |`;
  const store = (await daemon.api.status()).store;
  process.stdout.write(
    [
      `repl-1 4k random writes, QD32, ${rounds} rounds of ${runtimeSec} s each, alternating; "snapped" has a new snapshot before each of its rounds (${taken} in the end)`,
      "",
      "| volume | median IOPS | rounds |",
      "|---|---|---|",
      line(sides[0]!),
      line(sides[1]!),
      "",
      `snapped / plain: ${(snapped / plain).toFixed(3)}; the store then held ${store["segments"]} segments (${Math.round((store["diskBytes"] ?? 0) / 1048576)} MiB with free files) for two 256 MiB volumes`,
      "",
    ].join("\n"),
  );
}

runBench(main);
