// pxd against nbdkit's file plugin, both over NBD with fio's nbd engine, in
// one run on one machine, reported as ratios (DESIGN.md §8). Targets are
// alternated round by round so that noise from the machine falls on both.
// Then two pxd-only checks: daemon memory after 1 GiB of random 4k writes, and
// store disk use after rewriting 256 MiB ten times.
//
//   npm run bench -- [--runtime 8] [--rounds 2] [--only REGEX] [--skip-extra] [--json FILE]
//
// Progress goes to stderr, the tables (markdown) to stdout. See docs/bench.md.

import { closeSync, fsyncSync, mkdtempSync, openSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { cpus, release, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { startDaemon, type DaemonProcess } from "../test/helpers/daemon.js";
import { fioVersion, runFio, type FioResult, type FioSpec } from "./lib/fio.js";
import { Nbdkit, nbdkitVersion } from "./lib/nbdkit.js";
import { cleanupAll, cpuSeconds, installSignalHandlers, interrupted, log, onCleanup, procStatusKiB } from "./lib/proc.js";
import { dirUsage, storeSnapshot, waitForStoreSettle, type DirUsage, type Settled } from "./lib/pxd.js";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const volumeBytes = GiB;

interface Options {
  runtimeSec: number;
  rounds: number;
  only: RegExp | undefined;
  skipExtra: boolean;
  jsonFile: string | undefined;
}

interface BenchJob {
  name: string;
  spec: Pick<FioSpec, "rw" | "bs" | "iodepth">;
  /** IOPS for small blocks, bandwidth for 1 MiB blocks. */
  metric: "iops" | "bw";
  /** Minimum pxd/nbdkit ratio from the issue; none for latency-bound jobs. */
  target: number | undefined;
  showLatency: boolean;
}

const jobs: BenchJob[] = [
  { name: "4k-randread-qd32", spec: { rw: "randread", bs: "4k", iodepth: 32 }, metric: "iops", target: 0.8, showLatency: false },
  { name: "4k-randread-qd1", spec: { rw: "randread", bs: "4k", iodepth: 1 }, metric: "iops", target: undefined, showLatency: true },
  { name: "4k-randwrite-qd32", spec: { rw: "randwrite", bs: "4k", iodepth: 32 }, metric: "iops", target: 0.5, showLatency: false },
  { name: "4k-randwrite-qd1", spec: { rw: "randwrite", bs: "4k", iodepth: 1 }, metric: "iops", target: undefined, showLatency: true },
  { name: "1m-seqread-qd8", spec: { rw: "read", bs: "1M", iodepth: 8 }, metric: "bw", target: 0.8, showLatency: false },
  { name: "1m-seqwrite-qd8", spec: { rw: "write", bs: "1M", iodepth: 8 }, metric: "bw", target: 0.5, showLatency: false },
];

type TargetName = "pxd" | "nbdkit";

interface Run extends FioResult {
  /** Server CPU (user + system, all threads) during the fio run, percent of one core. */
  serverCpuPct: number;
  /** pxd only: group commits (one fdatasync each) during the run, and records they carried. */
  commits?: number;
  recordsCommitted?: number;
  /** pxd only: bytes the store appended to its log during the run (client writes + GC moves + headers). */
  logBytes?: number;
}

interface JobResult {
  name: string;
  metric: "iops" | "bw";
  target: number | undefined;
  runs: Record<TargetName, Run[]>;
  median: Record<TargetName, { value: number; clatMeanUs: number; clatP99Us: number; serverCpuPct: number }>;
  ratio: number;
  met: boolean | undefined;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      runtime: { type: "string", default: "8" },
      rounds: { type: "string", default: "2" },
      only: { type: "string" },
      "skip-extra": { type: "boolean", default: false },
      json: { type: "string" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    process.stdout.write("usage: npm run bench -- [--runtime SEC] [--rounds N] [--only REGEX] [--skip-extra] [--json FILE]\n");
    process.exit(0);
  }
  const positive = (name: string, v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} wants a whole number of at least 1, not "${v}"`);
    return n;
  };
  return {
    runtimeSec: positive("runtime", values.runtime),
    rounds: positive("rounds", values.rounds),
    only: values.only === undefined ? undefined : new RegExp(values.only, "i"),
    skipExtra: values["skip-extra"],
    jsonFile: values.json,
  };
}

// ---- small pure helpers ----

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function metricOf(job: BenchJob | JobResult, r: { iops: number; bytesPerSec: number }): number {
  return job.metric === "iops" ? r.iops : r.bytesPerSec / MiB;
}

function fmtNum(n: number, digits = 0): string {
  return n.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function fmtMetric(metric: "iops" | "bw", v: number): string {
  return metric === "iops" ? `${fmtNum(v)} IOPS` : `${fmtNum(v)} MiB/s`;
}

function fmtBytes(n: number): string {
  return n >= GiB ? `${fmtNum(n / GiB, 2)} GiB` : `${fmtNum(n / MiB, 1)} MiB`;
}

function table(header: string[], rows: string[][]): string {
  const line = (cells: string[]): string => `| ${cells.join(" | ")} |`;
  return [line(header), line(header.map(() => "---")), ...rows.map(line)].join("\n") + "\n";
}

// ---- pxd against nbdkit ----

interface Target {
  name: TargetName;
  uri: string;
  pid: number;
  /** Untimed, after each run: lets background work end so it does not bill the next run. */
  quiesce(): Promise<void>;
  /** pxd only: the store's commit counters. */
  commitCounters?: () => Promise<{ commits: number; recordsCommitted: number; logBytes: number }>;
}

async function timedRun(job: BenchJob, target: Target, runtimeSec: number): Promise<Run> {
  const spec: FioSpec = { name: job.name, ...job.spec, size: "1G", runtimeSec };
  const c0 = await target.commitCounters?.();
  const cpu0 = cpuSeconds(target.pid);
  const t0 = Date.now();
  const r = await runFio(spec, target.uri, (runtimeSec + 120) * 1000);
  const serverCpuPct = ((cpuSeconds(target.pid) - cpu0) / ((Date.now() - t0) / 1000)) * 100;
  const c1 = await target.commitCounters?.();
  await target.quiesce();
  if (c0 === undefined || c1 === undefined) return { ...r, serverCpuPct };
  const counted = { commits: c1.commits - c0.commits, recordsCommitted: c1.recordsCommitted - c0.recordsCommitted, logBytes: c1.logBytes - c0.logBytes };
  return { ...r, serverCpuPct, ...counted };
}

async function runJob(job: BenchJob, targets: [Target, Target], opts: Options): Promise<JobResult> {
  const runs: Record<TargetName, Run[]> = { pxd: [], nbdkit: [] };
  for (let round = 0; round < opts.rounds; round++) {
    // A B, B A, A B, ...: neither target always goes first.
    const order = round % 2 === 0 ? targets : ([targets[1], targets[0]] as const);
    for (const t of order) {
      const r = await timedRun(job, t, opts.runtimeSec);
      runs[t.name].push(r);
      const lat = job.showLatency ? `, clat mean ${fmtNum(r.clatMeanUs)} µs p99 ${fmtNum(r.clatP99Us)} µs` : "";
      const commits = r.commits === undefined ? "" : `, ${commitsText(r, opts.runtimeSec)}`;
      log(`${job.name} round ${round + 1}/${opts.rounds} ${t.name}: ${fmtMetric(job.metric, metricOf(job, r))}${lat}, server CPU ${fmtNum(r.serverCpuPct)}%${commits}`);
    }
  }
  const med = (rs: Run[]): JobResult["median"]["pxd"] => ({
    value: median(rs.map((r) => metricOf(job, r))),
    clatMeanUs: median(rs.map((r) => r.clatMeanUs)),
    clatP99Us: median(rs.map((r) => r.clatP99Us)),
    serverCpuPct: median(rs.map((r) => r.serverCpuPct)),
  });
  const median_ = { pxd: med(runs.pxd), nbdkit: med(runs.nbdkit) };
  const ratio = median_.pxd.value / median_.nbdkit.value;
  return { name: job.name, metric: job.metric, target: job.target, runs, median: median_, ratio, met: job.target === undefined ? undefined : ratio >= job.target };
}

async function prefill(t: Target): Promise<void> {
  const r = await runFio({ name: "prefill", rw: "write", bs: "1M", iodepth: 8, size: "1G" }, t.uri, 15 * 60 * 1000);
  if (r.ioBytes !== volumeBytes) throw new Error(`prefill of ${t.name} wrote ${r.ioBytes} bytes, not ${volumeBytes}`);
  await t.quiesce();
  log(`prefilled ${t.name}: 1 GiB at ${fmtNum(r.bytesPerSec / MiB)} MiB/s`);
}

async function compare(selected: BenchJob[], opts: Options): Promise<JobResult[]> {
  const dir = mkdtempSync(join(tmpdir(), "pxd-bench-"));
  const releaseDir = onCleanup("nbdkit temp dir", () => rmSync(dir, { recursive: true, force: true }));
  log("starting pxd daemon and nbdkit");
  const daemon = await startDaemon();
  const releaseDaemon = onCleanup("pxd daemon", () => daemon.dispose());
  try {
    if (statSync(daemon.dataDir).dev !== statSync(dir).dev) log(`WARNING: ${daemon.dataDir} and ${dir} are on different filesystems`);
    await daemon.api.createVolume({ name: "bench", sizeBytes: volumeBytes, repl: 1 });
    const file = join(dir, "nbdkit.img");
    writeFileSync(file, "");
    truncateSync(file, volumeBytes);
    const kit = await Nbdkit.start(file);
    const releaseKit = onCleanup("nbdkit", () => kit.stop());
    try {
      const pxd: Target = {
        name: "pxd", uri: daemon.uri("bench"), pid: daemon.child!.pid!,
        quiesce: () => settleQuietly(daemon),
        commitCounters: async () => {
          const s = await storeSnapshot(daemon);
          return { commits: s.commits, recordsCommitted: s.recordsCommitted, logBytes: s.logBytesAppended };
        },
      };
      const nbdkit: Target = { name: "nbdkit", uri: kit.uri(), pid: kit.pid, quiesce: async () => fsyncFile(file) };
      log(`pxd ${pxd.uri} (data dir ${daemon.dataDir}), nbdkit ${nbdkit.uri} (file ${file})`);
      await prefill(pxd);
      await prefill(nbdkit);
      const results: JobResult[] = [];
      for (const job of selected) results.push(await runJob(job, [pxd, nbdkit], opts));
      return results;
    } finally {
      await releaseKit();
    }
  } finally {
    await releaseDaemon();
    await releaseDir();
  }
}

async function settleQuietly(daemon: DaemonProcess): Promise<void> {
  const s = await waitForStoreSettle(daemon, 1000, 20000);
  if (!s.settled) log(`pxd store still busy after ${s.waitedMs} ms; going on`);
}

/** nbdkit's writes sit dirty in the page cache; write them back outside the timed window. */
function fsyncFile(file: string): void {
  const fd = openSync(file, "r+");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Group commits per second of fio runtime and records per commit: how well writes batch per fdatasync. */
function commitsText(r: Run, runtimeSec: number): string {
  if (r.commits === undefined || r.recordsCommitted === undefined || r.commits === 0) return "no commits";
  const perCommit = `${fmtNum(r.commits / runtimeSec)} commits/s × ${fmtNum(r.recordsCommitted / r.commits, 1)} records`;
  // Reads write nothing, so their log bytes are GC alone.
  const amplification = r.logBytes !== undefined && r.ioBytes > 0 ? `, log ${fmtNum(r.logBytes / MiB)} MiB` : "";
  return perCommit + amplification;
}

function comparisonTable(results: JobResult[]): string {
  const cell = (r: JobResult, t: TargetName): string => {
    const m = r.median[t];
    const lat = r.metric === "iops" && jobs.find((j) => j.name === r.name)?.showLatency ? `, ${fmtNum(m.clatMeanUs)} µs mean` : "";
    return fmtMetric(r.metric, m.value) + lat;
  };
  const rows = results.map((r) => [
    r.name, cell(r, "pxd"), cell(r, "nbdkit"), fmtNum(r.ratio, 2),
    r.target === undefined ? "—" : `≥ ${fmtNum(r.target, 1)}`,
    r.met === undefined ? "—" : r.met ? "yes" : "**no**",
  ]);
  return table(["job", "pxd", "nbdkit", "pxd/nbdkit", "target", "met?"], rows);
}

function detailTable(results: JobResult[], runtimeSec: number): string {
  const rounds = (r: JobResult, t: TargetName): string => r.runs[t].map((x) => fmtNum(metricOf(r, x))).join(" / ");
  const lat = (r: JobResult, t: TargetName): string => `${fmtNum(r.median[t].clatMeanUs)} / ${fmtNum(r.median[t].clatP99Us)}`;
  const rows = results.map((r) => [
    r.name, rounds(r, "pxd"), rounds(r, "nbdkit"), lat(r, "pxd"), lat(r, "nbdkit"),
    `${fmtNum(r.median.pxd.serverCpuPct)}%`, `${fmtNum(r.median.nbdkit.serverCpuPct)}%`,
    r.runs.pxd.map((x) => commitsText(x, runtimeSec)).join(" / "),
  ]);
  return table(["job", "pxd rounds", "nbdkit rounds", "pxd clat µs mean / p99", "nbdkit clat µs mean / p99", "pxd CPU", "nbdkit CPU", "pxd group commits (per round)"], rows);
}

// ---- pxd alone: memory and disk ----

interface MemoryResult {
  rssBeforeKiB: number;
  rssAfterKiB: number;
  rssAfterSettleKiB: number;
  hwmKiB: number;
  writeIops: number;
  writtenBytes: number;
  allocatedBytes: number;
}

async function withFreshDaemon<T>(what: string, fn: (d: DaemonProcess) => Promise<T>): Promise<T> {
  log(`starting a fresh pxd daemon for the ${what} check`);
  const daemon = await startDaemon();
  const release = onCleanup(`pxd daemon (${what})`, () => daemon.dispose());
  try {
    return await fn(daemon);
  } finally {
    await release();
  }
}

function memoryCheck(): Promise<MemoryResult> {
  return withFreshDaemon("memory", async (daemon) => {
    const pid = daemon.child!.pid!;
    await daemon.api.createVolume({ name: "mem", sizeBytes: volumeBytes, repl: 1 });
    await waitForStoreSettle(daemon, 1000, 10000);
    const rssBeforeKiB = procStatusKiB(pid, "VmRSS");
    log(`memory: RSS ${fmtNum(rssBeforeKiB / 1024, 1)} MiB before; writing every 4k block of 1 GiB once, in random order`);
    const spec: FioSpec = { name: "mem-randwrite", rw: "randwrite", bs: "4k", iodepth: 32, size: "1G" };
    const r = await runFio(spec, daemon.uri("mem"), 30 * 60 * 1000);
    const rssAfterKiB = procStatusKiB(pid, "VmRSS");
    await waitForStoreSettle(daemon, 2000, 30000);
    const rssAfterSettleKiB = procStatusKiB(pid, "VmRSS");
    const hwmKiB = procStatusKiB(pid, "VmHWM");
    const allocatedBytes = (await daemon.api.inspectVolume("mem")).allocatedBytes;
    log(`memory: ${fmtNum(r.iops)} IOPS; RSS ${fmtNum(rssAfterKiB / 1024, 1)} MiB after, ${fmtNum(rssAfterSettleKiB / 1024, 1)} MiB settled, peak ${fmtNum(hwmKiB / 1024, 1)} MiB`);
    return { rssBeforeKiB, rssAfterKiB, rssAfterSettleKiB, hwmKiB, writeIops: r.iops, writtenBytes: r.ioBytes, allocatedBytes };
  });
}

interface DiskResult {
  volumeBytes: number;
  writtenBytes: number;
  settle: Settled;
  usage: DirUsage;
}

function diskCheck(): Promise<DiskResult> {
  return withFreshDaemon("disk space", async (daemon) => {
    const size = 256 * MiB;
    await daemon.api.createVolume({ name: "disk", sizeBytes: size, repl: 1 });
    log("disk: rewriting 256 MiB ten times");
    const spec: FioSpec = { name: "disk-rewrite", rw: "write", bs: "1M", iodepth: 8, size: "256M", loops: 10 };
    const r = await runFio(spec, daemon.uri("disk"), 30 * 60 * 1000);
    log(`disk: wrote ${fmtBytes(r.ioBytes)} at ${fmtNum(r.bytesPerSec / MiB)} MiB/s; waiting for GC to settle`);
    const settle = await waitForStoreSettle(daemon, 2000, 30000);
    const usage = await dirUsage(join(daemon.dataDir, "store"));
    log(`disk: store ${fmtBytes(usage.sizeBytes)} in ${usage.files} files (${settle.settled ? "settled" : "NOT settled"} after ${settle.waitedMs} ms)`);
    return { volumeBytes: size, writtenBytes: r.ioBytes, settle, usage };
  });
}

function memoryTable(m: MemoryResult): string {
  const mib = (kib: number): string => `${fmtNum(kib / 1024, 1)} MiB`;
  return table(["pxd daemon (fresh, one 1 GiB volume)", "value"], [
    ["VmRSS before the writes", mib(m.rssBeforeKiB)],
    [`VmRSS right after ${fmtBytes(m.writtenBytes)} of random 4k writes (${fmtNum(m.writtenBytes / 4096)} blocks, QD32, ${fmtNum(m.writeIops)} IOPS)`, mib(m.rssAfterKiB)],
    ["VmRSS once the store settled", mib(m.rssAfterSettleKiB)],
    ["VmHWM (peak RSS)", mib(m.hwmKiB)],
    ["volume allocatedBytes after the writes", fmtBytes(m.allocatedBytes)],
  ]);
}

function diskTable(d: DiskResult): string {
  const s = d.settle.store;
  return table(["pxd store (fresh daemon, one 256 MiB volume rewritten 10 times)", "value"], [
    ["written by fio", fmtBytes(d.writtenBytes)],
    ["store dir, sum of file sizes", `${fmtBytes(d.usage.sizeBytes)} (${fmtNum(d.usage.sizeBytes)} bytes, ${d.usage.files} files)`],
    ["store dir, `du -sb`", `${fmtBytes(d.usage.duApparentBytes)} (${fmtNum(d.usage.duApparentBytes)} bytes)`],
    ["store dir, allocated blocks", fmtBytes(d.usage.allocatedBytes)],
    ["store status", `segments ${s.segments}, freeSegments ${s.freeSegments}, diskBytes ${fmtBytes(s.diskBytes)}, liveBytes ${fmtBytes(s.liveBytes)}, gcSegments ${s.gcSegments}`],
    ["GC settled", d.settle.settled ? `yes, after ${fmtNum(d.settle.waitedMs / 1000, 1)} s` : `no, still moving after ${fmtNum(d.settle.waitedMs / 1000, 1)} s`],
  ]);
}

// ---- main ----

async function main(): Promise<void> {
  const opts = parseOptions();
  installSignalHandlers();
  const selected = jobs.filter((j) => opts.only === undefined || opts.only.test(j.name));
  if (opts.only !== undefined && selected.length === 0) {
    throw new Error(`--only ${opts.only.source} matches no job; jobs are ${jobs.map((j) => j.name).join(", ")}`);
  }
  const env = {
    date: new Date().toISOString(),
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? "unknown",
    kernel: release(),
    memBytes: totalmem(),
    node: process.version,
    nbdkit: await nbdkitVersion(),
    fio: await fioVersion(),
    command: `npm run bench -- ${process.argv.slice(2).join(" ")}`.trim(),
  };
  log(`${env.nbdkit}, ${env.fio}, node ${env.node}, ${env.cpus} cores (${env.cpuModel})`);
  const out: Record<string, unknown> = { env, options: { ...opts, only: opts.only?.source } };

  const results = await compare(selected, opts);
  out["jobs"] = results;
  process.stdout.write(
    `## pxd vs nbdkit over NBD (fio nbd engine, median of ${opts.rounds} round${opts.rounds === 1 ? "" : "s"} of ${opts.runtimeSec} s)\n\n` +
      `${env.date}, ${env.cpus} cores (${env.cpuModel}), Linux ${env.kernel}, node ${env.node}, ${env.nbdkit}, ${env.fio}\n\n` +
      comparisonTable(results) +
      "\npxd makes every acknowledged write durable (one fdatasync per group commit); nbdkit's file plugin\n" +
      "acknowledges writes once they are in the page cache (fio sends no flush). Both hold the same 1 GiB of data (prefilled).\n\n" +
      "Per round, latency (median of rounds), server CPU (percent of one core, median of rounds) and pxd's group commits\n" +
      "(one fdatasync each; records per commit is how many writes share one sync):\n\n" +
      detailTable(results, opts.runtimeSec) + "\n",
  );

  if (!opts.skipExtra) {
    const memory = await memoryCheck();
    out["memory"] = memory;
    process.stdout.write(`## Memory\n\n${memoryTable(memory)}\n`);
    const disk = await diskCheck();
    out["disk"] = disk;
    process.stdout.write(
      `## Disk space\n\n${diskTable(disk)}\n` +
        "Segments are 64 MiB files; up to 2 freed segments are kept for reuse.\n\n",
    );
  }
  if (opts.jsonFile !== undefined) {
    writeFileSync(opts.jsonFile, JSON.stringify(out, null, 2) + "\n");
    log(`wrote ${opts.jsonFile}`);
  }
}

main()
  .then(() => cleanupAll())
  .catch(async (e: unknown) => {
    if (interrupted()) return; // the signal handler cleans up and exits
    log(`failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    await cleanupAll();
    process.exitCode = 1;
  });
