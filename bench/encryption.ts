// What encryption at rest costs a volume's I/O: one single-node daemon with
// a cluster key and two repl-1 volumes of 256 MiB, "plain" and "encrypted"
// (AES-256-XTS, docs/architecture.md "Encryption at rest"), both written
// once first so reads decrypt real data; fio's 4k random writes and 4k
// random reads at queue depth 32 (nbd engine) run on them in alternating
// rounds (A B, B A, ...). Reported as the ratio of the medians,
// encrypted/plain, per job.
//
//   node dist/bench/encryption.js [--runtime 8] [--rounds 4]
//
// Progress goes to stderr, the result (markdown) to stdout. docs/bench.md,
// "The cost of encryption at rest".

import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { runFio, type FioResult } from "./lib/fio.js";
import { log, median, onCleanup, positiveOption, runBench } from "./lib/proc.js";
import { startBenchDaemon, waitForStoreSettle } from "./lib/pxd.js";

const volumeBytes = 256 * 1024 * 1024;
const jobs = [
  { name: "4k-randwrite-qd32", rw: "randwrite" },
  { name: "4k-randread-qd32", rw: "randread" },
] as const;

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { runtime: { type: "string", default: "8" }, rounds: { type: "string", default: "4" } } });
  const runtimeSec = positiveOption("--runtime", values.runtime!);
  const rounds = positiveOption("--rounds", values.rounds!);
  const keyDir = mkdtempSync(join(tmpdir(), "pxd-bench-key-"));
  onCleanup("cluster key", () => rmSync(keyDir, { recursive: true, force: true }));
  const keyFile = join(keyDir, "cluster.key");
  writeFileSync(keyFile, randomBytes(32).toString("hex") + "\n", { mode: 0o600 });
  const daemon = await startBenchDaemon("127.0.0.1", ["--cluster-key-file", keyFile]);
  onCleanup("pxd daemon", () => daemon.dispose());
  const sides = [
    { name: "plain", encrypted: false, runs: new Map<string, FioResult[]>() },
    { name: "encrypted", encrypted: true, runs: new Map<string, FioResult[]>() },
  ];
  for (const s of sides) {
    await daemon.api.createVolume({ name: s.name, sizeBytes: volumeBytes, repl: 1, ...(s.encrypted ? { encrypted: true } : {}) });
    await runFio({ name: "prefill", rw: "write", bs: "1M", iodepth: 8, size: "256M" }, daemon.uri(s.name), 10 * 60 * 1000);
  }
  await waitForStoreSettle(daemon, 1000, 20000);
  for (const job of jobs) {
    for (let round = 0; round < rounds; round++) {
      const order = round % 2 === 0 ? sides : [...sides].reverse();
      for (const s of order) {
        const r = await runFio({ name: job.name, rw: job.rw, bs: "4k", iodepth: 32, size: "256M", runtimeSec }, daemon.uri(s.name), (runtimeSec + 120) * 1000);
        s.runs.set(job.name, [...(s.runs.get(job.name) ?? []), r]);
        log(`${job.name} round ${round + 1}/${rounds} ${s.name}: ${Math.round(r.iops)} IOPS, clat mean ${Math.round(r.clatMeanUs)} µs`);
        await waitForStoreSettle(daemon, 1000, 20000);
      }
    }
  }
  const iops = (s: (typeof sides)[number], job: string): number[] => (s.runs.get(job) ?? []).map((r) => Math.round(r.iops));
  const rows = jobs.flatMap((j) => sides.map((s) => `| ${j.name} | ${s.name} | ${median(iops(s, j.name))} | ${iops(s, j.name).join(", ")} |`));
  const ratios = jobs.map((j) => `${j.name} encrypted / plain: ${(median(iops(sides[1]!, j.name)) / median(iops(sides[0]!, j.name))).toFixed(3)}`);
  process.stdout.write(
    [
      `repl-1 volumes of 256 MiB, fio nbd engine, ${rounds} rounds of ${runtimeSec} s per job and volume, alternating`,
      "",
      "| job | volume | median IOPS | rounds |",
      "|---|---|---|---|",
      ...rows,
      "",
      ...ratios,
      "",
    ].join("\n"),
  );
}

runBench(main);
